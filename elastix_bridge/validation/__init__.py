"""Everything about a registration request checked before any work: one pass, before any stage runs.

:func:`validate_request` is the one entry point; :func:`elastix_bridge.api.elastix_registration_method`
calls it before the first stage (so the drop-in and the command get it too), and the command calls
:func:`validate_maps` once more on the maps alone before it reads the images. It checks, for every map
of the chain:

* component names against elastix's (``(Metric "Impakt")`` → "did you mean 'Impact'?"), and, for
  maps that run on the bridge engine, against the components the bridge runs;
* the type and range of every value the bridge engine reads, with elastix's conversion rules
  (:meth:`elastix_bridge.core.parameters.ParameterMap.get_entry`): ``(MaximumNumberOfIterations -3)`` is an
  error, as in elastix;
* pyramid and grid schedules of the right length (elastix warns and silently uses its default
  schedule; here that is an error, since the schedule the user wrote is then not the one used);
* the result-writing keys (``ResultImagePixelType``, ``WriteResultImage``, ``ResultImageFormat``);
* IMPACT keys against the known set (an unknown ``Impact…`` key is an error with suggestions; an
  unknown non-IMPACT key is a warning, elastix ignores it) and every level's IMPACT options
  (:func:`elastix_bridge.core.impact_parameters.impact_levels`);

and for the call: the images and masks (itk images, equal dimensions, non-empty masks, finite
pixels), their sizes against every map's pyramids and Jacobian patches, the initial transform (read and,
for a chain with bridge stages, built), ``number_of_threads``, and keywords a chain with bridge stages
does not support.

The checks live in one module per part of the request, each named for what it checks:
:mod:`~elastix_bridge.validation.maps` (:func:`validate_maps`, component names),
:mod:`~elastix_bridge.validation.values` (value types and ranges),
:mod:`~elastix_bridge.validation.result_keys` (result pixel types and formats),
:mod:`~elastix_bridge.validation.pyramids` (schedules and image sizes against the pyramids),
:mod:`~elastix_bridge.validation.impact` (IMPACT keys, models, patches, devices),
:mod:`~elastix_bridge.validation.images` (images and masks),
:mod:`~elastix_bridge.validation.initial_transforms` (``-t0`` and in-memory initial transforms) and
:mod:`~elastix_bridge.validation.request` (threads, keywords and :func:`validate_request`);
:mod:`~elastix_bridge.validation.names` holds how they name maps and keys. Callers import from
``elastix_bridge.validation``.

Errors are :class:`~elastix_bridge.core.parameters.ParameterError`,
:class:`~elastix_bridge.core.impact_parameters.ImpactParameterError`,
:class:`~elastix_bridge.engine.registration.UnsupportedComponentError` (all ``ValueError``),
:class:`InputImageError` (``ValueError``) and ``TypeError`` for arguments of the wrong kind.
Nothing here imports torch, except to build an initial transform for a chain with bridge stages (which
need torch anyway); itk is imported to check ``ResultImageFormat`` and to read image headers.
"""
from __future__ import annotations

from elastix_bridge.core.parameters import ParameterError
from elastix_bridge.validation.images import (BRIDGE_DIMENSIONS, ELASTIX_DIMENSIONS, InputImageError,
                                              check_equal_dimensions, check_image_argument, check_mask_dimension,
                                              check_supported_dimension, validate_images)
from elastix_bridge.validation.impact import IMPACT_LEVEL_MINIMUM
from elastix_bridge.validation.initial_transforms import check_initial_transforms, initial_transform_maps
from elastix_bridge.validation.maps import check_component_names, check_native_plugin, validate_maps
from elastix_bridge.validation.pyramids import RECURSIVE_GAUSSIAN_MINIMUM, check_pyramid_sizes
from elastix_bridge.validation.request import CHAIN_KEYWORDS, available_cores, check_threads, validate_request
from elastix_bridge.validation.values import VALUE_TYPES

__all__ = ["BRIDGE_DIMENSIONS", "CHAIN_KEYWORDS", "ELASTIX_DIMENSIONS", "IMPACT_LEVEL_MINIMUM", "InputImageError",
           "ParameterError", "RECURSIVE_GAUSSIAN_MINIMUM", "VALUE_TYPES", "available_cores", "check_component_names",
           "check_equal_dimensions", "check_image_argument", "check_initial_transforms", "check_mask_dimension",
           "check_native_plugin", "check_pyramid_sizes", "check_supported_dimension", "check_threads",
           "initial_transform_maps", "validate_images", "validate_maps", "validate_request"]
