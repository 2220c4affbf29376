"""The Parzen-window joint histogram of elastix's Mattes mutual information, and its intensity limiters.

A sample's fixed value ``f`` is hard-limited and its moving value ``m`` soft-limited (exponential limiter)
to the extended intensity range; each is turned into a Parzen term ``τ = v / bin_size − normalized_min``
(:class:`HistogramAxis`); the bins ``start … start + order`` receive the B-spline weights
``β^order(start + i − τ)`` (:func:`parzen_window`); every valid sample adds the outer product of its fixed
and moving weights to the joint histogram (:func:`joint_histogram`), and the metric value is
``−Σ p·log(p / (p_f·p_m))`` (:func:`mattes_mutual_information`, docs/design.md §E7.4). The moving weights
can carry elastix's own derivative kernel in the backward (:func:`moving_parzen_window`), exact for the
default cubic kernel, not for orders 1–2.

The metric that uses them: :class:`elastix_bridge.engine.metrics.classic.AdvancedMattesMutualInformation`.

Sources: docs/design.md §E7.4; elastix ``Common/CostFunctions/itkParzenWindowHistogramImageToImageMetric.hxx``,
``Components/Metrics/AdvancedMattesMutualInformation/itkParzenWindowMutualInformationImageToImageMetric.hxx``,
``Common/CostFunctions/itkAdvancedImageToImageMetric.hxx`` (``InitializeLimiters``),
``Common/CostFunctions/itkExponentialLimiterFunction.hxx``, ``Common/CostFunctions/itkHardLimiterFunction.hxx``,
``Common/Transforms/itkBSplineKernelFunction2.h``, ``Common/Transforms/itkBSplineDerivativeKernelFunction2.h``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "MIN_HISTOGRAM_BINS",
    "HistogramAxis",
    "intensity_limits",
    "hard_limiter",
    "exponential_limiter",
    "parzen_window",
    "elastix_parzen_derivative",
    "moving_parzen_window",
    "joint_histogram",
    "mattes_mutual_information",
]

# Thresholds of elastix's code (not tunables).
_PDF_EPS = 1e-16                       # itkParzenWindowMutualInformationImageToImageMetric.hxx
_LIMITER_EPS = 1e-10                   # itkExponentialLimiterFunction.hxx
MIN_HISTOGRAM_BINS = 4                 # itkSetClampMacro(NumberOf*HistogramBins, unsigned long, 4, max)


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
        bins = max(int(bins), MIN_HISTOGRAM_BINS)
        eps_bins = bins if epsilon_bins is None else max(int(epsilon_bins), MIN_HISTOGRAM_BINS)
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


class _ElastixParzen(torch.autograd.Function):
    """Autograd function: exact Parzen weights forward, elastix's derivative kernel backward."""

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
        weights = _ElastixParzen.apply(term, order)
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
