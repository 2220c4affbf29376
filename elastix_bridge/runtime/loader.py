"""Lazy loading of torch, the compiled IMPACT plugin and TorchScript feature models.

This is the Python counterpart of upstream elastix's lazy plugin loader (docs/design.md §I10): nothing
here imports torch at module import time, so ``import elastix_bridge`` stays cheap and works
without torch; torch and the plugin are loaded only when a stage asks for ``(Metric "Impact")``.

The plugin (``plugin/impact_plugin.cpp``) is compiled on first use against the *installed* torch
and cached under ``$ELASTIX_BRIDGE_CACHE`` (default ``~/.cache/elastix-bridge``) in a directory
named after the torch version, C++ ABI, CUDA version and source hash, with a JSON build record
next to the ``.so``. A prebuilt plugin can be forced with ``$ELASTIX_BRIDGE_PLUGIN``. Only a torch of
:data:`SUPPORTED_TORCH` (the range CI builds and runs) is accepted; a failed build is explained by
:mod:`elastix_bridge.runtime.build_checks`.

Errors form one hierarchy rooted at :class:`ImpactError`:
:class:`ImpactUnavailableError` (``RuntimeError``: Impact cannot be loaded/run here) and
:class:`ImpactModelError` (``ValueError``: a bad model file or model output).

Why this stays one module (longer than ~600 lines): it is the loader room of docs/design.md §2.2 and owns
every "cannot load" message, in the order a first use meets them: torch and its supported range, the
plugin's sources, build record, cache and build, its import, devices, JIT switches, model files and
models. The one seam (the plugin's build and cache / what runs on the plugin) does not make two modules:
both halves raise the same errors after the same LibTorch check (:func:`require_torch`), and loading a
model starts by loading the plugin, so either half would import the other or a third module would hold
only the error classes. What is not about loading lives beside it: why a build failed
(:mod:`elastix_bridge.runtime.build_checks`), the cache folder (:mod:`elastix_bridge.runtime.cache`),
``torch.export`` models (:mod:`elastix_bridge.runtime.exported_models`), the built-in models
(:mod:`elastix_bridge.runtime.mind`) and the feature-model contract (:mod:`elastix_bridge.runtime.model_contract`).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX: the atomic rename alone protects a build
    fcntl = None

from elastix_bridge.core.files import input_file_problem
from elastix_bridge.core.impact_parameters import resolve_model_path
from elastix_bridge.core import run_timing
from elastix_bridge.core.reserved_models import RESERVED_MODELS
from elastix_bridge.runtime import build_checks
from elastix_bridge.runtime.cache import CACHE_ENV, cache_root

if TYPE_CHECKING:  # pragma: no cover - typing only, never imported at run time
    from types import ModuleType

    import torch  # annotations only: never imported at run time

__all__ = [
    "CACHE_ENV",
    "SUPPORTED_TORCH",
    "UNTESTED_TORCH_ENV",
    "EXTENSION_NAME",
    "JIT_SWITCHES",
    "ImpactError",
    "ImpactModelError",
    "ImpactUnavailableError",
    "PLUGIN_ENV",
    "build_plugin",
    "check_torch_supported",
    "cache_dir",
    "expected_build_record",
    "jit_optimization_disabled",
    "jit_state",
    "load_feature_model",
    "load_plugin",
    "model_file",
    "model_file_problem",
    "plugin_source_dir",
    "require_torch",
    "resolve_device",
    "set_jit_state",
    "supported_torch_range",
    "torch_supported",
]

PLUGIN_ENV = "ELASTIX_BRIDGE_PLUGIN"
EXTENSION_NAME = "elastix_bridge_impact"
_RECORD_KEYS = ("torch_version", "cxx11_abi", "cuda")
_RECORD_FORMAT = 2  # 2: the record holds cxx_standard; a new format gets a new cache folder
_REBUILD_CMD = "elastix-bridge build-plugin"
_INSTALL_CMD = 'pip install "elastix-bridge[impact]"'

log = logging.getLogger("elastix_bridge")

_lock = threading.RLock()
_loaded: dict[Any, Any] = {}  # (plugin env value, cache root) -> module
_models: dict[Any, Any] = {}  # (plugin, path, mtime, size, device, half) -> FeatureModel, oldest first
_MODELS_KEPT = 8
_loaded_by_file: dict[str, Any] = {}  # realpath of .so -> module (one import per file)


class ImpactError(Exception):
    """Base class of every elastix-bridge IMPACT error."""


class ImpactUnavailableError(ImpactError, RuntimeError):
    """Impact cannot be loaded or run here (no torch, plugin build/ABI problem, no usable GPU).

    The message says what failed, why, and the command that fixes it.
    """


class ImpactModelError(ImpactError, ValueError):
    """A TorchScript model path, file, signature or output is not usable (docs/design.md §I3)."""


# ---------------------------------------------------------------------------------------------
# torch and build records
# ---------------------------------------------------------------------------------------------


def require_torch() -> ModuleType:
    """Import and return torch.

    Returns:
        The ``torch`` module.

    Raises:
        ImpactUnavailableError: torch is not importable (not installed or broken install).
    """
    try:
        import torch  # deferred: torch is optional; this is the LibTorch check every other use goes through
    except ImportError as exc:
        raise ImpactUnavailableError(
            f"the Impact metric needs PyTorch, which cannot be imported ({exc}). "
            f"Install it with `{_INSTALL_CMD}` (or `pip install torch`)."
        ) from exc
    return torch


# The torch releases CI builds the plugin against and runs registrations with (.ci/run): the lowest
# and the newest that install here. pyproject.toml's `impact` extra declares the same range; the
# upper bound moves up when a newer torch passes that check.
SUPPORTED_TORCH = ("2.13", "2.15")  # >= first, < second
UNTESTED_TORCH_ENV = "ELASTIX_BRIDGE_ALLOW_UNTESTED_TORCH"


def supported_torch_range() -> str:
    """The supported torch versions as a pip specifier, e.g. ``">=2.13,<2.15"``."""
    return f">={SUPPORTED_TORCH[0]},<{SUPPORTED_TORCH[1]}"


def _release(version: str) -> tuple[int, ...]:
    """``"2.14.1+cu130"`` -> ``(2, 14, 1)``; pre-release and local parts are ignored."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def torch_supported(version: str) -> bool:
    """Whether a torch version lies in :data:`SUPPORTED_TORCH` (``2.15.0.dev`` counts as 2.15)."""
    return _release(SUPPORTED_TORCH[0]) <= _release(version) < _release(SUPPORTED_TORCH[1])


def check_torch_supported(torch: ModuleType) -> None:
    """Refuse a torch outside the tested range, unless ``$ELASTIX_BRIDGE_ALLOW_UNTESTED_TORCH=1``.

    Args:
        torch: the imported torch module.

    Raises:
        ImpactUnavailableError: naming the installed version, the supported range and the two fixes.
    """
    version = str(torch.__version__)
    if torch_supported(version):
        return
    if os.environ.get(UNTESTED_TORCH_ENV, "").strip() not in ("", "0"):
        log.warning("torch %s is outside the tested range %s; building the IMPACT plugin anyway because $%s is set",
                    version, supported_torch_range(), UNTESTED_TORCH_ENV)
        return
    raise ImpactUnavailableError(
        f"torch {version} is installed, but the IMPACT plugin is tested with torch {supported_torch_range()} only. "
        f"Install a supported torch (`pip install \"torch{supported_torch_range()}\"`), or set "
        f"{UNTESTED_TORCH_ENV}=1 to build and run it with torch {version} at your own risk."
    )


def plugin_source_dir() -> Path:
    """Directory holding the plugin's C++ sources.

    Installed packages map ``elastix_bridge.plugin_src`` to the repository's ``plugin/`` directory;
    in a source checkout that package is not importable and ``<repo>/plugin`` is used.

    Returns:
        A filesystem directory containing ``impact_plugin.cpp``.

    Raises:
        ImpactUnavailableError: the sources are not found (broken installation).
    """
    candidates = []
    try:
        candidates.append(Path(str(files("elastix_bridge.plugin_src"))))
    except (ImportError, TypeError, ValueError):
        pass
    candidates.append(Path(__file__).resolve().parents[2] / "plugin")
    for candidate in candidates:
        if (candidate / "impact_plugin.cpp").is_file():
            return candidate
    raise ImpactUnavailableError(
        "the IMPACT plugin sources (impact_plugin.cpp) are missing from the installation "
        f"(looked in {', '.join(map(str, candidates))}); reinstall with `{_INSTALL_CMD}`."
    )


def _plugin_sources() -> list[Path]:
    src = plugin_source_dir()
    return sorted(p for p in src.iterdir() if p.suffix in (".cpp", ".h") and p.is_file())


# OpenMP (Linux: torch's own runtime is libgomp) lets at::parallel_for in the B-spline kernels use
# torch's threads; without it they run on one thread, with the same results.
_OPENMP = ["-fopenmp"] if sys.platform.startswith("linux") else []
# -O3: GCC's full loop vectoriser on the B-spline gathers (2-3x faster than -O2 on 12-channel maps; no
# fast-math, so the same numbers); no -march, so a cached build runs on every CPU of the architecture.
_CFLAGS = ["-O3"] + _OPENMP
_LDFLAGS = list(_OPENMP)


def _source_sha256() -> str:
    """Hash of the plugin sources, compiler flags and record format (a change of any needs a new build)."""
    digest = hashlib.sha256(f"record {_RECORD_FORMAT}\0".encode() + " ".join(_CFLAGS + _LDFLAGS).encode() + b"\0")
    for path in _plugin_sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def expected_build_record() -> dict:
    """Build record a plugin must carry to be loadable with the installed torch.

    Returns:
        ``{"torch_version": torch.__version__, "cxx11_abi": bool, "cuda": torch.version.cuda
        (None for CPU builds), "source_sha256": sha256 of the plugin sources}``.

    Raises:
        ImpactUnavailableError: torch missing.
    """
    torch = require_torch()
    return {
        "torch_version": torch.__version__,
        "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
        "cuda": torch.version.cuda,
        "source_sha256": _source_sha256(),
    }


def cache_dir() -> Path:
    """Cache directory of the plugin for the installed torch.

    Returns:
        ``<cache root>/plugin/torch-<version>-abi<0|1>-<cpu|cuXYZ>-<sha[:12]>``; the cache root is
        ``$ELASTIX_BRIDGE_CACHE`` or ``~/.cache/elastix-bridge``.
    """
    rec = expected_build_record()
    cuda = "cu" + rec["cuda"].replace(".", "") if rec["cuda"] else "cpu"
    name = f"torch-{rec['torch_version']}-abi{int(rec['cxx11_abi'])}-{cuda}-{rec['source_sha256'][:12]}"
    return cache_root() / "plugin" / name


def plugin_file(directory: Path) -> Path:
    """The plugin library in a cache folder: ``directory/elastix_bridge_impact.so``."""
    return directory / f"{EXTENSION_NAME}.so"


def _record_path(so_path: Path) -> Path:
    return Path(str(so_path) + ".json")


def read_build_record(so_path: Path) -> dict | None:
    """The JSON build record beside a plugin library (``<so>.json``), or None when absent or unreadable."""
    try:
        return json.loads(_record_path(so_path).read_text())
    except (OSError, ValueError):
        return None


def _describe(rec: dict) -> str:
    abi = "cxx11 ABI" if rec.get("cxx11_abi") else "pre-cxx11 ABI"
    cuda = f"CUDA {rec['cuda']}" if rec.get("cuda") else "CPU-only"
    return f"torch {rec.get('torch_version')} ({abi}, {cuda})"


def build_record_mismatch(record: dict | None, expected: dict, check_source: bool) -> str | None:
    """Why a plugin's build ``record`` does not fit the installed torch's ``expected`` record.

    Args:
        record: :func:`read_build_record`'s answer (None: no record).
        expected: :func:`expected_build_record`.
        check_source: also compare the plugin sources' hash (a cache build; not ``$ELASTIX_BRIDGE_PLUGIN``).

    Returns:
        A sentence for an error message ("it was built for torch …"), or None when it fits.
    """
    if record is None:
        return "it has no readable build record"
    keys = _RECORD_KEYS + (("source_sha256",) if check_source else ())
    bad = [k for k in keys if record.get(k) != expected[k]]
    if not bad:
        return None
    if bad == ["source_sha256"]:
        return "it was built from other plugin sources than the installed ones"
    return f"it was built for {_describe(record)} but {_describe(expected)} is installed"


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock (POSIX flock; elsewhere the atomic rename alone protects)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        if fcntl is None:  # pragma: no cover - non-POSIX
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def import_cpp_extension() -> ModuleType:
    """``torch.utils.cpp_extension``, imported without its "No CUDA runtime is found" warning.

    A CUDA build of torch on a machine without a GPU logs that warning on import; the plugin has no
    CUDA sources, so it is noise here.
    """
    cpp_logger = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_logger.level
    cpp_logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension  # deferred: torch; build_plugin's LibTorch check runs first
    finally:
        cpp_logger.setLevel(level)
    return cpp_extension


def build_plugin(output_dir: Path | None = None, verbose: bool = False) -> Path:
    """Compile the plugin against the installed torch and write its build record.

    The compiler flags are the ones torch's own ``cpp_extension`` chooses for that torch (its C++
    standard, its ``_GLIBCXX_USE_CXX11_ABI``), plus ``-O3`` and OpenMP. The build runs in a temporary
    sibling directory that is renamed into place only when the library and record are complete,
    under an exclusive file lock; so a half-built cache is never used and concurrent builders wait
    for each other (the second one reuses the first's result when it fits).

    Args:
        output_dir: Destination directory; defaults to :func:`cache_dir`.
        verbose: Show the compiler command lines and output.

    Returns:
        Path of the built ``elastix_bridge_impact.so``; ``<that path>.json`` is its build record
        (``torch_version``, ``cxx11_abi``, ``cuda`` = ``torch.version.cuda``, ``source_sha256``,
        ``cxx_standard``, ``extension``, ``python``).

    Raises:
        ImpactUnavailableError: torch missing or outside :data:`SUPPORTED_TORCH`; ninja missing; or the
            build cannot start or failed. The message names the cause found by
            :mod:`elastix_bridge.runtime.build_checks` (no compiler, a compiler that rejects torch's C++
            standard, another standard forced, torch's or Python's headers missing, cache not
            writable, out of disk or memory, link error), its fix, and the file holding the whole
            compiler output.
    """
    torch = require_torch()
    check_torch_supported(torch)
    cpp_extension = import_cpp_extension()

    expected = expected_build_record()
    output_dir = Path(output_dir) if output_dir is not None else cache_dir()
    output_dir = output_dir.expanduser().resolve()
    so_path = plugin_file(output_dir)
    what = f"cannot build the IMPACT plugin against torch {torch.__version__}"
    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError as exc:
        raise ImpactUnavailableError(
            f"{what}: ninja is not available ({exc}).\nFix: `pip install ninja`, then run `{_REBUILD_CMD}`.") from exc
    problem = build_checks.preflight_problem(output_dir.parent)
    if problem is not None:
        raise ImpactUnavailableError(f"{what}: {problem.cause}.\nFix: {problem.fix}.")

    with _file_lock(output_dir.parent / f".{output_dir.name}.lock"):
        if so_path.is_file() and build_record_mismatch(read_build_record(so_path), expected, True) is None:
            return so_path  # another process built it while we waited for the lock
        tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.build-", dir=output_dir.parent))
        try:
            # cpp_extension renames a second in-process build of the same name to `<name>_v1`,
            # which would change the module's init symbol; always build as version 0.
            cpp_extension.JIT_EXTENSION_VERSIONER.entries.pop(EXTENSION_NAME, None)
            try:
                # is_python_module=False: only dlopen the result, do not import it from `tmp`;
                # load_plugin imports it from its final path (same inode after the rename).
                built = cpp_extension.load(
                    name=EXTENSION_NAME,
                    sources=[str(p) for p in _plugin_sources() if p.suffix == ".cpp"],
                    build_directory=str(tmp),
                    extra_cflags=list(_CFLAGS),  # copies: cpp_extension appends to them
                    extra_ldflags=list(_LDFLAGS),
                    verbose=verbose,
                    is_python_module=False,
                )
            except Exception as exc:  # ninja/compiler/linker failures surface as several types
                raise _build_failure(what, str(exc), tmp, output_dir) from exc
            built = Path(built)
            if built != plugin_file(tmp):
                built.replace(plugin_file(tmp))
            record = dict(expected, extension=EXTENSION_NAME, python=sys.version.split()[0],
                          cxx_standard=build_checks.cxx_standard_of(_ninja_cflags(tmp)))
            _record_path(plugin_file(tmp)).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
            if output_dir.exists():  # stale or mismatched build: move it aside, then swap in
                stale = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.stale-", dir=output_dir.parent))
                output_dir.replace(stale / "old")
                shutil.rmtree(stale, ignore_errors=True)
            tmp.chmod(0o755)  # mkdtemp creates 0700; the cache may be shared
            tmp.replace(output_dir)
            (output_dir.parent / f"{output_dir.name}.build.log").unlink(missing_ok=True)  # an earlier failure's
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return so_path


def _ninja_cflags(build_dir: Path) -> str:
    """The compiler flags cpp_extension chose (``cflags =`` of its ``build.ninja``; "" if absent)."""
    try:
        text = (build_dir / "build.ninja").read_text()
    except OSError:
        return ""
    return next((line.split("=", 1)[1].strip() for line in text.splitlines() if line.startswith("cflags =")), "")


def _build_failure(what: str, output: str, build_dir: Path, output_dir: Path) -> ImpactUnavailableError:
    """The error for a failed compile: its diagnosed cause and fix, and the log file with everything."""
    torch = require_torch()
    cflags = _ninja_cflags(build_dir)
    diagnosis = build_checks.diagnose_build_log(output, build_checks.cxx_standard_of(cflags), torch.__version__,
                                                build_checks.compiler_cplusplus(cflags))
    text = (f"{what}\ncause: {diagnosis.cause}\nfix: {diagnosis.fix}\ncompiler: {build_checks.compiler_command()}\n"
            f"compiler flags chosen by torch's cpp_extension: {cflags or '(none written)'}\n"
            f"\n=== compiler output ===\n{output}\n")
    try:
        log_file = f"full compiler output: {build_checks.write_build_log(text, output_dir.parent, output_dir.name + '.build.log')}"
    except OSError as exc:
        log_file = f"the compiler output could not be saved ({exc}); its end:\n{_tail(output)}"
    first = f"\nfirst compiler error: {diagnosis.first_error}" if diagnosis.first_error else ""
    error = ImpactUnavailableError(f"{what}: {diagnosis.cause}.\nFix: {diagnosis.fix}.{first}\n{log_file}")
    error.diagnosis = diagnosis
    return error


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _import_extension(so_path: Path):
    key = os.path.realpath(so_path)
    module = _loaded_by_file.get(key)
    if module is not None:
        return module
    require_torch()  # the extension links against libtorch; torch must be initialised first
    spec = importlib.util.spec_from_file_location(EXTENSION_NAME, key)
    if spec is None or spec.loader is None:
        raise ImpactUnavailableError(f"cannot import the IMPACT plugin {so_path}: not an extension module")
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError as exc:
        raise ImpactUnavailableError(
            f"cannot import the IMPACT plugin {so_path}: {exc}; rebuild it with `{_REBUILD_CMD}`."
        ) from exc
    _loaded_by_file[key] = module
    return module


def load_plugin() -> ModuleType:
    """Return the compiled plugin module, building it on first use; cached per process.

    With ``$ELASTIX_BRIDGE_PLUGIN`` set, that ``.so`` is used (its record is ``<path>.json``);
    otherwise the cache directory of the installed torch (:func:`cache_dir`), built on first use.
    The build record is compared with :func:`expected_build_record` before importing.

    Returns:
        The ``elastix_bridge_impact`` extension module.

    Raises:
        ImpactUnavailableError: torch missing or outside :data:`SUPPORTED_TORCH`, plugin file
            missing, record mismatch, build failure.
    """
    env = os.environ.get(PLUGIN_ENV) or None
    key = (env, str(cache_root()))
    with _lock:
        module = _loaded.get(key)
        if module is not None:
            return module
        with run_timing.phase("plugin load and check"):
            module = _checked_plugin(env)
        _loaded[key] = module
        return module


def _checked_plugin(env: Optional[str]) -> ModuleType:
    """The plugin of ``$ELASTIX_BRIDGE_PLUGIN`` or of the cache, its build record checked (built if absent)."""
    check_torch_supported(require_torch())
    expected = expected_build_record()
    if env is not None:
        so_path = Path(env).expanduser()
        if not so_path.is_file():
            raise ImpactUnavailableError(
                f"${PLUGIN_ENV} points to {so_path}, which does not exist; unset ${PLUGIN_ENV} to use "
                f"the plugin built for the installed torch, or build one with `{_REBUILD_CMD}`."
            )
        why = build_record_mismatch(read_build_record(so_path), expected, check_source=False)
        if why is not None:
            raise ImpactUnavailableError(
                f"the IMPACT plugin {so_path} (from ${PLUGIN_ENV}) cannot be used: {why}; rebuild it with "
                f"`{_REBUILD_CMD}` or unset ${PLUGIN_ENV}."
            )
    else:
        so_path = plugin_file(cache_dir())
        if not so_path.is_file():
            log.info(
                "Building the IMPACT plugin for torch %s into %s (first use only; takes ~15-60 s)...",
                expected["torch_version"],
                so_path.parent,
            )
            so_path = build_plugin()
        why = build_record_mismatch(read_build_record(so_path), expected, check_source=True)
        if why is not None:
            raise ImpactUnavailableError(
                f"the cached IMPACT plugin {so_path} cannot be used: {why}; rebuild it with `{_REBUILD_CMD}`."
            )
    return _import_extension(so_path)


# ---------------------------------------------------------------------------------------------
# Devices, JIT switches, models
# ---------------------------------------------------------------------------------------------


def resolve_device(gpu: int) -> "torch.device":
    """Map ``ImpactGPU`` to a torch device (docs/design.md §I2.6), checking the GPU really works.

    Args:
        gpu: ``ImpactGPU``; < 0 selects the CPU, >= 0 a CUDA device index.

    Returns:
        ``torch.device("cpu")`` or ``torch.device("cuda:<gpu>")``.

    Raises:
        ImpactUnavailableError: CUDA unavailable or unusable, or index out of range.
    """
    torch = require_torch()
    gpu = int(gpu)
    if gpu < 0:
        return torch.device("cpu")
    fix = "set `(ImpactGPU -1)` to run on the CPU, or install a CUDA build of torch matching your driver"
    if not torch.cuda.is_available():
        kind = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ImpactUnavailableError(
            f"ImpactGPU {gpu} asks for a GPU but CUDA is not available: the installed torch {torch.__version__} "
            f"is {kind}, or no NVIDIA driver/GPU is usable; {fix}."
        )
    count = torch.cuda.device_count()
    if gpu >= count:
        raise ImpactUnavailableError(
            f"Requested GPU {gpu} is out of range. Only {count} GPUs are available "
            f"(indices 0..{count - 1}); change ImpactGPU or set `(ImpactGPU -1)`."
        )
    device = torch.device("cuda", gpu)
    try:  # is_available() can be true while the driver/arch cannot actually run kernels
        (torch.ones(1, device=device) + 1).cpu()
    except Exception as exc:
        raise ImpactUnavailableError(f"CUDA device {device} is not usable ({exc}); {fix}.") from exc
    return device


#: The process-global TorchScript switches upstream IMPACT turns off (docs/design.md §I3.6).
JIT_SWITCHES = ("texpr_fuser_enabled", "profiling_mode", "profiling_executor", "graph_executor_optimize")


def jit_state() -> dict:
    """The four process-global TorchScript switches that upstream IMPACT turns off (docs/design.md §I3.6).

    Read through ``torch._C`` (the same LibTorch globals the bridge's plugin and a native plugin
    see), so that no plugin needs to be built to read or set them. The profiling switches have no
    getter, so they are read by setting and restoring them.

    Returns:
        ``{"texpr_fuser_enabled", "profiling_mode", "profiling_executor", "graph_executor_optimize"}``
        -> bool; a switch this torch does not expose is left out.

    Raises:
        ImpactUnavailableError: torch missing.
    """
    c = require_torch()._C
    state = {}
    if hasattr(c, "_jit_texpr_fuser_enabled"):
        state["texpr_fuser_enabled"] = bool(c._jit_texpr_fuser_enabled())
    for key, setter in (("profiling_mode", "_jit_set_profiling_mode"),
                        ("profiling_executor", "_jit_set_profiling_executor")):
        if hasattr(c, setter):
            old = getattr(c, setter)(True)
            getattr(c, setter)(old)
            state[key] = bool(old)
    if hasattr(c, "_get_graph_executor_optimize"):
        state["graph_executor_optimize"] = bool(c._get_graph_executor_optimize())
    return state


def set_jit_state(state: dict) -> dict:
    """Set any of the :data:`JIT_SWITCHES`; returns their previous values (pass it back to restore).

    Raises:
        ValueError: an unknown switch name (nothing is changed then).
        ImpactUnavailableError: torch missing.
    """
    unknown = sorted(set(state) - set(JIT_SWITCHES))
    if unknown:
        raise ValueError(f"unknown JIT switch(es) {', '.join(unknown)}; valid: {', '.join(JIT_SWITCHES)}")
    c = require_torch()._C
    previous = jit_state()
    setters = {"texpr_fuser_enabled": "_jit_set_texpr_fuser_enabled", "profiling_mode": "_jit_set_profiling_mode",
               "profiling_executor": "_jit_set_profiling_executor",
               "graph_executor_optimize": "_set_graph_executor_optimize"}
    for key, value in state.items():
        if hasattr(c, setters[key]):
            getattr(c, setters[key])(bool(value))
    return {key: previous[key] for key in state if key in previous}


@contextlib.contextmanager
def jit_optimization_disabled() -> Iterator[None]:
    """Switch the four TorchScript optimisation switches off for the block (docs/design.md §I3.6).

    On exit, even on an exception, the exact previous state is restored (upstream leaves them off
    for the rest of the process; we do not, so other torch users in the process are unaffected).

    Raises:
        ImpactUnavailableError: torch missing.
    """
    previous = set_jit_state({key: False for key in JIT_SWITCHES})
    try:
        yield
    finally:
        set_jit_state(previous)


def model_file_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a model file, as the text after ``"<key> '<value>': "``; None when it is a file.

    Missing, empty, a folder, a device: :func:`elastix_bridge.core.files.input_file_problem`.
    """
    problem = input_file_problem(Path(path).expanduser() if str(path).strip() else path)
    if problem is None:
        return None
    fix = (f"give an existing TorchScript file (an absolute path avoids working-directory surprises) or a built-in "
           f"model name ({', '.join(RESERVED_MODELS)})")
    if problem.startswith(("does not exist", "is a symbolic link")):
        return f"model file not found; {fix}"
    return f"the model path {problem.split(';')[0]}; {fix}"


def model_file(entry: str | Path, base_dir: str | Path | None = None) -> Path:
    """The file a ``ModelsPath`` entry names (docs/design.md §I2.3, §2.6).

    A reserved name (``mind-ssc-2d``, ``mind-ssc-3d``;
    :data:`~elastix_bridge.core.reserved_models.RESERVED_MODELS`) resolves to the cached TorchScript
    file of :func:`elastix_bridge.runtime.mind.mind_model_path` (written on first use; imports
    torch); any other entry to :func:`elastix_bridge.core.impact_parameters.resolve_model_path`
    (relative to ``base_dir`` or the working directory; existence is not checked).

    Returns:
        An absolute :class:`~pathlib.Path`.

    Raises:
        ImpactUnavailableError: a reserved name, and torch missing.
    """
    text = os.fspath(entry)
    if text not in RESERVED_MODELS:
        return resolve_model_path(text, base_dir)
    require_torch()
    from elastix_bridge.runtime.mind import mind_model_path  # deferred: imports torch; the LibTorch check ran

    return mind_model_path(text)


def load_feature_model(path: str | Path, device: torch.device | str, half: bool = False, *,
                       parameter: str = "ImpactModelsPath") -> Any:
    """Load a feature model with upstream's conventions (docs/design.md §I3.1–§I3.5).

    Args:
        path: TorchScript file, or a ``torch.export`` program ending in ``.pt2``
            (:class:`~elastix_bridge.runtime.exported_models.ExportedFeatureModel`); relative paths
            are relative to the current working directory.
        device: ``torch.device`` or string ("cpu", "cuda:0").
        half: cast weights and inputs to float16 (``ImpactUseMixedPrecision``).
        parameter: parameter-file option the path came from, for error messages.

    Returns:
        The plugin's ``FeatureModel`` or an ``ExportedFeatureModel`` (``num_arguments``,
        ``forward(x, n_layers, stats, direction)``).

    Raises:
        ImpactModelError: missing file (or a folder, a device, an empty path: :func:`model_file_problem`), not a
            model, no usable forward.
        ImpactUnavailableError: torch/plugin unavailable, or the model cannot be moved to `device`.
    """
    plugin = load_plugin()
    p = Path(path).expanduser()
    where = f"{parameter} {str(path)!r}"
    if not p.is_absolute():
        where += f" (relative to the current working directory {os.getcwd()})"
    problem = model_file_problem(path)
    if problem:
        raise ImpactModelError(f"{where}: {problem}")
    # A process that registers pair after pair (a batch worker) loads each model once: the models are
    # read-only (eval mode, frozen weights), and a changed file is a new key.
    stat = p.stat()
    key = (id(plugin), str(p.resolve()), stat.st_mtime_ns, stat.st_size, str(device), bool(half))
    if key in _models:
        return _models[key]
    from elastix_bridge.runtime.exported_models import (  # deferred: imports torch; load_plugin checked LibTorch
        EXPORTED_SUFFIX, ExportedFeatureModel)

    try:
        if p.suffix == EXPORTED_SUFFIX:  # torch.export (docs/models.md): run from Python, same convention
            model = ExportedFeatureModel(p, str(device), bool(half))
        else:
            model = plugin.FeatureModel(str(p), str(device), bool(half))
    except ValueError as exc:
        raise ImpactModelError(f"{where}: {exc}") from exc
    except RuntimeError as exc:
        raise ImpactUnavailableError(f"{where}: {exc}") from exc
    if len(_models) >= _MODELS_KEPT:
        _models.pop(next(iter(_models)))
    _models[key] = model
    return model

