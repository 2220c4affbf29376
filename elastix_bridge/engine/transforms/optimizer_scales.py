"""The optimizer (squared) scales of the linear transforms: elastix's defaults, ``Scales``, and
``AutomaticScalesEstimation``.

elastix's ``SetScales`` (:func:`transform_scales`) after ``InitializeTransform``; the estimation
(:func:`automatic_scales_estimation`) averages the squared parameter Jacobian over a grid on the fixed image.

Sources (docs/design.md §E6.3): ``SetScales`` of ``Components/Transforms/EulerTransform/elxEulerTransform.hxx``,
``Components/Transforms/SimilarityTransform/elxSimilarityTransform.hxx``,
``Components/Transforms/AdvancedAffineTransform/elxAdvancedAffineTransform.hxx``;
``Core/ComponentBaseClasses/elxTransformBase.hxx`` (``AutomaticScalesEstimation``).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from elastix_bridge.core.geometry import ImageGeometry
from elastix_bridge.core.parameters import ParameterError, ParameterMap, as_parameter_map
from elastix_bridge.engine.samplers import GridSampler
from elastix_bridge.engine.transforms.initializers import points_through, uses_composition
from elastix_bridge.engine.transforms.linear import CenteredLinearTransform, linear_component

__all__ = ["default_scales", "automatic_scales_estimation", "transform_scales"]


def default_scales(transform: CenteredLinearTransform) -> torch.Tensor:
    """elastix's default scales of ``transform`` (``transform.scales()``), ``Tensor[P]`` float64."""
    return transform.scales()


def automatic_scales_estimation(
    transform: CenteredLinearTransform,
    fixed_geometry: ImageGeometry,
    parameters: torch.Tensor | None = None,
    *,
    initial_transform: Callable | None = None,
    how_to_combine: str = "Compose",
    number_of_samples: int = 10000,
) -> torch.Tensor:
    """elastix ``AutomaticScalesEstimation``: ``S_p = (1/N)·Σ_samples Σ_d J_dp(x)²``.

    The samples are a grid of ≈``number_of_samples`` points on the whole full-resolution fixed image (no mask;
    isotropic grid spacing ``max(1, round((#voxels/N)^(1/D)))`` voxels); the Jacobian is that of the current
    transform at ``parameters`` (default identity), evaluated at ``T_init(x)`` under ``Compose``.

    Args:
        transform: the (initialised, i.e. centred) transform.
        fixed_geometry: full-resolution fixed image geometry.
        parameters: ``(P,)`` parameters at which the Jacobian is evaluated (elastix: the initial ones).
        initial_transform: callable ``(N, D) tensor → (N, D)`` (mm) or ``None``.
        how_to_combine: ``HowToCombineTransforms``.
        number_of_samples: grid size target (10000 in elastix).

    Returns:
        ``Tensor[P]`` float64 scales.

    Source: ``Core/ComponentBaseClasses/elxTransformBase.hxx`` ``AutomaticScalesEstimation``; docs/design.md §E6.3.
    """
    points = GridSampler(fixed_geometry, number_of_samples=number_of_samples).sample()  # (N, D) float64
    if points.shape[0] == 0:
        raise ValueError("No valid voxels found to estimate the scales.")
    if initial_transform is not None and uses_composition(how_to_combine):
        points = torch.as_tensor(points_through(initial_transform, points.numpy()), dtype=torch.float64)
    params = transform.parameters if parameters is None else torch.as_tensor(parameters, dtype=torch.float64)
    values, _ = transform.jacobian(points, params)
    return (values * values).sum(dim=(0, 1)) / float(points.shape[0])


def transform_scales(
    transform: CenteredLinearTransform,
    pmap: ParameterMap | Mapping[str, Any],
    fixed_geometry: ImageGeometry,
    parameters: torch.Tensor | None = None,
    *,
    initial_transform: Callable | None = None,
    how_to_combine: str = "Compose",
    component_label: str = "Transform0",
) -> torch.Tensor:
    """elastix ``SetScales``: the optimizer (squared) scales of a linear transform.

    * ``AutomaticScalesEstimation true`` (entry 0) → :func:`automatic_scales_estimation`.
    * Euler / Affine: defaults (rotation/matrix entries 100000, translations 1); ``Scales`` with 1 value → that
      value for the rotation/matrix entries; with P values → per parameter; another count → error.
    * Similarity: defaults, each entry ``i`` overridden by ``Scales[i]`` then ``<label>Scales[i]`` when present
      (no fallback to entry 0).

    Args:
        transform: the initialised transform.
        pmap: registration :class:`ParameterMap` (or dict).
        fixed_geometry: full-resolution fixed geometry (automatic estimation).
        parameters: initial parameters (automatic estimation; default identity).
        initial_transform, how_to_combine: see :func:`automatic_scales_estimation`.
        component_label: the transform's component label (``Transform0``), prefix of ``Scales`` for Similarity.

    Returns:
        ``Tensor[P]`` float64.

    Raises:
        ParameterError: ``Scales`` with a wrong number of values (Euler/Affine) or unconvertible values.

    Source: ``SetScales`` in ``elxEulerTransform.hxx``, ``elxSimilarityTransform.hxx``,
    ``elxAdvancedAffineTransform.hxx``; docs/design.md §E6.3.
    """
    pm = as_parameter_map(pmap)
    if pm.get_entry("AutomaticScalesEstimation", 0, type=bool, default=False):
        return automatic_scales_estimation(transform, fixed_geometry, parameters,
                                           initial_transform=initial_transform, how_to_combine=how_to_combine)
    scales = transform.scales()
    p = transform.number_of_parameters
    if linear_component(transform.name).trait("labelled_scales"):
        for i in range(p):
            for key in ("Scales", component_label + "Scales"):
                v = pm.get_entry(key, i, type=float)
                if v is not None:
                    scales[i] = v
        return scales
    count = len(pm.values("Scales"))
    if count == 1:
        scales[: transform.rotation_part] = pm.get_entry("Scales", 0, type=float)
    elif count == p:
        for i in range(p):
            scales[i] = pm.get_entry("Scales", i, type=float)
    elif count != 0:
        raise ParameterError("ERROR: The Scales-option in the parameter-file has not been set properly "
                             f"({count} values for {p} parameters of the {transform.name}; give 1 or {p}).")
    return scales
