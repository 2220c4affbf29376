"""One elastix registration (one parameter map) whose metric is Impact: the multi-resolution loop.

Order of operations follows elastix's ``MultiResolutionRegistration``
(``Common/itkMultiResolutionImageRegistrationMethod2.hxx``; elastix_spec §2): validate everything,
seed the generator with ``RandomSeed``, then per resolution level build the pyramid images and the
(eroded) masks, define or upsample the B-spline grid, initialise the metric, run the optimizer's
automatic parameter estimation and its iterations, and finally express the result as an elastix
TransformParameters map.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

log = logging.getLogger("elastix_bridge")

# Components the bridge engine runs around an Impact metric; anything else is refused by name.
SUPPORTED_COMPONENTS = {
    # MultiMetric with the single Impact metric is MultiResolutionRegistration (every ImpactLoss map uses it).
    "Registration": ("MultiResolutionRegistration", "MultiMetricMultiResolutionRegistration"),
    "Transform": ("BSplineTransform", "RecursiveBSplineTransform", "TranslationTransform"),
    "Optimizer": ("AdaptiveStochasticGradientDescent",),
    "ImageSampler": ("RandomCoordinate", "Random", "Full", "Grid", "RandomSparseMask"),
    "Interpolator": ("BSplineInterpolator", "LinearInterpolator"),
    "FixedImagePyramid": ("FixedSmoothingImagePyramid", "FixedRecursiveImagePyramid",
                          "FixedShrinkingImagePyramid", "FixedGenericImagePyramid"),
    "MovingImagePyramid": ("MovingSmoothingImagePyramid", "MovingRecursiveImagePyramid",
                           "MovingShrinkingImagePyramid", "MovingGenericImagePyramid"),
}
COMPONENT_DEFAULTS = {
    "Registration": "MultiResolutionRegistration",
    "Interpolator": "BSplineInterpolator",
    "FixedImagePyramid": "FixedSmoothingImagePyramid",
    "MovingImagePyramid": "MovingSmoothingImagePyramid",
}


class UnsupportedComponentError(ValueError):
    """A parameter map names a component the bridge engine does not run."""


def check_components(pmap) -> dict:
    """Return the component names of an Impact map, refusing unsupported ones by name.

    Raises:
        UnsupportedComponentError: an unsupported or missing component, with the supported list.
    """
    chosen = {}
    metrics = pmap.values("Metric")
    if metrics != ["Impact"]:
        raise UnsupportedComponentError(
            f"(Metric {' '.join(repr(m) for m in metrics)}): the bridge engine runs a single Impact metric "
            "per stage; combining Impact with other metrics (MultiMetricMultiResolutionRegistration) is not "
            "supported yet. Use (Metric \"Impact\") alone.")
    for key, allowed in SUPPORTED_COMPONENTS.items():
        values = pmap.values(key)
        if not values:
            if key in COMPONENT_DEFAULTS:
                values = [COMPONENT_DEFAULTS[key]]
            else:
                raise UnsupportedComponentError(f"the parameter map has no ({key} ...); elastix requires it. "
                                                f"Supported: {', '.join(allowed)}")
        if len(values) != 1 or values[0] not in allowed:
            raise UnsupportedComponentError(
                f"({key} {' '.join(chr(34) + v + chr(34) for v in values)}) is not supported by the bridge engine "
                f"for Impact stages. Supported: {', '.join(allowed)}.")
        chosen[key] = values[0]
    return chosen


@dataclass
class StageResult:
    """Result of one Impact stage.

    Attributes:
        transform_parameter_map: the elastix TransformParameters map (ParameterMap).
        transform: the final-level transform object; ``parameters`` its parameters (Tensor[P]).
        history: per level, the list of :class:`~elastix_bridge.engine.optimizers.IterationRecord`.
        seconds: wall time of the stage.
    """

    transform_parameter_map: object
    transform: object
    parameters: object
    history: list = field(default_factory=list)
    seconds: float = 0.0


class _ImpactCost:
    """Cost function for the optimizer: metric value and autograd derivative at the current samples."""

    def __init__(self, metric, sampler, exact_sampler, weight: float = 1.0):
        self.metric = metric
        self.weight = weight
        self.sampler = sampler
        self.exact_sampler = exact_sampler
        self._points = None
        self._exact_points = None

    @property
    def uses_random_sampler(self) -> bool:
        return type(self.sampler).__name__ in ("RandomCoordinateSampler", "RandomSampler", "RandomSparseMaskSampler")

    def select_new_samples(self) -> None:
        self._points = None

    def value_and_derivative(self, parameters, exact: bool = False):
        import torch

        if exact:
            if self._exact_points is None:
                self._exact_points = self.exact_sampler.sample()
            points = self._exact_points
        else:
            if self._points is None:
                self._points = self.sampler.sample()
            points = self._points
        p = parameters.detach().clone().requires_grad_(True)
        value, _ = self.metric.value(p, points)
        value = self.weight * value
        (grad,) = torch.autograd.grad(value, p)
        return float(value.detach()), grad.detach().to(torch.float64)


def _schedule(pmap, names, count, typ):
    """First parameter in ``names`` that has all ``count`` entries, as an array; None otherwise."""
    for name in names:
        if pmap.has(name) and len(pmap.values(name)) >= count:
            return np.array([pmap.get_entry(name, i, type=typ) for i in range(count)])
    return None


def _pyramid_schedule(pmap, which: str, kind: str, levels: int, geometry):
    from .pyramids import pyramid_schedule

    d = geometry.dimension
    rescale = _schedule(pmap, [f"{which}ImagePyramidRescaleSchedule", "ImagePyramidRescaleSchedule",
                               f"{which}ImagePyramidSchedule", "ImagePyramidSchedule"], levels * d, int)
    smoothing = _schedule(pmap, [f"{which}ImagePyramidSmoothingSchedule", "ImagePyramidSmoothingSchedule"],
                          levels * d, float)
    return pyramid_schedule(kind, levels, geometry,
                            rescale=None if rescale is None else rescale.reshape(levels, d),
                            smoothing=None if smoothing is None else smoothing.reshape(levels, d))


def _grid_settings(pmap, geometry, levels: int):
    """Final B-spline grid spacing (mm, ITK order) and the per-level schedule (elastix_spec §6.4)."""
    d = geometry.dimension
    if pmap.has("FinalGridSpacingInPhysicalUnits") and pmap.has("FinalGridSpacingInVoxels"):
        raise ValueError("give either FinalGridSpacingInPhysicalUnits or FinalGridSpacingInVoxels, not both")
    if pmap.has("FinalGridSpacingInVoxels"):
        final = np.array([pmap.get("FinalGridSpacingInVoxels", level=k, type=float) for k in range(d)])
        final = final * geometry.spacing
    else:
        final = np.array([pmap.get("FinalGridSpacingInPhysicalUnits", level=k, default=8.0, type=float)
                          for k in range(d)])
    if pmap.has("GridSpacingSchedule"):
        values = np.array([float(v) for v in pmap.values("GridSpacingSchedule")])
        if values.size == levels:
            schedule = np.repeat(values[:, None], d, axis=1)
        elif values.size == levels * d:
            schedule = values.reshape(levels, d)
        else:
            raise ValueError(f"GridSpacingSchedule has {values.size} values; elastix expects one per resolution "
                             f"({levels}) or one per resolution and dimension ({levels * d})")
    else:
        schedule = np.array([[2.0 ** (levels - 1 - r)] * d for r in range(levels)])
    return final, schedule


def _metric_weight(pmap, components, level: int) -> float:
    """Weight of the single Impact metric under MultiMetricMultiResolutionRegistration (elastix_spec §7.6).

    ``Metric0Weight`` (default 1 = 1/number of metrics); with ``UseRelativeWeights`` the weight is
    ``Metric0RelativeWeight`` × ‖∇V₀‖/‖∇V₀‖, i.e. the relative weight. 1 under MultiResolutionRegistration.
    """
    if components["Registration"] != "MultiMetricMultiResolutionRegistration":
        return 1.0
    if pmap.get("UseRelativeWeights", default=False, type=bool):
        return pmap.get("Metric0RelativeWeight", level=level, default=1.0, type=float)
    return pmap.get("Metric0Weight", level=level, default=1.0, type=float)


def _erosion_flag(pmap, which: str, level: int) -> bool:
    flag = pmap.get("ErodeMask", level=level, default=True, type=bool)
    if pmap.has(f"Erode{which}Mask"):
        flag = pmap.get(f"Erode{which}Mask", level=level, type=bool)
    return flag


def run_impact_stage(fixed_image, moving_image, pmap, fixed_mask=None, moving_mask=None, *,
                     elastix_level: int = 0, output_directory: Optional[Path] = None,
                     on_iteration: Optional[Callable] = None) -> StageResult:
    """Run one Impact parameter map like elastix would.

    Args:
        fixed_image, moving_image: ``itk.Image`` (any scalar type; cast to float like elastix).
        pmap: :class:`elastix_bridge.parameters.ParameterMap` with ``(Metric "Impact")``.
        fixed_mask, moving_mask: ``itk.Image`` masks (non-zero = inside) or None.
        elastix_level: index of this map in the parameter object (file names ``*.<level>.*``).
        output_directory: where elastix would write per-resolution files, or None.
        on_iteration: ``on_iteration(level, record)`` for progress reporting.

    Returns:
        :class:`StageResult`.

    Raises:
        UnsupportedComponentError, elastix_bridge.parameters.ParameterError,
        elastix_bridge.impact_parameters.ImpactParameterError: invalid map (before any computation).
        elastix_bridge.loader.ImpactUnavailableError, elastix_bridge.loader.ImpactModelError:
            torch, plugin, device or model problems (before any computation).
        elastix_bridge.engine.optimizers.SamplingError: too few valid samples.
    """
    tic = time.perf_counter()
    from .. import loader
    from ..impact_parameters import impact_levels, resolve_model_path
    from ..transform_io import transform_parameter_map, write_transform_parameter_file
    from .images import LevelImage, Mask
    from .impact_metric import ImpactMetric, check_level_models
    from .optimizers import AdaptiveStochasticGradientDescent, ASGDSettings, jacobian_terms
    from .pyramids import pyramid_level
    from .samplers import GridSampler, make_sampler
    from .transforms import BSplineTransform, TranslationTransform, grid_for_level

    components = check_components(pmap)
    fixed_full = LevelImage.from_itk(fixed_image)
    moving_full = LevelImage.from_itk(moving_image)
    dim = fixed_full.geometry.dimension
    if moving_full.geometry.dimension != dim:
        raise ValueError(f"the fixed image is {dim}D but the moving image is "
                         f"{moving_full.geometry.dimension}D; elastix needs equal dimensions")
    levels = pmap.get("NumberOfResolutions", default=3, type=int)
    if levels < 1:
        raise ValueError("NumberOfResolutions must be at least 1")
    configs = impact_levels(pmap.to_dict(), levels, dim)

    # Torch, plugin, devices and every model are checked before any computation.
    torch = loader.require_torch()
    plugin = loader.load_plugin()
    # TorchScript's runtime optimisation is off from before the models load until the stage ends
    # (impact_spec §3.6); the user's settings are restored afterwards.
    with loader.jit_optimization_disabled():
        models, devices = [], []
        for cfg in configs:
            device = loader.resolve_device(cfg.gpu)
            half = bool(cfg.mixed_precision and device.type == "cuda")
            if cfg.mixed_precision and not half:
                log.warning("ImpactUseMixedPrecision is ignored on the CPU: float16 is applied on CUDA devices only.")

            def load(c, which):
                key = (f"Impact{which}ModelsPath{cfg.level}" if pmap.has(f"Impact{which}ModelsPath{cfg.level}")
                       else f"ImpactModelsPath{cfg.level}")
                return loader.load_feature_model(str(resolve_model_path(c.path)), device, half=half, parameter=key)

            models.append(([load(c, "Fixed") for c in cfg.fixed_models],
                           [load(c, "Moving") for c in cfg.moving_models]))
            devices.append(device)
            check_level_models(cfg, models[-1], dim, device)

        seed = pmap.get("RandomSeed", default=121212, type=int)
        generator = torch.Generator().manual_seed(seed)

        fmask_full = Mask.from_itk(fixed_mask) if fixed_mask is not None else None
        mmask_full = Mask.from_itk(moving_mask) if moving_mask is not None else None
        fixed_schedule = _pyramid_schedule(pmap, "Fixed", components["FixedImagePyramid"], levels, fixed_full.geometry)
        moving_schedule = _pyramid_schedule(pmap, "Moving", components["MovingImagePyramid"], levels,
                                            moving_full.geometry)

        bspline = components["Transform"] != "TranslationTransform"
        if bspline:
            final_spacing, grid_schedule = _grid_settings(pmap, fixed_full.geometry, levels)
            order = pmap.get("BSplineTransformSplineOrder", default=3, type=int)
        else:
            transform = TranslationTransform(dim)
        parameters = None
        previous = None
        history = []
        sampler_name = components["ImageSampler"]
        for level in range(levels):
            log.info("Resolution: %d", level)
            fixed = LevelImage.from_itk(pyramid_level(fixed_image, components["FixedImagePyramid"],
                                                      fixed_schedule, level))
            moving = LevelImage.from_itk(pyramid_level(moving_image, components["MovingImagePyramid"],
                                                       moving_schedule, level))
            fmask, mmask = fmask_full, mmask_full
            if fmask is not None and _erosion_flag(pmap, "Fixed", level):
                fmask = fmask.eroded(fixed_schedule.rescale[level] + 1)
            if mmask is not None and _erosion_flag(pmap, "Moving", level):
                mmask = mmask.eroded(2 * moving_schedule.rescale[level] + 1)

            if bspline:
                transform = BSplineTransform(
                    grid_for_level(fixed_full.geometry, final_spacing, grid_schedule[level], order), order=order,
                    name=components["Transform"])
                parameters = (transform.parameters if previous is None
                              else transform.upsample(parameters, previous.grid, transform.grid))
                previous = transform
            elif parameters is None:
                parameters = transform.parameters
            parameters = parameters.to(torch.float64)

            n_samples = pmap.get("NumberOfSpatialSamples", level=level, default=5000, type=int)
            sampler = make_sampler(sampler_name, fixed.geometry, fmask, number_of_samples=n_samples,
                                   generator=generator, parameter_map=pmap, level=level)
            settings = ASGDSettings.from_parameter_map(pmap, level, int(parameters.numel()),
                                                       fixed_full.geometry.spacing, moving_full.geometry.spacing)
            exact_sampler = GridSampler(fixed.geometry, fmask,
                                        number_of_samples=settings.number_of_samples_for_exact_gradient)
            order_moving = (1 if pmap.get("Interpolator", default="BSplineInterpolator") == "LinearInterpolator"
                            else pmap.get("BSplineInterpolationOrder", level=level, default=1, type=int,
                                          prefix="Interpolator0"))
            ratio = (pmap.get("RequiredRatioOfValidSamples", level=level, default=0.25, type=float, prefix="Metric0")
                     if pmap.get("CheckNumberOfSamples", level=level, default=True, type=bool, prefix="Metric0")
                     else 0.0)
            metric = ImpactMetric(configs[level], fixed, moving, mmask, transform, plugin, models[level],
                                  devices[level], generator, moving_interpolation_order=order_moving,
                                  required_ratio_of_valid_samples=ratio)
            metric.initialize(parameters)
            cost = _ImpactCost(metric, sampler, exact_sampler, _metric_weight(pmap, components, level))

            terms = None
            if settings.automatic_parameter_estimation:
                jac_points = GridSampler(fixed.geometry, fmask,
                                         number_of_samples=settings.number_of_jacobian_measurements).sample()
                values, indices = transform.jacobian(jac_points)
                terms = jacobian_terms(values, indices, int(parameters.numel()))

            table = IterationTable(output_directory, elastix_level, level, pmap)

            def after(record, position, _level=level, _metric=metric, _table=table):
                _metric.after_iteration(position)
                _table.add(record)
                if on_iteration is not None:
                    on_iteration(_level, record)

            optimizer = AdaptiveStochasticGradientDescent(settings, generator, on_iteration=after)
            parameters = optimizer.optimize(cost, parameters, terms)
            table.close()
            log.info("Stopping condition: %s.", optimizer.stop_condition)
            history.append(optimizer.history)
            if output_directory is not None and pmap.get("WriteTransformParametersEachResolution",
                                                         default=False, type=bool):
                write_transform_parameter_file(
                    transform_parameter_map(transform, parameters, fixed_full.geometry, registration_map=pmap),
                    Path(output_directory) / f"TransformParameters.{elastix_level}.R{level}.txt")

        tp_map = transform_parameter_map(transform, parameters, fixed_full.geometry, registration_map=pmap)
        if history and history[-1]:
            log.info("Final metric value  = %f", history[-1][-1].metric)
        return StageResult(tp_map, transform, parameters, history, time.perf_counter() - tic)


class IterationTable:
    """elastix's iteration table for ASGD: log lines and ``IterationInfo.<e>.R<r>.txt`` (elastix_spec §13)."""

    HEADER = "1:ItNr\t2:Metric\t3a:Time\t3b:StepSize\t4:||Gradient||\tTime[ms]"

    def __init__(self, output_directory, elastix_level: int, level: int, pmap):
        self.file = None
        if output_directory is not None and pmap.get("WriteIterationInfo", default=True, type=bool):
            self.file = open(Path(output_directory) / f"IterationInfo.{elastix_level}.R{level}.txt", "w")
            self.file.write(self.HEADER + "\n")
        log.debug(self.HEADER)

    def add(self, r) -> None:
        row = (f"{r.iteration}\t{r.metric:.6f}\t{r.time:.6f}\t{r.step_size:.6f}\t{r.gradient_norm:.6f}"
               f"\t{r.time_ms:.1f}")
        log.debug(row)
        if self.file is not None:
            self.file.write(row + "\n")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
