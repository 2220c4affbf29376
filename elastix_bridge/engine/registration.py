"""One elastix registration (one parameter map) on the bridge engine: the multi-resolution loop.

Order of operations follows elastix's ``MultiResolutionRegistration``
(``Common/itkMultiResolutionImageRegistrationMethod2.hxx``; docs/design.md §1.5, §E2), in four steps
that :func:`run_stage` calls in turn:

1. :func:`setup_stage`, once per stage: validate the map and the images, load torch, the plugin and
   every level's models, seed the generator with ``RandomSeed``, read the pyramid schedules and set up
   the transform (B-spline grid plan, or the linear transform and its start) -> :class:`StageSetup`.
2. :class:`LevelContext`, per resolution level: pyramid images, (eroded) masks, the level's transform,
   samplers, metrics and their weighted cost, the iteration table and the optimizer.
3. :func:`optimize_level`: the optimizer's iterations on that level.
4. :func:`stage_output`: the result as an elastix TransformParameters map (:class:`StageResult`).

Why this module is longer than ~600 lines: the steps are kept together, in the order they run, because
that order decides every draw of elastix's random generator (samplers, ASGD) and so the result to the
last digit; splitting them over modules would hide it. What the stage reads from the map without torch
(components, settings, schedules) is in :mod:`elastix_bridge.engine.stage_settings`.

Importing this module imports torch: a front end imports it after the LibTorch check
(:func:`elastix_bridge.runtime.loader.require_torch`).
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence

import math

import numpy as np
import torch

from elastix_bridge.core.geometry import ImageGeometry
from elastix_bridge.core.impact_parameters import ImpactLevelConfig, ModelConfig, impact_levels
from elastix_bridge.core import run_timing
from elastix_bridge.core.iteration_info import IterationTable
from elastix_bridge.core.parameters import ParameterMap, UInt
from elastix_bridge.core.transform_io import transform_parameter_map, write_transform_parameter_file
from elastix_bridge.engine.components import Component, component
from elastix_bridge.engine.errors import NonFiniteMetricError
from elastix_bridge.engine.images.level_images import LevelImage, Mask
from elastix_bridge.engine.images.pyramids import PyramidSchedule, pyramid_level
from elastix_bridge.engine.metrics.impact_models import check_level_models
from elastix_bridge.engine.random import ElastixRandom
from elastix_bridge.engine.samplers import ImageSampler, make_sampler
from elastix_bridge.engine.stage_settings import (check_components, check_stage_settings, feature_model_metric,
                                                  grid_settings, map_pyramid_schedule, metric_weights)
from elastix_bridge.engine.transforms.base import Transform
from elastix_bridge.engine.transforms.bspline import grid_domain_under_initial, grid_for_level
from elastix_bridge.engine.transforms.initial import ComposedTransform
from elastix_bridge.engine.transforms.initializers import translation_initialization
from elastix_bridge.engine.transforms.linear_setup import make_linear_transform
from elastix_bridge.runtime import loader
from elastix_bridge.runtime.memory import set_mmap_threshold

if TYPE_CHECKING:  # pragma: no cover
    import itk

log = logging.getLogger("elastix_bridge")

@dataclass
class StageResult:
    """Result of one bridge-engine stage.

    Attributes:
        transform_parameter_map: the elastix TransformParameters map (ParameterMap).
        transform: the final-level transform object; ``parameters`` its parameters (Tensor[P]).
        history: per level, the list of :class:`~elastix_bridge.engine.optimizers.base.IterationRecord`.
        seconds: wall time of the stage.
    """

    transform_parameter_map: object
    transform: object
    parameters: object
    history: list = field(default_factory=list)
    seconds: float = 0.0


class StageCost:
    """Cost function for the optimizer: the weighted metrics and their autograd derivative.

    ``V = Σ_i w_i V_i`` and ``∇V = Σ_i w_i ∇V_i`` over the metrics in use (docs/design.md §E7.6); the
    weights are ``Metric<i>Weight`` or, with ``UseRelativeWeights``, ``Metric<i>RelativeWeight ×
    ‖∇V_0‖ / ‖∇V_i‖`` recomputed at every evaluation. Each metric has its own sampler or shares the
    first; ``exact=True`` uses the dense grid of ASGD's parameter estimation for all of them.
    ``parts`` keeps ``(value, ‖gradient‖, milliseconds)`` of every metric of the last evaluation for
    elastix's per-metric iteration-table columns.
    """

    def __init__(self, metrics: Sequence[Any], samplers: Sequence[ImageSampler], weights: Sequence[float],
                 use: Sequence[bool], relative_weights: Optional[Sequence[float]] = None,
                 exact_sampler: Optional[ImageSampler] = None) -> None:
        self.metrics = metrics
        self.samplers = samplers
        self.exact_sampler = exact_sampler  # or set by an optimizer that asks for exact gradients (before_level)
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
            if self.exact_sampler is None:
                raise RuntimeError("exact gradients were asked for, but the optimizer set no exact-gradient sampler "
                                   "in its before_level")
            if self._exact_points is None:
                self._exact_points = self.exact_sampler.sample()
            return self._exact_points
        k = min(i, len(self.samplers) - 1) if len(self.samplers) > 1 else 0
        if self._points[k] is None:
            self._points[k] = self.samplers[k].sample()
        return self._points[k]

    def value_and_derivative(self, parameters: torch.Tensor, exact: bool = False) -> tuple[float, torch.Tensor]:
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
        _check_finite_cost(self.metrics, values, grads)
        return total, derivative


def _check_finite_cost(metrics, values, grads) -> None:
    """Refuse a NaN or Inf metric value or derivative (the optimizer would turn it into a NaN or unmoved result).

    Raises:
        elastix_bridge.engine.errors.NonFiniteMetricError: naming the metric; :func:`optimize_level` adds where.
    """
    for metric, value, grad in zip(metrics, values, grads):
        norm = float(grad.norm())
        if not (math.isfinite(value) and math.isfinite(norm)):
            raise NonFiniteMetricError(f"metric {type(metric).__name__.removesuffix('Metric')} gave value {value} "
                                       f"and derivative norm {norm}")


def _combined(transform, initial_transform, how: str):
    """The stage transform, combined with the earlier stages' transform when there is one."""
    if initial_transform is None:
        return transform
    return ComposedTransform(transform, initial_transform, how)


def _erosion_flag(pmap, which: str, level: int) -> bool:
    flag = pmap.get("ErodeMask", level=level, default=True, type=bool)
    if pmap.has(f"Erode{which}Mask"):
        flag = pmap.get(f"Erode{which}Mask", level=level, type=bool)
    return flag


@dataclass
class BSplineGridPlan:
    """Where a B-spline stage defines its grids (docs/design.md §E6.4).

    Attributes:
        geometry: the domain the grids cover: the full fixed image's geometry, or the one moved by the
            initial transform (:func:`~elastix_bridge.engine.transforms.bspline.grid_domain_under_initial`).
        final_spacing: ``(D,)`` final grid spacing, mm, ITK order.
        schedule: ``(levels, D)`` factors of the final spacing per resolution level (``GridSpacingSchedule``).
        order: spline order (``BSplineTransformSplineOrder``).
    """

    geometry: ImageGeometry
    final_spacing: np.ndarray
    schedule: np.ndarray
    order: int


@dataclass(kw_only=True)
class StageSetup:
    """What one stage reads, checks and loads once, before its first resolution level (docs/design.md §E2).

    Made by :func:`setup_stage`, field by name. Images and masks are the full-resolution ones; every per-level list
    has one entry per resolution level.

    Attributes:
        pmap: the stage's :class:`~elastix_bridge.core.parameters.ParameterMap`.
        components: the component names, from :func:`~elastix_bridge.engine.stage_settings.check_components`.
        levels: ``NumberOfResolutions``.
        fixed_image, moving_image: the ``itk.Image`` inputs the pyramid levels are made from.
        fixed, moving: the same as :class:`~elastix_bridge.engine.images.level_images.LevelImage` (float, ITK geometry).
        fixed_mask, moving_mask: :class:`~elastix_bridge.engine.images.level_images.Mask` or None.
        fixed_schedule, moving_schedule: :class:`~elastix_bridge.engine.images.pyramids.PyramidSchedule`
            (per level shrink factors and smoothing sigmas, ITK order; docs/design.md §E3).
        impact_levels: per level :class:`~elastix_bridge.core.impact_parameters.ImpactLevelConfig`; empty
            without an Impact metric.
        models, devices: per level ``(fixed models, moving models)`` and ``torch.device`` (Impact only).
        plugin: the compiled plugin (B-spline kernels, feature models).
        generator: elastix's Mersenne Twister seeded with ``RandomSeed`` (samplers, ASGD; §E14).
        impact_generator: ``torch.Generator`` with the same seed (Impact's random choices).
        optimizer: the registered ``Optimizer`` component.
        how: ``HowToCombineTransforms``.
        initial_transform, initial_transform_file: the earlier stages' transform and its file, or None.
        transform: the stage transform (combined with the initial one) for linear and translation
            transforms; None for a B-spline, whose transform is made per level from ``grid``.
        parameters0: start parameters from automatic initialisation (Tensor[P]), or None.
        scales: the optimizer's parameter scales (linear transforms), or None.
        grid: :class:`BSplineGridPlan` for a B-spline transform, else None.
    """

    pmap: ParameterMap
    components: dict
    levels: int
    fixed_image: object
    moving_image: object
    fixed: LevelImage
    moving: LevelImage
    fixed_mask: Optional[Mask]
    moving_mask: Optional[Mask]
    fixed_schedule: PyramidSchedule
    moving_schedule: PyramidSchedule
    impact_levels: list[ImpactLevelConfig]
    models: list
    devices: list
    plugin: object
    generator: ElastixRandom
    impact_generator: object
    optimizer: Component
    how: str
    initial_transform: Optional[Callable]
    initial_transform_file: Optional[str]
    transform: object
    parameters0: object
    scales: object
    grid: Optional[BSplineGridPlan]

    def transform_parameter_map(self, transform: Transform, parameters: torch.Tensor) -> ParameterMap:
        """The elastix TransformParameters map of ``transform`` at ``parameters`` (docs/design.md §E10)."""
        return transform_parameter_map(transform, parameters, self.fixed.geometry, registration_map=self.pmap,
                                       initial_transform_file=self.initial_transform_file,
                                       how_to_combine=self.how)


def _validated_stage(fixed_image, moving_image, pmap):
    """Check the map's components, the images' dimensions and every level's settings; no torch needed.

    Returns:
        ``(components, fixed, moving, levels, impact_levels)``: fixed and moving as ``LevelImage``.

    Raises:
        UnsupportedComponentError, ValueError, elastix_bridge.core.parameters.ParameterError,
        elastix_bridge.core.impact_parameters.ImpactParameterError: naming the key or the image.
    """
    components = check_components(pmap)
    fixed = LevelImage.from_itk(fixed_image)
    moving = LevelImage.from_itk(moving_image)
    dim = fixed.geometry.dimension
    if moving.geometry.dimension != dim:
        raise ValueError(f"the fixed image is {dim}D but the moving image is "
                         f"{moving.geometry.dimension}D; elastix needs equal dimensions")
    levels = pmap.get("NumberOfResolutions", default=3, type=UInt)
    if levels < 1:
        raise ValueError("NumberOfResolutions must be at least 1")
    check_stage_settings(pmap, components, levels, dim)
    impact_index = feature_model_metric(components["Metric"])
    configs = ([] if impact_index is None
               else impact_levels(pmap, levels, dim, metric_index=impact_index))
    return components, fixed, moving, levels, configs


def _load_models(pmap, configs, dimension: int, warn: bool = True):
    """Load and check every level's Impact feature models (docs/design.md §I3); ``warn``: log the CPU warning.

    Returns:
        ``(models, devices)``: per level ``([fixed models], [moving models])`` and its ``torch.device``.

    Raises:
        elastix_bridge.runtime.loader.ImpactUnavailableError, elastix_bridge.runtime.loader.ImpactModelError: a device or
            a model that cannot be used, naming the ``Impact*ModelsPath<level>`` key.
    """
    models, devices = [], []
    for cfg in configs:
        with run_timing.phase("feature models"):  # loaded and checked against the contract
            device = loader.resolve_device(cfg.gpu)
            half = bool(cfg.mixed_precision and device.type == "cuda")
            if cfg.mixed_precision and not half and warn:
                log.warning("ImpactUseMixedPrecision is ignored on the CPU: float16 is applied on CUDA devices only.")

            def load(c: ModelConfig, which: str) -> Any:
                key = (f"Impact{which}ModelsPath{cfg.level}" if pmap.has(f"Impact{which}ModelsPath{cfg.level}")
                       else f"ImpactModelsPath{cfg.level}")
                return loader.load_feature_model(str(loader.model_file(c.path)), device, half=half, parameter=key)

            models.append(([load(c, "Fixed") for c in cfg.fixed_models],
                           [load(c, "Moving") for c in cfg.moving_models]))
            devices.append(device)
            check_level_models(cfg, models[-1], dimension, device)
    return models, devices


def check_stage_models(fixed_image: itk.Image, pmap: ParameterMap) -> None:
    """Load an Impact map's feature models and check them against the contract, before any output is touched.

    The command and :func:`elastix_bridge.api.elastix_registration_method` call it for every map on the
    bridge engine before they take the output folder (which removes an earlier run's outputs), so that a
    refused model leaves them in place. The stage's own check (:func:`_load_models`) then finds the models
    in the loader's cache and their probes done (:func:`elastix_bridge.engine.metrics.impact_models.check_level_models`).

    Raises:
        elastix_bridge.runtime.loader.ImpactUnavailableError, elastix_bridge.runtime.loader.ImpactModelError,
        elastix_bridge.core.impact_parameters.ImpactParameterError: as :func:`_load_models`.
    """
    components = check_components(pmap)
    impact_index = feature_model_metric(components["Metric"])
    if impact_index is None:
        return
    dimension = int(fixed_image.GetImageDimension())
    levels = pmap.get("NumberOfResolutions", default=3, type=UInt)
    configs = impact_levels(pmap, levels, dimension, metric_index=impact_index)
    loader.load_plugin()
    with loader.jit_optimization_disabled():
        _load_models(pmap, configs, dimension, warn=False)  # the stage logs its warnings


def _stage_transform(pmap, components, levels: int, fixed, moving, fixed_mask, moving_mask,
                     initial_transform, how: str):
    """The stage's transform before the first level (docs/design.md §E6, §E1.7).

    Returns:
        ``(transform, parameters0, scales, grid)``: for a B-spline ``(None, None, None,
        BSplineGridPlan)``; for a translation, its transform and the optional
        ``AutomaticTransformInitialization`` start (§E6.2); for a linear transform, its transform,
        start parameters and scales (§E6.1–§E6.3). Transforms are combined with the initial one.
    """
    transform_component = component("Transform", components["Transform"])
    kind = transform_component.trait("kind")
    if kind == "bspline":
        final_spacing, schedule = grid_settings(pmap, fixed.geometry, levels)
        geometry = fixed.geometry
        if initial_transform is not None and how == "Compose":
            geometry, final_spacing = grid_domain_under_initial(fixed.geometry, final_spacing, initial_transform)
        order = pmap.get("BSplineTransformSplineOrder", default=3, type=int)
        return None, None, None, BSplineGridPlan(geometry, final_spacing, schedule, order)
    if kind == "translation":
        transform = _combined(transform_component.factory(fixed.geometry.dimension), initial_transform, how)
        parameters0 = None
        if initial_transform is None and pmap.get("AutomaticTransformInitialization", default=False, type=bool):
            # docs/design.md §E6.2: only when asked, and never on top of an initial transform
            parameters0 = torch.from_numpy(translation_initialization(
                pmap.get("AutomaticTransformInitializationMethod", default="GeometricalCenter"),
                fixed.geometry, moving.geometry, fixed, moving, fixed_mask, moving_mask))
        return transform, parameters0, None, None
    transform, parameters0, scales = make_linear_transform(
        components["Transform"], pmap, fixed.geometry, moving.geometry, fixed, moving,
        fixed_mask, moving_mask, initial_transform=initial_transform, how_to_combine=how)
    return _combined(transform, initial_transform, how), parameters0, scales, None


@contextlib.contextmanager
def setup_stage(fixed_image: itk.Image, moving_image: itk.Image, pmap: ParameterMap,
                fixed_mask: Optional[itk.Image] = None, moving_mask: Optional[itk.Image] = None, *,
                initial_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                initial_transform_file: Optional[str] = None) -> Iterator[StageSetup]:
    """Validate the map, load torch, the plugin and the models, and read the schedules, once per stage.

    A context manager: TorchScript's runtime optimisation is off from before the models load until the
    block ends (docs/design.md §I3.6); the user's settings are restored afterwards. Everything that can
    fail on the map, the images, torch, the plugin, a device or a model fails here, before any computation.

    Args:
        fixed_image, moving_image, pmap, fixed_mask, moving_mask, initial_transform, initial_transform_file:
            as for :func:`run_stage`.

    Yields:
        :class:`StageSetup`.

    Raises:
        The validation and loading errors listed in :func:`run_stage`.
    """
    components, fixed, moving, levels, configs = _validated_stage(fixed_image, moving_image, pmap)
    set_mmap_threshold(any(c.mode == "Jacobian" for c in configs))
    plugin = loader.load_plugin()  # also holds the B-spline kernels every metric uses
    with loader.jit_optimization_disabled():
        models, devices = _load_models(pmap, configs, fixed.geometry.dimension)
        seed = pmap.get("RandomSeed", default=121212, type=int)
        # elastix's one Mersenne Twister per run (samplers, ASGD perturbations); Impact's own
        # random choices (feature subsets, patch rotations) use a torch generator with the same seed.
        generator = ElastixRandom(seed)
        impact_generator = torch.Generator().manual_seed(seed)
        fmask = Mask.from_itk(fixed_mask) if fixed_mask is not None else None
        mmask = Mask.from_itk(moving_mask) if moving_mask is not None else None
        fixed_schedule = map_pyramid_schedule(pmap, "Fixed", components["FixedImagePyramid"], levels, fixed.geometry)
        moving_schedule = map_pyramid_schedule(pmap, "Moving", components["MovingImagePyramid"], levels,
                                            moving.geometry)
        how = pmap.get("HowToCombineTransforms", default="Compose")
        transform, parameters0, scales, grid = _stage_transform(pmap, components, levels, fixed, moving, fmask,
                                                                mmask, initial_transform, how)
        yield StageSetup(pmap=pmap, components=components, levels=levels, fixed_image=fixed_image,
                         moving_image=moving_image, fixed=fixed, moving=moving, fixed_mask=fmask, moving_mask=mmask,
                         fixed_schedule=fixed_schedule, moving_schedule=moving_schedule, impact_levels=configs,
                         models=models, devices=devices, plugin=plugin, generator=generator,
                         impact_generator=impact_generator,
                         optimizer=component("Optimizer", components["Optimizer"]), how=how,
                         initial_transform=initial_transform, initial_transform_file=initial_transform_file,
                         transform=transform, parameters0=parameters0, scales=scales, grid=grid)


def _level_images(stage: StageSetup, level: int):
    """The level's pyramid images and (eroded) masks (docs/design.md §E3, §E4).

    Returns:
        ``(fixed, moving, fixed_mask, moving_mask)``: ``LevelImage`` and ``Mask`` or None.
    """
    pmap, components = stage.pmap, stage.components
    with run_timing.phase("pyramid levels"):
        fixed = LevelImage.from_itk(pyramid_level(stage.fixed_image, components["FixedImagePyramid"],
                                                  stage.fixed_schedule, level))
        moving = LevelImage.from_itk(pyramid_level(stage.moving_image, components["MovingImagePyramid"],
                                                   stage.moving_schedule, level))
    fmask, mmask = stage.fixed_mask, stage.moving_mask
    if fmask is not None and _erosion_flag(pmap, "Fixed", level):
        fmask = fmask.eroded(stage.fixed_schedule.rescale[level] + 1)
    if mmask is not None and _erosion_flag(pmap, "Moving", level):
        mmask = mmask.eroded(2 * stage.moving_schedule.rescale[level] + 1)
    return fixed, moving, fmask, mmask


def _level_transform(stage: StageSetup, level: int, previous):
    """The level's transform and its start parameters (float64 Tensor[P]; docs/design.md §E6.4).

    A B-spline gets the level's grid and the previous level's parameters upsampled onto it; other
    transforms keep the stage's transform and continue from the previous level's parameters.
    ``previous`` is ``(transform, parameters)`` at the end of the previous level, or None.
    """
    if stage.grid is not None:
        g = stage.grid
        transform = _combined(component("Transform", stage.components["Transform"]).factory(
            grid_for_level(g.geometry, g.final_spacing, g.schedule[level], g.order), order=g.order,
            name=stage.components["Transform"]), stage.initial_transform, stage.how)
        parameters = (transform.parameters if previous is None
                      else transform.upsample(previous[1], previous[0].grid, transform.grid))
    else:
        transform = stage.transform
        parameters = (previous[1] if previous is not None
                      else transform.parameters if stage.parameters0 is None else stage.parameters0)
    return transform, parameters.to(torch.float64)


@dataclass(frozen=True)
class MetricInputs:
    """What one metric of one resolution level is built from: ``cls.for_level(inputs)`` of the Metric family.

    Attributes:
        stage: the :class:`StageSetup` (the Impact metric reads its models, devices, plugin and generator).
        level: the resolution level; index: the metric's position in ``(Metric ...)`` (its keys' prefix
            ``Metric<index>``).
        fixed, moving: the level's ``LevelImage``; fixed_mask, moving_mask: its ``Mask`` or None.
        transform: the level's transform.
        moving_interpolation_order: the Interpolator's B-spline order for the moving image.
        required_ratio_of_valid_samples: ``RequiredRatioOfValidSamples``, 0 when ``CheckNumberOfSamples`` is false.
    """

    stage: StageSetup
    level: int
    index: int
    fixed: LevelImage
    moving: LevelImage
    fixed_mask: Optional[Mask]
    moving_mask: Optional[Mask]
    transform: Transform
    moving_interpolation_order: int
    required_ratio_of_valid_samples: float

    @property
    def pmap(self) -> ParameterMap:
        return self.stage.pmap

    @property
    def prefix(self) -> str:
        return f"Metric{self.index}"


def _level_metrics(stage: StageSetup, level: int, fixed, moving, fixed_mask, moving_mask, transform, parameters):
    """The level's metrics, built through the registry and initialised at ``parameters`` (docs/design.md §E7, §I4)."""
    pmap = stage.pmap
    order_moving = component("Interpolator", stage.components["Interpolator"]).factory(pmap, level)
    metrics = []
    for i, name in enumerate(stage.components["Metric"]):
        ratio = (pmap.get("RequiredRatioOfValidSamples", level=level, default=0.25, type=float, prefix=f"Metric{i}")
                 if pmap.get("CheckNumberOfSamples", level=level, default=True, type=bool, prefix=f"Metric{i}")
                 else 0.0)
        inputs = MetricInputs(stage, level, i, fixed, moving, fixed_mask, moving_mask, transform, order_moving, ratio)
        with run_timing.phase("metric set-up (Impact: feature maps)"):
            metric = component("Metric", name).factory.for_level(inputs)
            metric.initialize(parameters)
        metrics.append(metric)
    return metrics


class LevelContext:
    """Everything one resolution level optimises with, built in elastix's order (docs/design.md §E2).

    Pyramid images and masks, the transform and its start parameters, the samplers, the metrics and
    their weighted cost, the iteration table and the optimizer, built from its own settings and prepared
    by its ``before_level`` (ASGD: its exact-gradient grid and Jacobian terms, §E9); every iteration goes
    to the metrics, the table and ``on_iteration``.

    Attributes:
        level: the resolution level. fixed, moving: ``LevelImage``. fixed_mask, moving_mask: ``Mask`` or None.
        transform: the level's transform; parameters: its start parameters (float64 Tensor[P]).
        samplers: one per metric or one shared (:mod:`elastix_bridge.engine.samplers`).
        settings: the optimizer's settings of the level (its class in :mod:`elastix_bridge.engine.optimizers.settings`).
        metrics, cost: the metrics and their :class:`StageCost`.
        table: :class:`~elastix_bridge.core.iteration_info.IterationTable`. optimizer: the level's optimizer.
    """

    def __init__(self, stage: StageSetup, level: int, previous: Optional[tuple[Transform, torch.Tensor]] = None, *,
                 output_directory: Optional[Path] = None,
                 elastix_level: int = 0, on_iteration: Optional[Callable] = None) -> None:
        """Build the level; ``previous`` is ``(transform, parameters)`` at the end of the previous level."""
        pmap, components = stage.pmap, stage.components
        self.stage, self.level, self.on_iteration = stage, level, on_iteration
        self.elastix_level, self.iteration = elastix_level, 0  # the iteration being computed, to name it in errors
        self.fixed, self.moving, self.fixed_mask, self.moving_mask = _level_images(stage, level)
        self.transform, self.parameters = _level_transform(stage, level, previous)
        n_samples = pmap.get("NumberOfSpatialSamples", level=level, default=5000, type=UInt)
        self.samplers = [make_sampler(name, self.fixed.geometry, self.fixed_mask, number_of_samples=n_samples,
                                      generator=stage.generator, parameter_map=pmap, level=level)
                         for name in components["ImageSampler"]]
        self.settings = stage.optimizer.trait("settings").from_parameter_map(
            pmap, level, number_of_parameters=int(self.parameters.numel()),
            fixed_spacing=stage.fixed.geometry.spacing, moving_spacing=stage.moving.geometry.spacing)
        self.metrics = _level_metrics(stage, level, self.fixed, self.moving, self.fixed_mask, self.moving_mask,
                                      self.transform, self.parameters)
        self.cost = StageCost(self.metrics, self.samplers, *metric_weights(pmap, components, level))
        self.table = IterationTable(output_directory, elastix_level, level, pmap,
                                    stage.optimizer.trait("iteration_columns", "gradient_descent"), len(self.metrics))
        self.optimizer = stage.optimizer.factory(self.settings, stage.generator, self._after_iteration)
        self.optimizer.before_level(self)

    def where(self) -> str:
        """``"stage 0, level 1, iteration 7"`` for error messages."""
        return f"stage {self.elastix_level}, level {self.level}, iteration {self.iteration}"

    def _after_iteration(self, record, position) -> None:
        run_timing.first_iteration()
        self.iteration = record.iteration + 1
        for metric in self.metrics:
            metric.after_iteration(position)
        self.table.add(record, self.cost.parts)
        if self.on_iteration is not None:
            self.on_iteration(self.level, record)


def optimize_level(context: LevelContext) -> torch.Tensor:
    """Run the level's optimizer from its start parameters; the iteration table is closed after.

    Returns:
        The optimised parameters (float64 Tensor[P]); ``context.optimizer.history`` holds the
        :class:`~elastix_bridge.engine.optimizers.base.IterationRecord` list.

    Raises:
        elastix_bridge.engine.errors.SamplingError: too few valid samples.
        elastix_bridge.engine.errors.NonFiniteMetricError: a NaN or Inf metric value or derivative, naming the
            stage, level, iteration and likely cause.
    """
    try:
        parameters = context.optimizer.optimize(context.cost, context.parameters, scales=context.stage.scales)
    except NonFiniteMetricError as error:
        raise NonFiniteMetricError(f"{context.where()}: {error}; {_non_finite_cause(context)}") from None
    finally:
        context.table.close()
    log.info("Stopping condition: %s.", context.optimizer.stop_condition)
    return parameters


def _non_finite_cause(context: LevelContext) -> str:
    """The likely cause of a non-finite metric, and its fix: the level's Impact models first."""
    configs = [c for c in context.stage.impact_levels if c.level == context.level]
    if configs:
        paths = sorted({m.path for c in configs for m in c.fixed_models + c.moving_models})
        return (f"the features of model(s) {', '.join(map(repr, paths))} are likely too large (their distances "
                "overflow float32 above 3.4e38): scale or normalise the model's output; no result was written")
    return ("check the images (NaN or Inf pixels, a constant image) and the metric settings; no result was "
            "written")


def stage_output(stage: StageSetup, transform: Transform, parameters: torch.Tensor, history: list,
                 seconds: float) -> StageResult:
    """The stage's result: its TransformParameters map (docs/design.md §E10) and the final metric in the log."""
    tp_map = stage.transform_parameter_map(transform, parameters)
    if history and history[-1]:
        log.info("Final metric value  = %f", history[-1][-1].metric)
    return StageResult(tp_map, transform, parameters, history, seconds)


def run_stage(fixed_image: itk.Image, moving_image: itk.Image, pmap: ParameterMap,
              fixed_mask: Optional[itk.Image] = None, moving_mask: Optional[itk.Image] = None, *,
              elastix_level: int = 0, output_directory: Optional[Path] = None,
              on_iteration: Optional[Callable] = None,
              initial_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
              initial_transform_file: Optional[str] = None, on_level: Optional[Callable] = None) -> StageResult:
    """Run one parameter map like elastix would (Impact and/or elastix's classic metrics).

    Args:
        fixed_image, moving_image: ``itk.Image`` (any scalar type; cast to float like elastix).
        pmap: :class:`elastix_bridge.core.parameters.ParameterMap` with components registered in
            :mod:`elastix_bridge.engine.components`.
        fixed_mask, moving_mask: ``itk.Image`` masks (non-zero = inside) or None.
        elastix_level: index of this map in the parameter object (file names ``*.<level>.*``).
        output_directory: where elastix would write per-resolution files, or None.
        on_iteration: ``on_iteration(level, record)`` for progress reporting.
        on_level: ``on_level(level)`` when a resolution level starts (to name it in errors).
        initial_transform: the earlier stages' transform, a callable on ``(N, D)`` physical points
            (e.g. :class:`~elastix_bridge.engine.transforms.initial.TransformChain`), or None; combined
            with this stage's transform by ``HowToCombineTransforms`` (docs/design.md §E1.7).
        initial_transform_file: ``InitialTransformParameterFileName`` written into the result map.

    Returns:
        :class:`StageResult`.

    Raises:
        UnsupportedComponentError, elastix_bridge.core.parameters.ParameterError,
        elastix_bridge.core.impact_parameters.ImpactParameterError: invalid map (before any computation).
        elastix_bridge.runtime.loader.ImpactUnavailableError, elastix_bridge.runtime.loader.ImpactModelError:
            torch, plugin, device or model problems (before any computation).
        elastix_bridge.engine.errors.SamplingError: too few valid samples.
        elastix_bridge.engine.errors.NonFiniteMetricError: a NaN or Inf metric value or derivative.
    """
    tic = time.perf_counter()
    with setup_stage(fixed_image, moving_image, pmap, fixed_mask, moving_mask, initial_transform=initial_transform,
                     initial_transform_file=initial_transform_file) as stage:
        history, previous = [], None
        for level in range(stage.levels):
            log.info("Resolution: %d", level)
            if on_level is not None:
                on_level(level)
            context = LevelContext(stage, level, previous, output_directory=output_directory,
                                   elastix_level=elastix_level, on_iteration=on_iteration)
            parameters = optimize_level(context)
            history.append(context.optimizer.history)
            previous = (context.transform, parameters)
            if output_directory is not None and pmap.get("WriteTransformParametersEachResolution",
                                                         default=False, type=bool):
                write_transform_parameter_file(
                    stage.transform_parameter_map(context.transform, parameters),
                    Path(output_directory) / f"TransformParameters.{elastix_level}.R{level}.txt")
        return stage_output(stage, context.transform, parameters, history, time.perf_counter() - tic)
