"""Tests of :class:`elastix_bridge.engine.metrics.impact.ImpactMetric` with toy TorchScript models.

Images are smooth Gaussian blobs defined in physical space and sampled on grids with anisotropic
spacing and oblique direction cosines, so a moving image is "the same function shifted by t" even
on a different grid. Expected values are computed independently (scipy interpolation in index
space, direct distance formulas), derivatives are checked against central finite differences, and
the model inputs are inspected through a recording wrapper around the plugin models.
"""
import math
from typing import List

import numpy as np
import pytest
from scipy import ndimage

torch = pytest.importorskip("torch")

from elastix_bridge.core.impact_parameters import DISTANCES  # noqa: E402
from elastix_bridge.runtime import loader  # noqa: E402
from elastix_bridge.engine.images.level_images import Mask  # noqa: E402
from elastix_bridge.engine.metrics.impact import (centre_features, crop_padding, patch_grid_offsets,  # noqa: E402
                                                 random_rotations)
from elastix_bridge.engine.errors import SamplingError  # noqa: E402
from elastix_bridge.engine.optimizers.asgd import AdaptiveStochasticGradientDescent, jacobian_terms  # noqa: E402
from elastix_bridge.engine.optimizers.settings import ASGDSettings  # noqa: E402
from elastix_bridge.engine.registration import StageCost  # noqa: E402
from elastix_bridge.engine.samplers import GridSampler, RandomCoordinateSampler  # noqa: E402
from elastix_bridge.engine.transforms.bspline import BSplineTransform, grid_for_level  # noqa: E402
from elastix_bridge.engine.transforms.base import TranslationTransform  # noqa: E402
from helpers.geometry import centred_geometry, rotation  # noqa: E402
from helpers.impact import (ball_points, impact_metric, jacobian_patch_offsets, level_config, level_image,  # noqa: E402
                            model_config, numpy_distance, oblique_pair, reference_interpolation, smooth_blobs,
                            static_grid)

pytestmark = [
    pytest.mark.usefixtures("single_thread"),  # one intra-op thread (see conftest.py)
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    # model weights require grad, so Jacobian-mode values carry a graph even without parameter gradients
    pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True:UserWarning"),
]

F64 = torch.float64


# ------------------------------------------------------------------------------------------------
# Toy TorchScript models (scripted and saved by the `models` fixture)
# ------------------------------------------------------------------------------------------------


class Identity(torch.nn.Module):
    """``forward(x) -> [x]``: the features are the (channel-replicated) patch itself."""

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [x]


class LayersByCount(torch.nn.Module):
    """Two forward arguments: returns ``n_layers`` maps ``x, 2x + 1, x², …`` (layer i: a known function)."""

    def forward(self, x: torch.Tensor, n_layers: torch.Tensor) -> List[torch.Tensor]:
        out: List[torch.Tensor] = []
        for i in range(int(n_layers.item())):
            if i == 0:
                out.append(x)
            elif i == 1:
                out.append(2.0 * x + 1.0)
            else:
                out.append(x * x)
        return out


class Meta(torch.nn.Module):
    """Four forward arguments: echoes ``stats``, ``direction`` and ``n_layers`` as constant feature channels."""

    def forward(self, x: torch.Tensor, n_layers: torch.Tensor, stats: torch.Tensor,
                direction: torch.Tensor) -> List[torch.Tensor]:
        values = torch.cat([stats.to(x.dtype), direction.reshape(-1).to(x.dtype), n_layers.reshape(1).to(x.dtype)])
        view: List[int] = [1, values.numel()] + [1] * (x.dim() - 2)
        return [values.view(view) + 0.0 * x[:, :1]]


class SigmoidConv(torch.nn.Module):
    """A fixed 3×3(×3) convolution, zero padding 1, 4 output channels, then a sigmoid (smooth, positive).

    With ``signed=True`` the output is ``2·sigmoid − 1`` instead (signed features, so that cosine-type
    distances are far from saturation).
    """

    def __init__(self, dimension: int, signed: bool = False):
        super().__init__()
        self.signed = signed
        g = torch.Generator().manual_seed(7)
        conv = torch.nn.Conv2d if dimension == 2 else torch.nn.Conv3d
        self.conv = conv(1, 4, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) / 3.0)
            self.conv.bias.copy_(torch.randn(4, generator=g) * 0.2)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        y = torch.sigmoid(self.conv(x[:, :1]))
        if self.signed:
            y = 2.0 * y - 1.0
        return [y]


class BoxSum(torch.nn.Module):
    """Fixed 3×3(×3) box-sum convolution with zero padding 1 (no bias): shows tile-border zero padding."""

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        y = x[:, :1]
        if y.dim() == 4:
            return [torch.nn.functional.conv2d(y, torch.ones(1, 1, 3, 3, dtype=y.dtype), padding=1)]
        return [torch.nn.functional.conv3d(y, torch.ones(1, 1, 3, 3, 3, dtype=y.dtype), padding=1)]


class Pool(torch.nn.Module):
    """Stride-2 average pooling (kernel 2): a strided layer whose feature i is the mean of voxels 2i, 2i+1."""

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        if x.dim() == 4:
            return [torch.nn.functional.avg_pool2d(x, 2)]
        return [torch.nn.functional.avg_pool3d(x, 2)]


class PadMarker(torch.nn.Module):
    """Output larger than the input: pads 1 voxel low / 2 high on every axis with the marker value -100."""

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        pad: List[int] = []
        for _ in range(x.dim() - 2):
            pad += [1, 2]
        return [torch.nn.functional.pad(x, pad, mode="constant", value=-100.0)]


_MODELS = {
    "identity": Identity(), "layers": LayersByCount(), "meta": Meta(), "conv2": SigmoidConv(2),
    "conv3": SigmoidConv(3), "signed2": SigmoidConv(2, True),
    "signed3": SigmoidConv(3, True), "box": BoxSum(), "pool": Pool(), "pad": PadMarker(),
}


class Recorder:
    """Wraps a plugin ``FeatureModel`` and records every call's arguments (a duck-typed model)."""

    def __init__(self, model):
        self.model = model
        self.calls = []

    def forward(self, x, n_layers, stats, direction):
        self.calls.append(dict(x=x.detach().clone(), n_layers=n_layers, stats=stats.clone(),
                               direction=direction.clone()))
        return self.model.forward(x, n_layers, stats, direction)


@pytest.fixture(scope="module")
def models(plugin, tmp_path_factory):
    """Paths and loaded plugin models of the toy networks: ``name -> (path, FeatureModel)``."""
    folder = tmp_path_factory.mktemp("impact_models")
    out = {}
    for name, module in _MODELS.items():
        path = folder / f"{name}.pt"
        torch.jit.script(module.eval()).save(str(path))
        out[name] = (str(path), loader.load_feature_model(str(path), torch.device("cpu")))
    return out


# ------------------------------------------------------------------------------------------------
# Images, geometries, configurations
# ------------------------------------------------------------------------------------------------


def _inner_points(geometry, n, margin, seed=0):
    """``n`` random physical points whose continuous indices keep ``margin`` voxels from every border."""
    rng = np.random.default_rng(seed)
    size = np.asarray(geometry.size, dtype=float)
    idx = rng.uniform(margin, size - 1 - margin, size=(n, geometry.dimension))
    return torch.from_numpy(geometry.index_to_physical(idx))


def _map_values(interp):
    """The feature map ``(C, N)`` behind a feature interpolator (values at its own voxel centres)."""
    pts = torch.from_numpy(interp.geometry.voxel_centres())
    return interp(pts).T


def _inside(geometry, points):
    """ITK inside-buffer test of physical points (numpy)."""
    idx = geometry.physical_to_index(np.asarray(points, dtype=float))
    return np.all((idx >= -0.5) & (idx < np.asarray(geometry.size) - 0.5), axis=1)


SHIFT = {2: np.array([0.8, -0.5]), 3: np.array([0.6, -0.4, 0.5])}


# ------------------------------------------------------------------------------------------------
# Values against independent computations
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [2, 3])
def test_jacobian_l2_value_is_centre_intensity_difference(plugin, models, dim):
    """Identity model: the Jacobian-mode L2 value is mean (F(x) − M(T(x)))², normalised by the first value."""
    fixed, moving = oblique_pair(dim, SHIFT[dim])
    path, model = models["identity"]
    patch, voxel = ((3, 4), (0.8, 1.1)) if dim == 2 else ((3, 4, 2), (0.8, 1.1, 0.9))
    cfg = level_config("Jacobian", [model_config(path, dim, patch, voxel, channels=2)], distances=("L2",))
    metric = impact_metric(plugin, cfg, fixed, moving, [model])
    assert metric.channels == [2]
    pts = ball_points(fixed.geometry, 150, 5.0)

    def raw(t):
        f = reference_interpolation(fixed, fixed.geometry, pts.numpy(), 3)
        m = reference_interpolation(moving, moving.geometry, pts.numpy() + t, 1)
        return float(np.mean((f - m) ** 2))

    t0, t1 = 0.3 * SHIFT[dim], SHIFT[dim] + 0.25
    v0, n = metric.value(torch.tensor(t0), pts)
    assert n == 150 and float(v0) == pytest.approx(1.0, rel=1e-6)
    assert metric.alpha[0] == pytest.approx(1.0 / raw(t0), rel=1e-4)
    v1, _ = metric.value(torch.tensor(t1), pts)
    assert float(v1) == pytest.approx(raw(t1) / raw(t0), rel=1e-4)
    # alpha stays fixed: the exact shift is far better than the first position
    v2, _ = metric.value(torch.tensor(SHIFT[dim]), pts)
    assert float(v2) == pytest.approx(raw(SHIFT[dim]) / raw(t0), rel=1e-3, abs=1e-6) and float(v2) < 0.05


@pytest.mark.parametrize("dim", [2, 3])
def test_static_value_matches_resampled_feature_maps(plugin, models, dim):
    """Static identity model: maps are F and M∘T₀ on the voxel-size grid, read at x and x + T(x) − T₀(x)."""
    fixed, moving = oblique_pair(dim, SHIFT[dim])
    path, model = models["identity"]
    voxel = (1.5, 1.3) if dim == 2 else (1.5, 1.3, 1.4)
    cfg = level_config("Static", [model_config(path, dim, (0,) * dim, voxel)], distances=("L2",))
    t0 = torch.tensor(0.5 * SHIFT[dim])
    metric = impact_metric(plugin, cfg, fixed, moving, [model], parameters=t0)
    metric.alpha = [1.0]  # raw value
    grid = static_grid(fixed.geometry, voxel)
    geo = metric.fixed_feature_interp[0].geometry
    assert geo.size == grid.size
    np.testing.assert_allclose(geo.spacing, grid.spacing)
    np.testing.assert_allclose(geo.origin, grid.origin, atol=1e-12)
    np.testing.assert_allclose(geo.direction, fixed.geometry.direction)

    centres = grid.voxel_centres()
    fmap = reference_interpolation(fixed, fixed.geometry, centres, 3).reshape(grid.shape_zyx)
    mmap = reference_interpolation(moving, moving.geometry, centres + t0.numpy(), 1).reshape(grid.shape_zyx)
    # points all over the fixed image, some of which map outside the moving image
    pts = _inner_points(fixed.geometry, 300, 0.0, seed=3)
    t = torch.tensor(SHIFT[dim] + np.linspace(0.5, 1.5, dim))
    valid = _inside(moving.geometry, pts.numpy() + t.numpy())
    assert 0.3 < valid.mean() < 1.0
    f = reference_interpolation(fmap, grid, pts.numpy()[valid], 3)
    m = reference_interpolation(mmap, grid, pts.numpy()[valid] + (t - t0).numpy(), 3)
    v, n = metric.value(t, pts)
    assert n == int(valid.sum())
    assert float(v) == pytest.approx(float(np.mean((f - m) ** 2)), rel=1e-4)


@pytest.mark.parametrize("mode", ["Jacobian", "Static"])
def test_every_distance_value_on_multichannel_features(plugin, models, mode):
    """Each distance of the level equals its formula on the metric's own features; L1/L2 first value = 1."""
    fixed, moving = oblique_pair(2, SHIFT[2])
    path, model = models["conv2"]
    mc = model_config(path, 2, (3, 3) if mode == "Jacobian" else (0, 0), (1.0, 1.1))
    pts = ball_points(fixed.geometry, 100, 6.0)
    t0, t1 = torch.tensor(0.2 * SHIFT[2]), torch.tensor(0.7 * SHIFT[2] + 0.3)
    for distance in DISTANCES:
        metric = impact_metric(plugin, level_config(mode, [mc], distances=(distance,), weights=(1.5,)), fixed, moving,
                         [model])
        first = numpy_distance(distance, *_full_features(metric, pts, t0))
        v0, _ = metric.value(t0, pts)
        v1, _ = metric.value(t1, pts)
        alpha = 1.0 / first if distance in ("L1", "L2") else 1.0
        assert float(v0) == pytest.approx(1.5 * alpha * first, rel=1e-4)
        expected = numpy_distance(distance, *_full_features(metric, pts, t1))
        assert float(v1) == pytest.approx(1.5 * alpha * expected, rel=1e-4), distance


# ------------------------------------------------------------------------------------------------
# Derivatives against central finite differences
# ------------------------------------------------------------------------------------------------


def _gradient(metric, params, pts):
    """Value (float) and autograd gradient w.r.t. the transform parameters."""
    p = params.clone().requires_grad_(True)
    value, _ = metric.value(p, pts)
    (g,) = torch.autograd.grad(value, p)
    return float(value.detach()), g


def _check_directional_derivatives(metric, params, pts, directions, h, rtol):
    """Autograd gradient · d against central differences along each unit direction d.

    Features and distances are float32 (``layer_value`` receives float32 features from the models),
    so the tolerance is ``rtol·‖g‖`` plus the finite-difference resolution of float32 values
    (a few ulps of the value divided by the step).
    """
    value, g = _gradient(metric, params, pts)  # first call: also fixes alpha for L1/L2
    scale = float(g.norm())
    assert scale > 0 and torch.isfinite(g).all()
    resolution = 4 * float(np.spacing(np.float32(max(abs(value), 1e-3)))) / h
    for d in directions:
        d = d / d.norm()
        plus, _ = metric.value(params + h * d, pts)
        minus, _ = metric.value(params - h * d, pts)
        fd = (float(plus) - float(minus)) / (2 * h)
        assert float(g @ d) == pytest.approx(fd, abs=rtol * scale + resolution), (float(g @ d), fd, scale)


def _transform_and_params(kind, geometry, seed=0):
    """Transform, generic parameters and the directions for finite differences."""
    gen = torch.Generator().manual_seed(seed)
    d = geometry.dimension
    if kind == "translation":
        t = TranslationTransform(d)
        return t, torch.tensor(0.5 * SHIFT[d]), list(torch.eye(d, dtype=F64))
    t = BSplineTransform(grid_for_level(geometry, [9.0] * d, 1.0, 3))
    params = 0.3 * torch.randn(t.number_of_parameters, generator=gen, dtype=F64)
    return t, params, [torch.randn(t.number_of_parameters, generator=gen, dtype=F64) for _ in range(3)]


@pytest.mark.parametrize("kind", ["translation", "bspline"])
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("mode", ["Jacobian", "Static"])
def test_gradient_matches_finite_differences_2d(plugin, models, mode, distance, kind):
    fixed, moving = oblique_pair(2, SHIFT[2])
    path, model = models["conv2" if distance == "Dice" else "signed2"]
    cfg = level_config(mode, [model_config(path, 2, (3, 3) if mode == "Jacobian" else (0, 0),
                             (0.9, 1.0) if mode == "Jacobian" else (1.0, 1.1))], distances=(distance,))
    transform, params, directions = _transform_and_params(kind, fixed.geometry)
    metric = impact_metric(plugin, cfg, fixed, moving, [model], transform=transform, parameters=params, order=3)
    assert metric.channels == [4] and metric.subset_sizes == [4]
    pts = ball_points(fixed.geometry, 120, 7.0, seed=1)
    shifted = params + 0.2 * directions[0] / directions[0].norm()  # away from the Static reference T0
    # L1 (and L1Cosine's exp(−λ|f − m|)) have kinks where f = m: a short step crosses few of them; the
    # smooth distances take a longer step so that the float32 resolution of the values does not dominate.
    h = {"L1": 2e-3, "L1Cosine": 1e-2}.get(distance, 5e-2)
    _check_directional_derivatives(metric, shifted, pts, directions, h=h, rtol=3e-3)


@pytest.mark.parametrize("distance", ["L2", "NCC"])
@pytest.mark.parametrize("mode", ["Jacobian", "Static"])
def test_gradient_matches_finite_differences_3d(plugin, models, mode, distance):
    fixed, moving = oblique_pair(3, SHIFT[3], size=(14, 13, 12))
    path, model = models["signed3"]
    cfg = level_config(mode, [model_config(path, 3, (3, 3, 3) if mode == "Jacobian" else (0, 0, 0), (1.0, 1.1, 1.2))],
                  distances=(distance,))
    transform, params, directions = _transform_and_params("translation", fixed.geometry)
    metric = impact_metric(plugin, cfg, fixed, moving, [model], transform=transform, parameters=params, order=3)
    pts = ball_points(fixed.geometry, 50, 3.5, seed=2)
    _check_directional_derivatives(metric, params + 0.1, pts, directions, h=5e-2, rtol=3e-3)


def test_gradient_2d_model_on_3d_image_with_replayed_rotations(plugin, models):
    """Random planes are redrawn at every evaluation, so the generator is rewound before each one."""
    fixed, moving = oblique_pair(3, SHIFT[3], size=(14, 13, 12))
    path, model = models["signed2"]
    cfg = level_config("Jacobian", [model_config(path, 2, (3, 3), (1.0, 1.1))], distances=("L2",))
    metric = impact_metric(plugin, cfg, fixed, moving, [model], order=3)
    pts = ball_points(fixed.geometry, 60, 3.5, seed=4)
    state = metric.generator.get_state()

    class Rewound:
        def value(self, params, points):
            metric.generator.set_state(state)
            return metric.value(params, points)

    params = torch.tensor(SHIFT[3] * 0.5)
    _check_directional_derivatives(Rewound(), params, pts, list(torch.eye(3, dtype=F64)), h=5e-2, rtol=3e-3)


# ------------------------------------------------------------------------------------------------
# Registration: a known translation is recovered
# ------------------------------------------------------------------------------------------------

TRUE_SHIFT = {2: np.array([1.6, -1.2]), 3: np.array([1.3, -1.0, 1.1])}


@pytest.mark.parametrize("mode", ["Jacobian", "Static"])
@pytest.mark.parametrize("dim", [2, 3])
def test_asgd_recovers_translation(plugin, models, dim, mode):
    """ASGD through ``StageCost`` finds the physical shift between two oblique, differently sampled images."""
    fixed, moving = oblique_pair(dim, TRUE_SHIFT[dim], size=(24, 24, 24) if dim == 3 else None)
    path, model = models["identity" if mode == "Jacobian" else f"conv{dim}"]
    if mode == "Jacobian":
        mc = model_config(path, dim, (3,) * dim, (1.0,) * dim)
    else:
        mc = model_config(path, dim, (0,) * dim, (1.2,) * dim)
    cfg = level_config(mode, [mc], distances=("L2",), interval=10)
    transform = TranslationTransform(dim)
    x0 = torch.zeros(dim, dtype=F64)
    metric = impact_metric(plugin, cfg, fixed, moving, [model], transform=transform, parameters=x0)
    generator = torch.Generator().manual_seed(3)
    sampler = RandomCoordinateSampler(fixed.geometry, None, 300 if dim == 2 else 200, generator)
    exact = GridSampler(fixed.geometry, None, number_of_samples=400)
    cost = StageCost([metric], [sampler], [1.0], [True], exact_sampler=exact)
    settings = ASGDSettings(maximum_number_of_iterations=120 if dim == 2 else 80, new_samples_every_iteration=True,
                            number_of_samples_for_exact_gradient=400, maximum_step_length=1.0)
    jac = transform.jacobian(exact.sample())
    terms = jacobian_terms(*jac, dim)
    optimizer = AdaptiveStochasticGradientDescent(settings, generator,
                                                  on_iteration=lambda record, x: metric.after_iteration(x))
    result = optimizer.optimize(cost, x0, terms)
    error = np.linalg.norm(result.numpy() - TRUE_SHIFT[dim])
    assert error < 0.2, (result, TRUE_SHIFT[dim])
    assert optimizer.history[-1].metric < 0.1 * optimizer.history[0].metric


# ------------------------------------------------------------------------------------------------
# Sample validity
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["Jacobian", "Static"])
def test_valid_samples_respect_moving_buffer_and_mask(plugin, models, mode):
    fixed, moving = oblique_pair(2, SHIFT[2])
    path, model = models["identity"]
    patch, voxel = ((3, 3), (1.0, 1.2)) if mode == "Jacobian" else ((0, 0), (1.0, 1.0))
    t = torch.tensor([4.0, -3.0])
    pts = _inner_points(fixed.geometry, 400, 0.0, seed=5)
    if mode == "Jacobian":
        patch_pts = pts.numpy()[:, None, :] + jacobian_patch_offsets(fixed.geometry, patch, voxel)[None]
    else:
        patch_pts = pts.numpy()[:, None, :]
    moved = patch_pts + t.numpy()
    in_buffer = _inside(moving.geometry, moved.reshape(-1, 2)).reshape(moved.shape[:2]).all(axis=1)
    # moving mask: the half-plane of the moving grid with x index < 15
    mask_array = np.zeros(moving.geometry.shape_zyx, dtype=bool)
    mask_array[:, :15] = True
    mask = Mask(moving.geometry, mask_array)
    nearest = np.floor(moving.geometry.physical_to_index(moved.reshape(-1, 2)) + 0.5)
    in_mask = ((nearest[:, 0] < 15) & np.all((nearest >= 0) & (nearest < np.asarray(moving.geometry.size)), axis=1))
    in_mask = in_mask.reshape(moved.shape[:2]).all(axis=1)

    cfg = level_config(mode, [model_config(path, 2, patch, voxel)], distances=("L2",))
    for m, expected in ((None, in_buffer), (mask, in_buffer & in_mask)):
        metric = impact_metric(plugin, cfg, fixed, moving, [model], mask=m, ratio=0.0)
        metric.alpha = [1.0]
        assert 0 < expected.sum() < len(expected)
        value, n = metric.value(t, pts)
        assert n == int(expected.sum())
        # the invalid samples are simply left out
        value_valid, n_valid = metric.value(t, pts[torch.from_numpy(expected)])
        assert n_valid == n and float(value) == pytest.approx(float(value_valid), rel=1e-6)


@pytest.mark.parametrize("mode", ["Jacobian", "Static"])
def test_sampling_error_below_required_ratio(plugin, models, mode):
    fixed, moving = oblique_pair(2, SHIFT[2])
    path, model = models["identity"]
    cfg = level_config(mode, [model_config(path, 2, (3, 3) if mode == "Jacobian" else (0, 0), (1.0, 1.0))])
    pts = _inner_points(fixed.geometry, 200, 0.0, seed=6)
    t = torch.tensor([12.0, 9.0])
    probe = impact_metric(plugin, cfg, fixed, moving, [model], ratio=0.0)
    _, n = probe.value(t, pts)
    fraction = n / 200
    assert 0.05 < fraction < 0.9
    with pytest.raises(SamplingError, match=rf"{n} / 200"):
        impact_metric(plugin, cfg, fixed, moving, [model], ratio=fraction + 0.01).value(t, pts)
    impact_metric(plugin, cfg, fixed, moving, [model], ratio=fraction - 0.01).value(t, pts)
    # no valid sample at all raises even when the check is disabled
    with pytest.raises(SamplingError, match="0 / 200"):
        impact_metric(plugin, cfg, fixed, moving, [model], ratio=0.0).value(torch.tensor([100.0, 0.0]), pts)


# ------------------------------------------------------------------------------------------------
# Patch layout, centre index
# ------------------------------------------------------------------------------------------------


def _ramp(dim):
    """A linear function of physical points (reproduced exactly by linear and cubic B-splines inside)."""
    a = np.array([0.7, -1.3, 0.4][:dim])
    return lambda p: np.asarray(p) @ a + 5.0


def test_centre_index_odd_and_even():
    t = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    torch.testing.assert_close(centre_features(t), t[:, :, 2, 2])
    t = torch.arange(2 * 3 * 5 * 4 * 1, dtype=torch.float32).reshape(2, 3, 5, 4, 1)
    torch.testing.assert_close(centre_features(t), t[:, :, 2, 2, 0])
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3, 1)
    torch.testing.assert_close(centre_features(t), t[:, :, 0])


@pytest.mark.parametrize("dim,patch,voxel", [(2, (5, 2), (0.7, 1.1)), (3, (5, 3, 2), (0.7, 1.1, 0.9))])
def test_jacobian_patch_layout_zyx_x_fastest(plugin, models, dim, patch, voxel):
    """Non-cubic patches: tensor index (k, j, i) holds x + Dir·((i − ⌊Px/2⌋)·vx, (j − ⌊Py/2⌋)·vy, …)."""
    geo = centred_geometry((26,) * dim, (0.9, 1.2, 1.1)[:dim], rotation(dim, 0.4 if dim == 2 else (0.3, -0.2, 0.4)),
                    (1.0,) * dim)
    ramp = _ramp(dim)
    image = level_image(geo, ramp)
    path, model = models["identity"]
    fixed_rec, moving_rec = Recorder(model), Recorder(model)
    cfg = level_config("Jacobian", [model_config(path, dim, patch, voxel)], distances=("L2",))
    metric = impact_metric(plugin, cfg, image, image, [fixed_rec], [moving_rec])
    offsets, shape = patch_grid_offsets(cfg.fixed_models[0], geo, dim)
    assert shape == tuple(reversed(patch))
    np.testing.assert_allclose(offsets, jacobian_patch_offsets(geo, patch, voxel), atol=1e-12)
    # dummy forward: one zero patch of shape [1, C, Pz, Py, Px]
    assert fixed_rec.calls[0]["x"].shape == (1, 1) + tuple(reversed(patch))
    pts = ball_points(geo, 20, 3.0)
    t = np.array([0.3, -0.2, 0.1][:dim])
    metric.value(torch.tensor(t), pts)
    fx, mx = fixed_rec.calls[-1]["x"], moving_rec.calls[-1]["x"]
    assert fx.shape == (20, 1) + tuple(reversed(patch))
    points = pts.numpy()[:, None, :] + jacobian_patch_offsets(geo, patch, voxel)[None]
    expected = ramp(points.reshape(-1, dim)).reshape(fx.shape)
    np.testing.assert_allclose(fx.numpy(), expected, atol=2e-4)
    np.testing.assert_allclose(mx.numpy(), ramp((points + t).reshape(-1, dim)).reshape(fx.shape), atol=2e-4)
    # the centre voxel (⌊P/2⌋ along every axis) is the sample point itself
    np.testing.assert_allclose(centre_features(fx).numpy()[:, 0], ramp(pts.numpy()), atol=2e-4)


def test_even_strided_output_uses_floor_half_centre(plugin, models):
    """A 5×4 patch average-pooled to 2×2: the centre feature (1, 1) is the mean of patch voxels 2..3 × 2..3."""
    geo = centred_geometry((26, 26), (0.9, 1.2), rotation(2, 0.4), (1.0, 1.0))
    ramp = _ramp(2)
    image = level_image(geo, ramp)
    path, model = models["pool"]
    voxel = (0.8, 1.1)
    cfg = level_config("Jacobian", [model_config(path, 2, (5, 4), voxel)])
    metric = impact_metric(plugin, cfg, image, image, [model])
    assert metric.channels == [1]
    pts = ball_points(geo, 10, 3.0)
    point_lists, shapes = metric.patch_points(cfg.fixed_models, pts, [None])
    (features,) = metric.patch_features([model], cfg.fixed_models, metric.fixed_interp, point_lists, shapes,
                                         metric.fixed_stats, metric.fixed_direction, "fixed")
    centre = pts.numpy() + geo.direction @ (0.5 * np.asarray(voxel))
    np.testing.assert_allclose(features.numpy()[:, 0], ramp(centre), atol=2e-4)


# ------------------------------------------------------------------------------------------------
# Static mode: tiling, cropping, strided outputs, 2D models on 3D images
# ------------------------------------------------------------------------------------------------


def _static_metric(plugin, models, name, dim, patch, voxel=None, image=None, channels=1, recorder=False):
    """A Static metric on ``image`` (fixed = moving) whose resampling grid is the image grid."""
    if image is None:
        image, _ = oblique_pair(dim, None)
    path, model = models[name]
    model = Recorder(model) if recorder else model
    voxel = voxel or tuple(image.geometry.spacing)
    cfg = level_config("Static", [model_config(path, dim, patch, voxel, channels=channels)], distances=("L2",))
    return impact_metric(plugin, cfg, image, image, [model]), model


def test_crop_padding_centres_larger_outputs_and_keeps_smaller():
    f = torch.arange(2 * 8 * 6, dtype=torch.float32).reshape(2, 8, 6)
    torch.testing.assert_close(crop_padding(f, (5, 6)), f[:, 1:6, :])  # (8 − 5) // 2 = 1
    torch.testing.assert_close(crop_padding(f, (4, 3)), f[:, 2:6, 1:4])
    torch.testing.assert_close(crop_padding(f, (16, 12)), f)  # strided: kept whole
    torch.testing.assert_close(crop_padding(f, (4, 12)), f[:, 2:6, :])


@pytest.mark.parametrize("dim", [2, 3])
def test_tiling_pointwise_model_equals_whole_image(plugin, models, dim):
    patch = (4, 3) if dim == 2 else (4, 3, 5)
    tiled, rec = _static_metric(plugin, models, "identity", dim, patch, recorder=True)
    whole, _ = _static_metric(plugin, models, "identity", dim, (0,) * dim)
    torch.testing.assert_close(tiled.fixed_feature_interp[0].coefficients, whole.fixed_feature_interp[0].coefficients)
    # tiles are laid out (z, y, x): tensor shape [1, C, *reversed(PatchSize)], ceil(E/T) tiles per axis
    shape_zyx = tiled.fixed.geometry.shape_zyx
    n_tiles = int(np.prod([math.ceil(e / p) for e, p in zip(shape_zyx, reversed(patch))]))
    assert len(rec.calls) == 2 * n_tiles  # fixed maps, then moving maps
    assert all(c["x"].shape == (1, 1) + tuple(reversed(patch)) for c in rec.calls)
    # the map reproduces the image itself (voxel size = spacing: the resampling grid is the image grid)
    values = _map_values(tiled.fixed_feature_interp[0])[0].numpy()
    np.testing.assert_allclose(values, tiled.fixed.array_zyx.reshape(-1), atol=1e-5)


def test_tiling_conv_model_sees_zero_padded_tiles(plugin, models):
    """Box sum per tile = box sum of the image zeroed outside the tile; the last tile is padded with zeros."""
    image, _ = oblique_pair(2, None, size=(11, 7))
    patch = (4, 3)  # tiles of 4 (x) × 3 (y): partial tiles at the high end of both axes
    metric, _ = _static_metric(plugin, models, "box", 2, patch, image=image)
    a = image.array_zyx.astype(np.float64)
    expected = np.zeros_like(a)
    for y0 in range(0, a.shape[0], patch[1]):
        for x0 in range(0, a.shape[1], patch[0]):
            tile = np.zeros_like(a)
            tile[y0:y0 + patch[1], x0:x0 + patch[0]] = a[y0:y0 + patch[1], x0:x0 + patch[0]]
            boxed = ndimage.correlate(tile, np.ones((3, 3)), mode="constant")
            expected[y0:y0 + patch[1], x0:x0 + patch[0]] = boxed[y0:y0 + patch[1], x0:x0 + patch[0]]
    values = _map_values(metric.fixed_feature_interp[0])[0].numpy().reshape(a.shape)
    np.testing.assert_allclose(values, expected, atol=1e-4)
    whole = ndimage.correlate(a, np.ones((3, 3)), mode="constant")
    assert np.abs(values - whole).max() > 0.1  # tile borders really differ from the whole-image result


@pytest.mark.parametrize("patch", [(0, 0), (4, 3)])
def test_outputs_larger_than_tile_are_centre_cropped(plugin, models, patch):
    """A model padding 1 low / 2 high with a marker: the crop removes exactly the margin."""
    image, _ = oblique_pair(2, None, size=(11, 7))
    metric, _ = _static_metric(plugin, models, "pad", 2, patch, image=image)
    assert metric.fixed_feature_interp[0].geometry.size == image.geometry.size
    values = _map_values(metric.fixed_feature_interp[0])[0].numpy()
    np.testing.assert_allclose(values, image.array_zyx.reshape(-1), atol=1e-5)


@pytest.mark.parametrize("size,patch", [((12, 8), (0, 0)), ((12, 8), (4, 4)), ((11, 9), (4, 4))])
def test_strided_output_geometry(plugin, models, size, patch):
    """Average pooling by 2: feature i is centred between resampled voxels 2i and 2i+1.

    With partial last tiles (11×9 voxels, tiles 4×4) the incomplete features are cropped and the map
    covers 10×8 voxels at a 2-voxel spacing rather than being stretched over the extent.
    """
    geo = centred_geometry(size, (0.9, 1.2), rotation(2, 0.4), (1.0, 1.0))
    ramp = _ramp(2)
    image = level_image(geo, ramp)
    metric, _ = _static_metric(plugin, models, "pool", 2, patch, image=image)
    feature_geo = metric.fixed_feature_interp[0].geometry
    assert feature_geo.size == tuple(s // 2 for s in size)
    np.testing.assert_allclose(feature_geo.spacing, 2 * geo.spacing)
    np.testing.assert_allclose(feature_geo.origin, geo.origin + geo.direction @ (geo.spacing / 2), atol=1e-12)
    np.testing.assert_allclose(feature_geo.direction, geo.direction)
    values = _map_values(metric.fixed_feature_interp[0])[0].numpy()
    np.testing.assert_allclose(values, ramp(feature_geo.voxel_centres()), atol=1e-4)


def test_static_2d_model_on_3d_image_runs_slice_by_slice(plugin, models):
    image, _ = oblique_pair(3, None, size=(10, 9, 7))
    voxel = (1.2, 1.0, 1.4)
    path, model = models["identity"]
    rec = Recorder(model)
    cfg2 = level_config("Static", [model_config(path, 2, (0, 0), voxel)])
    cfg3 = level_config("Static", [model_config(path, 3, (0, 0, 0), voxel)])
    m2 = impact_metric(plugin, cfg2, image, image, [rec])
    m3 = impact_metric(plugin, cfg3, image, image, [model])
    grid = static_grid(image.geometry, voxel)
    # one forward per axial slice of the resampled grid, for the fixed and then the moving image
    assert len(rec.calls) == 2 * grid.size[2]
    assert all(c["x"].shape == (1, 1, grid.size[1], grid.size[0]) for c in rec.calls)
    assert all(c["direction"].shape == (3, 3) for c in rec.calls)
    torch.testing.assert_close(m2.fixed_feature_interp[0].coefficients, m3.fixed_feature_interp[0].coefficients)
    resampled = reference_interpolation(image, image.geometry, grid.voxel_centres(), 3).reshape(grid.shape_zyx)
    for z in (0, grid.size[2] - 1):
        np.testing.assert_allclose(rec.calls[z]["x"][0, 0].numpy(), resampled[z], atol=1e-5)
    pts = ball_points(image.geometry, 50, 3.0)
    t = torch.tensor([0.4, -0.3, 0.2])
    assert float(m2.value(t, pts)[0]) == pytest.approx(float(m3.value(t, pts)[0]), rel=1e-5)


# ------------------------------------------------------------------------------------------------
# Jacobian mode: 2D models on 3D images (random in-plane patches)
# ------------------------------------------------------------------------------------------------


def test_random_rotations_are_proper_rotations_from_the_generator():
    n = 50
    rotations = random_rotations(n, torch.Generator().manual_seed(4), F64)
    eye = torch.eye(3, dtype=F64).expand(n, 3, 3)
    torch.testing.assert_close(rotations.transpose(1, 2) @ rotations, eye)
    torch.testing.assert_close(torch.linalg.det(rotations), torch.ones(n, dtype=F64))
    # R = Rz(γ)·Ry(β)·Rx(α) with (α, β, γ) the generator's three uniform rows scaled to [0, 2π)
    angles = 2 * math.pi * torch.rand(3, n, generator=torch.Generator().manual_seed(4), dtype=F64)
    for s in (0, 17, 49):
        expected = rotation(3, tuple(float(a) for a in angles[:, s]))
        np.testing.assert_allclose(rotations[s].numpy(), expected, atol=1e-12)
    assert not torch.allclose(rotations[0], rotations[1])


def test_jacobian_2d_model_on_3d_image_uses_one_rotation_per_sample_for_both_images(plugin, models):
    geo = centred_geometry((22, 22, 22), (0.9, 1.2, 1.1), rotation(3, (0.3, -0.2, 0.4)), (1.0, 0.0, -1.0))
    ramp = _ramp(3)
    image = level_image(geo, ramp)
    path, model = models["identity"]
    fixed_rec, moving_rec = Recorder(model), Recorder(model)
    patch, voxel = (5, 3), (0.8, 1.3)
    cfg = level_config("Jacobian", [model_config(path, 2, patch, voxel)])
    metric = impact_metric(plugin, cfg, image, image, [fixed_rec], [moving_rec], seed=9)
    assert fixed_rec.calls[0]["x"].shape == (1, 1, 3, 5) and fixed_rec.calls[0]["direction"].shape == (3, 3)
    n = 30
    pts = ball_points(geo, n, 3.0)
    t = np.array([0.4, -0.3, 0.2])
    state = metric.generator.get_state()
    metric.value(torch.tensor(t), pts)
    replay = torch.Generator()
    replay.set_state(state)
    rotations = random_rotations(n, replay, F64).numpy()
    axes = [(np.arange(p) - p // 2) * v for p, v in zip(patch, voxel)]
    gy, gx = np.meshgrid(axes[1], axes[0], indexing="ij")
    planar = np.stack([gx.reshape(-1), gy.reshape(-1), np.zeros(gx.size)], axis=1)  # (Q, 3), x fastest
    points = pts.numpy()[:, None, :] + np.einsum("nij,qj->nqi", rotations, planar)
    fx, mx = fixed_rec.calls[-1]["x"].numpy(), moving_rec.calls[-1]["x"].numpy()
    assert fx.shape == (n, 1, 3, 5)
    np.testing.assert_allclose(fx, ramp(points.reshape(-1, 3)).reshape(fx.shape), atol=2e-4)
    np.testing.assert_allclose(mx, ramp((points + t).reshape(-1, 3)).reshape(fx.shape), atol=2e-4)
    # a new evaluation draws new planes
    metric.value(torch.tensor(t), pts)
    assert np.abs(fixed_rec.calls[-1]["x"].numpy() - fx).max() > 0.1


# ------------------------------------------------------------------------------------------------
# Subsets, layers masks, PCA, feature-map refresh, model arguments
# ------------------------------------------------------------------------------------------------


def _full_features(metric, pts, t):
    """Fixed and moving features ``[N, F]`` of layer 0 for all channels (Jacobian or Static)."""
    if metric.config.mode == "Static":
        with torch.no_grad():
            moved = metric.transform.transform_points(t, pts)
            ref = metric.transform.transform_points(metric.reference_parameters, pts)
            return (metric.fixed_feature_interp[0](pts).float(),
                    metric.moving_feature_interp[0](pts + moved - ref).float())
    cfgs = metric.config.fixed_models
    fp, shapes = metric.patch_points(cfgs, pts, [None])
    mp = [metric.transform.transform_points(t, p.reshape(-1, pts.shape[1])).reshape(p.shape) for p in fp]
    with torch.no_grad():
        (f,) = metric.patch_features(metric.fixed_models, cfgs, metric.fixed_interp, fp, shapes,
                                      metric.fixed_stats, metric.fixed_direction, "fixed")
        (m,) = metric.patch_features(metric.moving_models, cfgs, metric.moving_interp, mp, shapes,
                                      metric.moving_stats, metric.moving_direction, "moving")
    return f, m


@pytest.mark.parametrize("mode", ["Jacobian", "Static"])
def test_subset_features_are_drawn_from_the_generator(plugin, models, mode):
    fixed, moving = oblique_pair(2, SHIFT[2])
    path, model = models["signed2"]
    mc = model_config(path, 2, (3, 3) if mode == "Jacobian" else (0, 0), (1.0, 1.1))
    pts = ball_points(fixed.geometry, 60, 6.0)
    t = torch.tensor(0.5 * SHIFT[2])

    def build(k, seed=0):
        return impact_metric(plugin, level_config(mode, [mc], distances=("DotProduct",), subset=(k,)), fixed, moving,
                       [model], seed=seed)

    metric = build(2)
    assert metric.channels == [4] and metric.subset_sizes == [2]
    f, m = _full_features(metric, pts, t)
    for _ in range(3):
        state = metric.generator.get_state()
        value, _ = metric.value(t, pts)
        replay = torch.Generator()
        replay.set_state(state)
        idx = torch.randperm(4, generator=replay)[:2]
        expected = -(f[:, idx] * m[:, idx]).sum(1).mean()
        assert float(value) == pytest.approx(float(expected), rel=1e-5)
    # the same seed reproduces the sequence; K >= C (and K clamped from 0 to 1) as documented
    a, b = build(2, seed=5), build(2, seed=5)
    assert [float(a.value(t, pts)[0]) for _ in range(4)] == [float(b.value(t, pts)[0]) for _ in range(4)]
    assert build(0).subset_sizes == [1]
    full = build(9)
    assert full.subset_sizes == [4]
    state = full.generator.get_state()
    value, _ = full.value(t, pts)
    assert torch.equal(full.generator.get_state(), state)  # no draw when K >= C
    assert float(value) == pytest.approx(float(-(f * m).sum(1).mean()), rel=1e-5)


@pytest.mark.parametrize("mode", ["Jacobian", "Static"])
def test_layers_mask_selects_outputs_and_weights_layers(plugin, models, mode):
    """A 2-argument model returning 3 layers (x, 2x + 1, x²) with mask "101": layers x and x²."""
    fixed, moving = oblique_pair(2, SHIFT[2])
    path, model = models["layers"]
    rec = Recorder(model)
    voxel = tuple(fixed.geometry.spacing)
    mc = model_config(path, 2, (3, 3) if mode == "Jacobian" else (0, 0), voxel, mask=(True, False, True))
    cfg = level_config(mode, [mc], distances=("L2", "DotProduct"), weights=(0.5, 2.0))
    metric = impact_metric(plugin, cfg, fixed, moving, [rec])
    assert metric.channels == [1, 1]
    assert all(int(c["n_layers"]) == 3 for c in rec.calls)
    metric.alpha = [1.0, None]
    pts = ball_points(fixed.geometry, 80, 6.0)
    t = 0.5 * SHIFT[2]
    value, _ = metric.value(torch.tensor(t), pts)
    f = reference_interpolation(fixed, fixed.geometry, pts.numpy(), 3)
    if mode == "Jacobian":
        m = reference_interpolation(moving, moving.geometry, pts.numpy() + t, 1)
    else:  # fixed grid = image grid: the maps interpolate F and M∘T₀ (T₀ = identity) with cubic splines
        grid = fixed.geometry
        mmap = reference_interpolation(moving, moving.geometry, grid.voxel_centres(), 1).reshape(grid.shape_zyx)
        m = reference_interpolation(mmap, grid, pts.numpy() + t, 3)
    if mode == "Jacobian":  # centre features of the layers x and x²
        expected = 0.5 * np.mean((f - m) ** 2) + 2.0 * -np.mean(f * f * m * m)
    else:
        # the second layer's map is x² on the grid, interpolated: compare with the squared-map splines
        fsq = reference_interpolation(fixed.array_zyx.astype(float) ** 2, grid, pts.numpy(), 3)
        msq = reference_interpolation(mmap ** 2, grid, pts.numpy() + t, 3)
        expected = 0.5 * np.mean((f - m) ** 2) + 2.0 * -np.mean(fsq * msq)
    assert float(value) == pytest.approx(float(expected), rel=1e-4)
    assert metric.alpha[1] is None  # only L1/L2 layers are normalised


def test_static_pca_fitted_on_fixed_reused_for_moving_global_layer_index(plugin, models):
    """Two models, PCA only on the second model's layer (global layer 1, its model's first layer)."""
    fixed, moving = oblique_pair(2, np.array([2.0, -1.5]))
    ident, conv = models["identity"], models["conv2"]
    voxel = (1.3, 1.4)
    mcs = [model_config(ident[0], 2, (0, 0), voxel), model_config(conv[0], 2, (0, 0), voxel)]
    pca_cfg = level_config("Static", mcs, distances=("L2", "NCC"), pca=(0, 2), interval=1)
    raw_cfg = level_config("Static", mcs, distances=("L2", "NCC"))
    metric = impact_metric(plugin, pca_cfg, fixed, moving, [ident[1], conv[1]])
    raw = impact_metric(plugin, raw_cfg, fixed, moving, [ident[1], conv[1]])
    assert metric.channels == [1, 2] and raw.channels == [1, 4]
    assert metric.pca_bases[0] is None and metric.pca_bases[1].shape == (4, 2)
    xf = _map_values(raw.fixed_feature_interp[1]).numpy()
    xm = _map_values(raw.moving_feature_interp[1]).numpy()
    # basis = eigenvectors of the two largest eigenvalues of the fixed map's channel covariance
    xc = xf - xf.mean(axis=1, keepdims=True)
    _, vecs = np.linalg.eigh(xc @ xc.T / (xf.shape[1] - 1))
    basis = metric.pca_bases[1].numpy()
    np.testing.assert_allclose(np.abs(basis.T @ vecs[:, 2:]), np.eye(2), atol=1e-6)
    np.testing.assert_allclose(_map_values(metric.fixed_feature_interp[1]).numpy(), basis.T @ xc, atol=1e-4)
    moving_expected = basis.T @ (xm - xm.mean(axis=1, keepdims=True))
    np.testing.assert_allclose(_map_values(metric.moving_feature_interp[1]).numpy(), moving_expected, atol=1e-4)
    # a refresh of the moving maps keeps the fixed-fitted basis
    kept = metric.pca_bases[1]
    metric.after_iteration(torch.tensor([1.0, -1.0], dtype=F64))
    assert metric.pca_bases[1] is kept
    refreshed = impact_metric(plugin, raw_cfg, fixed, moving, [ident[1], conv[1]],
                        parameters=torch.tensor([1.0, -1.0], dtype=F64))
    xm = _map_values(refreshed.moving_feature_interp[1]).numpy()
    np.testing.assert_allclose(_map_values(metric.moving_feature_interp[1]).numpy(),
                               basis.T @ (xm - xm.mean(axis=1, keepdims=True)), atol=1e-4)


@pytest.mark.parametrize("interval", [2, -1, 0])
def test_static_feature_map_refresh_interval(plugin, models, interval):
    fixed, moving = oblique_pair(2, SHIFT[2])
    path, model = models["conv2"]
    cfg = level_config("Static", [model_config(path, 2, (0, 0), (1.2, 1.2))], distances=("NCC",), interval=interval)
    metric = impact_metric(plugin, cfg, fixed, moving, [model])
    original = metric.moving_feature_interp
    positions = [torch.tensor([0.2 * k, -0.1 * k], dtype=F64) for k in range(1, 6)]
    pts = ball_points(fixed.geometry, 80, 6.0)
    for k, position in enumerate(positions, start=1):
        metric.after_iteration(position)
        refreshed = interval > 0 and k % interval == 0
        last = (positions[(k // interval) * interval - 1] if interval > 0 and k >= interval
                else torch.zeros(2, dtype=F64))
        torch.testing.assert_close(metric.reference_parameters, last)
        if refreshed:
            # identical to a metric initialised at that position (x + T(x) − T₀(x) with the new T₀)
            fresh = impact_metric(plugin, cfg, fixed, moving, [model], parameters=position)
            t = position + 0.3
            assert float(metric.value(t, pts)[0]) == pytest.approx(float(fresh.value(t, pts)[0]), rel=1e-6)
    assert metric.iteration == 5
    assert (metric.moving_feature_interp is original) == (interval <= 0)


def test_jacobian_after_iteration_does_nothing(plugin, models):
    fixed, moving = oblique_pair(2, SHIFT[2])
    path, model = models["identity"]
    metric = impact_metric(plugin, level_config("Jacobian", [model_config(path, 2, (3, 3), (1.0, 1.0))], interval=1), fixed, moving,
                     [model])
    metric.after_iteration(torch.ones(2, dtype=F64))
    assert metric.iteration == 1 and not hasattr(metric, "moving_feature_interp")


@pytest.mark.parametrize("mode", ["Jacobian", "Static"])
def test_mixed_models_receive_level_statistics_and_rounded_direction(plugin, models, mode):
    """Fixed: 4-argument and 2-argument models; moving: 4-argument and 1-argument models."""
    fixed_geo = centred_geometry((24, 22), (0.9, 1.2), rotation(2, math.radians(100)), (1.0, -1.0))
    moving_geo = centred_geometry((25, 23), (1.0, 1.1), rotation(2, math.radians(-25)), (1.5, -0.5))
    fixed = level_image(fixed_geo, lambda p: smooth_blobs(p, 2))
    moving = level_image(moving_geo, lambda p: 3.0 * smooth_blobs(p, 2, SHIFT[2]) - 1.0)
    meta, layers, ident = models["meta"], models["layers"], models["identity"]
    recs = [Recorder(meta[1]), Recorder(layers[1]), Recorder(meta[1]), Recorder(ident[1])]
    patch, voxel = ((3, 3), (1.0, 1.0)) if mode == "Jacobian" else ((0, 0), (1.1, 1.1))
    fixed_cfgs = [model_config(meta[0], 2, patch, voxel), model_config(layers[0], 2, patch, voxel, mask=(False, True))]
    moving_cfgs = [model_config(meta[0], 2, patch, voxel), model_config(ident[0], 2, patch, voxel)]
    cfg = level_config(mode, fixed_cfgs, moving_cfgs, distances=("L2", "L1"))
    metric = impact_metric(plugin, cfg, fixed, moving, recs[:2], recs[2:])
    assert metric.channels == [4 + 4 + 1, 1]
    pts = ball_points(fixed_geo, 40, 5.0)
    metric.value(torch.tensor(0.5 * SHIFT[2]), pts)

    def stats(image):
        a = image.array_zyx.astype(np.float64)
        return np.array([a.min(), a.max(), a.mean(), a.std(ddof=1)])

    expected = {"fixed": (stats(fixed), np.array([[0, -1], [1, 0]])),
                "moving": (stats(moving), np.array([[1, 0], [0, 1]]))}
    for rec, which, n_layers in ((recs[0], "fixed", 1), (recs[1], "fixed", 2), (recs[2], "moving", 1),
                                 (recs[3], "moving", 1)):
        assert rec.calls
        for call in rec.calls:
            np.testing.assert_allclose(call["stats"].numpy(), expected[which][0], rtol=1e-5)
            assert call["stats"].dtype == torch.float32
            assert call["direction"].dtype == torch.int16
            np.testing.assert_array_equal(call["direction"].numpy(), expected[which][1])
            assert int(call["n_layers"]) == n_layers
    # the TorchScript model itself received them (its features echo stats, direction, n_layers)
    for which, echoed in (("fixed", metric.fixed_feature_interp if mode == "Static" else None),
                          ("moving", metric.moving_feature_interp if mode == "Static" else None)):
        if mode == "Static":
            features = _map_values(echoed[0]).T.numpy()
        else:
            cfgs = metric.config.fixed_models if which == "fixed" else metric.config.moving_models
            interp = metric.fixed_interp if which == "fixed" else metric.moving_interp
            stats_t = metric.fixed_stats if which == "fixed" else metric.moving_stats
            direction = metric.fixed_direction if which == "fixed" else metric.moving_direction
            model_list = [meta[1]]
            pl, shapes = metric.patch_points(cfgs[:1], pts, [None])
            (features,) = metric.patch_features(model_list, cfgs[:1], interp, pl, shapes, stats_t, direction,
                                                 which)
            features = features.detach().numpy()
        stats_v, direction_v = expected[which]
        np.testing.assert_allclose(features[:, :4], np.broadcast_to(stats_v, (len(features), 4)), rtol=1e-4)
        np.testing.assert_allclose(features[:, 4:8], np.broadcast_to(direction_v.reshape(-1), (len(features), 4)),
                                   atol=1e-4)
        np.testing.assert_allclose(features[:, 8], 1.0, atol=1e-4)


@pytest.mark.parametrize("mode", ["Jacobian", "Static"])
def test_paired_layers_must_have_equal_channels(plugin, models, mode):
    fixed, moving = oblique_pair(2, SHIFT[2])
    path, model = models["identity"]
    patch = (3, 3) if mode == "Jacobian" else (0, 0)
    cfg = level_config(mode, [model_config(path, 2, patch, (1.0, 1.0), channels=1)],
                  [model_config(path, 2, patch, (1.0, 1.0), channels=2)])
    with pytest.raises(ValueError, match="channel"):
        impact_metric(plugin, cfg, fixed, moving, [model])


def test_zero_first_l1_l2_value_leaves_values_unnormalised(plugin, models):
    """Identical Static maps give a first L2 value of exactly 0: α falls back to 1 instead of ∞ (Q16 guard)."""
    image, _ = oblique_pair(2, None)
    path, model = models["identity"]
    cfg = level_config("Static", [model_config(path, 2, (0, 0), tuple(image.geometry.spacing))], distances=("L2",))
    metric = impact_metric(plugin, cfg, image, image, [model])
    pts = ball_points(image.geometry, 50, 6.0)
    v0, _ = metric.value(torch.zeros(2, dtype=F64), pts)
    assert float(v0) == 0.0 and metric.alpha == [1.0]
    f, m = _full_features(metric, pts, torch.tensor([0.5, 0.2], dtype=F64))
    v1, _ = metric.value(torch.tensor([0.5, 0.2], dtype=F64), pts)
    assert float(v1) == pytest.approx(float(((f - m) ** 2).mean()), rel=1e-5) and float(v1) > 0


def test_jacobian_pair_of_3d_fixed_and_2d_moving_model(plugin, models):
    """A 3D fixed model paired with a 2D moving model: the moving model gets rotated planar patches."""
    fixed, moving = oblique_pair(3, SHIFT[3], size=(14, 13, 12))
    path, model = models["identity"]
    cfg = level_config("Jacobian", [model_config(path, 3, (3, 3, 3), (1.0, 1.0, 1.0))], [model_config(path, 2, (3, 3), (1.0, 1.0))])
    metric = impact_metric(plugin, cfg, fixed, moving, [model])
    metric.alpha = [1.0]
    pts = ball_points(fixed.geometry, 40, 3.0)
    t = 0.5 * SHIFT[3]
    state = metric.generator.get_state()
    value, n = metric.value(torch.tensor(t), pts)
    assert not torch.equal(metric.generator.get_state(), state)  # the planes were drawn
    f = reference_interpolation(fixed, fixed.geometry, pts.numpy(), 3)
    m = reference_interpolation(moving, moving.geometry, pts.numpy() + t, 1)
    assert n == 40 and float(value) == pytest.approx(float(np.mean((f - m) ** 2)), rel=1e-4)


@pytest.mark.parametrize("mode", ["Jacobian", "Static"])
def test_check_level_models_before_any_computation(plugin, models, mode):
    """The up-front dry run catches list-length and channel mismatches (and PCA > channels in Static)."""
    from elastix_bridge.engine.metrics.impact_models import check_level_models
    from elastix_bridge.core.impact_parameters import ImpactParameterError
    from elastix_bridge.runtime.loader import ImpactModelError

    path, model = models["identity"]
    cpu = torch.device("cpu")
    good = level_config(mode, [model_config(path, 2, (3, 3), (1.0, 1.0))])
    check_level_models(good, ([model], [model]), 2, cpu)
    wrong_mask = level_config(mode, [model_config(path, 2, (3, 3), (1.0, 1.0), mask=(True, False))])
    with pytest.raises(ImpactModelError, match="2 entries"):
        check_level_models(wrong_mask, ([model], [model]), 2, cpu)
    channels = level_config(mode, [model_config(path, 2, (3, 3), (1.0, 1.0), channels=1)],
                       [model_config(path, 2, (3, 3), (1.0, 1.0), channels=2)])
    with pytest.raises(ImpactModelError, match=r"\[1\] channels .* \[2\]"):
        check_level_models(channels, ([model], [model]), 2, cpu)
    pca = level_config(mode, [model_config(path, 2, (3, 3), (1.0, 1.0))], pca=(2,))
    if mode == "Static":
        with pytest.raises(ImpactParameterError, match="ImpactPCA0 .*2 principal components.*only 1 channels"):
            check_level_models(pca, ([model], [model]), 2, cpu)
    else:  # ImpactPCA is a Static-mode option (docs/design.md §I2.4)
        check_level_models(pca, ([model], [model]), 2, cpu)


def test_static_pca_larger_than_channels_fails_naming_the_key(plugin, models):
    fixed, moving = oblique_pair(2, SHIFT[2])
    path, model = models["identity"]
    cfg = level_config("Static", [model_config(path, 2, (0, 0), (1.0, 1.0))], pca=(3,))
    with pytest.raises(ValueError, match="ImpactPCA0 .*3 principal components"):
        impact_metric(plugin, cfg, fixed, moving, [model])


def test_static_moving_map_is_not_warped_twice(plugin, models):
    """Q12 fixed: maps built at T₀ and read at x + T(x) − T₀(x) give the value of maps built at identity.

    Upstream reads Φ(M∘T₀) at T(x), i.e. effectively applies T₀ twice; that value is also computed
    here and must be far from ours.
    """
    fixed, moving = oblique_pair(2, SHIFT[2])
    path, model = models["identity"]
    cfg = level_config("Static", [model_config(path, 2, (0, 0), (1.0, 1.0))], distances=("NCC",))
    t0 = torch.tensor([0.9, -0.6], dtype=F64)
    t = torch.tensor([1.3, -0.2], dtype=F64)
    pts = ball_points(fixed.geometry, 150, 5.0)
    at_identity = float(impact_metric(plugin, cfg, fixed, moving, [model]).value(t, pts)[0])
    at_t0 = float(impact_metric(plugin, cfg, fixed, moving, [model], parameters=t0).value(t, pts)[0])
    upstream = float(impact_metric(plugin, cfg, fixed, moving, [model]).value(t + t0, pts)[0])
    assert abs(at_t0 - at_identity) < 0.05 * abs(upstream - at_identity)


def test_jacobian_fixed_features_reused_only_for_the_same_valid_samples(plugin, models):
    """Fixed features are recomputed unless the sample set and its valid subset are unchanged."""
    fixed, moving = oblique_pair(2, SHIFT[2])
    path, model = models["conv2"]
    fixed_rec, moving_rec = Recorder(model), Recorder(model)
    cfg = level_config("Jacobian", [model_config(path, 2, (3, 3), (1.0, 1.0))], distances=("NCC",))
    metric = impact_metric(plugin, cfg, fixed, moving, [fixed_rec], [moving_rec], ratio=0.0)
    pts = ball_points(fixed.geometry, 60, 6.0)
    t = torch.tensor([0.3, -0.2], dtype=F64)
    first = float(metric.value(t, pts)[0])
    calls = len(fixed_rec.calls)
    assert float(metric.value(t + 0.1, pts)[0]) != first
    assert len(fixed_rec.calls) == calls  # same samples, same valid subset: reused
    fresh = impact_metric(plugin, cfg, fixed, moving, [model], ratio=0.0)
    assert float(metric.value(t + 0.1, pts)[0]) == pytest.approx(float(fresh.value(t + 0.1, pts)[0]), rel=1e-12)
    metric.value(t, pts.clone())
    assert len(fixed_rec.calls) == calls + 1  # new sample set
    far = t + torch.tensor([14.0, 0.0], dtype=F64)  # some patches leave the moving image
    n_valid = metric.value(far, pts)[1]
    assert n_valid < 60 and len(fixed_rec.calls) == calls + 2


@pytest.mark.parametrize("distance", ["L2", "NCC"])
@pytest.mark.parametrize("kind", ["translation", "bspline"])
def test_jacobian_mode_in_chunks_equals_one_call(plugin, models, monkeypatch, distance, kind):
    """A large evaluation (checkpointed chunks, the transform applied chunk by chunk) gives the value and
    the gradient of one call over all samples, with a patch partly outside the moving image."""
    from elastix_bridge.engine.metrics import impact

    fixed, moving = oblique_pair(2, SHIFT[2])
    path, model = models["signed2"]
    cfg = level_config("Jacobian", [model_config(path, 2, (3, 3), (0.9, 1.0))], distances=(distance,))
    transform, params, _ = _transform_and_params(kind, fixed.geometry)
    pts = torch.cat([ball_points(fixed.geometry, 150, 7.0, seed=3), torch.tensor([[1e4, 1e4]], dtype=F64)])
    results = []
    for one_call, chunk in ((10 ** 9, 10 ** 9), (9 * 40, 9 * 17)):  # 9 = patch voxels: chunks of 17 samples
        monkeypatch.setattr(impact, "ONE_CALL_PATCH_VOXELS", one_call)
        monkeypatch.setattr(impact, "CHUNK_PATCH_VOXELS", chunk)
        metric = impact_metric(plugin, cfg, fixed, moving, [model], transform=transform, parameters=params, order=3)
        p = params.clone().requires_grad_(True)
        value, n_valid = metric.value(p, pts)
        (grad,) = torch.autograd.grad(value, p)
        results.append((value.detach(), n_valid, grad))
    (v1, n1, g1), (v2, n2, g2) = results
    assert n1 == n2 == len(pts) - 1
    torch.testing.assert_close(v2, v1, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(g2, g1, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("distance", DISTANCES)
def test_static_plugin_layer_equals_torch_reference(plugin, models, distance, dim):
    """Static mode's one-call layer (both reads, subset, distance and derivative in the plugin) gives the
    torch reference's value and gradient, on oblique images, with a channel subset and samples partly
    outside the moving image."""
    fixed, moving = oblique_pair(dim, SHIFT[dim], size=None if dim == 2 else (14, 13, 12))
    path, model = models[f"conv{dim}" if distance == "Dice" else f"signed{dim}"]
    cfg = level_config("Static", [model_config(path, dim, (0,) * dim, (1.0, 1.1, 1.2)[:dim])],
                       distances=(distance,), subset=(3,))
    transform, params, directions = _transform_and_params("bspline", fixed.geometry)
    pts = torch.cat([ball_points(fixed.geometry, 150, 6.0, seed=2), torch.full((3, dim), 1e4, dtype=F64)])
    moved = params + 0.2 * directions[0] / directions[0].norm()  # away from the Static reference T0
    results = []
    for fused in (True, False):
        metric = impact_metric(plugin, cfg, fixed, moving, [model], transform=transform, parameters=params, order=3)
        metric.fused_static = fused
        assert metric.subset_sizes == [3] and metric.channels == [4]
        runs = []
        for p in (params, moved):  # the first evaluation also fixes L1/L2's normalisation
            p = p.clone().requires_grad_(True)
            value, n_valid = metric.value(p, pts)
            (grad,) = torch.autograd.grad(value, p)
            runs.append((value.detach(), n_valid, grad))
        results.append(runs)
    for (v1, n1, g1), (v2, n2, g2) in zip(*results):
        assert n1 == n2 == len(pts) - 3
        torch.testing.assert_close(v1, v2, rtol=1e-6, atol=1e-7)
        assert float(g2.norm()) > 0
        torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-6 * float(g2.abs().max()))
