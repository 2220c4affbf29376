"""Hostile round 2, inputs (docs/bad_input.md): paths that are no file, 4D images, counts of 0, parameter objects and
keywords the API cannot run. Each case is refused before any work with one line naming the cause and the fix;
nothing is written or removed, and no lock is left. In-process only (no new interpreter)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from helpers.command import assert_one_line_error, registration_args, run
from helpers.maps import impact_parameters, write_parameter_file

itk = pytest.importorskip("itk")


def assert_nothing_written(out, before=()):
    names = sorted(os.listdir(out)) if os.path.exists(out) else []
    assert ".elastix-bridge.lock" not in names
    assert names == sorted(before), names


@pytest.fixture(scope="module")
def not_files(tmp_path_factory):
    """A folder and a device: they exist, so "does not exist" would mislead."""
    folder = tmp_path_factory.mktemp("a-folder")
    return {"folder": str(folder), "device": os.devnull, "empty": ""}


PATH_CASES = [(flag, kind, needle)
              for flag in ("p", "f", "m", "fMask", "t0")
              for kind, needle in (("folder", "is a folder, not a file"), ("device", "is not a regular file"),
                                   ("empty", "is empty (an unset shell variable?)"))]


@pytest.mark.parametrize("flag,kind,needle", PATH_CASES, ids=[f"{f}-{k}" for f, k, _ in PATH_CASES])
def test_a_path_that_is_no_file_is_named_for_what_it_is(capsys, inputs, not_files, tmp_path, flag, kind, needle):
    out = tmp_path / "out"
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    code, _, err = run(capsys, *registration_args(inputs, out, **{flag: not_files[kind]}))
    line = assert_one_line_error(code, err, f"(-{flag})", needle, "give")
    assert "does not exist" not in line
    assert_nothing_written(out)
    assert keep.read_text() == "mine"


@pytest.mark.parametrize("command", ["plan", "batch"])
@pytest.mark.parametrize("kind", ["folder", "device", "empty"])
def test_plan_and_batch_name_a_parameter_path_that_is_no_file(capsys, inputs, not_files, tmp_path, command, kind):
    if command == "batch":
        pytest.importorskip("dask.distributed")
    argv = (["plan", "-f", inputs["fixed"], "-m", inputs["moving"]] if command == "plan"
            else ["batch", tmp_path / "manifest.csv", "-out", tmp_path / "out"])
    code, _, err = run(capsys, *argv, "-p", not_files[kind])
    assert_one_line_error(code, err, "parameter file (-p)", "give")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind,needle", [("folder", "is a folder"), ("device", "is not a regular file"),
                                         ("empty", "is empty")])
def test_model_inspect_names_a_model_path_that_is_no_file(capsys, not_files, kind, needle):
    code, _, err = run(capsys, "model", "inspect", not_files[kind])
    assert_one_line_error(code, err, needle, "give an existing TorchScript file", "mind-ssc-2d")


@pytest.mark.parametrize("kind,needle", [("folder", "is a folder"), ("device", "is not a regular file")])
def test_an_impact_model_path_that_is_no_file_is_named_before_work(capsys, inputs, not_files, tmp_path, kind, needle):
    params = write_parameter_file(tmp_path / "p.txt", impact_parameters(ImpactModelsPath0=not_files[kind]))
    out = tmp_path / "out"
    code, _, err = run(capsys, *registration_args(inputs, out, p=params))
    assert_one_line_error(code, err, "ImpactModelsPath0", needle, "give an existing TorchScript file")
    assert_nothing_written(out)


@pytest.fixture(scope="module")
def images_4d(tmp_path_factory):
    folder = tmp_path_factory.mktemp("four-d")
    array = np.random.default_rng(0).random((3, 4, 40, 40)).astype(np.float32)  # t, z, y, x
    for name in ("f4d.mha", "m4d.mha"):
        itk.imwrite(itk.image_from_array(array), str(folder / name))
    return folder / "f4d.mha", folder / "m4d.mha"


@pytest.mark.parametrize("command", ["register", "plan"])
def test_4d_images_are_refused_naming_the_dimension(capsys, inputs, images_4d, tmp_path, command):
    fixed, moving = images_4d
    out = tmp_path / "out"
    argv = ["-f", fixed, "-m", moving, "-p", inputs["params"]]
    argv = ["plan", *argv] if command == "plan" else [*argv, "-out", out, "-loglevel", "off"]
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, "the images are 4D", "an Impact stage runs 2D and 3D images only",
                          "register each 3D volume")
    assert "index out of range" not in err
    assert_nothing_written(out)


def test_an_elastix_stage_on_4d_images_gets_axis_t_named_not_an_index_error():
    from elastix_bridge.core.geometry import ImageGeometry
    from elastix_bridge.core.parameters import ParameterMap
    from elastix_bridge.validation import ParameterError, check_pyramid_sizes

    geometry = ImageGeometry((40, 40, 4, 3), (1.0,) * 4, (0.0,) * 4, np.eye(4))
    with pytest.raises(ParameterError, match="3 voxels along t"):
        check_pyramid_sizes(ParameterMap.from_dict({"NumberOfResolutions": ["1"]}), 1, (geometry, geometry))


@pytest.mark.parametrize("flag,value", [("--channels", "0"), ("--layers", "-1"), ("--layers", "two")])
def test_model_inspect_counts_are_positive_integers(capsys, flag, value):
    from elastix_bridge import cli

    with pytest.raises(SystemExit) as caught:
        cli.main(["model", "inspect", "mind-ssc-2d", flag, value])
    err = capsys.readouterr().err
    assert caught.value.code == 2
    assert f"argument {flag}: {value!r} is not a count; give a whole number >= 1" in err


@pytest.fixture(scope="module")
def small_pair():
    rng = np.random.default_rng(0)
    return tuple(itk.image_from_array(rng.random((36, 36)).astype(np.float32)) for _ in range(2))


def _generator():
    yield impact_parameters()


API_CASES = [
    (dict(parameter_object=[]), ValueError, ["parameter_object is an empty list", "pass at least one map", "None"]),
    (dict(parameter_object=()), ValueError, ["empty tuple"]),
    (dict(parameter_object="params.txt"), TypeError, ["'params.txt' is a file name", "po.ReadParameterFile("]),
    (dict(parameter_object=42), TypeError, ["of type int", "pass an itk.ParameterObject"]),
    (dict(parameter_object=[impact_parameters()], fixed_maks=None), TypeError,
     ["unknown keyword argument 'fixed_maks'", "did you mean 'fixed_mask'?"]),
    (dict(parameter_object=[impact_parameters()], engien="bridge"), TypeError, ["'engien'", "did you mean 'engine'?"]),
    (dict(parameter_object=impact_parameters(), initial_transform_parameter_object=[]), ValueError,
     ["initial_transform_parameter_object is an empty list", "to leave it out"]),
]


@pytest.mark.parametrize("kwargs,error,needles", API_CASES, ids=["empty-list", "empty-tuple", "file-name", "int",
                                                                   "typo-fixed_maks", "typo-engien", "empty-initial"])
def test_api_refuses_bad_parameter_objects_and_keywords_before_work(monkeypatch, small_pair, tmp_path, kwargs, error,
                                                                   needles):
    import elastix_bridge.api as api
    from elastix_bridge.engine import registration
    from elastix_bridge.runtime import itk_elastix

    def refuse(*args, **kw):
        raise AssertionError("a stage ran")

    monkeypatch.setattr(registration, "run_stage", refuse)  # no bridge stage
    monkeypatch.setattr(itk_elastix, "run_itk_elastix", refuse)  # no elastix stage
    with pytest.raises(error) as caught:
        api.elastix_registration_method(*small_pair, output_directory=str(tmp_path), **kwargs)
    for needle in needles:
        assert needle in str(caught.value)
    assert "\n" not in str(caught.value)
    assert_nothing_written(tmp_path)


def test_api_takes_any_iterable_of_maps():
    from elastix_bridge.core.parameters import parameter_maps_from_object

    maps = parameter_maps_from_object(_generator())
    assert len(maps) == 1 and maps[0].get("Metric") == "Impact"
    assert len(parameter_maps_from_object(m for m in [impact_parameters(), impact_parameters()])) == 2


def test_an_empty_parameter_object_is_refused_before_work(tmp_path):
    """An itk.ParameterObject with no map: named before any work (itk-elastix fails inside its filter)."""
    import elastix_bridge

    itk = pytest.importorskip("itk")
    image = itk.image_from_array(np.zeros((16, 16), np.float32))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match="holds no parameter map.*AddParameterMap"):
        elastix_bridge.elastix_registration_method(image, image, parameter_object=itk.ParameterObject.New(),
                                                   output_directory=str(out))
    assert list(out.iterdir()) == []
