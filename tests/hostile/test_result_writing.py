"""Result images through the command: every format x pixel type elastix accepts is written once, in
that pixel type, by elastix's C cast of the float result (clip to the type's range, truncate toward
zero; core/result_images.py), for elastix and bridge stages alike; and a failing elastix stage names
elastix's own cause in its one-line error.

The pair's intensities span -50..300, so a cast to ``unsigned char`` clips at both ends and a cast to
``short`` truncates negative fractions toward zero. Each cast result is compared with the float
result of the same (deterministic) registration.
"""
import tempfile
from pathlib import Path

import numpy as np
import pytest

from helpers.command import assert_one_line_error, run
from helpers.maps import elastix_map, impact_parameters, write_parameter_file

itk = pytest.importorskip("itk")

LOCK = ".elastix-bridge.lock"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A 2D pair with intensities from -50 to 300 (float32 .mha): {"fixed": path, "moving": path}."""
    folder = tmp_path_factory.mktemp("result-pair")
    y, x = np.mgrid[:36, :36].astype(np.float32)
    paths = {}
    for name, (cx, cy) in {"fixed": (18, 18), "moving": (20, 17)}.items():
        array = 350.0 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 60.0) - 50.3
        paths[name] = folder / f"{name}.mha"
        itk.imwrite(itk.image_from_array(array.astype(np.float32)), str(paths[name]))
    return paths


MAPS = {"elastix": lambda: dict(elastix_map(iterations=5), ImageSampler=["Full"]),
        "bridge": lambda: impact_parameters(MaximumNumberOfIterations=3)}


def _register(capsys, pair, out: Path, engine: str, fmt: str, pixel_type=None, **changes):
    """The command on ``pair`` with the engine's map in ``fmt`` / ``pixel_type``: (code, stdout, stderr);
    without ``capsys`` (a module fixture), the output is not captured."""
    pmap = dict(MAPS[engine](), ResultImageFormat=[fmt], **changes)
    if pixel_type is not None:
        pmap["ResultImagePixelType"] = [pixel_type]
    params = write_parameter_file(out.parent / f"{out.name}.txt", pmap)
    argv = ["-f", pair["fixed"], "-m", pair["moving"], "-p", params, "-out", out, "-loglevel", "off", "-threads", "1"]
    if capsys is None:
        from elastix_bridge import cli

        return cli.main([str(a) for a in argv]), "", "(not captured)"
    return run(capsys, *argv)


@pytest.fixture(scope="module")
def float_results(pair, tmp_path_factory):
    """The float result of each engine's registration (the reference every cast is compared with)."""
    results = {}
    for engine in MAPS:
        out = tmp_path_factory.mktemp(f"float-{engine}") / "out"
        code, _, err = _register(None, pair, out, engine, "mha", "float")
        assert code == 0, err
        results[engine] = itk.array_from_image(itk.imread(str(out / "result.0.mha")))
    return results


def _c_cast(values: np.ndarray, dtype) -> np.ndarray:
    """elastix's C cast of float results: clip to the type's range, truncate toward zero."""
    info = np.iinfo(dtype)
    return np.trunc(np.clip(values.astype(np.float64), info.min, info.max)).astype(dtype)


# (engine, format, ResultImagePixelType or None for the command's default "short", numpy type, lossless)
ACCEPTED = [("elastix", "png", "unsigned char", np.uint8, True), ("bridge", "png", "unsigned char", np.uint8, True),
            ("elastix", "bmp", "unsigned char", np.uint8, True), ("bridge", "jpg", "unsigned char", np.uint8, False),
            ("elastix", "png", "unsigned short", np.uint16, True), ("elastix", "mhd", None, np.int16, True),
            ("bridge", "nii", "int", np.int32, True), ("bridge", "mha", None, np.int16, True)]


@pytest.mark.parametrize("engine, fmt, pixel_type, dtype, lossless", ACCEPTED,
                         ids=[f"{e}-{f}-{p or 'default'}" for e, f, p, _, _ in ACCEPTED])
def test_each_accepted_format_and_pixel_type_is_written_cast(capsys, pair, float_results, tmp_path, engine, fmt,
                                                              pixel_type, dtype, lossless):
    out = tmp_path / "out"
    code, stdout, err = _register(capsys, pair, out, engine, fmt, pixel_type)
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["IterationInfo.0.R0.txt", "TransformParameters.0.txt", "elastix.log", f"result.0.{fmt}"] + (
        ["result.0.raw"] if fmt == "mhd" else []), names  # written once: no temporary or float copy beside it
    pixel = itk.ctype(_itk_name(dtype))
    written = itk.array_from_image(itk.imread(str(out / f"result.0.{fmt}"), pixel))
    expected = _c_cast(float_results[engine], dtype)
    assert written.shape == expected.shape
    if fmt in ("mhd", "mha", "nii"):  # the file's own pixel type, not only the values
        assert type(itk.imread(str(out / f"result.0.{fmt}"))) is itk.Image[pixel, 2]
    if lossless:
        np.testing.assert_array_equal(written, expected)
    else:  # jpg is lossy: close, and inside the type's range after clipping
        assert np.abs(written.astype(float) - expected).mean() < 8


def _itk_name(dtype) -> str:
    return {np.uint8: "unsigned char", np.uint16: "unsigned short", np.int16: "short", np.int32: "int"}[dtype]


UNWRAPPED = [("elastix", "mha", "char", np.int8, "MET_CHAR"), ("bridge", "mhd", "long", np.int64, "MET_LONG_LONG")]


@pytest.mark.parametrize("engine, fmt, pixel_type, dtype, element_type", UNWRAPPED,
                         ids=[f"{e}-{f}-{p}" for e, f, p, _, _ in UNWRAPPED])
def test_types_itk_python_cannot_hold_are_written_as_metaimage(capsys, pair, float_results, tmp_path, engine, fmt,
                                                               pixel_type, dtype, element_type):
    """char and long (which ITK's Python wrapping has no image for) are written in MetaImage, read back here raw."""
    out = tmp_path / "out"
    code, _, err = _register(capsys, pair, out, engine, fmt, pixel_type)
    assert code == 0, err
    text = (out / f"result.0.{fmt}").read_bytes()
    header, _, data = text.partition(b"ElementDataFile = LOCAL\n")
    assert f"ElementType = {element_type}".encode() in header
    assert b"DimSize = 36 36" in header
    if fmt == "mhd":
        assert b"ElementDataFile = result.0.raw" in text
        data = (out / "result.0.raw").read_bytes()
    expected = _c_cast(float_results[engine], dtype)
    np.testing.assert_array_equal(np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(36, 36),
                                  expected)


def test_a_format_that_cannot_hold_the_pixel_type_fails_before_work_and_keeps_nothing(capsys, pair, tmp_path):
    """png with short: refused with the cause and the fix; the TransformParameters are never written."""
    out = tmp_path / "out"
    code, _, err = _register(capsys, pair, out, "elastix", "png", "short")
    assert_one_line_error(code, err, "ResultImagePixelType", "short", "png", "unsigned char")
    left = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    assert not [n for n in left if n != "elastix.log"], left
    assert LOCK not in left


def test_a_failing_elastix_stage_names_elastix_cause_in_the_error(capsys, pair, tmp_path):
    """Images that do not overlap: elastix's "Too many samples map outside moving image buffer" is in the message,
    naming the stage and the map, not itk-elastix's "use LogToConsoleOn() or LogToFileOn()"."""
    moving = itk.imread(str(pair["moving"]))
    moving.SetOrigin([500.0, 500.0])
    far = tmp_path / "far.mha"
    itk.imwrite(moving, str(far))
    out = tmp_path / "out"
    pmap = dict(MAPS["elastix"](), AutomaticTransformInitialization=["false"])
    params = write_parameter_file(tmp_path / "p.txt", pmap)
    code, _, err = run(capsys, "-f", pair["fixed"], "-m", far, "-p", params, "-out", out, "-loglevel", "off")
    line = assert_one_line_error(code, err, "stage 0 (elastix, parameter map 0)", "outside moving image buffer")
    assert "LogToConsoleOn" not in line
    assert sorted(p.name for p in out.iterdir()) == ["elastix.log"]  # the log keeps elastix's full account
    assert "Too many samples map outside moving image buffer" in (out / "elastix.log").read_text()


def test_the_single_call_without_an_output_folder_names_the_cause_and_leaves_no_temporary_folder(pair, tmp_path,
                                                                                                 monkeypatch):
    from elastix_bridge.api import elastix_registration_method
    from elastix_bridge.runtime.itk_elastix import ElastixStageError

    fixed = itk.imread(str(pair["fixed"]), itk.F)
    moving = itk.imread(str(pair["moving"]), itk.F)
    moving.SetOrigin([500.0, 500.0])
    temporary = tmp_path / "tmp"  # elastix's log goes to a temporary folder: here, to see that it is removed
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    with pytest.raises(ElastixStageError, match="outside moving image buffer") as caught:
        elastix_registration_method(fixed, moving, parameter_object=[dict(MAPS["elastix"](),
                                                                          AutomaticTransformInitialization=["false"])])
    assert "LogToConsoleOn" not in str(caught.value)
    assert list(temporary.iterdir()) == []
