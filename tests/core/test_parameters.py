"""Parameter maps: elastix lookup rules, conversions, number formatting, parsing via itk-elastix."""
from __future__ import annotations

import math

import numpy as np
import pytest

from elastix_bridge.core.parameters import (
    ParameterError,
    ParameterMap,
    UInt,
    as_parameter_map,
    format_number,
    format_numbers,
    is_number,
    parameter_maps_from_object,
    read_parameter_file,
)

# ----------------------------------------------------------------------------------------- lookup


def test_level_fallback_to_entry_zero():
    pm = ParameterMap.from_dict({"MaximumNumberOfIterations": [5, 7]})
    assert [pm.get("MaximumNumberOfIterations", level, type=UInt) for level in range(3)] == [5, 7, 5]


def test_prefix_override_and_default():
    pm = ParameterMap.from_dict({"NumberOfHistogramBins": [32, 16], "Metric1NumberOfHistogramBins": 64})
    assert pm.get("NumberOfHistogramBins", 1, type=int, prefix="Metric0") == 16
    assert pm.get("NumberOfHistogramBins", 0, type=int, prefix="Metric1") == 64
    assert pm.get("NumberOfHistogramBins", 1, type=int, prefix="Metric1") == 64  # prefix[0] beats name[level]
    assert pm.get("Missing", 2, default=8.0, type=float) == 8.0
    assert pm.get("Missing") is None
    pm2 = ParameterMap.from_dict({"X": [1, 2], "Metric1X": [10, 20, 30]})
    assert [pm2.get("X", lv, type=int, prefix="Metric1") for lv in range(4)] == [10, 20, 30, 10]


def test_empty_value_list_counts_as_absent():
    pm = ParameterMap({"DefaultPixelValue": [], "A": ["1"]})
    assert not pm.has("DefaultPixelValue") and "DefaultPixelValue" not in pm
    assert pm.get("DefaultPixelValue", default=0.0, type=float) == 0.0
    assert "A" in pm and pm["A"] == ["1"] and pm.values("A") == ["1"] and pm.values("B") == []


def test_reads_lists_elastix_lookup_order_and_impact_uses_it():
    """One lookup rule: ``get`` and IMPACT's per-level scalars (Mechanism A) read the same entry."""
    from elastix_bridge.core.impact_option_readers import read_scalar

    pm = ParameterMap({"ImpactGPU": ["0", "1"], "Metric1ImpactGPU": ["3"]})
    assert pm.reads("ImpactGPU", 1, "Metric1") == [("ImpactGPU", 0), ("ImpactGPU", 1), ("Metric1ImpactGPU", 0)]
    assert pm.reads("ImpactGPU", 2) == [("ImpactGPU", 0)]
    assert pm.reads("Absent", 1, "Metric1") == []
    for level in (0, 1, 2):
        for index in (0, 1):
            raw = read_scalar(pm.to_dict(), "ImpactGPU", level, index)
            assert raw[0] == pm.get("ImpactGPU", level, prefix=f"Metric{index}")


def test_get_entry_has_no_fallback():
    pm = ParameterMap.from_dict({"SampleGridSpacing": [2, 3]})
    assert pm.get_entry("SampleGridSpacing", 1, int) == 3
    assert pm.get_entry("SampleGridSpacing", 2, int, default=-1) == -1
    assert pm.get_entry("Nope", 0, int) is None


def test_get_list():
    pm = ParameterMap.from_dict({"ImagePyramidSchedule": [4, 4, 2, 2, 1, 1], "S": "a"})
    assert pm.get_list("ImagePyramidSchedule", type=UInt) == [4, 4, 2, 2, 1, 1]
    assert pm.get_list("ImagePyramidSchedule", 4, type=UInt) == [4, 4, 2, 2]
    with pytest.raises(ParameterError) as err:
        pm.get_list("ImagePyramidSchedule", 9, type=UInt)
    msg = str(err.value)
    assert "ImagePyramidSchedule" in msg and "9" in msg and "6" in msg
    assert pm.get_list("Missing") == []
    assert pm.get_list("Missing", 2, default=[1, 1]) == [1, 1]
    with pytest.raises(ParameterError, match="Missing"):
        pm.get_list("Missing", 2)


# ----------------------------------------------------------------------------------------- conversions


@pytest.mark.parametrize(
    "value,typ,expected",
    [
        ("true", bool, True),
        ("false", bool, False),
        ("2.000", UInt, 2),
        ("2.", UInt, 2),
        ("-3", int, -3),
        ("-3.0", int, -3),
        ("1e-7", float, 1e-7),
        ("-2.5E+3", float, -2500.0),
        (".5", float, 0.5),
        ("Infinity", float, math.inf),
        ("-Infinity", float, -math.inf),
        ("some text", str, "some text"),
    ],
)
def test_conversions_accepted(value, typ, expected):
    assert ParameterMap({"K": [value]}).get("K", type=typ) == expected


def test_nan_accepted():
    assert math.isnan(ParameterMap({"K": ["NaN"]}).get("K", type=float))


@pytest.mark.parametrize(
    "value,typ,form",
    [
        ("True", bool, "boolean"),
        ("1", bool, "boolean"),
        ("-2", UInt, "unsigned"),
        ("2.5", UInt, "unsigned"),
        ("2.5", int, "integer"),
        ("abc", int, "integer"),
        ("1.0f", float, "floating-point"),
        (" 1.0", float, "floating-point"),
        ("nan", float, "floating-point"),
        ("inf", float, "floating-point"),
        ("1_000", float, "floating-point"),
    ],
)
def test_conversion_errors_name_key_entry_value_form(value, typ, form):
    pm = ParameterMap({"ImagePyramidSchedule": ["4", value]})
    with pytest.raises(ParameterError) as err:
        pm.get_entry("ImagePyramidSchedule", 1, type=typ)
    msg = str(err.value)
    assert "ImagePyramidSchedule" in msg and "entry 1" in msg and repr(value) in msg and form in msg
    assert isinstance(err.value, ValueError)


def test_entry_zero_failure_raises_even_if_level_entry_is_fine():
    pm = ParameterMap({"K": ["x", "3"]})
    with pytest.raises(ParameterError, match="entry 0"):
        pm.get("K", 1, type=int)


# ----------------------------------------------------------------------------------------- construction


def test_from_dict_value_types():
    pm = ParameterMap.from_dict(
        {
            "B": True,
            "F": False,
            "I": 3,
            "X": 0.1,
            "L": [1, 2.5, "a", True],
            "N": np.array([1.0, 2.0]),
            "S": "nii",
            "NP": np.float64(32.650000000000006),
        }
    )
    assert pm["B"] == ["true"] and pm["F"] == ["false"] and pm["I"] == ["3"] and pm["X"] == ["0.1"]
    assert pm["L"] == ["1", "2.5", "a", "true"] and pm["N"] == ["1", "2"] and pm["S"] == ["nii"]
    assert pm["NP"] == ["32.650000000000006"]
    pm.set("Y", [1e-7])
    assert pm["Y"] == ["1e-7"]
    pm["Z"] = "x"
    assert pm["Z"] == ["x"]
    assert pm.to_dict()["Z"] == ["x"]
    with pytest.raises(TypeError):
        ParameterMap.from_dict({"bad": object()})


# ----------------------------------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    "x,text",
    [
        (32.650000000000006, "32.650000000000006"),
        (0.00009400647993217658, "0.00009400647993217658"),
        (0.000001, "0.000001"),
        (1e-7, "1e-7"),
        (4.461428806667659e-7, "4.461428806667659e-7"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (3, "3"),
        (3.0, "3"),
        (-0.0, "0"),
        (-2.5, "-2.5"),
        (1.5e300, "1.5e+300"),
        (-1.25e-10, "-1.25e-10"),
        (123.456, "123.456"),
        (2.8284271247461903, "2.8284271247461903"),
    ],
)
def test_format_number(x, text):
    assert format_number(x) == text
    assert float(text) == x


def test_format_number_float32():
    assert format_number(0.1, float32=True) == "0.1"  # float32 shortest digits, not 0.10000000149011612
    assert format_number(np.float32(0.1)) == "0.10000000149011612"
    assert format_number(-1024, float32=True) == "-1024"
    assert format_number(-0.0, float32=True) == "0"
    assert format_number(1e-7, float32=True) == "1e-7"
    assert format_number(3.4028234663852886e38, float32=True) == "3.4028235e+38"


def test_format_numbers_flattens_arrays_and_tensors_in_c_order():
    """One formatter for vectors, matrices and tensors (TransformParameters, Spacing, Direction)."""
    matrix = np.array([[1.0, 0.1 + 0.2], [-0.0, 1e-7]])
    assert format_numbers(matrix) == ["1", "0.30000000000000004", "0", "1e-7"]
    assert format_numbers(matrix.T) == ["1", "0", "0.30000000000000004", "1e-7"]
    assert format_numbers(2.5) == ["2.5"]
    assert format_numbers([3, 32.650000000000006]) == ["3", "32.650000000000006"]
    torch = pytest.importorskip("torch")
    assert format_numbers(torch.tensor(matrix, dtype=torch.float32, requires_grad=True)) == \
        [format_number(float(np.float32(v))) for v in matrix.reshape(-1)]


def test_as_parameter_map_converts_dicts_and_keeps_maps():
    pm = ParameterMap({"Metric": ["AdvancedMeanSquares"]})
    assert as_parameter_map(pm) is pm  # no copy: callers read it
    assert len(as_parameter_map(None)) == 0
    converted = as_parameter_map({"Transform": "EulerTransform", "NumberOfResolutions": 2,
                                  "Spacing": (0.5, 1e-7), "UseDirectionCosines": True})
    assert converted.to_dict() == {"Transform": ["EulerTransform"], "NumberOfResolutions": ["2"],
                                   "Spacing": ["0.5", "1e-7"], "UseDirectionCosines": ["true"]}
    with pytest.raises(TypeError, match="cannot store a value of type object"):
        as_parameter_map({"Key": object()})


def test_is_number():
    for s in ["1", "-1", "1.5", "-0.25", "1e-7", "1.5e+21", "100000000000000000000"]:
        assert is_number(s), s
    for s in ["true", "float", "NaN", "Infinity", "-Infinity", "1e5", "1.", ".5", "-", "", "a1", "1.2.3"]:
        assert not is_number(s), s


# ----------------------------------------------------------------------------------------- itk-elastix


@pytest.fixture(scope="module")
def itk():
    return pytest.importorskip("itk")


def test_read_parameter_file_and_itk_round_trip(itk, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text(
        '// comment\n(Metric "AdvancedMattesMutualInformation")\n(MaximumNumberOfIterations 5 7)\n'
        '(ResultImageFormat "nii") // trailing\n(Empty "")\n(Mixed 3 "x y")\n'
    )
    (pm,) = read_parameter_file(f)
    assert pm["Metric"] == ["AdvancedMattesMutualInformation"]
    assert pm.get("MaximumNumberOfIterations", 2, type=UInt) == 5
    assert pm.values("Mixed") == ["3", "x y"]
    assert not pm.has("Empty")
    back = ParameterMap.from_itk(pm.to_itk())
    assert back == pm
    po = itk.ParameterObject.New()
    po.AddParameterMap(pm.to_itk())
    po.AddParameterMap(ParameterMap.from_dict({"A": 1}).to_itk())
    maps = parameter_maps_from_object(po)
    assert len(maps) == 2 and maps[0] == pm and maps[1]["A"] == ["1"]


def test_read_parameter_file_syntax_errors_are_elastix_errors(itk, tmp_path):
    f = tmp_path / "bad.txt"
    f.write_text("(Metric AdvancedMattesMutualInformation\n")
    with pytest.raises(ParameterError, match="bad.txt"):
        read_parameter_file(f)
    with pytest.raises(FileNotFoundError):
        read_parameter_file(tmp_path / "missing.txt")
