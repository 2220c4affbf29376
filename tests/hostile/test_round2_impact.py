"""Hostile round 2, degenerate Impact runs and the model contract (docs/bad_input.md).

Each case is refused before any work with one line naming the cause and the fix; nothing is written,
an earlier run's outputs in ``-out`` stay, and no lock is left. In-process, tiny 2D images, 2 iterations.
"""
import numpy as np
import pytest

from helpers.command import assert_one_line_error, registration_args, run
from helpers.maps import impact_parameters, write_parameter_file
from helpers.torchscript import scripted_model

pytest.importorskip("torch")

LOCK = ".elastix-bridge.lock"
EARLIER = ("TransformParameters.0.txt", "result.0.mha", "IterationInfo.0.R0.txt")

# name: forward body (x: Tensor [B, 1, y, x]) returning List[Tensor].
MODELS = {
    "good": "return [x * 2]",
    "bool": "return [x > 0.5]",
    "complex": "return [torch.complex(x, x)]",
    "huge": "return [x * 1e30]",  # finite in float32, but its squared distances overflow
}


@pytest.fixture(scope="module")
def models(tmp_path_factory, plugin):
    folder = tmp_path_factory.mktemp("round2-models")
    source = "class Model(nn.Module):\n    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:\n        {}\n"
    return {name: scripted_model(folder, f"{name}.pt", source.format(body)) for name, body in MODELS.items()}


def _map(model, **changes):
    keys = dict(ImpactModelsPath0=str(model), ImpactPatchSize0=["0", "0"], ImpactSubsetFeatures0=1,
                MaximumNumberOfIterations=2, NumberOfSpatialSamples=40, Transform="TranslationTransform",
                FinalGridSpacingInPhysicalUnits=None)
    keys.update(changes)
    return impact_parameters(**keys)


def _command(capsys, inputs, out, pmap, name="params.txt", **flags):
    params = write_parameter_file(out.parent / name, pmap)
    return run(capsys, *registration_args(inputs, out, params, **flags))


def _assert_refused_without_writing(out):
    assert not (out / LOCK).exists()
    assert not list(out.glob("TransformParameters*")), sorted(p.name for p in out.iterdir())


# -- C00: a refused model leaves an earlier result in -out ------------------------------------------------------


@pytest.mark.parametrize("surface", ["command", "api"])
@pytest.mark.parametrize("name, needles", [("bool", ["bool features"]),
                                           ("complex", ["complex64 features", "x.real"])])
def test_a_refused_model_keeps_the_earlier_result(capsys, inputs, tmp_path, models, single_thread, surface, name,
                                                  needles):
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = _command(capsys, inputs, out, _map(models["good"]), "good.txt")
    assert code == 0, err
    before = {f: (out / f).read_bytes() for f in EARLIER}
    if surface == "command":
        code, _, err = _command(capsys, inputs, out, _map(models[name]))
        assert_one_line_error(code, err, f"{name}.pt", "level 0", "layer 0", *needles, "real floating point")
    else:
        import itk

        from elastix_bridge import elastix_registration_method
        from elastix_bridge.runtime.loader import ImpactModelError

        fixed, moving = (itk.imread(str(inputs[k]), itk.F) for k in ("fixed", "moving"))
        with pytest.raises(ImpactModelError, match="real floating point"):
            elastix_registration_method(fixed, moving, parameter_object=_map(models[name]), output_directory=str(out),
                                        log_to_console=False)
    assert {f: (out / f).read_bytes() for f in EARLIER} == before  # nothing removed, nothing rewritten
    assert not (out / LOCK).exists()
    assert models[name].exists()


# -- K29 / I17: a Static feature grid of one point ----------------------------------------------------------------


def _tiny_spacing_inputs(folder):
    import itk

    y, x = np.mgrid[:40, :40].astype(np.float32)
    paths = {}
    for key, cx in (("fixed", 20), ("moving", 22)):
        image = itk.image_from_array(np.exp(-((x - cx) ** 2 + (y - 20) ** 2) / 60.0).astype(np.float32))
        image.SetSpacing([1e-6, 1e-6])
        paths[key] = folder / f"{key}.mha"
        itk.imwrite(image, str(paths[key]))
    return {**paths, "mask": None}


@pytest.mark.parametrize("case, voxel, needles", [
    ("voxel-huge", "1000", ["ImpactVoxelSize0 1000 mm along x", "extent of 43.2 mm", "at most 28.8 mm"]),
    ("spacing-tiny", "1", ["ImpactVoxelSize0 1 mm along x", "extent of 4e-05 mm", "check the image's spacing"]),
])
def test_a_static_feature_grid_of_one_point_is_refused(capsys, inputs, tmp_path, models, single_thread, case, voxel,
                                                       needles):
    out = tmp_path / "out"
    pmap = _map(models["good"], ImpactVoxelSize0=[voxel, voxel])
    if case == "spacing-tiny":
        tiny = _tiny_spacing_inputs(tmp_path)
        params = write_parameter_file(tmp_path / "params.txt", pmap)
        code, _, err = run(capsys, "-f", tiny["fixed"], "-m", tiny["moving"], "-p", params, "-out", out,
                           "-loglevel", "off")
    else:
        code, _, err = _command(capsys, inputs, out, pmap)
    assert_one_line_error(code, err, "level 0", "Static feature grid of 1 point", *needles)
    assert not out.exists()  # refused before -out is created


# -- M16: features whose distances overflow float32 ---------------------------------------------------------------


def test_a_non_finite_metric_stops_the_stage(capsys, inputs, tmp_path, models, single_thread):
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = _command(capsys, inputs, out, _map(models["huge"]))
    assert_one_line_error(code, err, "stage 0, level 0, iteration 0", "derivative norm", "huge.pt",
                          "overflow float32", "normalise the model's output")
    _assert_refused_without_writing(out)
    assert not list(out.glob("result.*"))


# -- L03: plan --probe-models applies the same contract -----------------------------------------------------------


@pytest.mark.parametrize("name, needle", [("bool", "bool features"), ("complex", "complex64 features")])
def test_plan_probe_refuses_what_the_registration_refuses(models, single_thread, name, needle):
    from elastix_bridge import plan
    from elastix_bridge.core.impact_parameters import ModelConfig
    from elastix_bridge.runtime.loader import ImpactModelError

    cfg = ModelConfig(str(models[name]), 2, 1, (0, 0), (1.0, 1.0), (True,))
    with pytest.raises(ImpactModelError) as error:
        plan.probe_model(cfg, "Static", 2)
    assert f"{name}.pt" in str(error.value) and needle in str(error.value) and "\n" not in str(error.value)
