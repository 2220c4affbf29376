"""Tests of elastix_bridge.runtime.native_plugins (with runtime.elf and runtime.installed_elastix): preloading a
native libImpactMetric.so for itk-elastix.

No upstream plugin is available here, so the tests compile tiny stand-ins with the system C
compiler: a library with SONAME ``libImpactMetric.so`` that exports ``ImpactMetricInstallComponent``
with elastix's signature, ``int (elastix::ComponentDatabase *)`` (a pointer, so ``void *`` in C),
writes the pointer it got into the file named by ``$STANDIN_MARKER`` and returns
``$STANDIN_RETURN`` (default 7). itk-elastix runs in a subprocess, so a crash cannot take pytest down
and the preloaded library cannot leak into other tests; the refusals happen before anything is
loaded and run in-process.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from elastix_bridge.runtime import elf as elf_reader
from elastix_bridge.runtime import installed_elastix, loader, native_plugins
from elastix_bridge.runtime.native_plugins import NativePluginError
from helpers.native import STANDIN_C, compile_library

REPO = Path(__file__).resolve().parents[1]


NO_SYMBOL_C = "int some_other_function(void) { return 0; }\n"


# ---------------------------------------------------------------------------------------------
# The ELF reader
# ---------------------------------------------------------------------------------------------


def test_importing_native_plugins_and_doctor_does_not_import_torch():
    code = ("import sys, elastix_bridge.runtime.native_plugins, elastix_bridge.runtime.installed_elastix, "
            "elastix_bridge.doctor; print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_native_plugin_error_is_an_impact_unavailable_error():
    assert issubclass(NativePluginError, loader.ImpactUnavailableError)
    assert issubclass(NativePluginError, RuntimeError)


def test_elf_reader_on_the_installed_libtorch():
    torch = pytest.importorskip("torch")
    lib = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    if not lib.is_file():
        pytest.skip(f"{lib} not found (torch wheel layout differs)")
    elf = elf_reader.read_elf_dynamic(lib)
    assert elf.soname == "libtorch_cpu.so"
    assert "libc10.so" in elf.needed
    assert elf.bits == 64 and elf.uses_libtorch
    assert elf.cxx11_abi is (True if torch._C._GLIBCXX_USE_CXX11_ABI else None)


def test_elf_reader_on_a_stand_in(cc, tmp_path):
    so = compile_library(cc, tmp_path, "libImpactMetric.so", soname="libImpactMetric.so", needed=["libtorch_fake.so"])
    elf = native_plugins.read_plugin_elf(so)
    assert elf.soname == "libImpactMetric.so"
    assert elf.needed[0] == "libtorch_fake.so" and "libc.so.6" in elf.needed
    assert native_plugins.INSTALL_SYMBOL in elf.mentions
    plain = compile_library(cc, tmp_path / "plain", "libImpactMetric.so", source=NO_SYMBOL_C)
    elf = native_plugins.read_plugin_elf(plain)
    assert elf.soname is None and native_plugins.INSTALL_SYMBOL not in elf.mentions


def test_elf_reader_refuses_non_elf_files(tmp_path):
    text = tmp_path / "libImpactMetric.so"
    text.write_text("not a library" * 10)
    with pytest.raises(elf_reader.ElfError, match="not an ELF shared library"):
        elf_reader.read_elf_dynamic(text)
    with pytest.raises(NativePluginError, match="not an ELF shared library.*ELASTIX_BRIDGE_NATIVE_PLUGIN"):
        native_plugins.read_plugin_elf(text)
    with pytest.raises(NativePluginError, match="cannot read"):
        native_plugins.read_plugin_elf(tmp_path / "absent.so")


# ---------------------------------------------------------------------------------------------
# Refusals (all before anything is loaded, so they run in-process)
# ---------------------------------------------------------------------------------------------


def test_unset_variable_means_no_native_plugin(monkeypatch):
    monkeypatch.delenv(native_plugins.NATIVE_PLUGIN_ENV, raising=False)
    assert native_plugins.preload_native_plugin() is None
    monkeypatch.setenv(native_plugins.NATIVE_PLUGIN_ENV, "  ")
    assert native_plugins.preload_native_plugin() is None


def test_missing_file_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv(native_plugins.NATIVE_PLUGIN_ENV, str(tmp_path / "libImpactMetric.so"))
    with pytest.raises(NativePluginError) as raised:
        native_plugins.preload_native_plugin()
    message = str(raised.value)
    assert "ELASTIX_BRIDGE_NATIVE_PLUGIN" in message and "does not exist" in message and "unset it" in message
    with pytest.raises(NativePluginError, match="holds neither libImpactMetricCuda.so nor libImpactMetric.so"):
        native_plugins.preload_native_plugin(tmp_path)


@pytest.mark.parametrize("soname", ["libImpactMetric.so.1", "libElastixImpact.so", None])
def test_wrong_or_missing_soname_is_refused(cc, tmp_path, soname):
    pytest.importorskip("torch")
    so = compile_library(cc, tmp_path, "libImpactMetric.so", soname=soname)
    with pytest.raises(NativePluginError) as raised:
        native_plugins.preload_native_plugin(so)
    message = str(raised.value)
    assert (f"its SONAME is {soname!r}" if soname else "it has no SONAME") in message
    assert "dlopens the bare names" in message
    assert f"patchelf --set-soname libImpactMetric.so {so}" in message and "LD_LIBRARY_PATH" in message
    assert not native_plugins.preloaded_native_plugins()


def test_unresolved_libtorch_dependency_is_refused(cc, tmp_path):
    torch = pytest.importorskip("torch")
    so = compile_library(cc, tmp_path, "libImpactMetric.so", soname="libImpactMetric.so",
                         needed=["libtorch_fake.so", "libc10.so"])
    check = native_plugins.inspect_native_plugin(so)
    assert check.torch_libraries["libtorch_fake.so"] is None
    assert check.torch_libraries["libc10.so"] == Path(torch.__file__).parent / "lib" / "libc10.so"
    with pytest.raises(NativePluginError) as raised:
        native_plugins.preload_native_plugin(so)
    message = str(raised.value)
    assert f"needs libtorch_fake.so, which the installed torch {torch.__version__}" in message
    assert "Rebuild the plugin against this torch" in message and "cmake_prefix_path" in message


def test_cuda_plugin_needs_a_cuda_torch(cc, tmp_path):
    torch = pytest.importorskip("torch")
    if torch.version.cuda:
        pytest.skip("the installed torch is a CUDA build")
    so = compile_library(cc, tmp_path, "libImpactMetricCuda.so", soname="libImpactMetricCuda.so",
                         needed=["libtorch_cuda.so", "libc10.so"])
    with pytest.raises(NativePluginError, match="is a CUDA plugin .* has no CUDA; install a CUDA build of torch"):
        native_plugins.preload_native_plugin(so)


def test_cuda_plugin_is_accepted_by_a_cuda_torch(cc, tmp_path):
    """The other side of the test above: a CUDA build of torch provides the CUDA LibTorch libraries."""
    torch = pytest.importorskip("torch")
    if not torch.version.cuda:
        pytest.skip("the installed torch is a CPU-only build (tested by test_cuda_plugin_needs_a_cuda_torch)")
    so = compile_library(cc, tmp_path, "libImpactMetricCuda.so", soname="libImpactMetricCuda.so",
                         needed=["libtorch_cuda.so", "libc10_cuda.so", "libc10.so"])
    check = native_plugins.inspect_native_plugin(so, torch)
    assert check.ok, check.problems
    assert check.kind == "cuda"
    lib = Path(torch.__file__).parent / "lib"
    assert check.torch_libraries == {name: lib / name for name in ("libtorch_cuda.so", "libc10_cuda.so", "libc10.so")}
    no_gpu = [w for w in check.warnings if "no usable GPU" in w]
    assert bool(no_gpu) is (not torch.cuda.is_available())


def test_library_without_the_install_symbol_is_refused(cc, tmp_path):
    pytest.importorskip("torch")
    so = compile_library(cc, tmp_path, "libImpactMetric.so", soname="libImpactMetric.so", source=NO_SYMBOL_C)
    with pytest.raises(NativePluginError, match="does not export ImpactMetricInstallComponent"):
        native_plugins.preload_native_plugin(so)


UNDEFINED_LIBTORCH_SYMBOL_C = STANDIN_C + r"""
int _ZN3c1020symbol_of_other_buildEv(void);  /* c10::symbol_of_other_build(), absent from this LibTorch */
int uses_libtorch(void) { return _ZN3c1020symbol_of_other_buildEv(); }
"""


def test_libtorch_symbol_mismatch_is_explained(cc, tmp_path):
    torch = pytest.importorskip("torch")
    so = compile_library(cc, tmp_path, "libImpactMetric.so", soname="libImpactMetric.so", needed=["libc10.so"],
                         source=UNDEFINED_LIBTORCH_SYMBOL_C)
    state = loader.jit_state()
    try:
        with pytest.raises(NativePluginError) as raised:
            native_plugins.preload_native_plugin(so)
    finally:
        loader.set_jit_state(state)  # the preload switched them off before dlopen failed
    message = str(raised.value)
    assert "undefined symbol: _ZN3c1020symbol_of_other_buildEv" in message
    assert "belongs to LibTorch" in message and torch.__version__ in message and "Rebuild it" in message
    assert not native_plugins.preloaded_native_plugins()


def test_a_folder_falls_back_to_the_cpu_plugin_when_the_cuda_one_cannot_load(cc, tmp_path):
    torch = pytest.importorskip("torch")
    if torch.version.cuda:
        pytest.skip("the installed torch is a CUDA build")
    compile_library(cc, tmp_path, "libImpactMetricCuda.so", soname="libImpactMetricCuda.so",
                    needed=["libtorch_cuda.so"])
    candidates = native_plugins.native_plugin_candidates(tmp_path)
    assert [p.name for p in candidates] == ["libImpactMetricCuda.so"]  # no CPU plugin: nothing to fall back to
    with pytest.raises(NativePluginError, match="CUDA plugin"):
        native_plugins.preload_native_plugin(tmp_path)
    # With the CPU plugin beside it, the CPU one is loaded (in a child process: nothing leaks here).
    compile_library(cc, tmp_path, "libImpactMetric.so", soname="libImpactMetric.so", needed=["libc10.so"])
    ok, message = native_plugins.trial_preload(tmp_path)
    assert ok, message
    assert message == str((tmp_path / "libImpactMetric.so").resolve())


# ---------------------------------------------------------------------------------------------
# The real thing: elastix's lazy loader calls the preloaded library
# ---------------------------------------------------------------------------------------------

ELASTIX_SCRIPT = r"""
import os, sys
import numpy as np
import itk
import elastix_bridge
from elastix_bridge.runtime import loader, native_plugins

# `import elastix_bridge` may route Impact maps of itk.elastix_registration_method to the bridge
# engine (its drop-in); this test is about itk-elastix's own elastix, so put plain itk-elastix back.
getattr(elastix_bridge, "uninstall_dropin", lambda: None)()

marker = os.environ["STANDIN_MARKER"]
image = itk.image_from_array(np.random.default_rng(0).random((16, 16)).astype(np.float32))
parameters = itk.ParameterObject.New()
pmap = parameters.GetDefaultParameterMap("translation", 1)
pmap["Metric"] = ["Impact"]
pmap["MaximumNumberOfIterations"] = ["2"]
parameters.AddParameterMap(pmap)

def register(tag):
    sys.stdout.flush()
    print(f"=== {tag}", flush=True)
    try:
        itk.elastix_registration_method(image, image, parameter_object=parameters, log_to_console=True)
        print(f"=== {tag}: finished", flush=True)
    except RuntimeError as exc:
        print(f"=== {tag}: RuntimeError {str(exc).strip().splitlines()[-1]}", flush=True)
    print(f"=== {tag}: marker {'exists' if os.path.exists(marker) else 'absent'}", flush=True)

# A plain registration's log header names the elastix commit (compared with elastix_git_revision()).
plain = itk.ParameterObject.New()
plain.AddParameterMap(plain.GetDefaultParameterMap("translation", 1))
plain.SetParameter(0, "MaximumNumberOfIterations", "1")
os.makedirs("plain", exist_ok=True)
itk.elastix_registration_method(image, image, parameter_object=plain, log_to_file=True, output_directory="plain")
print("=== log header", next(line for line in open("plain/elastix.log") if "Git revision SHA" in line).strip(),
      flush=True)

register("without preload")
path = native_plugins.preload_native_plugin()   # from $ELASTIX_BRIDGE_NATIVE_PLUGIN (a folder)
assert native_plugins.preload_native_plugin() == path   # once per process; a second call is a no-op
print("=== preloaded", path, native_plugins.preloaded_native_plugins(), flush=True)
print("=== jit", loader.jit_state(), flush=True)
register("preloaded, returns 7")
os.environ["STANDIN_RETURN"] = "0"
register("preloaded, returns 0")
"""


def run_with_stand_in(cc, tmp_path, script):
    """Run ``script`` in a fresh interpreter with a stand-in libImpactMetric.so folder in
    $ELASTIX_BRIDGE_NATIVE_PLUGIN; returns (its output, the plugin folder, the marker file)."""
    pytest.importorskip("torch")
    pytest.importorskip("itk")
    if not installed_elastix.lazy_impact_loader():
        pytest.skip("the installed itk-elastix has no lazy IMPACT loader (itk-elastix < 0.25.2)")
    folder = tmp_path / "plugin"
    compile_library(cc, folder, "libImpactMetric.so", soname="libImpactMetric.so")
    marker = tmp_path / "marker.txt"
    env = dict(os.environ, STANDIN_MARKER=str(marker), ELASTIX_BRIDGE_NATIVE_PLUGIN=str(folder),
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    env.pop("STANDIN_RETURN", None)
    env.pop("LD_LIBRARY_PATH", None)  # the plugin folder must not be on the loader's search path
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out, folder, marker


@pytest.mark.slow  # fresh interpreters that import itk and run elastix (21 s measured on 2 busy cores)
def test_elastix_lazy_loader_calls_the_preloaded_plugin(cc, tmp_path):
    out, folder, marker = run_with_stand_in(cc, tmp_path, ELASTIX_SCRIPT)
    sections = dict(part.split("\n", 1) for part in out.split("=== ")[1:] if "\n" in part)
    header = next(line for line in out.splitlines() if line.startswith("=== log header"))
    assert header.endswith(f"Git revision SHA: {installed_elastix.elastix_git_revision()}")
    before = sections["without preload"]
    # Without the preload elastix's dlopen("libImpactMetric.so") finds nothing: the folder is not on any path.
    assert "IMPACT requested but could not be loaded" in before
    assert "dlopen failed for libImpactMetric.so" in before
    assert "marker absent" in out.split("=== preloaded")[0]
    # With it, elastix's loader resolves the bare name to the preloaded library, calls
    # ImpactMetricInstallComponent with its component database and reports the non-zero return.
    assert f"preloaded {(folder / 'libImpactMetric.so').resolve()}" in out
    assert "jit {'texpr_fuser_enabled': False, 'profiling_mode': False, 'profiling_executor': False, " \
           "'graph_executor_optimize': False}" in out
    after = sections["preloaded, returns 7"]
    assert "InstallComponent returned non-zero (7) for libImpactMetric.so" in after
    assert "The following component could not be created: Impact" in after
    calls = marker.read_text().splitlines()
    assert calls and calls[0].startswith("called with 0x")  # a non-null ComponentDatabase pointer
    # Return 0 means "installed": elastix logs the lazy load and retries the database once (the
    # stand-in registered nothing, so the metric still cannot be created).
    installed = sections["preloaded, returns 0"]
    assert "Lazy-loaded IMPACT plugin 'ImpactMetric'." in installed
    assert "The following component could not be created: Impact" in installed
    assert len(marker.read_text().splitlines()) == 2


def test_a_second_plugin_with_the_same_soname_is_refused(cc, tmp_path):
    pytest.importorskip("torch")
    first = compile_library(cc, tmp_path / "a", "libImpactMetric.so", soname="libImpactMetric.so")
    second = compile_library(cc, tmp_path / "b", "libImpactMetric.so", soname="libImpactMetric.so")
    script = textwrap.dedent(
        """
        import sys
        from elastix_bridge.runtime import native_plugins
        print(native_plugins.preload_native_plugin(sys.argv[1]))
        try:
            native_plugins.preload_native_plugin(sys.argv[2])
        except native_plugins.NativePluginError as exc:
            print("refused:", exc)
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, "-c", script, str(first), str(second)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == str(first.resolve())
    assert lines[1].startswith(f"refused: cannot preload {second.resolve()}: {first.resolve()} with the same SONAME")
    assert "start a new Python process" in lines[1]


ROUTING_SCRIPT = r"""
import numpy as np
import itk
import elastix_bridge  # drop-in installed: the itk call below goes through the bridge's routing

image = itk.image_from_array(np.random.default_rng(0).random((16, 16)).astype(np.float32))
parameters = itk.ParameterObject.New()
pmap = parameters.GetDefaultParameterMap("translation", 1)
pmap["Metric"] = ["Impact"]
# A complete Impact map: the bridge checks it before any stage, whichever engine runs it.
import zipfile
zipfile.ZipFile("model.pt", "w").close()  # never loaded: the stand-in plugin stops elastix before models are read
pmap.update({"ImpactModelsPath0": ["model.pt"], "ImpactDimension0": ["2"], "ImpactNumberOfChannels0": ["1"],
             "ImpactPatchSize0": ["5", "5"], "ImpactVoxelSize0": ["1", "1"], "ImpactLayersMask0": ["1"],
             "ImpactSubsetFeatures0": ["1"], "ImpactLayersWeight0": ["1"], "ImpactPCA0": ["0"],
             "ImpactDistance0": ["L2"], "ImpactMode": ["Jacobian"], "ImpactGPU": ["-1"]})
parameters.AddParameterMap(pmap)
try:
    itk.elastix_registration_method(image, image, parameter_object=parameters, log_to_console=True)
except RuntimeError as exc:
    print("RuntimeError", flush=True)
"""


@pytest.mark.slow  # a fresh interpreter that imports itk and runs elastix (41 s measured on 2 busy cores)
def test_with_a_native_plugin_auto_sends_impact_maps_to_elastix(cc, tmp_path):
    """$ELASTIX_BRIDGE_NATIVE_PLUGIN set: an Impact map goes to elastix, whose loader calls the plugin."""
    out, _, marker = run_with_stand_in(cc, tmp_path, ROUTING_SCRIPT)
    assert "InstallComponent returned non-zero (7) for libImpactMetric.so" in out
    assert marker.read_text().startswith("called with 0x")
