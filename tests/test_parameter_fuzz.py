"""Fuzzing the parameter-file reader: every input gives a valid map or a ParameterError naming the line.

A seeded generator (reproducible) mutates valid elastix parameter files: random bytes, truncated
lines, unbalanced brackets and quotes, unicode, huge and odd numbers, NUL bytes, CR/LF endings.
Every map that parses then goes through the validation pass, which may only refuse it with a
ValueError (never crash, hang on a huge level count, or raise another kind of error).
"""
import random
import re

import pytest

from elastix_bridge.core.parameters import ParameterError, ParameterMap, read_parameter_file
from elastix_bridge.validation import validate_maps

pytest.importorskip("itk")

VALID = [
    '(Metric "Impact")', "(MaximumNumberOfIterations 5 7)", '(ImpactLayersMask0 "0001")',
    "(FinalGridSpacingInPhysicalUnits 8.0 8.0)", '(ResultImageFormat "nii") // comment', "// only a comment", "",
    '(ImpactDistance0 "L2" "NCC")', "(NumberOfResolutions 3)", '(Transform "BSplineTransform")',
    "(NumberOfResolutions 99999999999999)", "(MaximumNumberOfIterations 1e999999)", "(SP_a -Infinity)",
    '(Optimizer "QuasiNewtonLBFGS")', "(ImagePyramidSchedule 4 4 2 2)", '(ImpactModelsPath0 "mind-ssc-2d")',
]
PIECES = ["(", ")", '"', "//", " ", "\t", "\r", "1e999999", "-0", "99999999999999999999999999", "NaN", "é",
          "Δ", "😀", "\u2028", "\x00", "Impact", "0.5.5", "(A", "B)", '"x y"', "\\"]


def _mutated_file(rng: random.Random) -> bytes:
    lines = [rng.choice(VALID) for _ in range(rng.randint(1, 8))]
    for _ in range(rng.randint(0, 3)):
        i = rng.randrange(len(lines))
        kind = rng.randrange(5)
        if kind == 0 and lines[i]:  # truncate a line
            lines[i] = lines[i][: rng.randrange(len(lines[i]))]
        elif kind == 1:  # insert a piece
            pos = rng.randint(0, len(lines[i]))
            lines[i] = lines[i][:pos] + rng.choice(PIECES) + lines[i][pos:]
        elif kind == 2:  # a fresh random line
            lines[i] = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 6)))
        elif kind == 3:  # duplicate a line
            lines.insert(i, lines[i])
    data = "\n".join(lines).encode("utf-8")
    if rng.random() < 0.2:  # random bytes somewhere (binary files)
        pos = rng.randint(0, len(data))
        data = data[:pos] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 4))) + data[pos:]
    return data


def test_every_input_parses_or_names_its_line(tmp_path):
    rng = random.Random(20261204)
    outcomes = {"valid": 0, "error": 0}
    for n in range(300):
        data = _mutated_file(rng)
        path = tmp_path / f"p{n}.txt"
        path.write_bytes(data)
        try:
            maps = read_parameter_file(path)
        except ParameterError as error:
            text = str(error)
            m = re.search(rf"{re.escape(str(path))}, line (\d+)", text)
            assert m, f"no line number for {data!r}: {text}"
            assert 1 <= int(m.group(1)) <= data.count(b"\n") + 1, (data, text)
            outcomes["error"] += 1
        else:
            assert len(maps) == 1 and isinstance(maps[0], ParameterMap)
            for key in maps[0]:
                assert isinstance(key, str) and all(isinstance(v, str) for v in maps[0].values(key))
            outcomes["valid"] += 1
            for engines in (["elastix"], ["bridge"]):
                try:
                    validate_maps(maps, engines, dimension=2)
                except ValueError as error:
                    assert str(error).startswith("parameter map 0"), error
    assert outcomes["valid"] > 20 and outcomes["error"] > 20, outcomes  # both branches exercised
