"""B-spline interpolation against scipy (mirror mode) and ITK BSplineInterpolateImageFunction."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from elastix_bridge.core.geometry import ImageGeometry
from elastix_bridge.engine.images.level_images import LevelImage
from elastix_bridge.engine.images.interpolators import (ImageInterpolator, bspline_coefficients,
                                                        bspline_coefficients_reference, bspline_interpolate,
                                                        bspline_interpolate_with_gradient,
                                                        bspline_interpolate_with_gradient_reference)


def _rotation(d, angle=0.3):
    if d == 2:
        c, s = np.cos(angle), np.sin(angle)
        return np.array([[c, -s], [s, c]])
    a, b = angle, 0.5 * angle
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def _indices(rng, size_xyz, n=400):
    size = np.asarray(size_xyz, dtype=float)
    inside = rng.uniform(-0.5, size - 0.5, size=(n, len(size)))
    band = rng.uniform(-0.5, 0.0, size=(n // 4, len(size)))           # low mirror band
    band_hi = rng.uniform(size - 1.0, size - 0.5, size=(n // 4, len(size)))  # high mirror band
    far = rng.uniform(-2.5 * size, 3.5 * size, size=(n, len(size)))  # far beyond (repeated mirror)
    return np.concatenate([inside, band, band_hi, far])


@pytest.mark.parametrize("shape_zyx", [(7, 9), (5, 6, 8), (1, 6, 5)])
@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_matches_scipy_mirror(shape_zyx, order):
    rng = np.random.default_rng(order + len(shape_zyx))
    a = rng.normal(size=shape_zyx)
    idx = _indices(rng, shape_zyx[::-1])
    if order == 0:  # avoid exact .5 ties (scipy and ITK round them differently from each other)
        idx = np.where(np.abs(idx - np.floor(idx) - 0.5) < 1e-6, idx + 1e-3, idx)
    coef = bspline_coefficients(a, order)
    got = bspline_interpolate(torch.tensor(coef)[None], torch.tensor(idx), order)[:, 0].numpy()
    ref = ndimage.map_coordinates(a, idx[:, ::-1].T, order=order, mode="mirror", prefilter=True)
    np.testing.assert_allclose(got, ref, atol=1e-10)


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("shape, channel_axis", [((7,), False), ((1, 9), False), ((9, 1), False), ((2, 2), False),
                                                 ((4, 6, 3), False), ((3, 8, 5, 4), True), ((2, 1, 6), True),
                                                 ((2, 300, 7), True)])
def test_plugin_prefilter_equals_the_scipy_reference(order, shape, channel_axis):
    """The plugin's bundled-line prefilter gives scipy's mirror-mode coefficients (size-1 axes, long bundles)."""
    a = np.random.default_rng(len(shape) + order).normal(size=shape)
    np.testing.assert_allclose(bspline_coefficients(a, order, channel_axis),
                               bspline_coefficients_reference(a, order, channel_axis), rtol=0, atol=1e-13)
    a32 = a.astype(np.float32)
    got = bspline_coefficients(torch.tensor(a32), order, channel_axis)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), bspline_coefficients_reference(a32, order, channel_axis), atol=1e-6)


def test_channels_and_float32():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(3, 5, 6, 7)).astype(np.float32)
    coef = bspline_coefficients(a, 3, channel_axis=True)
    assert coef.shape == a.shape and coef.dtype == np.float32
    idx = _indices(rng, (7, 6, 5), 50)
    got = bspline_interpolate(torch.tensor(coef), torch.tensor(idx, dtype=torch.float32), 3)
    assert got.shape == (len(idx), 3) and got.dtype == torch.float32
    for c in range(3):
        ref = ndimage.map_coordinates(a[c].astype(np.float64), idx[:, ::-1].T, order=3, mode="mirror")
        np.testing.assert_allclose(got[:, c].numpy(), ref, atol=2e-5)
    # tensor input keeps type
    tcoef = bspline_coefficients(torch.tensor(a), 3, channel_axis=True)
    assert torch.is_tensor(tcoef) and tcoef.dtype == torch.float32
    np.testing.assert_allclose(tcoef.numpy(), coef, atol=1e-6)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_autograd_matches_analytic_and_finite_differences(order):
    rng = np.random.default_rng(5)
    a = rng.normal(size=(6, 7, 8))
    coef = torch.tensor(bspline_coefficients(a, order))[None]
    idx = torch.tensor(rng.uniform(0.1, 4.9, size=(64, 3)), requires_grad=True)
    v = bspline_interpolate(coef, idx, order)
    (g,) = torch.autograd.grad(v.sum(), idx)
    _, ga = bspline_interpolate_with_gradient(coef, idx, order)
    np.testing.assert_allclose(g.numpy(), ga[:, 0].numpy(), atol=1e-12)
    h = 1e-6
    for d in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[d] = h
        fd = (bspline_interpolate(coef, idx.detach() + e, order) - bspline_interpolate(coef, idx.detach() - e, order))
        np.testing.assert_allclose(g[:, d].numpy(), fd[:, 0].numpy() / (2 * h), atol=1e-5)
    # plain-autograd path (coefficients requiring grad) gives the same gradient
    coef_rg = coef.clone().requires_grad_(True)
    (g2,) = torch.autograd.grad(bspline_interpolate(coef_rg, idx, order).sum(), idx)
    np.testing.assert_allclose(g2.numpy(), g.numpy(), atol=1e-12)


def test_chunking_many_channels():
    import elastix_bridge.engine.images.interpolators as mod

    rng = np.random.default_rng(2)
    a = torch.tensor(rng.normal(size=(4, 5, 6, 7)))
    idx = torch.tensor(rng.uniform(-1, 7, size=(300, 3)))
    full = bspline_interpolate(a, idx, 3)
    old = mod.MAX_CHUNK_ELEMENTS
    try:
        mod.MAX_CHUNK_ELEMENTS = 64 * 4 * 7  # 7 points per chunk
        part = bspline_interpolate(a, idx, 3)
        idx_rg = idx.clone().requires_grad_(True)
        (g_small,) = torch.autograd.grad(bspline_interpolate(a, idx_rg, 3).sum(), idx_rg)
    finally:
        mod.MAX_CHUNK_ELEMENTS = old
    idx_rg = idx.clone().requires_grad_(True)
    (g_full,) = torch.autograd.grad(bspline_interpolate(a, idx_rg, 3).sum(), idx_rg)
    torch.testing.assert_close(part, full)
    torch.testing.assert_close(g_small, g_full)


def _itk_image(array_zyx, geometry):
    import itk

    image = itk.image_from_array(np.ascontiguousarray(array_zyx, dtype=np.float32))
    geometry.apply_to_itk(image)
    return image


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("order", [1, 3])
def test_matches_itk_value_and_derivative(dim, order):
    import itk

    rng = np.random.default_rng(10 + dim + order)
    shape_zyx = (9, 11, 13)[-dim:]
    a = ndimage.gaussian_filter(rng.normal(size=shape_zyx), 1.0) * 100
    geometry = ImageGeometry(size=shape_zyx[::-1], spacing=np.array([0.7, 1.3, 2.1])[:dim],
                             origin=np.array([4.0, -3.0, 7.5])[:dim], direction=_rotation(dim))
    image = _itk_image(a, geometry)
    f = itk.BSplineInterpolateImageFunction[type(image), itk.D, itk.F].New()
    f.SetSplineOrder(order)
    f.SetInputImage(image)

    level = LevelImage.from_itk(image)
    interp = ImageInterpolator(level, order=order, dtype=torch.float64)
    size = np.asarray(geometry.size, float)
    idx = rng.uniform(-0.45, size - 0.55, size=(60, dim))
    idx = idx + 1e-3 * (np.abs(idx - np.round(idx)) < 1e-4)  # stay off the knots
    pts = torch.tensor(geometry.index_to_physical(idx), requires_grad=True)
    values = interp(pts)
    (grad,) = torch.autograd.grad(values.sum(), pts)
    v2, g2 = interp.value_and_gradient(pts)
    for n in range(len(idx)):
        p = [float(v) for v in pts[n].detach()]
        ref_v = f.Evaluate(p)
        ref_g = np.asarray(list(f.EvaluateDerivative(p)))
        assert abs(float(values[n, 0]) - ref_v) < 1e-3 * (1 + abs(ref_v))
        np.testing.assert_allclose(grad[n].numpy(), ref_g, atol=1e-3 * (1 + np.abs(ref_g).max()))
        np.testing.assert_allclose(g2[n, 0].numpy(), ref_g, atol=1e-3 * (1 + np.abs(ref_g).max()))
    torch.testing.assert_close(v2, values.detach())


def test_image_interpolator_features_and_dtype():
    rng = np.random.default_rng(3)
    geometry = ImageGeometry(size=(6, 5), spacing=(0.5, 2.0), origin=(1.0, 2.0), direction=_rotation(2))
    feats = rng.normal(size=(4, 5, 6)).astype(np.float32)
    interp = ImageInterpolator(feats, order=3, geometry=geometry)
    assert interp.coefficients.dtype == torch.float32 and interp.channels == 4
    idx = rng.uniform(0, 4, size=(20, 2))
    out = interp(torch.tensor(geometry.index_to_physical(idx), dtype=torch.float32))
    assert out.shape == (20, 4) and out.dtype == torch.float32
    ref = ndimage.map_coordinates(feats[2].astype(np.float64), idx[:, ::-1].T, order=3, mode="mirror")
    np.testing.assert_allclose(out[:, 2].numpy(), ref, atol=1e-4)
    out64 = interp(torch.tensor(geometry.index_to_physical(idx)))  # float64 points: float64 sums and values
    assert out64.dtype == torch.float64
    np.testing.assert_allclose(out64[:, 2].numpy(), ref, atol=1e-5)
    with pytest.raises(ValueError):
        ImageInterpolator(feats, order=4, geometry=geometry)
    with pytest.raises(ValueError):
        ImageInterpolator(feats[:, :4], order=3, geometry=geometry)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape_zyx,channels", [((9,), 1), ((7, 9), 3), ((5, 6, 8), 2), ((1, 6, 5), 1)])
@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_plugin_kernel_matches_torch_reference(plugin, shape_zyx, channels, order, dtype):
    """The CPU kernel (plugin ``bspline_evaluate``) and the device-generic torch code agree."""
    rng = np.random.default_rng(order)
    coef = torch.tensor(rng.normal(size=(int(np.prod(shape_zyx)), channels)), dtype=dtype)  # (voxels, C), x fastest
    coef = coef.T.reshape((channels,) + shape_zyx)  # (C, *zyx)
    idx = torch.tensor(_indices(rng, shape_zyx[::-1]), dtype=dtype)
    values, grads = bspline_interpolate_with_gradient(coef, idx, order)
    ref_values, ref_grads = bspline_interpolate_with_gradient_reference(coef, idx, order)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(values, ref_values, **tol)
    torch.testing.assert_close(grads, ref_grads, **tol)


@pytest.mark.parametrize("channels", [1, 12, 5])
def test_plugin_kernel_reads_float32_coefficients_at_float64_points(plugin, channels):
    """float32 coefficients at float64 points: computed in float64, equal to the float64 coefficients' result."""
    rng = np.random.default_rng(channels)
    size_xyz = [7, 6, 5]
    coef32 = torch.tensor(rng.normal(size=(210, channels)), dtype=torch.float32)
    idx = torch.tensor(_indices(rng, size_xyz, n=300))
    for order in (1, 3):
        values, grads = plugin.bspline_evaluate(coef32, size_xyz, idx, order, False, True)
        ref_values, ref_grads = plugin.bspline_evaluate(coef32.double(), size_xyz, idx, order, False, True)
        assert values.dtype == grads.dtype == torch.float64
        torch.testing.assert_close(values, ref_values, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(grads, ref_grads, rtol=1e-14, atol=1e-14)
        # float64 coefficients at float32 points: promoted to float64 as before
        mixed = plugin.bspline_evaluate(coef32.double(), size_xyz, idx.float(), order)[0]
        assert mixed.dtype == torch.float64


@pytest.mark.parametrize("channels", [1, 3])
def test_plugin_prefilter_channels_last(plugin, channels):
    """Channels-last prefiltering (a permuted view) equals the channels-first result, in float32 and float64."""
    rng = np.random.default_rng(channels)
    a = torch.tensor(rng.normal(size=(channels, 5, 6, 7)))
    for dtype, tol in ((torch.float64, 1e-13), (torch.float32, 1e-6)):  # float32: a few ulp of recursion
        first = plugin.bspline_prefilter(a.to(dtype), 3)
        last = plugin.bspline_prefilter(a.to(dtype).movedim(0, -1), 3, True)
        assert last.shape == (5, 6, 7, channels) and last.is_contiguous()
        torch.testing.assert_close(last.movedim(-1, 0), first, rtol=0, atol=tol)
        ref = torch.from_numpy(bspline_coefficients_reference(a.numpy(), 3, channel_axis=True)).to(dtype)
        torch.testing.assert_close(first, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("order", [1, 3])
def test_plugin_adjoint_is_the_transpose_of_evaluation(plugin, order):
    """``<A c, g> = <c, Aᵀ g>`` for the kernel's evaluation A and its adjoint, mirror mode included."""
    rng = np.random.default_rng(5)
    size_xyz = [6, 5, 4]
    coef = torch.tensor(rng.normal(size=(120, 2)))
    idx = torch.tensor(_indices(rng, size_xyz, n=200))
    g = torch.tensor(rng.normal(size=(len(idx), 2)))
    values = plugin.bspline_evaluate(coef, size_xyz, idx, order)[0]
    adjoint = plugin.bspline_adjoint(g.contiguous(), size_xyz, idx, order)
    torch.testing.assert_close((values * g).sum(), (coef * adjoint).sum(), rtol=1e-12, atol=1e-12)


def test_plugin_kernel_errors(plugin):
    coef = torch.zeros(12, 1, dtype=torch.float64)
    idx = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="rows"):
        plugin.bspline_evaluate(coef, [4, 4], idx, 3)
    with pytest.raises(ValueError, match="order"):
        plugin.bspline_evaluate(coef, [4, 3], idx, 4)
    with pytest.raises(ValueError, match="float32 or float64"):
        plugin.bspline_evaluate(coef, [4, 3], idx.half(), 3)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        plugin.bspline_evaluate(coef, [2, 2, 3], idx, 3)
