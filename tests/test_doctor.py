"""Tests of ``elastix-bridge doctor`` (elastix_bridge.doctor and the cli subcommand).

The report is compared with what this machine really has (package metadata, torch, the plugin
cache); "torch cannot be imported" runs in a fresh interpreter where ``sys.modules['torch'] = None``
makes every ``import torch`` fail.
"""
import json
import os
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
from helpers.native import compile_library

from elastix_bridge import cli, doctor

from elastix_bridge.runtime import installed_elastix, loader, native_plugins

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
                    **env)
    full_env.pop(native_plugins.NATIVE_PLUGIN_ENV, None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, timeout=600)


@pytest.fixture
def no_native_plugin(monkeypatch):
    monkeypatch.delenv(native_plugins.NATIVE_PLUGIN_ENV, raising=False)


def test_report_is_truthful_for_this_machine(no_native_plugin):
    torch = pytest.importorskip("torch")
    report = doctor.collect_report()
    json.dumps(report)  # --json must be able to print it

    ie = report["itk_elastix"]
    assert ie["version"] == metadata.version("itk-elastix")
    assert ie["elastix_library"] and Path(ie["elastix_library"]).is_file()
    major_minor_patch = tuple(int(x) for x in ie["version"].split(".")[:3])
    assert ie["lazy_impact_loader"] is (major_minor_patch >= (0, 25, 2))
    sha = ie["elastix_git_revision"]
    assert sha is None or re.fullmatch(r"[0-9a-f]{40}", sha)  # equal to the log's SHA: test_native_plugins

    t = report["torch"]
    assert t["installed"] and t["version"] == torch.__version__
    assert t["libtorch_dir"] == str(Path(torch.__file__).parent / "lib")
    assert (Path(t["libtorch_dir"]) / "libc10.so").is_file() or sys.platform != "linux"
    assert t["cuda"] == torch.version.cuda
    assert t["cxx11_abi"] == bool(torch._C._GLIBCXX_USE_CXX11_ABI)
    assert t["cuda_available"] == torch.cuda.is_available()
    assert t["device_count"] == (torch.cuda.device_count() if torch.cuda.is_available() else 0)

    p = report["plugin"]
    assert p["path"] == str(loader.cache_dir() / f"{loader.EXTENSION_NAME}.so")
    assert p["expected"] == loader.expected_build_record()
    assert p["built"] == Path(p["path"]).is_file()
    if p["built"]:
        assert p["state"] == "ready" and p["matches"] and p["imports"]

    assert set(report["jit"]["now"]) == set(loader.JIT_SWITCHES)
    assert report["native_plugin"]["value"] is None and report["native_plugin"]["candidates"] == []
    assert report["ok"] is (not report["problems"])
    text = doctor.format_report(report)
    for needle in (ie["version"], torch.__version__, t["libtorch_dir"], "lazy IMPACT loader", "TorchScript JIT",
                   "ELASTIX_BRIDGE_NATIVE_PLUGIN"):
        assert needle in text


def test_doctor_never_builds_without_build(monkeypatch, tmp_path, no_native_plugin):
    pytest.importorskip("torch")
    monkeypatch.setenv(loader.CACHE_ENV, str(tmp_path / "empty-cache"))
    report = doctor.collect_report()
    plugin = report["plugin"]
    assert not plugin["built"] and not Path(plugin["path"]).exists() and not plugin["built_now"]
    tools = plugin["build_tools"]
    if tools["compiler_path"] and tools["ninja"]:
        # load_plugin() compiles a missing cache build on first use: reported as a note, not a problem.
        assert plugin["state"] == "not built (built automatically on first use)"
        assert any("elastix-bridge build-plugin" in note and "first Impact registration" in note
                   for note in report["notes"])
    else:
        assert plugin["state"] == "not built, and cannot be built here"
        assert not report["ok"]


def test_plugin_env_pointing_nowhere_is_a_problem(monkeypatch, tmp_path, no_native_plugin):
    pytest.importorskip("torch")
    monkeypatch.setenv(loader.PLUGIN_ENV, str(tmp_path / "missing.so"))
    report = doctor.collect_report()
    assert not report["ok"]
    assert report["plugin"]["state"] == "unusable"
    problem = next(p for p in report["problems"] if "ELASTIX_BRIDGE_PLUGIN" in p["what"])
    assert "does not exist" in problem["why"] and "unset $ELASTIX_BRIDGE_PLUGIN" in problem["fix"]


def test_torch_missing_exits_non_zero_with_the_install_command():
    proc = run_python(
        """
        import sys
        sys.modules["torch"] = None  # every `import torch` now raises ImportError
        from elastix_bridge.cli import main
        sys.exit(main(["doctor"]))
        """
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "PyTorch cannot be imported" in proc.stdout
    assert 'pip install "elastix-bridge[impact]"' in proc.stdout
    assert "Impact cannot run here" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_torch_missing_json():
    proc = run_python(
        """
        import sys
        sys.modules["torch"] = None
        from elastix_bridge.cli import main
        sys.exit(main(["doctor", "--json"]))
        """
    )
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is False and report["torch"]["installed"] is False
    assert report["plugin"]["state"] == "unknown (needs torch)"
    assert report["problems"][0]["what"] == "PyTorch cannot be imported"


def test_cli_subcommand(capsys, no_native_plugin):
    pytest.importorskip("torch")
    assert cli.COMMANDS["doctor"] is cli.run_doctor
    code = cli.main(["doctor"])
    out = capsys.readouterr().out
    assert out.startswith("elastix-bridge ") and "itk-elastix" in out and "IMPACT plugin (bridge engine)" in out
    assert code == (0 if "OK: Impact can run here." in out else 1)
    assert cli.main(["doctor", "--json"]) == code
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is (code == 0)


def test_native_plugin_that_would_not_load_fails_the_doctor(monkeypatch, tmp_path, cc):  # noqa: F811
    pytest.importorskip("torch")
    so = compile_library(cc, tmp_path, "libImpactMetric.so", soname="libImpactMetric.so.0")
    monkeypatch.setenv(native_plugins.NATIVE_PLUGIN_ENV, str(so))
    report = doctor.collect_report()
    native = report["native_plugin"]
    assert native["value"] == str(so) and native["would_load"] is False
    assert native["candidates"][0]["soname"] == "libImpactMetric.so.0"
    assert not report["ok"]
    assert any("SONAME" in p["why"] and "patchelf --set-soname" in p["why"] for p in report["problems"])

    monkeypatch.setenv(native_plugins.NATIVE_PLUGIN_ENV, str(tmp_path / "nowhere"))
    report = doctor.collect_report()
    assert not report["ok"] and any("does not exist" in p["why"] for p in report["problems"])


def test_native_plugin_that_loads_passes_the_doctor(monkeypatch, tmp_path, cc):  # noqa: F811
    pytest.importorskip("torch")
    if not installed_elastix.lazy_impact_loader():
        pytest.skip("the installed itk-elastix has no lazy IMPACT loader")
    compile_library(cc, tmp_path, "libImpactMetric.so", soname="libImpactMetric.so", needed=["libc10.so"])
    monkeypatch.setenv(native_plugins.NATIVE_PLUGIN_ENV, str(tmp_path))  # a folder
    report = doctor.collect_report()
    native = report["native_plugin"]
    assert native["would_load"] is True, report["problems"]
    assert native["trial"] == str((tmp_path / "libImpactMetric.so").resolve())
    assert native["candidates"][0]["torch_libraries"]["libc10.so"].endswith("libc10.so")
    assert not native_plugins.preloaded_native_plugins()  # the trial ran in a child process
    assert re.search(r"would load\s+yes", doctor.format_report(report))
