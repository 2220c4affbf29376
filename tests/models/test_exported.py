"""Feature models saved with torch.export (.pt2): the same results as their TorchScript twins, everywhere."""
from typing import List

import numpy as np
import pytest

from helpers.impact import ball_points, impact_metric, level_config, model_config, oblique_pair
from helpers.maps import impact_parameters, transform_parameters

torch = pytest.importorskip("torch")
from elastix_bridge.runtime import loader  # noqa: E402

STATS = torch.tensor([0.0, 1.0, 0.5, 0.25])


class Toy(torch.nn.Module):
    """The four-argument convention: normalised by the level statistics, two layers (one strided)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.b = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor, n_layers: torch.Tensor, stats: torch.Tensor,
                direction: torch.Tensor) -> List[torch.Tensor]:
        y = torch.tanh(self.a((x - stats[2]) / stats[3]))
        return [y, torch.tanh(self.b(y))]


def _example():
    return (torch.randn(2, 1, 16, 16), torch.tensor(2, dtype=torch.int16), STATS, torch.eye(2, dtype=torch.int16))


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """The same module as TorchScript (.pt) and as a torch.export program with dynamic batch and spatial sizes."""
    folder = tmp_path_factory.mktemp("twins")
    module = Toy().eval()
    torch.jit.script(module).save(str(folder / "toy.pt"))
    dims = {0: torch.export.Dim("batch", min=1), 2: torch.export.Dim("h", min=3), 3: torch.export.Dim("w", min=3)}
    torch.export.save(torch.export.export(module, _example(), dynamic_shapes=(dims, None, None, None)),
                      str(folder / "toy.pt2"))
    torch.export.save(torch.export.export(module, _example()), str(folder / "static.pt2"))
    return folder


def test_same_features_and_input_gradients(plugin, twins):
    script = loader.load_feature_model(twins / "toy.pt", "cpu")
    exported = loader.load_feature_model(twins / "toy.pt2", "cpu")
    assert exported.num_arguments == script.num_arguments == 4
    for shape in [(1, 1, 9, 7), (6, 1, 5, 5), (1, 1, 40, 33)]:
        x = torch.randn(shape, requires_grad=True)
        a = exported.forward(x, 2, STATS, torch.eye(2))
        b = script.forward(x, 2, STATS, torch.eye(2))
        assert isinstance(a, list) and [t.shape for t in a] == [t.shape for t in b] and a[0].dtype == torch.float32
        for s, t in zip(a, b):
            torch.testing.assert_close(s, t)
        (ga,) = torch.autograd.grad(sum(t.sum() for t in a), x)
        (gb,) = torch.autograd.grad(sum(t.sum() for t in b), x)
        torch.testing.assert_close(ga, gb)


@pytest.mark.parametrize("mode", ["Static", "Jacobian"])
def test_metric_value_and_gradient_equal_the_torchscript_twin(plugin, twins, mode):
    fixed, moving = oblique_pair(2, np.array([0.8, -0.5]))
    pts = ball_points(fixed.geometry, 80, 6.0)
    t = torch.tensor([0.3, -0.2], dtype=torch.float64)
    results = []
    for name in ("toy.pt", "toy.pt2"):
        path = twins / name
        mc = model_config(path, 2, (5, 5) if mode == "Jacobian" else (0, 0), (1.0, 1.0), mask=(True, True))
        metric = impact_metric(plugin, level_config(mode, [mc], distances=("L2", "NCC")), fixed, moving,
                               [loader.load_feature_model(path, "cpu")])
        p = t.clone().requires_grad_(True)
        value, n_valid = metric.value(p, pts)
        (grad,) = torch.autograd.grad(value, p)
        results.append((float(value), n_valid, grad))
    (v1, n1, g1), (v2, n2, g2) = results
    assert n1 == n2 and v1 == pytest.approx(v2, rel=1e-6) and float(g1.norm()) > 0
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-8)


def test_registration_with_a_pt2_map_equals_its_torchscript_twin(plugin, twins, inputs):
    import itk

    from elastix_bridge.api import elastix_registration_method

    fixed, moving = itk.imread(str(inputs["fixed"]), itk.F), itk.imread(str(inputs["moving"]), itk.F)
    results = []
    for name in ("toy.pt", "toy.pt2"):
        pmap = impact_parameters(ImpactModelsPath0=str(twins / name), ImpactLayersMask0="11",
                                 ImpactSubsetFeatures0=["4", "4"], ImpactLayersWeight0=["1", "1"],
                                 ImpactPCA0=["0", "0"], ImpactDistance0=["L2", "L2"])
        _, tp = elastix_registration_method(fixed, moving, parameter_object=[pmap], engine="bridge")
        results.append(transform_parameters(tp))
    assert results[0] == results[1]


def test_a_static_program_names_dynamic_dimensions(plugin, twins):
    static = loader.load_feature_model(twins / "static.pt2", "cpu")
    static.forward(torch.randn(2, 1, 16, 16), 2, STATS, torch.eye(2))  # its example size runs
    with pytest.raises(RuntimeError, match="dynamic spatial dimensions"):
        static.forward(torch.randn(2, 1, 20, 16), 2, STATS, torch.eye(2))


def test_a_pt2_file_that_is_no_program_is_named(plugin, tmp_path):
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not a program")
    with pytest.raises(loader.ImpactModelError, match="junk.pt2.*torch.export program"):
        loader.load_feature_model(junk, "cpu")
