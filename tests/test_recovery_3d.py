"""Acceptance: the README's main job (``elastix-bridge demo``) on a 3D multimodal pair.

The pair is real anatomy (MNI152 T1 at 2 mm from nilearn's wheel) against a T2-like copy warped by a
known deformation (``elastix_bridge.demo_data.make_demo_pair``). The demo registers it three ways,
each an affine stage then a B-spline stage: elastix's Mattes MI, IMPACT (MIND-SSC) alone and the
recommended recipe (IMPACT + Mattes MI in one map). Each must recover most of the initial mean
displacement error inside the brain mask, with an unfolded transform; the report names the
recommended recipe's parameter files, which must reproduce its result when run from the command line.
"""
import json

import pytest

pytest.importorskip("nilearn")
pytest.importorskip("itk")

pytestmark = pytest.mark.slow


def test_the_demo_registers_three_ways_and_names_a_recipe_that_runs_from_its_files(plugin, tmp_path):
    import itk
    import numpy as np

    from elastix_bridge.cli import run_registration
    from elastix_bridge.demo import DEMO_METHODS, run_demo
    from elastix_bridge.registration_quality import displacement_error

    report = run_demo(tmp_path, dimension=3, mode="Static")
    assert report["initial_error_mm"] > 2.0  # a deformation worth recovering
    methods = report["methods"]
    assert list(methods) == list(DEMO_METHODS)
    for key, method in methods.items():
        assert method["recovered_fraction"] >= 0.70, json.dumps(report, indent=1)
        assert method["nmi"] > report["initial_nmi"]
        assert method["folded_fraction"] == 0 and not method["transform_warnings"], key
    assert (tmp_path / "report.json").is_file() and (tmp_path / "demo.png").is_file()
    assert json.loads((tmp_path / "report.json").read_text())["recommended"] == report["recommended"]

    # the recommended recipe's files, as a user runs them, give the demo's result
    files = report["recommended"]["parameter_files"]
    assert [f.rsplit("/", 1)[-1] for f in files] == ["parameters.0.txt", "parameters.1.txt"]
    data = tmp_path / "data"
    argv = ["-f", str(data / "fixed.nii.gz"), "-m", str(data / "moving.nii.gz"),
            "-fMask", str(data / "fixed_mask.nii.gz"), "-out", str(tmp_path / "again")]
    for f in files:
        argv += ["-p", str(tmp_path / f)]
    assert run_registration(argv) == 0
    moving = itk.imread(str(data / "moving.nii.gz"), itk.F)
    tp = itk.ParameterObject.New()
    tp.ReadParameterFile(str(tmp_path / "again" / "TransformParameters.1.txt"))
    field = np.asarray(itk.array_from_image(itk.transformix_deformation_field(moving, tp)), dtype=np.float64)
    mask = itk.array_from_image(itk.imread(str(data / "fixed_mask.nii.gz"))) > 0
    error = displacement_error(field, itk.imread(str(data / "true_displacement.nii.gz")), mask)["mean"]
    assert error == pytest.approx(methods["recommended"]["error_mm"], abs=0.02)
