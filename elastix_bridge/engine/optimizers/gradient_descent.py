"""elastix's StandardGradientDescent and RegularStepGradientDescent optimizers for one resolution level.

Both share the interface of :class:`elastix_bridge.engine.optimizers.asgd.AdaptiveStochasticGradientDescent`:
``optimize(cost, x0, terms=None, scales=None)`` returns the final position and fills ``history`` with
one :class:`~elastix_bridge.engine.optimizers.asgd.IterationRecord` per iteration.

Sources: docs/design.md §E9.2 (``Components/Optimizers/StandardGradientDescent``), §E9.3
(``Components/Optimizers/RegularStepGradientDescent``, ITK
``itkRegularStepGradientDescentBaseOptimizer.cxx``), §E6.3 (scales).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from elastix_bridge.core.parameters import UInt
from elastix_bridge.engine.optimizers.asgd import IterationRecord, ScaledCost, evaluate_with_retries, register_optimizer, scale_roots

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from elastix_bridge.core.parameters import ParameterMap
    from elastix_bridge.engine.optimizers.asgd import CostFunction, JacobianTerms

class _GradientDescent:
    """Shared state of the two optimizers: settings, the per-iteration callback, history, stop condition."""

    def __init__(self, settings: StandardGradientDescentSettings | RegularStepGradientDescentSettings,
                 on_iteration: Optional[Callable] = None) -> None:
        self.s = settings
        self.on_iteration = on_iteration
        self.history: list = []
        self.stop_condition = ""


@dataclass
class StandardGradientDescentSettings:
    """Per-level settings with elastix's defaults (docs/design.md §E9.2)."""

    maximum_number_of_iterations: int = 500
    sp_a: float = 400.0
    sp_A: float = 50.0
    sp_alpha: float = 0.602
    maximum_number_of_sampling_attempts: int = 0
    new_samples_every_iteration: bool = False

    @classmethod
    def from_parameter_map(cls, pmap: ParameterMap, level: int) -> "StandardGradientDescentSettings":
        """Read ``level``'s settings (elastix lookup rules, ``Optimizer0`` prefix)."""
        g = lambda name, default, typ=float: pmap.get(name, level=level, default=default, type=typ,
                                                     prefix="Optimizer0")
        return cls(maximum_number_of_iterations=g("MaximumNumberOfIterations", 500, UInt),
                   sp_a=g("SP_a", 400.0), sp_A=g("SP_A", 50.0), sp_alpha=g("SP_alpha", 0.602),
                   maximum_number_of_sampling_attempts=g("MaximumNumberOfSamplingAttempts", 0, int),
                   new_samples_every_iteration=g("NewSamplesEveryIteration", False, bool))


class StandardGradientDescent(_GradientDescent):
    """``y_{k+1} = y_k − a/(A + k + 1)^α · ĝ_k`` in the scaled space ``y = √S·x`` (docs/design.md §E9.2, §E6.3).

    Args:
        settings: the level's :class:`StandardGradientDescentSettings`.
        on_iteration: called as ``on_iteration(record, position)`` after each iteration.
    """

    def optimize(self, cost: CostFunction, x0: torch.Tensor, terms: Optional[JacobianTerms] = None,
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


@dataclass
class RegularStepGradientDescentSettings:
    """Per-level settings with elastix's defaults (docs/design.md §E9.3); step lengths in parameter units."""

    maximum_number_of_iterations: int = 500
    maximum_step_length: float = 16.0
    minimum_step_length: float = 0.5
    minimum_gradient_magnitude: float = 1e-8
    relaxation_factor: float = 0.5
    maximum_number_of_sampling_attempts: int = 0
    new_samples_every_iteration: bool = False

    @classmethod
    def from_parameter_map(cls, pmap: ParameterMap, level: int) -> "RegularStepGradientDescentSettings":
        """Read ``level``'s settings; step-length defaults halve per level (16/2^L, 0.5/2^L).

        Raises:
            ValueError: ``RelaxationFactor`` outside ``[0, 1)``.
        """
        g = lambda name, default, typ=float: pmap.get(name, level=level, default=default, type=typ,
                                                     prefix="Optimizer0")
        s = cls(maximum_number_of_iterations=g("MaximumNumberOfIterations", 500, UInt),
                maximum_step_length=g("MaximumStepLength", 16.0 / 2 ** level),
                minimum_step_length=g("MinimumStepLength", 0.5 / 2 ** level),
                minimum_gradient_magnitude=g("MinimumGradientMagnitude", 1e-8),
                relaxation_factor=g("RelaxationFactor", 0.5),
                maximum_number_of_sampling_attempts=g("MaximumNumberOfSamplingAttempts", 0, int),
                new_samples_every_iteration=g("NewSamplesEveryIteration", False, bool))
        if not 0.0 <= s.relaxation_factor < 1.0:
            raise ValueError(f"(RelaxationFactor {s.relaxation_factor}) must be in [0, 1)")
        return s


class RegularStepGradientDescent(_GradientDescent):
    """ITK's regular-step gradient descent (docs/design.md §E9.3).

    With ``g̃ = g / S`` (scales divide once, they are not squared here): stop when ``‖g̃‖`` is below
    ``MinimumGradientMagnitude``; halve the step (× ``RelaxationFactor``) when ``g̃`` turns against the
    previous one; stop when the step falls below ``MinimumStepLength``; else ``x ← x − step·g̃/‖g̃‖``.

    Args:
        settings: the level's :class:`RegularStepGradientDescentSettings`.
        on_iteration: called as ``on_iteration(record, position)`` after each iteration.
    """

    def optimize(self, cost: CostFunction, x0: torch.Tensor, terms: Optional[JacobianTerms] = None,
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


register_optimizer("StandardGradientDescent", StandardGradientDescent, StandardGradientDescentSettings,
                   source="Components/Optimizers/StandardGradientDescent")
register_optimizer("RegularStepGradientDescent", RegularStepGradientDescent, RegularStepGradientDescentSettings,
                   source="Components/Optimizers/RegularStepGradientDescent")
