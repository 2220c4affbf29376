"""elastix's classic metrics for one resolution level, with the :class:`ImpactMetric` interface.

``AdvancedMeanSquares``, ``AdvancedNormalizedCorrelation``, ``AdvancedMattesMutualInformation`` and
``TransformBendingEnergyPenalty`` evaluated exactly as elastix does on a given sample set; the derivative
with respect to the transform parameters comes from autograd (every step below is differentiable where
elastix's analytic derivative is defined, so the two agree).

Common sample evaluation (docs/design.md §E7.1, ``Common/CostFunctions/itkAdvancedImageToImageMetric.hxx``)::

    y = T(μ, x)                                   fixed sample x (physical mm), y mapped point
    valid  ⇔  y inside the moving mask (if any)   nearest-voxel rule, docs/design.md §E4
           ∧  −0.5 ≤ i_M(y)_d < n_d − 0.5         ITK IsInsideBuffer of the moving level image
    f = F(x)   (voxel value; the fixed image interpolated with FixedImageBSplineInterpolationOrder)
    m = M(y)   (BSplineInterpolator of order BSplineInterpolationOrder, mirror boundary)

``N_valid < RequiredRatioOfValidSamples · N`` (or ``N_valid = 0``) raises :class:`SamplingError`
("Too many samples map outside moving image buffer: N_valid / N").

Metric values (``N = N_valid``):

* MeanSquares: ``κ/N · Σ (m − f)²``; ``κ = 100/d²`` with ``UseNormalization`` (§E7.2).
* NormalizedCorrelation: ``s_fm / −√(s_ff·s_mm)`` (means subtracted), 0 if the denominator is
  ``≥ −1e-14`` (§E7.3).
* Mattes MI: Parzen-window joint histogram, ``−Σ p·log(p / (p_f·p_m))`` (§E7.4); the gradient uses
  elastix's derivative Parzen kernel (exact for the default cubic kernel, not for orders 1–2).
* Bending energy: ``1/N · Σ_x Σ_k ‖H_k(x)‖_F²`` over samples whose ``T(x)`` lies in the moving mask
  (no buffer check), ``H_k`` the physical spatial Hessian of component k of a B-spline transform (§E7.5).

torch is imported inside the functions: importing this module imports neither torch nor itk.

Sources: docs/design.md §E4, §E5, §E7, §E8.1; elastix
``Components/Metrics/AdvancedMeanSquares/itkAdvancedMeanSquaresImageToImageMetric.hxx``,
``Components/Metrics/AdvancedNormalizedCorrelation/itkAdvancedNormalizedCorrelationImageToImageMetric.hxx``,
``Components/Metrics/AdvancedMattesMutualInformation/itkParzenWindowMutualInformationImageToImageMetric.hxx``,
``Components/Metrics/AdvancedMattesMutualInformation/elxAdvancedMattesMutualInformationMetric.hxx``,
``Common/CostFunctions/itkParzenWindowHistogramImageToImageMetric.hxx``,
``Common/CostFunctions/itkExponentialLimiterFunction.hxx``, ``Common/CostFunctions/itkHardLimiterFunction.hxx``,
``Common/Transforms/itkBSplineKernelFunction2.h``, ``Common/itkComputeImageExtremaFilter.hxx``,
``Components/Metrics/BendingEnergyPenalty/itkTransformBendingEnergyPenaltyTerm.hxx``.

Why this module is longer than ~600 lines: the four metrics share elastix's sample evaluation (valid
samples, the mask rule, moving-image interpolation, ``AdvancedImageToImageMetric``) through one base
class; they are kept beside it so that the shared rule is read once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from elastix_bridge.core.parameters import as_parameter_map
from elastix_bridge.engine.components import UnsupportedComponentError, component, names, register
from elastix_bridge.engine.errors import SamplingError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from elastix_bridge.core.parameters import ParameterMap
    from elastix_bridge.engine.images.level_images import LevelImage, Mask
    from elastix_bridge.engine.transforms.base import Transform
    from elastix_bridge.engine.transforms.bspline import BSplineTransform

__all__ = [
    "AdvancedMeanSquares",
    "AdvancedNormalizedCorrelation",
    "AdvancedMattesMutualInformation",
    "TransformBendingEnergyPenalty",
    "make_classic_metric",
    "check_samples",
    "HistogramAxis",
    "image_extrema",
    "intensity_limits",
    "hard_limiter",
    "exponential_limiter",
    "parzen_window",
    "elastix_parzen_derivative",
    "moving_parzen_window",
    "joint_histogram",
    "mattes_mutual_information",
    "bspline_spatial_hessian",
]

# Thresholds of elastix's code (not tunables).
_NCC_DENOMINATOR_EPS = 1e-14          # itkAdvancedNormalizedCorrelationImageToImageMetric.hxx
_PDF_EPS = 1e-16                       # itkParzenWindowMutualInformationImageToImageMetric.hxx
_LIMITER_EPS = 1e-10                   # itkExponentialLimiterFunction.hxx
_NORMALIZATION_EPS = 1e-10             # itkAdvancedMeanSquaresImageToImageMetric.hxx
_MIN_HISTOGRAM_BINS = 4                # itkSetClampMacro(NumberOf*HistogramBins, unsigned long, 4, max)


# ================================================================================================ helpers


def _zero_like_parameters(parameters):
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
        import torch

        centres = torch.from_numpy(image.geometry.voxel_centres())
        inside = mask.contains(centres).numpy()
        values = values[inside]
        if values.size == 0:
            raise ValueError("no voxel of the image lies inside its mask: the intensity range (elastix's image "
                             "extrema) is undefined; enlarge the mask or set ErodeMask \"false\"")
    return float(values.min()), float(values.max())


def intensity_limits(true_min: float, true_max: float, ratio: float) -> tuple[float, float]:
    """Limiter range ``[min − r·(max − min), max + r·(max − min)]`` (``*LimitRangeRatio`` r).

    As in elastix, the extrema are image pixels (float32) and their difference ``max − min`` is taken in
    float32 arithmetic; the rest is double.

    Source: ``AdvancedImageToImageMetric::InitializeLimiters`` (``m_*ImageTrueMin/Max`` are pixel-typed).
    """
    span = float(np.float32(true_max) - np.float32(true_min))
    return float(true_min) - ratio * span, float(true_max) + ratio * span


def hard_limiter(values: torch.Tensor, lower_bound: float, upper_bound: float) -> torch.Tensor:
    """``min(max(v, lower), upper)`` (``HardLimiterFunction``); used for the fixed values of Mattes MI.

    Args:
        values: ``(N,)`` tensor.

    Returns:
        ``(N,)`` tensor (derivative 0 where clamped, as elastix).
    """
    import torch

    return torch.clamp(values, min=lower_bound, max=upper_bound)


def exponential_limiter(values: torch.Tensor, lower_threshold: float, upper_threshold: float,
                        lower_bound: float, upper_bound: float) -> torch.Tensor:
    """elastix's ``ExponentialLimiterFunction`` (soft limiter of the moving values of Mattes MI).

    Above the upper threshold ``UT`` (by more than 1e-10): ``UB − (UB − UT)·exp(−(v − UT)/(UB − UT))``; below
    the lower threshold symmetrically; unchanged in between. A bound within 1e-10 of its threshold
    gives a hard limit at the bound. Value and derivative are continuous at the thresholds.

    Args:
        values: ``(N,)`` tensor (differentiable).
        lower_threshold, upper_threshold: the true intensity range ``[min, max]``.
        lower_bound, upper_bound: the extended range (:func:`intensity_limits`).

    Returns:
        ``(N,)`` tensor, differentiable.

    Source: ``Common/CostFunctions/itkExponentialLimiterFunction.hxx``.
    """
    import torch

    ut_min_ub = float(upper_threshold) - float(upper_bound)
    lt_min_lb = float(lower_threshold) - float(lower_bound)
    ut_inv = 1.0 / ut_min_ub if ut_min_ub < -_LIMITER_EPS else 0.0
    lt_inv = 1.0 / lt_min_lb if lt_min_lb > _LIMITER_EPS else 0.0
    if ut_inv == 0.0:
        ut_min_ub = 0.0
    if lt_inv == 0.0:
        lt_min_lb = 0.0
    diff_u = values - upper_threshold
    diff_l = values - lower_threshold
    above = diff_u > _LIMITER_EPS
    below = (~above) & (diff_l < -_LIMITER_EPS)
    # exp arguments are clamped to <= 0 where the branch is not taken, so no overflow leaks into gradients
    up = ut_min_ub * torch.exp(ut_inv * torch.where(above, diff_u, torch.zeros_like(diff_u))) + upper_bound
    low = lt_min_lb * torch.exp(lt_inv * torch.where(below, diff_l, torch.zeros_like(diff_l))) + lower_bound
    return torch.where(above, up, torch.where(below, low, values))


@dataclass(frozen=True)
class HistogramAxis:
    """Bin geometry of one histogram axis (fixed or moving) of the Parzen-window joint histogram.

    A value ``v`` (already limited) has the Parzen term ``τ = v / bin_size − normalized_min``; the bins
    ``start … start + order`` with ``start = ⌊τ + 0.5 − order/2⌋`` receive the B-spline weights
    ``β^order(start + i − τ)``.

    Attributes:
        bins: number of bins B (≥ 4).
        order: B-spline kernel order 0–3.
        padding: ``order // 2`` bins kept free at each side.
        bin_size: bin width in intensity units.
        normalized_min: ``(min_limit − ε)/bin_size − padding``.

    Source: ``ParzenWindowHistogramImageToImageMetric::InitializeHistograms`` / ``InitializeKernels``.
    """

    bins: int
    order: int
    padding: int
    bin_size: float
    normalized_min: float

    @classmethod
    def from_limits(cls, min_limit: float, max_limit: float, bins: int, order: int,
                    epsilon_bins: int | None = None) -> "HistogramAxis":
        """Bin geometry from the limiter range ``[min_limit, max_limit]``.

        ``ε = 0.001·(max − min)/(B_ε − 2p − 1)``, ``bin_size = (max − min + 2ε)/(B − 2p − 1)`` clamped to
        ``[1e-10, 1e10]``, ``normalized_min = (min − ε)/bin_size − p`` with ``p = order // 2``.

        Args:
            min_limit, max_limit: limiter range (intensity units).
            bins: number of bins of this axis.
            order: kernel order 0..3.
            epsilon_bins: the bin count used in ``ε``'s denominator. elastix uses the number of
                *fixed* bins for both axes (so for the moving axis this differs from ``bins`` when
                ``NumberOfFixedHistogramBins ≠ NumberOfMovingHistogramBins``); default ``bins``.

        Raises:
            ValueError: order outside 0..3.
        """
        if order not in (0, 1, 2, 3):
            raise ValueError(f"a Parzen kernel B-spline order must be 0, 1, 2 or 3; got {order}")
        bins = max(int(bins), _MIN_HISTOGRAM_BINS)
        eps_bins = bins if epsilon_bins is None else max(int(epsilon_bins), _MIN_HISTOGRAM_BINS)
        padding = order // 2
        span = float(max_limit) - float(min_limit)
        epsilon = 0.001 * span / float(eps_bins - 2 * padding - 1)
        bin_size = (span + 2.0 * epsilon) / float(bins - 2.0 * padding - 1.0)
        bin_size = min(max(bin_size, 1e-10), 1e10)
        normalized_min = (float(min_limit) - epsilon) / bin_size - float(padding)
        return cls(bins, int(order), padding, bin_size, normalized_min)

    def parzen_term(self, values: torch.Tensor) -> torch.Tensor:
        """``τ = v / bin_size − normalized_min`` for ``(N,)`` values (differentiable)."""
        return values / self.bin_size - self.normalized_min


def parzen_window(term: torch.Tensor, order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First affected bin and B-spline Parzen weights of each Parzen term.

    ``start = ⌊τ + 0.5 − order/2⌋``; weight ``i`` is ``β^order(start + i − τ)``, evaluated with the
    polynomials of ``BSplineKernelFunction2::Evaluate(u, weights)`` in ``a = τ − start`` (order 0:
    1, or 0.5 when ``|a| = 0.5`` exactly).

    Args:
        term: ``(N,)`` Parzen terms τ (differentiable).
        order: kernel order 0..3.

    Returns:
        ``(start, weights)``: int64 ``(N,)`` and ``(N, order + 1)`` (differentiable in ``term``).

    Raises:
        ValueError: order outside 0..3.
    """
    import torch

    start = torch.floor(term.detach() + (0.5 - order / 2.0))
    a = term - start  # |u| of elastix, u = start − τ
    if order == 0:
        w = torch.where(a.abs() < 0.5, torch.ones_like(a),
                        torch.where(a.abs() == 0.5, torch.full_like(a, 0.5), torch.zeros_like(a)))[:, None]
    elif order == 1:
        w = torch.stack([1.0 - a, a], dim=1)
    elif order == 2:
        a2 = a * a
        w = torch.stack([(9.0 - 12.0 * a + 4.0 * a2) / 8.0, -0.25 + 2.0 * a - a2, (1.0 - 4.0 * a + 4.0 * a2) / 8.0],
                        dim=1)
    elif order == 3:
        a2 = a * a
        a3 = a2 * a
        sixth = 1.0 / 6.0
        w = torch.stack([(8.0 - 12.0 * a + 6.0 * a2 - a3) * sixth,
                         (-5.0 + 21.0 * a - 15.0 * a2 + 3.0 * a3) * sixth,
                         (4.0 - 12.0 * a + 12.0 * a2 - 3.0 * a3) * sixth,
                         (-1.0 + 3.0 * a - 3.0 * a2 + a3) * sixth], dim=1)
    else:
        raise ValueError(f"a Parzen kernel B-spline order must be 0, 1, 2 or 3; got {order}")
    return start.to(torch.int64), w


def elastix_parzen_derivative(term: torch.Tensor, order: int) -> torch.Tensor:
    """elastix's derivative Parzen weights ``BSplineDerivativeKernelFunction2::Evaluate(u, weights)``.

    Evaluated at ``u = start − τ`` (``start`` from :func:`parzen_window`); the metric derivative uses
    ``∂w_i/∂τ = −dB_i``. For order 3 this is the exact derivative ``−β'(start + i − τ)``. For orders 1 and 2
    elastix's formulas (marked "MS \\todo: check" upstream) are written for ``u > 0`` although ``u ≤ 0`` here,
    so they differ from the exact derivative (order 1: opposite sign; order 2: reflected); they are
    reproduced as they are.

    Args:
        term: ``(N,)`` Parzen terms τ.
        order: kernel order 1..3.

    Returns:
        ``(N, order + 1)`` tensor ``dB``.

    Source: ``Common/Transforms/itkBSplineDerivativeKernelFunction2.h``.
    """
    import torch

    start = torch.floor(term + (0.5 - order / 2.0))
    u = start - term
    a = u.abs()
    if order == 3:
        a2 = u * u
        return torch.stack([0.5 * a2 - 2.0 * a + 2.0, -1.5 * a2 + 5.0 * a - 3.5, 1.5 * a2 - 4.0 * a + 2.0,
                            -0.5 * a2 + a - 0.5], dim=1)
    if order == 2:
        return torch.stack([u - 1.5, -2.0 * u + 2.0, u - 0.5], dim=1)
    if order == 1:
        inner = (a < 1.0) & (a > 0.0)
        first = torch.where(inner, -torch.ones_like(u), torch.where(a == 1.0, torch.full_like(u, -0.5),
                                                                     torch.zeros_like(u)))
        second = torch.where(inner, torch.ones_like(u), torch.where(a == 1.0, torch.zeros_like(u),
                                                                     torch.full_like(u, 0.5)))
        return torch.stack([first, second], dim=1)
    raise ValueError(f"elastix has a derivative Parzen kernel for orders 1, 2 and 3 only; got {order}")


_ELASTIX_PARZEN = None


def _elastix_parzen_function():
    """Autograd function: exact Parzen weights forward, elastix's derivative kernel backward."""
    global _ELASTIX_PARZEN
    if _ELASTIX_PARZEN is None:
        import torch

        class _ElastixParzen(torch.autograd.Function):
            @staticmethod
            def forward(ctx: Any, term: torch.Tensor, order: int) -> torch.Tensor:
                ctx.save_for_backward(term)
                ctx.order = order
                return parzen_window(term.detach(), order)[1]

            @staticmethod
            def backward(ctx: Any, grad_weights: torch.Tensor) -> tuple[torch.Tensor, None]:
                (term,) = ctx.saved_tensors
                d_b = elastix_parzen_derivative(term.detach(), ctx.order)
                return -(grad_weights * d_b).sum(dim=1), None

        _ELASTIX_PARZEN = _ElastixParzen
    return _ELASTIX_PARZEN


def moving_parzen_window(term: torch.Tensor, order: int,
                         elastix_derivative: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`parzen_window` for the moving values, with elastix's derivative kernel if asked.

    Args:
        term: ``(N,)`` moving Parzen terms (differentiable).
        order: kernel order 0..3.
        elastix_derivative: backpropagate with :func:`elastix_parzen_derivative` (orders 1–3; identical
            to the exact derivative for order 3) instead of the exact derivative of the weights.

    Returns:
        ``(start, weights)`` as :func:`parzen_window`.
    """
    start, weights = parzen_window(term, order)
    if elastix_derivative and order in (1, 2) and term.requires_grad:
        weights = _elastix_parzen_function().apply(term, order)
    return start, weights


def joint_histogram(fixed_start: torch.Tensor, fixed_weights: torch.Tensor, moving_start: torch.Tensor,
                    moving_weights: torch.Tensor, fixed_bins: int, moving_bins: int) -> torch.Tensor:
    """Unnormalised joint histogram ``h[f, m] = Σ_samples w_f(f)·w_m(m)`` (vectorised scatter-add).

    Args:
        fixed_start, moving_start: int64 ``(N,)`` first bins (:func:`parzen_window`).
        fixed_weights: ``(N, K_f)``; moving_weights: ``(N, K_m)`` (differentiable).
        fixed_bins, moving_bins: histogram size.

    Returns:
        ``(fixed_bins, moving_bins)`` tensor, differentiable w.r.t. the weights.

    Raises:
        RuntimeError: a window reaches outside the histogram (cannot happen for limited values).
    """
    import torch

    kf, km = fixed_weights.shape[1], moving_weights.shape[1]
    rows = fixed_start[:, None] + torch.arange(kf)[None, :]  # (N, K_f)
    cols = moving_start[:, None] + torch.arange(km)[None, :]  # (N, K_m)
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= fixed_bins
                         or int(cols.min()) < 0 or int(cols.max()) >= moving_bins):
        raise RuntimeError("a Parzen window reaches outside the joint histogram; the intensities were not "
                           "limited to the histogram range (internal error)")
    index = (rows[:, :, None] * moving_bins + cols[:, None, :]).reshape(-1)
    values = (fixed_weights[:, :, None] * moving_weights[:, None, :]).reshape(-1)
    flat = values.new_zeros(fixed_bins * moving_bins).index_add(0, index, values)
    return flat.view(fixed_bins, moving_bins)


def mattes_mutual_information(joint_pdf: torch.Tensor, low_memory: bool = True) -> torch.Tensor:
    """Metric value ``−MI`` of a normalised joint histogram ``p[f, m]``.

    ``MI = Σ p·log(p / (p_f·p_m))`` over the bins with ``p > 1e-16`` and, in the fast low-memory version
    (``UseFastAndLowMemoryVersion true``, the default), ``p_m > 1e-16`` and ``p_f > 1e-16``; in the
    explicit-PDF-derivative version ``p_f·p_m > 1e-16`` instead. Marginals are row/column sums.

    Args:
        joint_pdf: ``(B_f, B_m)`` tensor (differentiable).
        low_memory: which of elastix's two code paths' bin tests to use.

    Returns:
        0-d tensor ``−MI``.

    Source: ``ParzenWindowMutualInformationImageToImageMetric::ComputeValueAndPRatioArray`` / ``GetValue``.
    """
    import torch

    pf = joint_pdf.sum(dim=1, keepdim=True)  # (B_f, 1)
    pm = joint_pdf.sum(dim=0, keepdim=True)  # (1, B_m)
    if low_memory:
        use = (joint_pdf > _PDF_EPS) & (pm > _PDF_EPS) & (pf > _PDF_EPS)
    else:
        use = (joint_pdf > _PDF_EPS) & (pf * pm > _PDF_EPS)
    one = torch.ones_like(joint_pdf)
    p = torch.where(use, joint_pdf, one)  # unused bins: log(1/1) = 0, and no NaN in the gradient
    ratio = p / torch.where(use, pf * pm, one)
    return -torch.where(use, p * torch.log(ratio), torch.zeros_like(p)).sum()


# ================================================================================================ base classes


class _Metric:
    """What every classic metric keeps: images, masks, transform, the valid-sample ratio, the options' label.

    Args: as :class:`_SampledImageMetric`.
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

    # -- per-level hooks --------------------------------------------------------------------------
    def initialize(self, parameters: torch.Tensor) -> None:
        """Per-level initialisation: nothing to do (extrema and factors are computed at construction)."""

    def after_iteration(self, parameters: torch.Tensor) -> None:
        """Called after every optimizer iteration: nothing to do for these metrics."""


class _SampledImageMetric(_Metric):
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
        import torch

        from elastix_bridge.engine.images.interpolators import ImageInterpolator

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
        import torch

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


# ================================================================================================ metrics


@register("Metric", "AdvancedMeanSquares", notes="`UseNormalization`",
          source="Components/Metrics/AdvancedMeanSquares")
class AdvancedMeanSquares(_SampledImageMetric):
    """elastix ``AdvancedMeanSquares``: ``V = κ/N · Σ (M(T(x)) − F(x))²``.

    Options (per level, label-prefixed keys allowed): ``UseNormalization`` (default false): ``κ = 100/d²``
    with ``d = max(F_max − M_min, M_max − F_min)`` (float32 differences, as elastix) over the level fixed
    image inside the fixed mask and the level moving image inside the moving mask; ``κ = 1`` if
    ``d ≤ 1e-10`` or without normalisation.

    Args: see :class:`_SampledImageMetric`.

    Attributes:
        use_normalization (bool), normalization_factor (float κ).

    Source: ``Components/Metrics/AdvancedMeanSquares/itkAdvancedMeanSquaresImageToImageMetric.hxx``
    (``Initialize``, ``GetValue``); docs/design.md §E7.2.
    """

    name = "AdvancedMeanSquares"

    def _read_options(self, pmap, level, prefix):
        self.use_normalization = pmap.get("UseNormalization", level=level, default=False, type=bool, prefix=prefix)
        self.normalization_factor = 1.0
        if self.use_normalization:
            f_min, f_max = image_extrema(self.fixed, self.fixed_mask)
            m_min, m_max = image_extrema(self.moving, self.moving_mask)
            # the extrema are pixel-typed (float32) in elastix, so are their differences
            d = float(max(np.float32(f_max) - np.float32(m_min), np.float32(m_max) - np.float32(f_min)))
            if d > _NORMALIZATION_EPS:
                self.normalization_factor = 100.0 / d / d

    def value(self, parameters: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Mean squared difference of the valid samples.

        Args:
            parameters: ``(P,)`` float64 transform parameters (may require grad).
            points: ``(N, D)`` float64 fixed sample points (mm).

        Returns:
            ``(value, n_valid)``: 0-d tensor in (intensity units)² (× κ), and the valid sample count.

        Raises:
            SamplingError: too few valid samples.
        """
        f, m, n = self.samples(parameters, points)
        diff = m - f
        return (diff * diff).sum() * (self.normalization_factor / n), n


@register("Metric", "AdvancedNormalizedCorrelation", source="Components/Metrics/AdvancedNormalizedCorrelation")
class AdvancedNormalizedCorrelation(_SampledImageMetric):
    """elastix ``AdvancedNormalizedCorrelation``: ``V = s_fm / −√(s_ff·s_mm)`` ∈ [−1, 1] (−1 = perfect).

    With ``S_*`` sums over the valid samples: ``s_ff = S_ff − S_f²/N``, ``s_mm = S_mm − S_m²/N``,
    ``s_fm = S_fm − S_f·S_m/N``. ``V = 0`` if the denominator is not below ``−1e-14``. The means are always
    subtracted: the ``SubtractMean`` key of older elastix versions is ignored (docs/design.md §E7.3; checked
    against itk-elastix 0.25.4, where ``(SubtractMean "false")`` gives the same value).

    Args: see :class:`_SampledImageMetric`.

    Source: ``Components/Metrics/AdvancedNormalizedCorrelation/itkAdvancedNormalizedCorrelationImageToImageMetric.hxx``;
    docs/design.md §E7.3.
    """

    name = "AdvancedNormalizedCorrelation"

    def _read_options(self, pmap, level, prefix):
        pmap.get("SubtractMean", level=level, default=True, type=bool, prefix=prefix)  # validated, then ignored

    def value(self, parameters: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Normalised correlation of the valid samples.

        Args:
            parameters: ``(P,)`` float64 transform parameters (may require grad).
            points: ``(N, D)`` float64 fixed sample points (mm).

        Returns:
            ``(value, n_valid)``: dimensionless 0-d tensor and the valid sample count.

        Raises:
            SamplingError: too few valid samples.
        """
        import torch

        f, m, n = self.samples(parameters, points)
        sf, sm = f.sum(), m.sum()
        sff = (f * f).sum() - sf * sf / n
        smm = (m * m).sum() - sm * sm / n
        sfm = (f * m).sum() - sf * sm / n
        product = sff * smm
        p = float(product.detach())
        if not (p > 0.0 and -math.sqrt(p) < -_NCC_DENOMINATOR_EPS):  # elastix: denom < -1e-14, else 0
            return _zero_like_parameters(parameters) + 0.0 * m.sum(), n
        denominator = -torch.sqrt(product)
        return sfm / denominator, n


@register("Metric", "AdvancedMattesMutualInformation", notes="histogram bins, kernel orders, limit-range ratios",
          source="Components/Metrics/AdvancedMattesMutualInformation")
class AdvancedMattesMutualInformation(_SampledImageMetric):
    """elastix ``AdvancedMattesMutualInformation`` (Parzen-window mutual information), value ``−MI``.

    Options (per level, label-prefixed keys allowed; elastix defaults): ``NumberOfHistogramBins`` 32, overridden
    per axis by ``NumberOfFixedHistogramBins`` / ``NumberOfMovingHistogramBins`` (each clamped to ≥ 4);
    ``FixedKernelBSplineOrder`` 0, ``MovingKernelBSplineOrder`` 3; ``FixedLimitRangeRatio`` /
    ``MovingLimitRangeRatio`` 0.01; ``UseFastAndLowMemoryVersion`` true (selects the bin test of
    :func:`mattes_mutual_information`). ``UseJacobianPreconditioning`` and ``FiniteDifferenceDerivative``
    change elastix's derivative away from the exact one and are refused.

    Evaluation: the true intensity ranges are the extrema of the level fixed image (inside the fixed mask)
    and of the level moving image (inside the moving mask); fixed values are hard-limited to the extended
    range, moving values soft-limited with the exponential limiter; both are binned
    (:class:`HistogramAxis`; the ε of *both* axes uses the number of fixed bins, as elastix does); each
    valid sample adds the outer product of its fixed and moving Parzen weights to the joint histogram,
    which is scaled by ``1/N_valid``; marginals are its sums.

    Derivative: autograd through limiters, Parzen terms, moving interpolation and transform. For the moving
    kernel, elastix differentiates with its own derivative kernel (:func:`elastix_parzen_derivative`): exact
    for ``MovingKernelBSplineOrder 3`` (the default) but not for orders 1 and 2, where elastix's gradient is
    not the derivative of its value. ``elastix_kernel_derivative=True`` (default) reproduces elastix's
    gradient, False gives the exact derivative. (Order 0 has no derivative: zero.)

    Args: see :class:`_SampledImageMetric`; in addition ``elastix_kernel_derivative`` (bool, default True).

    Attributes:
        fixed_axis, moving_axis (:class:`HistogramAxis`), fixed_range / moving_range (true ``(min, max)``),
        fixed_limits / moving_limits (extended ``(min, max)``), low_memory (bool).

    Raises:
        ValueError: unsupported options or kernel orders, or an empty mask.

    Source: ``Common/CostFunctions/itkParzenWindowHistogramImageToImageMetric.hxx``,
    ``Components/Metrics/AdvancedMattesMutualInformation/itkParzenWindowMutualInformationImageToImageMetric.hxx``,
    ``elxAdvancedMattesMutualInformationMetric.hxx``, ``Common/CostFunctions/itkAdvancedImageToImageMetric.hxx``
    (``InitializeLimiters``); docs/design.md §E7.4.
    """

    name = "AdvancedMattesMutualInformation"

    def __init__(self, fixed: LevelImage, moving: LevelImage, moving_mask: "Mask | None", transform: Transform,
                 moving_interpolation_order: int = 1, required_ratio_of_valid_samples: float = 0.25,
                 parameter_map: ParameterMap | None = None, level: int = 0, *, prefix: str = "Metric0",
                 fixed_mask: "Mask | None" = None, fixed_interpolation_order: int = 1,
                 elastix_kernel_derivative: bool = True) -> None:
        self.elastix_kernel_derivative = bool(elastix_kernel_derivative)
        super().__init__(fixed, moving, moving_mask, transform, moving_interpolation_order,
                         required_ratio_of_valid_samples, parameter_map, level, prefix=prefix,
                         fixed_mask=fixed_mask, fixed_interpolation_order=fixed_interpolation_order)

    def _read_options(self, pmap, level, prefix):
        from elastix_bridge.core.parameters import UInt

        def get(key: str, default: Any, typ: type) -> Any:
            return pmap.get(key, level=level, default=default, type=typ, prefix=prefix)

        bins = get("NumberOfHistogramBins", 32, UInt)
        self.fixed_bins = max(get("NumberOfFixedHistogramBins", bins, UInt), _MIN_HISTOGRAM_BINS)
        self.moving_bins = max(get("NumberOfMovingHistogramBins", bins, UInt), _MIN_HISTOGRAM_BINS)
        self.fixed_kernel_order = get("FixedKernelBSplineOrder", 0, UInt)
        self.moving_kernel_order = get("MovingKernelBSplineOrder", 3, UInt)
        for key, order in (("FixedKernelBSplineOrder", self.fixed_kernel_order),
                           ("MovingKernelBSplineOrder", self.moving_kernel_order)):
            if order > 3:
                raise ValueError(f"{key} {order} is not implemented by elastix (use 0, 1, 2 or 3)")
        self.fixed_limit_range_ratio = get("FixedLimitRangeRatio", 0.01, float)
        self.moving_limit_range_ratio = get("MovingLimitRangeRatio", 0.01, float)
        self.low_memory = get("UseFastAndLowMemoryVersion", True, bool)
        for key in ("UseJacobianPreconditioning", "FiniteDifferenceDerivative"):
            if get(key, False, bool):
                raise ValueError(f"{key} \"true\" changes elastix's Mattes derivative into an approximation that "
                                 "is not reproduced here (derivatives are exact); set it to \"false\"")

        self.fixed_range = image_extrema(self.fixed, self.fixed_mask)
        self.moving_range = image_extrema(self.moving, self.moving_mask)
        self.fixed_limits = intensity_limits(*self.fixed_range, self.fixed_limit_range_ratio)
        self.moving_limits = intensity_limits(*self.moving_range, self.moving_limit_range_ratio)
        self.fixed_axis = HistogramAxis.from_limits(*self.fixed_limits, self.fixed_bins, self.fixed_kernel_order)
        # elastix computes the moving ε with the number of *fixed* bins (InitializeHistograms).
        self.moving_axis = HistogramAxis.from_limits(*self.moving_limits, self.moving_bins,
                                                     self.moving_kernel_order, epsilon_bins=self.fixed_bins)

    def joint_pdf(self, parameters: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Normalised joint histogram ``p[f, m]`` ``(B_f, B_m)`` (differentiable) and ``n_valid``.

        Raises:
            SamplingError: too few valid samples.
        """
        f, m, n = self.samples(parameters, points)
        f = hard_limiter(f, *self.fixed_limits)
        m = exponential_limiter(m, self.moving_range[0], self.moving_range[1], *self.moving_limits)
        fs, fw = parzen_window(self.fixed_axis.parzen_term(f), self.fixed_axis.order)
        ms, mw = moving_parzen_window(self.moving_axis.parzen_term(m), self.moving_axis.order,
                                      self.elastix_kernel_derivative)
        hist = joint_histogram(fs, fw, ms, mw, self.fixed_axis.bins, self.moving_axis.bins)
        return hist * (1.0 / n), n

    def value(self, parameters: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Negative mutual information of the valid samples.

        Args:
            parameters: ``(P,)`` float64 transform parameters (may require grad).
            points: ``(N, D)`` float64 fixed sample points (mm).

        Returns:
            ``(value, n_valid)``: 0-d tensor ``−MI`` (nats, ≤ 0) and the valid sample count.

        Raises:
            SamplingError: too few valid samples.
        """
        pdf, n = self.joint_pdf(parameters, points)
        return mattes_mutual_information(pdf, self.low_memory), n


# ================================================================================================ bending energy


def _weights_and_derivatives(t, order: int):
    """Per-axis B-spline weights and their first and second derivatives at fractional positions.

    Args:
        t: ``(..., )`` fractional positions in ``[0, 1)`` (``ξ − (order−1)/2 − k0``).
        order: spline order 1..3.

    Returns:
        three ``(..., order + 1)`` tensors ``β(t + (order−1)/2 − m)`` and its first and second
        derivatives with respect to ``ξ``.
    """
    import torch

    if order == 3:
        t2, t3, s = t * t, t * t * t, 1.0 - t
        w = torch.stack([s * s * s / 6.0, (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0,
                         (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0, t3 / 6.0], dim=-1)
        d1 = torch.stack([-0.5 * s * s, 1.5 * t2 - 2.0 * t, -1.5 * t2 + t + 0.5, 0.5 * t2], dim=-1)
        d2 = torch.stack([s, 3.0 * t - 2.0, 1.0 - 3.0 * t, t], dim=-1)
        return w, d1, d2
    if order == 2:
        s, h = 1.0 - t, t - 0.5
        w = torch.stack([0.5 * s * s, 0.75 - h * h, 0.5 * t * t], dim=-1)
        d1 = torch.stack([-s, -2.0 * h, t], dim=-1)
        d2 = torch.stack([torch.ones_like(t), torch.full_like(t, -2.0), torch.ones_like(t)], dim=-1)
        return w, d1, d2
    if order == 1:
        w = torch.stack([1.0 - t, t], dim=-1)
        d1 = torch.stack([-torch.ones_like(t), torch.ones_like(t)], dim=-1)
        return w, d1, torch.zeros_like(w)
    raise ValueError(f"B-spline transform order must be 1, 2 or 3; got {order}")


def bspline_spatial_hessian(transform: BSplineTransform, parameters: torch.Tensor,
                            points: torch.Tensor) -> torch.Tensor:
    """Physical spatial Hessian of every displacement component of a B-spline transform.

    ``H_k = Pᵀ·(Σ_m c_k[k0+m]·∂²w_m/∂ξ∂ξᵀ)·P`` with ``P = (Dir_g·diag(G))⁻¹``; zero outside the valid
    region (docs/design.md §E6.4).

    Args:
        transform: :class:`~elastix_bridge.engine.transforms.bspline.BSplineTransform`.
        parameters: ``(P,)`` coefficients (mm), may require grad.
        points: ``(N, D)`` physical points (mm).

    Returns:
        ``(N, D, D, D)`` tensor ``H[n, k, a, b] = ∂²T_k/∂x_a∂x_b`` in 1/mm, differentiable (linear) in
        ``parameters``.

    Source: ``Common/Transforms/itkAdvancedBSplineDeformableTransform.hxx`` (``GetSpatialHessian``).
    """
    import torch

    dtype = torch.promote_types(parameters.dtype, points.dtype)
    pts = points.detach().to(dtype)
    dim, order = transform.dimension, transform.order
    _, node_index, valid = transform.support(pts)  # node indices (N, S^D), x fastest
    grid = transform.grid
    p_mat = torch.as_tensor(np.linalg.inv(grid.direction @ np.diag(grid.spacing)), dtype=dtype)
    xi = (pts - torch.as_tensor(grid.origin, dtype=dtype)) @ p_mat.T
    half = (order - 1) / 2.0
    size = torch.as_tensor(grid.size_xyz, dtype=dtype)
    k0 = torch.minimum(torch.clamp(torch.floor(xi - half), min=0.0), size - (order + 1))
    w, d1, d2 = _weights_and_derivatives(xi - half - k0, order)  # each (N, D, S)
    by_order = (w, d1, d2)
    n = pts.shape[0]
    coef = parameters.to(dtype).view(dim, -1).T  # (nodes, D): node-major rows
    gathered = coef[node_index.reshape(-1)].view(n, -1, dim)  # (N, S^D, D)
    h_xi = []
    for a in range(dim):
        row = []
        for b in range(dim):
            prod = None
            for d in range(dim):  # outer product over the axes, x fastest
                factor = by_order[int(d == a) + int(d == b)][:, d, :]
                prod = factor if prod is None else (factor.unsqueeze(-1) * prod.unsqueeze(1)).reshape(n, -1)
            row.append(torch.einsum("nm,nmk->nk", prod, gathered))
        h_xi.append(torch.stack(row, dim=-1))  # (N, D_k, D_b)
    h_xi = torch.stack(h_xi, dim=-2)  # (N, D_k, D_a, D_b)
    hess = torch.einsum("ia,nkij,jb->nkab", p_mat, h_xi, p_mat)
    return hess * valid.to(dtype)[:, None, None, None]


@register("Metric", "TransformBendingEnergyPenalty", source="Components/Metrics/TransformBendingEnergyPenalty")
class TransformBendingEnergyPenalty(_Metric):
    """elastix ``TransformBendingEnergyPenalty``: ``V = 1/N · Σ_x Σ_k ‖H_k(x)‖_F²``.

    A sample counts when ``T(x)`` lies inside the moving mask (no moving-buffer check); ``N`` is their
    number and the ``RequiredRatioOfValidSamples`` check applies to it. Transforms without a spatial
    Hessian (translation) give 0 without looking at the samples (elastix returns early).

    Args: as :class:`_SampledImageMetric` (the images are only used for their presence; the moving
        image geometry is irrelevant).

    Source: ``Components/Metrics/BendingEnergyPenalty/itkTransformBendingEnergyPenaltyTerm.hxx``;
    docs/design.md §E7.5.
    """

    name = "TransformBendingEnergyPenalty"

    def __init__(self, fixed: LevelImage, moving: LevelImage, moving_mask: "Mask | None", transform: Transform,
                 *args: Any, **kwargs: Any) -> None:
        from elastix_bridge.engine.transforms.initial import ComposedTransform

        if isinstance(transform, ComposedTransform):
            # The Hessian of T_cur∘T_init (docs/design.md §E1.7) is not implemented; without this check the
            # penalty would silently be 0 (the composed transform is not a BSplineTransform).
            raise ValueError("TransformBendingEnergyPenalty on top of an initial transform (a sequence of maps or "
                             "-t0) is not supported by the bridge engine yet; run that map without the penalty or "
                             "with engine='elastix'")
        super().__init__(fixed, moving, moving_mask, transform, *args, **kwargs)

    def value(self, parameters: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Mean bending energy at the samples.

        Args:
            parameters: ``(P,)`` float64 transform parameters (may require grad).
            points: ``(N, D)`` float64 fixed sample points (mm).

        Returns:
            ``(value, n_valid)``: 0-d tensor in 1/mm² and the number of samples inside the moving mask
            (0 for transforms without a spatial Hessian).

        Raises:
            SamplingError: too few samples map inside the moving mask.
        """
        from elastix_bridge.engine.transforms.bspline import BSplineTransform

        if not isinstance(self.transform, BSplineTransform):  # linear transforms: zero Hessian
            return _zero_like_parameters(parameters), 0
        if self.moving_mask is not None:
            moved = self.transform.transform_points(parameters.detach(), points)
            valid = self.moving_mask.contains(moved)
            pts = points[valid]
        else:
            pts = points
        n = int(pts.shape[0])
        check_samples(n, int(points.shape[0]), self.required_ratio)
        hess = bspline_spatial_hessian(self.transform, parameters, pts)
        return (hess * hess).sum() / n, n


def make_classic_metric(name: str, fixed: LevelImage, moving: LevelImage, moving_mask: "Mask | None",
                        transform: Transform, **kwargs: Any) -> _Metric:
    """Build a classic metric from its elastix ``Metric`` name (registered in :mod:`.components`).

    Args:
        name: a registered ``Metric`` without feature models (not ``Impact``).
        fixed, moving, moving_mask, transform, **kwargs: the class's constructor arguments.

    Raises:
        UnsupportedComponentError: unknown name, or a metric that needs feature models (with the supported list).
    """
    metric = component("Metric", name)
    if metric.trait("feature_models"):
        classic = [n for n in names("Metric") if not component("Metric", n).trait("feature_models")]
        raise UnsupportedComponentError(f"(Metric \"{name}\") needs feature models and is built by the stage; "
                                        f"classic metrics: {', '.join(classic)}")
    return metric.factory(fixed, moving, moving_mask, transform, **kwargs)
