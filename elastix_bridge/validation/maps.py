"""Every parameter map of a chain, checked before any stage runs (:func:`validate_maps`): the sections
of a map are checked by the sibling modules (values, result keys, pyramids, IMPACT), in this order."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

from elastix_bridge.engine.components import UnsupportedComponentError
from elastix_bridge.engine.stage_settings import check_components, check_stage_settings
from elastix_bridge import transform_check
from elastix_bridge.core.elastix_names import COMPONENTS
from elastix_bridge.core.impact_parameters import impact_levels
from elastix_bridge.core.parameters import ParameterError, UInt
from elastix_bridge.core.engines import uses_impact
from elastix_bridge.runtime import native_plugins
from elastix_bridge.runtime.native_plugins import NATIVE_PLUGIN_ENV
from elastix_bridge.validation.images import check_equal_dimensions, check_supported_dimension
from elastix_bridge.validation.impact import (_check_devices, _check_feature_map_directories, _check_impact_keys,
                                              _check_impact_level_sizes, _check_model_files, _check_patches_fit,
                                              _check_static_grids)
from elastix_bridge.validation.initial_transforms import check_initial_transforms
from elastix_bridge.validation.names import _did_you_mean, _in_map, _where
from elastix_bridge.validation.pyramids import _check_against_dimension, check_pyramid_sizes
from elastix_bridge.validation.result_keys import _check_internal_pixel_types, _check_result_keys
from elastix_bridge.validation.values import _check_values

if TYPE_CHECKING:  # pragma: no cover
    from elastix_bridge.core.parameters import ParameterMap


def check_component_names(maps: Sequence[ParameterMap], names: Optional[Sequence[str]] = None) -> None:
    """Every component name of every map is one of elastix's (elastix says only ``Internal elastix error``).

    Used by the drop-in for parameter objects that go to itk-elastix unchanged.

    Raises:
        UnsupportedComponentError: the map, the key, the name, the close matches and the known names.
    """
    for k, pmap in enumerate(maps):
        try:
            _check_component_names(pmap)
        except ValueError as error:
            raise _in_map(error, _where(k, names)) from None


def _check_component_names(pmap) -> None:
    for key, known in COMPONENTS.items():
        for value in pmap.values(key):
            if value not in known:
                raise UnsupportedComponentError(
                    f"({key} \"{value}\"): {value!r} is not an elastix {key} component."
                    f"{_did_you_mean(value, known)} Known: {', '.join(known)}.")


def check_native_plugin() -> None:
    """An Impact map sent to itk-elastix's elastix needs a native IMPACT plugin (itk-elastix ships none).

    Raises:
        UnsupportedComponentError: no plugin is preloaded, named by ``$ELASTIX_BRIDGE_NATIVE_PLUGIN`` or
            where elastix's loader looks (:func:`~elastix_bridge.runtime.native_plugins.native_plugin_offered`).
    """
    # Without one, elastix would run, then fail: "component could not be created: Impact".
    if not native_plugins.native_plugin_offered():
        raise UnsupportedComponentError(
            f'(Metric "Impact") cannot run on the elastix engine here: itk-elastix ships no IMPACT plugin and none '
            f"is preloaded, named by ${NATIVE_PLUGIN_ENV} or on the loader's path; use engine 'auto' or 'bridge' "
            f"(--engine auto), or set ${NATIVE_PLUGIN_ENV} to upstream's libImpactMetric.so (docs/native_plugins.md)")


def validate_maps(maps: Sequence[ParameterMap], engines: Optional[Sequence[str]] = None,
                  dimension: Optional[int] = None, names: Optional[Sequence[str]] = None, warn: bool = True,
                  geometries: Optional[Sequence] = None, initial_transform: Optional[dict] = None) -> None:
    """Check every parameter map of a chain before any stage runs.

    Args:
        maps: :class:`~elastix_bridge.core.parameters.ParameterMap` per stage.
        engines: ``"bridge"`` / ``"elastix"`` per map (:func:`elastix_bridge.core.engines.stage_engines`), or None
            when not known yet (then the bridge's own component list is not checked).
        dimension: image dimension D (2 or 3), or None before the images are read (then what depends on D
            is not checked: schedule lengths, the bridge's optimizer and grid settings, the IMPACT options
            per level and the model files; nor are warnings logged, which the check with images does).
        names: how messages name each map, e.g. ``"-p affine.txt"``; default ``"parameter map <k>"``.
        warn: log the warnings (unknown keys, schedules longer than needed); the command's early check
            leaves them to the request's check, so that each is logged once.
        geometries: ``(fixed, moving)`` :class:`~elastix_bridge.core.geometry.ImageGeometry` (from the
            images or their headers), or None; given, the images' sizes are checked against every map's
            pyramids (:func:`check_pyramid_sizes`) and Jacobian patches, and ``dimension`` defaults to theirs.
        initial_transform: the call's ``initial_transform_parameter_file_name`` /
            ``initial_transform_parameter_object`` keywords, checked with :func:`check_initial_transforms`
            (the command checks its ``-t0`` here, before it creates ``-out``).

    Raises:
        UnsupportedComponentError: an unknown component name (with "did you mean"), or one the bridge
            engine does not run for a map it runs; an Impact map on the elastix engine without a native
            IMPACT plugin.
        ParameterError: a value of the wrong type or range, a schedule of the wrong length, a result key
            that cannot be written (a format × pixel type ITK's writer refuses, a ``ResultImageFormat`` with a
            leading dot or an upper-case MetaImage/NIfTI extension), a ``Fixed/MovingInternalImagePixelType``
            itk-elastix's build does not run in ``dimension`` D, an unknown ``Impact…`` key in
            an Impact map, an ``ImpactFeatureMapOutputDirectory`` that cannot be a folder, images too small
            for a pyramid, a Jacobian patch larger than an image, a bridge Impact level image of 1 voxel
            along an axis (:func:`_check_impact_level_sizes`).
        ImpactParameterError: a missing or malformed IMPACT option at some level.
        InputImageError: images of a dimension the stage does not run (:func:`check_supported_dimension`).
    """
    if geometries is not None:
        check_equal_dimensions(geometries[0].dimension, geometries[1].dimension)
        dimension = geometries[0].dimension if dimension is None else dimension
    for k, pmap in enumerate(maps):
        where = _where(k, names)
        impact = uses_impact(pmap)
        bridge = engines is not None and engines[k] == "bridge"
        try:
            missing = [key for key in ("Metric", "Optimizer", "Transform") if not pmap.has(key)]
            if missing:  # elastix stops with "Internal elastix error" after it has started
                raise ParameterError(
                    f"no ({' ...), ('.join(missing)} ...) line: elastix needs a Metric, an Optimizer and a Transform in "
                    "every parameter map" + (" (this one is empty: is it the right file?)" if not pmap.keys() else "")
                    + "; start from a file in parameter_files/ or from elastix's documentation")
            _check_component_names(pmap)
            if dimension is not None:  # before anything indexes an axis
                check_supported_dimension(dimension, impact, bridge)
            if impact and engines is not None and engines[k] == "elastix":
                check_native_plugin()
            _check_values(pmap)
            transform_check.thresholds(pmap)  # QC* values: the numbers the check after the stage compares with
            _check_result_keys(pmap, dimension)
            levels = pmap.get("NumberOfResolutions", default=3, type=UInt)
            components = check_components(pmap) if bridge else None
            if dimension is not None:
                _check_internal_pixel_types(pmap, dimension)
                _check_against_dimension(pmap, where, levels, dimension, warn)
                if bridge:
                    check_stage_settings(pmap, components, levels, dimension)
                if geometries is not None:
                    check_pyramid_sizes(pmap, levels, geometries)
                if impact:
                    configs = impact_levels(pmap, levels, dimension,
                                            metric_index=pmap.values("Metric").index("Impact"))
                    _check_model_files(pmap, configs)
                    _check_feature_map_directories(configs)
                    if geometries is not None:
                        _check_patches_fit(configs, geometries)
                    if geometries is not None and bridge:
                        _check_static_grids(configs, geometries[0])
                        _check_impact_level_sizes(pmap, levels, geometries)
                    if bridge:
                        _check_devices(configs)
        except ValueError as error:  # the same error, naming the map
            raise _in_map(error, where) from None
        _check_impact_keys(pmap, where, levels, impact, full=dimension is not None, warn=warn)
    if initial_transform and dimension is not None:
        check_initial_transforms(maps, engines, dimension, initial_transform)
