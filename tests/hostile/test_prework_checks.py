"""Hostile inputs that can be found before any work, for every stage of a chain (docs/bad_input.md).

Each case asserts the exception type or exit code, that the message names the cause (and the fix), that
nothing was written to the output folder and no stage ran, and that no lock is left. Cases are derived
from the tables they check (result format × pixel type from ``core/elastix_names.py``), from ITK's own
filters (pyramid schedules × tiny sizes against the bridge's ITK pyramids) and fuzzed with hypothesis.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from elastix_bridge.core.elastix_names import RESULT_FORMAT_2D_ONLY, RESULT_FORMAT_PIXEL_TYPES, RESULT_PIXEL_TYPES
from elastix_bridge.core.geometry import ImageGeometry
from elastix_bridge.core.parameters import ParameterMap
from elastix_bridge.core.result_images import UNWRAPPED_TYPES
from helpers.command import assert_one_line_error, registration_args, run
from helpers.maps import elastix_map, impact_parameters, write_parameter_file

itk = pytest.importorskip("itk")

PIXEL_NAMES = ("unsigned char", "unsigned short", "char", "short", "int", "unsigned int", "float", "double")
# The pixel types itk's Python wrapping makes images of (int8 and the 64-bit integers it does not).
WRAPPED = ("uint8", "int16", "uint16", "int32", "uint32", "float32", "float64")


def pmap(**changes) -> ParameterMap:
    return ParameterMap.from_dict(impact_parameters(**changes))


def geometry(*size, spacing=None) -> ImageGeometry:
    d = len(size)
    return ImageGeometry(size, spacing or [1.0] * d, [0.0] * d, np.eye(d))


def image(*size_xyz, spacing=None):
    array = np.random.default_rng(1).random(tuple(reversed(size_xyz))).astype(np.float32)
    result = itk.image_from_array(array)
    if spacing:
        result.SetSpacing(spacing)
    return result


def assert_nothing_written(out, before=()):
    """``out`` holds what it held before (nothing when it did not exist) and no lock."""
    if not os.path.exists(out):
        assert not before
        return
    names = sorted(os.listdir(out))
    assert ".elastix-bridge.lock" not in names
    assert names == sorted(before), names


@pytest.fixture
def no_stage(monkeypatch):
    """Fails the test if any stage starts (bridge or elastix)."""
    from elastix_bridge.engine import registration
    from elastix_bridge.runtime import itk_elastix

    started = []

    def refuse(*args, **kwargs):
        started.append(True)
        raise AssertionError("a stage ran")

    monkeypatch.setattr(registration, "run_stage", refuse)  # no bridge stage
    monkeypatch.setattr(itk_elastix, "run_itk_elastix", refuse)  # no elastix stage
    yield started
    assert not started


# ------------------------------------------------------------------------------------------------
# item 4: result image format × pixel type, from the table

FORMAT_CASES = [(fmt, name) for fmt in RESULT_FORMAT_PIXEL_TYPES for name in PIXEL_NAMES]


@pytest.mark.parametrize("fmt,pixel", FORMAT_CASES)
def test_format_and_pixel_type_are_checked_before_work(fmt, pixel):
    from elastix_bridge.validation import validate_maps

    maps = [pmap(ResultImageFormat=fmt, ResultImagePixelType=pixel)]
    if RESULT_PIXEL_TYPES[pixel] in RESULT_FORMAT_PIXEL_TYPES[fmt]:
        if RESULT_PIXEL_TYPES[pixel] in UNWRAPPED_TYPES:  # written as MetaImage only: test_unwrapped_types_...
            return
        validate_maps(maps, dimension=2)  # what elastix writes is accepted
        return
    with pytest.raises(ValueError) as error:
        validate_maps(maps, dimension=2, names=["-p a.txt"])
    message = str(error.value)
    assert "parameter map 0 (-p a.txt)" in message
    assert f'(ResultImageFormat "{fmt}")' in message and f'(ResultImagePixelType "{pixel}")' in message
    assert "ResultImagePixelType \"" + [n for n in PIXEL_NAMES if RESULT_PIXEL_TYPES[n] in
                                         RESULT_FORMAT_PIXEL_TYPES[fmt]][0] in message.split("use", 1)[1]


@pytest.mark.parametrize("fmt", ["nii", "nii.gz", "nrrd", "tif"])
@pytest.mark.parametrize("pixel", ["char", "long", "unsigned long"])
def test_unwrapped_types_outside_metaimage_are_refused_before_work(fmt, pixel):
    """char and (unsigned) long are written as MetaImage only; elsewhere refused before work, with the fix."""
    from elastix_bridge.validation import validate_maps

    validate_maps([pmap(ResultImageFormat="mha", ResultImagePixelType=pixel)], dimension=2)
    with pytest.raises(ValueError, match=rf'"{pixel}"\): .*"mha"'):
        validate_maps([pmap(ResultImageFormat=fmt, ResultImagePixelType=pixel)], dimension=2)


@pytest.mark.parametrize("fmt", RESULT_FORMAT_2D_ONLY)
def test_2d_only_formats_are_refused_for_3d_images(fmt):
    from elastix_bridge.validation import validate_maps

    validate_maps([pmap(ResultImageFormat=fmt, ResultImagePixelType="unsigned char")], dimension=2)
    with pytest.raises(ValueError, match=rf'{fmt} images in 2D only and the images are 3D; use'):
        validate_maps([ParameterMap.from_dict({**elastix_map(), "ResultImageFormat": [fmt],
                                               "ResultImagePixelType": ["unsigned char"]})], dimension=3)


@pytest.mark.parametrize("fmt", sorted(RESULT_FORMAT_PIXEL_TYPES))
def test_format_table_matches_itk_writers(fmt, tmp_path):
    """The table says what ITK's writer does, for every pixel type itk's Python wrapping can make."""
    for numpy_name in WRAPPED:
        picture = itk.image_from_array((np.arange(25) % 7).reshape(5, 5).astype(numpy_name))
        try:
            itk.imwrite(picture, str(tmp_path / f"r-{numpy_name}.{fmt}"))
            written = True
        except RuntimeError:
            written = False
        assert written == (numpy_name in RESULT_FORMAT_PIXEL_TYPES[fmt]), (fmt, numpy_name)


def test_png_with_float_is_refused_by_the_command_before_any_reading(inputs, tmp_path, capsys):
    params = write_parameter_file(tmp_path / "png.txt", impact_parameters(ResultImageFormat="png",
                                                                          ResultImagePixelType="float"))
    out = tmp_path / "out"
    code, _, err = run(capsys, *registration_args(inputs, out, params))
    assert_one_line_error(code, err, "-p", "png", '"float"', "unsigned char")
    assert_nothing_written(out)


# ------------------------------------------------------------------------------------------------
# item 4: ImpactFeatureMapOutputDirectory


def _feature_dir_cases(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    return {"a file": (a_file, "is a file"), "under a file": (a_file / "maps", "which is a file")}


@pytest.mark.parametrize("case", ["a file", "under a file"])
def test_feature_map_directory_is_checked_before_the_elastix_stage(case, inputs, tmp_path, no_stage):
    from elastix_bridge import elastix_registration_method

    directory, needle = _feature_dir_cases(tmp_path)[case]
    out = tmp_path / "out"
    out.mkdir()
    fixed, moving = itk.imread(str(inputs["fixed"]), itk.F), itk.imread(str(inputs["moving"]), itk.F)
    maps = [elastix_map(), impact_parameters(ImpactFeatureMapOutputDirectory=str(directory))]
    with pytest.raises(ValueError) as error:
        elastix_registration_method(fixed, moving, parameter_object=maps, output_directory=str(out))
    message = str(error.value)
    assert "parameter map 1" in message and "ImpactFeatureMapOutputDirectory" in message and needle in message
    assert "name a folder" in message
    assert_nothing_written(out)
    assert not (tmp_path / "a-file").is_dir()


# ------------------------------------------------------------------------------------------------
# item 4/5: initial transforms the bridge must read, -t0 of another dimension


def _tp(path, transform="TranslationTransform", parameters=("1", "2"), dimension=2, initial="NoInitialTransform",
        **extra):
    keys = {"Transform": [transform], "NumberOfParameters": [str(len(parameters))],
            "TransformParameters": list(parameters), "InitialTransformParameterFileName": [initial],
            "FixedImageDimension": [str(dimension)], "MovingImageDimension": [str(dimension)],
            "HowToCombineTransforms": ["Compose"], "Size": ["36"] * dimension, "Spacing": ["1"] * dimension,
            "Index": ["0"] * dimension, "Origin": ["0"] * dimension,
            "Direction": [str(float(i == j)) for i in range(dimension) for j in range(dimension)], **extra}
    return write_parameter_file(path, keys)


def _t0_cases(tmp_path):
    return {
        "unsupported kind": (_tp(tmp_path / "dti.txt", "AffineLogTransform", ["0"] * 6),
                             ValueError, ["AffineLogTransform", "not supported by the bridge engine"]),
        "missing file in the chain": (_tp(tmp_path / "chain.txt", initial=str(tmp_path / "gone.txt")),
                                      FileNotFoundError, ["gone.txt", "does not exist", "named by"]),
        "wrong parameter count": (_tp(tmp_path / "affine.txt", "AffineTransform", ["1", "0", "0", "1", "0"],
                                      CenterOfRotationPoint=["0", "0"]),
                                  ValueError, ["affine.txt", "cannot read"]),
        "3D transform for 2D images": (_tp(tmp_path / "t3.txt", parameters=("1", "2", "3"), dimension=3),
                                       ValueError, ["(FixedImageDimension 3)", "images are 2D"]),
    }


@pytest.mark.parametrize("case", ["unsupported kind", "missing file in the chain", "wrong parameter count",
                                  "3D transform for 2D images"])
def test_initial_transform_is_read_before_any_stage(case, inputs, tmp_path, no_stage):
    from elastix_bridge import elastix_registration_method

    t0, kind, needles = _t0_cases(tmp_path)[case]
    out = tmp_path / "out"
    out.mkdir()
    fixed, moving = itk.imread(str(inputs["fixed"]), itk.F), itk.imread(str(inputs["moving"]), itk.F)
    with pytest.raises(kind) as error:
        elastix_registration_method(fixed, moving, parameter_object=[elastix_map(), impact_parameters()],
                                    output_directory=str(out), initial_transform_parameter_file_name=str(t0))
    for needle in needles:
        assert needle in str(error.value), (needle, str(error.value))
    assert_nothing_written(out)


def test_t0_of_another_dimension_through_the_command(inputs, tmp_path, capsys):
    t0 = _tp(tmp_path / "t3.txt", parameters=("1", "2", "3"), dimension=3)
    out = tmp_path / "out"
    code, _, err = run(capsys, *registration_args(inputs, out), "-t0", t0)
    assert_one_line_error(code, err, "t3.txt", "(FixedImageDimension 3)", "images are 2D")
    assert_nothing_written(out)


def test_elastix_stage_whose_transform_the_next_bridge_stage_cannot_read(inputs, no_stage):
    from elastix_bridge import elastix_registration_method

    first = {**elastix_map(), "Transform": ["AffineLogTransform"]}
    fixed, moving = itk.imread(str(inputs["fixed"]), itk.F), itk.imread(str(inputs["moving"]), itk.F)
    with pytest.raises(ValueError, match=r"parameter map 0: its \(Transform \"AffineLogTransform\"\) runs on elastix, "
                                         r"but stage 1 runs on the bridge engine.*engine='elastix'"):
        elastix_registration_method(fixed, moving, parameter_object=[first, impact_parameters()])


# ------------------------------------------------------------------------------------------------
# item 5: images that elastix cannot pyramid, against ITK's pyramid filters

PYRAMIDS = ("Smoothing", "Generic", "Recursive", "Shrinking")
TINY = (1, 2, 3, 4, 5)


@pytest.mark.parametrize("levels", [1, 3])
@pytest.mark.parametrize("size", TINY)
@pytest.mark.parametrize("kind", PYRAMIDS)
def test_pyramid_check_agrees_with_itk(kind, size, levels):
    """The header check refuses exactly what ITK's pyramid filters cannot compute (and 1-voxel axes)."""
    from elastix_bridge.engine.images.pyramids import pyramid_level
    from elastix_bridge.engine.stage_settings import map_pyramid_schedule
    from elastix_bridge.validation import check_pyramid_sizes

    m = ParameterMap.from_dict({**elastix_map(), "NumberOfResolutions": [str(levels)],
                                "FixedImagePyramid": [f"Fixed{kind}ImagePyramid"],
                                "MovingImagePyramid": [f"Moving{kind}ImagePyramid"]})
    geo, picture = geometry(size, 24), image(size, 24)
    try:
        check_pyramid_sizes(m, levels, (geo, geo))
        refused = None
    except ValueError as error:
        refused = str(error)
    schedule = map_pyramid_schedule(m, "Fixed", f"Fixed{kind}ImagePyramid", levels, geo)
    failures = []
    for level in range(levels):
        try:
            pyramid_level(picture, f"Fixed{kind}ImagePyramid", schedule, level)
        except RuntimeError as error:
            failures.append(str(error))
    if size == 1:
        assert refused and "1 voxel along x" in refused
    elif failures:
        assert refused and f"has {size} voxels along x" in refused and "at least 4" in refused, failures
        assert "ShrinkingImagePyramid" in refused
    else:
        assert refused is None


def test_tiny_image_is_refused_by_the_api_and_by_plan(tmp_path, no_stage, capsys):
    from elastix_bridge import elastix_registration_method

    fixed = image(3, 30)
    with pytest.raises(ValueError, match=r"parameter map 0: the fixed image \(3 × 30 voxels in x, y\) has 3 voxels "
                                         r"along x"):
        elastix_registration_method(fixed, image(3, 30), parameter_object=[elastix_map()])
    path = tmp_path / "tiny.mha"
    itk.imwrite(fixed, str(path))
    code, out, err = run(capsys, "plan", "-f", path, "-m", path, "-p",
                         write_parameter_file(tmp_path / "p.txt", elastix_map()))
    assert_one_line_error(code, err, "3 voxels along x", "at least 4")
    assert "fits" not in out


def test_one_by_one_image_through_the_command(tmp_path, capsys, inputs):
    path = tmp_path / "dot.mha"
    itk.imwrite(image(1, 1), str(path))
    out = tmp_path / "out"
    code, _, err = run(capsys, "-f", path, "-m", path, "-p", inputs["params"], "-out", out)
    assert_one_line_error(code, err, "1 voxel along x")
    assert_nothing_written(out)


# ------------------------------------------------------------------------------------------------
# item 5: truncated image files


def _truncate(path, by=100):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - by)


@pytest.mark.parametrize("name,compress", [("t.mhd", False), ("t.mha", False), ("c.mha", True), ("t.nii", False),
                                           ("t.nii.gz", False)])
def test_truncated_image_is_named_truncated(name, compress, tmp_path):
    from elastix_bridge.core.image_io import read_image

    path = tmp_path / name
    itk.imwrite(image(12, 10, 6), str(path), compression=compress)
    data = path.with_suffix(".raw") if name.endswith(".mhd") else path
    _truncate(data)
    with pytest.raises(ValueError) as error:
        read_image(path, "fixed image (-f)")
    message = str(error.value)
    assert "fixed image (-f)" in message and "truncated" in message and "copy the image again" in message
    # the expected and the actual byte counts (12 × 10 × 6 float voxels; a .nii has a 352-byte header)
    expected = {"t.mhd": "says 2880 bytes", "t.mha": "says 2880 bytes", "c.mha": "bytes of compressed data",
                "t.nii": "says 3232 bytes", "t.nii.gz": "gzip end-of-stream"}[name]
    assert expected in message
    if name in ("t.mhd", "t.nii"):
        assert f"holds {os.path.getsize(data)}" in message


def test_truncated_raw_through_the_command(inputs, tmp_path, capsys):
    path = tmp_path / "f.mhd"
    itk.imwrite(itk.imread(str(inputs["fixed"]), itk.F), str(path))
    _truncate(tmp_path / "f.raw", 400)
    out = tmp_path / "out"
    code, _, err = run(capsys, *registration_args(inputs, out, f=path))
    line = assert_one_line_error(code, err, "fixed image (-f)", "f.raw is truncated", f"{36 * 36 * 4} bytes",
                                 f"holds {36 * 36 * 4 - 400}")
    assert "No such file" not in line
    assert_nothing_written(out)


# ------------------------------------------------------------------------------------------------
# item 5: a Jacobian patch larger than the image


@pytest.mark.parametrize("patch,voxel,fits", [(29, 2.0, False), (5, 20.0, False), (9, 1.0, True), (30, 1.2, True)])
def test_jacobian_patch_larger_than_the_image(patch, voxel, fits):
    from elastix_bridge.validation import validate_maps

    m = pmap(ImpactMode="Jacobian", ImpactPatchSize0=[patch, patch], ImpactVoxelSize0=[voxel, voxel])
    geometries = (geometry(36, 36, spacing=[1.2, 1.0]),) * 2
    if fits:
        validate_maps([m], "bridge", geometries=geometries)
        return
    with pytest.raises(ValueError) as error:
        validate_maps([m], ["bridge"], geometries=geometries)
    message = str(error.value)
    assert "level 0" in message and f"ImpactPatchSize0 {patch} {patch}" in message
    assert f"spans {(patch - 1) * voxel:g} mm along x" in message and "43.2 mm" in message
    assert "smaller ImpactPatchSize0 or ImpactVoxelSize0" in message


# ------------------------------------------------------------------------------------------------
# item 10: images of different dimensions, before itk's filter is made


def _mixed_images():
    return image(12, 12, 12), image(12, 12)


@pytest.mark.parametrize("impact", [True, False])
@pytest.mark.parametrize("style", ["functional", "object"])
def test_dropin_refuses_images_of_different_dimensions(style, impact, monkeypatch):
    import elastix_bridge  # noqa: F401  (installs the drop-in)
    from elastix_bridge.validation import InputImageError

    fixed, moving = _mixed_images()
    parameter_object = itk.ParameterObject.New()
    parameter_object.AddParameterMap(impact_parameters() if impact else elastix_map())
    with pytest.raises(InputImageError, match="the fixed image is 3D but the moving image is 2D; .*give a 3D moving"):
        if style == "functional":
            itk.elastix_registration_method(fixed, moving, parameter_object=parameter_object)
        else:
            itk.ElastixRegistrationMethod.New(fixed, moving, parameter_object=parameter_object).Update()


def test_api_and_command_refuse_images_of_different_dimensions(inputs, tmp_path, capsys, no_stage):
    from elastix_bridge import elastix_registration_method
    from elastix_bridge.validation import InputImageError

    with pytest.raises(InputImageError, match="3D but the moving image is 2D"):
        elastix_registration_method(*_mixed_images(), parameter_object=[impact_parameters()])
    path = tmp_path / "f3.mha"
    itk.imwrite(_mixed_images()[0], str(path))
    out = tmp_path / "out"
    code, _, err = run(capsys, "-f", path, "-m", inputs["moving"], "-p", inputs["params"], "-out", out)
    assert_one_line_error(code, err, "the fixed image is 3D but the moving image is 2D")
    assert_nothing_written(out)


# ------------------------------------------------------------------------------------------------
# parameter-map values fuzzed: each validates or raises ValueError naming the key

FUZZED_KEYS = ("MaximumNumberOfIterations", "NumberOfResolutions", "NumberOfSpatialSamples", "ResultImagePixelType",
               "ResultImageFormat", "ImagePyramidSchedule", "FinalGridSpacingInPhysicalUnits", "ImpactPatchSize0",
               "ImpactVoxelSize0", "ImpactMode", "BSplineInterpolationOrder", "ImpactFeatureMapOutputDirectory",
               "FixedImagePyramid", "RequiredRatioOfValidSamples", "ImagePyramidSmoothingSchedule", "ImpactLayersMask0",
               "WriteResultImage", "ImpactDimension0")


def test_fuzzed_map_values_validate_or_name_the_key(tmp_path):
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import HealthCheck, given, settings, strategies as st

    from elastix_bridge.validation import validate_maps

    number = st.one_of(st.integers(-10**25, 10**25), st.floats(allow_nan=True, allow_infinity=True))
    value = st.one_of(number.map(str), st.text(max_size=12), st.sampled_from(["", "-1", "0", "1e400", "png", "float",
                                                                              "FixedShrinkingImagePyramid", "Static"]))
    geometries = (geometry(36, 36, spacing=[1.2, 1.0]),) * 2
    cwd = os.getcwd()

    @settings(max_examples=int(os.environ.get("PREWORK_FUZZ_EXAMPLES", 80)), deadline=None, suppress_health_check=list(HealthCheck))
    @given(key=st.sampled_from(FUZZED_KEYS), values=st.lists(value, min_size=0, max_size=40))
    def check(key, values):
        before = sorted(os.listdir(tmp_path))
        m = pmap(**{key: values or [""]})
        try:
            validate_maps([m], ["bridge"], geometries=geometries)
        except ValueError as error:
            plain = key.rstrip("0123456789")
            assert key in str(error) or plain in str(error), (key, values, str(error))
        assert sorted(os.listdir(tmp_path)) == before

    os.chdir(tmp_path)  # a fuzzed feature-map folder would land here: nothing may be created
    try:
        check()
    finally:
        os.chdir(cwd)
