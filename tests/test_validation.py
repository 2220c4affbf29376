"""Bad input is refused by name before any work (elastix_bridge.validation; docs/bad_input.md).

Every case asserts the named error *and* that nothing ran: no stage was entered (the bridge engine
and itk-elastix are replaced by functions that fail the test) and the output folder stays empty.
Images are tiny synthetic 2D blobs; no registration runs, except the one model that returns NaN.
"""
import logging
import re
from pathlib import Path

import numpy as np
import pytest

itk = pytest.importorskip("itk")

import elastix_bridge  # noqa: E402,F401  (installs the drop-in)
from elastix_bridge import api, cli  # noqa: E402
from elastix_bridge.runtime import itk_elastix  # noqa: E402
from elastix_bridge import validation  # noqa: E402
from elastix_bridge.engine import registration  # noqa: E402
from elastix_bridge.engine.components import UnsupportedComponentError  # noqa: E402
from elastix_bridge.core.impact_parameters import ImpactParameterError  # noqa: E402
from elastix_bridge.core.parameters import ParameterError  # noqa: E402
from elastix_bridge.validation import InputImageError  # noqa: E402
from helpers.command import assert_one_line_error, run  # noqa: E402
from helpers.maps import MIND_SSC_2D_STATIC, impact_parameters, write_parameter_file  # noqa: E402
from helpers.torchscript import scripted_model  # noqa: E402


def image(array, spacing=(1.0, 1.0), origin=None):
    result = itk.image_from_array(np.ascontiguousarray(array, dtype=np.float32))
    result.SetSpacing([float(s) for s in spacing])
    if origin is not None:
        result.SetOrigin([float(o) for o in origin])
    return result


def blob(shape=(32, 32), centre=(16, 16)):
    grid = np.mgrid[tuple(slice(0, n) for n in shape)].astype(np.float32)
    return np.exp(-sum((g - c) ** 2 for g, c in zip(grid, reversed(centre))) / 60.0)


@pytest.fixture
def pair():
    return image(blob()), image(blob(centre=(17, 15)))


def elastix_map() -> dict:
    """A valid translation map that runs on elastix."""
    return {"Registration": ["MultiResolutionRegistration"], "Metric": ["AdvancedMeanSquares"],
            "Transform": ["TranslationTransform"], "Optimizer": ["AdaptiveStochasticGradientDescent"],
            "MaximumNumberOfIterations": ["5"], "NumberOfResolutions": ["1"], "ImageSampler": ["Full"]}


def two_level_impact_map(**changes) -> dict:
    """A valid two-level Impact map (Static MIND-SSC 2D); ``changes`` override keys."""
    pmap = impact_parameters(NumberOfResolutions=2)
    for key, values in MIND_SSC_2D_STATIC.items():
        if key.endswith("0"):
            pmap[key[:-1] + "1"] = list(values)
    pmap.update({k: [str(x) for x in (v if isinstance(v, list) else [v])] for k, v in changes.items()})
    return pmap


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if any stage starts (bridge engine or itk-elastix)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a stage ran although the request is invalid")

    monkeypatch.setattr(registration, "run_stage", refuse)
    monkeypatch.setattr(itk_elastix, "run_itk_elastix", refuse)


def refused(error, match, pair, maps, tmp_path, **keywords):
    """Run the API into an empty folder; assert ``error`` matching ``match`` and an untouched folder."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    with pytest.raises(error, match=match):
        api.elastix_registration_method(*pair, parameter_object=maps, output_directory=str(out), log_to_file=True,
                                        **keywords)
    assert list(out.iterdir()) == []


# ------------------------------------------------------------------------------------------------------------------
# Why 3: invalid values are refused, as elastix refuses them (or where it silently changes them)


def test_negative_iteration_count_is_refused(pair, tmp_path, no_work):
    refused(ParameterError, r"'MaximumNumberOfIterations', entry 0: cannot convert value '-3'; expected an unsigned",
            pair, [impact_parameters(MaximumNumberOfIterations=-3)], tmp_path)


def test_negative_count_in_an_elastix_map_is_refused_too(pair, tmp_path, no_work):
    refused(ParameterError, r"NumberOfSpatialSamples", pair, [dict(elastix_map(), NumberOfSpatialSamples=["-5"])],
            tmp_path)


def test_subset_features_zero_is_an_error_not_clamped(pair, tmp_path, no_work):
    refused(ImpactParameterError, r"ImpactSubsetFeatures0 \(level 0\): entry 0 '0' must be >= 1", pair,
            [impact_parameters(ImpactSubsetFeatures0=0)], tmp_path)


@pytest.mark.parametrize("key", ["ImagePyramidSchedule", "FixedImagePyramidSmoothingSchedule"])
def test_too_short_pyramid_schedule_is_an_error(pair, tmp_path, no_work, key):
    # 2 levels × 2D need 4 entries; elastix would warn and use its default schedule.
    refused(ParameterError, rf"\({key} \.\.\.\) has 2 values.*NumberOfResolutions 2 × dimension 2 = 4", pair,
            [two_level_impact_map(**{key: ["2", "1"]})], tmp_path)


def test_too_long_pyramid_schedule_is_a_warning(pair, caplog):
    from elastix_bridge.core.parameters import ParameterMap
    from elastix_bridge.validation import validate_request

    with caplog.at_level(logging.WARNING, logger="elastix_bridge"):
        validate_request([ParameterMap(two_level_impact_map(ImagePyramidSchedule=["2"] * 6))], ["bridge"], *pair)
    assert "(ImagePyramidSchedule ...) has 6 values; only the first 4" in caplog.text


def test_image_dimension_in_the_map_must_match_the_images(pair, tmp_path, no_work):
    refused(ParameterError, r"\(FixedImageDimension 3\) but the images are 2D", pair,
            [impact_parameters(FixedImageDimension=3)], tmp_path)


def test_negative_threads_are_refused_in_the_api(pair, tmp_path, no_work):
    refused(ValueError, r"number_of_threads -1: the number of threads must be an integer >= 1", pair,
            [impact_parameters()], tmp_path, number_of_threads=-1)


def test_unknown_impact_key_is_an_error_with_suggestions(pair, tmp_path, no_work):
    refused(ParameterError, r"\(ImpactFooBar0 \.\.\.\): it is not an IMPACT parameter\. Known IMPACT keys", pair,
            [impact_parameters(ImpactFooBar0=1)], tmp_path)
    refused(ParameterError, r"\(ImpactPatchSiz0 \.\.\.\).*Did you mean 'ImpactPatchSize0'", pair,
            [impact_parameters(ImpactPatchSiz0=[5, 5])], tmp_path)


def test_unknown_other_key_is_a_warning_as_in_elastix(pair, caplog):
    from elastix_bridge.validation import validate_request
    from elastix_bridge.core.parameters import ParameterMap

    with caplog.at_level(logging.WARNING, logger="elastix_bridge"):
        validate_request([ParameterMap(impact_parameters(MaximumNumberOfIteration=5))], ["bridge"], *pair)
    assert "(MaximumNumberOfIteration ...) is not a parameter" in caplog.text
    assert "Did you mean 'MaximumNumberOfIterations'" in caplog.text


def test_point_set_keyword_with_an_impact_map_is_refused_by_name(pair, tmp_path, no_work):
    refused(ValueError, r"fixed_point_set_file_name: not supported when a stage runs on the bridge engine", pair,
            [impact_parameters()], tmp_path, fixed_point_set_file_name="points.txt")


def test_point_set_file_through_the_dropin_is_refused_by_name(pair, tmp_path, no_work):
    parameter_object = itk.ParameterObject.New()
    parameter_object.AddParameterMap(impact_parameters())
    with pytest.raises(ValueError, match="fixed_point_set_file_name: not supported"):
        itk.elastix_registration_method(*pair, parameter_object=parameter_object,
                                        fixed_point_set_file_name=str(tmp_path / "points.txt"))


# ------------------------------------------------------------------------------------------------------------------
# Why 4: every map of a chain is checked before stage 0 runs, the result-writing keys included


def test_bad_distance_in_a_later_map_stops_before_stage_0(pair, tmp_path, no_work):
    refused(ImpactParameterError, r"parameter map 1: ImpactDistance1 \(level 1\): entry 0 'L3' is not a known "
                                  r"distance", pair, [elastix_map(), two_level_impact_map(ImpactDistance1="L3")],
            tmp_path)


@pytest.mark.parametrize("key, value, match", [
    ("ResultImagePixelType", "shrot", r"\(ResultImagePixelType \"shrot\"\) is not an elastix pixel type\. Did you "
                                      r"mean 'short'"),
    ("WriteResultImage", "yes", r"parameter 'WriteResultImage', entry 0: cannot convert value 'yes'; expected a boolean"),
    ("ResultImageFormat", "jpeg2", r"\(ResultImageFormat \"jpeg2\"\): ITK cannot write 'result\.jpeg2'"),
])
def test_result_keys_of_a_later_map_are_checked_up_front(pair, tmp_path, no_work, key, value, match):
    refused(ParameterError, "parameter map 1: " + match, pair, [elastix_map(), impact_parameters(**{key: value})],
            tmp_path)


def test_misspelled_component_is_named_with_did_you_mean(pair, tmp_path, no_work):
    # Without "Impact" the map would go to elastix, which says only "Internal elastix error".
    refused(UnsupportedComponentError, r"\(Metric \"Impakt\"\): 'Impakt' is not an elastix Metric component\. "
                                       r"Did you mean 'Impact'\?", pair, [impact_parameters(Metric="Impakt")],
            tmp_path)


def test_misspelled_component_through_the_dropin_is_named(pair, no_work):
    parameter_object = itk.ParameterObject.New()
    parameter_object.AddParameterMap(dict(elastix_map(), Metric=["AdvancedMeanSqares"]))
    with pytest.raises(UnsupportedComponentError, match=r"parameter map 0: \(Metric \"AdvancedMeanSqares\"\).*Did you "
                                                        r"mean 'AdvancedMeanSquares'"):
        itk.elastix_registration_method(*pair, parameter_object=parameter_object)


# ------------------------------------------------------------------------------------------------------------------
# Why 5: images and masks


def test_3d_mask_on_a_2d_image_is_named(pair, tmp_path, no_work):
    mask = itk.image_from_array(np.ones((4, 32, 32), np.uint8))
    refused(InputImageError, r"the fixed mask is 3D but the fixed image is 2D", pair, [impact_parameters()], tmp_path,
            fixed_mask=mask)


@pytest.mark.parametrize("which", ["fixed", "moving"])
def test_empty_mask_is_named(pair, tmp_path, no_work, which):
    mask = itk.image_from_array(np.zeros((32, 32), np.uint8))
    refused(InputImageError, rf"the {which} mask is empty \(no non-zero pixel\)", pair, [impact_parameters()],
            tmp_path, **{f"{which}_mask": mask})


@pytest.mark.parametrize("bad, name", [(np.nan, "NaN"), (np.inf, "Inf")])
def test_non_finite_pixels_are_named_with_the_first_voxel(tmp_path, no_work, bad, name):
    array = blob()
    array[20, 7] = bad  # numpy (y, x): ITK index (7, 20)
    array[25, 3] = bad
    moving = image(array, spacing=(2.0, 0.5), origin=(10.0, -5.0))
    refused(InputImageError, rf"the moving image has 2 non-finite pixel\(s\) \({name} first at index \[7, 20\] "
                             rf"\(x, y, z\), physical point \[24\.0, 5\.0\] mm\)", (image(blob()), moving),
            [impact_parameters()], tmp_path)


def test_finite_check_is_vectorised_on_a_3d_volume():
    from elastix_bridge.validation.images import check_finite

    volume = itk.image_from_array(np.ones((96, 128, 128), np.float32))
    check_finite(volume, "the fixed image")  # finite: no error (one float64 sum, no Python loop)
    itk.array_view_from_image(volume)[95, 127, 126] = np.nan
    with pytest.raises(InputImageError, match=r"index \[126, 127, 95\]"):
        check_finite(volume, "the fixed image")


@pytest.mark.parametrize("value, fix", [("fixed.mha", r"itk\.imread\('fixed\.mha', itk\.F\)"),
                                        (np.zeros((8, 8), np.float32), r"itk\.image_from_array\(array\)")])
def test_path_or_array_instead_of_an_image_says_what_to_pass(pair, no_work, value, fix):
    with pytest.raises(TypeError, match=r"fixed_image is .*" + fix):
        api.elastix_registration_method(value, pair[1], parameter_object=[impact_parameters()])
    with pytest.raises(TypeError, match=fix):  # the drop-in, with or without Impact maps
        itk.elastix_registration_method(value, pair[1])


def test_model_returning_nan_is_named(plugin, pair, tmp_path):
    model = scripted_model(tmp_path, "nan.pt", """
        class Model(nn.Module):
            def forward(self, x) -> List[torch.Tensor]:
                return [x * 0 + float("nan")]
    """)
    pmap = impact_parameters(ImpactModelsPath0=str(model), ImpactSubsetFeatures0=1)
    with pytest.raises(elastix_bridge.runtime.loader.ImpactModelError,
                       match=r"level 0, .*nan\.pt', layer 0: the output contains NaN \(first at element \[0, 0, 0, 0\]"):
        api.elastix_registration_method(*pair, parameter_object=[pmap])


# ------------------------------------------------------------------------------------------------------------------
# the command: named causes for its inputs, and no output folder for an invalid request


@pytest.fixture
def files(tmp_path):
    for name, array in (("fixed.mha", blob()), ("moving.mha", blob(centre=(17, 15)))):
        itk.imwrite(image(array), str(tmp_path / name))
    return tmp_path


def command(capsys, files, *params, **flags):
    args = {"f": files / "fixed.mha", "m": files / "moving.mha", "out": files / "out", "loglevel": "off", **flags}
    argv = [part for flag, value in args.items() for part in (f"-{flag}", str(value))]
    return run(capsys, *argv, *[part for p in params for part in ("-p", str(p))])


def test_command_refuses_negative_threads(capsys, files, no_work):
    params = write_parameter_file(files / "p.txt", impact_parameters())
    code, _, err = command(capsys, files, params, threads=-1)
    assert_one_line_error(code, err, "-threads -1: the number of threads must be an integer >= 1")
    assert not (files / "out").exists()


def test_command_names_the_bad_map_file_before_reading_images(capsys, files, no_work, monkeypatch):
    monkeypatch.setattr("elastix_bridge.core.image_io.read_image", lambda *a: pytest.fail("an image was read"))
    good = write_parameter_file(files / "affine.txt", elastix_map())
    bad = write_parameter_file(files / "impact.txt", impact_parameters(MaximumNumberOfIterations=-3))
    code, _, err = command(capsys, files, good, bad)
    assert_one_line_error(code, err, f"parameter map 1 (-p {bad})", "'MaximumNumberOfIterations'", "'-3'")
    assert not (files / "out").exists()


def test_command_names_line_of_a_binary_parameter_file(capsys, files, no_work):
    params = files / "p.txt"
    params.write_bytes(b'(Metric "Impact")\n(NumberOfResolutions 1)\n\x89PNG\r\n\x1a\n\x00\x00')
    code, _, err = command(capsys, files, params)
    assert_one_line_error(code, err, f"cannot parse parameter file {params}, line 3: byte 0x89", "not UTF-8 text")


def test_command_names_the_missing_raw_file_of_an_mhd(capsys, files, no_work):
    itk.imwrite(image(blob()), str(files / "fixed.mhd"))
    (files / "fixed.raw").unlink()
    params = write_parameter_file(files / "p.txt", impact_parameters())
    code, _, err = command(capsys, files, params, f=files / "fixed.mhd")
    assert_one_line_error(code, err, f"fixed image (-f) {files / 'fixed.mhd'}: its pixel data file "
                                     f"{files / 'fixed.raw'} (ElementDataFile in the header) does not exist")
    assert not (files / "out").exists()


def test_shipped_parameter_files_pass_validation_without_warnings(caplog):
    from elastix_bridge.core.parameters import read_parameter_file
    from elastix_bridge.validation import validate_maps

    folder = Path(__file__).resolve().parents[1] / "parameter_files"
    with caplog.at_level(logging.WARNING, logger="elastix_bridge"):
        for path in sorted(folder.glob("*.txt")):
            maps = read_parameter_file(path)
            dimension = 3 if "3d" in path.name or "affine" in path.name else 2
            if "totalseg" in path.name:  # shipped with a placeholder model path, to be replaced by the user's
                with pytest.raises(elastix_bridge.runtime.loader.ImpactModelError, match="model file not found"):
                    validate_maps(maps, dimension=dimension)
            else:
                validate_maps(maps, dimension=dimension)
    assert caplog.text == ""


# ---------------------------------------------------------------------------------------------
# Found by re-trying the bad inputs
# ---------------------------------------------------------------------------------------------


def test_a_count_beyond_elastixs_unsigned_integers_is_refused():
    from elastix_bridge.core.parameters import ParameterMap

    pmap = ParameterMap({"Metric": ["AdvancedMeanSquares"], "Optimizer": ["AdaptiveStochasticGradientDescent"],
                         "Transform": ["TranslationTransform"],
                         "MaximumNumberOfIterations": ["99999999999999999999999"]})
    with pytest.raises(ValueError, match=r"MaximumNumberOfIterations.*out of range.*18446744073709551615"):
        validation.validate_maps([pmap])


@pytest.mark.parametrize("text", ["", "// only a comment\n\n// and another\n"])
def test_an_empty_parameter_file_is_named_before_any_work(text, tmp_path, capsys):
    from elastix_bridge import cli

    empty = tmp_path / "empty.txt"
    empty.write_text(text)
    image = itk.image_from_array(np.ones((8, 8), np.float32))
    itk.imwrite(image, str(tmp_path / "f.mha"))
    code = cli.main(["-f", str(tmp_path / "f.mha"), "-m", str(tmp_path / "f.mha"), "-p", str(empty),
                     "-out", str(tmp_path / "out"), "-loglevel", "off"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "no (Metric ...), (Optimizer ...), (Transform ...) line" in err and str(empty) in err
    assert not (tmp_path / "out").exists()


def test_a_mask_outside_its_image_is_named_with_both_extents():
    angle = np.deg2rad(25.0)
    direction = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    image = itk.image_from_array(np.random.default_rng(1).random((20, 30)).astype(np.float32))
    image.SetSpacing([2.0, 1.0])
    image.SetDirection(itk.matrix_from_array(direction))
    inside = np.zeros((20, 30), np.uint8)
    inside[4:9, 12:15] = 1
    mask = itk.image_from_array(inside)
    mask.CopyInformation(image)
    assert validation.validate_images(image, image, mask, mask) == 2
    far = itk.image_from_array(inside)
    far.CopyInformation(image)
    far.SetOrigin([400.0, -300.0])
    with pytest.raises(validation.InputImageError, match=r"the moving mask's non-zero region \(physical x, y from .* "
                                                         r"lies entirely outside the moving image"):
        validation.validate_images(image, image, mask, far)


def test_an_image_with_zero_spacing_is_named(tmp_path):
    from elastix_bridge.core.image_io import read_image

    itk.imwrite(itk.image_from_array(np.ones((4, 5), np.float32)), str(tmp_path / "a.mhd"))
    header = (tmp_path / "a.mhd").read_text()
    (tmp_path / "a.mhd").write_text(re.sub(r"ElementSpacing = .*", "ElementSpacing = 0 2", header))
    with pytest.raises(ValueError) as error:
        read_image(tmp_path / "a.mhd", "fixed image (-f)")
    message = str(error.value)
    assert message.startswith(f"fixed image (-f) {tmp_path / 'a.mhd'} cannot be read: Zero-valued spacing")
    assert "voxel size of 0 mm" in message and ".hxx" not in message


def test_the_command_logs_an_unknown_key_warning_once(tmp_path, capsys, caplog):
    image = itk.image_from_array(np.random.default_rng(2).random((24, 24)).astype(np.float32))
    itk.imwrite(image, str(tmp_path / "f.mha"))
    params = write_parameter_file(tmp_path / "p.txt", {
        "Metric": ["AdvancedMeanSquares"], "Optimizer": ["AdaptiveStochasticGradientDescent"],
        "Transform": ["TranslationTransform"], "MaximumNumberOfIterations": ["2"], "NumberOfResolutions": ["1"],
        "ImageSampler": ["Full"], "MaximumNumberOfIteration": ["5"]})
    with caplog.at_level(logging.WARNING, logger="elastix_bridge"):
        code = cli.main(["-f", str(tmp_path / "f.mha"), "-m", str(tmp_path / "f.mha"), "-p", str(params),
                         "-out", str(tmp_path / "out"), "-loglevel", "off"])
    assert code == 0, capsys.readouterr().err
    assert caplog.text.count("(MaximumNumberOfIteration ...) is not a parameter") == 1


def test_a_model_file_that_is_not_torchscript_is_named_before_any_work(pair, tmp_path, no_work):
    text = tmp_path / "model.pt"
    text.write_text("not a model\n")
    refused(elastix_bridge.runtime.loader.ImpactModelError, r"ImpactModelsPath0 '.*model.pt'.*: not a TorchScript or "
                              r"torch.export model \(both are zip archives", pair,
            [impact_parameters(ImpactModelsPath0=str(text))], tmp_path)


def test_a_gpu_asked_for_where_there_is_none_is_named_before_any_work(pair, tmp_path, no_work):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is usable here")
    refused(elastix_bridge.runtime.loader.ImpactUnavailableError, r"resolution level 0: ImpactGPU 0 asks for a GPU but CUDA is "
                                                          r"not available", pair, [impact_parameters(ImpactGPU=0)],
            tmp_path)
