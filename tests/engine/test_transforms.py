"""Transforms: B-spline grid schedule, evaluation vs transformix, Jacobians, upsampling."""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers.geometry import GEO2, GEO3, rotation_2d, rotation_3d  # noqa: E402
from elastix_bridge.core.geometry import ImageGeometry  # noqa: E402
from elastix_bridge.engine.transforms.base import TranslationTransform  # noqa: E402
from elastix_bridge.engine.transforms.bspline import (  # noqa: E402
    BSplineGrid, BSplineTransform, bspline_kernel, default_grid_schedule, grid_for_level, upsample)


def _random_bspline(geo, spacing, order=3, seed=0, scale=2.0, factor=1.0):
    grid = grid_for_level(geo, spacing, factor, order=order)
    t = BSplineTransform(grid, order)
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(t.number_of_parameters, dtype=torch.float64, generator=g) * scale
    return t, p


# ----------------------------------------------------------------------------------------- grid schedule


def test_grid_for_level_verified_example():
    geo = ImageGeometry((80, 64), (0.8, 1.1), (3.0, -2.0), np.eye(2))
    final = np.array([7, 5]) * geo.spacing  # FinalGridSpacingInVoxels 7 5
    np.testing.assert_allclose(final, [5.6, 5.5])
    sched = default_grid_schedule(3, 2)
    assert sched == [[4.0, 4.0], [2.0, 2.0], [1.0, 1.0]]
    g2 = grid_for_level(geo, final, sched[2])
    assert g2.size_xyz == (15, 16)
    np.testing.assert_allclose(g2.spacing, [5.6, 5.5], rtol=0, atol=1e-12)
    np.testing.assert_allclose(g2.origin, [-4.6, -8.6], rtol=0, atol=1e-12)
    g0 = grid_for_level(geo, final, sched[0])
    assert g0.size_xyz == (6, 7)
    np.testing.assert_allclose(g0.spacing, [22.4, 22.0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(g0.origin, [-21.4, -33.35], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(g0.direction, np.eye(2))


def test_grid_origin_rotated_about_image_origin():
    geo = ImageGeometry((80, 64), (0.8, 1.1), (3.0, -2.0), rotation_2d(0.3))
    g = grid_for_level(geo, [5.6, 5.5], 1)
    unrotated = np.array([-4.6, -8.6])
    np.testing.assert_allclose(g.origin, geo.origin + rotation_2d(0.3) @ (unrotated - geo.origin), atol=1e-12)
    np.testing.assert_array_equal(g.direction, geo.direction)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_grid_size_depends_on_order(order):
    geo = ImageGeometry((80, 64), (0.8, 1.1), (3.0, -2.0), np.eye(2))
    assert grid_for_level(geo, [5.6, 5.5], 1, order=order).size_xyz == (12 + order, 13 + order)


def test_bad_order_rejected():
    with pytest.raises(ValueError, match="Order"):
        grid_for_level(GEO2, [5, 5], 1, order=4)


# ----------------------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("order", [1, 2, 3])
def test_closed_form_weights_match_kernel(order):
    t, p = _random_bspline(GEO3, [7, 8, 9], order=order)
    pts = torch.as_tensor(GEO3.voxel_centres())
    w, idx, valid = t.support(pts)
    assert valid.all()
    # direct kernel evaluation at every support node
    xi = t.grid_index(pts)
    s = order + 1  # support offsets m of every node, enumerated x fastest: (S^D, D) in x, y, z order
    m = torch.as_tensor(np.stack(np.unravel_index(np.arange(s ** 3), (s, s, s), order="C"), axis=-1)[:, ::-1].copy())
    size = np.asarray(t.grid.size_xyz)
    k = np.stack(np.unravel_index(idx.numpy(), size[::-1], order="C"), axis=-1)[..., ::-1].copy()  # (N,M,D) xyz
    k = torch.as_tensor(k, dtype=torch.float64)
    ref = bspline_kernel(xi[:, None, :] - k, order).prod(dim=-1)
    torch.testing.assert_close(w, ref, rtol=0, atol=1e-13)
    assert torch.allclose(w.sum(1), torch.ones(len(w), dtype=torch.float64))
    # support start: k0 = floor(ξ − (order−1)/2), m enumerated x fastest
    k0 = torch.floor(xi - (order - 1) / 2)
    torch.testing.assert_close(k[:, 0, :], k0)
    torch.testing.assert_close(k - k[:, :1, :], m.to(torch.float64).expand(len(k), -1, -1))


def test_zero_displacement_outside_valid_region():
    t, p = _random_bspline(GEO2, [6, 7])
    g = t.grid
    # continuous grid indices just outside / inside the cubic valid region [1, N−2)
    n = np.asarray(g.size_xyz, dtype=float)
    xi = np.array([[0.999, 3.0], [3.0, n[1] - 2.0 + 1e-9], [1.0 + 1e-9, 1.0 + 1e-9], [n[0] - 2.0 - 1e-9, 2.5], [-5.0, 2.0]])
    pts = torch.as_tensor(g.as_geometry().index_to_physical(xi))
    disp = t.transform_points(p, pts) - pts
    assert torch.all(disp[[0, 1, 4]] == 0)
    assert torch.all(disp[[2, 3]].abs().sum(1) > 0)
    values, indices = t.jacobian(pts)
    assert torch.all(values[[0, 1, 4]] == 0)
    assert torch.equal(indices[0], torch.arange(indices.shape[1]))


def test_bspline_parameter_layout():
    """A single coefficient of component d moves only component d, centred on its node."""
    t = BSplineTransform(grid_for_level(GEO3, [7, 8, 9], 1))
    size = t.grid.size_xyz
    node = (3, 2, 4)
    lin = node[0] + size[0] * (node[1] + size[1] * node[2])
    p = torch.zeros(t.number_of_parameters, dtype=torch.float64)
    p[1 * t.grid.number_of_nodes + lin] = 1.0  # y coefficient
    pt = torch.as_tensor(t.grid.as_geometry().index_to_physical(np.array([node], dtype=float)))
    disp = t.transform_points(p, pt) - pt
    torch.testing.assert_close(disp, torch.tensor([[0.0, (4 / 6) ** 3, 0.0]], dtype=torch.float64))


def test_transform_points_shapes_and_dtypes():
    t, p = _random_bspline(GEO3, [7, 8, 9])
    pts = torch.as_tensor(GEO3.voxel_centres(), dtype=torch.float32)
    out = t.transform_points(p, pts)
    assert out.dtype == torch.float64 and out.shape == pts.shape
    out32 = t.transform_points(p.float(), pts)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="params"):
        t.transform_points(p[:-1], pts)
    with pytest.raises(ValueError, match="points"):
        t.transform_points(p, pts[:, :2])


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("geo,spacing", [(GEO2, [6.0, 7.0]), (GEO3, [7.0, 8.0, 9.0])])
def test_jacobian_matches_autograd(geo, spacing, order):
    t, p = _random_bspline(geo, spacing, order=order)
    g = torch.Generator().manual_seed(3)
    pts = torch.as_tensor(geo.voxel_centres())
    pts = pts[torch.randperm(len(pts), generator=g)[:40]]
    # add points outside the valid region
    far = pts[:3] + 1000.0
    pts = torch.cat([pts, far])
    values, indices = t.jacobian(pts)
    d = geo.dimension
    nnz = d * (order + 1) ** d
    assert values.shape == (len(pts), d, nnz) and indices.shape == (len(pts), nnz)
    assert indices.dtype == torch.int64
    dense = torch.zeros(len(pts), d, t.number_of_parameters, dtype=torch.float64)
    dense.scatter_add_(2, indices[:, None, :].expand(-1, d, -1), values)
    for k in range(d):
        pp = p.clone().requires_grad_(True)
        out = t.transform_points(pp, pts)
        rows = []
        for n in range(len(pts)):
            (gr,) = torch.autograd.grad(out[n, k], pp, retain_graph=True)
            rows.append(gr)
        torch.testing.assert_close(dense[:, k, :], torch.stack(rows), rtol=0, atol=1e-13)
    # index layout: d outer, m inner, component blocks of ∏N
    m = (order + 1) ** d
    nn = t.grid.number_of_nodes
    torch.testing.assert_close(indices[:40, m : 2 * m] - indices[:40, :m], torch.full((40, m), nn))


def test_spatial_gradient_flows():
    t, p = _random_bspline(GEO2, [6, 7])
    pts = torch.as_tensor(GEO2.voxel_centres()[:50]).requires_grad_(True)
    t.transform_points(p, pts).sum().backward()
    assert torch.isfinite(pts.grad).all()
    assert (pts.grad - 1).abs().max() > 0


def test_translation():
    t = TranslationTransform(3)
    assert t.number_of_parameters == 3
    assert torch.equal(t.parameters, torch.zeros(3, dtype=torch.float64))
    p = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    pts = torch.as_tensor(GEO3.voxel_centres()[:10])
    torch.testing.assert_close(t.transform_points(p, pts), pts + p)
    values, indices = t.jacobian(pts)
    assert values.shape == (10, 3, 3) and torch.equal(values[0], torch.eye(3, dtype=torch.float64))
    assert torch.equal(indices[4], torch.arange(3))
    assert t.parameter_map(p) == {
        "Transform": ["TranslationTransform"],
        "NumberOfParameters": ["3"],
        "TransformParameters": ["1", "-2", "0.5"],
    }
    assert torch.equal(t.scales(), torch.ones(3, dtype=torch.float64))


def test_bspline_parameter_map_keys():
    t, p = _random_bspline(GEO2, [6, 7], order=2)
    pm = t.parameter_map(p)
    assert pm["Transform"] == ["BSplineTransform"]
    assert pm["NumberOfParameters"] == [str(t.number_of_parameters)]
    assert len(pm["TransformParameters"]) == t.number_of_parameters
    assert [float(v) for v in pm["TransformParameters"]] == p.tolist()  # round-trip exact
    assert pm["GridSize"] == [str(s) for s in t.grid.size_xyz]
    assert pm["GridIndex"] == ["0", "0"]
    c, s = math.cos(0.4), math.sin(0.4)
    assert [float(v) for v in pm["GridDirection"]] == [c, s, -s, c]  # column-major
    assert pm["BSplineTransformSplineOrder"] == ["2"]
    assert pm["UseCyclicTransform"] == ["false"]
    assert torch.equal(t.scales(), torch.ones(t.number_of_parameters, dtype=torch.float64))
    assert torch.equal(t.parameters, torch.zeros(t.number_of_parameters, dtype=torch.float64))


# ----------------------------------------------------------------------------------------- upsampling


@pytest.mark.parametrize("order,rel_tol", [(1, 0.1), (2, 0.03), (3, 5e-3)])
@pytest.mark.parametrize("geo,spacing", [(GEO2, [2.0, 2.5]), (GEO3, [2.0, 2.5, 3.0])])
def test_upsample_preserves_displacement(geo, spacing, order, rel_tol):
    """Coarse level (schedule 2) -> fine level (schedule 1) on elastix grids (not nested: origins shift)."""
    coarse = grid_for_level(geo, spacing, 2.0, order=order)
    fine = grid_for_level(geo, spacing, 1.0, order=order)
    t_c, t_f = BSplineTransform(coarse, order), BSplineTransform(fine, order)
    nodes = coarse.as_geometry().voxel_centres()
    p_c = torch.as_tensor(
        np.concatenate([np.sin(nodes[:, 0] / 9 + d) * np.cos(nodes[:, 1] / 11 - d) for d in range(geo.dimension)])
    )
    p_f = upsample(p_c, coarse, fine, order=order)
    assert p_f.shape == (t_f.number_of_parameters,) and p_f.dtype == torch.float64
    pts = torch.as_tensor(geo.voxel_centres())
    d_c = t_c.transform_points(p_c, pts) - pts
    d_f = t_f.transform_points(p_f, pts) - pts
    # away from the grid border (mirrored coefficients / zeroed outside nodes only affect the outer band)
    xi = t_c.grid_index(pts)
    n = torch.as_tensor(coarse.size_xyz, dtype=torch.float64)
    inner = ((xi >= 2) & (xi < n - 3)).all(1)
    assert inner.sum() > 40
    err = (d_c - d_f)[inner].abs().max().item()
    assert err < rel_tol * d_c.abs().max().item()


def test_upsample_exact_for_cubic_refinement():
    """Dyadic refinement of a cubic spline with aligned grids is exact in the interior."""
    grid_c = BSplineGrid((12, 11), (4.0, 4.0), (0.0, 0.0), rotation_2d(0.2))
    grid_f = BSplineGrid((23, 21), (2.0, 2.0), (0.0, 0.0), rotation_2d(0.2))
    t_c, t_f = BSplineTransform(grid_c), BSplineTransform(grid_f)
    p_c = torch.randn(t_c.number_of_parameters, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    p_f = upsample(p_c, grid_c, grid_f)
    idx = torch.rand(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 4 + 4
    pts = grid_c.as_geometry().index_to_physical(idx)
    torch.testing.assert_close(t_f.transform_points(p_f, pts), t_c.transform_points(p_c, pts), rtol=0, atol=1e-6)


def test_upsample_same_grid_copies_and_nodes_outside_zero():
    t, p = _random_bspline(GEO2, [6, 7])
    out = upsample(p, t.grid, t.grid)
    assert torch.equal(out, p) and out is not p
    # a new grid far away from the old one: all nodes outside → zero coefficients
    far = BSplineGrid(t.grid.size_xyz, t.grid.spacing, t.grid.origin + 1e4, t.grid.direction)
    assert torch.all(upsample(p, t.grid, far) == 0)
    # numpy in, numpy out
    out_np = upsample(p.numpy(), t.grid, t.grid)
    assert isinstance(out_np, np.ndarray)
    with pytest.raises(ValueError):
        upsample(p[:-1], t.grid, t.grid)


def test_module_import_is_light():
    import subprocess
    import sys

    code = (
        # the transform modules import torch; core and the component list (which names them lazily) do not
        "import sys, elastix_bridge.core.geometry, elastix_bridge.core.transform_io, elastix_bridge.core.parameters;"
        "from elastix_bridge.engine.components import component; component('Transform', 'BSplineTransform').trait('kind');"
        "print('torch' in sys.modules, 'itk' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("geo,spacing", [(GEO2, [6.0, 7.0]), (GEO3, [7.0, 8.0, 9.0])])
def test_plugin_kernel_matches_torch_reference(plugin, geo, spacing, order):
    """CPU kernel path of transform_points equals the torch path: values, ∂/∂params, ∂/∂points."""
    t, p = _random_bspline(geo, spacing, order=order)
    g = torch.Generator().manual_seed(4)
    pts = torch.as_tensor(geo.voxel_centres())
    pts = torch.cat([pts[torch.randperm(len(pts), generator=g)[:300]], pts[:5] + 1000.0])  # + invalid points
    weights = torch.randn(len(pts), geo.dimension, generator=g, dtype=torch.float64)
    results = []
    for fn in (t.transform_points, t.transform_points_reference):
        pp, xx = p.clone().requires_grad_(True), pts.clone().requires_grad_(True)
        out = fn(pp, xx)
        grad_p, grad_x = torch.autograd.grad((out * weights).sum(), (pp, xx))
        results.append((out.detach(), grad_p, grad_x))
    for got, ref in zip(*results):
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(results[0][0][-5:], pts[-5:], rtol=0, atol=0)  # zero displacement outside


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("geo,spacing", [(GEO2, [6.0, 7.0]), (GEO3, [7.0, 8.0, 9.0])])
def test_transform_grid_separable_equals_points(plugin, geo, spacing, order):
    """The separable whole-grid path equals transform_points at the voxel centres (rotated directions).

    Grids: the image's own (aligned with the control points), a coarser one extending past the valid
    region (zero displacement there), and one rotated against the control-point grid (the fallback).
    """
    t, p = _random_bspline(geo, spacing, order=order)
    coarse = ImageGeometry(tuple(max(2, s // 2 + 3) for s in geo.size), geo.spacing * 2.3,
                           geo.origin - 9.0 * geo.direction[:, 0], geo.direction)
    turned = ImageGeometry(geo.size, geo.spacing, geo.origin, geo.direction @ rotation_2d(0.3) if geo.dimension == 2
                           else geo.direction @ rotation_3d(0.1, 0.2, 0.3))
    for grid in (geo, coarse, turned):
        ref = t.transform_points(p, torch.as_tensor(grid.voxel_centres()))
        got = t.transform_grid(p, grid)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    outside = ~t.support(torch.as_tensor(coarse.voxel_centres()))[2]
    assert outside.any()  # the coarse grid does reach past the valid region
