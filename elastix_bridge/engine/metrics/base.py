"""What elastix's classic metrics share: sample evaluation, the valid-sample check, the base classes.

Common sample evaluation (docs/design.md §E7.1, ``Common/CostFunctions/itkAdvancedImageToImageMetric.hxx``)::

    y = T(μ, x)                                   fixed sample x (physical mm), y mapped point
    valid  ⇔  y inside the moving mask (if any)   nearest-voxel rule, docs/design.md §E4
           ∧  −0.5 ≤ i_M(y)_d < n_d − 0.5         ITK IsInsideBuffer of the moving level image
    f = F(x)   (voxel value; the fixed image interpolated with FixedImageBSplineInterpolationOrder)
    m = M(y)   (BSplineInterpolator of order BSplineInterpolationOrder, mirror boundary)

``N_valid < RequiredRatioOfValidSamples · N`` (or ``N_valid = 0``) raises :class:`SamplingError`
("Too many samples map outside moving image buffer: N_valid / N").

The metrics themselves: :mod:`.classic` (mean squares, normalized correlation, Mattes MI) and
:mod:`.bending_energy` (the B-spline bending-energy penalty).

Sources: docs/design.md §E4, §E7.1, §E8.1; elastix ``Common/CostFunctions/itkAdvancedImageToImageMetric.hxx``,
``Common/itkComputeImageExtremaFilter.hxx``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from elastix_bridge.core.parameters import as_parameter_map
from elastix_bridge.engine.errors import SamplingError
from elastix_bridge.engine.images.interpolators import ImageInterpolator

if TYPE_CHECKING:  # pragma: no cover
    from elastix_bridge.core.parameters import ParameterMap
    from elastix_bridge.engine.images.level_images import LevelImage, Mask
    from elastix_bridge.engine.transforms.base import Transform

__all__ = ["ClassicMetric", "SampledImageMetric", "check_samples", "image_extrema", "zero_like_parameters"]


def zero_like_parameters(parameters):
    """A 0-d float64 zero that is connected to ``parameters`` (its gradient is 0, not None)."""
    return (parameters * 0.0).sum().to(parameters.dtype)


def check_samples(n_valid: int, n_total: int, required_ratio: float) -> None:
    """elastix's ``CheckNumberOfSamples`` (docs/design.md §E7.1), plus: no valid sample at all is always an error.

    Raises:
        SamplingError: ``n_valid == 0`` or ``n_valid < required_ratio · n_total``.
    """
    if n_valid == 0 or n_valid < required_ratio * n_total:
        raise SamplingError(f"Too many samples map outside moving image buffer: {n_valid} / {n_total}")


def image_extrema(image: "LevelImage", mask: "Mask | None" = None) -> tuple[float, float]:
    """Minimum and maximum voxel value of a level image, restricted to a mask.

    elastix's ``ComputeImageExtremaFilter``: every voxel of the image whose physical centre is inside
    the mask (nearest-mask-voxel rule, docs/design.md §E4) counts; the mask may have another geometry.

    Args:
        image: the level image (float32 values).
        mask: optional mask (its own, full-resolution geometry).

    Returns:
        ``(min, max)`` as Python floats (exact float32 values).

    Raises:
        ValueError: no voxel of the image lies inside the mask.

    Source: ``Common/itkComputeImageExtremaFilter.hxx``; ``AdvancedImageToImageMetric::InitializeLimiters``.
    """
    values = image.array_zyx.reshape(-1)
    if mask is not None:
        centres = torch.from_numpy(image.geometry.voxel_centres())
        inside = mask.contains(centres).numpy()
        values = values[inside]
        if values.size == 0:
            raise ValueError("no voxel of the image lies inside its mask: the intensity range (elastix's image "
                             "extrema) is undefined; enlarge the mask or set ErodeMask \"false\"")
    return float(values.min()), float(values.max())


class ClassicMetric:
    """What every classic metric keeps: images, masks, transform, the valid-sample ratio, the options' label.

    Args: as :class:`SampledImageMetric`.
    """

    def __init__(self, fixed: LevelImage, moving: LevelImage, moving_mask: "Mask | None", transform: Transform,
                 moving_interpolation_order: int = 1, required_ratio_of_valid_samples: float = 0.25,
                 parameter_map: ParameterMap | None = None, level: int = 0, *, prefix: str = "Metric0",
                 fixed_mask: "Mask | None" = None, fixed_interpolation_order: int = 1) -> None:
        self.fixed, self.moving = fixed, moving
        self.moving_mask, self.fixed_mask = moving_mask, fixed_mask
        self.transform = transform
        self.required_ratio = float(required_ratio_of_valid_samples)
        self.level = int(level)
        self.prefix = prefix

    @classmethod
    def for_level(cls, inputs: Any) -> "ClassicMetric":
        """The metric of one resolution level, from the stage's
        :class:`~elastix_bridge.engine.registration.MetricInputs`: the map's options of this metric
        (``Metric<i>``-prefixed keys allowed), the fixed mask and ``FixedImageBSplineInterpolationOrder``."""
        pmap, level = inputs.pmap, inputs.level
        return cls(inputs.fixed, inputs.moving, inputs.moving_mask, inputs.transform,
                   moving_interpolation_order=inputs.moving_interpolation_order,
                   required_ratio_of_valid_samples=inputs.required_ratio_of_valid_samples, parameter_map=pmap,
                   level=level, prefix=inputs.prefix, fixed_mask=inputs.fixed_mask,
                   fixed_interpolation_order=pmap.get("FixedImageBSplineInterpolationOrder", level=level, default=1,
                                                      type=int))

    # -- per-level hooks --------------------------------------------------------------------------
    def initialize(self, parameters: torch.Tensor) -> None:
        """Per-level initialisation: nothing to do (extrema and factors are computed at construction)."""

    def after_iteration(self, parameters: torch.Tensor) -> None:
        """Called after every optimizer iteration: nothing to do for these metrics."""


class SampledImageMetric(ClassicMetric):
    """Shared machinery of the image metrics: interpolators, sample validity, fixed values, options.

    Args:
        fixed, moving: level images (:class:`~elastix_bridge.engine.images.level_images.LevelImage`).
        moving_mask: :class:`~elastix_bridge.engine.images.level_images.Mask` (already eroded if ``ErodeMask``) or None.
        transform: the stage transform (:mod:`elastix_bridge.engine.transforms.bspline`).
        moving_interpolation_order: elastix ``BSplineInterpolationOrder`` (1 for ``LinearInterpolator``).
        required_ratio_of_valid_samples: ``RequiredRatioOfValidSamples`` (0 when ``CheckNumberOfSamples
            false``).
        parameter_map: :class:`~elastix_bridge.core.parameters.ParameterMap` (or dict of string lists) holding the
            metric's own options; None = elastix defaults.
        level: resolution level (entry of per-level options).
        prefix: elastix component label used for label-prefixed keys (``Metric0`` for the first metric,
            ``Metric<i>`` in a multi-metric registration).
        fixed_mask: the (eroded) fixed mask; only needed where elastix restricts the fixed intensity
            range to it (Mattes limiters, MeanSquares normalisation).
        fixed_interpolation_order: how fixed values are read at the sample points: 1 (linear, elastix's
            ``FixedImageBSplineInterpolationOrder`` default; exact at the voxel centres of Full/Grid/Random
            samples) or a B-spline order 0–3.
    """

    name = ""

    def __init__(self, fixed: LevelImage, moving: LevelImage, moving_mask: "Mask | None", transform: Transform,
                 moving_interpolation_order: int = 1, required_ratio_of_valid_samples: float = 0.25,
                 parameter_map: ParameterMap | None = None, level: int = 0, *, prefix: str = "Metric0",
                 fixed_mask: "Mask | None" = None, fixed_interpolation_order: int = 1) -> None:
        super().__init__(fixed, moving, moving_mask, transform, moving_interpolation_order,
                         required_ratio_of_valid_samples, parameter_map, level, prefix=prefix, fixed_mask=fixed_mask,
                         fixed_interpolation_order=fixed_interpolation_order)
        self.dim = fixed.geometry.dimension
        self.fixed_interp = ImageInterpolator(fixed, order=fixed_interpolation_order, dtype=torch.float64)
        self.moving_interp = ImageInterpolator(moving, order=moving_interpolation_order, dtype=torch.float64)
        self._fixed_cache = None  # (points, values): fixed values of the last sample set
        self._read_options(as_parameter_map(parameter_map), self.level, prefix)

    # -- options ----------------------------------------------------------------------------------
    def _read_options(self, pmap, level: int, prefix: str) -> None:  # pragma: no cover - trivial default
        """Read the metric's own keys (``ReadParameter(value, key, label, level, 0)``)."""

    # -- samples ----------------------------------------------------------------------------------
    def _inside_moving(self, points):
        """``(N,)`` validity of mapped points: moving mask (if any) and moving buffer (docs/design.md §E7.1)."""
        geometry = self.moving.geometry
        ok = geometry.inside_buffer(geometry.physical_to_index(points))
        if self.moving_mask is not None:
            ok = ok & self.moving_mask.contains(points)
        return ok

    def fixed_values(self, points: torch.Tensor) -> torch.Tensor:
        """Fixed intensities at the sample points, ``(N,)`` float64 (cached per sample set)."""
        cached = self._fixed_cache
        if cached is not None and cached[0] is points:
            return cached[1]
        with torch.no_grad():
            values = self.fixed_interp(points.detach().to(torch.float64))[:, 0]
        self._fixed_cache = (points, values)
        return values

    def samples(self, parameters: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Fixed and moving values of the valid samples.

        Args:
            parameters: transform parameters ``(P,)`` float64 (may require grad).
            points: fixed sample points ``(N, D)`` float64, physical mm.

        Returns:
            ``(f, m, n_valid)``: fixed values ``(n_valid,)`` (no grad), moving values ``(n_valid,)``
            (differentiable w.r.t. ``parameters``) and the number of valid samples.

        Raises:
            SamplingError: see :func:`check_samples`.
        """
        moved = self.transform.transform_points(parameters, points)
        valid = self._inside_moving(moved.detach())
        n_valid = int(valid.sum())
        check_samples(n_valid, int(points.shape[0]), self.required_ratio)
        f = self.fixed_values(points)[valid]
        m = self.moving_interp(moved[valid])[:, 0]
        return f, m, n_valid

    def value(self, parameters: torch.Tensor,  # pragma: no cover - abstract
              points: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Metric value (0-d tensor, differentiable w.r.t. ``parameters``) and ``n_valid``."""
        raise NotImplementedError
