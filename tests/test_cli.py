"""Tests of the ``elastix-bridge`` command (elastix_bridge.cli): outputs and error messages.

Every failure must print one line, ``elastix-bridge: error: <cause>; <fix>``, without a Python
traceback, and exit 1. The command runs in-process (``cli.main``); only "torch is not installed"
needs a fresh interpreter. Impact failures are all detected before any computation, so they are
fast; the one successful run uses small synthetic images.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

itk = pytest.importorskip("itk")


from elastix_bridge.runtime import loader  # noqa: E402
from helpers.command import assert_one_line_error, registration_args, run  # noqa: E402
from helpers.maps import impact_parameters, write_parameter_file  # noqa: E402
from helpers.torchscript import scripted_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def failing_run(capsys, inputs, tmp_path, *needles, params=None, **replace) -> str:
    code, _, err = run(capsys, *registration_args(inputs, tmp_path / "out", params, **replace))
    return assert_one_line_error(code, err, *needles)


def params_with(tmp_path, **changes) -> Path:
    return write_parameter_file(tmp_path / "params.txt", impact_parameters(**changes))


# ---------------------------------------------------------------------------------------------
# Success
# ---------------------------------------------------------------------------------------------


def test_registration_writes_elastix_outputs(plugin, inputs, tmp_path, capsys):
    out = tmp_path / "new" / "out"  # created by the command
    code, stdout, err = run(capsys, *registration_args(inputs, out))
    assert code == 0, err
    assert "Traceback" not in err
    names = {p.name for p in out.iterdir()}
    assert {"TransformParameters.0.txt", "result.0.mha", "elastix.log", "IterationInfo.0.R0.txt"} <= names
    assert "TransformParameters.0.txt" in stdout and str(out) in stdout
    po = itk.ParameterObject.New()
    po.ReadParameterFile(str(out / "TransformParameters.0.txt"))
    assert list(po.GetParameterMap(0)["Transform"]) == ["BSplineTransform"]
    result = itk.imread(str(out / "result.0.mha"))
    assert itk.array_from_image(result).shape == (36, 36)
    assert len((out / "IterationInfo.0.R0.txt").read_text().splitlines()) == 1 + 5


def test_profile_says_where_the_seconds_went_before_the_first_iteration(plugin, inputs, tmp_path, capsys):
    code, _, err = run(capsys, *registration_args(inputs, tmp_path / "out"), "--profile")
    assert code == 0, err
    line = next(line for line in err.splitlines() if "start-up:" in line)
    phases = line.split("start-up: ", 1)[1].split(";")[0]  # "imports 0.51 s, itk-elastix module 9.38 s, ..."
    seconds = dict((name, float(value)) for name, value in re.findall(r"([^,]+?) (\d+\.\d+) s(?:,|$)", phases))
    seconds = {name.strip(): value for name, value in seconds.items()}
    for name in ("imports", "itk-elastix module", "images read", "feature models", "pyramid levels",
                 "metric set-up (Impact: feature maps)"):
        assert name in seconds, (name, line)
    first = float(re.search(r"first iteration done (\d+\.\d) s after the process started", line).group(1))
    whole = float(re.search(r"whole run (\d+\.\d) s", line).group(1))
    assert 0 < first <= whole + 0.05
    # the phases cannot add up to more than the process has lived (the itk-elastix load was before the run)
    assert sum(seconds.values()) <= whole + 0.1


# ---------------------------------------------------------------------------------------------
# Failures: one line, cause and fix, exit 1
# ---------------------------------------------------------------------------------------------


def test_missing_fixed_image(inputs, tmp_path, capsys):
    failing_run(capsys, inputs, tmp_path, "fixed image (-f)", "nowhere.mha", "does not exist", "check the path",
                f=tmp_path / "nowhere.mha")
    assert not (tmp_path / "out").exists()  # nothing created for a run that cannot start


def test_missing_moving_mask(inputs, tmp_path, capsys):
    failing_run(capsys, inputs, tmp_path, "moving mask (-mMask)", "does not exist", mMask=tmp_path / "m.mhd")


def test_missing_parameter_file(inputs, tmp_path, capsys):
    failing_run(capsys, inputs, tmp_path, "parameter file (-p)", "missing.txt", "does not exist", "check the path",
                p=tmp_path / "missing.txt")


def test_bad_impact_parameter(inputs, tmp_path, capsys):
    line = failing_run(capsys, inputs, tmp_path, "ImpactDistance0", "'L3'", "is not a known distance",
                       params=params_with(tmp_path, ImpactDistance0="L3"))
    assert "accepted:" in line and "L2" in line  # the fix: the accepted names


def test_model_file_missing(plugin, inputs, tmp_path, capsys):
    failing_run(capsys, inputs, tmp_path, "ImpactModelsPath", "nope.pt", "model file not found",
                params=params_with(tmp_path, ImpactModelsPath0=str(tmp_path / "nope.pt")))


def test_model_with_wrong_forward_signature(plugin, inputs, tmp_path, capsys):
    model = scripted_model(tmp_path, "noargs.pt", """
        class Model(nn.Module):
            def forward(self) -> List[torch.Tensor]:
                return [torch.zeros(1, 1, 1)]
        """)
    failing_run(capsys, inputs, tmp_path, "noargs.pt", "must take the image patch as its first argument",
                params=params_with(tmp_path, ImpactModelsPath0=str(model)))


def test_model_returning_a_tensor_instead_of_a_list(plugin, inputs, tmp_path, capsys):
    model = scripted_model(tmp_path, "tensor.pt", """
        class Model(nn.Module):
            def forward(self, x):
                return x
        """)
    failing_run(capsys, inputs, tmp_path, "tensor.pt", "single tensor", "must return a list of feature maps",
                params=params_with(tmp_path, ImpactModelsPath0=str(model)))


def test_gpu_asked_without_cuda(plugin, inputs, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    failing_run(capsys, inputs, tmp_path, "ImpactGPU 0", "CUDA is not available", "(ImpactGPU -1)",
                params=params_with(tmp_path, ImpactGPU=0))


def test_plugin_missing(plugin, inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(loader.PLUGIN_ENV, "/nonexistent.so")
    failing_run(capsys, inputs, tmp_path, "$ELASTIX_BRIDGE_PLUGIN", "/nonexistent.so", "does not exist",
                "elastix-bridge build-plugin")


def test_plugin_built_for_another_torch(plugin, inputs, tmp_path, capsys, monkeypatch):
    so = tmp_path / "other" / "elastix_bridge_impact.so"
    so.parent.mkdir()
    shutil.copy2(plugin.__file__, so)
    record = dict(loader.expected_build_record(), torch_version="1.13.1+cu117", cuda="11.7")
    Path(str(so) + ".json").write_text(json.dumps(record))
    monkeypatch.setenv(loader.PLUGIN_ENV, str(so))
    line = failing_run(capsys, inputs, tmp_path, "built for torch 1.13.1+cu117", "elastix-bridge build-plugin")
    assert loader.expected_build_record()["torch_version"] in line


@pytest.mark.slow  # a fresh interpreter that imports itk (41 s measured on 2 busy cores)
def test_torch_not_installed(inputs, tmp_path):
    """Without torch (blocked in a fresh interpreter) the message says how to install it."""
    code = textwrap.dedent(
        """
        import importlib.metadata, sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ModuleNotFoundError("No module named 'torch'", name="torch")
        sys.meta_path.insert(0, NoTorch())
        real_metadata = importlib.metadata.metadata
        def metadata(name):  # itk looks here to decide whether to import torch
            if name == "torch":
                raise importlib.metadata.PackageNotFoundError(name)
            return real_metadata(name)
        importlib.metadata.metadata = metadata
        from elastix_bridge.cli import main
        sys.exit(main(sys.argv[1:]))
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop(loader.PLUGIN_ENV, None)
    argv = [str(a) for a in registration_args(inputs, tmp_path / "out")]
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)
    line = assert_one_line_error(proc.returncode, proc.stderr, "PyTorch", "cannot be imported", "pip install")
    assert "torch" in line.split("pip install", 1)[1]


def test_missing_initial_transform_file(inputs, tmp_path, capsys):
    failing_run(capsys, inputs, tmp_path, "initial transform (-t0)", "nothing.txt", "does not exist",
                t0=tmp_path / "nothing.txt")


def test_engine_bridge_runs_a_classic_map_then_t0_chains_on_it(inputs, tmp_path, capsys):
    """--engine bridge runs a map without Impact on the bridge; -t0 starts the next run from its result."""
    rigid = write_parameter_file(tmp_path / "rigid.txt", {
        "Registration": ["MultiResolutionRegistration"], "Metric": ["AdvancedMeanSquares"],
        "Transform": ["EulerTransform"], "Optimizer": ["AdaptiveStochasticGradientDescent"],
        "MaximumNumberOfIterations": ["20"], "NumberOfResolutions": ["1"], "ImageSampler": ["Full"]})
    code, out, err = run(capsys, *registration_args(inputs, tmp_path / "rigid", rigid), "--engine", "bridge")
    assert code == 0, err
    assert "Stage 0 (bridge engine)" in (tmp_path / "rigid" / "elastix.log").read_text()
    t0 = tmp_path / "rigid" / "TransformParameters.0.txt"
    code, out, err = run(capsys, *registration_args(inputs, tmp_path / "next"), "-t0", t0)
    assert code == 0, err
    from elastix_bridge.core.transform_io import read_transform_parameter_file

    written = read_transform_parameter_file(tmp_path / "next" / "TransformParameters.0.txt")
    assert written.get("InitialTransformParameterFileName") == str(t0.resolve())


def test_two_p_files_mixed_chain_with_elastix_result_types(plugin, inputs, tmp_path, capsys):
    """-p elastix map -p Impact map: one output folder numbered by stage, results in ResultImagePixelType.

    Without ResultImageFormat / ResultImagePixelType the command writes ``mhd`` and ``short``, like
    the elastix command; the values are the float resampling truncated toward zero.
    """
    translation = write_parameter_file(tmp_path / "translation.txt", {
        "Registration": ["MultiResolutionRegistration"], "Metric": ["AdvancedMeanSquares"],
        "Transform": ["TranslationTransform"], "Optimizer": ["AdaptiveStochasticGradientDescent"],
        "MaximumNumberOfIterations": ["20"], "NumberOfResolutions": ["1"], "ImageSampler": ["Full"]})
    impact = write_parameter_file(tmp_path / "impact.txt", impact_parameters(ResultImagePixelType=["float"]))
    out = tmp_path / "out"
    code, _, err = run(capsys, "-f", inputs["fixed"], "-m", inputs["moving"], "-p", translation, "-p", impact,
                       "-out", out, "-loglevel", "off")
    assert code == 0, err
    names = {p.name for p in out.iterdir()}
    assert {"TransformParameters.0.txt", "TransformParameters.1.txt", "result.0.mhd", "result.1.mha"} <= names
    short = itk.imread(str(out / "result.0.mhd"))
    assert itk.template(short)[1][0] is itk.SS
    po = itk.ParameterObject.New()
    po.AddParameterFile(str(out / "TransformParameters.0.txt"))
    expected = itk.array_from_image(itk.transformix_filter(itk.imread(str(inputs["moving"]), itk.F), po))
    np.testing.assert_array_equal(itk.array_from_image(short), np.trunc(expected).astype(np.int16))
    assert itk.template(itk.imread(str(out / "result.1.mha")))[1][0] is itk.F


def test_progress_bars_per_level_on_request_and_quiet_by_default(plugin, inputs, tmp_path, capsys):
    """--progress: one bar per resolution level with iterations, metric and elapsed time; none without."""
    code, _, err = run(capsys, *registration_args(inputs, tmp_path / "bars"), "--progress")
    assert code == 0, err
    bars = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("stage 0 level 0")]
    assert bars and "5/5" in bars[-1] and "metric " in bars[-1], err[-500:]
    code, _, err = run(capsys, *registration_args(inputs, tmp_path / "quiet"), "--no-progress")
    assert code == 0 and "stage 0 level" not in err
    from elastix_bridge.api import elastix_registration_method

    fixed, moving = itk.imread(str(inputs["fixed"]), itk.F), itk.imread(str(inputs["moving"]), itk.F)
    from elastix_bridge.core.parameters import read_parameter_file

    elastix_registration_method(fixed, moving, parameter_object=read_parameter_file(inputs["params"]))
    assert "stage 0 level" not in capsys.readouterr().err  # library calls are quiet unless asked
