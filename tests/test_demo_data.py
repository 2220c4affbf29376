"""Tests of the MNI-template demo pair (elastix_bridge.demo_data) and the quality numbers
(elastix_bridge.registration_quality)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from elastix_bridge import demo_data as dd
from elastix_bridge import registration_quality as rq

needs_nilearn = pytest.mark.skipif(importlib.util.find_spec("nilearn") is None,
                                   reason="needs nilearn (pip install nilearn) for the template")

FILES = ("fixed", "fixed_mask", "moving", "moving_mask", "moving_t1", "true_displacement")


@pytest.fixture(scope="module")
def itk():
    return pytest.importorskip("itk")


@pytest.fixture(scope="module")
def pair2d(tmp_path_factory, itk):
    if importlib.util.find_spec("nilearn") is None:
        pytest.skip("needs nilearn (pip install nilearn)")
    return dd.make_demo_pair(tmp_path_factory.mktemp("demo2d"), dimension=2, voxel_size=4.0,
                             seed=0)


@pytest.fixture(scope="module")
def pair3d(tmp_path_factory, itk):
    if importlib.util.find_spec("nilearn") is None:
        pytest.skip("needs nilearn (pip install nilearn)")
    return dd.make_demo_pair(tmp_path_factory.mktemp("demo3d"), dimension=3, voxel_size=4.0,
                             seed=1)


def _arr(itk, path):
    return np.asarray(itk.array_from_image(itk.imread(str(path))))


@needs_nilearn
def test_template_path():
    p = dd.mni_template_path()
    assert p.is_file() and p.name.startswith("mni_icbm152_t1")


def test_template_path_without_nilearn(monkeypatch):
    monkeypatch.setattr(dd.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install nilearn"):
        dd.mni_template_path()


@pytest.mark.parametrize("which,dim", [("pair2d", 2), ("pair3d", 3)])
def test_files_and_geometry(request, itk, which, dim):
    res = request.getfixturevalue(which)
    expected_dir = np.diag([-1.0, -1.0, 1.0])[:dim, :dim]  # MNI template direction, preserved
    fixed = itk.imread(str(res["fixed"]))
    for name in FILES:
        assert res[name].is_file(), name
        img = itk.imread(str(res[name]))
        assert img.GetImageDimension() == dim
        np.testing.assert_allclose(np.asarray(img.GetDirection()), expected_dir)
        np.testing.assert_allclose(itk.spacing(img), [4.0] * dim)
        np.testing.assert_allclose(itk.origin(img), itk.origin(fixed))
        assert tuple(itk.size(img)) == tuple(itk.size(fixed))
    # corner-aligned resampling of the 1 mm template (origin (98, 134, -72), size 197x233x189)
    np.testing.assert_allclose(itk.origin(fixed), [96.5, 132.5, -70.5][:dim])
    for name in ("fixed_mask", "moving_mask"):
        m = _arr(itk, res[name])
        assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 1}
        assert 0.1 < m.mean() < 0.8
    u = _arr(itk, res["true_displacement"])
    assert u.shape == tuple(reversed(tuple(itk.size(fixed)))) + (dim,)
    if dim == 2:
        assert "slice_index" in res and -20 < res["slice_z_mm"] < 40


@pytest.mark.parametrize("which,dim", [("pair2d", 2), ("pair3d", 3)])
def test_true_displacement_smooth_and_bounded(request, itk, which, dim):
    res = request.getfixturevalue(which)
    u = _arr(itk, res["true_displacement"]).astype(np.float64)
    mask = _arr(itk, res["fixed_mask"]).astype(bool)
    mag = np.linalg.norm(u, axis=-1)
    assert 1.0 < res["mean_displacement_mm"] < res["max_displacement_mm"] < 12.0
    np.testing.assert_allclose(mag[mask].max(), res["max_displacement_mm"], rtol=1e-5)
    assert 4.0 <= res["nonrigid_max_mm"] <= 6.0 and 1.0 <= abs(res["rotation_deg"]) <= 2.0
    assert res["inverse_residual_mm"] < 0.01
    # smooth: Jacobian of x -> x + u(x) (index gradients / 4 mm) is close to identity, det > 0
    grads = np.stack(np.gradient(u, 4.0, axis=tuple(range(dim))), axis=-1)  # d u_c / d zyx
    assert np.abs(grads).max() < 0.5
    # d u / d index axis a (zyx) -> physical derivative up to the direction sign; det of I + J
    jac = np.eye(dim) + grads[..., ::-1] @ np.diag([-1.0, -1.0, 1.0][:dim])
    assert np.linalg.det(jac).min() > 0.3


@pytest.mark.parametrize("which", ["pair2d", "pair3d"])
def test_warping_by_true_displacement_recovers_fixed(request, itk, which):
    res = request.getfixturevalue(which)
    fixed = _arr(itk, res["fixed"]).astype(np.float64)
    mask = _arr(itk, res["fixed_mask"]).astype(bool)
    moving_t1 = _arr(itk, res["moving_t1"])
    moving = _arr(itk, res["moving"])
    warped_t1 = np.asarray(itk.array_from_image(
        rq.warp_with_displacement(res["moving_t1"], res["true_displacement"])))
    warped = np.asarray(itk.array_from_image(
        rq.warp_with_displacement(res["moving"], res["true_displacement"])))
    before, after = rq.nmi(fixed, moving_t1, mask=mask), rq.nmi(fixed, warped_t1, mask=mask)
    assert after > 1.35 and after > before + 0.1
    assert np.abs(fixed - warped_t1)[mask].mean() < 0.5 * np.abs(fixed - moving_t1)[mask].mean()
    # multimodal moving image: NMI also improves, and the contrast is really different
    assert rq.nmi(fixed, warped, mask=mask) > rq.nmi(fixed, moving, mask=mask) + 0.05
    assert np.corrcoef(fixed[mask], warped[mask])[0, 1] < 0.3  # T2-like: not a T1 any more
    # warped moving mask ≈ fixed mask
    wmask = np.asarray(itk.array_from_image(rq.warp_with_displacement(
        res["moving_mask"], res["true_displacement"], interpolator="nearest")))
    assert rq.dice(wmask > 0.5, mask) > 0.95
    assert rq.dice(_arr(itk, res["moving_mask"]), mask) < rq.dice(wmask > 0.5, mask)


def test_displacement_error(pair2d, itk):
    true = itk.imread(str(pair2d["true_displacement"]))
    mask = pair2d["fixed_mask"]
    zero = rq.displacement_error(true, pair2d["true_displacement"], mask)
    assert zero["mean"] == pytest.approx(0.0, abs=1e-6) and zero["p95"] == pytest.approx(0, abs=1e-6)
    u = np.asarray(itk.array_from_image(true))
    ident = rq.displacement_error(np.zeros_like(u), true, mask)
    assert ident["mean"] == pytest.approx(pair2d["mean_displacement_mm"], rel=1e-5)
    assert ident["median"] <= ident["p95"] <= ident["max"]
    # a points function (identity transform) gives the same numbers
    by_points = rq.displacement_error(lambda p: p, true, mask)
    assert by_points["mean"] == pytest.approx(ident["mean"], rel=1e-6)
    assert by_points["n"] == int(_arr(itk, mask).sum())
    with pytest.raises(ValueError):
        rq.displacement_error(np.zeros((3, 3, 2)), true, mask)


def test_nmi_and_dice_sanity():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 50))
    assert rq.nmi(a, a) == pytest.approx(2.0)
    assert rq.nmi(a, -3 * a + 7) == pytest.approx(2.0)   # any bijective remapping
    assert rq.nmi(a, rng.normal(size=a.shape)) < 1.1      # independent
    m = np.zeros(a.shape, bool)
    m[5:20, 5:30] = True
    assert rq.nmi(a, a, mask=m) == pytest.approx(2.0)
    assert rq.nmi(np.ones(5), np.ones(5)) == 2.0
    b = a > 0
    assert rq.dice(b, b) == 1.0
    assert rq.dice(b, ~b) == 0.0
    assert rq.dice(np.zeros(4), np.zeros(4)) == 1.0
    assert rq.dice(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        rq.nmi(a, a[:-1])


def test_import_is_light():
    code = ("import sys, elastix_bridge.demo_data, elastix_bridge.registration_quality; "
            "assert not {'torch', 'itk', 'nilearn'} & set(sys.modules), sys.modules.keys()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
