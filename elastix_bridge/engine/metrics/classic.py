"""elastix's classic image metrics for one resolution level, with the :class:`ImpactMetric` interface.

``AdvancedMeanSquares``, ``AdvancedNormalizedCorrelation`` and ``AdvancedMattesMutualInformation``
evaluated exactly as elastix does on a given sample set (the sample evaluation they share is
:mod:`.base`'s, the Parzen-window histogram of Mattes MI :mod:`.parzen_histogram`'s; the bending-energy
penalty is :mod:`.bending_energy`); the derivative with respect to the transform parameters comes from
autograd (every step below is differentiable where elastix's analytic derivative is defined, so the two
agree).

Metric values (``N = N_valid``, the valid samples of docs/design.md §E7.1):

* MeanSquares: ``κ/N · Σ (m − f)²``; ``κ = 100/d²`` with ``UseNormalization`` (§E7.2).
* NormalizedCorrelation: ``s_fm / −√(s_ff·s_mm)`` (means subtracted), 0 if the denominator is
  ``≥ −1e-14`` (§E7.3).
* Mattes MI: Parzen-window joint histogram, ``−Σ p·log(p / (p_f·p_m))`` (§E7.4); the gradient uses
  elastix's derivative Parzen kernel (exact for the default cubic kernel, not for orders 1–2).

Sources: docs/design.md §E7; elastix
``Components/Metrics/AdvancedMeanSquares/itkAdvancedMeanSquaresImageToImageMetric.hxx``,
``Components/Metrics/AdvancedNormalizedCorrelation/itkAdvancedNormalizedCorrelationImageToImageMetric.hxx``,
``Components/Metrics/AdvancedMattesMutualInformation/itkParzenWindowMutualInformationImageToImageMetric.hxx``,
``Components/Metrics/AdvancedMattesMutualInformation/elxAdvancedMattesMutualInformationMetric.hxx``,
``Common/CostFunctions/itkAdvancedImageToImageMetric.hxx`` (``InitializeLimiters``).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from elastix_bridge.core.parameters import UInt
from elastix_bridge.engine.metrics.base import SampledImageMetric, image_extrema, zero_like_parameters
from elastix_bridge.engine.metrics.parzen_histogram import (MIN_HISTOGRAM_BINS, HistogramAxis, exponential_limiter,
                                                            hard_limiter, intensity_limits, joint_histogram,
                                                            mattes_mutual_information, moving_parzen_window,
                                                            parzen_window)

if TYPE_CHECKING:  # pragma: no cover
    from elastix_bridge.core.parameters import ParameterMap
    from elastix_bridge.engine.images.level_images import LevelImage, Mask
    from elastix_bridge.engine.transforms.base import Transform

__all__ = [
    "AdvancedMeanSquares",
    "AdvancedNormalizedCorrelation",
    "AdvancedMattesMutualInformation",
]

# Thresholds of elastix's code (not tunables).
_NCC_DENOMINATOR_EPS = 1e-14          # itkAdvancedNormalizedCorrelationImageToImageMetric.hxx
_NORMALIZATION_EPS = 1e-10             # itkAdvancedMeanSquaresImageToImageMetric.hxx


class AdvancedMeanSquares(SampledImageMetric):
    """elastix ``AdvancedMeanSquares``: ``V = κ/N · Σ (M(T(x)) − F(x))²``.

    Options (per level, label-prefixed keys allowed): ``UseNormalization`` (default false): ``κ = 100/d²``
    with ``d = max(F_max − M_min, M_max − F_min)`` (float32 differences, as elastix) over the level fixed
    image inside the fixed mask and the level moving image inside the moving mask; ``κ = 1`` if
    ``d ≤ 1e-10`` or without normalisation.

    Args: see :class:`SampledImageMetric`.

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


class AdvancedNormalizedCorrelation(SampledImageMetric):
    """elastix ``AdvancedNormalizedCorrelation``: ``V = s_fm / −√(s_ff·s_mm)`` ∈ [−1, 1] (−1 = perfect).

    With ``S_*`` sums over the valid samples: ``s_ff = S_ff − S_f²/N``, ``s_mm = S_mm − S_m²/N``,
    ``s_fm = S_fm − S_f·S_m/N``. ``V = 0`` if the denominator is not below ``−1e-14``. The means are always
    subtracted: the ``SubtractMean`` key of older elastix versions is ignored (docs/design.md §E7.3; checked
    against itk-elastix 0.25.4, where ``(SubtractMean "false")`` gives the same value).

    Args: see :class:`SampledImageMetric`.

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
        f, m, n = self.samples(parameters, points)
        sf, sm = f.sum(), m.sum()
        sff = (f * f).sum() - sf * sf / n
        smm = (m * m).sum() - sm * sm / n
        sfm = (f * m).sum() - sf * sm / n
        product = sff * smm
        p = float(product.detach())
        if not (p > 0.0 and -math.sqrt(p) < -_NCC_DENOMINATOR_EPS):  # elastix: denom < -1e-14, else 0
            return zero_like_parameters(parameters) + 0.0 * m.sum(), n
        denominator = -torch.sqrt(product)
        return sfm / denominator, n


class AdvancedMattesMutualInformation(SampledImageMetric):
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
    kernel, elastix differentiates with its own derivative kernel
    (:func:`~.parzen_histogram.elastix_parzen_derivative`): exact for ``MovingKernelBSplineOrder 3`` (the
    default) but not for orders 1 and 2, where elastix's gradient is not the derivative of its value. ``elastix_kernel_derivative=True`` (default) reproduces elastix's
    gradient, False gives the exact derivative. (Order 0 has no derivative: zero.)

    Args: see :class:`SampledImageMetric`; in addition ``elastix_kernel_derivative`` (bool, default True).

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
        def get(key: str, default: Any, typ: type) -> Any:
            return pmap.get(key, level=level, default=default, type=typ, prefix=prefix)

        bins = get("NumberOfHistogramBins", 32, UInt)
        self.fixed_bins = max(get("NumberOfFixedHistogramBins", bins, UInt), MIN_HISTOGRAM_BINS)
        self.moving_bins = max(get("NumberOfMovingHistogramBins", bins, UInt), MIN_HISTOGRAM_BINS)
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
