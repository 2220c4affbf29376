"""Before and after compiling the IMPACT plugin: pre-flight checks and the cause of a failed build.

:func:`elastix_bridge.runtime.loader.build_plugin` compiles ``plugin/*.cpp`` with
``torch.utils.cpp_extension.load``, which chooses the compiler flags for the installed torch (its
C++ standard, ``-D_GLIBCXX_USE_CXX11_ABI``, include and library paths) and runs ninja. This module
checks what can be checked before that (a compiler, a writable cache folder with room for the build)
and, when the compiler fails, reads its output and names the cause with its fix: a compiler that
rejects torch's C++ standard, a build that ran with another standard than torch's, torch's or
Python's headers missing, no compiler, out of disk space, out of memory, a link error. The whole
compiler output is kept in a log file whose path the message names.

Nothing here imports torch at module import time.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from elastix_bridge.core.files import write_atomically

__all__ = [
    "BUILD_SPACE_BYTES",
    "BuildDiagnosis",
    "compiler_command",
    "cxx_standard_of",
    "diagnose_build_log",
    "preflight_problem",
    "write_build_log",
]

# A build writes ~2 MB into the cache and a few tens of MB of compiler temporaries (TMPDIR);
# refusing below this leaves room for both with a margin.
BUILD_SPACE_BYTES = 200 * 2**20

_STD = re.compile(r"(?:^|\s)-std=(?:c|gnu)\+\+(\w+)")


@dataclass(frozen=True)
class BuildDiagnosis:
    """Why a plugin build failed and what to do.

    Attributes:
        cause: one sentence naming the cause (what failed and why).
        fix: what the user does about it.
        kind: a short stable tag (``"compiler_rejects_standard"``, ``"wrong_standard"``,
            ``"missing_torch_headers"``, ``"missing_python_headers"``, ``"no_compiler"``,
            ``"out_of_disk"``, ``"out_of_memory"``, ``"link_error"``, ``"compile_error"``,
            ``"cache_not_writable"``), used by tests and ``doctor --json``.
        first_error: the first ``error`` line of the compiler output, when there is one.
    """

    kind: str
    cause: str
    fix: str
    first_error: Optional[str] = None


def compiler_command() -> list[str]:
    """The C++ compiler command cpp_extension runs: ``$CXX`` (split like a shell would) or ``c++``."""
    return shlex.split(os.environ.get("CXX", "").strip() or "c++")


def cxx_standard_of(flags: str) -> Optional[str]:
    """The C++ standard a compiler command line asks for (its last ``-std=``), e.g. ``"c++20"``.

    Args:
        flags: a compiler command line or flag string.

    Returns:
        ``"c++NN"`` (``gnu++NN`` is reported as ``c++NN``), or None without any ``-std=``.
    """
    found = _STD.findall(flags)
    return f"c++{found[-1]}" if found else None


_CPLUSPLUS = {201103: "c++11", 201402: "c++14", 201703: "c++17", 202002: "c++20", 202302: "c++23"}


def _cplusplus_value(standard: str) -> Optional[int]:
    return next((value for value, name in _CPLUSPLUS.items() if name == standard), None)


def compiler_cplusplus(cflags: str) -> Optional[int]:
    """The ``__cplusplus`` the compiler really uses with these flags (a wrapper may add its own ``-std=``).

    Runs ``$CXX <cflags> -dM -E -x c++ /dev/null`` (preprocessor only, well under a second).

    Args:
        cflags: the flag string of the build (``cflags =`` of cpp_extension's ``build.ninja``).

    Returns:
        e.g. ``202002`` for C++20, or None when the compiler cannot be run or prints no value.
    """
    try:
        proc = subprocess.run(compiler_command() + shlex.split(cflags) + ["-dM", "-E", "-x", "c++", os.devnull],
                              capture_output=True, text=True, timeout=60)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"#define __cplusplus (\d+)L?", proc.stdout)
    return int(found.group(1)) if found else None


def _no_compiler(compiler: str) -> BuildDiagnosis:
    return BuildDiagnosis(
        "no_compiler",
        f"no C++ compiler: {compiler!r} (from $CXX, or the default c++) is not found on PATH",
        "install one (Debian/Ubuntu: `apt-get install g++`; Fedora: `dnf install gcc-c++`), or point $CXX at an "
        "installed C++ compiler, then run `elastix-bridge build-plugin`")


CACHE_FIX = ("set $ELASTIX_BRIDGE_CACHE to a writable folder with room (the plugin is built there), or build it "
             "elsewhere with `elastix-bridge build-plugin --output DIR` and point $ELASTIX_BRIDGE_PLUGIN at "
             "DIR/elastix_bridge_impact.so")


def preflight_problem(build_parent: Path) -> Optional[BuildDiagnosis]:
    """What would make a build fail before it starts, or None.

    Checks, in order: the compiler of :func:`compiler_command` is on PATH; ``build_parent`` (the cache
    folder the build directory is made in) can be created and written (a file is really written:
    permission bits say nothing for root or on a read-only mount); it and the temporary folder
    (``$TMPDIR``, where gcc writes its intermediate files) each have :data:`BUILD_SPACE_BYTES` free.

    Args:
        build_parent: folder that will hold the build directory and the finished plugin.

    Returns:
        A :class:`BuildDiagnosis`, or None when nothing is wrong.
    """
    compiler = compiler_command()
    if not compiler or shutil.which(compiler[0]) is None:
        return _no_compiler(compiler[0] if compiler else "")
    try:
        build_parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=build_parent, prefix=".write-test-"):
            pass
    except OSError as exc:
        return BuildDiagnosis("cache_not_writable",
                              f"the plugin cache folder {build_parent} cannot be written ({exc.strerror or exc})",
                              CACHE_FIX)
    for folder, role in ((build_parent, "the plugin cache"), (Path(tempfile.gettempdir()), "the temporary folder")):
        free = shutil.disk_usage(folder).free
        if free < BUILD_SPACE_BYTES:
            return BuildDiagnosis(
                "out_of_disk",
                f"only {free / 2**20:.1f} MiB are free in {folder} ({role}: the compiler writes its intermediate "
                f"files to $TMPDIR, the build to the cache); building the plugin needs about "
                f"{BUILD_SPACE_BYTES // 2**20} MiB in each",
                "free disk space there, or point $TMPDIR (compiler temporaries) and $ELASTIX_BRIDGE_CACHE (the build) "
                "at folders with room")
    return None


def _first_error(log: str) -> Optional[str]:
    """The first diagnostic line in gcc/clang format (``file:line:col: error: ...`` or ``c++: error: ...``)."""
    for line in log.splitlines():
        if re.search(r"(^|: )(fatal )?error: ", line) and not line.startswith(("[", "FAILED:", "Error building")):
            return line.strip()[:400]
    return None


def _failed_command(log: str) -> str:
    """The compiler command ninja printed after the first ``FAILED:`` line (ninja -v output)."""
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("FAILED:") and i + 1 < len(lines):
            return lines[i + 1]
    return ""


def diagnose_build_log(log: str, torch_standard: Optional[str], torch_version: str,
                       effective_cplusplus: Optional[int] = None) -> BuildDiagnosis:
    """Name the cause of a failed plugin build from the compiler output.

    Args:
        log: everything ninja and the compiler printed (cpp_extension's error text).
        torch_standard: the C++ standard cpp_extension asked for (``"c++20"``, from the build's
            ``build.ninja``), or None when unknown.
        torch_version: ``torch.__version__``, for messages.
        effective_cplusplus: ``__cplusplus`` the compiler really used with the build's flags
            (:func:`compiler_cplusplus`), or None when unknown.

    Returns:
        The :class:`BuildDiagnosis`; ``kind == "compile_error"`` when no specific cause is recognised.
    """
    first = _first_error(log)
    command = _failed_command(log)
    ran_with = cxx_standard_of(command)
    compiler = (compiler_command() or ["c++"])[0]
    std_name = torch_standard or "the standard torch asks for"
    rejected = re.search(r"unrecognized command[- ]line option ['‘\"]?-std=|invalid value ['‘\"]?[cgnu]+\+\+\w+['’\"]? "
                         r"in ['‘\"]?-std=|-std=\S+ is not supported|standard ['‘\"]?\S+['’\"]? not supported", log)
    if rejected:
        return BuildDiagnosis(
            "compiler_rejects_standard",
            f"the C++ compiler {compiler!r} does not know -std={std_name}, the C++ standard "
            f"torch {torch_version}'s headers need (it is too old)",
            "install a newer compiler (g++ >= 10 or clang >= 12 for C++20; Debian/Ubuntu: `apt-get install g++`) "
            "and point $CXX at it, then run `elastix-bridge build-plugin`", first)
    if re.search(r"No space left on device|Disk quota exceeded", log):
        return BuildDiagnosis(
            "out_of_disk", "the disk filled up during the build (\"No space left on device\"): the build directory "
                           f"or the compiler's temporary folder ({tempfile.gettempdir()}) has no room",
            "free disk space, or set $TMPDIR and $ELASTIX_BRIDGE_CACHE to folders with a few hundred MiB free, then "
            "run `elastix-bridge build-plugin`", first)
    if re.search(r"Killed signal terminated program|internal compiler error: Killed|virtual memory exhausted|"
                 r"out of memory allocating|cannot allocate memory", log, re.IGNORECASE):
        return BuildDiagnosis(
            "out_of_memory", "the compiler ran out of memory (it was killed while compiling torch's headers)",
            "close other programs, or compile one file at a time with `MAX_JOBS=1 elastix-bridge build-plugin`",
            first)
    missing = re.search(r"fatal error: ([\w/.+-]+): No such file or directory", log)
    if missing and missing.group(1) == "Python.h":
        include = sysconfig.get_path("include", scheme="posix_prefix")
        return BuildDiagnosis(
            "missing_python_headers",
            f"the Python development headers are missing: Python.h is not in {include}",
            "install them for this Python (Debian/Ubuntu: `apt-get install python3-dev`, or python3.X-dev for "
            "another version; Fedora: `dnf install python3-devel`; conda and pyenv Pythons ship them), then run "
            "`elastix-bridge build-plugin`", first)
    if missing and re.match(r"(torch|ATen|c10|caffe2|pybind11)/", missing.group(1)):
        return BuildDiagnosis(
            "missing_torch_headers",
            f"torch {torch_version}'s C++ headers are missing ({missing.group(1)} is not on the include path): this "
            "torch install has no usable include/ folder",
            f"reinstall torch from pip (`pip install --force-reinstall --no-deps torch=={torch_version.split('+')[0]}`"
            " plus the same index URL you installed it from); builds that strip headers cannot compile plugins", first)
    if re.search(rf"(^|\s|/){re.escape(compiler)}: (command )?not found|: not found$", log, re.MULTILINE) and not first:
        return _no_compiler(compiler)
    required = _cplusplus_value(torch_standard) if torch_standard else None
    if required and effective_cplusplus and effective_cplusplus < required:
        ran_with = _CPLUSPLUS.get(effective_cplusplus, f"__cplusplus={effective_cplusplus}")
    if (ran_with and torch_standard and ran_with != torch_standard) or re.search(
            r"#error.*C\+\+\s*\d+|C\+\+\d+ or later", log):
        return BuildDiagnosis(
            "wrong_standard",
            f"the compiler compiled as {ran_with or 'another standard'}, but torch {torch_version}'s headers need "
            f"{std_name} (the standard torch's cpp_extension asks for with -std=): a -std= flag from a $CXX wrapper "
            "or added compiler flags overrode it",
            "remove the extra -std= flag (check $CXX, $CXXFLAGS and compiler wrappers), then run "
            "`elastix-bridge build-plugin`", first)
    if re.search(r"undefined reference to|cannot find -l|ld returned \d+ exit status", log):
        return BuildDiagnosis(
            "link_error", "linking the plugin against torch's libraries failed",
            "reinstall torch (its lib/ folder must hold libtorch*.so and libc10.so), then run "
            "`elastix-bridge build-plugin`; if it persists, report it with the log", first)
    if first is None:
        return BuildDiagnosis(
            "compile_error", f"the compiler {compiler!r} failed without printing an error message",
            "check that $CXX names a working C++ compiler (`$CXX --version`), then run "
            "`elastix-bridge build-plugin --verbose`", None)
    return BuildDiagnosis(
        "compile_error", f"the compiler reported errors building against torch {torch_version}",
        "check that torch is a supported version (`elastix-bridge doctor`); if it is, report it with the log", first)


def write_build_log(text: str, preferred_dir: Path, name: str) -> Path:
    """Write the full build output to ``preferred_dir/name``, or the temp folder when that fails.

    Returns:
        The path written (atomically: a reader never sees half a log).

    Raises:
        OSError: neither folder can be written.
    """
    error: Optional[OSError] = None
    for folder in (preferred_dir, Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return write_atomically(folder / name, lambda handle: handle.write(text))
        except OSError as exc:
            error = exc
    raise error
