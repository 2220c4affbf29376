"""Hostile round 3, inputs (docs/bad_input.md): bad cases found in the third round. Each is refused before any work
with one line naming the cause and the fix; nothing is written or removed, and no lock is left. In-process."""
from __future__ import annotations

import os

import numpy as np
import pytest

from helpers.command import assert_one_line_error, registration_args, run
from helpers.maps import elastix_map, impact_parameters, write_parameter_file

itk = pytest.importorskip("itk")


def assert_nothing_written(out):
    names = sorted(os.listdir(out)) if os.path.exists(out) else []
    assert ".elastix-bridge.lock" not in names
    assert names == [], names


def spacing_header(folder, inputs, spacing: str):
    """A .mhd header over the fixed image's pixels, with ``ElementSpacing = spacing``."""
    itk.array_from_image(itk.imread(str(inputs["fixed"]), itk.F)).astype("<f4").tofile(folder / "f.raw")
    path = folder / "f.mhd"
    path.write_text("ObjectType = Image\nNDims = 2\nDimSize = 36 36\nElementType = MET_FLOAT\n"
                    f"ElementSpacing = {spacing}\nElementDataFile = f.raw\n")
    return path


# Case I14 / X1: a zero or non-finite spacing was blamed on ImpactVoxelSize (the header checks ran first) and
# `plan` said it fits; every front end now gives the image read's words.
@pytest.mark.parametrize("spacing", ["1 0", "1 nan", "1 inf"])
@pytest.mark.parametrize("command", ["impact", "elastix", "plan"])
def test_a_zero_or_non_finite_header_spacing_is_named_by_every_front_end(capsys, inputs, tmp_path, spacing, command):
    fixed = spacing_header(tmp_path, inputs, spacing)
    out = tmp_path / "out"
    params = write_parameter_file(tmp_path / "p.txt", elastix_map() if command == "elastix" else impact_parameters())
    argv = (["plan", "-f", fixed, "-m", inputs["moving"], "-p", params] if command == "plan"
            else registration_args(inputs, out, params=params, f=fixed))
    code, _, err = run(capsys, *argv)
    line = assert_one_line_error(code, err, f"fixed image (-f) {fixed} cannot be read", "spacing",
                                 "set the spacing, e.g. ElementSpacing in a .mhd")
    assert "ImpactVoxelSize" not in line
    assert_nothing_written(out)
    assert sorted(os.listdir(tmp_path)) == ["f.mhd", "f.raw", "p.txt"]


def test_a_negative_header_spacing_is_read_as_itk_reads_it(capsys, inputs, tmp_path):
    """ITK's reader takes a negative spacing as its magnitude along the reversed axis; so does the header reader."""
    from elastix_bridge.core.image_io import read_image, read_image_geometry

    fixed = spacing_header(tmp_path, inputs, "-1.2 1")
    geometry, image = read_image_geometry(fixed), read_image(fixed)
    assert np.allclose(geometry.spacing, image.GetSpacing())
    assert np.allclose(geometry.direction, itk.array_from_matrix(image.GetDirection()))
    code, stdout, err = run(capsys, "plan", "-f", fixed, "-m", inputs["moving"], "-p", inputs["params"])
    assert code == 0, err
    assert stdout.splitlines()[0] == "fixed image  36x36 voxels, spacing 1.2 1 mm"


# Case CH13 / CH14: internal pixel types itk-elastix's build does not run failed after work with ITK's raw text.
@pytest.mark.parametrize("name,pmap,key,value", [
    ("impact-char", impact_parameters(FixedInternalImagePixelType="short", MovingInternalImagePixelType="char"),
     "FixedInternalImagePixelType", "short"),
    ("elastix-double", {**elastix_map(), "FixedInternalImagePixelType": ["double"]},
     "FixedInternalImagePixelType", "double"),
    ("elastix-moving-uchar", {**elastix_map(), "MovingInternalImagePixelType": ["unsigned char"]},
     "MovingInternalImagePixelType", "unsigned char"),
], ids=lambda v: v if isinstance(v, str) and "-" in v else "")
def test_an_internal_pixel_type_elastix_was_not_built_for_is_refused_before_work(capsys, inputs, tmp_path, name,
                                                                                 pmap, key, value):
    params = write_parameter_file(tmp_path / "p.txt", pmap)
    out = tmp_path / "out"
    code, _, err = run(capsys, *registration_args(inputs, out, params=params))
    line = assert_one_line_error(code, err, f"-p {params}", f'({key} "{value}")', "2D internal pixel type(s) float",
                                 "ELASTIX_IMAGE_2D_PIXELTYPES", '"float") or leave the key out')
    assert "/work/build" not in line and "ITK ERROR" not in line
    assert_nothing_written(out)


def test_internal_pixel_types_follow_the_builds_table_in_3d():
    from elastix_bridge.core.parameters import ParameterMap
    from elastix_bridge.validation import ParameterError, validate_maps

    def pmap(fixed, moving):
        return ParameterMap({**elastix_map(), "FixedInternalImagePixelType": [fixed],
                             "MovingInternalImagePixelType": [moving]})

    validate_maps([pmap("short", "short")], ["elastix"], dimension=3, warn=False)
    with pytest.raises(ParameterError, match=r"differ: .* give both the same type"):
        validate_maps([pmap("short", "float")], ["elastix"], dimension=3, warn=False)
    with pytest.raises(ParameterError, match=r"3D internal pixel type\(s\) float, short only"):
        validate_maps([pmap("int", "int")], ["elastix"], dimension=3, warn=False)


# Case L04: `plan --engine elastix` with an Impact map said "fits" while the registration refuses it.
def test_plan_refuses_what_the_registration_refuses(capsys, inputs, tmp_path, monkeypatch):
    from elastix_bridge.runtime import native_plugins

    monkeypatch.delenv(native_plugins.NATIVE_PLUGIN_ENV, raising=False)
    if native_plugins.native_plugin_offered():
        pytest.skip("a native IMPACT plugin is offered here")
    out = tmp_path / "out"
    code, _, run_err = run(capsys, *registration_args(inputs, out), "--engine", "elastix")
    needles = ('(Metric "Impact") cannot run on the elastix engine here', "--engine auto")
    assert_one_line_error(code, run_err, *needles)
    code, _, plan_err = run(capsys, "plan", "-f", inputs["fixed"], "-m", inputs["moving"], "-p", inputs["params"],
                            "--engine", "elastix")
    assert_one_line_error(code, plan_err, *needles)
    assert plan_err == run_err
    assert_nothing_written(out)


def test_the_python_plan_refuses_an_impact_map_on_the_elastix_engine(inputs, monkeypatch):
    from elastix_bridge.engine.components import UnsupportedComponentError
    from elastix_bridge.plan import plan_registration
    from elastix_bridge.runtime import native_plugins

    monkeypatch.delenv(native_plugins.NATIVE_PLUGIN_ENV, raising=False)
    if native_plugins.native_plugin_offered():
        pytest.skip("a native IMPACT plugin is offered here")
    with pytest.raises(UnsupportedComponentError, match=r'\(Metric "Impact"\) cannot run on the elastix engine here'):
        plan_registration(inputs["fixed"], inputs["moving"], impact_parameters(), engine="elastix")
    assert plan_registration(inputs["fixed"], inputs["moving"], impact_parameters(), engine="auto").stages
