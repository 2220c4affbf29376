"""Hostile command lines: elastix's flags are matched exactly (elastix_bridge.flags.ExactParser).

elastix's ``main`` (Core/Main/elastix.cxx) compares each flag whole (``key == "-p"``); argparse read
``-fmask m.mha`` as ``-f mask`` and ``-fmask_fixed.mha`` as the fixed image ``mask_fixed.mha``. Each
case is generated from the flag table: another case, a prefix, a value written onto the flag, two
dashes, ``flag=value``, a repeat, a missing value; then elastix's flags the bridge does not run and
stray arguments. Every case runs the command in-process and fails while the flags are read (no
image is read, no itk import), so each costs milliseconds. A case asserts exit 1, one
``elastix-bridge: error:`` line naming the token (and the fix where there is one), and that the
working folder is exactly as before: no ``-out`` created, nothing removed, no lock.
"""
import logging
import os
from pathlib import Path

import pytest

from elastix_bridge import cli
from elastix_bridge.validation import available_cores, check_threads
from helpers.command import assert_one_line_error, run

LOCK = ".elastix-bridge.lock"
VALUE_FLAGS = {"-f": "f.mha", "-m": "m.mha", "-fMask": "mask.mha", "-mMask": "mask.mha", "-p": "p.txt",
               "-t0": "tp.txt", "-out": "OUT", "-threads": "2", "-loglevel": "off"}
BASE = ["-f", "f.mha", "-m", "m.mha", "-p", "p.txt", "-out", "OUT"]


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder with the files BASE names (not images: nothing may read them), as the working directory."""
    for name in ("f.mha", "m.mha", "mask.mha", "p.txt", "tp.txt"):
        (tmp_path / name).write_text(f"{name}\n")
    (tmp_path / "OLD").mkdir()
    (tmp_path / "OLD" / "TransformParameters.0.txt").write_text("an earlier run's output\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def refused(capsys, folder: Path, argv, *needles) -> str:
    """Exit 1, one line holding every needle, and ``folder`` untouched (no -out, no lock)."""
    before = _tree(folder)
    code, _, err = run(capsys, *argv)
    line = assert_one_line_error(code, err, *needles)
    assert _tree(folder) == before, "a refused command line changed the folder"
    assert not list(folder.rglob(LOCK))
    return line


def _case_changes(flag: str):
    return sorted({f for f in (flag.upper(), flag.lower(), flag.swapcase()) if f != flag})


CASES = []  # (id, argv, needles)
for flag, value in VALUE_FLAGS.items():
    for wrong in _case_changes(flag):
        CASES.append((f"case{wrong}", BASE + [wrong, value], ("unknown flag " + wrong, f"did you mean {flag}?",
                                                               "case-sensitive")))
    if len(flag) > 2:
        prefix = flag[:-1]
        CASES.append((f"prefix{prefix}", BASE + [prefix, value], (f"unknown flag {prefix}", f"did you mean {flag}?",
                                                                   "whole")))
    joined = flag + "x" + value  # the value written onto the flag, e.g. -fMaskxmask.mha
    CASES.append((f"joined{flag}", BASE + [joined], (f"unknown flag {joined}", f"did you mean {flag}?",
                                                     "after a space")))
    CASES.append((f"dashes-{flag}", BASE + ["-" + flag, value], (f"unknown flag -{flag}", f"did you mean {flag}?")))
    CASES.append((f"equals{flag}", BASE + [f"{flag}={value}"], (f"{flag}={value}", f"write {flag} {value}",
                                                                 "next argument")))
    CASES.append((f"dashes-equals-{flag}", BASE + [f"-{flag}={value}"], (f"write {flag} {value}",)))
    CASES.append((f"at-end{flag}", BASE + [flag], (f"{flag} is missing its value", "ends the command line")))
    CASES.append((f"then-flag{flag}", [flag, "--qc"] + BASE, (f"{flag} is missing its value", "--qc, is a flag")))
    if flag != "-p":
        twice = [a for a in BASE] + ([flag, value] if flag not in BASE else []) + [flag, "again"]
        CASES.append((f"twice{flag}", twice, (f"{flag} is given twice", "give it once")))

CASES += [
    ("issue-fmask-space", BASE + ["-fmask", "m.mha"], ("unknown flag -fmask", "did you mean -fMask?")),
    ("issue-fmask-joined", ["-fmask_fixed.mha", "-m", "m.mha", "-p", "p.txt", "-out", "OUT"],
     ("unknown flag -fmask_fixed.mha", "did you mean -fMask?")),
    ("issue-foo-3", BASE + ["-foo", "3"], ("unknown flag -foo",)),
    ("priority", BASE + ["-priority", "high"], ("-priority", "Windows", "leave it out")),
    ("fp", BASE + ["-fp", "points.txt"], ("-fp", "point set", "does not run")),
    ("mp", BASE + ["-mp", "points.txt"], ("-mp", "point set", "does not run")),
    ("multi-f0", BASE + ["-f0", "f.mha"], ("-f0", "multi-image", "one fixed image with -f")),
    ("multi-m1", BASE + ["-m1", "m.mha"], ("-m1", "multi-image")),
    ("multi-fMask0", BASE + ["-fMask0", "mask.mha"], ("-fMask0", "multi-image")),
    ("multi-mMask12", BASE + ["-mMask12", "mask.mha"], ("-mMask12", "multi-image")),
    ("qc-value", BASE + ["--qc", "yes"], ("unexpected argument 'yes'", "--qc takes no value")),
    ("qc-equals", BASE + ["--qc=1"], ("--qc takes no value",)),
    ("qc-twice", BASE + ["--qc", "--qc"], ("--qc is given twice",)),
    ("qc-one-dash", BASE + ["-qc"], ("unknown flag -qc", "did you mean --qc?")),
    ("progress-both", BASE + ["--progress", "--no-progress"], ("--progress and --no-progress are both given",
                                                               "give one of them")),
    ("progress-prefix", BASE + ["--prog"], ("unknown flag --prog",)),
    ("engine-prefix", BASE + ["--eng", "bridge"], ("unknown flag --eng", "did you mean --engine?")),
    ("engine-twice", BASE + ["--engine", "bridge", "--engine=elastix"], ("--engine is given twice",
                                                                          "bridge and elastix")),
    ("engine-choice", BASE + ["--engine", "impact"], ("invalid choice: 'impact'",)),
    ("loglevel-choice", BASE + ["-loglevel", "debug"], ("invalid choice: 'debug'",)),
    ("threads-word", BASE + ["-threads", "four"], ("'four' is not a whole number of threads", ">= 1")),
    ("threads-fraction", BASE + ["-threads", "1.5"], ("'1.5' is not a whole number",)),
    ("two-values", ["-f", "f.mha", "m.mha", "-m", "m.mha", "-p", "p.txt", "-out", "OUT"],
     ("unexpected argument 'm.mha' after -f f.mha", "one value")),
    ("bare-value", ["f.mha"] + BASE, ("unexpected argument 'f.mha'", "every value follows its flag")),
    ("command-typo", ["dcotor"], ("did you mean `elastix-bridge doctor`?",)),
    ("missing-required", ["-f", "f.mha", "-p", "p.txt"], ("required: -m, -out",)),
    ("nothing", [], ("required: -f, -m, -p, -out",)),
    ("plan-out", ["plan"] + BASE, ("-out is a flag of the registration, not of `elastix-bridge plan`",)),
    ("plan-fmask", ["plan", "-f", "f.mha", "-m", "m.mha", "-p", "p.txt", "-fmask", "mask.mha"],
     ("unknown flag -fmask", "did you mean -fMask?")),
    ("batch-joined-p", ["batch", "pairs.csv", "-pp.txt", "-out", "OUT"], ("unknown flag -pp.txt", "did you mean -p?")),
    ("batch-abbreviation", ["batch", "pairs.csv", "-p", "p.txt", "-out", "OUT", "--work", "2"],
     ("unknown flag --work", "did you mean --workers?")),
    ("threads-zero", BASE + ["-threads", "0"], ("-threads 0", "integer >= 1")),
    ("threads-negative", BASE + ["-threads", "-1"], ("-threads -1", "integer >= 1")),
]


@pytest.mark.parametrize("argv, needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_flag_is_refused_by_name(capsys, workdir, argv, needles):
    refused(capsys, workdir, argv, *needles)


def test_every_flag_variant_is_covered():
    assert len(CASES) >= 60
    assert {flag for flag in VALUE_FLAGS if any(f"equals{flag}" == c[0] for c in CASES)} == set(VALUE_FLAGS)


@pytest.mark.parametrize("argv, expected", [
    (BASE + ["-p", "q.txt"], {"p": ["p.txt", "q.txt"]}),  # -p repeats, as in elastix
    (BASE + ["-threads", "2", "-loglevel", "off"], {"threads": 2, "loglevel": "off"}),
    (["-f", "-dash.mha", "-m", "m.mha", "-p", "p.txt", "-out", "-OUT-"], {"f": "-dash.mha", "out": "-OUT-"}),
    (BASE + ["--engine=bridge", "--no-progress"], {"engine": "bridge", "progress": False}),
    (["-out", "OUT", "-p", "p.txt", "-m", "m.mha", "-f", "f.mha", "-fMask", "a=b.mha"], {"fMask": "a=b.mha"}),
], ids=["p-repeats", "threads-loglevel", "dash-values", "engine-equals", "any-order"])
def test_exact_flags_still_parse(argv, expected):
    args = cli.registration_parser().parse_args(argv)
    assert {key: getattr(args, key) for key in expected} == expected


@pytest.mark.parametrize("flag", ["-h", "-help", "--help", "--version", "--extended-version"])
def test_help_and_version_exit_0(capsys, flag):
    with pytest.raises(SystemExit) as caught:
        cli.main([flag])
    out = capsys.readouterr().out
    assert caught.value.code == 0
    assert ("-fMask MASK" in out and "Refused by name: -priority" in out) if "h" in flag else "itk-elastix" in out


def test_threads_above_the_cores_are_lowered_with_a_warning(caplog):
    cores = available_cores()
    assert cores == (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    with caplog.at_level(logging.WARNING, logger="elastix_bridge"):
        assert check_threads(100000, "-threads", warn=True) == cores
        assert check_threads(cores, "-threads", warn=True) == cores
        assert check_threads(None) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"-threads 100000 is more than the {cores} CPU core(s) this process may use; using {cores} (more threads "
        "than cores only wait for one another)"]
    with caplog.at_level(logging.WARNING, logger="elastix_bridge"):
        caplog.clear()
        check_threads(10 ** 9)  # validation alone: no warning (the run warns once, where it applies the count)
    assert not caplog.records
