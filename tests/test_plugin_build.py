"""Building the plugin: the supported torch range, and the real cause of each failed build.

Each failure is forced for real, in a fresh interpreter with its own cache: a compiler that rejects
torch's C++ standard, a compiler wrapper that forces an older standard, no compiler, torch's or
Python's headers missing from the include path, a read-only cache and a full disk (tmpfs mounts in
a private mount namespace; skipped where ``unshare -m`` is not allowed). Every message must name the
cause and its fix, point at a log file holding the compiler output, and leave no half-built plugin.
"""
import os
import re
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from elastix_bridge.runtime import build_checks, loader

REPO = Path(__file__).resolve().parents[1]

# Runs in the child: optional monkeypatches named by argv[1], then load_plugin (which builds).
_CHILD = textwrap.dedent("""
    import sys, sysconfig
    what = sys.argv[1]
    if what == "no-torch-headers":
        from torch.utils import cpp_extension
        cpp_extension.include_paths = lambda *args, **kwargs: ["/nonexistent/torch/include"]
    elif what == "no-python-headers":
        real = sysconfig.get_path
        sysconfig.get_path = lambda name, *a, **k: "/nonexistent/python/include" if name == "include" else real(name, *a, **k)
    from elastix_bridge.runtime import loader
    try:
        loader.load_plugin()
        print("BUILT")
    except loader.ImpactUnavailableError as exc:
        print("KIND", getattr(getattr(exc, "diagnosis", None), "kind", None))
        print("ERR", exc)
""")


def _script(folder: Path, name: str, body: str) -> str:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def _build(tmp_path, what="plain", prefix=(), **env):
    """Run the child; return (kind, message, cache folder)."""
    pytest.importorskip("torch")
    cache = env.pop("cache", tmp_path / "cache")
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                    ELASTIX_BRIDGE_CACHE=str(cache), **env)
    full_env.pop(loader.PLUGIN_ENV, None)
    proc = subprocess.run([*prefix, sys.executable, "-c", _CHILD, what], capture_output=True, text=True,
                          env=full_env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "BUILT" not in proc.stdout, "the build was meant to fail"
    kind = re.search(r"^KIND (\S+)", proc.stdout, re.MULTILINE).group(1)
    message = proc.stdout.split("ERR ", 1)[1]
    return kind, message, Path(cache)


def _assert_logged_and_clean(message: str, cache: Path, output_snippet: str) -> None:
    """The message names a log holding the compiler output; no plugin (half-built or not) is left."""
    log = Path(re.search(r"full compiler output: (\S+)", message).group(1))
    assert log.is_file() and output_snippet in log.read_text()
    assert not list(cache.glob("**/*.so"))
    leftovers = [p.name for p in (cache / "plugin").iterdir() if not p.name.endswith((".lock", ".build.log"))]
    assert leftovers == []


def _unshare_mount_allowed() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                          capture_output=True).returncode == 0


needs_mounts = pytest.mark.skipif(not _unshare_mount_allowed(),
                                  reason="needs `unshare -m` and tmpfs mounts (root, or user namespaces)")


# ---------------------------------------------------------------------------------------------
# Failures found in the compiler output
# ---------------------------------------------------------------------------------------------


def test_compiler_that_rejects_torchs_standard(tmp_path):
    # What g++ 9 says of -std=c++20 (torch's headers need C++20); other flags go to the real g++.
    old = _script(tmp_path, "old-g++", 'for a in "$@"; do case "$a" in -std=c++2*) '
                                       'echo "c++: error: unrecognized command-line option \'$a\'" >&2; exit 1;; '
                                       'esac; done\nexec g++ "$@"\n')
    kind, message, cache = _build(tmp_path, CXX=old)
    assert kind == "compiler_rejects_standard"
    assert f"the C++ compiler {old!r} does not know -std=c++" in message and "too old" in message
    assert "Fix: install a newer compiler" in message and "$CXX" in message
    _assert_logged_and_clean(message, cache, "unrecognized command-line option")


def test_wrapper_that_forces_an_older_standard(tmp_path):
    # A wrapper appending its own -std=: invisible in ninja's command line, seen through __cplusplus.
    wrapper = _script(tmp_path, "g++-c++14", 'exec g++ "$@" -std=c++14 -Wfatal-errors\n')
    kind, message, cache = _build(tmp_path, CXX=wrapper)
    assert kind == "wrong_standard"
    assert re.search(r"compiled as c\+\+14, but torch \S+'s headers need c\+\+\d\d", message)
    assert "remove the extra -std= flag" in message
    assert "first compiler error:" in message
    _assert_logged_and_clean(message, cache, "error")


def test_missing_torch_headers(tmp_path):
    kind, message, cache = _build(tmp_path, "no-torch-headers")
    assert kind == "missing_torch_headers"
    assert "C++ headers are missing" in message and "pip install --force-reinstall" in message
    _assert_logged_and_clean(message, cache, "No such file or directory")


def test_missing_python_headers(tmp_path):
    kind, message, cache = _build(tmp_path, "no-python-headers")
    assert kind == "missing_python_headers"
    assert "Python.h is not in /nonexistent/python/include" in message and "python3-dev" in message
    _assert_logged_and_clean(message, cache, "Python.h: No such file or directory")


def test_compiler_that_fails_silently(tmp_path):
    kind, message, cache = _build(tmp_path, CXX="/bin/false")
    assert kind == "compile_error" and "'/bin/false' failed without printing an error message" in message
    _assert_logged_and_clean(message, cache, "/bin/false")


# ---------------------------------------------------------------------------------------------
# Failures found before compiling
# ---------------------------------------------------------------------------------------------


def test_no_compiler(tmp_path):
    kind, message, cache = _build(tmp_path, CXX="/nonexistent/g++")
    assert kind == "None"  # refused before any build: nothing to diagnose, nothing to log
    assert "no C++ compiler: '/nonexistent/g++'" in message and "apt-get install g++" in message
    assert not (cache / "plugin").exists() or not list((cache / "plugin").glob("**/*.so"))


@needs_mounts
def test_read_only_cache(tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    kind, message, _ = _build(tmp_path, prefix=("unshare", "-m", "sh", "-c",
                                                 f"mount -t tmpfs -o ro tmpfs {mount} && exec \"$@\"", "sh"),
                              cache=mount / "cache")
    assert f"the plugin cache folder {mount}/cache/plugin cannot be written (Read-only file system)" in message
    assert "$ELASTIX_BRIDGE_CACHE" in message and "build-plugin --output DIR" in message


@needs_mounts
@pytest.mark.parametrize("full", ["cache", "TMPDIR"])
def test_full_disk(tmp_path, full):
    mount = tmp_path / "small"
    mount.mkdir()
    env = {"cache": mount / "cache"} if full == "cache" else {"TMPDIR": str(mount)}
    kind, message, _ = _build(tmp_path, prefix=("unshare", "-m", "sh", "-c",
                                                f"mount -t tmpfs -o size=1m tmpfs {mount} && exec \"$@\"", "sh"),
                              **env)
    assert re.search(rf"only \d+\.\d MiB are free in {mount}", message)
    assert "$TMPDIR" in message and "$ELASTIX_BRIDGE_CACHE" in message


def test_out_of_disk_during_the_build_is_named():
    # The disk can fill after the pre-flight check: gcc's own words for it, as ninja relays them.
    log = ("FAILED: impact_plugin.o\nc++ -MMD -std=c++20 -c impact_plugin.cpp -o impact_plugin.o\n"
           "impact_plugin.cpp:380:1: fatal error: error writing to /tmp/ccX.s: No space left on device\n")
    diagnosis = build_checks.diagnose_build_log(log, "c++20", "2.14.1")
    assert diagnosis.kind == "out_of_disk" and "No space left on device" in diagnosis.first_error


# ---------------------------------------------------------------------------------------------
# The supported torch range
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version, inside", [
    ("2.13.0", True), ("2.13.0+cpu", True), ("2.14.1+cu130", True), ("2.14.2", True),
    ("2.12.1", False), ("2.15.0", False), ("2.15.0.dev20260101+cpu", False), ("3.0.0", False), ("1.13.1", False),
])
def test_torch_range(version, inside, monkeypatch, caplog):
    monkeypatch.delenv(loader.UNTESTED_TORCH_ENV, raising=False)
    fake = types.SimpleNamespace(__version__=version)
    assert loader.torch_supported(version) is inside
    if inside:
        loader.check_torch_supported(fake)
        return
    with pytest.raises(loader.ImpactUnavailableError) as info:
        loader.check_torch_supported(fake)
    text = str(info.value)
    assert f"torch {version} is installed" in text and loader.supported_torch_range() in text
    assert f'pip install "torch{loader.supported_torch_range()}"' in text and loader.UNTESTED_TORCH_ENV in text
    monkeypatch.setenv(loader.UNTESTED_TORCH_ENV, "1")
    loader.check_torch_supported(fake)  # the user's explicit choice: a warning, not an error
    assert "outside the tested range" in caplog.text


def test_declared_range_is_the_same_everywhere():
    pyproject = (REPO / "pyproject.toml").read_text()
    impact = re.search(r"^impact = \[(.*)\]$", pyproject, re.MULTILINE).group(1)
    assert f'"torch{loader.supported_torch_range()}"' in impact
    readme = (REPO / "README.md").read_text()
    assert f"torch{loader.supported_torch_range()}" in readme.replace(" ", "").replace("`", "")
    ci = (REPO / ".ci" / "run").read_text()
    tested = set(re.findall(r"torch==(\d+\.\d+\.\d+)", ci))
    assert tested and all(loader.torch_supported(v) for v in tested)
    assert min(tested, key=lambda v: tuple(map(int, v.split(".")))).startswith(loader.SUPPORTED_TORCH[0] + ".")


def test_out_of_range_torch_is_refused_before_building(tmp_path):
    pytest.importorskip("torch")
    code = textwrap.dedent("""
        import torch
        torch.__version__ = "2.99.0"
        from elastix_bridge.runtime import loader
        try:
            loader.load_plugin()
        except loader.ImpactUnavailableError as exc:
            print("ERR", exc)
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO), ELASTIX_BRIDGE_CACHE=str(tmp_path / "cache"))
    env.pop(loader.UNTESTED_TORCH_ENV, None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "ERR torch 2.99.0 is installed, but the IMPACT plugin is tested with torch" in proc.stdout, proc.stderr
    assert not (tmp_path / "cache" / "plugin").exists()  # nothing was built
