"""Pyramid schedules, level geometry and values against elastix's own written pyramids."""
import os

import numpy as np
import pytest
from scipy import ndimage

from elastix_bridge.core.geometry import ImageGeometry
from elastix_bridge.engine.images.pyramids import (GenericImagePyramid, PyramidSchedule, SmoothingImagePyramid,
                                                   downsampled_geometry, fixed_level_region, pyramid_class,
                                                   pyramid_level, pyramid_schedule)


def _rot(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


GEO = ImageGeometry((61, 50), (0.8, 1.1), (3.0, -2.0), _rot(0.4))


@pytest.fixture(scope="module")
def image():
    import itk

    rng = np.random.default_rng(0)
    a = (ndimage.gaussian_filter(rng.normal(size=GEO.shape_zyx), 3) * 1000).astype(np.float32)
    img = itk.image_from_array(a)
    GEO.apply_to_itk(img)
    return img


def test_kind_names_find_the_registered_class():
    assert pyramid_class("FixedGenericImagePyramid") is GenericImagePyramid
    assert pyramid_class("MovingSmoothingImagePyramid") is SmoothingImagePyramid
    with pytest.raises(ValueError, match="FixedSmoothingImagePyramid"):
        pyramid_class("FixedFancyPyramid")
    with pytest.raises(ValueError):
        pyramid_class("SmoothingImagePyramid")  # prefix required


@pytest.mark.parametrize("kind", ["Smoothing", "Recursive", "Shrinking", "Generic"])
def test_level_size_is_the_size_of_the_level_image(image, kind):
    schedule = pyramid_schedule(f"Fixed{kind}ImagePyramid", 3, GEO)
    for level in range(3):
        made = pyramid_level(image, f"Fixed{kind}ImagePyramid", schedule, level)
        assert pyramid_class(f"Fixed{kind}ImagePyramid").level_size(GEO, schedule, level) == \
            tuple(made.GetLargestPossibleRegion().GetSize())


def test_schedules():
    s = pyramid_schedule("FixedSmoothingImagePyramid", 3, GEO)
    np.testing.assert_array_equal(s.rescale, [[4, 4], [2, 2], [1, 1]])
    np.testing.assert_allclose(s.smoothing, 0.5 * s.rescale * GEO.spacing)
    # smoothing pyramid copies the schedule verbatim (no monotonic rule, zeros allowed)
    s = pyramid_schedule("MovingSmoothingImagePyramid", 2, GEO, rescale=[1, 0, 2, 2])
    np.testing.assert_array_equal(s.rescale, [[1, 0], [2, 2]])
    assert s.smoothing[0, 1] == 0
    # ITK rules: >= 1, non-increasing
    s = pyramid_schedule("FixedShrinkingImagePyramid", 3, GEO, rescale=[2, 0, 4, 3, 1, 1])
    np.testing.assert_array_equal(s.rescale, [[2, 1], [2, 1], [1, 1]])
    assert not s.smoothing.any()
    # generic default: finest level unsmoothed where factor 1
    s = pyramid_schedule("FixedGenericImagePyramid", 3, GEO)
    np.testing.assert_allclose(s.smoothing, [[1.6, 2.2], [0.8, 1.1], [0, 0]])
    s = pyramid_schedule("FixedGenericImagePyramid", 2, GEO, rescale=[2, 2, 2, 1])
    np.testing.assert_allclose(s.smoothing, [[0.8, 1.1], [0.8, 0.0]])
    # generic explicit smoothing: clipped >= 0 and non-increasing
    s = pyramid_schedule("FixedGenericImagePyramid", 3, GEO, rescale=[1] * 6, smoothing=[1, -2, 3, 0.5, 0.2, 1])
    np.testing.assert_allclose(s.smoothing, [[1, 0], [1, 0], [0.2, 0]])
    with pytest.raises(ValueError, match="6 values"):
        pyramid_schedule("FixedGenericImagePyramid", 3, GEO, rescale=[1, 2])
    with pytest.raises(ValueError):
        pyramid_schedule("FixedSmoothingImagePyramid", 3, GEO, smoothing=[1] * 6)
    with pytest.raises(ValueError):
        pyramid_schedule("FixedRecursiveImagePyramid", 2, GEO, rescale=[1.5, 1, 1, 1])


def test_geometry_example_design_E3_4():
    import itk

    geo = ImageGeometry((80, 64), (0.8, 1.1), (3.0, -2.0), np.eye(2))
    out = downsampled_geometry(geo, [2, 2])
    assert out.size == (40, 32)
    np.testing.assert_allclose(out.spacing, [1.6, 2.2])
    np.testing.assert_allclose(out.origin, [3.4, -1.45])
    img = itk.image_from_array(np.random.default_rng(0).random((64, 80)).astype(np.float32))
    geo.apply_to_itk(img)
    sch = pyramid_schedule("FixedGenericImagePyramid", 2, geo)
    lvl = pyramid_level(img, "FixedGenericImagePyramid", sch, 0)
    got = ImageGeometry.from_itk(lvl)
    assert got.size == (40, 32)
    np.testing.assert_allclose(got.origin, [3.4, -1.45])
    start, size = fixed_level_region(geo, got)
    np.testing.assert_array_equal(start, [0, 0])
    np.testing.assert_array_equal(size, [40, 32])
    # shrink geometry: centres coincide
    sh = downsampled_geometry(geo, [2, 2], use_shrink_image_filter=True)
    c_in = geo.index_to_physical(((np.asarray(geo.size) - 1) / 2)[None])
    c_out = sh.index_to_physical(((np.asarray(sh.size) - 1) / 2)[None])
    np.testing.assert_allclose(c_in, c_out)


def test_smoothing_keeps_geometry_and_smooths_finest(image):
    import itk

    sch = pyramid_schedule("FixedSmoothingImagePyramid", 2, GEO)
    lvl = pyramid_level(image, "FixedSmoothingImagePyramid", sch, 1)
    g = ImageGeometry.from_itk(lvl)
    assert g.size == GEO.size
    np.testing.assert_array_equal(g.origin, GEO.origin)
    np.testing.assert_array_equal(g.spacing, GEO.spacing)
    np.testing.assert_allclose(g.direction, GEO.direction, atol=1e-15)
    a, b = itk.array_from_image(image), itk.array_from_image(lvl)
    assert np.abs(a - b).max() > 1e-3  # finest level is smoothed (σ = 0.5 voxel)
    gen = pyramid_schedule("FixedGenericImagePyramid", 2, GEO)
    g = itk.array_from_image(pyramid_level(image, "FixedGenericImagePyramid", gen, 1))
    np.testing.assert_array_equal(g, a)  # generic finest level unsmoothed by default


CASES = {
    "smoothing": ("SmoothingImagePyramid", {}, {}),
    "generic_schedules": ("GenericImagePyramid",
                          {"ImagePyramidRescaleSchedule": ["4", "2", "2", "1", "1", "1"],
                           "ImagePyramidSmoothingSchedule": ["2", "1.5", "1", "1", "0", "0"]},
                          {"rescale": [4, 2, 2, 1, 1, 1], "smoothing": [2, 1.5, 1, 1, 0, 0]}),
    "generic_default": ("GenericImagePyramid", {}, {}),
    "recursive": ("RecursiveImagePyramid", {}, {}),
    "shrinking": ("ShrinkingImagePyramid", {}, {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_elastix_written_pyramids(image, tmp_path, case):
    import itk

    kind, extra, kwargs = CASES[case]
    po = itk.ParameterObject.New()
    pm = po.GetDefaultParameterMap("translation", 3)
    pm["Transform"] = ["TranslationTransform"]
    pm["Metric"] = ["AdvancedMeanSquares"]
    pm["ImageSampler"] = ["Full"]
    pm["MaximumNumberOfIterations"] = ["1"]
    pm["AutomaticTransformInitialization"] = ["false"]
    pm["WritePyramidImagesAfterEachResolution"] = ["true"]
    pm["ResultImageFormat"] = ["mha"]
    pm["ResultImagePixelType"] = ["float"]
    pm["FixedImagePyramid"] = ["Fixed" + kind]
    pm["MovingImagePyramid"] = ["Moving" + kind]
    for k, v in extra.items():
        pm[k] = v
    po.AddParameterMap(pm)
    itk.elastix_registration_method(image, image, parameter_object=po, output_directory=str(tmp_path),
                                    log_to_console=False)
    sch = pyramid_schedule("Fixed" + kind, 3, GEO, **kwargs)
    assert isinstance(sch, PyramidSchedule)
    for r in range(3):
        ref = itk.imread(os.path.join(str(tmp_path), f"FixedImagePyramid0.0.R{r}.mha"))
        mine = pyramid_level(image, "Fixed" + kind, sch, r)
        g_ref, g_mine = ImageGeometry.from_itk(ref), ImageGeometry.from_itk(mine)
        assert g_ref.size == g_mine.size
        np.testing.assert_allclose(g_mine.origin, g_ref.origin, atol=1e-9)
        np.testing.assert_allclose(g_mine.spacing, g_ref.spacing, atol=1e-12)
        np.testing.assert_allclose(g_mine.direction, g_ref.direction, atol=1e-12)
        a, b = itk.array_from_image(ref), itk.array_from_image(mine)
        assert np.abs(a - b).max() <= 1e-5 * np.ptp(a)
