"""Output folders that never mix runs, the memory estimate checked before work, and ``elastix-bridge plan``.

Runs use the 36×36 synthetic pair of test_cli and few iterations; elastix-engine maps (a
translation) where the engine does not matter, because they are the fastest.
"""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers.command import assert_one_line_error, run
from helpers.maps import MIND_SSC_2D_STATIC, impact_parameters, write_parameter_file
from helpers.paths import REPO
from helpers.torchscript import scripted_model

itk = pytest.importorskip("itk")

from elastix_bridge.runtime import memory  # noqa: E402

from elastix_bridge import plan  # noqa: E402
from elastix_bridge.core.output_folder import LOCK_NAME, OutputFolderError  # noqa: E402
from elastix_bridge.core.parameters import ParameterMap  # noqa: E402


def translation_map(levels: int = 1, **changes) -> dict:
    pmap = {"Registration": ["MultiResolutionRegistration"], "Metric": ["AdvancedMeanSquares"],
            "Transform": ["TranslationTransform"], "Optimizer": ["AdaptiveStochasticGradientDescent"],
            "MaximumNumberOfIterations": ["10"], "NumberOfResolutions": [str(levels)], "ImageSampler": ["Full"],
            "ResultImageFormat": ["mha"]}
    pmap.update({k: [str(v) for v in (vs if isinstance(vs, list) else [vs])] for k, vs in changes.items()})
    return pmap


@pytest.fixture
def translation(tmp_path):
    return write_parameter_file(tmp_path / "translation.txt", translation_map())


def run_into(capsys, inputs, out, *params, extra=()):
    argv = ["-f", inputs["fixed"], "-m", inputs["moving"], "-out", out, "-loglevel", "off", *extra]
    for p in params:
        argv += ["-p", p]
    return run(capsys, *argv)


def wrote(stdout: str) -> set:
    """The names the success line lists."""
    line = [l for l in stdout.splitlines() if l.startswith("elastix-bridge: wrote ")][-1]
    return set(line[len("elastix-bridge: wrote "):].split(" to ")[0].split(", "))


# ---------------------------------------------------------------------------------------------
# Output folders
# ---------------------------------------------------------------------------------------------


def test_one_stage_run_removes_a_two_stage_runs_outputs_and_lists_only_its_own(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    two_levels = write_parameter_file(tmp_path / "two_levels.txt", translation_map(levels=2))
    code, stdout, err = run_into(capsys, inputs, out, two_levels, two_levels)
    assert code == 0, err
    assert {"TransformParameters.1.txt", "result.1.mha", "IterationInfo.1.R1.txt"} <= set(os.listdir(out))
    for mine in ("notes.txt", "result.xlsx"):  # not outputs of this command: never touched
        (out / mine).write_text("mine")
    (out / "result.2024").mkdir()  # a folder named like an output is the user's too
    (out / ".stage1-x7").mkdir()  # a scratch folder left by a killed run
    (out / "qc.png").write_bytes(b"stale picture")  # an output of this command from an earlier run

    code, stdout, err = run_into(capsys, inputs, out, write_parameter_file(tmp_path / "one.txt", translation_map()))
    assert code == 0, err
    names = set(os.listdir(out))  # the lock file went with the run
    new = {"TransformParameters.0.txt", "result.0.mha", "IterationInfo.0.R0.txt", "elastix.log"}
    assert names == new | {"notes.txt", "result.xlsx", "result.2024"}
    assert wrote(stdout) == new
    assert (out / "notes.txt").read_text() == (out / "result.xlsx").read_text() == "mine"
    assert "removed" in stdout  # says that an earlier run's files went


def test_a_failing_run_into_an_earlier_result_removes_its_outputs_and_keeps_the_error_in_the_log(
        plugin, inputs, tmp_path, capsys, translation):
    """Stage 0 (elastix) succeeds, stage 1's model fails on the level image (the contract's probe, on small inputs
    before any work, passes): nothing of either run is left but the log with the error."""
    out = tmp_path / "out"
    code, _, err = run_into(capsys, inputs, out, translation)
    assert code == 0, err
    model = scripted_model(tmp_path, "fails.pt", """
        class Model(nn.Module):
            def forward(self, x):
                if x.shape[-1] > 20:
                    return [x, x]  # two layers where ImpactLayersMask has one, on inputs larger than the probe's
                return [x]
        """)
    impact = write_parameter_file(tmp_path / "impact.txt", impact_parameters(ImpactModelsPath0=str(model)))
    code, _, err = run_into(capsys, inputs, out, translation, impact)
    line = assert_one_line_error(code, err, "fails.pt", "returned 2")
    assert os.listdir(out) == ["elastix.log"]
    log = (out / "elastix.log").read_text()
    assert "Stage 0 (elastix engine)" in log  # the log of this run, not emptied
    assert log.rstrip().splitlines()[-2] == line  # ends with the error ...
    assert "TransformParameters.0.txt" in log.rstrip().splitlines()[-1]  # ... and names what it removed


def test_a_failed_allocation_names_stage_level_estimate_and_keys(plugin, inputs, tmp_path, capsys):
    """A real allocation failure (1 PiB) inside the model at level 1 is named, with the estimate and the keys."""
    model = scripted_model(tmp_path, "greedy.pt", """
        class Model(nn.Module):
            def forward(self, x):
                if x.shape[-1] > 30:
                    return [torch.empty([281474976710656], dtype=torch.float32)]  # 1 PiB
                return [x]
        """)
    level1 = {k[:-1] + "1": v for k, v in MIND_SSC_2D_STATIC.items() if k.endswith("0")}
    pmap = impact_parameters(**{**level1, "NumberOfResolutions": 2, "ImpactModelsPath0": str(model),
                                "ImpactModelsPath1": str(model), "ImpactVoxelSize0": [3, 3],
                                "ImpactSubsetFeatures0": 1, "ImpactSubsetFeatures1": 1})
    params = write_parameter_file(tmp_path / "greedy.txt", pmap)
    code, _, err = run_into(capsys, inputs, tmp_path / "out", params)
    assert_one_line_error(code, err, "stage 0 (bridge engine), resolution level 1 ran out of memory",
                          "can't allocate memory", "the estimate for it was at least", "available",
                          "ImpactVoxelSize1", "elastix-bridge plan")


def test_a_second_run_into_a_held_folder_fails_at_once_naming_the_first(inputs, tmp_path, capsys, translation):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from elastix_bridge.core.output_folder import owned_output_folder
            with owned_output_folder({str(out)!r}, command="the first run"):
                open({str(out / "TransformParameters.0.txt")!r}, "w").write("run A")
                print("locked", flush=True)
                sys.stdin.readline()  # hold until the test says
            """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])))
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = run_into(capsys, inputs, out, translation)
        assert holder.poll() is None  # refused while the first run still holds the folder: it did not wait
        assert_one_line_error(code, err, f"output folder (-out) {out} is in use by run PID {holder.pid}",
                              f"on host {socket.gethostname()}", "the first run", "give another folder")
        assert (out / "TransformParameters.0.txt").read_text() == "run A"  # the first run's files untouched
        assert (out / LOCK_NAME).is_file()
    finally:
        holder.communicate("\n", timeout=60)
    code, stdout, err = run_into(capsys, inputs, out, translation)  # released: the folder is free again
    assert code == 0, err
    assert "TransformParameters.0.txt" in wrote(stdout)


def test_lock_reentered_by_the_same_thread_refused_to_another_and_left_by_a_killed_run(tmp_path):
    import threading

    from elastix_bridge.core.output_folder import OutputFolderBusyError, owned_output_folder

    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text("pid=1\nhost=gone\nstarted=earlier\ncommand=a killed run\n")  # no flock held
    errors = []
    with owned_output_folder(out, command="outer") as outer:
        with owned_output_folder(out) as inner:  # the command calling the API
            assert inner is outer
        thread = threading.Thread(target=lambda: errors.append(pytest.raises(OutputFolderBusyError, _enter, out)))
        thread.start()
        thread.join()
    assert "in use by run PID" in str(errors[0].value) and "outer" in str(errors[0].value)
    assert not (out / LOCK_NAME).exists()


def _enter(out):
    from elastix_bridge.core.output_folder import owned_output_folder

    with owned_output_folder(out):
        pass


def test_out_that_is_a_file_is_named(inputs, tmp_path, capsys, translation):
    target = tmp_path / "result.txt"
    target.write_text("keep me")
    code, _, err = run_into(capsys, inputs, target, translation)
    assert_one_line_error(code, err, f"output folder (-out) {target} is an existing file, not a folder",
                          "give a folder path")
    assert target.read_text() == "keep me"
    code, _, err = run_into(capsys, inputs, target / "sub", translation)
    assert_one_line_error(code, err, f"is inside {target}, which is an existing file")
    from elastix_bridge.api import elastix_registration_method

    fixed = itk.imread(str(inputs["fixed"]), itk.F)
    with pytest.raises(OutputFolderError, match="output folder \\(output_directory\\).*existing file"):
        elastix_registration_method(fixed, fixed, parameter_object=ParameterMap.from_dict(translation_map()),
                                    output_directory=str(target))


# ---------------------------------------------------------------------------------------------
# Memory estimate
# ---------------------------------------------------------------------------------------------


def geometry(size, spacing):
    from elastix_bridge.core.geometry import ImageGeometry

    return ImageGeometry(size, spacing, np.zeros(len(size)), np.eye(len(size)))


def test_estimate_of_a_static_mind_level_and_an_elastix_stage():
    """Bytes computed here from the sizes and the documented per-element costs."""
    fixed = geometry((40, 36), (1.2, 1.0))
    impact = ParameterMap.from_dict(impact_parameters(ImpactVoxelSize0=[0.5, 0.5]))
    elastix = ParameterMap.from_dict(translation_map(levels=3, ImageSampler="Random", NumberOfSpatialSamples=100))
    result = plan.plan_registration(fixed, fixed, [elastix, impact], available=memory.MemoryBudget(10 ** 9, "test"))
    v = 40 * 36
    stage0, stage1 = result.stages
    assert stage0.engine == "elastix" and stage1.engine == "bridge" and stage1.impact_mode == "Static"
    assert stage0.base == {"input images": 2 * v * 4, "result image": v * 4, "pyramid images": 3 * 2 * v * 4}
    assert [lv.samples for lv in stage0.levels] == [100, 100, 100]
    per_resolution = ParameterMap.from_dict(translation_map(
        levels=3, FixedImagePyramid="FixedGenericImagePyramid", MovingImagePyramid="MovingGenericImagePyramid",
        ComputePyramidImagesPerResolution="true"))
    generic = plan.plan_registration(fixed, fixed, [per_resolution]).stages[0]
    assert "pyramid images" not in generic.base  # elastix computes one level at a time then
    sizes = [(10, 9), (20, 18), (40, 36)]  # elastix's default schedule: factors 4, 2, 1
    assert [lv.fixed_size for lv in generic.levels] == sizes
    assert [lv.parts["pyramid images"] for lv in generic.levels] == [2 * x * y * 4 for x, y in sizes]

    level = stage1.levels[0]
    grid = (96, 72)  # the fixed extent, 48 × 36 mm, at ImpactVoxelSize 0.5 mm
    g = grid[0] * grid[1]
    assert [(fm.side, fm.channels, fm.size) for fm in level.feature_maps] == [("fixed", 4, grid), ("moving", 4, grid)]
    coordinates = (1 + 2) * g * 2 * 8  # fixed voxel centres; moving centres and displaced points (float64, D=2)
    resampled = 2 * g * (8 + 4)  # values read (float64) and the float32 image, per side
    features = 2 * 4 * g * (4 + 4)  # float32 model output and coefficients, 4 channels, per side
    assert level.parts["feature maps"] == coordinates + resampled + features
    assert level.parts["pyramid images"] == 2 * v * 2 * 4 and level.parts["image coefficients"] == 2 * v * 8
    assert level.parts["samples"] == 300 * (2 * 2 + 2) * 8
    assert stage1.peak_bytes == 2 * v * 4 + v * 4 + level.bytes
    assert result.peak_bytes == max(stage0.peak_bytes, stage1.peak_bytes) and result.verdict == "fits"
    assert not result.lower_bound  # MIND-SSC is known without running it
    assert level.keys()[:2] == ["ImpactVoxelSize0", "ImpactLayersMask0"]


def test_jacobian_estimate_grows_with_samples_and_patch(plugin):
    """Probing measures the activations autograd keeps per patch; without it the estimate says 'at least'."""
    fixed = geometry((40, 36), (1.0, 1.0))

    def level(probe, samples, patch):
        pmap = ParameterMap.from_dict(impact_parameters(ImpactMode="Jacobian", ImpactModelsPath0="mind-ssc-2d",
                                                        NumberOfSpatialSamples=samples, ImpactPatchSize0=[patch, patch]))
        return plan.plan_registration(fixed, fixed, [pmap], probe_models=probe).stages[0]

    probed = level(True, 300, 7)
    lv = probed.levels[0]
    assert not probed.lower_bound and lv.parts["model activations"] > 0
    assert lv.parts["model outputs"] == 2 * 300 * 4 * 49 * 4  # fixed and moving, 4 channels, 7×7 per sample
    assert level(True, 600, 7).levels[0].parts["model activations"] == 2 * lv.parts["model activations"]
    assert level(True, 300, 9).levels[0].parts["patches"] > lv.parts["patches"]
    unprobed = level(False, 300, 7)
    assert unprobed.lower_bound and "model activations" not in unprobed.levels[0].parts
    probe = plan.probe_model(_model_config(), "Jacobian", 2)
    assert probe.channels == (4,) and probe.scale == ((1.0, 1.0),) and probe.activation_bytes > 0


def _model_config():
    from elastix_bridge.core.impact_parameters import ModelConfig

    return ModelConfig("mind-ssc-2d", 2, 1, (5, 5), (1.0, 1.0), (True,))


def test_real_allocation_failures_are_recognised_and_named():
    """numpy's and torch's own out-of-memory errors (1 PiB requests fail on any machine)."""
    torch = pytest.importorskip("torch")
    failures = []
    for allocate in (lambda: np.empty(2 ** 50, dtype=np.uint8), lambda: torch.empty(2 ** 50, dtype=torch.uint8)):
        with pytest.raises(Exception) as caught:
            allocate()
        failures.append(caught.value)
    assert all(plan.is_memory_error(e) for e in failures)
    assert not plan.is_memory_error(ValueError("ImpactDistance0 'L3' is not a known distance"))
    fixed = geometry((36, 36), (1.0, 1.0))
    result = plan.plan_registration(fixed, fixed, [ParameterMap.from_dict(impact_parameters())],
                                    available=memory.MemoryBudget(2 ** 30, "test"))
    named = plan.memory_error(failures[0], 0, "bridge", 0, result)
    assert isinstance(named, plan.InsufficientMemoryError)
    text = str(named)
    assert text.startswith("stage 0 (bridge engine), resolution level 0 ran out of memory (Unable to allocate")
    assert "the estimate for it was" in text and "of 1.0 GiB available (test)" in text and "ImpactVoxelSize0" in text
    assert str(plan.memory_error(failures[1], None, "elastix", None, None)).startswith(
        "the elastix run (every stage) ran out of memory")


def test_run_refused_when_the_estimate_exceeds_the_limit(inputs, tmp_path, capsys, monkeypatch, translation):
    out = tmp_path / "out"
    code, _, err = run_into(capsys, inputs, out, translation)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    fine = write_parameter_file(tmp_path / "fine.txt", impact_parameters(ImpactVoxelSize0=[0.1, 0.1]))
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, "2M")
    code, _, err = run_into(capsys, inputs, out, fine)
    assert_one_line_error(code, err, "the registration needs an estimated", "most at stage 0 (bridge engine), "
                          "resolution level 0: feature maps", "but only 2.0 MiB is available ($ELASTIX_BRIDGE_MEMORY_LIMIT)",
                          "change ImpactVoxelSize0", "elastix-bridge plan")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # refused before the folder was touched


def test_warning_when_close_and_the_limit_from_the_environment(monkeypatch, caplog):
    fixed = geometry((36, 36), (1.0, 1.0))
    pmap = ParameterMap.from_dict(translation_map())
    need = plan.plan_registration(fixed, fixed, [pmap]).peak_bytes
    with caplog.at_level("WARNING", logger="elastix_bridge"):
        plan.check_resources(fixed, fixed, [pmap], available=memory.MemoryBudget(int(need / 0.9), "test"))
    assert "may run out of memory" in caplog.text and "NumberOfResolutions" in caplog.text  # elastix keeps every level
    with pytest.raises(plan.InsufficientMemoryError, match="needs an estimated"):
        plan.check_resources(fixed, fixed, [pmap], available=memory.MemoryBudget(need - 1, "test"))
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, "1.5G")
    assert memory.available_memory() == memory.MemoryBudget(int(1.5 * 2 ** 30), "$ELASTIX_BRIDGE_MEMORY_LIMIT")
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, "lots")
    with pytest.raises(ValueError, match="not a size"):
        memory.available_memory()
    monkeypatch.delenv(memory.MEMORY_LIMIT_ENV)
    if sys.platform.startswith("linux"):
        budget = memory.available_memory()
        assert budget.bytes > 0 and ("MemAvailable" in budget.source or "cgroup" in budget.source)


# ---------------------------------------------------------------------------------------------
# plan
# ---------------------------------------------------------------------------------------------


def test_plan_prints_every_stage_and_level(inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, "1G")
    affine = write_parameter_file(tmp_path / "affine.txt", translation_map(levels=2, Transform="AffineTransform"))
    impact = write_parameter_file(tmp_path / "impact.txt", impact_parameters())
    code, stdout, err = run(capsys, "plan", "-f", inputs["fixed"], "-m", inputs["moving"], "-p", affine, "-p", impact,
                            "-fMask", inputs["mask"])
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0] == "fixed image  36x36 voxels, spacing 1.2 1 mm"
    assert lines[2].startswith("stage 0: elastix engine, AdvancedMeanSquares, AffineTransform, 2 level(s)")
    assert lines[3].startswith("  level 0: fixed 36x36, moving 36x36, 1296 samples, memory ")
    assert any(l.startswith("stage 1: bridge engine, Impact (Static mode), BSplineTransform, 1 level(s)") for l in lines)
    assert "    fixed features mind-ssc-2d: 4 channels x 43x36" in lines  # 43.2 mm at ImpactVoxelSize 1 mm
    assert lines[-1].startswith("estimated peak memory ") and lines[-1].endswith(
        "of 1.0 GiB available ($ELASTIX_BRIDGE_MEMORY_LIMIT): fits")
    code, _, err = run(capsys, "plan", "-f", inputs["fixed"], "-m", tmp_path / "none.mha", "-p", impact)
    assert_one_line_error(code, err, "moving image (-m)", "none.mha", "does not exist")


# ---------------------------------------------------------------------------------------------
# Inputs are never overwritten or removed (found by re-trying the bad inputs)
# ---------------------------------------------------------------------------------------------


def test_a_users_file_named_like_an_output_but_not_one_is_kept(inputs, tmp_path, capsys, translation):
    out = tmp_path / "out"
    out.mkdir()
    kept = ["TransformParameters.1.txt.bak", "result.0.xlsx", "IterationInfo.notes.txt", "result.1.mha.orig"]
    for name in kept:
        (out / name).write_text("mine")
    code, _, err = run_into(capsys, inputs, out, translation)
    assert code == 0, err
    assert all((out / name).read_text() == "mine" for name in kept)


@pytest.mark.parametrize("flag", ["-m", "-f", "-fMask", "-t0"])
def test_an_input_inside_out_under_an_output_name_is_refused_before_any_work(inputs, tmp_path, capsys, translation,
                                                                             flag):
    out = tmp_path / "out"
    code, _, err = run_into(capsys, inputs, out, translation)  # an earlier run: out/TransformParameters.0.txt etc.
    assert code == 0, err
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    given = {"-f": inputs["fixed"], "-m": inputs["moving"], "-p": translation}
    given[flag] = out / ("TransformParameters.0.txt" if flag == "-t0" else "result.0.mha")  # an earlier output
    argv = [arg for key, value in given.items() for arg in (key, value)] + ["-out", out, "-loglevel", "off"]
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, f"lies in the output folder (-out) {out} under a name this run writes",
                          "never overwrites")
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before  # nothing touched


def test_a_parameter_file_given_as_t0_is_named(inputs, tmp_path, capsys, translation):
    code, _, err = run(capsys, "-f", inputs["fixed"], "-m", inputs["moving"], "-out", tmp_path / "out",
                       "-loglevel", "off", "-p", translation, "-t0", translation)
    assert_one_line_error(code, err, "is not a TransformParameters file", "goes to -p")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc (Linux) only")
@pytest.mark.parametrize("case", ["static", "jacobian", "user"])
def test_mmap_threshold_per_stage_kind(case):
    """A 20 MB block freed by a stage without large per-iteration blocks leaves no resident memory,
    even once glibc's dynamic threshold would have put it on the heap; a Jacobian stage keeps such
    blocks on the heap for reuse; a threshold the user set is left alone."""
    code = textwrap.dedent("""
        import ctypes, json, sys
        from elastix_bridge.runtime.memory import set_mmap_threshold
        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * 4096
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        threshold = set_mmap_threshold(sys.argv[1] == "jacobian")
        grown = []
        for _ in range(3):  # with glibc's dynamic threshold the second block comes from the heap
            before = rss()
            p = libc.malloc(20 << 20)
            ctypes.memset(p, 1, 20 << 20)
            libc.free(p)
            grown.append(rss() - before)
        print(json.dumps({"threshold": threshold, "grown": grown}))
    """)
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if case == "user":
        env["MALLOC_MMAP_THRESHOLD_"] = str(64 << 20)
    out = subprocess.run([sys.executable, "-c", code, case], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if case == "user":
        assert result["threshold"] is None
    elif case == "static":
        assert result["threshold"] == memory.SMALL_THRESHOLD and max(result["grown"]) < (2 << 20)
    else:  # the 20 MB block stays below the threshold: it is kept for the next iteration's allocation
        assert result["threshold"] == memory.LARGE_THRESHOLD and max(result["grown"]) > (15 << 20)
