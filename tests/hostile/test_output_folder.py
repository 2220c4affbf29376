"""Hostile output folders: ``-out ""`` and inputs that lie in ``-out`` (elastix_bridge.core.output_folder).

A run removes an earlier run's outputs from ``-out`` before it starts (``OutputRun.clear``), writes
its lock file there and removes scratch folders ``.stage<k>-*``; an input at one of those places would
be lost. Such an input (``-p``, ``-t0`` and its chain, images, masks) is refused before any work,
whatever flag names it, through a symbolic link or a path like ``./OUT/../OUT/x`` too; an input
elsewhere in ``-out`` is kept. ``-out ""`` (an unset shell variable) would have meant the current
folder. Every refused case asserts exit 1, one line naming the input (or ``-out``) and the fix, the
folder tree byte for byte as before, and no lock. The inputs are placeholders: a refused run reads
no image, so the refusals cost milliseconds; one run registers for real (the ``inputs`` pair, a
translation on elastix) and the API's refusals take itk images.
"""
import os
from pathlib import Path

import pytest

from elastix_bridge.core.output_folder import LOCK_NAME, check_inputs_outside_outputs, owned_output_folder
from helpers.command import assert_one_line_error, run

TRANSFORM = ('(Transform "TranslationTransform")\n(NumberOfParameters 2)\n(TransformParameters 0 0)\n'
             '(InitialTransformParameterFileName "NoInitialTransform")\n(FixedImageDimension 2)\n'
             '(MovingImageDimension 2)\n')
#: Every kind of name a run writes or removes in -out, one of each pattern (output_folder.OUTPUT_PATTERNS).
OUTPUT_NAMES = ["TransformParameters.0.txt", "TransformParameters.1.R0.txt", "TransformParameters.0.R1.It5.txt",
                "IterationInfo.0.R0.txt", "result.0.mha", "result.1.nii.gz", "result.0.R0.It3.mhd", "elastix.log",
                "qc.png", LOCK_NAME, ".stage0-k2j4/params.txt", ".TransformParameters.0.txt.123.tmp"]
FLAGS = {"-f": "fixed image (-f)", "-m": "moving image (-m)", "-fMask": "fixed mask (-fMask)",
         "-mMask": "moving mask (-mMask)", "-p": "parameter file (-p)", "-t0": "initial transform (-t0)"}


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else os.readlink(p) if p.is_symlink() else None)
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Placeholder inputs beside OUT, which holds an earlier run's TransformParameters; the working directory."""
    for name in ("f.mha", "m.mha", "mask.mha", "p.txt"):
        (tmp_path / name).write_text(f"{name}\n")
    (tmp_path / "tp.txt").write_text(TRANSFORM)
    (tmp_path / "OUT").mkdir()
    (tmp_path / "OUT" / "TransformParameters.1.txt").write_text("an earlier run's stage 1\n")
    (tmp_path / "TransformParameters.0.txt").write_text("an earlier run in the working directory\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _argv(**replace) -> list:
    flags = {"-f": "f.mha", "-m": "m.mha", "-p": "p.txt", "-out": "OUT", "-loglevel": "off"}
    flags.update(replace)
    return [part for flag, value in flags.items() for part in (flag, value)]


def refused(capsys, folder: Path, argv, *needles) -> str:
    before = _tree(folder)
    code, _, err = run(capsys, *argv)
    line = assert_one_line_error(code, err, *needles)
    assert _tree(folder) == before, "a refused run wrote or removed files"
    assert not list(folder.rglob(LOCK_NAME)) or LOCK_NAME in str(argv)
    return line


def _put(folder: Path, relative: str, text: str) -> Path:
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("value", ["", " ", "\t"], ids=["empty", "space", "tab"])
def test_blank_out_is_refused_before_the_current_folder_is_touched(capsys, workdir, value):
    line = refused(capsys, workdir, _argv(**{"-out": value}), f"output folder (-out) {value!r} is",
                   "unset shell variable", "give a folder path")
    assert ("empty" if not value else "blank") in line
    assert (workdir / "TransformParameters.0.txt").read_text() == "an earlier run in the working directory\n"


@pytest.mark.parametrize("value", ["f.mha", "f.mha/OUT"], ids=["a-file", "inside-a-file"])
def test_out_that_is_a_file_is_refused(capsys, workdir, value):
    refused(capsys, workdir, _argv(**{"-out": value}), "an existing file, not a folder", "give a folder path")


@pytest.mark.parametrize("name", OUTPUT_NAMES)
def test_parameter_file_under_an_output_name_is_refused_and_kept(capsys, workdir, name):
    _put(workdir, f"OUT/{name}", "(Metric \"Impact\")\n")
    line = refused(capsys, workdir, _argv(**{"-p": f"OUT/{name}"}), f"parameter file (-p) OUT/{name}",
                   "output folder (-out) OUT", "Move it out of the folder, or give another -out",
                   "never overwrites or removes an input")
    assert ("scratch folder" in line) if name.startswith(".stage") else (f"({name})" in line)


@pytest.mark.parametrize("flag", sorted(FLAGS))
def test_every_input_flag_is_checked(capsys, workdir, flag):
    _put(workdir, "OUT/result.0.mha", TRANSFORM)
    refused(capsys, workdir, _argv(**{flag: "OUT/result.0.mha"}), f"{FLAGS[flag]} OUT/result.0.mha",
            "(result.0.mha)")


def test_a_file_of_the_t0_chain_under_an_output_name_is_refused(capsys, workdir):
    _put(workdir, "OUT/TransformParameters.0.txt", TRANSFORM)
    _put(workdir, "chain.txt", TRANSFORM.replace('"NoInitialTransform"', '"OUT/TransformParameters.0.txt"'))
    refused(capsys, workdir, _argv(**{"-t0": "chain.txt"}), "named by the -t0 chain", "(TransformParameters.0.txt)")


def test_relative_path_through_dot_dot_is_refused(capsys, workdir):
    _put(workdir, "OUT/elastix.log", "params\n")
    refused(capsys, workdir, _argv(**{"-p": "./OUT/../OUT/elastix.log", "-out": "./OUT/."}),
            "parameter file (-p) ./OUT/../OUT/elastix.log", "(elastix.log)")


def test_link_outside_to_an_output_in_out_is_refused(capsys, workdir):
    target = _put(workdir, "OUT/TransformParameters.0.txt", "params\n")
    (workdir / "link.txt").symlink_to(target)
    refused(capsys, workdir, _argv(**{"-p": "link.txt"}), "parameter file (-p) link.txt",
            f"(a link to {target.resolve()})", "(TransformParameters.0.txt)")


def test_link_in_out_under_an_output_name_is_refused(capsys, workdir):
    (workdir / "OUT" / "TransformParameters.0.txt").symlink_to(workdir / "p.txt")
    refused(capsys, workdir, _argv(**{"-p": "OUT/TransformParameters.0.txt"}), "(TransformParameters.0.txt)")


def test_out_given_through_a_link_is_resolved(capsys, workdir):
    (workdir / "OUT-link").symlink_to(workdir / "OUT")
    _put(workdir, "OUT/qc.png", "params\n")
    refused(capsys, workdir, _argv(**{"-p": "OUT/qc.png", "-out": "OUT-link"}), "output folder (-out) OUT-link",
            "(qc.png)")


@pytest.mark.parametrize("name", ["params.txt", "sub/TransformParameters.0.txt", "TransformParameters.0.txt.bak",
                                  "result.xlsx", ".stage/params.txt", "stage0-x/result.0.mha"])
def test_inputs_elsewhere_in_out_are_kept(workdir, name):
    """Not an output name, or deeper than the run looks: accepted, and a run's clearing keeps them."""
    path = _put(workdir, f"OUT/{name}", "kept\n")
    check_inputs_outside_outputs("OUT", {"parameter file (-p)": path})
    with owned_output_folder("OUT", command="test") as folder_run:
        assert folder_run.removed == ["TransformParameters.1.txt"]
    assert path.read_text() == "kept\n" and not (workdir / "OUT" / LOCK_NAME).exists()


CLASSIC = ('(Registration "MultiResolutionRegistration")\n(Metric "AdvancedMeanSquares")\n(Transform "TranslationTransform")\n'
           '(Optimizer "AdaptiveStochasticGradientDescent")\n(MaximumNumberOfIterations 10)\n(NumberOfResolutions 1)\n'
           '(ImageSampler "Full")\n(WriteResultImage "false")\n')


def test_a_run_keeps_a_parameter_file_inside_out(capsys, inputs, workdir):
    """End to end: -p inside -out under its own name; the earlier run's output goes, the input stays."""
    params = _put(workdir, "OUT/translation.txt", CLASSIC)
    code, out, err = run(capsys, *_argv(**{"-f": inputs["fixed"], "-m": inputs["moving"], "-p": params}))
    assert code == 0, err
    assert "TransformParameters.0.txt" in out and "first removed 1 file(s)" in out
    names = sorted(p.name for p in (workdir / "OUT").iterdir())
    assert names == ["IterationInfo.0.R0.txt", "TransformParameters.0.txt", "elastix.log", "translation.txt"]
    assert params.read_text() == CLASSIC


def test_api_refuses_empty_output_directory_and_an_initial_transform_in_it(inputs, workdir):
    import itk

    from elastix_bridge import elastix_registration_method
    from elastix_bridge.core.output_folder import OutputFolderError
    from elastix_bridge.core.parameters import read_parameter_file

    fixed, moving = itk.imread(str(inputs["fixed"]), itk.F), itk.imread(str(inputs["moving"]), itk.F)
    maps = read_parameter_file(_put(workdir, "classic.txt", CLASSIC))
    with pytest.raises(OutputFolderError, match=r"output folder \(output_directory\) '' is empty"):
        elastix_registration_method(fixed, moving, parameter_object=maps, output_directory="")
    t0 = _put(workdir, "OUT/TransformParameters.0.txt", TRANSFORM)
    before = _tree(workdir)
    with pytest.raises(OutputFolderError, match=r"initial transform file .*TransformParameters\.0\.txt lies in the "
                                                r"output folder \(output_directory\)"):
        elastix_registration_method(fixed, moving, parameter_object=maps, output_directory="OUT",
                                    initial_transform_parameter_file_name=str(t0))
    assert _tree(workdir) == before and not (workdir / "OUT" / LOCK_NAME).exists()
