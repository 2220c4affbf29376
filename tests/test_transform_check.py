"""The transform check after every stage: folding and implausible transforms are named, good ones are not."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest

itk = pytest.importorskip("itk")

from elastix_bridge.api import elastix_registration_method  # noqa: E402
from elastix_bridge.core.parameters import ParameterError, ParameterMap  # noqa: E402
from elastix_bridge.transform_check import check_stage, collected_checks  # noqa: E402


def _image(array, spacing=(1.0, 1.0), direction=None):
    image = itk.image_from_array(np.ascontiguousarray(array, dtype=np.float32))
    image.SetSpacing(list(spacing))
    if direction is not None:
        image.SetDirection(itk.matrix_from_array(np.asarray(direction, dtype=np.float64)))
    return image


def _squares(shift):
    """64 x 64 images: a bright 15 x 15 square, and the same square ``shift`` voxels further along x."""
    yy, xx = np.mgrid[:64, :64]
    fixed = ((np.abs(xx - 20) < 8) & (np.abs(yy - 32) < 8)) * 100.0
    moving = ((np.abs(xx - 20 - shift) < 8) & (np.abs(yy - 32) < 8)) * 100.0
    return _image(fixed), _image(moving)


def _bspline_map(grid_mm, iterations, **extra):
    values = {"Registration": ["MultiResolutionRegistration"], "Metric": ["AdvancedMattesMutualInformation"],
              "Optimizer": ["AdaptiveStochasticGradientDescent"], "Transform": ["BSplineTransform"],
              "NumberOfResolutions": ["1"], "FinalGridSpacingInPhysicalUnits": [str(grid_mm)],
              "MaximumNumberOfIterations": [str(iterations)], "ImageSampler": ["Full"],
              "FixedImagePyramid": ["FixedSmoothingImagePyramid"], "MovingImagePyramid": ["MovingSmoothingImagePyramid"],
              "ImagePyramidSchedule": ["1", "1"], "WriteResultImage": ["false"], "Interpolator": ["LinearInterpolator"],
              "ResampleInterpolator": ["FinalLinearInterpolator"], "Resampler": ["DefaultResampler"]}
    values.update({key: [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
                   for key, value in extra.items()})
    return ParameterMap(values)


def test_a_registration_that_folds_is_named_in_the_log_the_console_and_the_checks(tmp_path, capfd):
    """A 24-voxel shift on a 4 mm B-spline grid tears the square apart: most of it folds."""
    fixed, moving = _squares(24)
    with collected_checks() as checks:
        elastix_registration_method(fixed, moving, parameter_object=[_bspline_map(4, 500)],
                                    output_directory=str(tmp_path), log_to_file=True, log_to_console=True)
    (check,) = checks
    assert check.transform == "BSplineTransform" and check.voxels == 64 * 64
    assert check.folded_fraction > 0.01 and check.jacobian_min < 0
    assert any("folds" in w and "QCMaximumFoldedFraction" in w for w in check.warnings)
    log_text = (tmp_path / "elastix.log").read_text()
    assert "Transform check, stage 0" in log_text and "WARNING: stage 0 (elastix, parameter map 0): the transform " \
        "folds" in log_text
    assert "the transform folds" in capfd.readouterr().err


def test_a_smooth_registration_passes_and_its_numbers_are_logged(tmp_path):
    fixed, moving = _squares(2)
    with collected_checks() as checks:
        elastix_registration_method(fixed, moving, parameter_object=[_bspline_map(16, 100)],
                                    output_directory=str(tmp_path), log_to_file=True, log_to_console=False)
    (check,) = checks
    assert check.folded_fraction == 0 and check.jacobian_min > 0 and not check.warnings
    assert 0 < check.displacement_mm < 32
    assert "0 of 4096 fixed-mask voxels folded" in (tmp_path / "elastix.log").read_text()


def test_thresholds_come_from_the_map(tmp_path):
    """The same smooth result warns once the map's own limits are lower than what it did."""
    fixed, moving = _squares(2)
    pmap = _bspline_map(16, 100, QCMaximumDisplacement=0.01, QCMaximumFoldedFraction=0, QCMaximumVolumeChange=1.001)
    with collected_checks() as checks:
        elastix_registration_method(fixed, moving, parameter_object=[pmap], log_to_console=False)
    (check,) = checks
    assert any("QCMaximumDisplacement 0.01" in w for w in check.warnings)
    assert (check.jacobian_min < 1 / 1.001 or check.jacobian_max > 1.001) and \
        any("QCMaximumVolumeChange 1.001" in w for w in check.warnings)


def test_only_the_fixed_mask_counts():
    from elastix_bridge.core.parameters import parameter_maps_from_object

    fixed, moving = _squares(24)
    pmap = _bspline_map(4, 500)
    _, tp = elastix_registration_method(fixed, moving, parameter_object=[pmap], log_to_console=False)
    tp_maps = parameter_maps_from_object(tp)
    mask = np.zeros((64, 64), np.uint8)
    mask[:4, 50:54] = 1  # rows 0-3 (y), columns 50-53 (x): a corner far from the square, where nothing moves
    whole = check_stage(0, pmap, tp_maps, fixed)
    masked = check_stage(0, pmap, tp_maps, fixed, itk.image_from_array(mask))
    assert whole.folded_fraction > 0.01 and whole.voxels == 64 * 64
    assert masked.voxels == 16 and masked.folded_fraction == 0


@pytest.mark.parametrize("kind, parameters, determinant, scales, translation", [
    # Similarity 2D: scale, angle (rad), translation (mm)
    ("SimilarityTransform", [1.5, 0.3, 4.0, -3.0], 1.5 ** 2, (1.5, 1.5), 5.0),
    ("EulerTransform", [0.4, 6.0, 8.0], 1.0, (1.0, 1.0), 10.0),
    ("AffineTransform", [1.1, 0.2, 0.0, 0.9, 3.0, 4.0], 1.1 * 0.9, None, 5.0),
])
def test_linear_stages_are_measured_as_transformix_applies_them(kind, parameters, determinant, scales, translation):
    """The determinant (transformix) equals det of the matrix read from the parameters, on a rotated grid."""
    c, s = math.cos(0.5), math.sin(0.5)
    fixed = _image(np.ones((20, 30)), spacing=(1.5, 2.0), direction=[[c, -s], [s, c]])
    tp = ParameterMap({"Transform": [kind], "NumberOfParameters": [str(len(parameters))],
                       "TransformParameters": [repr(p) for p in parameters],
                       "InitialTransformParameterFileName": ["NoInitialTransform"],
                       "HowToCombineTransforms": ["Compose"], "FixedImageDimension": ["2"],
                       "MovingImageDimension": ["2"], "FixedInternalImagePixelType": ["float"],
                       "MovingInternalImagePixelType": ["float"], "Size": ["30", "20"], "Index": ["0", "0"],
                       "Spacing": ["1.5", "2.0"], "Origin": ["0", "0"],
                       "Direction": [repr(v) for v in (c, s, -s, c)], "UseDirectionCosines": ["true"],
                       "CenterOfRotationPoint": ["10.0", "5.0"], "ResampleInterpolator": ["FinalLinearInterpolator"],
                       "Resampler": ["DefaultResampler"], "DefaultPixelValue": ["0"]})
    pmap = ParameterMap({"Transform": [kind], "QCMaximumScaleChange": ["0.25"], "QCMaximumDisplacement": ["7"]})
    check = check_stage(0, pmap, [tp], fixed)
    assert check.jacobian_min == pytest.approx(determinant, rel=1e-4)
    assert check.jacobian_max == pytest.approx(determinant, rel=1e-4)
    assert np.prod(check.scales) == pytest.approx(determinant, rel=1e-6)
    if scales is not None:
        assert check.scales == pytest.approx(scales)
    assert check.displacement_mm == pytest.approx(translation)
    assert any("scales the anatomy" in w for w in check.warnings) == (max(check.scales) > 1.25)
    assert any("translates by" in w for w in check.warnings) == (translation > 7)


@pytest.mark.parametrize("key, value, lowest", [("QCMaximumFoldedFraction", "-1", "0"),
                                               ("QCMaximumFoldedFraction", "nan", "0"),
                                               ("QCMaximumDisplacement", "many", "0"),
                                               ("QCMaximumVolumeChange", "0.5", "1")])
def test_a_bad_threshold_is_refused_before_any_work(tmp_path, key, value, lowest):
    fixed, moving = _squares(2)
    with pytest.raises(ParameterError, match=rf"{key} .* must be a number >= {lowest}"):
        elastix_registration_method(fixed, moving, parameter_object=[_bspline_map(16, 10, **{key: value})],
                                    output_directory=str(tmp_path), log_to_console=False)
    assert not list(tmp_path.iterdir())


def test_threshold_keys_are_not_reported_as_unknown(caplog):
    fixed, moving = _squares(2)
    with caplog.at_level(logging.WARNING, logger="elastix_bridge"):
        elastix_registration_method(fixed, moving, log_to_console=False,
                                    parameter_object=[_bspline_map(16, 10, QCMaximumFoldedFraction=0.01)])
    assert "is not a parameter that elastix or elastix-bridge reads" not in caplog.text
