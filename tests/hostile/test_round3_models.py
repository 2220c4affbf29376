"""Hostile round 3: degenerate Static runs and the model tools' memory (docs/bad_input.md).

Each case was exit 0 with a constant metric and the identity transform, or an OOM kill; now it is refused
before any work with one line naming the cause and the fix, and the output folder holds no result and no lock.
"""
import pytest

from helpers.command import assert_one_line_error, registration_args, run
from helpers.maps import impact_parameters, write_parameter_file
from helpers.torchscript import scripted_model

pytest.importorskip("torch")

LOCK = ".elastix-bridge.lock"

MODELS = {
    # MD11 / L03: a global pooling, 1 x 1 whatever the input.
    "pooled": "return [torch.nn.functional.adaptive_avg_pool2d(torch.cat([x, x], 1), 1)]",
    # a deep encoder: 1 voxel at the 16/17-voxel probes, 4 at 64 (and 2 on the 36-voxel test image).
    "encoder": "return [torch.nn.functional.avg_pool2d(torch.cat([x, x], 1), 16)]",
}


@pytest.fixture(scope="module")
def models(tmp_path_factory, plugin):
    folder = tmp_path_factory.mktemp("round3-models")
    return {name: scripted_model(folder, f"{name}.pt", "class Model(nn.Module):\n    def forward(self, x: torch.Tensor)"
                                 f" -> List[torch.Tensor]:\n        {body}\n") for name, body in MODELS.items()}


def _params(tmp_path, **changes):
    keys = dict(MaximumNumberOfIterations=2, NumberOfSpatialSamples=40, Transform="TranslationTransform",
                FinalGridSpacingInPhysicalUnits=None, ImpactSubsetFeatures0=2)
    keys.update(changes)
    return write_parameter_file(tmp_path / "params.txt", impact_parameters(**keys))


def _assert_nothing_left(out):
    assert not (out / LOCK).exists()
    assert sorted(p.name for p in out.iterdir()) == []


def _register(capsys, inputs, tmp_path, params):
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run(capsys, *registration_args(inputs, out, params))
    return code, err, out


# ------------------------------------------------------------------------------------------------
# MD11 / L03: a Static model whose maps have no spatial extent


def test_static_model_without_spatial_extent_is_refused(capsys, inputs, tmp_path, models, single_thread):
    params = _params(tmp_path, ImpactModelsPath0=str(models["pooled"]), ImpactMode="Static",
                     ImpactPatchSize0=[0, 0])
    code, err, out = _register(capsys, inputs, tmp_path, params)
    assert_one_line_error(code, err, "level 0", "pooled.pt", "layer 0", "1 x 1 voxels for an input of 64 x 64",
                          "1 voxel along y", "keeps spatial resolution", "ImpactMode Jacobian")
    _assert_nothing_left(out)
    assert models["pooled"].exists()
    code, _, err = run(capsys, "plan", "-f", inputs["fixed"], "-m", inputs["moving"], "-p", params, "--probe-models")
    assert_one_line_error(code, err, "pooled.pt", "1 voxel along y", "ImpactMode Jacobian")


@pytest.mark.parametrize("name, mode", [("pooled", "Jacobian"), ("encoder", "Static")])
def test_one_voxel_maps_that_are_not_constant_still_run(capsys, inputs, tmp_path, models, single_thread, name, mode):
    """Jacobian mode reads the patch centre; an encoder flat only at the small probes has extent on images."""
    params = _params(tmp_path, ImpactModelsPath0=str(models[name]), ImpactMode=mode,
                     ImpactPatchSize0=[5, 5] if mode == "Jacobian" else [0, 0])
    code, err, out = _register(capsys, inputs, tmp_path, params)
    assert code == 0, err
    assert (out / "TransformParameters.0.txt").is_file() and not (out / LOCK).exists()


# ------------------------------------------------------------------------------------------------
# E08: a pyramid that shrinks a level image to 1 voxel along an axis


@pytest.mark.parametrize("pyramid", ["ShrinkingImagePyramid", "RecursiveImagePyramid"])
def test_pyramid_level_of_one_voxel_is_refused_before_work(capsys, inputs, tmp_path, pyramid):
    params = _params(tmp_path, FixedImagePyramid=f"Fixed{pyramid}", MovingImagePyramid=f"Moving{pyramid}",
                     FixedImagePyramidSchedule=[100, 100], MovingImagePyramidSchedule=[100, 100])
    code, err, out = _register(capsys, inputs, tmp_path, params)
    assert_one_line_error(code, err, "level 0", f"Fixed{pyramid}", "by 100 100 to 1 × 1 voxels",
                          "fixed image (36 × 36 voxels", "constant", "FixedImagePyramidSchedule factors of at most 18")
    _assert_nothing_left(out)


# ------------------------------------------------------------------------------------------------
# MI2: model inspect of a model with huge outputs (20000 channels) was OOM-killed at 512 x 512


def test_inspect_skips_timed_sizes_whose_outputs_do_not_fit(capsys, tmp_path, monkeypatch, plugin):
    """20 channels = 80 B per voxel: 512 x 512 needs 2 x 21 MB, over half of a 40 MB limit; 256 x 256 fits."""
    model = scripted_model(tmp_path, "many.pt", "class Model(nn.Module):\n    def forward(self, x: torch.Tensor) -> "
                           "List[torch.Tensor]:\n        return [x.repeat(1, 20, 1, 1)]\n")
    monkeypatch.setenv("ELASTIX_BRIDGE_MEMORY_LIMIT", "40M")
    code, report, err = run(capsys, "model", "inspect", model, "--dimension", "2")
    assert code == 0, err
    assert "forward at 256x256:" in report and "ms, peak" in report.split("forward at 256x256:")[1].splitlines()[0]
    assert "forward at 512x512: skipped, it would take about 40.0 MiB (twice its outputs), over the 20.0 MiB" in report
    assert "$ELASTIX_BRIDGE_MEMORY_LIMIT" in report


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError(
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate "
    "1310720000 bytes. Error code 12 (Cannot allocate memory)")], ids=["MemoryError", "torch"])
def test_inspect_out_of_memory_is_one_named_line(capsys, tmp_path, monkeypatch, models, error):
    from elastix_bridge.runtime import loader

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(loader, "load_feature_model", fail)  # as if the model's first allocation failed
    code, _, err = run(capsys, "model", "inspect", models["pooled"], "--dimension", "2")
    assert_one_line_error(code, err, f"model '{models['pooled']}'", "ran out of memory", "free memory", "check its channel count")


def test_inspect_names_a_map_without_spatial_extent(capsys, models):
    code, report, err = run(capsys, "model", "inspect", models["pooled"], "--dimension", "2")
    assert code == 0, err
    assert "Static mode NO (1 voxel along x for the whole probe" in report and "use ImpactMode Jacobian" in report
