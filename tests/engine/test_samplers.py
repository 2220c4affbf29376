"""Samplers (docs/design.md §E5): counts, mask and region membership, reproducibility, grid layout, cropping."""
import numpy as np
import pytest
import torch

from elastix_bridge.core.geometry import ImageGeometry
from elastix_bridge.engine.images.level_images import Mask
from elastix_bridge.engine.components import names
from elastix_bridge.engine.samplers import (FullSampler, GridSampler, RandomCoordinateSampler, RandomSampler,
                                            RandomSparseMaskSampler, make_sampler, sampling_region)


def _rot(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


GEO = ImageGeometry((30, 20), (0.7, 1.3), (5.0, -4.0), _rot(0.35))
GEO3 = ImageGeometry((12, 10, 8), (0.9, 1.1, 2.0), (1.0, 2.0, 3.0),
                     np.linalg.qr(np.random.default_rng(4).normal(size=(3, 3)))[0])


def _mask(geo=GEO, box=((8, 20), (5, 15))):
    """Mask on ``geo`` with a box [x0, x1) x [y0, y1) (ITK order) set."""
    a = np.zeros(geo.shape_zyx, bool)
    (x0, x1), (y0, y1) = box
    a[y0:y1, x0:x1] = True
    return Mask(geo, a)


def _gen(seed=1):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _index(geo, pts):
    return geo.physical_to_index(pts.numpy())


def test_full_sampler_counts_and_order():
    pts = FullSampler(GEO, None).sample()
    assert pts.shape == (600, 2) and pts.dtype == torch.float64
    np.testing.assert_allclose(pts.numpy(), GEO.voxel_centres(), atol=1e-12)
    m = _mask()
    pts = FullSampler(GEO, m).sample()
    assert pts.shape[0] == 12 * 10
    idx = np.round(_index(GEO, pts)).astype(int)
    assert idx[0].tolist() == [8, 5] and idx[1].tolist() == [9, 5]  # x fastest
    assert m.contains(pts).all()


def test_cropping_to_mask_bounding_box():
    m = _mask()
    start, size = sampling_region(GEO, m)
    # rotated image: the axis-aligned physical box of the rotated mask box is larger than the mask box
    assert np.all(start <= [8, 5]) and np.all(start + size - 1 >= [19, 14])


def test_cropping_identity_direction_exact():
    geo = ImageGeometry((30, 20), (1.0, 1.0), (0.0, 0.0), np.eye(2))
    m = _mask(geo)
    start, size = sampling_region(geo, m)
    np.testing.assert_array_equal(start, [7, 4])  # floor(8 - 0.5)
    np.testing.assert_array_equal(start + size - 1, [20, 15])  # ceil(19 + 0.5)
    # level image with spacing 2 (generic pyramid geometry): mask box maps to its own index range
    lvl = ImageGeometry((15, 10), (2.0, 2.0), (0.5, 0.5), np.eye(2))
    start, size = sampling_region(lvl, m)
    # physical box [7.5, 19.5] x [4.5, 14.5] -> level index [3.5, 9.5] x [2, 7]
    np.testing.assert_array_equal(start, [3, 2])
    np.testing.assert_array_equal(start + size - 1, [10, 7])
    # region intersection and empty intersection
    start, size = sampling_region(geo, m, region=([10, 0], [5, 20]))
    np.testing.assert_array_equal(start, [10, 4])
    np.testing.assert_array_equal(size, [5, 12])
    with pytest.raises(ValueError, match="entirely out"):
        sampling_region(geo, m, region=([25, 0], [5, 20]))


def test_grid_sampler_positions():
    geo = ImageGeometry((10, 7), (1.0, 1.0), (0.0, 0.0), np.eye(2))
    g = GridSampler(geo, None, spacing_xyz=[3, 2])
    idx = np.round(_index(geo, g.sample())).astype(int)
    # x: n=10, s=3 -> m=4, first = (10 - 10)//2 = 0 -> 0,3,6,9 ; y: n=7, s=2 -> m=4, first=(7-7)//2=0
    assert sorted(set(idx[:, 0])) == [0, 3, 6, 9]
    assert sorted(set(idx[:, 1])) == [0, 2, 4, 6]
    g = GridSampler(geo, None, spacing_xyz=4)
    idx = np.round(_index(geo, g.sample())).astype(int)
    # x: m=3, first=(10-9)//2=0 -> 0,4,8 ; y: m=2, first=(7-5)//2=1 -> 1,5
    assert sorted(set(idx[:, 0])) == [0, 4, 8] and sorted(set(idx[:, 1])) == [1, 5]
    assert idx[:3].tolist() == [[0, 1], [4, 1], [8, 1]]  # x fastest
    # from a number of samples: s = round(sqrt(70/8)) = 3
    assert GridSampler(geo, None, number_of_samples=8).spacing_xyz.tolist() == [3, 3]
    assert GridSampler(geo, None, number_of_samples=1000).spacing_xyz.tolist() == [1, 1]
    # mask restricts points
    m = _mask(geo, box=((2, 6), (1, 5)))
    pts = GridSampler(geo, m, spacing_xyz=1).sample()
    assert pts.shape[0] == 16 and m.contains(pts).all()
    with pytest.raises(ValueError):
        GridSampler(geo, None, spacing_xyz=0)


@pytest.mark.parametrize("cls", [RandomCoordinateSampler, RandomSampler, RandomSparseMaskSampler])
def test_random_samplers_mask_region_reproducible(cls):
    m = _mask()
    s1 = cls(GEO, m, 500, _gen(7))
    a = s1.sample()
    b = cls(GEO, m, 500, _gen(7)).sample()
    c = s1.sample()
    assert a.shape == (500, 2)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    assert m.contains(a).all()
    idx = _index(GEO, a)
    start, size = s1.region_start_xyz, s1.region_size_xyz
    assert np.all(idx >= start - 1e-9) and np.all(idx <= start + size - 1 + 1e-9)


def test_random_coordinate_never_in_half_voxel_band_and_uniform():
    s = RandomCoordinateSampler(GEO3, None, 20000, _gen(3))
    pts = s.sample()
    idx = _index(GEO3, pts)
    n = np.asarray(GEO3.size)
    assert np.all(idx >= -1e-9) and np.all(idx <= n - 1 + 1e-9)
    assert np.all(idx.min(axis=0) < 0.01) and np.all(idx.max(axis=0) > n - 1.01)
    frac = idx - np.floor(idx)
    assert 0.45 < frac.mean() < 0.55  # continuous, not voxel centres
    r = RandomSampler(GEO3, None, 2000, _gen(3)).sample()
    ridx = _index(GEO3, r)
    np.testing.assert_allclose(ridx, np.round(ridx), atol=1e-9)  # voxel centres


def test_random_coordinate_sample_region():
    s = RandomCoordinateSampler(GEO, None, 300, _gen(2), sample_region_size_mm=[3.5, 2.6])
    idx = _index(GEO, s.sample())
    ext = idx.max(axis=0) - idx.min(axis=0)
    assert np.all(ext <= np.array([5.0, 2.0]) + 1e-9)


def test_not_enough_samples_error():
    a = np.zeros(GEO.shape_zyx, bool)
    a[0, 0] = True
    a[19, 29] = True  # bounding box = whole image, only 2 voxels inside
    m = Mask(GEO, a)
    with pytest.raises(RuntimeError, match="Could not find enough image samples within reasonable time. "
                                           "Probably the mask is too small"):
        RandomCoordinateSampler(GEO, m, 200, _gen()).sample()
    with pytest.raises(RuntimeError, match="Probably the mask is too small"):
        RandomSampler(GEO, m, 200, _gen()).sample()
    pts = RandomSparseMaskSampler(GEO, m, 200, _gen()).sample()  # the sparse sampler copes
    assert pts.shape == (200, 2) and m.contains(pts).all()


def test_factory_and_errors():
    assert isinstance(make_sampler("Full", GEO), FullSampler)
    assert isinstance(make_sampler("Grid", GEO, grid_spacing_xyz=[2, 3]), GridSampler)
    s = make_sampler("RandomCoordinate", GEO, number_of_samples=10, generator=_gen(), dtype=torch.float32)
    assert s.sample().dtype == torch.float32
    for name in names("ImageSampler"):
        kwargs = dict(mask=_mask(), number_of_samples=5, generator=_gen())
        assert make_sampler(name, GEO, **kwargs).sample().shape[1] == 2
    with pytest.raises(ValueError, match="RandomCoordinate"):
        make_sampler("Nope", GEO)
    with pytest.raises(ValueError, match="requires a fixed mask"):
        make_sampler("RandomSparseMask", GEO, generator=_gen())
    with pytest.raises(ValueError):
        make_sampler("Random", GEO, generator=None)


def test_mask_on_other_geometry():
    """A full-resolution mask used with a down-sampled level image."""
    full = ImageGeometry((40, 30), (0.5, 0.5), (0.0, 0.0), _rot(0.3))
    a = np.zeros(full.shape_zyx, bool)
    a[10:20, 12:30] = True
    m = Mask(full, a)
    lvl = ImageGeometry((20, 15), (1.0, 1.0), full.origin + full.direction @ [0.25, 0.25], full.direction)
    pts = FullSampler(lvl, m).sample()
    assert pts.shape[0] > 0 and m.contains(pts).all()
    every = FullSampler(lvl, None).sample()
    assert int(m.contains(every).sum()) == pts.shape[0]


def test_factory_reads_parameter_map():
    from elastix_bridge.core.parameters import ParameterMap

    pm = ParameterMap({"SampleGridSpacing": ["4", "3", "2", "1"], "UseRandomSampleRegion": ["false", "true"],
                       "SampleRegionSize": ["5", "5", "3.5", "2.6"]})
    assert make_sampler("Grid", GEO, parameter_map=pm, level=0).spacing_xyz.tolist() == [4, 3]
    assert make_sampler("Grid", GEO, parameter_map=pm, level=1).spacing_xyz.tolist() == [2, 1]
    assert make_sampler("Grid", GEO, parameter_map=pm, level=2).spacing_xyz.tolist() == [2, 2]  # no fallback
    s0 = make_sampler("RandomCoordinate", GEO, number_of_samples=5, generator=_gen(), parameter_map=pm, level=0)
    assert s0.sample_region_size_mm is None
    s1 = make_sampler("RandomCoordinate", GEO, number_of_samples=5, generator=_gen(), parameter_map=pm, level=1)
    np.testing.assert_allclose(s1.sample_region_size_mm, [3.5, 2.6])
    pm["SampleRegionSize"] = ["500", "5", "500", "5"]
    with pytest.raises(ValueError, match="SampleRegionSize"):
        make_sampler("RandomCoordinate", GEO, number_of_samples=5, generator=_gen(), parameter_map=pm, level=1)
