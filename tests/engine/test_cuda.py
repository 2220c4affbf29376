"""IMPACT with ``ImpactGPU >= 0``: on a CUDA device, the same values, gradients and registrations as on the CPU.

Only the model inputs and the features live on the device (docs/design.md §I4.4); the samples,
transforms, interpolators and the optimizer stay on the CPU in float64. So a metric on the GPU must
give the CPU's value and gradient up to float32 rounding of the model, in both modes, and ASGD must
find the same shift. Skipped where torch sees no CUDA device (CI has none); run on a GPU machine with
``python -m pytest tests/engine/test_cuda.py``.
"""
from typing import List

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device (torch.cuda.is_available() is False)", allow_module_level=True)

from elastix_bridge.engine.optimizers.asgd import AdaptiveStochasticGradientDescent, jacobian_terms  # noqa: E402
from elastix_bridge.engine.optimizers.settings import ASGDSettings  # noqa: E402
from elastix_bridge.engine.registration import StageCost  # noqa: E402
from elastix_bridge.engine.samplers import GridSampler, RandomCoordinateSampler  # noqa: E402
from elastix_bridge.engine.transforms.base import TranslationTransform  # noqa: E402
from elastix_bridge.runtime.mind import mind_model_path  # noqa: E402
from elastix_bridge.runtime import loader  # noqa: E402
from helpers.impact import ball_points, impact_metric, level_config, model_config, oblique_pair  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

CUDA = "cuda:0"
SHIFT = np.array([1.3, -1.0, 1.1])


class Conv(torch.nn.Module):
    """A fixed 3×3×3 convolution to 4 channels and a sigmoid: smooth, differentiable features."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.conv = torch.nn.Conv3d(1, 4, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) / 3.0)
            self.conv.bias.copy_(torch.randn(4, generator=g) * 0.2)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [torch.sigmoid(self.conv(x))]


@pytest.fixture(scope="module")
def conv_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("cuda-models") / "conv.pt"
    torch.jit.script(Conv().eval()).save(str(path))
    return str(path)



def test_impact_gpu_resolves_to_a_working_cuda_device():
    assert loader.resolve_device(0) == torch.device(CUDA)


@pytest.mark.parametrize("mode", ["Static", "Jacobian"])
@pytest.mark.parametrize("model", ["conv", "mind-ssc-3d"])
def test_value_and_gradient_on_cuda_equal_the_cpu(plugin, conv_model, mode, model):
    path = conv_model if model == "conv" else str(mind_model_path("mind-ssc-3d"))
    fixed, moving = oblique_pair(3, SHIFT * 0.3, size=(24, 22, 20))
    patch, voxel = ((5, 5, 5), (1.0,) * 3) if mode == "Jacobian" else ((0, 0, 0), (1.2,) * 3)
    mc = model_config(path, 3, patch, voxel)
    cfg = level_config(mode, [mc], distances=("L2",))
    params = torch.tensor([0.2, -0.1, 0.15], dtype=torch.float64)
    points = ball_points(fixed.geometry, 300, 6.0, seed=1)
    results = {}
    for device in ("cpu", CUDA):
        models = [loader.load_feature_model(path, torch.device(device))]
        metric = impact_metric(plugin, cfg, fixed, moving, models, parameters=params, device=device)
        p = params.clone().requires_grad_(True)
        value, n_valid = metric.value(p, points)
        (grad,) = torch.autograd.grad(value, p)
        results[device] = (float(value.detach()), grad.numpy(), n_valid)
    (v_cpu, g_cpu, n_cpu), (v_gpu, g_gpu, n_gpu) = results["cpu"], results[CUDA]
    assert n_cpu == n_gpu > 250
    assert v_gpu == pytest.approx(v_cpu, rel=1e-4, abs=1e-7)
    np.testing.assert_allclose(g_gpu, g_cpu, rtol=2e-3, atol=1e-4 * np.abs(g_cpu).max())


@pytest.mark.parametrize("mode", ["Static", "Jacobian"])
def test_asgd_recovers_a_shift_with_the_model_on_cuda(plugin, conv_model, mode):
    fixed, moving = oblique_pair(3, SHIFT, size=(24, 22, 20))
    patch, voxel = ((3, 3, 3), (1.0,) * 3) if mode == "Jacobian" else ((0, 0, 0), (1.2,) * 3)
    cfg = level_config(mode, [model_config(conv_model, 3, patch, voxel)], distances=("L2",), interval=10)
    transform, x0 = TranslationTransform(3), torch.zeros(3, dtype=torch.float64)
    model = loader.load_feature_model(conv_model, torch.device(CUDA))
    metric = impact_metric(plugin, cfg, fixed, moving, [model], transform=transform, parameters=x0, device=CUDA)
    generator = torch.Generator().manual_seed(3)
    sampler = RandomCoordinateSampler(fixed.geometry, None, 200, generator)
    exact = GridSampler(fixed.geometry, None, number_of_samples=400)
    cost = StageCost([metric], [sampler], [1.0], [True], exact_sampler=exact)
    settings = ASGDSettings(maximum_number_of_iterations=80, new_samples_every_iteration=True,
                            number_of_samples_for_exact_gradient=400, maximum_step_length=1.0)
    optimizer = AdaptiveStochasticGradientDescent(settings, generator,
                                                  on_iteration=lambda record, x: metric.after_iteration(x))
    result = optimizer.optimize(cost, x0, jacobian_terms(*transform.jacobian(exact.sample()), 3))
    assert np.linalg.norm(result.numpy() - SHIFT) < 0.25, result
