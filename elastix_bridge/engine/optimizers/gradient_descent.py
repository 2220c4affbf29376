"""elastix's StandardGradientDescent and RegularStepGradientDescent optimizers for one resolution level.

Both share the interface of :class:`elastix_bridge.engine.optimizers.base.Optimizer`:
``optimize(cost, x0, terms=None, scales=None)`` returns the final position and fills ``history`` with
one :class:`~elastix_bridge.engine.optimizers.base.IterationRecord` per iteration. Their settings are
in :mod:`elastix_bridge.engine.optimizers.settings`.

Sources: docs/design.md §E9.2 (``Components/Optimizers/StandardGradientDescent``), §E9.3
(``Components/Optimizers/RegularStepGradientDescent``, ITK
``itkRegularStepGradientDescentBaseOptimizer.cxx``), §E6.3 (scales).
"""
from __future__ import annotations

import time

import torch

from elastix_bridge.engine.optimizers.base import (CostFunction, IterationRecord, Optimizer, ScaledCost,
                                                   evaluate_with_retries, scale_roots)


class StandardGradientDescent(Optimizer):
    """``y_{k+1} = y_k − a/(A + k + 1)^α · ĝ_k`` in the scaled space ``y = √S·x`` (docs/design.md §E9.2, §E6.3).

    Args:
        settings: the level's :class:`~elastix_bridge.engine.optimizers.settings.StandardGradientDescentSettings`.
        generator: unused (nothing is drawn).
        on_iteration: called as ``on_iteration(record, position)`` after each iteration.
    """

    def optimize(self, cost: CostFunction, x0: torch.Tensor, terms: object = None,
                 scales: torch.Tensor | None = None) -> torch.Tensor:
        """Run the level's iterations from ``x0`` (Tensor[P] float64); returns the final position.

        Args:
            cost: cost function (``value_and_derivative``, ``select_new_samples``).
            x0: initial parameters ``(P,)``.
            terms: unused (no automatic parameter estimation).
            scales: squared transform scales ``S`` ``(P,)`` or None.

        Raises:
            SamplingError: too few valid samples after the allowed sampling attempts.
        """
        s = self.s
        root = scale_roots(scales)
        y = x0.clone() if root is None else x0 * root
        scaled = cost if root is None else ScaledCost(cost, root)
        self.history = []
        for k in range(s.maximum_number_of_iterations):
            tic = time.perf_counter()
            value, g = evaluate_with_retries(scaled, y, s.maximum_number_of_sampling_attempts)
            gamma = s.sp_a / (s.sp_A + k + 1.0) ** s.sp_alpha
            y = y - gamma * g
            record = IterationRecord(k, float(value), float(k), gamma, float(g.norm()),
                                     1000.0 * (time.perf_counter() - tic))
            self.history.append(record)
            if self.on_iteration is not None:
                self.on_iteration(record, y if root is None else y / root)
            if s.new_samples_every_iteration:
                cost.select_new_samples()
        self.stop_condition = "Maximum number of iterations has been reached"
        return y if root is None else y / root


class RegularStepGradientDescent(Optimizer):
    """ITK's regular-step gradient descent (docs/design.md §E9.3).

    With ``g̃ = g / S`` (scales divide once, they are not squared here): stop when ``‖g̃‖`` is below
    ``MinimumGradientMagnitude``; halve the step (× ``RelaxationFactor``) when ``g̃`` turns against the
    previous one; stop when the step falls below ``MinimumStepLength``; else ``x ← x − step·g̃/‖g̃‖``.

    Args:
        settings: the level's :class:`~elastix_bridge.engine.optimizers.settings.RegularStepGradientDescentSettings`.
        generator: unused (nothing is drawn).
        on_iteration: called as ``on_iteration(record, position)`` after each iteration.
    """

    def optimize(self, cost: CostFunction, x0: torch.Tensor, terms: object = None,
                 scales: torch.Tensor | None = None) -> torch.Tensor:
        """Run the level's iterations from ``x0`` (Tensor[P] float64); returns the final position.

        Args:
            cost: cost function.
            x0: initial parameters ``(P,)``.
            terms: unused.
            scales: transform scales ``S`` ``(P,)`` or None (all 1).

        Raises:
            SamplingError: too few valid samples after the allowed sampling attempts.
        """
        s = self.s
        x = x0.clone()
        step = s.maximum_step_length
        previous = None
        self.history = []
        self.stop_condition = "Maximum number of iterations has been reached"
        for k in range(s.maximum_number_of_iterations):
            tic = time.perf_counter()
            value, g = evaluate_with_retries(cost, x, s.maximum_number_of_sampling_attempts)
            gt = g if scales is None else g / scales.to(g.dtype)
            magnitude = float(gt.norm())
            if magnitude < s.minimum_gradient_magnitude:
                self.stop_condition = "Gradient magnitude tolerance met"
                break
            if previous is not None and float((gt * previous).sum()) < 0:
                step *= s.relaxation_factor
            if step < s.minimum_step_length:
                self.stop_condition = "Step too small"
                break
            x = x - (step / magnitude) * gt
            previous = gt
            record = IterationRecord(k, float(value), 0.0, step, magnitude, 1000.0 * (time.perf_counter() - tic))
            self.history.append(record)
            if self.on_iteration is not None:
                self.on_iteration(record, x)
            if s.new_samples_every_iteration:
                cost.select_new_samples()
        return x
