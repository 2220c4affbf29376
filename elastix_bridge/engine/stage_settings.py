"""What a bridge stage reads from its parameter map before any work, without torch or itk.

The component names of a map (refused by name when unsupported), every level's optimizer settings,
the B-spline grid schedule, the pyramid schedules and the metric weights: the stage
(:mod:`elastix_bridge.engine.registration`) reads them here, and the validation pass
(:mod:`elastix_bridge.validation`) reads them for every map of a chain before the first stage runs,
so that a bad value in a later map stops the chain before any work. Sources: elastix
``Components/Registrations/*``, ``Core/Main/elxElastixTemplate.hxx`` (component defaults),
docs/design.md §E1.8, §E3, §E6.4, §E7.6.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from elastix_bridge.core.geometry import ImageGeometry
from elastix_bridge.core.parameters import ParameterMap
from elastix_bridge.engine.components import DEFAULTS, FAMILIES, UnsupportedComponentError, component, find, names
from elastix_bridge.engine.images.pyramids import PyramidSchedule, pyramid_schedule

# Components of which a multi-metric map may list one per metric (docs/design.md §E7.6).
PER_METRIC = ("ImageSampler",)


def check_components(pmap: ParameterMap) -> dict:
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
    if sum(bool(component("Metric", m).trait("feature_models")) for m in metrics) > 1:
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


def feature_model_metric(metrics: list) -> Optional[int]:
    """The position in ``(Metric ...)`` of the metric with feature models (Impact), or None.

    Names the bridge engine does not run (a map elastix runs) count as metrics without feature models.
    """
    for i, name in enumerate(metrics):
        found = find("Metric", name)
        if found is not None and found.trait("feature_models"):
            return i
    return None


def default_grid_schedule(number_of_resolutions: int, dimension: int) -> list[list[float]]:
    """elastix's default grid spacing schedule ``φ[r][d] = 2^(R−1−r)`` (docs/design.md §E6.4)."""
    return [[float(2 ** (number_of_resolutions - 1 - r))] * dimension for r in range(number_of_resolutions)]


def _schedule(pmap, names, count, typ):
    """First parameter in ``names`` that has all ``count`` entries, as an array; None otherwise."""
    for name in names:
        if pmap.has(name) and len(pmap.values(name)) >= count:
            return np.array([pmap.get_entry(name, i, type=typ) for i in range(count)])
    return None


def map_pyramid_schedule(pmap: ParameterMap, which: str, kind: str, levels: int,
                         geometry: ImageGeometry) -> PyramidSchedule:
    """The ``which`` ("Fixed"/"Moving") image pyramid's schedule that a parameter map asks for.

    Reads the rescale and smoothing schedules with elastix's fallbacks (``<which>ImagePyramid…`` before
    ``ImagePyramid…``; docs/design.md §E3) and hands them to :func:`.pyramids.pyramid_schedule`.

    Returns:
        What :func:`.pyramids.pyramid_schedule` returns for ``kind`` over ``levels`` levels of ``geometry``.
    """
    d = geometry.dimension
    rescale = _schedule(pmap, [f"{which}ImagePyramidRescaleSchedule", "ImagePyramidRescaleSchedule",
                               f"{which}ImagePyramidSchedule", "ImagePyramidSchedule"], levels * d, int)
    smoothing = _schedule(pmap, [f"{which}ImagePyramidSmoothingSchedule", "ImagePyramidSmoothingSchedule"],
                          levels * d, float)
    return pyramid_schedule(kind, levels, geometry,
                            rescale=None if rescale is None else rescale.reshape(levels, d),
                            smoothing=None if smoothing is None else smoothing.reshape(levels, d))


def grid_settings(pmap: ParameterMap, geometry: ImageGeometry, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Final B-spline grid spacing ``(D,)`` (mm, ITK order) and the ``(levels, D)`` schedule (docs/design.md §E6.4).

    Raises:
        ValueError: both final spacings given, or a ``GridSpacingSchedule`` of the wrong length.
    """
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
        schedule = np.array(default_grid_schedule(levels, d))
    return final, schedule


def metric_weights(pmap: ParameterMap, components: dict, level: int) -> tuple[list, list, Optional[list]]:
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


def check_stage_settings(pmap: ParameterMap, components: dict, levels: int, dimension: int) -> None:
    """Read every level's optimizer settings and the B-spline grid schedule once, before any computation.

    Called at the start of every stage (:func:`~elastix_bridge.engine.registration.run_stage`) and by
    :mod:`elastix_bridge.validation` for every bridge map of a chain, so that a bad value in a later map
    stops the chain before its first stage. Settings whose defaults depend on the images (ASGD's step
    length, the grid spacing in voxels) are read on a unit grid: only the values written in the map are
    checked.

    Raises:
        elastix_bridge.core.parameters.ParameterError, ValueError: a value of the wrong form or an invalid
            combination, naming the key.
    """
    unit = np.ones(dimension)
    settings = component("Optimizer", components["Optimizer"]).trait("settings")
    for level in range(levels):
        settings.from_parameter_map(pmap, level, number_of_parameters=1, fixed_spacing=unit, moving_spacing=unit)
    if component("Transform", components["Transform"]).trait("kind") == "bspline":
        grid_settings(pmap, ImageGeometry((2,) * dimension, unit, 0 * unit, np.eye(dimension)), levels)
