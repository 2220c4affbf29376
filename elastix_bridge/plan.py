"""What a registration will need, before any work: per stage and resolution level, sizes and memory.

:func:`plan_registration` turns the parameter maps and the images' headers into a
:class:`RegistrationPlan` (the ``elastix-bridge plan`` command prints it); :func:`check_resources`
compares its peak with :func:`elastix_bridge.runtime.memory.available_memory` and refuses a run that cannot
fit, naming the keys that make it smaller; :func:`memory_error` names the stage, level, estimate
and keys when a real allocation still fails.

**What the estimate counts** (bytes the bridge itself allocates, from the sizes alone; float32
images and feature maps, float64 coordinates and B-spline coefficients):

* the input images and masks; per level the pyramid images (bridge engine: the current level;
  elastix stages: every level, as elastix's pyramid filters keep them all, unless its Generic
  pyramids have ``ComputePyramidImagesPerResolution``) and the images' B-spline coefficients;
  the samples;
* what each metric holds, as the metric says through its ``memory`` hook: Impact's feature maps
  (Static mode) or patches, model outputs and autograd's share (Jacobian mode),
  :mod:`elastix_bridge.engine.metrics.impact_memory`.

Checked against the rise of the peak resident memory of real runs once the input images existed
(CPU; the estimate includes the inputs): 3D MIND-SSC Static mode on 128³ voxels, one level,
estimated 0.59 GiB for 0.48 GiB measured; Jacobian mode on 64³ voxels, 2000 samples, 7³ patches
(probed) 0.70 GiB for 0.72 GiB; elastix's affine Mattes MI preset on 160³ voxels 203 MiB for 185 MiB
(docs/outputs_and_resources.md).

Feature channels and output sizes are known without running a model only for the built-in
MIND-SSC models; for other models, unless they are probed (``probe_models=True``: each model runs
once on one and two zero patches, as the engine's own check does), a selected layer counts as one
channel of the input's size and the estimate is a lower bound ("at least"). Probing also measures
the activations autograd keeps per moving patch in Jacobian mode (tensors saved for the backward
pass, via ``torch.autograd.graph.saved_tensors_hooks``); without probing they are not counted.
Not counted: elastix's and the model's transient buffers, Python and library overheads, and GPU
memory (with ``ImpactGPU`` ≥ 0 features live on the device; only host memory is compared).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import numpy as np

from elastix_bridge.core.geometry import ImageGeometry
from elastix_bridge.core.image_io import read_image_geometry
from elastix_bridge.core.impact_parameters import ModelConfig
from elastix_bridge.core.parameters import ParameterMap, UInt, parameter_maps_from_object
from elastix_bridge.core.engines import stage_engines, uses_impact
from elastix_bridge.engine.component_settings import bspline_interpolation_order, spatial_samples
from elastix_bridge.engine.components import DEFAULTS, find
from elastix_bridge.engine.images.pyramids import pyramid_class
from elastix_bridge.engine.stage_settings import map_pyramid_schedule
from elastix_bridge.runtime.model_probe import ModelProbe, known_model, probe_model
from elastix_bridge.runtime.memory import MemoryBudget, available_memory, format_bytes
from elastix_bridge.validation import check_native_plugin, check_pyramid_sizes, check_supported_dimension

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    import itk

log = logging.getLogger("elastix_bridge")

F32, F64 = 4, 8
#: A run is refused above the available memory and warned about above this fraction of it.
WARN_FRACTION = 0.8
# Keys that make each part of a level smaller ({L} = the level).
_KEYS = {
    "feature maps": ("ImpactVoxelSize{L}", "ImpactLayersMask{L}"),
    "patches": ("NumberOfSpatialSamples", "ImpactPatchSize{L}"),
    "model outputs": ("NumberOfSpatialSamples", "ImpactPatchSize{L}", "ImpactLayersMask{L}"),
    "model activations": ("NumberOfSpatialSamples", "ImpactPatchSize{L}"),
    "samples": ("NumberOfSpatialSamples",),
}
_VERDICTS = {"fits": "fits", "close": "close (above 80%: a run warns)", "too large": "too large (a run is refused)"}


class InsufficientMemoryError(MemoryError):
    """A registration needs (or needed) more memory than there is; the message names the stage, level and keys."""


@dataclass
class LevelPlan:
    """One resolution level of one stage.

    Attributes:
        level: resolution level (0 = coarsest).
        fixed_size, moving_size: pyramid image sizes in voxels, ITK order.
        samples: samples per metric evaluation (``NumberOfSpatialSamples``, or the voxels a Full /
            Grid sampler visits).
        feature_maps: the Impact layers of this level (empty without Impact).
        parts: bytes per part (``"pyramid images"``, ``"feature maps"``, ...), held while the level runs.
    """

    level: int
    fixed_size: tuple
    moving_size: tuple
    samples: int
    feature_maps: list = field(default_factory=list)
    parts: dict = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return int(sum(self.parts.values()))

    def keys(self) -> list:
        """Parameter keys that lower this level's largest parts, largest part first."""
        keys = []
        for part, _ in sorted(self.parts.items(), key=lambda kv: -kv[1])[:2]:
            keys += [k.format(L=self.level) for k in _KEYS.get(part, ()) if k.format(L=self.level) not in keys]
        return keys


@dataclass
class StagePlan:
    """One parameter map (stage) of the chain.

    Attributes:
        stage: index in the chain (the ``k`` of ``TransformParameters.<k>.txt``).
        engine: ``"bridge"`` or ``"elastix"``.
        metrics, transform: the map's components.
        impact_mode: ``"Static"`` / ``"Jacobian"`` for an Impact map, else None.
        levels: one :class:`LevelPlan` per resolution level.
        base: bytes held for the whole stage (input images, masks, elastix's pyramids, result image).
        lower_bound: some model's channels or activations were unknown (not probed).
        all_pyramid_levels: elastix keeps every level's pyramid images (all but its Generic
            pyramids with ``ComputePyramidImagesPerResolution``).
    """

    stage: int
    engine: str
    metrics: list
    transform: str
    impact_mode: Optional[str]
    levels: list
    base: dict
    lower_bound: bool = False
    all_pyramid_levels: bool = False

    @property
    def peak_level(self) -> LevelPlan:
        return max(self.levels, key=lambda lv: lv.bytes)

    @property
    def peak_bytes(self) -> int:
        return int(sum(self.base.values())) + self.peak_level.bytes

    def keys(self, level: LevelPlan) -> list:
        """Keys that make ``level`` of this stage smaller, and elastix's for its pyramids of every level."""
        if not self.all_pyramid_levels:
            return level.keys()
        return level.keys() + ["NumberOfResolutions", "ComputePyramidImagesPerResolution \"true\" (with "
                               "FixedGenericImagePyramid and MovingGenericImagePyramid)"]


@dataclass
class RegistrationPlan:
    """Every stage of a registration and the memory available to it.

    Attributes:
        stages: :class:`StagePlan` per parameter map.
        available: the memory this process may use, None where unknown.
        fixed_size, moving_size: full-resolution sizes (voxels, ITK order); spacing in mm.
    """

    stages: list
    available: Optional[MemoryBudget]
    fixed_size: tuple
    moving_size: tuple
    fixed_spacing: tuple
    moving_spacing: tuple

    @property
    def peak_stage(self) -> StagePlan:
        return max(self.stages, key=lambda s: s.peak_bytes)

    @property
    def peak_bytes(self) -> int:
        """Stages run one after another: the largest stage peak."""
        return self.peak_stage.peak_bytes if self.stages else 0

    @property
    def lower_bound(self) -> bool:
        return any(s.lower_bound for s in self.stages)

    @property
    def verdict(self) -> str:
        """``"fits"``, ``"close"`` (above :data:`WARN_FRACTION`), ``"too large"`` or ``"unknown"``."""
        if self.available is None:
            return "unknown"
        if self.peak_bytes > self.available.bytes:
            return "too large"
        return "close" if self.peak_bytes > WARN_FRACTION * self.available.bytes else "fits"

    def format(self) -> str:
        """The table ``elastix-bridge plan`` prints."""
        return format_plan(self)


# ---------------------------------------------------------------------------------------------
# sizes


def _geometry(image):
    """ImageGeometry of an ``itk.Image``, an ImageGeometry, or an image file (header only)."""
    if image is None or isinstance(image, ImageGeometry):
        return image
    if hasattr(image, "GetLargestPossibleRegion"):  # sizes only: elastix accepts any start index
        import itk  # deferred: only a caller holding an itk image reaches this, and itk takes seconds to import

        return ImageGeometry(tuple(image.GetLargestPossibleRegion().GetSize()), tuple(image.GetSpacing()),
                             tuple(image.GetOrigin()), itk.array_from_matrix(image.GetDirection()))
    return read_image_geometry(image)


def _level_sizes(pmap, which: str, levels: int, geometry) -> list:
    """Pyramid image size per level (voxels, ITK order), as the map's pyramid kind produces them."""
    kind = pmap.get(f"{which}ImagePyramid", default=f"{which}SmoothingImagePyramid")
    schedule = map_pyramid_schedule(pmap, which, kind, levels, geometry)
    pyramid = pyramid_class(kind)
    return [tuple(pyramid.level_size(geometry, schedule, r)) for r in range(levels)]


def _samples(pmap, level: int, fixed_size) -> int:
    """The points a level evaluates, as the map's sampler says (its ``samples`` hook; docs/engine.md)."""
    sampler = find("ImageSampler", (pmap.values("ImageSampler") or ["Random"])[0])
    count = sampler.trait("samples") if sampler is not None else None
    if count is None:  # a sampler only elastix runs: its NumberOfSpatialSamples, as the random samplers
        count = spatial_samples
    return count(pmap, level, fixed_size)


# ---------------------------------------------------------------------------------------------
# estimate


def _derivative_bytes(pmap, level: int, dim: int) -> int:
    """Bytes autograd keeps per moving patch point for the transform and the moving interpolation (approximate)."""
    transform = find("Transform", pmap.get("Transform", default=""))
    if transform is not None and transform.trait("kind") == "bspline":
        weights = (pmap.get("BSplineTransformSplineOrder", default=3, type=int) + 1) ** dim
    else:
        weights = dim + 1
    interpolator = find("Interpolator", pmap.get("Interpolator", default=DEFAULTS["Interpolator"]))
    order = (interpolator.factory if interpolator is not None else bspline_interpolation_order)(pmap, level)
    return (weights + 2 * (order + 1) ** dim) * F64


def plan_stage(k: int, pmap: ParameterMap, engine: str, fixed: ImageGeometry, moving: ImageGeometry,
               fixed_mask: Optional[ImageGeometry] = None, moving_mask: Optional[ImageGeometry] = None,
               probes: Optional[Callable[[ModelConfig, str], Optional[ModelProbe]]] = None) -> StagePlan:
    """The plan of one parameter map (see :func:`plan_registration`; images as ImageGeometry)."""
    dim = fixed.dimension
    levels = pmap.get("NumberOfResolutions", default=3, type=int)
    metrics = pmap.values("Metric")
    probes = probes or known_model

    def sizes(which: str, geometry: ImageGeometry) -> list[tuple]:
        try:
            return _level_sizes(pmap, which, levels, geometry)
        except ValueError:
            if engine == "bridge":
                raise
            return [tuple(geometry.size)] * levels  # elastix reads schedules its own way: full size, the most

    fixed_sizes, moving_sizes = sizes("Fixed", fixed), sizes("Moving", moving)
    vf, vm = int(np.prod(fixed.size)), int(np.prod(moving.size))
    base = {"input images": (vf + vm) * F32, "result image": vf * F32}
    masks = sum(int(np.prod(g.size)) for g in (fixed_mask, moving_mask) if g is not None)
    if masks:
        base["masks"] = masks
    all_levels = engine == "elastix" and not _pyramids_per_resolution(pmap)
    if all_levels:  # elastix's pyramid filters compute and keep every level at once
        base["pyramid images"] = sum(int(np.prod(f)) + int(np.prod(m)) for f, m in zip(fixed_sizes, moving_sizes)) * F32
    memories = []  # the metrics' own estimates (their `memory` hook: Impact's feature maps, patches, models)
    for i, name in enumerate(metrics):
        metric = find("Metric", name)
        if metric is not None and metric.has_trait("memory"):
            memories.append(metric.trait("memory")(pmap, i, levels, dim))
    plans, lower = [], False
    for r in range(levels):
        lf, lm = int(np.prod(fixed_sizes[r])), int(np.prod(moving_sizes[r]))
        samples = _samples(pmap, r, fixed_sizes[r])
        parts = {"samples": samples * (2 * dim + 2) * F64 * max(1, len(metrics))}
        if engine == "bridge":
            parts["pyramid images"] = (lf + lm) * 2 * F32  # the ITK level image and its array
            parts["image coefficients"] = (lf + lm) * F64
            if masks:
                parts["masks"] = masks  # the eroded copies
        else:
            parts["image coefficients"] = lm * F64
            if not all_levels:
                parts["pyramid images"] = (lf + lm) * F32
        maps = []
        level_spacing = fixed.spacing * np.asarray(fixed.size) / np.asarray(fixed_sizes[r])
        for memory in memories:
            extra, layer_maps, missing = memory.level(r, fixed_sizes[r], level_spacing, samples, probes,
                                                      _derivative_bytes(pmap, r, dim))
            parts.update(extra)
            maps += layer_maps
            lower |= missing
        plans.append(LevelPlan(r, fixed_sizes[r], moving_sizes[r], samples, maps, parts))
    return StagePlan(k, engine, metrics, pmap.get("Transform", default="?"),
                     memories[0].mode if memories else None, plans, base, lower, all_levels)


def _pyramids_per_resolution(pmap) -> bool:
    """elastix's Generic pyramids with ``ComputePyramidImagesPerResolution``: one level in memory at a time."""
    generic = all(pmap.get(f"{w}ImagePyramid", default="") == f"{w}GenericImagePyramid" for w in ("Fixed", "Moving"))
    return generic and pmap.get("ComputePyramidImagesPerResolution", default=False, type=bool)


def _check_pyramids(maps, fixed: ImageGeometry, moving: ImageGeometry) -> None:
    """Both images are large enough for every map's pyramids (:func:`elastix_bridge.validation.check_pyramid_sizes`),
    so that the plan never says "fits" for a registration whose pyramid would fail.

    Raises:
        elastix_bridge.core.parameters.ParameterError: naming the map, the image, the axis and the fix.
    """
    for k, pmap in enumerate(maps):
        try:
            check_pyramid_sizes(pmap, pmap.get("NumberOfResolutions", default=3, type=UInt), (fixed, moving))
        except ValueError as error:
            raise type(error)(f"parameter map {k}: {error}") from None


def plan_registration(fixed_image: itk.Image | str | Path | ImageGeometry,
                      moving_image: itk.Image | str | Path | ImageGeometry,
                      parameter_object: itk.ParameterObject | Mapping[str, Any] | Sequence[Any] | None,
                      fixed_mask: Optional[itk.Image | str | Path | ImageGeometry] = None,
                      moving_mask: Optional[itk.Image | str | Path | ImageGeometry] = None,
                      engine: str = "auto", probe_models: bool = False,
                      available: Optional[MemoryBudget] = None) -> RegistrationPlan:
    """Sizes and memory of every stage and resolution level of a registration, without running it.

    Args:
        fixed_image, moving_image, fixed_mask, moving_mask: ``itk.Image``, an image file (only its
            header is read) or :class:`~elastix_bridge.core.geometry.ImageGeometry`; masks may be None.
        parameter_object: what :func:`elastix_bridge.api.elastix_registration_method` accepts
            (ParameterMap, dict, ``itk.ParameterObject`` or a list).
        engine: ``"auto"``, ``"elastix"`` or ``"bridge"`` (:func:`elastix_bridge.core.engines.stage_engines`).
        probe_models: run each Impact model once on zero patches (needs torch and the plugin) for
            exact channels, output sizes and Jacobian-mode activations; otherwise only the
            built-in MIND-SSC models are known and the estimate is a lower bound.
        available: the memory to compare with; default :func:`elastix_bridge.runtime.memory.available_memory`.

    Returns:
        :class:`RegistrationPlan`.

    Raises:
        ValueError: invalid schedules or Impact keys (elastix_bridge.core.impact_parameters.ImpactParameterError),
            an unknown engine, images of different dimensions or of one a stage does not run (4D for Impact
            stages; :func:`elastix_bridge.validation.check_supported_dimension`), images too small for a map's pyramid.
        elastix_bridge.engine.components.UnsupportedComponentError: an Impact map planned on the elastix engine
            without a native IMPACT plugin (as the registration refuses it).
        elastix_bridge.runtime.loader.ImpactUnavailableError, elastix_bridge.runtime.loader.ImpactModelError: with
            ``probe_models``, a model that cannot be loaded or run.
    """
    maps = parameter_maps_from_object(parameter_object)
    fixed, moving = _geometry(fixed_image), _geometry(moving_image)
    if fixed.dimension != moving.dimension:
        raise ValueError(f"the fixed image is {fixed.dimension}D but the moving image is {moving.dimension}D; "
                         "elastix needs equal dimensions")
    for pmap, stage_engine in zip(maps, stage_engines(maps, engine)):  # before anything indexes an axis
        check_supported_dimension(fixed.dimension, uses_impact(pmap), stage_engine == "bridge")
        if uses_impact(pmap) and stage_engine == "elastix":  # as the registration's validate_maps
            check_native_plugin()
    _check_pyramids(maps, fixed, moving)
    probes = known_model
    if probe_models:
        cache = {}

        def probes(cfg: ModelConfig, mode: str) -> ModelProbe:  # one probe per model configuration and mode
            if (cfg, mode) not in cache:
                cache[cfg, mode] = probe_model(cfg, mode, fixed.dimension)
            return cache[cfg, mode]

    stages = []
    for k, (pmap, stage_engine) in enumerate(zip(maps, stage_engines(maps, engine))):
        stages.append(plan_stage(k, pmap, stage_engine, fixed, moving, _geometry(fixed_mask), _geometry(moving_mask),
                                 probes))
    return RegistrationPlan(stages, available if available is not None else available_memory(),
                            tuple(fixed.size), tuple(moving.size), tuple(fixed.spacing), tuple(moving.spacing))


# ---------------------------------------------------------------------------------------------
# checks and messages


def _largest_parts(parts: dict, count: int = 2) -> str:
    return ", ".join(f"{name} {format_bytes(b)}" for name, b in sorted(parts.items(), key=lambda kv: -kv[1])[:count])


def check_resources(fixed_image: itk.Image | str | Path | ImageGeometry,
                    moving_image: itk.Image | str | Path | ImageGeometry,
                    parameter_object: itk.ParameterObject | Mapping[str, Any] | Sequence[Any] | None,
                    fixed_mask: Optional[itk.Image | str | Path | ImageGeometry] = None,
                    moving_mask: Optional[itk.Image | str | Path | ImageGeometry] = None,
                    engine: str = "auto", available: Optional[MemoryBudget] = None) -> RegistrationPlan:
    """Refuse a registration that cannot fit in memory; warn when it comes close. Cheap: no model runs.

    Compares :attr:`RegistrationPlan.peak_bytes` of :func:`plan_registration` (without probing
    models: a lower bound for models other than MIND-SSC) with the available memory
    (:func:`elastix_bridge.runtime.memory.available_memory`, or ``$ELASTIX_BRIDGE_MEMORY_LIMIT``).
    Arguments as :func:`plan_registration`.

    Returns:
        The :class:`RegistrationPlan` (for :func:`memory_error` should an allocation still fail).

    Raises:
        InsufficientMemoryError: the estimate exceeds the available memory; names the stage, level,
            largest parts and the keys that make them smaller.
    """
    plan = plan_registration(fixed_image, moving_image, parameter_object, fixed_mask, moving_mask, engine,
                             available=available)
    if plan.verdict in ("fits", "unknown"):
        return plan
    stage = plan.peak_stage
    level = stage.peak_level
    need = f"{'at least ' if plan.lower_bound else ''}{format_bytes(plan.peak_bytes)}"
    where = (f"most at stage {stage.stage} ({stage.engine} engine), resolution level {level.level}: "
             f"{_largest_parts(level.parts)}")
    if plan.verdict == "close":
        log.warning("elastix-bridge: the registration needs an estimated %s of the %s available (%s; %s); "
                    "it may run out of memory. To need less, change %s", need,
                    format_bytes(plan.available.bytes), plan.available.source, where, ", ".join(stage.keys(level)))
        return plan
    raise InsufficientMemoryError(
        f"the registration needs an estimated {need} ({where}) but only {format_bytes(plan.available.bytes)} is "
        f"available ({plan.available.source}); to need less, change {', '.join(stage.keys(level))} (or use "
        "smaller images); `elastix-bridge plan` shows every stage and level")


_MEMORY_TEXTS = ("unable to allocate", "failed to allocate memory", "out of memory", "can't allocate memory",
                 "not enough memory", "bad_alloc", "cannot allocate memory")


def is_memory_error(error: BaseException) -> bool:
    """numpy's "Unable to allocate", ITK's "Failed to allocate memory for image", torch's out-of-memory."""
    if isinstance(error, InsufficientMemoryError):
        return False  # already named
    text = str(error).lower()
    return (isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"
            or any(t in text for t in _MEMORY_TEXTS))


def memory_error(error: BaseException, stage: int, engine: str, level: Optional[int],
                 plan: Optional[RegistrationPlan]) -> InsufficientMemoryError:
    """The named error for an allocation that failed in ``stage`` (at ``level`` when known).

    Args:
        error: the original exception (its first line is quoted).
        stage, engine, level: where it failed; ``stage`` None for one itk-elastix run of every map,
            ``level`` None for elastix stages (elastix.log names it) or before the first level.
        plan: the run's :class:`RegistrationPlan` for the estimate and the keys, or None.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    first = next((line for line in lines if any(t in line.lower() for t in _MEMORY_TEXTS)), lines[0])[:200]
    where = (f"stage {stage} ({engine} engine)" if stage is not None else "the elastix run (every stage)")
    where += f", resolution level {level}" if level is not None else ""
    text = f"{where} ran out of memory ({first})"
    if plan is not None and stage is not None and stage < len(plan.stages):
        stage_plan = plan.stages[stage]
        lv = stage_plan.levels[level] if level is not None and level < len(stage_plan.levels) else stage_plan.peak_level
        estimate = int(sum(stage_plan.base.values())) + lv.bytes
        text += (f"; the estimate for it was {'at least ' if stage_plan.lower_bound else ''}{format_bytes(estimate)} "
                 f"({_largest_parts(lv.parts)})")
        if plan.available is not None:
            text += f" of {format_bytes(plan.available.bytes)} available ({plan.available.source})"
        text += f". To need less, change {', '.join(stage_plan.keys(lv))} (or use smaller images)"
    else:
        text += ". To need less, use fewer samples (NumberOfSpatialSamples), larger ImpactVoxelSize or smaller images"
    return InsufficientMemoryError(text + "; `elastix-bridge plan` shows the estimate per level")


def _size(size) -> str:
    return "x".join(str(int(n)) for n in size)


def format_plan(plan: RegistrationPlan) -> str:
    """The plan as the text ``elastix-bridge plan`` prints (sizes in voxels, ITK x×y×z order)."""
    spacing = lambda s: " ".join(f"{v:g}" for v in s)  # noqa: E731
    lines = [f"fixed image  {_size(plan.fixed_size)} voxels, spacing {spacing(plan.fixed_spacing)} mm",
             f"moving image {_size(plan.moving_size)} voxels, spacing {spacing(plan.moving_spacing)} mm"]
    for s in plan.stages:
        mode = f" ({s.impact_mode} mode)" if s.impact_mode else ""
        lines.append(f"stage {s.stage}: {s.engine} engine, {' + '.join(s.metrics)}{mode}, {s.transform}, "
                     f"{len(s.levels)} level(s); held for the stage: {_largest_parts(s.base, len(s.base))}")
        for lv in s.levels:
            lines.append(f"  level {lv.level}: fixed {_size(lv.fixed_size)}, moving {_size(lv.moving_size)}, "
                         f"{lv.samples} samples, memory {format_bytes(lv.bytes)} ({_largest_parts(lv.parts, 3)})")
            for fm in lv.feature_maps:
                per = " per sample" if s.impact_mode == "Jacobian" else ""
                channels = "? (1 counted)" if fm.channels is None else str(fm.channels)
                lines.append(f"    {fm.side} features {fm.model}: {channels} channels x {_size(fm.size)}{per}")
        lines.append(f"  peak of stage {s.stage}: {'at least ' if s.lower_bound else ''}{format_bytes(s.peak_bytes)} "
                     f"(level {s.peak_level.level})")
    need = f"{'at least ' if plan.lower_bound else ''}{format_bytes(plan.peak_bytes)}"
    if plan.available is None:
        lines.append(f"estimated peak memory {need}; available memory unknown on this system")
    else:
        lines.append(f"estimated peak memory {need} of {format_bytes(plan.available.bytes)} available "
                     f"({plan.available.source}): {_VERDICTS[plan.verdict]}")
    if plan.lower_bound:
        lines.append("(a lower bound: some models were not probed; see `elastix-bridge plan --probe-models`)")
    return "\n".join(lines)
