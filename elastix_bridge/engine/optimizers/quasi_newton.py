"""elastix's QuasiNewtonLBFGS optimizer for one resolution level: L-BFGS with a More–Thuente line search.

Per iteration k (elastix's "search direction" k), in the scaled space ``y = √S·x`` (docs/design.md §E6.3):

1. search direction ``d_k = −H_k ĝ_k`` by the L-BFGS two-loop recursion over the last ``m``
   (``LBFGSUpdateAccuracy``) pairs ``s_i = α_i d_i``, ``t_i = ĝ_{i+1} − ĝ_i``, with the initial inverse
   Hessian ``H0 = (s·t)/(t·t)·I`` of the newest pair; with no pair yet (k = 0, or m = 0) ``H0 = I``
   and ``d`` is normalised, ``d = −ĝ/‖ĝ‖``, so the first trial step ``StepLength`` is a distance;
2. a More–Thuente line search along ``d_k`` from ``StepLength`` (:mod:`.line_search`); its last
   trial is the new position, value and gradient;
3. store the pair, write one iteration-table row, test convergence.

Stop conditions (``Stopping condition: …`` in the log), in elastix's order after each line search:
the step was below machine epsilon ("The last step size was (nearly) zero"), ``k + 1`` reached
``MaximumNumberOfIterations`` ("Maximum number of iterations has been reached"),
``‖ĝ‖ / max(1, ‖y‖) ≤ GradientMagnitudeTolerance`` ("The gradient magnitude has (nearly) vanished"),
and, with ``StopIfWolfeNotSatisfied``, a line search that ended without both Wolfe conditions
("Wolfe conditions are not satisfied"). The iteration and gradient tests also run before the first
line search, so ``MaximumNumberOfIterations`` ≤ 1 does no iteration at all (as in elastix). A
non-positive ``H0`` scale stops with "The diagonal matrix is invalid". A metric error (too few valid
samples, :class:`~elastix_bridge.engine.optimizers.asgd.SamplingError`) during a line search is logged and
convergence is assumed at the line search's start ("Error in LineSearch"); one at the level's first
evaluation propagates. ``MaximumNumberOfSamplingAttempts`` does not apply (elastix's QuasiNewtonLBFGS
does not read it).

Sources: elastix ``Components/Optimizers/QuasiNewtonLBFGS/itkQuasiNewtonLBFGSOptimizer.cxx``
(``ResumeOptimization``, ``ComputeDiagonalMatrix``, ``ComputeSearchDirection``, ``LineSearch``,
``StoreCurrentPoint``, ``TestConvergence``), ``…/elxQuasiNewtonLBFGS.hxx`` (parameters, Wolfe stop,
line-search error handling, iteration-table cells, ``GenerateLineSearchIterations``,
``NewSamplesEveryIteration``), ``Common/itkScaledSingleValuedNonLinearOptimizer.cxx`` (scales).
docs/design.md §E9.4, §E13.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

import numpy as np
import torch

from elastix_bridge.engine.errors import SamplingError
from elastix_bridge.engine.optimizers.base import CostFunction, IterationRecord, Optimizer, ScaledCost, scale_roots
from elastix_bridge.engine.optimizers.line_search import LineSearchState
from elastix_bridge.engine.optimizers.settings import QuasiNewtonLBFGSSettings

if TYPE_CHECKING:  # pragma: no cover
    from elastix_bridge.engine.random import ElastixRandom

log = logging.getLogger("elastix_bridge")

_EPS = float(np.finfo(np.float64).eps)

# elastix's stop conditions (elxQuasiNewtonLBFGS.hxx AfterEachResolution).
STOP_TEXT = {
    "MetricError": "Error in metric",
    "LineSearchError": "Error in LineSearch",
    "MaximumNumberOfIterations": "Maximum number of iterations has been reached",
    "InvalidDiagonalMatrix": "The diagonal matrix is invalid",
    "GradientMagnitudeTolerance": "The gradient magnitude has (nearly) vanished",
    "ZeroStep": "The last step size was (nearly) zero",
    "Wolfe": "Wolfe conditions are not satisfied",
    "Unknown": "Unknown",
}


@dataclass
class LBFGSIterationRecord(IterationRecord):
    """One row of elastix's QuasiNewtonLBFGS iteration table.

    Inherited: ``iteration`` (``1:ItNr``, the row counter), ``metric`` (``2:Metric``), ``time``
    (unused, 0), ``step_size`` (``3:StepLength``), ``gradient_norm`` (``4a:||Gradient||``, scaled
    gradient), ``time_ms`` (``Time[ms]``).

    Attributes:
        search_direction: ``1a:SrchDirNr``, the L-BFGS iteration k.
        line_iteration: ``1b:LineItNr``: the line search's iteration counter (trials − 1), or
            ``"start"`` for the row made before a line search's first trial.
        search_direction_norm: ``4b:||SearchDir||``, ‖d_k‖ (scaled space).
        directional_derivative: ``4c:DirGradient``, ``ĝ·d_k`` at the row's step.
        phase: ``5:Phase``, ``"Main"`` or ``"LineOptimizing"``.
        wolfe1, wolfe2: ``6a:Wolfe1`` / ``6b:Wolfe2``, sufficient decrease / curvature condition.
        line_search_stop: ``7:LinSrchStopCondition`` (``"---"`` inside a line search).
    """

    search_direction: int = 0
    line_iteration: Union[int, str] = 0
    search_direction_norm: float = 0.0
    directional_derivative: float = 0.0
    phase: str = "Main"
    wolfe1: bool = False
    wolfe2: bool = False
    line_search_stop: str = "---"


def _dot(a, b) -> float:
    return float((a * b).sum())


def two_loop_direction(gradient: torch.Tensor, pairs: Sequence[tuple[torch.Tensor, torch.Tensor, float]],
                       h0: float = 1.0) -> torch.Tensor:
    """``−H ĝ`` by the L-BFGS two-loop recursion (Nocedal & Wright, Algorithm 7.4).

    Args:
        gradient: ``ĝ`` ``(P,)`` float64 tensor.
        pairs: ``[(s_i, t_i, ρ_i), …]`` oldest first, ``ρ_i = 1/(s_i·t_i)``; each ``s_i``, ``t_i`` ``(P,)``.
        h0: the scalar initial inverse Hessian ``H0 = h0·I``.

    Returns:
        The search direction ``(P,)``, ``−H ĝ`` with ``H`` the BFGS update of ``H0`` by the pairs.

    Source: ``itkQuasiNewtonLBFGSOptimizer.cxx`` ``ComputeSearchDirection`` (same operation order).
    """
    d = -gradient
    alphas = []
    for s, t, rho in reversed(pairs):
        a = rho * _dot(s, d)
        alphas.append(a)
        d = d - a * t
    d = d * h0
    for (s, t, rho), a in zip(pairs, reversed(alphas)):
        beta = rho * _dot(t, d)
        d = d + (a - beta) * s
    return d


class QuasiNewtonLBFGS(Optimizer):
    """elastix's QuasiNewtonLBFGS for one resolution level (module docstring; docs/design.md §E9.4).

    Args:
        settings: the level's :class:`~elastix_bridge.engine.optimizers.settings.QuasiNewtonLBFGSSettings`.
        generator: unused (nothing is drawn).
        on_iteration: called as ``on_iteration(record, position)`` for every iteration-table row
            (:class:`LBFGSIterationRecord`; ``position`` unscaled, ``(P,)``): after each line search
            and, with ``GenerateLineSearchIterations``, before and after every line-search trial.

    Attributes:
        history: the level's rows.
        stop_condition: elastix's stop text.
    """

    def __init__(self, settings: QuasiNewtonLBFGSSettings, generator: Optional[ElastixRandom] = None,
                 on_iteration: Optional[Callable] = None) -> None:
        super().__init__(settings, generator, on_iteration)
        self.stop_condition = ""
        self._rows = 0
        self._tic = 0.0

    def _emit(self, record: LBFGSIterationRecord, position) -> None:
        now = time.perf_counter()
        record.time_ms = 1000.0 * (now - self._tic)
        self._tic = now
        self.history.append(record)
        self._rows += 1
        if self.on_iteration is not None:
            self.on_iteration(record, position)

    def optimize(self, cost: CostFunction, x0: torch.Tensor, terms: object = None,
                 scales: torch.Tensor | None = None) -> torch.Tensor:
        """Run the level from ``x0`` (Tensor[P] float64); returns the final position ``(P,)``.

        Args:
            cost: cost function (``value_and_derivative(x)`` → ``(float, Tensor[P])``,
                ``select_new_samples()``).
            x0: initial parameters ``(P,)``.
            terms: unused (no parameter estimation).
            scales: squared transform scales ``S`` ``(P,)`` or None; when not all 1 the optimizer works
                on ``y = √S·x`` and sees ``ĝ = g/√S`` (docs/design.md §E6.3).

        Raises:
            SamplingError: too few valid samples at the level's first evaluation, or when re-evaluating
                after new samples (``NewSamplesEveryIteration``). Inside a line search it ends the level
                instead, at the line search's start ("Error in LineSearch"), as in elastix. Other
                exceptions of the cost function propagate.
        """
        root = scale_roots(scales)
        scaled = cost if root is None else ScaledCost(cost, root)
        unscale = (lambda y: y) if root is None else (lambda y: y / root)
        y = x0.clone() if root is None else x0 * root
        y = self._optimize(scaled, y, unscale)
        return unscale(y)

    def _optimize(self, cost, y, unscale):
        s = self.s
        line_search = s.line_search()
        memory = int(s.lbfgs_update_accuracy)
        self.history, self._rows, self._tic = [], 0, time.perf_counter()
        if s.new_samples_every_iteration:
            log.warning("NewSamplesEveryIteration with QuasiNewtonLBFGS: new samples are drawn for each search "
                        "direction (not during the line search), as elastix does; elastix's documentation advises "
                        "against it, as it makes little sense for a quasi-Newton method.")

        value, g = cost.value_and_derivative(y)  # errors here propagate ("Error in metric")
        pairs: list = []  # (s, t, rho), oldest first, at most `memory`
        stop = self._converged(0, g, y, None)
        k = 0
        while not stop:
            # Search direction (ComputeDiagonalMatrix + ComputeSearchDirection).
            h0 = 1.0
            if pairs:
                s_prev, t_prev, rho_prev = pairs[-1]
                ys = 1.0 / rho_prev if rho_prev != 0.0 else float("inf")
                tt = _dot(t_prev, t_prev)
                h0 = ys / tt if tt != 0.0 else float("nan")
                if h0 <= 0.0:
                    stop = "InvalidDiagonalMatrix"
                    break
            d = two_loop_direction(g, pairs, h0)
            if not pairs:
                d = d / float(g.norm())
            d_norm = float(d.norm())

            # Line search along d from y.
            def phi(step: float, _y: torch.Tensor = y,
                    _d: torch.Tensor = d) -> tuple[float, float, tuple[torch.Tensor, torch.Tensor]]:
                position = _y + step * _d
                f, grad = cost.value_and_derivative(position)
                return float(f), _dot(grad, _d), (position, grad)

            on_event = None
            if s.generate_line_search_iterations:
                def on_event(st: LineSearchState, _k: int = k, _d_norm: float = d_norm, _y: torch.Tensor = y) -> None:
                    position, grad = st.payload
                    self._emit(LBFGSIterationRecord(
                        self._rows, st.value, 0.0, st.step, float(grad.norm()), 0.0, search_direction=_k,
                        line_iteration="start" if st.start else st.iteration, search_direction_norm=_d_norm,
                        directional_derivative=st.directional_derivative, phase="LineOptimizing",
                        wolfe1=st.sufficient_decrease, wolfe2=st.curvature, line_search_stop="---"),
                        unscale(position))

            g_previous = g
            try:
                result = line_search.search(phi, float(value), _dot(g, d), (y, g), on_event)
            except SamplingError as error:  # elxQuasiNewtonLBFGS::LineSearch: ignore, assume convergence
                log.error("%s\nThe error is ignored and convergence is assumed.", error)
                stop = "LineSearchError"
                break
            step = result.step
            y, g = result.payload
            value = result.value

            if memory > 0:
                sk, tk = step * d, g - g_previous
                ys = _dot(sk, tk)
                rho = 1.0 / ys if ys != 0.0 else float("inf")
                pairs.append((sk, tk, rho))
                if len(pairs) > memory:
                    pairs.pop(0)

            self._emit(LBFGSIterationRecord(
                self._rows, float(value), 0.0, step, float(g.norm()), 0.0, search_direction=k,
                line_iteration=result.iteration, search_direction_norm=d_norm,
                directional_derivative=result.directional_derivative, phase="Main",
                wolfe1=result.sufficient_decrease, wolfe2=result.curvature,
                line_search_stop=result.stop_condition), unscale(y))
            if s.new_samples_every_iteration:
                cost.select_new_samples()
                value, g = cost.value_and_derivative(y)

            stop = self._converged(k, g, y, step)
            if not stop and s.stop_if_wolfe_not_satisfied and not (result.sufficient_decrease and result.curvature):
                stop = "Wolfe"
            k += 1

        self.stop_condition = STOP_TEXT[stop]
        return y

    def _converged(self, k: int, g, y, step: Optional[float]) -> str:
        """elastix's ``TestConvergence``: the stop key, or "" to go on (``step`` None before any line search)."""
        if step is not None and step < _EPS:
            return "ZeroStep"
        if k + 1 >= self.s.maximum_number_of_iterations:
            return "MaximumNumberOfIterations"
        if float(g.norm()) / max(1.0, float(y.norm())) <= self.s.gradient_magnitude_tolerance:
            return "GradientMagnitudeTolerance"
        return ""
