"""Test matrix of :class:`ImpactMetric`: mode × distance × model forward arity × image dimension.

Every cell checks (1) the value against an independent computation — patches / resampled grids
interpolated with scipy (cubic B-spline, mirror), the toy model's formula in numpy, the distance of
docs/design.md §I7 in numpy, L1/L2 normalised by the first value of the level (§I7.9) — and (2) the
autograd gradient w.r.t. B-spline transform parameters against finite differences of the value
(our engine fixes Q8/Q13/Q14, so the gradient must be the derivative of the value).

Images are oblique (direction cosines that round to non-identity int16 matrices, different for the
fixed and the moving image), anisotropic, with different intensity statistics, so a 4-argument model
that normalises by ``stats`` and uses ``direction`` sees a wrong argument.
"""
from typing import List

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from elastix_bridge.core.impact_parameters import DISTANCES  # noqa: E402
from elastix_bridge.runtime import loader  # noqa: E402
from elastix_bridge.engine.transforms.bspline import BSplineTransform, grid_for_level  # noqa: E402

from helpers.geometry import centred_geometry, rotation  # noqa: E402
from helpers.impact import (ball_points, impact_metric, jacobian_patch_offsets, level_config, level_image,  # noqa: E402
                            model_config, numpy_distance, reference_interpolation, static_grid)

pytestmark = [
    pytest.mark.usefixtures("single_thread"),  # one intra-op thread (see conftest.py)
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True:UserWarning"),
]

F64 = torch.float64
CHANNELS = 4
WEIGHT = 1.5  # layer weight (docs/design.md §I8)
SHIFT = {2: np.array([0.8, -0.5]), 3: np.array([0.6, -0.4, 0.5])}  # moving = fixed content shifted by SHIFT
PATCH = {2: (3, 3), 3: (3, 3, 3)}
PATCH_VOXEL = {2: (0.9, 1.2), 3: (0.9, 1.2, 1.05)}
STATIC_VOXEL = {2: (1.3, 1.1), 3: (1.3, 1.1, 1.2)}


# ------------------------------------------------------------------------------------------------
# Toy models: fixed 3×3(×3) convolution (zero padding 1) to 4 channels, then a sigmoid (positive)
# ------------------------------------------------------------------------------------------------


def _conv_parameters(dim: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn((CHANNELS, 1) + (3,) * dim, generator=g, dtype=F64) * 0.6
    bias = torch.tensor([-1.5, -0.3, 0.6, 1.6], dtype=F64)
    return weight, bias


def _make_conv(dim: int, seed: int):
    conv = (torch.nn.Conv2d if dim == 2 else torch.nn.Conv3d)(1, CHANNELS, 3, padding=1)
    weight, bias = _conv_parameters(dim, seed)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    return conv


class Arity1(torch.nn.Module):
    """``forward(x)``: ``[sigmoid(conv(x))]``."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = _make_conv(dim, 1)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [torch.sigmoid(self.conv(x[:, :1]))]


class Arity2(torch.nn.Module):
    """``forward(x, n_layers)``: ``n`` maps, map i = ``sigmoid((0.5 + 0.25 n)·conv(x) + 0.5 i) + 0.1 n``."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = _make_conv(dim, 2)

    def forward(self, x: torch.Tensor, n_layers: torch.Tensor) -> List[torch.Tensor]:
        n = n_layers.to(x.dtype)
        y = self.conv(x[:, :1]) * (0.5 + 0.25 * n)
        out: List[torch.Tensor] = []
        for i in range(int(n_layers.item())):
            out.append(torch.sigmoid(y + 0.5 * i) + 0.1 * n)
        return out


class Arity4(torch.nn.Module):
    """``forward(x, n_layers, stats, direction)``: ``[sigmoid(conv((x − mean)/sigma) + g·Σ(A ∘ direction))]``."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = _make_conv(dim, 4)
        a, g = _direction_parameters(dim)
        self.register_buffer("a", a.float())
        self.register_buffer("g", g.float().reshape([1, CHANNELS] + [1] * dim))

    def forward(self, x: torch.Tensor, n_layers: torch.Tensor, stats: torch.Tensor,
                direction: torch.Tensor) -> List[torch.Tensor]:
        xn = (x[:, :1] - stats[2]) / stats[3]
        e = (direction.to(x.dtype) * self.a).sum()
        return [torch.sigmoid(self.conv(xn) + self.g * e)]


def _direction_parameters(dim: int):
    a = torch.arange(1, dim * dim + 1, dtype=F64).reshape(dim, dim) * 0.37 - 1.1
    g = torch.tensor([0.7, -0.5, 0.3, -0.9], dtype=F64)
    return a, g


ARITIES = {1: Arity1, 2: Arity2, 4: Arity4}
MASK = {1: (True,), 2: (False, True), 4: (True,)}  # the 2-argument model: second of two layers


def _conv_same(x, weight, bias):
    """Numpy cross-correlation with zero padding 1 (torch ``conv`` semantics): ``[N, *S] -> [N, F, *S]``."""
    d = x.ndim - 1
    xp = np.pad(x, [(0, 0)] + [(1, 1)] * d)
    out = np.zeros((x.shape[0], len(bias)) + x.shape[1:]) + bias.reshape((1, -1) + (1,) * d)
    for off in np.ndindex(*(3,) * d):
        window = xp[(slice(None),) + tuple(slice(o, o + s) for o, s in zip(off, x.shape[1:]))]
        out += weight[(slice(None), 0) + off].reshape((1, -1) + (1,) * d) * window[:, None]
    return out


def _round_half_away(a):
    return np.sign(a) * np.floor(np.abs(a) + 0.5)


def _numpy_model(arity, dim, x, stats, direction):
    """The toy model's formula in numpy on images/patches ``[N, *S]``: selected layer ``[N, F, *S]``."""
    weight, bias = (t.numpy() for t in _conv_parameters(dim, arity))
    sigmoid = lambda y: 1.0 / (1.0 + np.exp(-y))  # noqa: E731
    if arity == 1:
        return sigmoid(_conv_same(x, weight, bias))
    if arity == 2:  # layer 1 of n_layers = 2
        return sigmoid((0.5 + 0.25 * 2) * _conv_same(x, weight, bias) + 0.5) + 0.1 * 2
    a, g = (t.numpy() for t in _direction_parameters(dim))
    e = float((_round_half_away(direction) * a).sum())
    y = _conv_same((x - stats[2]) / stats[3], weight, bias)
    return sigmoid(y + g.reshape((1, -1) + (1,) * dim) * e)


@pytest.fixture(scope="module")
def toys(plugin, tmp_path_factory):
    """``(arity, dim) -> (path, FeatureModel)`` of the scripted toy models."""
    folder = tmp_path_factory.mktemp("impact_matrix_models")
    out = {}
    for arity, cls in ARITIES.items():
        for dim in (2, 3):
            path = folder / f"arity{arity}_{dim}d.pt"
            torch.jit.script(cls(dim).eval()).save(str(path))
            model = loader.load_feature_model(str(path), torch.device("cpu"))
            assert model.num_arguments == arity
            out[arity, dim] = (str(path), model)
    return out


# ------------------------------------------------------------------------------------------------
# Images: oblique (non-identity after rounding), anisotropic, different statistics
# ------------------------------------------------------------------------------------------------


def _texture(points, dim, shift=None):
    """Smooth test function of physical points ``(N, D)`` (mm): plane waves of 6–12 mm wavelength."""
    p = np.asarray(points, dtype=float) - (0.0 if shift is None else np.asarray(shift, dtype=float))
    rng = np.random.default_rng(5 + dim)
    value = np.ones(len(p))
    for _ in range(4):
        k = rng.normal(size=dim)
        k *= rng.uniform(0.5, 1.0) / np.linalg.norm(k)
        value += 0.4 * np.cos(p @ k + rng.uniform(0, 2 * np.pi))
    return value


def _stats(image):
    a = image.array_zyx.astype(np.float64)
    return np.array([a.min(), a.max(), a.mean(), a.std(ddof=1)])


@pytest.fixture(scope="module")
def scenes():
    """``dim -> dict(fixed, moving, stats, transform, points)``; moving = 1.5·fixed(p − SHIFT) − 0.3."""
    out = {}
    for dim in (2, 3):
        if dim == 2:
            fixed_geo = centred_geometry((24, 22), (0.9, 1.2), rotation(2, 2.0), (1.0, -0.5))
            moving_geo = centred_geometry((25, 23), (1.05, 1.1), rotation(2, -2.3), (1.4, -0.2))
        else:
            fixed_geo = centred_geometry((18, 17, 16), (1.0, 1.15, 1.25), rotation(3, (0.3, -0.2, 1.9)), (0.5, 0.3, -0.5))
            moving_geo = centred_geometry((19, 18, 17), (1.05, 1.1, 1.2), rotation(3, (2.0, 0.3, -0.25)), (0.8, 0.1, -0.2))
        fixed = level_image(fixed_geo, lambda p: _texture(p, dim))
        moving = level_image(moving_geo, lambda p: 1.5 * _texture(p, dim, SHIFT[dim]) - 0.3)
        dirs = [_round_half_away(g.direction) for g in (fixed_geo, moving_geo)]
        assert not np.array_equal(dirs[0], dirs[1]) and not np.array_equal(dirs[0], np.eye(dim))
        transform = BSplineTransform(grid_for_level(fixed_geo, [9.0] * dim, 1.0, 3))
        points = ball_points(fixed_geo, 120 if dim == 2 else 80, 5.0 if dim == 2 else 3.5, seed=dim)
        out[dim] = dict(fixed=fixed, moving=moving, stats=(_stats(fixed), _stats(moving)), transform=transform,
                        points=points)
    return out


def _translation_parameters(transform, t):
    """B-spline coefficients equal to ``t`` on every node (x block, y block, …): ``T(x) = x + t`` inside."""
    return torch.from_numpy(np.repeat(np.asarray(t, dtype=np.float64), transform.grid.number_of_nodes))


# ------------------------------------------------------------------------------------------------
# Independent expected features
# ------------------------------------------------------------------------------------------------


def _expected_jacobian(scene, arity, dim, t):
    """Centre features of the fixed patch at x and the moving patch at x + t, ``[N, F]`` each."""
    fixed, moving = scene["fixed"], scene["moving"]
    pts = scene["points"].numpy()
    offsets = jacobian_patch_offsets(fixed.geometry, PATCH[dim], PATCH_VOXEL[dim])  # (Q, D), x fastest
    shape = (len(pts),) + tuple(reversed(PATCH[dim]))
    patch_pts = (pts[:, None, :] + offsets[None]).reshape(-1, dim)
    centre = (slice(None), slice(None)) + tuple(p // 2 for p in reversed(PATCH[dim]))
    out = []
    for image, stats, p in ((fixed, scene["stats"][0], patch_pts), (moving, scene["stats"][1], patch_pts + t)):
        patches = reference_interpolation(image, image.geometry, p, 3).reshape(shape)
        out.append(_numpy_model(arity, dim, patches, stats, image.geometry.direction)[centre])
    return out


def _expected_static(scene, arity, dim, t, t0):
    """Fixed maps read at x, moving maps Φ(M∘T₀) read at x + t − t₀, on the ImpactVoxelSize grid."""
    fixed, moving = scene["fixed"], scene["moving"]
    pts = scene["points"].numpy()
    grid = static_grid(fixed.geometry, STATIC_VOXEL[dim])
    centres = grid.voxel_centres()
    out = []
    for image, stats, where, read in ((fixed, scene["stats"][0], centres, pts),
                                      (moving, scene["stats"][1], centres + t0, pts + t - t0)):
        resampled = reference_interpolation(image, image.geometry, where, 3).reshape(grid.shape_zyx)
        maps = _numpy_model(arity, dim, resampled[None], stats, image.geometry.direction)[0]
        out.append(np.stack([reference_interpolation(c, grid, read, 3) for c in maps], axis=1))
    return out


# ------------------------------------------------------------------------------------------------
# Gradient check
# ------------------------------------------------------------------------------------------------


def _check_gradient(metric, params, pts, directions, h, rtol, kinks=False):
    """Autograd directional derivatives ``g·d`` against finite differences of the value.

    Tolerance: ``rtol·Σ|g_i d_i|`` (the size of the sum without cancellation) plus the float32
    resolution of the value over the step. Along ``d = g / max|g|`` it must stay below a quarter of
    ``g·d``, so a wrong sign or a factor 2 cannot pass. Smooth distances use Richardson extrapolation
    of central differences at ``h`` and ``h/2`` (the O(h²) error cancels). With ``kinks`` (|f − m|
    terms) a kink may lie within the short step on one side, so the forward or the backward difference
    may match instead.
    """
    p = params.clone().requires_grad_(True)
    value, n = metric.value(p, pts)
    assert n == pts.shape[0]
    (g,) = torch.autograd.grad(value, p)
    value = float(value.detach())
    assert torch.isfinite(g).all() and float(g.abs().max()) > 0
    resolution = 16 * float(np.spacing(np.float32(max(abs(value), 1e-3)))) / h
    for k, d in enumerate([g / g.abs().max()] + list(directions)):
        steps = (1, -1) if kinks else (1, -1, 0.5, -0.5)
        v = {s: float(metric.value(params + s * h * d, pts)[0]) for s in steps}
        if kinks:
            fds = [(v[1] - v[-1]) / (2 * h), (v[1] - value) / h, (value - v[-1]) / h]
        else:
            fds = [(4 * (v[0.5] - v[-0.5]) / h - (v[1] - v[-1]) / (2 * h)) / 3]
        analytic = float(g @ d)
        tol = rtol * float((g * d).abs().sum()) + (1 if kinks else 3) * resolution
        if k == 0:
            assert tol < 0.25 * abs(analytic), (tol, analytic)
        assert min(abs(analytic - fd) for fd in fds) <= tol, (k, analytic, fds, tol)


# ------------------------------------------------------------------------------------------------
# The matrix
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("arity", [1, 2, 4])
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("mode", ["Jacobian", "Static"])
def test_value_and_gradient(plugin, toys, scenes, mode, distance, arity, dim):
    """Value at two translations against the independent formula, then gradient against finite differences."""
    scene = scenes[dim]
    fixed, moving, transform, pts = scene["fixed"], scene["moving"], scene["transform"], scene["points"]
    path, model = toys[arity, dim]
    patch, voxel = (PATCH[dim], PATCH_VOXEL[dim]) if mode == "Jacobian" else ((0,) * dim, STATIC_VOXEL[dim])
    cfg = level_config(mode, [model_config(path, dim, patch, voxel, mask=MASK[arity])], distances=(distance,), weights=(WEIGHT,))
    t0, t1 = -0.5 * SHIFT[dim], SHIFT[dim] + 0.4
    p0, p1 = _translation_parameters(transform, t0), _translation_parameters(transform, t1)
    np.testing.assert_allclose(transform.transform_points(p1, pts).numpy(), pts.numpy() + t1, atol=1e-12)
    metric = impact_metric(plugin, cfg, fixed, moving, [model], transform=transform, parameters=p0, order=3)
    assert metric.channels == [CHANNELS] and metric.subset_sizes == [CHANNELS]

    # 1. values at two translations (the first evaluation of the level fixes α for L1/L2)
    expect = (lambda t: _expected_jacobian(scene, arity, dim, t)) if mode == "Jacobian" else \
        (lambda t: _expected_static(scene, arity, dim, t, t0))
    raw0, raw1 = (numpy_distance(distance, *expect(t)) for t in (t0, t1))
    alpha = 1.0 / raw0 if distance in ("L1", "L2") else 1.0
    (v0, n0), (v1, n1) = metric.value(p0, pts), metric.value(p1, pts)
    assert n0 == n1 == pts.shape[0]
    if distance in ("L1", "L2"):
        assert float(v0) == pytest.approx(WEIGHT, rel=1e-6)
    assert float(v0) == pytest.approx(WEIGHT * alpha * raw0, rel=2e-5)
    assert float(v1) == pytest.approx(WEIGHT * alpha * raw1, rel=2e-5)

    # 2. gradient at a generic B-spline deformation (away from the Static reference T₀)
    gen = torch.Generator().manual_seed(10 * dim + arity)
    params = p1 + 0.25 * torch.randn(transform.number_of_parameters, generator=gen, dtype=F64)
    translation_x = torch.zeros_like(params)
    translation_x[:transform.grid.number_of_nodes] = 1.0  # d/dt_x of a global translation
    random = torch.randn(params.shape, generator=gen, dtype=F64)
    # L1 (|f − m|) has kinks: short step, one-sided differences allowed (L1Cosine's kinks are damped
    # by λ = 0.1); the smooth distances take a longer step so that the float32 resolution of the value
    # does not dominate.
    kinks = distance == "L1"
    h = {"L1": 5e-4, "L1Cosine": 2e-2}.get(distance, 5e-2)
    _check_gradient(metric, params, pts, [translation_x, random / random.abs().max()], h=h,
                    rtol=1e-2 if kinks else 3e-3, kinks=kinks)
