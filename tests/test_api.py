"""Tests of elastix_bridge.api.elastix_registration_method: routing, transformix agreement, outputs.

Non-Impact maps must go to itk-elastix untouched (same result, torch never imported); Impact maps
run on the bridge engine, and the returned ``itk.ParameterObject`` must make transformix apply
exactly the transform the engine optimised. Images are small synthetic 2D blobs, so every
registration takes seconds.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

itk = pytest.importorskip("itk")

from elastix_bridge.api import elastix_registration_method  # noqa: E402
from helpers.images import DIRECTION, blobs, make_image  # noqa: E402
from helpers.maps import elastix_map, impact_map, transform_parameters  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pair():
    """(fixed, moving): blobs on a rotated grid, the moving ones shifted by (2, -2) voxels."""
    return make_image(blobs((40, 40), (20, 20))), make_image(blobs((40, 40), (22, 18)))


@pytest.fixture(scope="module")
def impact_run(plugin, pair, tmp_path_factory):
    """One Impact registration with an output directory and a log file: (result, tp, folder, map)."""
    folder = tmp_path_factory.mktemp("impact-out")
    pmap = impact_map(fmt="nii")
    result, tp = elastix_registration_method(*pair, parameter_object=pmap, output_directory=str(folder),
                                             log_to_file=True)
    return result, tp, folder, pmap


# ---------------------------------------------------------------------------------------------
# Non-Impact maps: itk-elastix, unchanged
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # a fresh interpreter that imports itk and registers (52 s measured on 2 busy cores)
def test_elastix_route_imports_neither_torch_nor_plugin(tmp_path):
    """In a fresh interpreter: importing the package and a non-Impact run never load torch.

    itk itself imports torch when torch is installed (``itk.support.helpers._HAVE_TORCH``); the
    subprocess turns that off, so any torch in ``sys.modules`` afterwards came from the bridge.
    The plugin is looked for in ``sys.modules`` and among the process's mapped libraries.
    """
    code = textwrap.dedent(
        f"""
        import json, os, sys
        import elastix_bridge
        after_import = "torch" in sys.modules
        # itk's own array helpers import torch whenever it is installed; switch that off so only
        # the bridge could import it here.
        import itk.support.helpers
        itk.support.helpers._HAVE_TORCH = False
        import itk, numpy as np
        from elastix_bridge.api import elastix_registration_method
        y, x = np.mgrid[:32, :32].astype(np.float32)
        fixed = itk.image_from_array(np.exp(-((x - 16) ** 2 + (y - 16) ** 2) / 50.0).astype(np.float32))
        moving = itk.image_from_array(np.exp(-((x - 18) ** 2 + (y - 15) ** 2) / 50.0).astype(np.float32))
        result, tp = elastix_registration_method(fixed, moving, parameter_object={elastix_map()!r},
                                                 output_directory={str(tmp_path)!r})
        print(json.dumps(dict(
            after_import=after_import,
            torch="torch" in sys.modules,
            plugin=any(m.startswith("elastix_bridge_impact") for m in sys.modules)
            or "elastix_bridge_impact" in (open("/proc/self/maps").read() if os.path.exists("/proc/self/maps") else ""),
            result=type(result).__name__, size=list(result.GetLargestPossibleRegion().GetSize()),
            tp=type(tp).__name__, maps=tp.GetNumberOfParameterMaps(),
            transform=list(tp.GetParameterMap(0)["Transform"]),
            n_parameters=len(tp.GetParameterMap(0)["TransformParameters"]))))
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["after_import"] is False, "import elastix_bridge imported torch"
    assert report["torch"] is False, "a non-Impact registration imported torch"
    assert report["plugin"] is False, "a non-Impact registration loaded the plugin"
    assert report["result"].startswith("itkImage") and report["size"] == [32, 32]
    assert report["tp"].endswith("ParameterObject") and report["maps"] == 1
    assert report["transform"] == ["TranslationTransform"] and report["n_parameters"] == 2
    assert (tmp_path / "TransformParameters.0.txt").is_file()


def test_non_impact_map_matches_itk_elastix(pair):
    """A non-Impact map gives exactly itk-elastix's TransformParameters and result image."""
    fixed, moving = pair
    ours, ours_tp = elastix_registration_method(fixed, moving, parameter_object=elastix_map())
    po = itk.ParameterObject.New()
    po.AddParameterMap(elastix_map())
    theirs, theirs_tp = itk.elastix_registration_method(fixed, moving, parameter_object=po)
    assert transform_parameters(ours_tp) == transform_parameters(theirs_tp)
    assert any(float(v) != 0.0 for v in transform_parameters(ours_tp))  # it did register
    np.testing.assert_array_equal(itk.array_from_image(ours), itk.array_from_image(theirs))


def test_non_impact_parameter_object_passes_through(pair):
    """An ``itk.ParameterObject`` without Impact is accepted as itk-elastix accepts it."""
    po = itk.ParameterObject.New()
    po.AddParameterMap(elastix_map(iterations=2))
    _, tp = elastix_registration_method(*pair, parameter_object=po)
    assert tp.GetNumberOfParameterMaps() == 1
    assert list(tp.GetParameterMap(0)["Transform"]) == ["TranslationTransform"]


# ---------------------------------------------------------------------------------------------
# Impact maps: bridge engine, transformix agreement
# ---------------------------------------------------------------------------------------------


def test_impact_returns_parameter_object_that_transformix_applies(impact_run, pair):
    """The result is transformix's resampling of the moving image with the returned map."""
    result, tp, _, _ = impact_run
    fixed, moving = pair
    assert isinstance(tp, itk.ParameterObject) and tp.GetNumberOfParameterMaps() == 1
    tp_map = tp.GetParameterMap(0)
    assert list(tp_map["Transform"]) == ["BSplineTransform"]
    assert list(tp_map["Direction"]) != ["1", "0", "0", "1"]
    assert itk.array_from_image(result).shape == itk.array_from_image(fixed).shape
    np.testing.assert_allclose(np.asarray(result.GetDirection()), DIRECTION, atol=1e-12)
    again = itk.transformix_filter(moving, tp)
    np.testing.assert_array_equal(itk.array_from_image(again), itk.array_from_image(result))
    # The registration moved the blobs towards each other.
    f, m, r = (itk.array_from_image(x).astype(np.float64) for x in (fixed, moving, result))
    assert np.mean((r - f) ** 2) < 0.8 * np.mean((m - f) ** 2)


@pytest.mark.parametrize("transform", ["BSplineTransform", "TranslationTransform"])
def test_transformix_field_matches_engine_transform(plugin, pair, transform, tmp_path):
    """transformix's deformation field equals the engine's own T(x) - x to 1e-3 mm everywhere."""
    torch = pytest.importorskip("torch")
    from elastix_bridge.core.geometry import ImageGeometry
    from elastix_bridge.engine.registration import run_stage
    from elastix_bridge.core.parameters import ParameterMap
    from elastix_bridge.core.transform_io import to_parameter_object

    fixed, moving = pair
    pmap = impact_map(transform)
    stage = run_stage(fixed, moving, ParameterMap.from_dict(pmap))
    centres = torch.from_numpy(ImageGeometry.from_itk(fixed).voxel_centres())
    engine = (stage.transform.transform_points(stage.parameters, centres) - centres).numpy()
    assert np.abs(engine).max() > 0.1  # a real deformation, not the identity

    _, tp = elastix_registration_method(fixed, moving, parameter_object=pmap)
    for parameter_object in (tp, to_parameter_object([stage.transform_parameter_map])):
        field = itk.transformix_deformation_field(moving, parameter_object, output_directory=str(tmp_path))
        field = itk.array_from_image(field).reshape(-1, 2)  # x fastest, like voxel_centres
        np.testing.assert_allclose(field, engine, rtol=0, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Output directory, reproducibility
# ---------------------------------------------------------------------------------------------


def test_output_directory_gets_elastix_files(impact_run):
    """TransformParameters, result in ResultImageFormat, IterationInfo and the log file."""
    _, tp, folder, _ = impact_run
    names = {p.name for p in folder.iterdir()}
    assert {"TransformParameters.0.txt", "result.0.nii", "IterationInfo.0.R0.txt", "elastix.log"} <= names
    assert not any(n.startswith(".tmp") for n in names)  # no half-written leftovers
    written = itk.ParameterObject.New()
    written.ReadParameterFile(str(folder / "TransformParameters.0.txt"))
    np.testing.assert_allclose([float(v) for v in transform_parameters(written)],
                               [float(v) for v in transform_parameters(tp)], rtol=1e-12, atol=0)
    rows = (folder / "IterationInfo.0.R0.txt").read_text().splitlines()
    assert rows[0].startswith("1:ItNr") and len(rows) == 1 + 10
    assert (folder / "elastix.log").read_text().strip()


def test_missing_output_directory_is_a_clear_error(pair, tmp_path):
    missing = tmp_path / "not-there"
    with pytest.raises(FileNotFoundError, match=r"output directory .*not-there does not exist; create it"):
        elastix_registration_method(*pair, parameter_object=impact_map(), output_directory=str(missing))
    assert not missing.exists()


def test_same_map_and_seed_give_identical_parameters(impact_run, pair):
    _, tp, _, pmap = impact_run
    _, again = elastix_registration_method(*pair, parameter_object=pmap)
    assert transform_parameters(again) == transform_parameters(tp)


def test_result_does_not_depend_on_threads(plugin, pair, impact_run):
    """One batch per evaluation (Q4, Q14): one thread gives the result of all threads.

    (``UseMultiThreadingForMetrics``, which crashes upstream when false, is not read by the bridge
    engine at all, so there is nothing of it to test here.)
    """
    _, tp, _, pmap = impact_run
    _, again = elastix_registration_method(*pair, parameter_object=pmap, number_of_threads=1)
    np.testing.assert_allclose(np.array(transform_parameters(again), dtype=float),
                               np.array(transform_parameters(tp), dtype=float), rtol=0, atol=1e-6)


def test_mixed_precision_is_not_applied_on_the_cpu(plugin, pair, impact_run, caplog):
    """ImpactUseMixedPrecision on the CPU (Q3): a warning says float16 is not applied; results unchanged."""
    _, tp, _, pmap = impact_run
    mixed = dict(pmap, ImpactUseMixedPrecision=["true"])
    with caplog.at_level("WARNING", logger="elastix_bridge"):
        _, again = elastix_registration_method(*pair, parameter_object=mixed)
    assert any("ImpactUseMixedPrecision" in r.getMessage() and "CPU" in r.getMessage() for r in caplog.records)
    assert transform_parameters(again) == transform_parameters(tp)
