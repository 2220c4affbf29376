"""LevelImage and Mask: ITK round trips, statistics, nearest-voxel mask rule, bounding box, erosion."""
import numpy as np
import pytest
import torch

from elastix_bridge.core.geometry import ImageGeometry
from elastix_bridge.engine.images.level_images import LevelImage, Mask


def _direction3():
    q = np.linalg.qr(np.random.default_rng(4).normal(size=(3, 3)))[0]
    return q * np.sign(np.linalg.det(q))


GEO3 = ImageGeometry((9, 7, 5), (0.6, 1.2, 2.5), (10.0, -3.0, 4.0), _direction3())


def test_level_image_roundtrip_and_statistics():
    import itk

    rng = np.random.default_rng(0)
    a = rng.normal(10, 3, size=GEO3.shape_zyx).astype(np.float32)
    img = LevelImage(GEO3, a)
    itk_img = img.to_itk()
    assert isinstance(itk_img, itk.Image[itk.F, 3])
    back = LevelImage.from_itk(itk_img)
    np.testing.assert_array_equal(back.array_zyx, a)
    assert back.geometry.size == GEO3.size
    np.testing.assert_allclose(back.geometry.direction, GEO3.direction, atol=1e-12)
    np.testing.assert_allclose(back.geometry.origin, GEO3.origin)
    stats_filter = itk.StatisticsImageFilter[itk.Image[itk.F, 3]].New()
    stats_filter.SetInput(itk_img)
    stats_filter.Update()
    ref = [stats_filter.GetMinimum(), stats_filter.GetMaximum(), stats_filter.GetMean(), stats_filter.GetSigma()]
    st = img.statistics()
    assert st.dtype == np.float32 and st.shape == (4,)
    np.testing.assert_allclose(st, np.asarray(ref, dtype=np.float32), rtol=1e-6)
    # short pixel type converts to float32
    s_img = itk.image_from_array(np.arange(35, dtype=np.int16).reshape(5, 7))
    lv = LevelImage.from_itk(s_img)
    assert lv.array_zyx.dtype == np.float32 and lv.geometry.size == (7, 5)
    with pytest.raises(ValueError):
        LevelImage(GEO3, a[:, :, :3])


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_mask_from_itk_and_contains_matches_itk(dtype):
    import itk

    rng = np.random.default_rng(1)
    arr = (rng.random(GEO3.shape_zyx) > 0.5).astype(dtype) * (255 if dtype == np.uint8 else 1)
    img = itk.image_from_array(arr)
    GEO3.apply_to_itk(img)
    mask = Mask.from_itk(img)
    assert mask.array_zyx.dtype == bool
    np.testing.assert_array_equal(mask.array_zyx, arr != 0)

    uc = itk.image_from_array((arr != 0).astype(np.uint8))
    GEO3.apply_to_itk(uc)
    so = itk.ImageMaskSpatialObject[3].New()
    so.SetImage(uc)
    so.Update()
    size = np.asarray(GEO3.size, float)
    idx = rng.uniform(-1.0, size, size=(400, 3))
    # include points very close to the voxel borders and the buffer border
    idx[:100] = np.round(rng.uniform(-1, size, size=(100, 3))) + 0.5 + rng.choice([-1e-6, 1e-6], size=(100, 3))
    pts = GEO3.index_to_physical(idx)
    got = mask.contains(torch.tensor(pts)).numpy()
    ref = np.array([so.IsInsideInWorldSpace([float(v) for v in p]) for p in pts])
    np.testing.assert_array_equal(got, ref)
    got32 = mask.contains(torch.tensor(pts, dtype=torch.float32)).numpy()
    assert (got32 == ref).mean() > 0.97  # float32 points: only border ties may differ


def test_bounding_box_and_empty():
    a = np.zeros(GEO3.shape_zyx, bool)
    a[1:3, 2:5, 3:8] = True  # z 1..2, y 2..4, x 3..7
    first, last = Mask(GEO3, a).bounding_box_index()
    assert first.tolist() == [3, 2, 1] and last.tolist() == [7, 4, 2]
    with pytest.raises(ValueError, match="empty"):
        Mask(GEO3, np.zeros(GEO3.shape_zyx, bool)).bounding_box_index()


def _brute_erode(a, r_zyx):
    out = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        sl = tuple(slice(max(0, i - r), min(n, i + r + 1)) for i, r, n in zip(idx, r_zyx, a.shape))
        out[idx] = a[sl].all()
    return out


def test_erosion_box_border_does_not_erode():
    rng = np.random.default_rng(2)
    a = np.ones(GEO3.shape_zyx, bool)
    a[rng.random(a.shape) > 0.93] = False
    m = Mask(GEO3, a)
    e = m.eroded([2, 1, 0])  # x, y, z
    np.testing.assert_array_equal(e.array_zyx, _brute_erode(a, (0, 1, 2)))
    full = Mask(GEO3, np.ones(GEO3.shape_zyx, bool)).eroded(3)
    assert full.array_zyx.all()  # the image border does not erode
    np.testing.assert_array_equal(m.eroded(0).array_zyx, a)
    with pytest.raises(ValueError):
        m.eroded([1, 2])


def test_itk_index_to_point_is_bit_identical_to_itk():
    """ImageGeometry's ITK-order conversions give ITK's own doubles, to the last bit."""
    itk = pytest.importorskip("itk")
    image = LevelImage(GEO3, np.zeros(GEO3.shape_zyx, np.float32)).to_itk()
    geometry = ImageGeometry.from_itk(image)
    rng = np.random.default_rng(7)
    index = rng.integers(0, 5, size=(20, 3))
    points = geometry.itk_index_to_points(index)
    for i, p in zip(index, points):
        expected = image.TransformIndexToPhysicalPoint([int(v) for v in i])
        assert list(p) == [float(v) for v in expected]
    for c in rng.uniform(-0.5, 4.5, size=(20, 3)):
        continuous = itk.ContinuousIndex[itk.D, 3]()
        for k, v in enumerate(c.tolist()):
            continuous.SetElement(k, v)
        expected = image.TransformContinuousIndexToPhysicalPoint(continuous)
        assert list(geometry.itk_continuous_index_to_point(c)) == [float(v) for v in expected]
