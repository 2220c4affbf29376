"""Hostile feature models: each breaks the feature-model contract one way (elastix_bridge.runtime.model_contract).

Every model runs through a registration (the command, in-process, on the tiny 2D pair of the ``inputs``
fixture, 2 iterations) in Static and Jacobian mode and through ``model inspect``. A refused model gives
exit 1 and one line naming the model file, the level, the layer, what was found and what is expected;
the output folder then holds no TransformParameters and no lock. Models the contract accepts (float16
or float64 features, a non-differentiable model in Static mode) register.
"""
import pytest

from helpers.command import assert_one_line_error, registration_args, run
from helpers.maps import impact_parameters, write_parameter_file
from helpers.torchscript import scripted_model

pytest.importorskip("torch")

LOCK = ".elastix-bridge.lock"

# name: forward body (x: Tensor [B, 1, y, x]) returning List[Tensor] unless the signature says otherwise.
MODELS = {
    "zero_channels": "return [x[:, :0]]",
    "batch_one": "return [x.mean(0, keepdim=True)]",
    "rank_low": "return [x[:, :, 0]]",
    "rank_high": "return [x[:, :, None]]",
    "empty_axis": "return [x[:, :, :0]]",
    "integer": "return [(x * 10).long()]",
    "nan": "return [x * float('nan')]",
    "inf": "return [x * 0 + float('inf')]",
    "detach": "return [x.detach() * 2]",
    "no_grad": "with torch.no_grad():\n            y = x * 2\n        return [y]",
    "argmax": "return [torch.cat([x, -x], 1).argmax(dim=1, keepdim=True).float()]",
    "nan_gradient": "return [torch.sqrt(x - x) + x]",
    "two_layers": "return [x, x]",
    "raises": "raise ValueError('this model needs 3 input channels')",
    "size_channels": "return [x.expand(x.shape[0], 1 + x.shape[-1] % 2, x.shape[2], x.shape[3])]",
    "half": "return [x.half() * 2]",
    "double": "return [x.double() * 2]",
    "two_channels": "return [torch.cat([x, 2 * x], 1)]",
    "min_size": "if x.shape[-1] < 32:\n            raise ValueError('needs 32 voxels per axis')\n        return [x * 2]",
}
SIGNATURES = {
    "tensor": ("torch.Tensor", "return x"),
    "tuple": ("Tuple[torch.Tensor, torch.Tensor]", "return x, x"),
    "dict": ("Dict[str, torch.Tensor]", "return {'a': x}"),
    "none": ("Optional[List[torch.Tensor]]", "return None"),
}


def _source(name: str) -> str:
    kind, body = SIGNATURES.get(name, ("List[torch.Tensor]", MODELS.get(name)))
    return (f"from typing import Dict, Optional, Tuple\n\nclass Model(nn.Module):\n"
            f"    def forward(self, x: torch.Tensor) -> {kind}:\n        {body}\n")


@pytest.fixture(scope="module")
def models(tmp_path_factory, plugin):
    folder = tmp_path_factory.mktemp("hostile-models")
    return {name: scripted_model(folder, f"{name}.pt", _source(name)) for name in list(MODELS) + list(SIGNATURES)}


def _map(model, mode: str, **changes):
    patch = ["5", "5"] if mode == "Jacobian" else ["0", "0"]
    keys = dict(ImpactMode=mode, ImpactModelsPath0=str(model), ImpactPatchSize0=patch, ImpactSubsetFeatures0=1,
                MaximumNumberOfIterations=2, NumberOfSpatialSamples=40, Transform="TranslationTransform",
                FinalGridSpacingInPhysicalUnits=None)
    keys.update(changes)
    return impact_parameters(**keys)


def _register(capsys, inputs, tmp_path, pmap, loglevel="off"):
    params = write_parameter_file(tmp_path / "params.txt", pmap)
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run(capsys, *registration_args(inputs, out, params, loglevel=loglevel))
    return code, err, out


def _assert_nothing_left(out):
    assert not (out / LOCK).exists()
    assert not list(out.glob("TransformParameters*")), sorted(p.name for p in out.iterdir())


# (model, modes it breaks the contract in, text the one-line error must hold besides the model file).
REFUSED = [
    ("zero_channels", ("Static", "Jacobian"), ["layer 0", "0 channels", "at least 1 channel"]),
    ("batch_one", ("Static", "Jacobian"), ["layer 0", "batch 1", "input batch of 2"]),
    ("rank_low", ("Static", "Jacobian"), ["layer 0", "1 spatial axes", "ImpactDimension is 2"]),
    ("rank_high", ("Static", "Jacobian"), ["layer 0", "3 spatial axes", "ImpactDimension is 2"]),
    ("empty_axis", ("Static", "Jacobian"), ["layer 0", "empty spatial axis"]),
    ("integer", ("Static", "Jacobian"), ["layer 0", "int64 features", "floating point"]),
    ("nan", ("Static", "Jacobian"), ["layer 0", "contains NaN", "check the model"]),
    ("inf", ("Static", "Jacobian"), ["layer 0", "contains Inf"]),
    ("detach", ("Jacobian",), ["layer 0", "autograd", "ImpactMode Static"]),
    ("no_grad", ("Jacobian",), ["layer 0", "torch.no_grad()", "ImpactMode Static"]),
    ("argmax", ("Jacobian",), ["layer 0", "argmax", "ImpactMode Static"]),
    ("nan_gradient", ("Jacobian",), ["layer 0", "gradient", "NaN or Inf"]),
    ("two_layers", ("Static", "Jacobian"), ["2 feature map(s)", "ImpactLayersMask has 1 entries"]),
    ("raises", ("Static", "Jacobian"), ["ValueError: this model needs 3 input channels"]),
    ("tensor", ("Static", "Jacobian"), ["a single tensor", "List[Tensor]"]),
    ("tuple", ("Static", "Jacobian"), ["a tuple of 2 elements", "List[Tensor]"]),
    ("dict", ("Static", "Jacobian"), ["Dict(str, Tensor)", "List[Tensor]"]),
    ("none", ("Static", "Jacobian"), ["NoneType", "List[Tensor]"]),
    ("size_channels", ("Static",), ["layer 0", "1 channels for a 16-voxel input but 2 for 17",
                                    "must not depend on the input size"]),
    ("min_size", ("Jacobian",), ["ValueError: needs 32 voxels per axis", "input [2, 1, 5, 5]"]),
]
REFUSED_CASES = [(name, mode, needles) for name, modes, needles in REFUSED for mode in modes]


@pytest.mark.parametrize("name, mode, needles", REFUSED_CASES, ids=[f"{n}-{m}" for n, m, _ in REFUSED_CASES])
def test_registration_refuses_a_model_that_breaks_the_contract(capsys, inputs, tmp_path, models, single_thread,
                                                               name, mode, needles):
    code, err, out = _register(capsys, inputs, tmp_path, _map(models[name], mode))
    line = assert_one_line_error(code, err, f"{name}.pt", *needles)
    assert "level 0" in line
    _assert_nothing_left(out)
    assert models[name].exists()  # the user's model is never removed


@pytest.mark.parametrize("name, mode", [("detach", "Static"), ("no_grad", "Static"), ("argmax", "Static"),
                                        ("nan_gradient", "Static"), ("size_channels", "Jacobian"),
                                        ("half", "Static"), ("half", "Jacobian"), ("double", "Jacobian"),
                                        ("min_size", "Static")])
def test_registration_accepts_what_the_contract_allows(capsys, inputs, tmp_path, models, single_thread, name, mode):
    """No gradient is needed in Static mode; a Jacobian patch has one size; float16/64 maps are cast to float32."""
    code, err, out = _register(capsys, inputs, tmp_path, _map(models[name], mode))
    assert code == 0, err
    assert (out / "TransformParameters.0.txt").is_file()
    assert not (out / LOCK).exists()


@pytest.mark.parametrize("mode", ["Static", "Jacobian"])
def test_subset_above_the_channels_is_a_warning(capsys, inputs, tmp_path, models, single_thread, mode):
    code, err, out = _register(capsys, inputs, tmp_path, _map(models["two_channels"], mode, ImpactSubsetFeatures0=8),
                               loglevel="warning")
    assert code == 0, err
    assert "ImpactSubsetFeatures0 (level 0): entry 0 asks for 8 channels but the layer has 2; all 2" in err


def test_pca_above_the_channels_is_refused_in_static_mode(capsys, inputs, tmp_path, models, single_thread):
    code, err, out = _register(capsys, inputs, tmp_path, _map(models["two_channels"], "Static", ImpactPCA0=3))
    assert_one_line_error(code, err, "ImpactPCA0", "3 principal components", "only 2 channels", "<= 2")
    _assert_nothing_left(out)


@pytest.mark.parametrize("mode", ["Static", "Jacobian"])
def test_paired_models_with_other_channel_counts_are_refused(capsys, inputs, tmp_path, models, single_thread, mode):
    pmap = _map(models["two_channels"], mode)
    for key in ("Dimension", "NumberOfChannels", "PatchSize", "VoxelSize", "LayersMask"):
        pmap[f"ImpactFixed{key}0"] = pmap[f"ImpactMoving{key}0"] = pmap.pop(f"Impact{key}0")
    pmap.pop("ImpactModelsPath0")
    pmap["ImpactFixedModelsPath0"], pmap["ImpactMovingModelsPath0"] = [str(models["two_channels"])], [str(models["double"])]
    code, err, out = _register(capsys, inputs, tmp_path, pmap)
    assert_one_line_error(code, err, "level 0", "[2] channels", "[1]", "equal channel counts")
    _assert_nothing_left(out)


# model inspect: the same contract, and the model's own message.
INSPECT_REFUSED = [
    ("zero_channels", ["0 channels", "at least 1 channel"]),
    ("batch_one", ["batch 1", "input batch of 2"]),
    ("rank_low", ["1 spatial axes", "ImpactDimension is 2"]),
    ("rank_high", ["3 spatial axes"]),
    ("empty_axis", ["empty spatial axis"]),
    ("integer", ["int64 features", "floating point"]),
    ("nan", ["contains NaN"]),
    ("inf", ["contains Inf"]),
    ("two_layers", ["2 feature map(s)", "ImpactLayersMask has 1 entries"]),
    ("raises", ["ValueError: this model needs 3 input channels"]),
    ("tensor", ["a single tensor", "List[Tensor]"]),
    ("tuple", ["a tuple of 2 elements"]),
    ("dict", ["Dict(str, Tensor)"]),
    ("size_channels", ["must not depend on the input size"]),
]


@pytest.mark.parametrize("name, needles", INSPECT_REFUSED, ids=[n for n, _ in INSPECT_REFUSED])
def test_model_inspect_applies_the_contract(capsys, models, single_thread, name, needles):
    code, out, err = run(capsys, "model", "inspect", models[name], "--dimension", "2")
    assert_one_line_error(code, err, f"{name}.pt", *needles)
    assert "Parameter-map snippet" not in out


def test_model_inspect_without_dimension_keeps_the_models_message(capsys, models, single_thread):
    code, out, err = run(capsys, "model", "inspect", models["raises"])
    assert_one_line_error(code, err, "3D input", "2D input", "ValueError: this model needs 3 input channels")
    assert "TorchScript interpreter" not in err


@pytest.mark.parametrize("names", [("two_channels",), ("detach",), ("half", "double")])
def test_inspect_snippets_pass_the_map_check(models, single_thread, names):
    """What `model inspect` prints is a map the map check accepts (never `(ImpactSubsetFeatures0 0)`)."""
    from elastix_bridge.core.parameters import ParameterMap
    from elastix_bridge.models.inspection import inspect_model
    from elastix_bridge.validation import validate_maps

    for name in names:
        snippet = inspect_model(models[name], dimension=2, size=24, timing_sizes=[16]).snippet()
        pmap = impact_parameters(ImpactModelsPath0=None, ImpactDimension0=None, ImpactNumberOfChannels0=None,
                                 ImpactPatchSize0=None, ImpactVoxelSize0=None, ImpactLayersMask0=None,
                                 ImpactSubsetFeatures0=None, ImpactLayersWeight0=None, ImpactPCA0=None,
                                 ImpactDistance0=None)
        for line in snippet.splitlines():
            key, *values = line.split("//")[0].strip().strip("()").split()
            pmap[key] = [v.strip('"') for v in values]
        assert int(pmap["ImpactSubsetFeatures0"][0]) >= 1
        validate_maps([ParameterMap(pmap)], dimension=2)


@pytest.mark.parametrize("block, needles", [("return x[:, :0]", ["0 channels"]),
                                            ("raise ValueError('block needs 3 channels')",
                                             ["ValueError: block needs 3 channels"])], ids=["zero_channels", "raises"])
def test_model_export_keeps_the_models_message_and_names_the_users_file(tmp_path, single_thread, block, needles):
    torch = pytest.importorskip("torch")
    from elastix_bridge.models.export import export
    from elastix_bridge.runtime.loader import ImpactModelError

    source = scripted_model(tmp_path, "net.pt", f"""
        class Block(nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                {block}

        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.block = Block()

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.block(x)
    """)
    target = tmp_path / "features.pt"
    with pytest.raises(ImpactModelError) as error:
        export(str(source), ["block"], 2, target, example_size=16)
    assert str(target) in str(error.value) and ".partial-" not in str(error.value)
    assert all(n in str(error.value) for n in needles) and "\n" not in str(error.value)
    assert not target.exists() and not list(tmp_path.glob(".*partial*"))
    assert source.exists()


@pytest.mark.parametrize("name, needles", [("zero_channels", ["0 channels"]), ("batch_one", ["batch 1", "batch of 2"]),
                                           ("raises", ["ValueError: this model needs 3 input channels"])])
def test_plan_probe_applies_the_contracts_shape_rules(models, single_thread, name, needles):
    """`plan --probe-models` runs the model too: the same shape rules, the model's own message."""
    from elastix_bridge import plan
    from elastix_bridge.core.impact_parameters import ModelConfig
    from elastix_bridge.runtime.loader import ImpactModelError

    cfg = ModelConfig(str(models[name]), 2, 1, (5, 5), (1.0, 1.0), (True,))
    with pytest.raises(ImpactModelError) as error:
        plan.probe_model(cfg, "Jacobian", 2)
    assert f"{name}.pt" in str(error.value) and all(n in str(error.value) for n in needles)
    assert "\n" not in str(error.value)
