"""``elastix-bridge doctor``: can ``(Metric "Impact")`` run here, and if not, why and what to do.

:func:`collect_report` gathers a structured report (a JSON-serialisable dict); :func:`format_report`
renders it as plain text. Nothing is built, installed or changed unless ``build=True`` (the
``--build`` flag), which compiles the bridge's plugin when it is missing. What is looked at:

* **itk-elastix**: version (package metadata) and whether its elastix has upstream's lazy IMPACT
  loader. Detected without importing itk or running a registration: the loader's message
  ``IMPACT requested but could not be loaded`` is a string literal of that code, so it is present in
  the elastix library of the wheel (``itk/_ElastixPython*.so``) exactly when the loader was compiled
  in; the file is scanned through ``mmap`` (a fraction of a second).
* **torch**: version, C++ ABI, where its LibTorch lives (``torch/lib``), CUDA build
  (``torch.version.cuda``), visible GPUs (``torch.cuda``) and the NVIDIA driver (``nvidia-smi``).
* **the bridge's plugin**: the file :func:`elastix_bridge.runtime.loader.load_plugin` would use, its JSON
  build record against the installed torch, and whether it imports; if it is not built, whether it
  can be (C++ compiler, ninja, a cache folder it may create and write), since ``load_plugin`` builds it on
  first use.
* **TorchScript JIT switches** (docs/design.md §I3.6).
* **a native upstream plugin** named by ``$ELASTIX_BRIDGE_NATIVE_PLUGIN``: the static checks of
  :func:`elastix_bridge.runtime.native_plugins.inspect_native_plugin`, then a trial preload in a child
  process (so nothing is loaded into this one); also plugin files that elastix would find on its own
  search path.

The report's ``ok`` is False (and the command exits 1) when Impact cannot run: torch or itk-elastix
missing, the bridge's plugin unusable and not buildable, or a native plugin that was asked for but
would not load. Each problem says what failed, why, and what to do.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import IO, Optional

from elastix_bridge import __version__
from elastix_bridge.runtime import build_checks, cache, installed_elastix, loader, native_plugins

__all__ = ["collect_report", "format_report", "print_report"]

_INSTALL_TORCH = 'pip install "elastix-bridge[impact]"'


def _problem(report: dict, what: str, why: str, fix: str) -> None:
    report["problems"].append({"what": what, "why": why, "fix": fix})


def _itk_elastix_section(report: dict) -> dict:
    version = installed_elastix.itk_elastix_version()
    library = installed_elastix.elastix_library()
    section = {"installed": version is not None, "version": version,
               "elastix_library": str(library) if library else None, "lazy_impact_loader": None,
               "elastix_git_revision": None,
               "detected_by": f"looking for {installed_elastix.LAZY_LOADER_MESSAGE.decode()!r} in the elastix library"}
    if version is None:
        _problem(report, "itk-elastix is not installed", "the bridge reads images and runs elastix stages with it",
                 'pip install "itk-elastix>=0.25.2"')
        return section
    if library is None:
        section["detected_by"] = "not checked: the wheel holds no itk/_ElastixPython*.so"
        return section
    try:
        section["lazy_impact_loader"] = installed_elastix.lazy_impact_loader(library)
        section["elastix_git_revision"] = installed_elastix.elastix_git_revision(library)
    except OSError as exc:
        section["detected_by"] = f"not checked: {library} is unreadable ({exc})"
    return section


def _nvidia_smi() -> Optional[dict]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)}
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip()[-300:] or f"exit status {proc.returncode}"}
    rows = [[c.strip() for c in line.split(",")] for line in proc.stdout.strip().splitlines() if line.strip()]
    return {"gpus": [r[0] for r in rows], "driver_version": rows[0][1] if rows and len(rows[0]) > 1 else None}


def _torch_section(report: dict):
    section = {"installed": False, "version": None, "error": None}
    try:
        import torch  # deferred: torch is optional; its import error is part of the report
    except Exception as exc:  # ImportError, or a broken install (OSError from a missing .so, ...)
        section["error"] = f"{type(exc).__name__}: {exc}"
        _problem(report, "PyTorch cannot be imported", section["error"],
                 f"{_INSTALL_TORCH} (or `pip install torch`; for a GPU, a CUDA build from "
                 "https://pytorch.org/get-started/locally/)")
        section["nvidia_smi"] = _nvidia_smi()
        return section, None
    section.update(
        installed=True,
        version=torch.__version__,
        supported_range=loader.supported_torch_range(),
        supported=loader.torch_supported(str(torch.__version__)),
        location=str(Path(torch.__file__).parent),
        libtorch_dir=str(Path(torch.__file__).parent / "lib"),
        cxx11_abi=bool(torch._C._GLIBCXX_USE_CXX11_ABI),
        cuda=torch.version.cuda,
        cuda_available=False,
        device_count=0,
        devices=[],
    )
    try:
        section["cuda_available"] = bool(torch.cuda.is_available())
        if section["cuda_available"]:
            section["device_count"] = torch.cuda.device_count()
            section["devices"] = [torch.cuda.get_device_name(i) for i in range(section["device_count"])]
    except Exception as exc:  # a driver problem shows here
        section["cuda_error"] = f"{type(exc).__name__}: {exc}"
    section["nvidia_smi"] = _nvidia_smi()
    if not section["supported"]:
        why = f"the IMPACT plugin is built and run in CI with torch {loader.supported_torch_range()} only"
        if os.environ.get(loader.UNTESTED_TORCH_ENV, "").strip() not in ("", "0"):
            report["notes"].append(f"torch {torch.__version__}: {why}; ${loader.UNTESTED_TORCH_ENV} is set, so it "
                                   "is used anyway")
        else:
            _problem(report, f"torch {torch.__version__} is outside the tested range", why,
                     f'pip install "torch{loader.supported_torch_range()}" (or set {loader.UNTESTED_TORCH_ENV}=1 to '
                     "try this torch anyway)")
    return section, torch


def _build_tools() -> dict:
    compiler = (build_checks.compiler_command() or ["c++"])[0]
    tools = {"compiler": compiler, "compiler_path": shutil.which(compiler), "ninja": False}
    try:
        tools["ninja"] = bool(loader.import_cpp_extension().is_ninja_available())
    except Exception:  # torch missing or broken: reported elsewhere
        tools["ninja"] = shutil.which("ninja") is not None
    return tools


def _cache_problem(folder: Path) -> Optional[str]:
    """Why the plugin cannot be built into ``folder`` (created on first use), or None; nothing is written.

    The first part of ``folder`` that exists must be a folder this process may write
    (the build's own check, :func:`build_checks.preflight_problem`, writes a file; the doctor does not).
    """
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"the plugin cache folder {folder} cannot be created: {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"the plugin cache folder {folder} cannot be created or written: {existing} is not writable"
    return None


def _plugin_section(report: dict, torch, build: bool) -> dict:
    env = os.environ.get(loader.PLUGIN_ENV) or None
    section = {"plugin_env": env, "cache_root": str(cache.cache_root()), "path": None, "built": False,
               "record": None, "expected": None, "matches": None, "mismatch": None, "imports": None,
               "built_now": False, "build_tools": _build_tools()}
    if torch is None:
        section["state"] = "unknown (needs torch)"
        return section
    try:
        expected = loader.expected_build_record()
        so = Path(env).expanduser() if env else loader.plugin_file(loader.cache_dir())
    except loader.ImpactUnavailableError as exc:  # e.g. the plugin sources are missing
        section["state"] = "unusable"
        _problem(report, "the IMPACT plugin cannot be located", str(exc),
                 'reinstall with `pip install "elastix-bridge[impact]"`')
        return section
    section.update(path=str(so), expected=expected)

    def inspect() -> None:
        section["built"] = so.is_file()
        section["record"] = loader.read_build_record(so) if section["built"] else None
        section["mismatch"] = (loader.build_record_mismatch(section["record"], expected, check_source=env is None)
                               if section["built"] else None)
        section["matches"] = section["built"] and section["mismatch"] is None

    inspect()
    if build and not section["matches"]:
        if env:
            section["build_skipped"] = f"${loader.PLUGIN_ENV} is set, so the bridge uses {so}, not a cache build"
        else:
            try:
                loader.build_plugin()
                section["built_now"] = True
            except loader.ImpactUnavailableError as exc:
                section["build_error"] = str(exc)
                diagnosis = getattr(exc, "diagnosis", None)
                section["build_failure_kind"] = diagnosis.kind if diagnosis else None
                section["build_fix"] = diagnosis.fix if diagnosis else None
            inspect()
    tools = section["build_tools"]
    buildable = bool(tools["compiler_path"]) and tools["ninja"]
    if section["matches"]:
        try:
            loader.load_plugin()  # the file exists and fits: this imports it, it never builds
            section["imports"] = True
            section["state"] = "ready"
        except loader.ImpactUnavailableError as exc:
            section["imports"] = False
            section["state"] = "does not import"
            _problem(report, f"the IMPACT plugin {so} does not import", str(exc),
                     "elastix-bridge build-plugin" if not env else f"rebuild it, or unset ${loader.PLUGIN_ENV}")
    elif env:
        section["state"] = "unusable"
        why = f"{so} does not exist" if not section["built"] else section["mismatch"]
        _problem(report, f"${loader.PLUGIN_ENV} names an IMPACT plugin that cannot be used", why,
                 f"unset ${loader.PLUGIN_ENV} (the bridge then builds its own), or rebuild it with "
                 "`elastix-bridge build-plugin --output DIR`")
    elif section["built"]:
        section["state"] = "stale"
        _problem(report, f"the cached IMPACT plugin {so} cannot be used", section["mismatch"],
                 "elastix-bridge build-plugin (or elastix-bridge doctor --build)")
    elif section.get("build_error"):
        section["state"] = "build failed"
        _problem(report, "building the IMPACT plugin failed", section["build_error"],
                 section.get("build_fix") or "see the message; then `elastix-bridge build-plugin`")
    elif cache_why := _cache_problem(so.parent):
        section["state"] = "not built, and the cache folder cannot hold it"
        _problem(report, "the IMPACT plugin is not built and its cache folder cannot be used", cache_why,
                 build_checks.CACHE_FIX)
    elif buildable:
        section["state"] = "not built (built automatically on first use)"
        report["notes"].append(
            "The IMPACT plugin is not built yet: the first Impact registration compiles it (a minute or more, once "
            "per torch version); to do it now run `elastix-bridge build-plugin` or `elastix-bridge doctor --build`.")
    else:
        section["state"] = "not built, and cannot be built here"
        missing = [name for name, ok in (("a C++ compiler " + repr(tools["compiler"]), tools["compiler_path"]),
                                         ("ninja", tools["ninja"])) if not ok]
        _problem(report, "the IMPACT plugin is not built and cannot be built here",
                 f"building it needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} missing",
                 "install a C++ compiler for the C++ standard torch's headers need (C++20 for the supported "
                 "torch: g++ >= 10, e.g. `apt-get install g++`) and ninja (`pip install ninja`), then run "
                 "`elastix-bridge build-plugin`")
    return section


def _jit_section(torch) -> dict:
    section = {"now": None,
               "during_impact": "all four off: the bridge engine switches them off for each Impact registration and "
                                "restores them afterwards; preloading a native plugin switches them off for the "
                                "process (upstream elastix does the same in BeforeRegistration)"}
    if torch is not None:
        section["now"] = loader.jit_state()
    return section


def _native_section(report: dict, torch, trial: bool) -> dict:
    value = os.environ.get(native_plugins.NATIVE_PLUGIN_ENV, "").strip() or None
    section = {"env": native_plugins.NATIVE_PLUGIN_ENV, "value": value, "candidates": [], "would_load": None,
               "trial": None, "on_loader_path": [str(p) for p in native_plugins.plugins_on_loader_path()]}
    if section["on_loader_path"]:
        report["notes"].append(
            f"elastix's own loader would find {', '.join(section['on_loader_path'])} without any preloading "
            "(LD_LIBRARY_PATH or site-packages/itk_elastix.libs), for Impact maps that reach itk-elastix.")
    if value is None:
        return section
    what = f"the native IMPACT plugin ${native_plugins.NATIVE_PLUGIN_ENV}={value} would not load"
    try:
        candidates = native_plugins.native_plugin_candidates(value)
    except native_plugins.NativePluginError as exc:
        section["would_load"] = False
        _problem(report, what, str(exc), f"fix the path, or unset ${native_plugins.NATIVE_PLUGIN_ENV}")
        return section
    if torch is None:
        section["would_load"] = False
        _problem(report, what, "it links against LibTorch, which comes from PyTorch, and torch cannot be imported",
                 _INSTALL_TORCH)
        return section
    checks = [native_plugins.inspect_native_plugin(p, torch) for p in candidates]
    section["candidates"] = [c.as_dict() for c in checks]
    if not any(c.ok for c in checks):
        section["would_load"] = False
        for c in checks:
            for problem in c.problems:
                _problem(report, what, problem, "see docs/native_plugins.md")
        return section
    if not trial:
        section["trial"] = "skipped"
        return section
    ok, message = native_plugins.trial_preload(value)
    section["would_load"], section["trial"] = ok, message
    if not ok:
        _problem(report, what, message, "see docs/native_plugins.md")
    return section


def collect_report(build: bool = False, trial_preload: bool = True) -> dict:
    """Gather the doctor's report.

    Args:
        build: Compile the bridge's IMPACT plugin when it is missing or stale (``--build``).
        trial_preload: Try ``$ELASTIX_BRIDGE_NATIVE_PLUGIN`` in a child process (a few seconds: the
            child imports torch); without it only the static checks run.

    Returns:
        A JSON-serialisable dict with the sections ``bridge``, ``itk_elastix``, ``torch``, ``plugin``,
        ``jit``, ``native_plugin``, plus ``ok`` (Impact can run), ``problems`` (each
        ``{"what", "why", "fix"}``) and ``notes``. Never raises for a problem it finds.
    """
    report: dict = {"problems": [], "notes": []}
    report["bridge"] = {"version": __version__, "location": str(Path(__file__).resolve().parent),
                        "python": sys.version.split()[0], "executable": sys.executable,
                        "platform": f"{platform.system()} {platform.machine()}"}
    report["itk_elastix"] = _itk_elastix_section(report)
    report["torch"], torch = _torch_section(report)
    report["plugin"] = _plugin_section(report, torch, build)
    report["jit"] = _jit_section(torch)
    report["native_plugin"] = _native_section(report, torch, trial_preload)
    report["ok"] = not report["problems"]
    return report


# ---------------------------------------------------------------------------------------------
# Plain text
# ---------------------------------------------------------------------------------------------


def _rows(title: str, rows) -> list:
    rows = [(k, v) for k, v in rows if v is not None]
    width = max((len(k) for k, _ in rows), default=0)
    return [title] + [f"  {k.ljust(width)}  {v}" for k, v in rows]


def _yes(value) -> str:
    return {True: "yes", False: "no", None: "unknown"}[value]


def format_report(report: dict) -> str:
    """Render :func:`collect_report`'s dict as readable plain text (one section per block)."""
    b, ie, t, p, j, n = (report[k] for k in ("bridge", "itk_elastix", "torch", "plugin", "jit", "native_plugin"))
    lines = [f"elastix-bridge {b['version']} doctor  (Python {b['python']}, {b['platform']})", ""]
    lines += _rows("itk-elastix", [
        ("version", ie["version"] or "not installed"),
        ("elastix library", ie["elastix_library"]),
        ("elastix commit", ie["elastix_git_revision"] and
         f"{ie['elastix_git_revision']}  (a native plugin must be built from it)"),
        ("lazy IMPACT loader", None if not ie["installed"] else
         f"{_yes(ie['lazy_impact_loader'])}  ({ie['detected_by']})"),
    ]) + [""]
    if t["installed"]:
        smi = t.get("nvidia_smi")
        driver = ("not found (no nvidia-smi)" if smi is None else smi.get("driver_version") or smi.get("error"))
        gpus = (", ".join(f"{i}: {name}" for i, name in enumerate(t["devices"])) if t["devices"]
                else "none visible to torch" + (f" ({t['cuda_error']})" if t.get("cuda_error") else ""))
        lines += _rows("torch", [
            ("version", f"{t['version']}  ({'cxx11' if t['cxx11_abi'] else 'pre-cxx11'} C++ ABI)"),
            ("tested range", f"{t['supported_range']}: " + ("yes" if t["supported"] else "NO, outside")),
            ("location", t["location"]),
            ("LibTorch", t["libtorch_dir"]),
            ("CUDA build", t["cuda"] or "none (CPU-only build)"),
            ("GPUs", gpus),
            ("NVIDIA driver", driver),
        ]) + [""]
    else:
        lines += _rows("torch", [("import", f"failed: {t['error']}")]) + [""]
    tools = p["build_tools"]
    record = p.get("record") or {}
    lines += _rows("IMPACT plugin (bridge engine)", [
        ("state", p.get("state")),
        ("file", p["path"]),
        ("from", f"${loader.PLUGIN_ENV}" if p["plugin_env"] else f"the per-torch cache under {p['cache_root']}"),
        ("build record", (f"torch {record.get('torch_version')}, "
                          f"{'cxx11' if record.get('cxx11_abi') else 'pre-cxx11'} ABI, "
                          f"{'CUDA ' + record['cuda'] if record.get('cuda') else 'CPU'}"
                          + (f", {record['cxx_standard']}" if record.get("cxx_standard") else "")
                          + ("" if p["matches"] else f"  -- {p['mismatch']}")) if record else
         (p["mismatch"] if p["built"] else None)),
        ("built now", "yes (--build)" if p["built_now"] else None),
        ("--build", p.get("build_skipped")),
        ("build tools", f"compiler {tools['compiler']}: {tools['compiler_path'] or 'not found'}; "
                        f"ninja: {_yes(tools['ninja'])}"),
    ]) + [""]
    now = j["now"]
    lines += _rows("TorchScript JIT switches", [
        ("now", ", ".join(f"{k}={v}" for k, v in now.items()) if now else "unknown (needs torch)"),
        ("during Impact", j["during_impact"]),
    ]) + [""]
    native_rows = [(f"${n['env']}", n["value"] or "not set")]
    for c in n["candidates"]:
        native_rows += [
            (Path(c["path"]).name, f"{c['path']}  (SONAME {c['soname']}, {c['kind']})"),
            ("  needs", ", ".join(c["needed"]) or "nothing"),
            ("  LibTorch from", ", ".join(f"{k} -> {v or 'MISSING'}" for k, v in c["torch_libraries"].items())
             or "none"),
        ]
        native_rows += [("  warning", w) for w in c["warnings"]]
    if n["value"]:
        how = ("  (trial preload in a child process: " + n["trial"] + ")" if n["would_load"] and n["trial"] else
               "  (see the problems below)" if n["would_load"] is False else "")
        native_rows.append(("would load", _yes(n["would_load"]) + how))
    native_rows.append(("on elastix's search path", ", ".join(n["on_loader_path"]) or "none"))
    lines += _rows("native upstream plugin", native_rows) + [""]
    for note in report["notes"]:
        lines.append(f"note: {note}")
    if report["problems"]:
        lines.append(f"PROBLEMS ({len(report['problems'])}): Impact cannot run here.")
        for i, prob in enumerate(report["problems"], 1):
            lines += [f"  {i}. {prob['what']}", f"     why: {prob['why']}", f"     fix: {prob['fix']}"]
    else:
        lines.append("OK: Impact can run here.")
    return "\n".join(lines)


def print_report(report: dict, as_json: bool = False, file: Optional[IO[str]] = None) -> None:
    """Print the report as plain text, or as indented JSON with ``as_json``."""
    file = file or sys.stdout
    print(json.dumps(report, indent=2, default=str) if as_json else format_report(report), file=file)
