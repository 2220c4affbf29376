"""The bridge engine against elastix on maps both can run (fidelity, quick cases).

The same parameter map runs with ``engine="elastix"`` (itk-elastix) and ``engine="bridge"``; the two
deformation fields that transformix computes from the returned maps must agree within 0.5 voxel for
rigid and affine stages and 1 voxel for B-spline stages (mean over the image), and the final metric
values (mean of the last 20 rows of ``IterationInfo.0.R1.txt``: each row is a random-sample
estimate) within 5 %. The pair is smooth 2D blobs on an
oblique, anisotropic grid, the moving one rotated and shifted.
"""
import numpy as np
import pytest

itk = pytest.importorskip("itk")

from elastix_bridge.api import elastix_registration_method  # noqa: E402

# Most cases run the same registration twice, on elastix and on the bridge engine.
pytestmark = pytest.mark.slow

SPACING = (1.2, 0.9)


def _image(dx, dy, angle):
    y, x = np.mgrid[:64, :60].astype(np.float64)
    c, s = np.cos(angle), np.sin(angle)
    xx, yy = c * (x - 30) - s * (y - 32) + 30 + dx, s * (x - 30) + c * (y - 32) + 32 + dy
    array = 100 * (np.exp(-((xx - 25) ** 2 + (yy - 30) ** 2) / 60) + 0.7 * np.exp(-((xx - 38) ** 2 + (yy - 36) ** 2) / 30)
                   + 0.5 * np.exp(-((xx - 30) ** 2 + (yy - 20) ** 2) / 20))
    image = itk.image_from_array(array.astype(np.float32))
    image.SetSpacing(SPACING)
    image.SetOrigin([3.0, -2.0])
    image.SetDirection(itk.matrix_from_array(np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])))
    return image


@pytest.fixture(scope="module")
def pair():
    return _image(0, 0, 0), _image(2.0, -1.5, 0.08)


def _map(transform, metrics, seed="6"):
    pmap = {"Registration": ["MultiMetricMultiResolutionRegistration" if len(metrics) > 1
                             else "MultiResolutionRegistration"],
            "Metric": list(metrics), "Transform": [transform], "Optimizer": ["AdaptiveStochasticGradientDescent"],
            "MaximumNumberOfIterations": ["200"], "NumberOfResolutions": ["2"], "ImageSampler": ["RandomCoordinate"],
            "NumberOfSpatialSamples": ["2000"], "NewSamplesEveryIteration": ["true"],
            "AutomaticTransformInitialization": ["true"], "AutomaticScalesEstimation": ["true"],
            "FinalGridSpacingInPhysicalUnits": ["12"], "RandomSeed": [seed], "WriteResultImage": ["false"]}
    if len(metrics) > 1:
        pmap["Metric1Weight"] = ["0.01"]
    return pmap


def _run(pair, pmap, engine, folder):
    folder.mkdir()
    _, tp = elastix_registration_method(*pair, parameter_object=pmap, output_directory=str(folder), engine=engine)
    field = itk.array_from_image(itk.transformix_deformation_field(pair[1], tp))
    rows = (folder / "IterationInfo.0.R1.txt").read_text().splitlines()[1:]
    # each row is a random-sample estimate: average the last 20 for the final value
    return field, float(np.mean([float(r.split("\t")[1]) for r in rows[-20:]]))


@pytest.mark.parametrize("transform,metrics,tolerance_voxels", [
    ("EulerTransform", ("AdvancedMeanSquares",), 0.5),
    ("EulerTransform", ("AdvancedNormalizedCorrelation",), 0.5),
    ("EulerTransform", ("AdvancedMattesMutualInformation",), 0.5),
    ("AffineTransform", ("AdvancedMeanSquares",), 0.5),
    ("AffineTransform", ("AdvancedMattesMutualInformation",), 0.5),
    ("BSplineTransform", ("AdvancedMattesMutualInformation",), 1.0),
    ("BSplineTransform", ("AdvancedNormalizedCorrelation",), 1.0),
    ("BSplineTransform", ("AdvancedMeanSquares", "TransformBendingEnergyPenalty"), 1.0),
])
def test_bridge_engine_matches_elastix(plugin, pair, tmp_path, transform, metrics, tolerance_voxels):
    pmap = _map(transform, metrics)
    elastix_field, elastix_value = _run(pair, pmap, "elastix", tmp_path / "elastix")
    bridge_field, bridge_value = _run(pair, pmap, "bridge", tmp_path / "bridge")
    difference = np.linalg.norm(bridge_field - elastix_field, axis=-1).mean()
    assert difference <= tolerance_voxels * min(SPACING), f"mean |Δu| {difference:.3f} mm"
    assert bridge_value == pytest.approx(elastix_value, rel=0.05, abs=1e-3)


def test_engine_switch_routes_every_map(plugin, pair, tmp_path, caplog):
    pmap = _map("EulerTransform", ("AdvancedMeanSquares",))
    pmap["MaximumNumberOfIterations"] = ["5"]
    with caplog.at_level("INFO", logger="elastix_bridge"):
        elastix_registration_method(*pair, parameter_object=pmap, engine="bridge")
    assert any("Stage 0 (bridge engine) took" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="engine must be one of"):
        elastix_registration_method(*pair, parameter_object=pmap, engine="native")


def _field(moving, tp):
    return itk.array_from_image(itk.transformix_deformation_field(moving, tp))


def test_sequence_of_maps_starts_each_stage_from_the_previous(plugin, pair, tmp_path):
    """A rigid map then a B-spline map (docs/design.md §E1.7): the chain agrees with elastix's own."""
    rigid, bspline = _map("EulerTransform", ("AdvancedMeanSquares",)), _map("BSplineTransform", ("AdvancedMeanSquares",))
    (tmp_path / "e").mkdir()
    (tmp_path / "b").mkdir()
    _, elastix_tp = elastix_registration_method(*pair, parameter_object=[rigid, bspline], engine="elastix",
                                                output_directory=str(tmp_path / "e"))
    _, bridge_tp = elastix_registration_method(*pair, parameter_object=[rigid, bspline], engine="bridge",
                                               output_directory=str(tmp_path / "b"))
    assert bridge_tp.GetNumberOfParameterMaps() == 2
    assert [bridge_tp.GetParameterMap(i)["Transform"][0] for i in range(2)] == ["EulerTransform", "BSplineTransform"]
    for key in ("GridSize", "GridSpacing", "GridOrigin"):  # the grid is fitted to the rigidly moved domain
        np.testing.assert_allclose(np.array(bridge_tp.GetParameterMap(1)[key], dtype=float),
                                   np.array(elastix_tp.GetParameterMap(1)[key], dtype=float), rtol=0, atol=0.05)
    difference = np.linalg.norm(_field(pair[1], bridge_tp) - _field(pair[1], elastix_tp), axis=-1).mean()
    assert difference <= min(SPACING), f"mean |Δu| {difference:.3f} mm"
    # on disk, the B-spline file names the rigid one, and transformix follows the link from the file alone
    from elastix_bridge.core.transform_io import read_transform_parameter_file, to_parameter_object

    second = read_transform_parameter_file(tmp_path / "b" / "TransformParameters.1.txt")
    assert second.get("InitialTransformParameterFileName") == str(tmp_path / "b" / "TransformParameters.0.txt")
    np.testing.assert_allclose(_field(pair[1], to_parameter_object([second])), _field(pair[1], bridge_tp), atol=1e-4)


def test_initial_transform_file_t0(plugin, pair, tmp_path):
    """``initial_transform_parameter_file_name`` (``-t0``): a bridge B-spline stage on top of an elastix affine."""
    from elastix_bridge.core.transform_io import chain_from_file

    (tmp_path / "affine").mkdir()
    elastix_registration_method(*pair, parameter_object=_map("AffineTransform", ("AdvancedMeanSquares",)),
                                engine="elastix", output_directory=str(tmp_path / "affine"))
    t0 = tmp_path / "affine" / "TransformParameters.0.txt"
    assert len(chain_from_file(t0)) == 1
    bspline = _map("BSplineTransform", ("AdvancedMattesMutualInformation",))
    fields = []
    for engine in ("elastix", "bridge"):
        (tmp_path / engine).mkdir()
        _, tp = elastix_registration_method(*pair, parameter_object=bspline, engine=engine,
                                            output_directory=str(tmp_path / engine),
                                            initial_transform_parameter_file_name=str(t0))
        fields.append(_field(pair[1], tp))
    difference = np.linalg.norm(fields[0] - fields[1], axis=-1).mean()
    assert difference <= min(SPACING), f"mean |Δu| {difference:.3f} mm"


@pytest.mark.parametrize("method,masks", [("GeometricalCenter", False), ("GeometricalCenter", True),
                                          ("CenterOfGravity", False), ("CenterOfGravity", True)])
def test_translation_initialization_matches_elastix(plugin, method, masks):
    """TranslationTransform with AutomaticTransformInitialization: elastix's start + size/2 centres."""
    from elastix_bridge.engine.registration import run_stage
    from elastix_bridge.core.parameters import ParameterMap

    def image(array, spacing, origin):
        im = itk.image_from_array(np.ascontiguousarray(array, dtype=np.float32))
        im.SetSpacing(spacing)
        im.SetOrigin(origin)
        return im

    y, x = np.mgrid[:40, :50].astype(np.float32)
    v, u = np.mgrid[:36, :45].astype(np.float32)
    fixed = image(np.exp(-((x - 20) ** 2 + (y - 18) ** 2) / 50), [1.1, 0.8], [0.0, 0.0])
    moving = image(2 * np.exp(-((u - 26) ** 2 + (v - 15) ** 2) / 50), [0.9, 1.2], [3.0, -1.0])
    kw = {}
    if masks:
        kw = {"fixed_mask": image((x > 5) & (x < 30) & (y > 8) & (y < 33), [1.1, 0.8], [0.0, 0.0]),
              "moving_mask": image((u > 2) & (u < 40) & (v > 10) & (v < 20), [0.9, 1.2], [3.0, -1.0])}
        kw = {k: itk.cast_image_filter(m, ttype=(type(m), itk.Image[itk.UC, 2])) for k, m in kw.items()}
    pmap = {"Registration": ["MultiResolutionRegistration"], "Metric": ["AdvancedMeanSquares"],
            "Transform": ["TranslationTransform"], "Optimizer": ["AdaptiveStochasticGradientDescent"],
            "MaximumNumberOfIterations": ["0"], "NumberOfResolutions": ["1"], "ImageSampler": ["Full"],
            "AutomaticTransformInitialization": ["true"], "AutomaticTransformInitializationMethod": [method],
            "AutomaticParameterEstimation": ["false"], "CheckNumberOfSamples": ["false"]}
    po = itk.ParameterObject.New()
    po.AddParameterMap(pmap)
    _, tp = itk.elastix_registration_method(fixed, moving, parameter_object=po, **kw)
    stage = run_stage(fixed, moving, ParameterMap.from_dict(pmap), kw.get("fixed_mask"), kw.get("moving_mask"))
    np.testing.assert_allclose(stage.parameters.numpy(), np.array(tp.GetParameterMap(0)["TransformParameters"],
                                                                  dtype=float), rtol=0, atol=1e-6)


def _iteration_rows(folder, level):
    """IterationInfo rows of ``level`` without the wall-time column."""
    path = folder / f"IterationInfo.0.R{level}.txt"
    return [line.rsplit("\t", 1)[0] for line in path.read_text().splitlines()]


@pytest.mark.parametrize("transform,metric,line_search_rows", [
    ("EulerTransform", "AdvancedMeanSquares", "false"),
    ("AffineTransform", "AdvancedNormalizedCorrelation", "true"),
])
def test_quasi_newton_lbfgs_follows_elastix(plugin, pair, tmp_path, transform, metric, line_search_rows):
    """QuasiNewtonLBFGS with a Full sampler: nothing is random, so elastix's iteration table is reproduced.

    The iteration-table rows (search direction, line-search iteration, metric, step length, gradient,
    search-direction norm, directional derivative, Wolfe flags, line-search stop; with
    ``GenerateLineSearchIterations`` every line-search trial too) agree to the six printed decimals
    while the optimisation is above the metric's rounding noise; the transforms agree to far below a
    voxel. The start is CenterOfGravity: at the identity of the two equal grids every sample lies exactly
    on a voxel of the moving image, where the one-sided B-spline derivative depends on rounding, and the
    first gradients differ by about 1e-8 (relative), which the following iterations amplify.
    """
    pmap = {"Registration": ["MultiResolutionRegistration"], "Metric": [metric], "Transform": [transform],
            "Optimizer": ["QuasiNewtonLBFGS"], "MaximumNumberOfIterations": ["30"], "NumberOfResolutions": ["2"],
            "ImageSampler": ["Full"], "AutomaticTransformInitialization": ["true"],
            "AutomaticTransformInitializationMethod": ["CenterOfGravity"], "AutomaticScalesEstimation": ["true"],
            "GenerateLineSearchIterations": [line_search_rows], "WriteResultImage": ["false"]}
    fields = []
    for engine in ("elastix", "bridge"):
        (tmp_path / engine).mkdir()
        _, tp = elastix_registration_method(*pair, parameter_object=pmap, output_directory=str(tmp_path / engine),
                                            engine=engine, log_to_file=True)
        fields.append(_field(pair[1], tp))
    difference = np.linalg.norm(fields[0] - fields[1], axis=-1).mean()
    assert difference <= 0.5 * min(SPACING), f"mean |Δu| {difference:.3f} mm"
    assert difference < 1e-3  # measured: 4e-7 mm (Euler/MS), 0 (affine/NCC)

    elastix_rows, bridge_rows = _iteration_rows(tmp_path / "elastix", 0), _iteration_rows(tmp_path / "bridge", 0)
    assert elastix_rows[0].startswith("1:ItNr\t1a:SrchDirNr\t1b:LineItNr\t2:Metric\t3:StepLength\t4a:||Gradient||")
    assert len(elastix_rows) > 6
    # measured: every row of level 0 equal to the last printed digit (8 rows Euler/MS, 29 with the
    # line-search rows affine/NCC); at level 1 the Euler run reaches the noise floor after 4 rows
    assert bridge_rows == elastix_rows
    elastix_rows, bridge_rows = _iteration_rows(tmp_path / "elastix", 1), _iteration_rows(tmp_path / "bridge", 1)
    assert bridge_rows[:4] == elastix_rows[:4]
    assert bool(bridge_rows) == bool(elastix_rows)  # a level without iterations leaves an empty file in both

    def stops(engine):
        return [line for line in (tmp_path / engine / "elastix.log").read_text().splitlines()
                if line.startswith("Stopping condition:")]

    vanished = "Stopping condition: The gradient magnitude has (nearly) vanished."
    assert stops("bridge")[0] == stops("elastix")[0] == vanished


def _mask(image, radius_mm=26.0):
    """A disc mask (unsigned char) on ``image``'s grid, centred on the image centre."""
    size = itk.size(image)
    idx = np.stack(np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="xy"), -1).reshape(-1, 2)
    points = np.array([image.TransformIndexToPhysicalPoint([int(i), int(j)]) for i, j in idx])
    centre = np.array(image.TransformIndexToPhysicalPoint([size[0] // 2, size[1] // 2]))
    inside = (np.linalg.norm(points - centre, axis=1) < radius_mm).reshape(size[1], size[0])
    mask = itk.image_from_array(inside.astype(np.uint8))
    mask.CopyInformation(image)
    return mask


@pytest.mark.parametrize("sampler,transform,metric,new_samples,masks", [
    ("Full", "TranslationTransform", "AdvancedMeanSquares", "false", False),
    ("Random", "EulerTransform", "AdvancedMeanSquares", "true", False),
    ("RandomCoordinate", "AffineTransform", "AdvancedNormalizedCorrelation", "false", True),
    ("RandomCoordinate", "BSplineTransform", "AdvancedMattesMutualInformation", "true", True),
    ("RandomSparseMask", "EulerTransform", "AdvancedNormalizedCorrelation", "true", True),
])
def test_first_iterations_agree_to_printed_precision(plugin, pair, tmp_path, sampler, transform, metric,
                                                     new_samples, masks):
    """Same RandomSeed, same draws (docs/design.md §E14): elastix's first IterationInfo rows, digit for digit.

    Covers the seeded Mersenne Twister of the stage (ASGD perturbation normals, RandomCoordinate
    uniforms, RandomSparseMask integers) and the Random sampler's own per-set generator.
    """
    pmap = {"Registration": ["MultiResolutionRegistration"], "Metric": [metric], "Transform": [transform],
            "Optimizer": ["AdaptiveStochasticGradientDescent"], "MaximumNumberOfIterations": ["5"],
            "NumberOfResolutions": ["1"], "ImageSampler": [sampler], "NumberOfSpatialSamples": ["1500"],
            "NewSamplesEveryIteration": [new_samples], "AutomaticTransformInitialization": ["false"],
            "FinalGridSpacingInPhysicalUnits": ["16"], "RandomSeed": ["4711"], "WriteResultImage": ["false"],
            "WriteIterationInfo": ["true"]}
    extra = dict(fixed_mask=_mask(pair[0]), moving_mask=_mask(pair[1])) if masks else {}
    rows = {}
    for engine in ("elastix", "bridge"):
        folder = tmp_path / engine
        folder.mkdir()
        elastix_registration_method(*pair, parameter_object=pmap, output_directory=str(folder), engine=engine,
                                    **extra)
        lines = (folder / "IterationInfo.0.R0.txt").read_text().splitlines()
        # columns 2:Metric 3a:Time 3b:StepSize 4:||Gradient|| (Time[ms] is wall time)
        rows[engine] = np.array([[float(v) for v in line.split("\t")[1:5]] for line in lines[1:4]])
    np.testing.assert_allclose(rows["bridge"], rows["elastix"], rtol=0, atol=1.01e-6)
