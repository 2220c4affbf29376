"""TransformParameters maps/files: layout, round trip, and agreement with itk-elastix's transformix."""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers.geometry import GEO2, GEO3  # noqa: E402
from elastix_bridge.engine.transforms.bspline import BSplineTransform, grid_for_level  # noqa: E402
from elastix_bridge.engine.transforms.base import TranslationTransform  # noqa: E402
from elastix_bridge.core.parameters import ParameterError, ParameterMap  # noqa: E402
from elastix_bridge.core.transform_io import (  # noqa: E402
    read_transform_parameter_file,
    to_parameter_object,
    transform_parameter_file_text,
    transform_parameter_map,
    write_transform_parameter_file,
)


@pytest.fixture(scope="module")
def itk():
    return pytest.importorskip("itk")


def _image(itk, geo):
    img = itk.image_from_array(np.zeros(geo.shape_zyx, np.float32))
    geo.apply_to_itk(img)
    return img


def _transformix_displacement(itk, geo, parameter_object):
    field = itk.transformix_deformation_field(_image(itk, geo), parameter_object)
    return itk.array_from_image(field).reshape(-1, geo.dimension).astype(np.float64)


def _our_displacement(transform, params, geo):
    pts = torch.as_tensor(geo.voxel_centres())
    return (transform.transform_points(params, pts) - pts).numpy()


# ----------------------------------------------------------------------------------------- map content


def test_full_map_keys_and_values():
    t = BSplineTransform(grid_for_level(GEO2, [6.0, 7.0], 1))
    p = torch.zeros(t.number_of_parameters, dtype=torch.float64)
    pm = transform_parameter_map(t, p, GEO2)
    expected_keys = {
        "Transform", "NumberOfParameters", "TransformParameters", "GridSize", "GridIndex", "GridSpacing",
        "GridOrigin", "GridDirection", "BSplineTransformSplineOrder", "UseCyclicTransform",
        "InitialTransformParameterFileName", "HowToCombineTransforms", "FixedImageDimension",
        "MovingImageDimension", "FixedInternalImagePixelType", "MovingInternalImagePixelType", "Size", "Index",
        "Spacing", "Origin", "Direction", "UseDirectionCosines", "ResampleInterpolator",
        "FinalBSplineInterpolationOrder", "Resampler", "DefaultPixelValue", "ResultImageFormat",
        "ResultImagePixelType", "CompressResultImage",
    }  # fmt: skip
    assert set(pm.keys()) == expected_keys
    assert all(pm.has(k) for k in expected_keys)
    assert pm["Size"] == ["37", "29"] and pm["Index"] == ["0", "0"] and pm["Spacing"] == ["0.8", "1.3"]
    assert pm["Origin"] == ["3", "-2"]
    c, s = math.cos(0.4), math.sin(0.4)
    assert [float(v) for v in pm["Direction"]] == [c, s, -s, c]
    assert pm["InitialTransformParameterFileName"] == ["NoInitialTransform"]
    assert pm["HowToCombineTransforms"] == ["Compose"]
    assert pm["DefaultPixelValue"] == ["0"] and pm["ResultImagePixelType"] == ["float32"]
    assert pm["FinalBSplineInterpolationOrder"] == ["3"] and pm["UseDirectionCosines"] == ["true"]
    assert pm["FixedInternalImagePixelType"] == ["float"] and pm["FixedImageDimension"] == ["2"]


def test_registration_map_values_are_used():
    reg = ParameterMap.from_dict(
        {"DefaultPixelValue": -1000.1, "FinalBSplineInterpolationOrder": 1, "ResultImageFormat": "nii",
         "CompressResultImage": "true", "ResampleInterpolator": "FinalBSplineInterpolator"}
    )  # fmt: skip
    t = TranslationTransform(2)
    pm = transform_parameter_map(
        t, torch.tensor([1.5, -2.0], dtype=torch.float64), GEO2, registration_map=reg, initial_transform_file="",
        how_to_combine="Add", result_pixel_type="short",
    )
    assert pm["DefaultPixelValue"] == ["-1000.1"]  # float32 shortest digits
    assert pm["FinalBSplineInterpolationOrder"] == ["1"] and pm["ResultImageFormat"] == ["nii"]
    assert pm["CompressResultImage"] == ["true"] and pm["ResultImagePixelType"] == ["short"]
    assert pm["InitialTransformParameterFileName"] == ["NoInitialTransform"]
    assert pm["HowToCombineTransforms"] == ["Add"]
    assert pm["TransformParameters"] == ["1.5", "-2"]
    nn = transform_parameter_map(t, t.parameters, GEO2, registration_map=ParameterMap.from_dict(
        {"ResampleInterpolator": "FinalNearestNeighborInterpolator", "DefaultPixelValue": []}))
    assert "FinalBSplineInterpolationOrder" not in nn and nn["DefaultPixelValue"] == ["0"]


def test_file_text_layout():
    t = TranslationTransform(2)
    pm = transform_parameter_map(t, torch.tensor([1e-7, 32.650000000000006], dtype=torch.float64), GEO2)
    text = transform_parameter_file_text(pm)
    blocks = text.split("\n\n")
    assert len(blocks) == 3
    assert blocks[1].startswith("// ResampleInterpolator specific\n")
    assert blocks[2] == (
        "// Resampler specific\n(CompressResultImage \"false\")\n(DefaultPixelValue 0)\n"
        "(Resampler \"DefaultResampler\")\n(ResultImageFormat \"mhd\")\n(ResultImagePixelType \"float32\")\n"
    )
    lines = blocks[0].splitlines()
    keys = [ln[1:].split(" ")[0] for ln in lines]
    assert keys == sorted(keys, key=lambda k: k.encode())
    assert "(TransformParameters 1e-7 32.650000000000006)" in lines
    assert '(Transform "TranslationTransform")' in lines and '(UseDirectionCosines "true")' in lines
    with pytest.raises(ParameterError, match="DefaultPixelValue"):
        transform_parameter_file_text({"DefaultPixelValue": []})


def test_write_is_atomic_and_validates(tmp_path):
    t = TranslationTransform(2)
    pm = transform_parameter_map(t, t.parameters, GEO2)
    out = write_transform_parameter_file(pm, tmp_path / "TransformParameters.0.txt")
    assert out.read_text() == transform_parameter_file_text(pm)
    with pytest.raises(ValueError, match=".txt"):
        write_transform_parameter_file(pm, tmp_path / "tp.dat")
    bad = pm.copy()
    bad.set("DefaultPixelValue", [])
    with pytest.raises(ParameterError):
        write_transform_parameter_file(bad, tmp_path / "TransformParameters.0.txt")
    assert out.read_text() == transform_parameter_file_text(pm)  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["TransformParameters.0.txt"]  # no temporaries left


# ----------------------------------------------------------------------------------------- transformix agreement


@pytest.mark.parametrize("order", [3, 2, 1])
@pytest.mark.parametrize("geo,spacing", [(GEO2, [6.0, 7.0]), (GEO3, [7.0, 8.0, 9.0])], ids=["2d", "3d"])
def test_bspline_matches_transformix(itk, tmp_path, geo, spacing, order):
    t = BSplineTransform(grid_for_level(geo, spacing, 1.0, order=order), order)
    g = torch.Generator().manual_seed(7)
    p = torch.randn(t.number_of_parameters, dtype=torch.float64, generator=g) * 2.0
    ours = _our_displacement(t, p, geo)
    assert np.abs(ours).max() > 1.0
    pm = transform_parameter_map(t, p, geo)
    # in memory
    ref = _transformix_displacement(itk, geo, to_parameter_object(pm))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    # through the written file, read back by elastix's parser
    path = write_transform_parameter_file(pm, tmp_path / "TransformParameters.0.txt")
    back = read_transform_parameter_file(path)
    assert back == pm
    ref_file = _transformix_displacement(itk, geo, to_parameter_object([back]))
    np.testing.assert_allclose(ours, ref_file, rtol=0, atol=1e-5)
    po = itk.ParameterObject.New()
    po.ReadParameterFile(str(path))
    np.testing.assert_allclose(ours, _transformix_displacement(itk, geo, po), rtol=0, atol=1e-5)


@pytest.mark.parametrize("geo", [GEO2, GEO3], ids=["2d", "3d"])
def test_translation_matches_transformix(itk, tmp_path, geo):
    t = TranslationTransform(geo.dimension)
    p = torch.tensor([1.25, -3.5, 0.75][: geo.dimension], dtype=torch.float64)
    ours = _our_displacement(t, p, geo)
    pm = transform_parameter_map(t, p, geo)
    np.testing.assert_allclose(ours, _transformix_displacement(itk, geo, to_parameter_object(pm)), atol=1e-5)
    path = write_transform_parameter_file(pm, tmp_path / "TransformParameters.0.txt")
    back = read_transform_parameter_file(path)
    assert back == pm
    np.testing.assert_allclose(ours, _transformix_displacement(itk, geo, to_parameter_object(back)), atol=1e-5)


def test_translation_then_bspline_chain_in_memory(itk):
    """Two maps = chain (Compose): T(x) = B(Tr(x)); the last map defines the output domain."""
    geo = GEO2
    tr = TranslationTransform(2)
    p_tr = torch.tensor([0.7, -0.4], dtype=torch.float64)
    b = BSplineTransform(grid_for_level(geo, [6.0, 7.0], 1.0))
    p_b = torch.randn(b.number_of_parameters, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    maps = [transform_parameter_map(tr, p_tr, geo), transform_parameter_map(b, p_b, geo)]
    pts = torch.as_tensor(geo.voxel_centres())
    ours = (b.transform_points(p_b, tr.transform_points(p_tr, pts)) - pts).numpy()
    np.testing.assert_allclose(ours, _transformix_displacement(itk, geo, to_parameter_object(maps)), atol=1e-5)
