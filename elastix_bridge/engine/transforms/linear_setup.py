"""elastix's ``BeforeRegistration`` of a linear transform in one call: create, initialise, set the scales.

Source: docs/design.md §E6.1–§E6.3; ``BeforeRegistration`` of
``Components/Transforms/EulerTransform/elxEulerTransform.hxx``,
``Components/Transforms/SimilarityTransform/elxSimilarityTransform.hxx``,
``Components/Transforms/AdvancedAffineTransform/elxAdvancedAffineTransform.hxx``.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import numpy as np
import torch

from elastix_bridge.core.geometry import ImageGeometry
from elastix_bridge.core.parameters import ParameterMap, as_parameter_map
from elastix_bridge.engine.images.level_images import LevelImage, Mask
from elastix_bridge.engine.transforms.initializers import initialize_linear_transform
from elastix_bridge.engine.transforms.linear import CenteredLinearTransform, new_linear_transform
from elastix_bridge.engine.transforms.optimizer_scales import transform_scales

__all__ = ["LinearTransformSetup", "make_linear_transform"]


class LinearTransformSetup(NamedTuple):
    """Result of :func:`make_linear_transform` (unpacks as ``transform, parameters, scales``).

    Attributes:
        transform: the centred transform (``center`` set).
        parameters: ``Tensor[P]`` float64 initial parameters.
        scales: ``Tensor[P]`` float64 optimizer (squared) scales.
    """

    transform: CenteredLinearTransform
    parameters: torch.Tensor
    scales: torch.Tensor


def make_linear_transform(
    name: str,
    pmap: ParameterMap | Mapping[str, Any],
    fixed_geometry: ImageGeometry,
    moving_geometry: ImageGeometry,
    fixed_image: np.ndarray | LevelImage | None = None,
    moving_image: np.ndarray | LevelImage | None = None,
    fixed_mask: Mask | None = None,
    moving_mask: Mask | None = None,
    *,
    initial_transform: Callable | None = None,
    how_to_combine: str | None = None,
    component_label: str = "Transform0",
) -> LinearTransformSetup:
    """elastix ``BeforeRegistration`` of a linear transform: create, initialise, and compute the scales.

    Args:
        name: ``EulerTransform``, ``SimilarityTransform`` or ``AffineTransform``.
        pmap: the registration's :class:`ParameterMap` (or a dict of lists).
        fixed_geometry, moving_geometry: full-resolution image geometries (mm, ITK order).
        fixed_image, moving_image: full-resolution ``(z, y, x)`` voxel arrays (or ``LevelImage``), needed only
            for ``AutomaticTransformInitializationMethod CenterOfGravity``.
        fixed_mask, moving_mask: the user's (un-eroded) masks; only the Affine initializer uses them.
        initial_transform: the initial transform (previous stages) as a callable ``(N, D) float64 tensor →
            (N, D)`` in mm, or ``None``.  Its presence disables automatic initialisation.
        how_to_combine: ``HowToCombineTransforms``; default: read from ``pmap`` (entry 0, ``Compose``).
        component_label: the transform's component label (``Transform0``).

    Returns:
        :class:`LinearTransformSetup` ``(transform, parameters, scales)``.  The Euler-3D rotation order is
        ``ComputeZYX false`` (elastix ignores ``ComputeZYX`` during a registration).

    Raises:
        ValueError: unknown transform or unsupported dimension, missing image values, zero mass, empty masks,
            GeometryTop in 2-D.
        ParameterError: bad parameter values.

    Source: docs/design.md §E6.1–§E6.3; the elastix files listed in the module docstring.
    """
    pm = as_parameter_map(pmap)
    if how_to_combine is None:
        how_to_combine = pm.get_entry("HowToCombineTransforms", 0, default="Compose")
    transform = new_linear_transform(name, fixed_geometry.dimension)
    params = initialize_linear_transform(transform, pm, fixed_geometry, moving_geometry, fixed_image, moving_image,
                                         fixed_mask, moving_mask, initial_transform=initial_transform,
                                         how_to_combine=how_to_combine, component_label=component_label)
    scales = transform_scales(transform, pm, fixed_geometry, params, initial_transform=initial_transform,
                              how_to_combine=how_to_combine, component_label=component_label)
    return LinearTransformSetup(transform, params, scales)
