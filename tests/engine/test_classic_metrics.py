"""Tests of the classic metrics (:mod:`elastix_bridge.engine.metrics.classic`, ``.parzen_histogram``,
``.bending_energy``: MeanSquares, NCC, Mattes MI, bending energy).

The key tests compare with itk-elastix itself: one resolution, unsmoothed images (Generic pyramids),
the deterministic Full sampler, ASGD with fixed gains and one iteration, and several metrics of one
``MultiMetricMultiResolutionRegistration`` (weights 1). Row 0 of ``IterationInfo.0.R0.txt`` holds, per
metric, the value at the initial transform (``2:Metric<i>``) and the norm of its gradient with respect
to the stage parameters (``4:||Gradient<i>||``), both printed with 6 decimals; our values and autograd
gradients must match them. The initial transform is an in-memory initial transform map: a translation
(composed with the translation stage), or a B-spline on the stage's own grid added to the B-spline stage
(``HowToCombineTransforms "Add"``: values and gradients comparable) or composed with it (``"Compose"``:
values only, used for the bending energy), so that elastix's full transform at iteration 0 is exactly
the one evaluated here. elastix's error for too few valid samples is compared too. Other tests check
gradients against finite differences and the building blocks against their definitions.

Images: smooth blobs on 40×36 (fixed) and 44×38 (moving) grids with anisotropic spacing and oblique
direction cosines; the moving image is a shifted, non-linearly contrast-changed copy.
"""
import math
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from elastix_bridge.engine.metrics.bending_energy import (TransformBendingEnergyPenalty,  # noqa: E402
                                                          bspline_spatial_hessian)
from elastix_bridge.engine.metrics.classic import (AdvancedMattesMutualInformation,  # noqa: E402
                                                   AdvancedMeanSquares, AdvancedNormalizedCorrelation)
from elastix_bridge.engine.metrics.parzen_histogram import (HistogramAxis, elastix_parzen_derivative,  # noqa: E402
                                                            exponential_limiter, intensity_limits, joint_histogram,
                                                            mattes_mutual_information, moving_parzen_window,
                                                            parzen_window)
from elastix_bridge.core.geometry import ImageGeometry  # noqa: E402
from elastix_bridge.engine.images.level_images import LevelImage, Mask  # noqa: E402
from elastix_bridge.engine.components import component  # noqa: E402
from elastix_bridge.engine.errors import SamplingError  # noqa: E402
from elastix_bridge.engine.samplers import FullSampler  # noqa: E402
from elastix_bridge.engine.transforms.base import TranslationTransform  # noqa: E402
from elastix_bridge.engine.transforms.bspline import BSplineTransform, bspline_kernel, grid_for_level  # noqa: E402
from elastix_bridge.core.parameters import ParameterMap  # noqa: E402

F64 = torch.float64
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True:UserWarning")


# ------------------------------------------------------------------------------------------------
# Images, masks, transforms
# ------------------------------------------------------------------------------------------------


def _rotation(degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


def _blobs(p: np.ndarray) -> np.ndarray:
    """A smooth positive test function of physical points ``(N, 2)``."""
    x, y = p[:, 0], p[:, 1]
    return (80 * np.exp(-((x - 10) ** 2 / 60 + (y - 15) ** 2 / 40))
            + 50 * np.exp(-((x - 30) ** 2 / 30 + (y - 5) ** 2 / 80))
            + 20 * np.sin(x / 7.0) * np.cos(y / 9.0) + 30)


def _ellipse_mask(geometry: ImageGeometry, centre, radii) -> Mask:
    p = geometry.voxel_centres()
    inside = (((p - np.asarray(centre)) / np.asarray(radii)) ** 2).sum(axis=1) < 1.0
    return Mask(geometry, inside.reshape(geometry.shape_zyx))


FIXED_GEOMETRY = ImageGeometry((40, 36), [1.3, 0.9], [-5.0, 3.0], _rotation(20))
MOVING_GEOMETRY = ImageGeometry((44, 38), [1.1, 1.0], [-8.0, 0.5], _rotation(-12))


@pytest.fixture(scope="module")
def images():
    fixed = LevelImage(FIXED_GEOMETRY, _blobs(FIXED_GEOMETRY.voxel_centres()).reshape(FIXED_GEOMETRY.shape_zyx))
    mp = MOVING_GEOMETRY.voxel_centres()
    moving_values = 1.4 * _blobs(mp - np.array([1.7, -1.2])) ** 1.1 - 20
    moving = LevelImage(MOVING_GEOMETRY, moving_values.reshape(MOVING_GEOMETRY.shape_zyx))
    return dict(fixed=fixed, moving=moving,
                fixed_mask=_ellipse_mask(FIXED_GEOMETRY, (14.0, 20.0), (26.0, 17.0)),
                moving_mask=_ellipse_mask(MOVING_GEOMETRY, (12.0, 15.0), (22.0, 15.0)))


STAGE_GRID_SPACING = 5.0  # FinalGridSpacingInPhysicalUnits of the B-spline scenario (mm)


def _stage_grid():
    return grid_for_level(FIXED_GEOMETRY, [STAGE_GRID_SPACING] * 2, 1.0, 3)


def _bspline_coefficients(grid, scale: float = 1.0) -> np.ndarray:
    """Random coefficients (mm), x block then y block, exactly representable with 4 decimals."""
    rng = np.random.default_rng(7)
    return np.round(scale * rng.normal(0.0, 1.6, size=2 * grid.number_of_nodes), 4)


# ------------------------------------------------------------------------------------------------
# itk-elastix runs
# ------------------------------------------------------------------------------------------------

COMMON_MAP = {
    "Registration": ["MultiMetricMultiResolutionRegistration"],
    "Optimizer": ["AdaptiveStochasticGradientDescent"],
    "AutomaticParameterEstimation": ["false"], "SP_a": ["1"], "SP_A": ["20"], "SP_alpha": ["0.602"],
    "MaximumNumberOfIterations": ["1"],
    "ImageSampler": ["Full"],
    "NumberOfResolutions": ["1"],
    # Generic pyramids with one level: no smoothing and no resampling, the raw images (docs/design.md §E3.5)
    "FixedImagePyramid": ["FixedGenericImagePyramid"], "MovingImagePyramid": ["MovingGenericImagePyramid"],
    "Interpolator": ["BSplineInterpolator"],
    "ResampleInterpolator": ["FinalBSplineInterpolator"], "Resampler": ["DefaultResampler"],
    "WriteResultImage": ["false"], "ErodeMask": ["false"],
}

# Each scenario: metrics (name, own options), interpolation order, masks, initial transform.
SCENARIOS = {
    "translation": dict(
        metrics=[("AdvancedMeanSquares", {}),
                 ("AdvancedNormalizedCorrelation", {}),
                 ("AdvancedMattesMutualInformation", {}),
                 ("AdvancedMattesMutualInformation", {"NumberOfFixedHistogramBins": "20",
                                                      "NumberOfMovingHistogramBins": "40",
                                                      "FixedKernelBSplineOrder": "2",
                                                      "MovingLimitRangeRatio": "0.05"}),
                 ("AdvancedNormalizedCorrelation", {"SubtractMean": "false"}),
                 ("AdvancedMeanSquares", {"UseNormalization": "true"}),
                 ("AdvancedMattesMutualInformation", {"NumberOfHistogramBins": "16",
                                                      "UseFastAndLowMemoryVersion": "false"})],
        order=1, fixed_mask=False, moving_mask=False, translation=(0.75, -1.25)),
    "masks_cubic": dict(
        metrics=[("AdvancedMeanSquares", {}),
                 ("AdvancedNormalizedCorrelation", {}),
                 ("AdvancedMattesMutualInformation", {}),
                 ("AdvancedMattesMutualInformation", {"NumberOfHistogramBins": "24",
                                                      "FixedKernelBSplineOrder": "1",
                                                      "MovingKernelBSplineOrder": "2",
                                                      "FixedLimitRangeRatio": "0.05",
                                                      "MovingLimitRangeRatio": "0"}),
                 ("AdvancedMeanSquares", {"UseNormalization": "true"})],
        order=3, fixed_mask=True, moving_mask=True, translation=(-1.6, 0.9)),
    # T = T_stage + T_init − x with T_init on the stage grid: elastix's gradient with respect to the stage
    # coefficients equals ours with respect to the coefficients of T_init. (elastix's bending energy
    # ignores T_init's Hessian under "Add": its GetJacobianOfSpatialHessianUseAddition returns the
    # current transform's only, so the penalty is tested under "Compose" below.)
    "bspline_add": dict(
        metrics=[("AdvancedMeanSquares", {}),
                 ("AdvancedNormalizedCorrelation", {}),
                 ("AdvancedMattesMutualInformation", {})],
        order=1, fixed_mask=False, moving_mask=True, translation=None, combine="Add", scale=1.0),
    # T = T_stage ∘ T_init = T_init at iteration 0, but elastix re-grids the stage over T_init's bounding
    # box, so only the values are comparable.
    "bspline_compose": dict(
        metrics=[("TransformBendingEnergyPenalty", {}),
                 ("AdvancedMattesMutualInformation", {}),
                 ("AdvancedMeanSquares", {})],
        order=3, fixed_mask=True, moving_mask=True, translation=None, combine="Compose", scale=2.5,
        gradients=False),
}


def _fmt(values) -> list:
    return [repr(float(v)) for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def _registration_map(scenario: dict) -> dict:
    pm = {k: list(v) for k, v in COMMON_MAP.items()}
    pm["Metric"] = [name for name, _ in scenario["metrics"]]
    for i, (_, options) in enumerate(scenario["metrics"]):
        pm[f"Metric{i}Weight"] = ["1"]
        for key, value in options.items():
            pm[f"Metric{i}{key}"] = [value]
    pm["BSplineInterpolationOrder"] = [str(scenario["order"])]
    if scenario["translation"] is None:
        pm["Transform"] = ["BSplineTransform"]
        pm["FinalGridSpacingInPhysicalUnits"] = [repr(STAGE_GRID_SPACING)]
        pm["HowToCombineTransforms"] = [scenario["combine"]]
    else:
        pm["Transform"] = ["TranslationTransform"]
    return pm


def _initial_map(scenario: dict) -> dict:
    g = FIXED_GEOMETRY
    out = {"FixedImageDimension": ["2"], "MovingImageDimension": ["2"], "HowToCombineTransforms": ["Compose"],
           "InitialTransformParameterFileName": ["NoInitialTransform"],
           "Size": [str(s) for s in g.size], "Index": ["0", "0"], "Spacing": _fmt(g.spacing),
           "Origin": _fmt(g.origin), "Direction": _fmt(g.direction.T)}
    if scenario["translation"] is not None:
        out.update(Transform=["TranslationTransform"], NumberOfParameters=["2"],
                   TransformParameters=_fmt(scenario["translation"]))
    else:
        grid = _stage_grid()
        coef = _bspline_coefficients(grid, scenario["scale"])
        out.update(Transform=["BSplineTransform"], NumberOfParameters=[str(coef.size)],
                   TransformParameters=_fmt(coef), GridSize=[str(s) for s in grid.size_xyz],
                   GridIndex=["0", "0"], GridSpacing=_fmt(grid.spacing), GridOrigin=_fmt(grid.origin),
                   GridDirection=_fmt(grid.direction.T), BSplineTransformSplineOrder=["3"],
                   UseCyclicTransform=["false"])
    return out


def _run_elastix(images, scenario: dict, directory) -> dict:
    """Row 0 of the IterationInfo file as ``{column: float}``, plus the final transform maps."""
    itk = pytest.importorskip("itk")
    if not hasattr(itk, "elastix_registration_method"):
        pytest.skip("itk-elastix is not installed")
    po = itk.ParameterObject.New()
    po.AddParameterMap(_registration_map(scenario))
    ipo = itk.ParameterObject.New()
    ipo.AddParameterMap(_initial_map(scenario))
    kwargs = {}
    if scenario["fixed_mask"]:
        kwargs["fixed_mask"] = images["fixed_mask"].to_itk()
    if scenario["moving_mask"]:
        kwargs["moving_mask"] = images["moving_mask"].to_itk()
    _, tpo = itk.elastix_registration_method(
        images["fixed"].to_itk(), images["moving"].to_itk(), parameter_object=po,
        initial_transform_parameter_object=ipo, output_directory=str(directory), log_to_file=True,
        log_to_console=False, **kwargs)
    lines = (directory / "IterationInfo.0.R0.txt").read_text().splitlines()
    header, row = lines[0].split("\t"), lines[1].split("\t")
    assert row[0] == "0"
    info = {h: float(v) for h, v in zip(header, row)}
    info["maps"] = [dict(tpo.GetParameterMap(i)) for i in range(tpo.GetNumberOfParameterMaps())]
    return info


@pytest.fixture(scope="module")
def elastix_rows(images, tmp_path_factory):
    """IterationInfo row 0 of every scenario (one elastix run each, computed once)."""
    return {name: _run_elastix(images, sc, tmp_path_factory.mktemp(name)) for name, sc in SCENARIOS.items()}


def _our_setup(images, scenario: dict):
    """Transform, parameters and Full-sampler points matching the elastix run of ``scenario``."""
    fmask = images["fixed_mask"] if scenario["fixed_mask"] else None
    points = FullSampler(FIXED_GEOMETRY, fmask).sample()
    if scenario["translation"] is not None:
        return TranslationTransform(2), torch.tensor(scenario["translation"], dtype=F64), points
    grid = _stage_grid()
    return BSplineTransform(grid, order=3), torch.from_numpy(_bspline_coefficients(grid, scenario["scale"])), points


def _metric(images, scenario: dict, index: int):
    name, _ = scenario["metrics"][index]
    transform, params, points = _our_setup(images, scenario)
    metric = component("Metric", name).factory(
        images["fixed"], images["moving"], images["moving_mask"] if scenario["moving_mask"] else None,
        transform, moving_interpolation_order=scenario["order"],
        parameter_map=ParameterMap.from_dict(_registration_map(scenario)), level=0, prefix=f"Metric{index}",
        fixed_mask=images["fixed_mask"] if scenario["fixed_mask"] else None)
    return metric, params, points


def _value_and_gradient(metric, params, points):
    p = params.clone().requires_grad_(True)
    value, n_valid = metric.value(p, points)
    (grad,) = torch.autograd.grad(value, p)
    return float(value.detach()), grad, n_valid


def _close_to_log(ours: float, logged: float) -> bool:
    """Equal up to 1e-5 relative, or up to the 6-decimal rounding of elastix's log."""
    return abs(ours - logged) <= 1e-5 * abs(logged) + 6e-7


CASES = [(name, i) for name, sc in SCENARIOS.items() for i in range(len(sc["metrics"]))]


@pytest.mark.parametrize("scenario_name,index", CASES,
                         ids=[f"{n}-{i}-{SCENARIOS[n]['metrics'][i][0]}" for n, i in CASES])
def test_value_and_gradient_norm_match_elastix(images, elastix_rows, scenario_name, index):
    scenario = SCENARIOS[scenario_name]
    row = elastix_rows[scenario_name]
    metric, params, points = _metric(images, scenario, index)
    value, grad, n_valid = _value_and_gradient(metric, params, points)
    assert 0 < n_valid <= points.shape[0]
    logged_value, logged_norm = row[f"2:Metric{index}"], row[f"4:||Gradient{index}||"]
    assert _close_to_log(value, logged_value), (value, logged_value)
    if scenario.get("gradients", True):
        assert _close_to_log(float(grad.norm()), logged_norm), (float(grad.norm()), logged_norm)


def test_scenarios_are_not_trivial(images, elastix_rows):
    """Masks reject samples, the cubic moving interpolation overshoots the masked moving range (the
    exponential limiter acts), and the B-spline stage grid is elastix's."""
    sc = SCENARIOS["masks_cubic"]
    metric, params, points = _metric(images, sc, 2)
    f, m, n = metric.samples(params, points)
    assert n < points.shape[0] < FIXED_GEOMETRY.size[0] * FIXED_GEOMETRY.size[1]
    lo, hi = metric.moving_range
    assert float(m.max()) > hi or float(m.min()) < lo
    final = elastix_rows["bspline_add"]["maps"][-1]
    grid = _stage_grid()
    assert [int(v) for v in final["GridSize"]] == list(grid.size_xyz)
    np.testing.assert_allclose([float(v) for v in final["GridOrigin"]], grid.origin, rtol=0, atol=1e-9)
    np.testing.assert_allclose([float(v) for v in final["GridSpacing"]], grid.spacing, rtol=0, atol=1e-12)
    assert elastix_rows["bspline_compose"]["2:Metric0"] > 0.1  # large enough for ~1e-5 relative in the log


def test_subtract_mean_is_ignored_like_elastix(elastix_rows):
    row = elastix_rows["translation"]
    assert row["2:Metric4"] == row["2:Metric1"]
    assert row["4:||Gradient4||"] == row["4:||Gradient1||"]


# ------------------------------------------------------------------------------------------------
# Derivatives against finite differences
# ------------------------------------------------------------------------------------------------


def _finite_difference(metric, params, points, directions, h):
    out = []
    for d in directions:
        plus = float(metric.value(params + h * d, points)[0])
        minus = float(metric.value(params - h * d, points)[0])
        out.append((plus - minus) / (2 * h))
    return np.array(out)


FD_METRICS = [
    ("AdvancedMeanSquares", {"UseNormalization": ["true"]}),
    ("AdvancedNormalizedCorrelation", {}),
    ("AdvancedMattesMutualInformation", {}),
    ("AdvancedMattesMutualInformation", {"FixedKernelBSplineOrder": ["3"], "MovingKernelBSplineOrder": ["2"],
                                         "MovingLimitRangeRatio": ["0.002"]}),
]
FD_CASES = ([(name, options, "translation") for name, options in FD_METRICS]
            + [(name, options, "bspline") for name, options in FD_METRICS + [("TransformBendingEnergyPenalty", {})]])


@pytest.mark.parametrize("name,options,transform_kind", FD_CASES,
                         ids=[f"{kind}-{name}-{i}" for i, (name, _, kind) in enumerate(FD_CASES)])
def test_gradient_matches_finite_differences(images, name, options, transform_kind):
    if transform_kind == "translation":
        transform, params = TranslationTransform(2), torch.tensor([0.4, -0.3], dtype=F64)
    else:
        grid = _stage_grid()
        transform, params = BSplineTransform(grid, order=3), torch.from_numpy(_bspline_coefficients(grid)) * 0.5
    points = FullSampler(FIXED_GEOMETRY).sample()
    # Mattes: the exact derivative (elastix's derivative kernel differs for MovingKernelBSplineOrder 2)
    extra = {"elastix_kernel_derivative": False} if name == "AdvancedMattesMutualInformation" else {}
    metric = component("Metric", name).factory(images["fixed"], images["moving"], images["moving_mask"], transform,
                                               moving_interpolation_order=3, parameter_map=options,
                                               fixed_mask=images["fixed_mask"], **extra)
    value, grad, _ = _value_and_gradient(metric, params, points)
    gen = torch.Generator().manual_seed(3)
    directions = [grad / grad.norm()] + [torch.randn(params.shape, generator=gen, dtype=F64) for _ in range(2)]
    fd = _finite_difference(metric, params, points, directions, h=1e-5)
    analytic = np.array([float(grad @ d) for d in directions])
    np.testing.assert_allclose(analytic, fd, rtol=2e-4, atol=1e-7 * max(1.0, abs(value)))


# ------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_parzen_window_is_the_bspline_kernel(order):
    term = torch.linspace(3.01, 9.97, 301, dtype=F64)
    start, w = parzen_window(term, order)
    assert w.shape == (301, order + 1)
    offsets = start[:, None].to(F64) + torch.arange(order + 1, dtype=F64)[None, :] - term[:, None]
    torch.testing.assert_close(w, bspline_kernel(offsets, order), rtol=0, atol=1e-14)
    torch.testing.assert_close(w.sum(dim=1), torch.ones(301, dtype=F64), rtol=0, atol=1e-14)
    # the window covers every bin the kernel reaches: the bins just outside it are beyond the support
    radius = (order + 1) / 2.0 - 1e-12
    assert bool((start.to(F64) - 1 - term).abs().ge(radius).all())
    assert bool((start.to(F64) + order + 1 - term).abs().ge(radius).all())


def test_parzen_window_order0_half_weight_at_bin_edge():
    """elastix's zero-order kernel gives 0.5 at |u| = 0.5 exactly (BSplineKernelFunction2<0>)."""
    _, w = parzen_window(torch.tensor([2.5, 2.25], dtype=F64), 0)
    assert w[:, 0].tolist() == [0.5, 1.0]


def test_exponential_limiter():
    x = torch.linspace(-30.0, 130.0, 1601, dtype=F64, requires_grad=True)
    y = exponential_limiter(x, 0.0, 100.0, -1.0, 101.0)
    assert float(y.min()) > -1.0 and float(y.max()) < 101.0
    inside = (x >= 0) & (x <= 100)
    torch.testing.assert_close(y[inside], x[inside])
    (g,) = torch.autograd.grad(y.sum(), x)
    assert bool((g > 0).all()) and bool((g <= 1.0).all())
    # continuity of value and slope at the thresholds; a zero-width band is a hard limit
    eps = 1e-7
    for t in (0.0, 100.0):
        lo, hi = exponential_limiter(torch.tensor([t - eps, t + eps], dtype=F64), 0.0, 100.0, -1.0, 101.0)
        assert abs(float(hi - lo) - 2 * eps) < 1e-10
    hard = exponential_limiter(torch.tensor([-5.0, 50.0, 105.0], dtype=F64), 0.0, 100.0, 0.0, 100.0)
    assert hard.tolist() == [0.0, 50.0, 100.0]


def test_histogram_axis_geometry():
    """Limited values stay inside the padded histogram; the moving ε uses the number of fixed bins."""
    lo, hi = intensity_limits(10.0, 110.0, 0.01)
    assert (lo, hi) == (9.0, 111.0)
    axis = HistogramAxis.from_limits(lo, hi, 32, 3)
    assert axis.padding == 1
    eps = 0.001 * 102.0 / 29
    assert axis.bin_size == pytest.approx((102.0 + 2 * eps) / 29, rel=1e-15)
    for order, bins in [(0, 4), (1, 7), (2, 9), (3, 32)]:
        ax = HistogramAxis.from_limits(lo, hi, bins, order)
        start, w = parzen_window(ax.parzen_term(torch.tensor([lo, hi], dtype=F64)), order)
        assert int(start.min()) >= 0 and int(start.max()) + order <= bins - 1
    moving = HistogramAxis.from_limits(lo, hi, 40, 3, epsilon_bins=20)
    eps = 0.001 * 102.0 / (20 - 3)
    assert moving.bin_size == pytest.approx((102.0 + 2 * eps) / 37, rel=1e-15)
    assert HistogramAxis.from_limits(lo, hi, 2, 3).bins == 4  # clamped like itkSetClampMacro


def test_mutual_information_of_independent_and_identical_variables():
    """Independent histograms have MI 0; a diagonal histogram has MI = entropy (value −log B)."""
    pf = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    pm = torch.tensor([0.25, 0.25, 0.5, 0.0], dtype=F64)
    assert abs(float(mattes_mutual_information(pf[:, None] * pm[None, :]))) < 1e-15
    diag = torch.eye(4, dtype=F64) / 4
    assert float(mattes_mutual_information(diag)) == pytest.approx(-math.log(4), rel=1e-14)
    hist = joint_histogram(torch.tensor([0, 1]), torch.ones(2, 1, dtype=F64), torch.tensor([0, 2]),
                           torch.tensor([[0.5, 0.5], [0.25, 0.75]], dtype=F64), 3, 4)
    expected = torch.zeros(3, 4, dtype=F64)
    expected[0, 0:2] = torch.tensor([0.5, 0.5])
    expected[1, 2:4] = torch.tensor([0.25, 0.75])
    torch.testing.assert_close(hist, expected)


def test_bspline_hessian_matches_finite_differences_of_the_transform():
    grid = _stage_grid()
    transform = BSplineTransform(grid, order=3)
    params = torch.from_numpy(_bspline_coefficients(grid))
    points = FullSampler(FIXED_GEOMETRY).sample()[::37]
    hess = bspline_spatial_hessian(transform, params, points)
    h = 1e-4
    eye = torch.eye(2, dtype=F64)
    fd = torch.zeros_like(hess)
    for a in range(2):
        for b in range(2):
            t = lambda p: transform.transform_points(params, p)  # noqa: E731
            fd[:, :, a, b] = (t(points + h * eye[a] + h * eye[b]) - t(points + h * eye[a] - h * eye[b])
                              - t(points - h * eye[a] + h * eye[b]) + t(points - h * eye[a] - h * eye[b])) / (4 * h * h)
    torch.testing.assert_close(hess, fd, rtol=0, atol=2e-5)
    assert float(hess.abs().max()) > 0.05


def test_bending_energy_of_a_translation_is_zero(images):
    metric = TransformBendingEnergyPenalty(images["fixed"], images["moving"], None, TranslationTransform(2))
    p = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    value, n = metric.value(p, FullSampler(FIXED_GEOMETRY).sample())
    assert float(value) == 0.0 and n == 0
    (g,) = torch.autograd.grad(value, p)
    assert g.tolist() == [0.0, 0.0]


FAR_TRANSLATION = (45.0, 0.0)  # maps 85 % of the fixed voxel centres outside the moving image


@pytest.fixture(scope="module")
def elastix_sampling_error(images, tmp_path_factory):
    """elastix's error line for a translation that maps too many samples outside the moving image."""
    directory = tmp_path_factory.mktemp("far")
    scenario = dict(SCENARIOS["translation"], translation=FAR_TRANSLATION, metrics=[("AdvancedMeanSquares", {})])
    with pytest.raises(RuntimeError):
        _run_elastix(images, scenario, directory)
    lines = [ln for ln in (directory / "elastix.log").read_text().splitlines() if "Too many samples" in ln]
    assert lines
    return lines[0]


@pytest.mark.parametrize("cls", [AdvancedMeanSquares, AdvancedNormalizedCorrelation, AdvancedMattesMutualInformation])
def test_too_many_samples_outside_raise_sampling_error(images, elastix_sampling_error, cls):
    points = FullSampler(FIXED_GEOMETRY).sample()
    metric = cls(images["fixed"], images["moving"], None, TranslationTransform(2))
    with pytest.raises(SamplingError, match="Too many samples map outside moving image buffer") as info:
        metric.value(torch.tensor(FAR_TRANSLATION, dtype=F64), points)
    assert elastix_sampling_error.endswith(str(info.value))  # same counts as elastix: "215 / 1440"
    relaxed = cls(images["fixed"], images["moving"], None, TranslationTransform(2), required_ratio_of_valid_samples=0.0)
    _, n = relaxed.value(torch.tensor(FAR_TRANSLATION, dtype=F64), points)
    assert 0 < n < 0.25 * points.shape[0]


def test_elastix_derivative_kernel_is_exact_for_order_3():
    term = torch.linspace(2.0, 9.0, 157, dtype=F64, requires_grad=True)
    _, w = parzen_window(term, 3)
    exact = torch.stack([torch.autograd.grad(w[:, i].sum(), term, retain_graph=True)[0] for i in range(4)], dim=1)
    torch.testing.assert_close(-elastix_parzen_derivative(term.detach(), 3), exact, rtol=0, atol=1e-13)
    # orders 1 and 2: elastix's (sign-reflected) formulas are what the default Mattes gradient uses
    t = term.detach().clone().requires_grad_(True)
    _, w2 = moving_parzen_window(t, 2)
    (g,) = torch.autograd.grad((w2 * torch.tensor([1.0, 2.0, 3.0], dtype=F64)).sum(), t)
    expected = -(elastix_parzen_derivative(t.detach(), 2) * torch.tensor([1.0, 2.0, 3.0], dtype=F64)).sum(dim=1)
    torch.testing.assert_close(g, expected)


def test_options_and_factory(images):
    args = (images["fixed"], images["moving"], None, TranslationTransform(2))
    with pytest.raises(ValueError, match=r"\(Metric \"AdvancedKappaStatistic\"\) is not supported.*AdvancedMeanSquares"):
        component("Metric", "AdvancedKappaStatistic")
    with pytest.raises(ValueError, match="UseJacobianPreconditioning"):
        AdvancedMattesMutualInformation(*args, parameter_map={"UseJacobianPreconditioning": ["true"]})
    mi = AdvancedMattesMutualInformation(*args, parameter_map={"NumberOfHistogramBins": ["16", "24"],
                                                               "Metric1NumberOfMovingHistogramBins": ["40"]},
                                         level=1, prefix="Metric1")
    assert (mi.fixed_bins, mi.moving_bins) == (24, 40)
    assert (mi.fixed_kernel_order, mi.moving_kernel_order) == (0, 3)
    metric = AdvancedMeanSquares(*args)
    assert metric.initialize(None) is None and metric.after_iteration(None) is None


def test_metrics_are_found_without_torch_and_imported_without_itk():
    """The component registry names the classic metrics without importing them (nor torch nor itk); the
    metric modules import torch at their top, never itk."""
    code = ("import sys; from elastix_bridge.engine.components import names; "
            "assert {'AdvancedMattesMutualInformation', 'TransformBendingEnergyPenalty'} <= set(names('Metric')); "
            "print('torch' in sys.modules, 'itk' in sys.modules); "
            "import elastix_bridge.engine.metrics.classic, elastix_bridge.engine.metrics.bending_energy; "
            "print('itk' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]


def test_bending_energy_refuses_an_initial_transform():
    """Composed with an initial transform the penalty is not implemented: a clear error, not a silent 0."""
    from elastix_bridge.engine.transforms.initial import ComposedTransform
    from elastix_bridge.engine.transforms.base import TranslationTransform

    composed = ComposedTransform(TranslationTransform(2), lambda p: p)
    with pytest.raises(ValueError, match="initial transform.*not supported"):
        TransformBendingEnergyPenalty(None, None, None, composed)
