"""Tests of elastix_bridge.runtime.loader: lazy torch import, plugin build/cache/records, devices, models.

The plugin is compiled once per test session (the ``plugin`` fixture of conftest.py); failed builds
and the torch range are tested in test_plugin_build.py.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List

import pytest

from elastix_bridge.runtime import loader

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter with the repo importable and extra environment."""
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **env)
    full_env.pop(loader.PLUGIN_ENV, None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full_env, timeout=600
    )


# ---------------------------------------------------------------------------------------------
# No torch needed
# ---------------------------------------------------------------------------------------------


def test_importing_loader_does_not_import_torch():
    proc = run_python(
        """
        import sys
        import elastix_bridge, elastix_bridge.runtime.loader
        print("torch" in sys.modules)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_require_torch_without_torch():
    proc = run_python(
        """
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("No module named 'torch' (blocked by test)")
        sys.meta_path.insert(0, NoTorch())
        from elastix_bridge.runtime import loader
        for call in (loader.require_torch, loader.load_plugin, lambda: loader.resolve_device(-1)):
            try:
                call()
            except loader.ImpactUnavailableError as exc:
                assert isinstance(exc, RuntimeError)
                print("ERR", exc)
            else:
                print("no error")
        """
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("ERR") for line in lines), proc.stdout
    assert "needs PyTorch" in lines[0]
    assert 'pip install "elastix-bridge[impact]"' in lines[0] and "pip install torch" in lines[0]


def test_error_hierarchy():
    assert issubclass(loader.ImpactUnavailableError, RuntimeError)
    assert issubclass(loader.ImpactModelError, ValueError)
    assert issubclass(loader.ImpactUnavailableError, loader.ImpactError)
    assert issubclass(loader.ImpactModelError, loader.ImpactError)
    assert loader.PLUGIN_ENV == "ELASTIX_BRIDGE_PLUGIN" and loader.CACHE_ENV == "ELASTIX_BRIDGE_CACHE"


def test_plugin_source_dir():
    src = loader.plugin_source_dir()
    assert (src / "impact_plugin.cpp").is_file()
    assert (src / "__init__.py").is_file()


# ---------------------------------------------------------------------------------------------
# Build records, cache, env var
# ---------------------------------------------------------------------------------------------


def test_expected_build_record_and_cache_dir(monkeypatch, tmp_path):
    torch = pytest.importorskip("torch")
    import hashlib

    rec = loader.expected_build_record()
    assert rec["torch_version"] == torch.__version__
    assert rec["cxx11_abi"] is bool(torch._C._GLIBCXX_USE_CXX11_ABI)
    assert rec["cuda"] == torch.version.cuda
    assert len(rec["source_sha256"]) == 64
    int(rec["source_sha256"], 16)
    assert rec == loader.expected_build_record()  # deterministic
    assert rec["source_sha256"] != hashlib.sha256(b"").hexdigest()

    monkeypatch.setenv(loader.CACHE_ENV, str(tmp_path))
    cuda = "cpu" if torch.version.cuda is None else "cu" + torch.version.cuda.replace(".", "")
    abi = int(bool(torch._C._GLIBCXX_USE_CXX11_ABI))
    expected = tmp_path / "plugin" / f"torch-{torch.__version__}-abi{abi}-{cuda}-{rec['source_sha256'][:12]}"
    assert loader.cache_dir() == expected
    monkeypatch.delenv(loader.CACHE_ENV)
    assert loader.cache_dir().parent == Path.home() / ".cache" / "elastix-bridge" / "plugin"


def test_built_plugin_record(plugin):
    so = Path(plugin.__file__)
    assert so.name == "elastix_bridge_impact.so" and not so.name.startswith("libImpactMetric")
    assert so.parent == loader.cache_dir()
    record = json.loads(Path(str(so) + ".json").read_text())
    expected = loader.expected_build_record()
    assert {k: record[k] for k in expected} == expected
    # No build leftovers next to the final directory.
    assert not [p for p in so.parent.parent.iterdir() if ".build-" in p.name or ".stale-" in p.name]
    assert loader.load_plugin() is plugin  # cached per process


def test_build_plugin_reuses_a_complete_build(plugin):
    so = Path(plugin.__file__)
    mtime = so.stat().st_mtime_ns
    assert loader.build_plugin(so.parent) == so  # returns at once (valid record under the lock)
    assert so.stat().st_mtime_ns == mtime


def test_env_plugin_used(plugin, monkeypatch):
    monkeypatch.setenv(loader.PLUGIN_ENV, plugin.__file__)
    assert loader.load_plugin() is plugin


def test_env_plugin_missing(plugin, monkeypatch, tmp_path):
    missing = tmp_path / "nowhere" / "elastix_bridge_impact.so"
    monkeypatch.setenv(loader.PLUGIN_ENV, str(missing))
    with pytest.raises(loader.ImpactUnavailableError, match=r"\$ELASTIX_BRIDGE_PLUGIN points to .*nowhere.* does not exist"):
        loader.load_plugin()


def _copy_plugin(plugin, tmp_path, record=None) -> Path:
    so = tmp_path / "copy" / "elastix_bridge_impact.so"
    so.parent.mkdir()
    shutil.copy2(plugin.__file__, so)
    if record is not None:
        Path(str(so) + ".json").write_text(json.dumps(record))
    return so


def test_env_plugin_record_mismatch(plugin, monkeypatch, tmp_path):
    record = dict(loader.expected_build_record(), torch_version="1.13.1+cu117", cuda="11.7")
    so = _copy_plugin(plugin, tmp_path, record)
    monkeypatch.setenv(loader.PLUGIN_ENV, str(so))
    with pytest.raises(loader.ImpactUnavailableError) as info:
        loader.load_plugin()
    msg = str(info.value)
    assert "built for torch 1.13.1+cu117" in msg and "CUDA 11.7" in msg
    assert loader.expected_build_record()["torch_version"] in msg
    assert "elastix-bridge build-plugin" in msg and "unset $ELASTIX_BRIDGE_PLUGIN" in msg


def test_env_plugin_without_record(plugin, monkeypatch, tmp_path):
    monkeypatch.setenv(loader.PLUGIN_ENV, str(_copy_plugin(plugin, tmp_path)))
    with pytest.raises(loader.ImpactUnavailableError, match="no readable build record"):
        loader.load_plugin()


def test_cached_plugin_record_mismatch(plugin, monkeypatch, tmp_path):
    """A cache entry whose record says another ABI is refused, not imported."""
    monkeypatch.setenv(loader.CACHE_ENV, str(tmp_path / "cache"))
    target = loader.cache_dir()
    target.mkdir(parents=True)
    shutil.copy2(plugin.__file__, target / "elastix_bridge_impact.so")
    record = dict(loader.expected_build_record())
    record["cxx11_abi"] = not record["cxx11_abi"]
    (target / "elastix_bridge_impact.so.json").write_text(json.dumps(record))
    with pytest.raises(loader.ImpactUnavailableError, match="cached IMPACT plugin .* built for torch .* rebuild it with `elastix-bridge build-plugin`"):
        loader.load_plugin()


def test_concurrent_builds_share_one_result(monkeypatch, tmp_path):
    """Two builders racing for one cache dir: one compiles, the other reuses; no leftovers.

    cpp_extension.load is replaced by a fake, so this checks the lock/rename logic without compiling.
    """
    torch = pytest.importorskip("torch")
    import threading
    import time
    from torch.utils import cpp_extension

    calls = []

    def fake_load(name, sources, build_directory, **kwargs):
        calls.append(build_directory)
        # no -std=: the C++ standard is the one cpp_extension chooses for this torch
        assert not any(f.startswith("-std=") for f in kwargs["extra_cflags"]) and kwargs["is_python_module"] is False
        so = Path(build_directory) / f"{name}.so"
        so.write_bytes(b"half")
        time.sleep(0.3)  # the other builder must wait on the lock meanwhile
        so.write_bytes(b"whole")
        return str(so)

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    out = tmp_path / "plugin" / "torch-x"
    out.mkdir(parents=True)
    (out / "elastix_bridge_impact.so").write_bytes(b"stale, no record")  # replaced, not reused
    results, errors = [], []

    def build():
        try:
            results.append(loader.build_plugin(out))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(calls) == 1
    assert results == [out / "elastix_bridge_impact.so"] * 2
    assert results[0].read_bytes() == b"whole"
    record = json.loads((out / "elastix_bridge_impact.so.json").read_text())
    assert {k: record[k] for k in loader.expected_build_record()} == loader.expected_build_record()
    assert sorted(p.name for p in out.parent.iterdir()) == [".torch-x.lock", "torch-x"]

    def failing_load(**kwargs):
        raise RuntimeError("Error building extension 'elastix_bridge_impact': [1/3] c++ -c impact_plugin.cpp\n"
                           "FAILED: impact_plugin.o\nc++ -c impact_plugin.cpp\nimpact_plugin.cpp:1:1: error: boom\n")

    monkeypatch.setattr(cpp_extension, "load", failing_load)
    other = tmp_path / "plugin" / "torch-y"
    with pytest.raises(loader.ImpactUnavailableError,
                       match=r"(?s)the compiler reported errors.*first compiler error: impact_plugin.cpp:1:1: error: boom"
                             r".*full compiler output: .*torch-y.build.log"):
        loader.build_plugin(other)
    assert not other.exists()
    assert "error: boom" in (out.parent / "torch-y.build.log").read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == [".torch-x.lock", ".torch-y.lock", "torch-x",
                                                            "torch-y.build.log"]


# ---------------------------------------------------------------------------------------------
# Devices and JIT switches
# ---------------------------------------------------------------------------------------------


def test_resolve_device_cpu():
    torch = pytest.importorskip("torch")
    assert loader.resolve_device(-1) == torch.device("cpu")


def test_resolve_device_gpu_unusable():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(loader.ImpactUnavailableError, match=r"CUDA is not available.*\(ImpactGPU -1\)"):
        loader.resolve_device(0)


def test_resolve_device_out_of_range(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(loader.ImpactUnavailableError, match="Requested GPU 3 is out of range. Only 1 GPUs"):
        loader.resolve_device(3)
    if not torch.cuda._is_compiled() or torch.cuda.device_count() == 0:
        # is_available() lies: the real allocation fails and becomes the same kind of error.
        with pytest.raises(loader.ImpactUnavailableError, match="not usable"):
            loader.resolve_device(0)


def _torch_jit_state():
    """The four switches read straight from ``torch._C`` (profiling switches: set and restore)."""
    torch = pytest.importorskip("torch")
    profiling_mode = torch._C._jit_set_profiling_mode(True)  # returns the previous value
    torch._C._jit_set_profiling_mode(profiling_mode)
    profiling_executor = torch._C._jit_set_profiling_executor(True)
    torch._C._jit_set_profiling_executor(profiling_executor)
    return {
        "texpr_fuser_enabled": torch._C._jit_texpr_fuser_enabled(),
        "profiling_mode": profiling_mode,
        "profiling_executor": profiling_executor,
        "graph_executor_optimize": torch._C._get_graph_executor_optimize(),
    }


def test_jit_state_roundtrip_matches_torch_getters():
    """No plugin needed: the switches are torch's process globals, read and set through ``torch._C``."""
    torch = pytest.importorskip("torch")
    before = loader.jit_state()
    assert set(before) == set(loader.JIT_SWITCHES)
    assert before == _torch_jit_state()
    try:
        assert loader.set_jit_state({k: False for k in before}) == before
        assert _torch_jit_state() == {k: False for k in before}
        loader.set_jit_state({"graph_executor_optimize": True})
        assert loader.jit_state()["graph_executor_optimize"] is True
        assert torch._C._get_graph_executor_optimize() is True
        with pytest.raises(ValueError, match="unknown JIT switch.*fuser"):
            loader.set_jit_state({"fuser": False, "profiling_mode": True})
        assert loader.jit_state()["profiling_mode"] is False  # nothing changed on error
    finally:
        loader.set_jit_state(before)
    assert _torch_jit_state() == before


def test_jit_optimization_disabled_restores_previous_state():
    torch = pytest.importorskip("torch")
    original = loader.jit_state()
    try:
        # A non-default starting point, to prove the exact previous state comes back.
        start = dict(original, texpr_fuser_enabled=False, graph_executor_optimize=True)
        loader.set_jit_state(start)
        with loader.jit_optimization_disabled():
            assert _torch_jit_state() == {k: False for k in original}
            assert torch._C._jit_texpr_fuser_enabled() is False
            assert torch._C._get_graph_executor_optimize() is False
        assert _torch_jit_state() == start
        assert torch._C._get_graph_executor_optimize() is True
        with pytest.raises(KeyError):
            with loader.jit_optimization_disabled():
                raise KeyError("boom")
        assert _torch_jit_state() == start
    finally:
        loader.set_jit_state(original)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def _script(tmp_path, name, module):
    torch = pytest.importorskip("torch")
    path = tmp_path / name
    torch.jit.script(module).save(str(path))
    return path


def _toy_modules():
    torch = pytest.importorskip("torch")

    class Good(torch.nn.Module):
        def forward(self, x, n_layers: torch.Tensor) -> List[torch.Tensor]:
            return [x * 2, x[:, :1] + 1]

    class NoArgs(torch.nn.Module):
        def forward(self) -> List[torch.Tensor]:
            return [torch.zeros(1, 1, 1)]

    return Good(), NoArgs()


def test_load_feature_model(plugin, tmp_path):
    torch = pytest.importorskip("torch")
    good, _ = _toy_modules()
    path = _script(tmp_path, "good.pt", good)
    model = loader.load_feature_model(path, torch.device("cpu"))
    assert model.num_arguments == 2
    out = model.forward(torch.ones(2, 3, 4, 4), 2, torch.zeros(4), torch.eye(2))
    assert isinstance(out, list) and len(out) == 2
    assert out[1].shape == (2, 1, 4, 4)


def test_a_process_loads_each_model_file_once(plugin, tmp_path):
    """A batch worker registers pair after pair: the same file on the same device is the same loaded
    model; a rewritten file or another dtype is loaded afresh."""
    import os

    torch = pytest.importorskip("torch")
    good, _ = _toy_modules()
    path = _script(tmp_path, "good.pt", good)
    first = loader.load_feature_model(path, torch.device("cpu"))
    assert loader.load_feature_model(str(path), "cpu") is first
    assert loader.load_feature_model(path, "cpu", half=True) is not first
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file changed
    assert loader.load_feature_model(path, "cpu") is not first


def test_model_file_resolves_paths_and_built_in_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert loader.model_file("./m.pt") == tmp_path / "m.pt"
    assert loader.model_file("m.pt", base_dir=tmp_path / "b") == tmp_path / "b" / "m.pt"
    pytest.importorskip("torch")
    monkeypatch.setenv(loader.CACHE_ENV, str(tmp_path / "cache"))
    p = loader.model_file("mind-ssc-2d")  # written on first use, into the cache
    assert p.is_file() and p.name.startswith("mind-ssc-2d-") and (tmp_path / "cache") in p.parents


def test_load_feature_model_missing_relative_path(plugin, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(loader.ImpactModelError) as info:
        loader.load_feature_model("models/feat.pt", "cpu", parameter="ImpactModelsPath0")
    msg = str(info.value)
    assert "ImpactModelsPath0 'models/feat.pt'" in msg
    assert "relative to the current working directory" in msg and str(tmp_path) in msg
    assert "not found" in msg


def test_load_feature_model_not_torchscript(plugin, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_text("not a model")
    with pytest.raises(loader.ImpactModelError, match=r"junk.pt.*TorchScript.*torch.jit.script\(model\).save\(path\)"):
        loader.load_feature_model(junk, "cpu")


def test_load_feature_model_without_arguments(plugin, tmp_path):
    _, no_args = _toy_modules()
    path = _script(tmp_path, "noargs.pt", no_args)
    with pytest.raises(loader.ImpactModelError, match="must take the image patch as its first argument"):
        loader.load_feature_model(path, "cpu")

