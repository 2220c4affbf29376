"""What every optimizer of the bridge engine shares: the cost-function protocol, the iteration record,
elastix's retry rule for sampling errors, the scaled parameter space and the optimizer base class.

Sources: elastix ``Common/itkScaledSingleValuedNonLinearOptimizer.cxx`` (scales, docs/design.md §E6.3),
``Components/Optimizers/*`` (``MaximumNumberOfSamplingAttempts``, §E9).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

import numpy as np
import torch

from elastix_bridge.engine.errors import SamplingError

if TYPE_CHECKING:  # pragma: no cover
    from elastix_bridge.engine.random import ElastixRandom

log = logging.getLogger("elastix_bridge")


class CostFunction(Protocol):
    def value_and_derivative(self, parameters: torch.Tensor, exact: bool = False) -> tuple[float, torch.Tensor]:
        """Value (float) and derivative (Tensor[P], float64) at ``parameters`` (Tensor[P]).

        ``exact=True`` evaluates on the dense grid of about ``NumberOfSamplesForExactGradient``
        samples that elastix uses for the parameter estimation."""

    def select_new_samples(self) -> None:
        """Draw a new sample set for the next evaluation (NewSamplesEveryIteration)."""

    @property
    def uses_random_sampler(self) -> bool:
        """Whether the sampler draws random samples (Random, RandomCoordinate, RandomSparseMask)."""


def evaluate_with_retries(cost: CostFunction, x: torch.Tensor, attempts_allowed: int,
                          exact: bool = False) -> tuple[float, torch.Tensor]:
    """Value and derivative with elastix's retry rule for sampling errors.

    A :class:`SamplingError` draws new samples and retries, up to ``MaximumNumberOfSamplingAttempts``
    times (exact evaluations on the dense grid never retry); then it propagates.
    """
    attempts = 0
    while True:
        try:
            return cost.value_and_derivative(x, exact=exact)
        except SamplingError:
            attempts += 1
            if exact or attempts > attempts_allowed:
                raise
            log.warning("Sampling attempt %d: too few valid samples, drawing new samples.", attempts)
            cost.select_new_samples()


def scale_roots(scales: torch.Tensor | np.ndarray | None) -> torch.Tensor | None:
    """``√S`` as a float64 tensor, or None when there are no scales or all are 1 (elastix ignores them)."""
    if scales is None:
        return None
    root = torch.as_tensor(scales, dtype=torch.float64).sqrt()
    return None if bool((root == 1).all()) else root


class ScaledCost:
    """The cost seen in elastix's scaled space ``y = √S·x``: value at ``x = y/√S``, gradient ``g/√S``."""

    def __init__(self, cost: CostFunction, root: torch.Tensor) -> None:
        self.cost = cost
        self.root = root

    @property
    def uses_random_sampler(self) -> bool:
        return self.cost.uses_random_sampler

    def select_new_samples(self) -> None:
        self.cost.select_new_samples()

    def value_and_derivative(self, y: torch.Tensor, exact: bool = False) -> tuple[float, torch.Tensor]:
        value, g = self.cost.value_and_derivative(y / self.root, exact=exact)
        return value, g / self.root


@dataclass
class IterationRecord:
    """One row of elastix's iteration table for ASGD."""

    iteration: int
    metric: float
    time: float
    step_size: float
    gradient_norm: float
    time_ms: float


class Optimizer:
    """The base of the bridge's optimizers: settings, the per-iteration callback, history, stop condition.

    Args:
        settings: the level's settings (the optimizer's own class in :mod:`.settings`).
        generator: the stage's :class:`~elastix_bridge.engine.random.ElastixRandom`, for optimizers that
            draw random numbers (ASGD's parameter estimation); the others ignore it.
        on_iteration: called as ``on_iteration(record, position)`` after each iteration (logging,
            progress, metric hooks such as the Static feature-map refresh).
    """

    def __init__(self, settings: Any, generator: Optional[ElastixRandom] = None,
                 on_iteration: Optional[Callable] = None) -> None:
        self.s = settings
        self.on_iteration = on_iteration
        self.history: list = []
        self.stop_condition = ""

    def before_level(self, context: Any) -> None:
        """Prepare from the level's context before the first iteration, as elastix's
        ``BeforeEachResolution`` does (:class:`~elastix_bridge.engine.registration.LevelContext`: its
        images, masks, transform, start parameters and cost). Nothing by default."""
