"""One elastix registration (one parameter map) on the bridge engine: the multi-resolution loop.

Order of operations follows elastix's ``MultiResolutionRegistration``
(``Common/itkMultiResolutionImageRegistrationMethod2.hxx``; docs/design.md §E2): validate everything,
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

from ..parameters import UInt
from .components import DEFAULTS, FAMILIES, UnsupportedComponentError, component, names, register
from .geometry import grid_domain_under_initial

log = logging.getLogger("elastix_bridge")

# Components of which a multi-metric map may list one per metric (docs/design.md §E7.6).
PER_METRIC = ("ImageSampler",)

register("Registration", "MultiResolutionRegistration", multi_metric=False,
         source="Components/Registrations/MultiResolutionRegistration")
register("Registration", "MultiMetricMultiResolutionRegistration", multi_metric=True,
         notes="`Metric<i>Weight`, `Metric<i>Use`, `UseRelativeWeights`/`Metric<i>RelativeWeight`, one "
               "`ImageSampler` per metric or a shared one",
         source="Components/Registrations/MultiMetricMultiResolutionRegistration")


def check_components(pmap) -> dict:
    """Return the component names of a map, refusing unsupported ones by name (docs/design.md §E1.8).

    Returns:
        ``{key: name}`` for the single-valued components, plus ``"Metric"`` (list of metric names)
        and ``"ImageSampler"`` (list: one sampler, or one per metric).

    Raises:
        UnsupportedComponentError: an unsupported or missing component, with the supported list.
    """
    metrics = pmap.values("Metric")
    if not metrics:
        raise UnsupportedComponentError("the parameter map has no (Metric ...); elastix requires it")
    unknown = [m for m in metrics if m not in names("Metric")]
    if unknown:
        raise UnsupportedComponentError(
            f"(Metric {' '.join(chr(34) + m + chr(34) for m in metrics)}): {', '.join(unknown)} not supported by "
            f"the bridge engine. Supported metrics: {', '.join(names('Metric'))}.")
    if metrics.count("Impact") > 1:
        raise UnsupportedComponentError("the bridge engine runs at most one Impact metric per map; several layers "
                                        "or models go into that one metric's Impact* options")
    registration = pmap.get("Registration", default=DEFAULTS["Registration"])
    if len(metrics) > 1 and registration != "MultiMetricMultiResolutionRegistration":
        raise UnsupportedComponentError(
            f"{len(metrics)} metrics need (Registration \"MultiMetricMultiResolutionRegistration\"), as in "
            f"elastix; the map has (Registration \"{registration}\")")
    scales = pmap.values("MovingImageDerivativeScales")
    if scales and any(float(v) != 1.0 for v in scales):
        raise UnsupportedComponentError(
            f"(MovingImageDerivativeScales {' '.join(scales)}) is not supported by the bridge engine; remove it "
            "(all 1) or run this map on elastix (engine='elastix', --engine elastix)")
    chosen = {"Metric": metrics}
    for key in FAMILIES:
        if key == "Metric":
            continue
        allowed = names(key)
        values = pmap.values(key)
        if not values:
            if key in DEFAULTS:
                values = [DEFAULTS[key]]
            else:
                raise UnsupportedComponentError(f"the parameter map has no ({key} ...); elastix requires it. "
                                                f"Supported: {', '.join(allowed)}")
        count_ok = len(values) == 1 or (key in PER_METRIC and len(values) <= len(metrics))
        if not count_ok or any(v not in allowed for v in values):
            raise UnsupportedComponentError(
                f"({key} {' '.join(chr(34) + v + chr(34) for v in values)}) is not supported by the bridge engine. "
                f"Supported: {', '.join(allowed)}.")
        chosen[key] = values if key in PER_METRIC else values[0]
    return chosen


@dataclass
class StageResult:
    """Result of one bridge-engine stage.

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


class _StageCost:
    """Cost function for the optimizer: the weighted metrics and their autograd derivative.

    ``V = Σ_i w_i V_i`` and ``∇V = Σ_i w_i ∇V_i`` over the metrics in use (docs/design.md §E7.6); the
    weights are ``Metric<i>Weight`` or, with ``UseRelativeWeights``, ``Metric<i>RelativeWeight ×
    ‖∇V_0‖ / ‖∇V_i‖`` recomputed at every evaluation. Each metric has its own sampler or shares the
    first; ``exact=True`` uses the dense grid of ASGD's parameter estimation for all of them.
    ``parts`` keeps ``(value, ‖gradient‖, milliseconds)`` of every metric of the last evaluation for
    elastix's per-metric iteration-table columns.
    """

    def __init__(self, metrics, samplers, exact_sampler, weights, use, relative_weights=None):
        self.metrics = metrics
        self.samplers = samplers
        self.exact_sampler = exact_sampler
        self.weights = weights
        self.use = use
        self.relative_weights = relative_weights
        self._points = [None] * len(samplers)
        self._exact_points = None
        self.parts = []

    @property
    def uses_random_sampler(self) -> bool:
        return any(component("ImageSampler", s.name).trait("random") for s in self.samplers)

    def select_new_samples(self) -> None:
        self._points = [None] * len(self.samplers)

    def _samples(self, i: int, exact: bool):
        if exact:
            if self._exact_points is None:
                self._exact_points = self.exact_sampler.sample()
            return self._exact_points
        k = min(i, len(self.samplers) - 1) if len(self.samplers) > 1 else 0
        if self._points[k] is None:
            self._points[k] = self.samplers[k].sample()
        return self._points[k]

    def value_and_derivative(self, parameters, exact: bool = False):
        import torch

        values, grads, self.parts = [], [], []
        for i, metric in enumerate(self.metrics):
            tic = time.perf_counter()
            p = parameters.detach().clone().requires_grad_(True)
            value, _ = metric.value(p, self._samples(i, exact))
            (grad,) = torch.autograd.grad(value, p)
            values.append(float(value.detach()))
            grads.append(grad.detach().to(torch.float64))
            self.parts.append((values[-1], float(grads[-1].norm()), 1000.0 * (time.perf_counter() - tic)))
        weights = list(self.weights)
        if self.relative_weights is not None:
            reference = float(grads[0].norm())
            weights = [r * reference / float(g.norm()) if float(g.norm()) > 1e-10 else w
                       for r, g, w in zip(self.relative_weights, grads, weights)]
        total = 0.0
        derivative = torch.zeros_like(grads[0])
        for w, u, v, g in zip(weights, self.use, values, grads):
            if u:
                total += w * v
                derivative += w * g
        return total, derivative


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
    """Final B-spline grid spacing (mm, ITK order) and the per-level schedule (docs/design.md §E6.4)."""
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
        from .transforms import default_grid_schedule

        schedule = np.array(default_grid_schedule(levels, d))
    return final, schedule


def _metric_weights(pmap, components, level: int):
    """``(weights, use, relative_weights)`` of the metrics at ``level`` (docs/design.md §E7.6).

    MultiMetricMultiResolutionRegistration: ``Metric<i>Weight`` (default 1/number of metrics),
    ``Metric<i>Use`` (default true: excluded metrics are still evaluated), and with
    ``UseRelativeWeights`` (entry 0) ``Metric<i>RelativeWeight`` (default 1/number of metrics).
    MultiResolutionRegistration: the single metric with weight 1.
    """
    n = len(components["Metric"])
    if not component("Registration", components["Registration"]).trait("multi_metric"):
        return [1.0], [True], None
    weights = [pmap.get(f"Metric{i}Weight", level=level, default=1.0 / n, type=float) for i in range(n)]
    use = [pmap.get(f"Metric{i}Use", level=level, default=True, type=bool) for i in range(n)]
    relative = None
    if pmap.get("UseRelativeWeights", default=False, type=bool):
        relative = [pmap.get(f"Metric{i}RelativeWeight", level=level, default=1.0 / n, type=float)
                    for i in range(n)]
    return weights, use, relative


def _combined(transform, initial_transform, how: str):
    """The stage transform, combined with the earlier stages' transform when there is one."""
    if initial_transform is None:
        return transform
    from .initial_transforms import ComposedTransform

    return ComposedTransform(transform, initial_transform, how)


def _erosion_flag(pmap, which: str, level: int) -> bool:
    flag = pmap.get("ErodeMask", level=level, default=True, type=bool)
    if pmap.has(f"Erode{which}Mask"):
        flag = pmap.get(f"Erode{which}Mask", level=level, type=bool)
    return flag


def run_stage(fixed_image, moving_image, pmap, fixed_mask=None, moving_mask=None, *,
              elastix_level: int = 0, output_directory: Optional[Path] = None,
              on_iteration: Optional[Callable] = None, initial_transform=None,
              initial_transform_file: Optional[str] = None, on_level: Optional[Callable] = None) -> StageResult:
    """Run one parameter map like elastix would (Impact and/or elastix's classic metrics).

    Args:
        fixed_image, moving_image: ``itk.Image`` (any scalar type; cast to float like elastix).
        pmap: :class:`elastix_bridge.parameters.ParameterMap` with components registered in
            :mod:`elastix_bridge.engine.components`.
        fixed_mask, moving_mask: ``itk.Image`` masks (non-zero = inside) or None.
        elastix_level: index of this map in the parameter object (file names ``*.<level>.*``).
        output_directory: where elastix would write per-resolution files, or None.
        on_iteration: ``on_iteration(level, record)`` for progress reporting.
        on_level: ``on_level(level)`` when a resolution level starts (to name it in errors).
        initial_transform: the earlier stages' transform, a callable on ``(N, D)`` physical points
            (e.g. :class:`~elastix_bridge.engine.initial_transforms.TransformChain`), or None; combined
            with this stage's transform by ``HowToCombineTransforms`` (docs/design.md §E1.7).
        initial_transform_file: ``InitialTransformParameterFileName`` written into the result map.

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
    from ..iteration_info import IterationTable
    from ..transform_io import transform_parameter_map, write_transform_parameter_file
    from .images import LevelImage, Mask
    from .classic_metrics import make_classic_metric
    from .linear_transforms import make_linear_transform, translation_initialization
    from .impact_metric import ImpactMetric, check_level_models
    from .optimizers import ASGDSettings, jacobian_terms
    from .pyramids import pyramid_level
    from .random import ElastixRandom
    from .samplers import GridSampler, make_sampler
    from .transforms import grid_for_level

    components = check_components(pmap)
    fixed_full = LevelImage.from_itk(fixed_image)
    moving_full = LevelImage.from_itk(moving_image)
    dim = fixed_full.geometry.dimension
    if moving_full.geometry.dimension != dim:
        raise ValueError(f"the fixed image is {dim}D but the moving image is "
                         f"{moving_full.geometry.dimension}D; elastix needs equal dimensions")
    levels = pmap.get("NumberOfResolutions", default=3, type=UInt)
    if levels < 1:
        raise ValueError("NumberOfResolutions must be at least 1")
    check_stage_settings(pmap, components, levels, dim)
    impact_index = components["Metric"].index("Impact") if "Impact" in components["Metric"] else None
    configs = ([] if impact_index is None
               else impact_levels(pmap.to_dict(), levels, dim, metric_index=impact_index))

    # Torch, plugin, devices and every model are checked before any computation.
    torch = loader.require_torch()
    plugin = loader.load_plugin()  # also holds the B-spline kernels every metric uses
    # TorchScript's runtime optimisation is off from before the models load until the stage ends
    # (docs/design.md §I3.6); the user's settings are restored afterwards.
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
        # elastix's one Mersenne Twister per run (samplers, ASGD perturbations); Impact's own
        # random choices (feature subsets, patch rotations) use a torch generator with the same seed.
        generator = ElastixRandom(seed)
        impact_generator = torch.Generator().manual_seed(seed)

        fmask_full = Mask.from_itk(fixed_mask) if fixed_mask is not None else None
        mmask_full = Mask.from_itk(moving_mask) if moving_mask is not None else None
        fixed_schedule = _pyramid_schedule(pmap, "Fixed", components["FixedImagePyramid"], levels, fixed_full.geometry)
        moving_schedule = _pyramid_schedule(pmap, "Moving", components["MovingImagePyramid"], levels,
                                            moving_full.geometry)

        transform_component = component("Transform", components["Transform"])
        kind = transform_component.trait("kind")
        bspline = kind == "bspline"
        how = pmap.get("HowToCombineTransforms", default="Compose")
        scales = parameters0 = None
        if bspline:
            grid_geometry = fixed_full.geometry
            final_spacing, grid_schedule = _grid_settings(pmap, fixed_full.geometry, levels)
            if initial_transform is not None and how == "Compose":
                grid_geometry, final_spacing = grid_domain_under_initial(fixed_full.geometry, final_spacing,
                                                                          initial_transform)
            order = pmap.get("BSplineTransformSplineOrder", default=3, type=int)
        elif kind == "translation":
            transform = _combined(transform_component.factory(dim), initial_transform, how)
            if initial_transform is None and pmap.get("AutomaticTransformInitialization", default=False, type=bool):
                # docs/design.md §E6.2: only when asked, and never on top of an initial transform
                parameters0 = torch.from_numpy(translation_initialization(
                    pmap.get("AutomaticTransformInitializationMethod", default="GeometricalCenter"),
                    fixed_full.geometry, moving_full.geometry, fixed_full, moving_full, fmask_full, mmask_full))
        else:
            transform, parameters0, scales = make_linear_transform(
                components["Transform"], pmap, fixed_full.geometry, moving_full.geometry, fixed_full, moving_full,
                fmask_full, mmask_full, initial_transform=initial_transform, how_to_combine=how)
            transform = _combined(transform, initial_transform, how)
        parameters = None
        previous = None
        history = []
        for level in range(levels):
            log.info("Resolution: %d", level)
            if on_level is not None:
                on_level(level)
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
                transform = _combined(transform_component.factory(
                    grid_for_level(grid_geometry, final_spacing, grid_schedule[level], order), order=order,
                    name=components["Transform"]), initial_transform, how)
                parameters = (transform.parameters if previous is None
                              else transform.upsample(parameters, previous.grid, transform.grid))
                previous = transform
            elif parameters is None:
                parameters = transform.parameters if parameters0 is None else parameters0
            parameters = parameters.to(torch.float64)

            n_samples = pmap.get("NumberOfSpatialSamples", level=level, default=5000, type=UInt)
            samplers = [make_sampler(name, fixed.geometry, fmask, number_of_samples=n_samples,
                                     generator=generator, parameter_map=pmap, level=level)
                        for name in components["ImageSampler"]]
            settings = ASGDSettings.from_parameter_map(pmap, level, int(parameters.numel()),
                                                       fixed_full.geometry.spacing, moving_full.geometry.spacing)
            exact_sampler = GridSampler(fixed.geometry, fmask,
                                        number_of_samples=settings.number_of_samples_for_exact_gradient)
            order_moving = component("Interpolator", components["Interpolator"]).factory(pmap, level)
            metrics = []
            for i, name in enumerate(components["Metric"]):
                ratio = (pmap.get("RequiredRatioOfValidSamples", level=level, default=0.25, type=float,
                                  prefix=f"Metric{i}")
                         if pmap.get("CheckNumberOfSamples", level=level, default=True, type=bool, prefix=f"Metric{i}")
                         else 0.0)
                if component("Metric", name).trait("feature_models"):
                    metric = ImpactMetric(configs[level], fixed, moving, mmask, transform, plugin, models[level],
                                          devices[level], impact_generator, moving_interpolation_order=order_moving,
                                          required_ratio_of_valid_samples=ratio)
                else:
                    metric = make_classic_metric(
                        name, fixed, moving, mmask, transform, moving_interpolation_order=order_moving,
                        required_ratio_of_valid_samples=ratio, parameter_map=pmap, level=level, prefix=f"Metric{i}",
                        fixed_mask=fmask, fixed_interpolation_order=pmap.get(
                            "FixedImageBSplineInterpolationOrder", level=level, default=1, type=int))
                metric.initialize(parameters)
                metrics.append(metric)
            cost = _StageCost(metrics, samplers, exact_sampler, *_metric_weights(pmap, components, level))

            terms = None
            optimizer_component = component("Optimizer", components["Optimizer"])
            if optimizer_component.trait("automatic_parameter_estimation") and settings.automatic_parameter_estimation:
                jac_points = GridSampler(fixed.geometry, fmask,
                                         number_of_samples=settings.number_of_jacobian_measurements).sample()
                values, indices = transform.jacobian(jac_points, parameters)
                terms = jacobian_terms(values, indices, int(parameters.numel()), scales=scales)

            table = IterationTable(output_directory, elastix_level, level, pmap, components["Optimizer"],
                                   len(metrics))

            def after(record, position, _level=level, _metrics=metrics, _table=table, _cost=cost):
                for m in _metrics:
                    m.after_iteration(position)
                _table.add(record, _cost.parts)
                if on_iteration is not None:
                    on_iteration(_level, record)

            optimizer = optimizer_component.factory(pmap, level, settings, generator, after)
            parameters = optimizer.optimize(cost, parameters, terms, scales=scales)
            table.close()
            log.info("Stopping condition: %s.", optimizer.stop_condition)
            history.append(optimizer.history)
            if output_directory is not None and pmap.get("WriteTransformParametersEachResolution",
                                                         default=False, type=bool):
                write_transform_parameter_file(
                    transform_parameter_map(transform, parameters, fixed_full.geometry, registration_map=pmap,
                                            initial_transform_file=initial_transform_file, how_to_combine=how),
                    Path(output_directory) / f"TransformParameters.{elastix_level}.R{level}.txt")

        tp_map = transform_parameter_map(transform, parameters, fixed_full.geometry, registration_map=pmap,
                                         initial_transform_file=initial_transform_file, how_to_combine=how)
        if history and history[-1]:
            log.info("Final metric value  = %f", history[-1][-1].metric)
        return StageResult(tp_map, transform, parameters, history, time.perf_counter() - tic)


def check_stage_settings(pmap, components, levels: int, dimension: int) -> None:
    """Read every level's optimizer settings and the B-spline grid schedule once, before any computation.

    Called at the start of :func:`run_stage` and by :mod:`elastix_bridge.validation` for every bridge map
    of a chain, so that a bad value in a later map stops the chain before its first stage. Settings whose
    defaults depend on the images (ASGD's step length, the grid spacing in voxels) are read on a unit
    grid: only the values written in the map are checked.

    Raises:
        elastix_bridge.parameters.ParameterError, ValueError: a value of the wrong form or an invalid
            combination, naming the key.
    """
    from .geometry import ImageGeometry

    unit = np.ones(dimension)
    read_settings = component("Optimizer", components["Optimizer"]).trait("settings")
    for level in range(levels):
        read_settings(pmap, level, dimension)
    if component("Transform", components["Transform"]).trait("kind") == "bspline":
        _grid_settings(pmap, ImageGeometry((2,) * dimension, unit, 0 * unit, np.eye(dimension)), levels)
