"""Errors that cross the engine's families: metrics raise them, optimizers handle them.

Kept apart so that a metric need not import an optimizer to raise, nor an optimizer a metric.
"""
from __future__ import annotations

__all__ = ["NonFiniteMetricError", "SamplingError"]


class SamplingError(RuntimeError):
    """Too few valid samples in one metric evaluation (elastix: "Too many samples map outside
    moving image buffer"). The optimizer may retry with new samples
    (``MaximumNumberOfSamplingAttempts``).

    Source: elastix ``Common/CostFunctions/itkAdvancedImageToImageMetric.hxx``
    ``CheckNumberOfSamples``; docs/design.md §E7.1, §I8.
    """


class NonFiniteMetricError(ArithmeticError):
    """A metric value or derivative is NaN or Inf. The optimizers would go on with it and write a NaN or
    unmoved transform as a result; the stage stops instead
    (:func:`elastix_bridge.engine.registration.optimize_level` adds the stage, level, iteration and cause).
    """
