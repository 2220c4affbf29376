"""More–Thuente line search, as elastix's ``MoreThuenteLineSearchOptimizer`` runs it.

The search looks for a step ``α > 0`` along a descent direction ``d`` from ``x`` that satisfies the
strong Wolfe conditions

* sufficient decrease: ``φ(α) ≤ φ(0) + ValueTolerance·α·φ'(0)``,
* curvature:           ``|φ'(α)| ≤ GradientTolerance·|φ'(0)|``,

with ``φ(α) = f(x + α·d)`` and ``φ'(α) = ∇f(x + α·d)·d``. It keeps an interval of uncertainty
``[stx, sty]`` and moves the trial step with safeguarded cubic / quadratic interpolation
(:func:`safeguarded_step`, MINPACK's ``dcstep``/``mcstep``). Everything here is scalar Python: the
caller evaluates ``φ`` (one cost ``value_and_derivative`` per trial) and does the vector work.

Sources: elastix ``Common/LineSearchOptimizers/itkMoreThuenteLineSearchOptimizer.cxx`` and
``itkLineSearchOptimizer.cxx`` (the netlib ``mcsrch``/``mcstep`` routines in reverse communication);
J. J. Moré and D. J. Thuente, "Line search algorithms with guaranteed sufficient decrease",
ACM TOMS 20(3), 1994. docs/design.md §E9.4.

elastix's details that this module keeps: the trial step is clamped to ``[1e-20, 1e20]``; before an
evaluation that is expected to be the last one (bracket collapsed, iteration budget spent, failed
interpolation) the trial step is reset to the best step so far, ``stx``, and evaluated there; the
convergence tests run in elastix's order, so the last satisfied one names the stop condition; the
bisection safeguard uses the single-precision constant ``0.66f`` as elastix's C++ does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

#: elastix's ``MoreThuenteLineSearchOptimizer`` stop conditions, as the QuasiNewtonLBFGS log names them
#: (``elxQuasiNewtonLBFGS.hxx`` ``GetLineSearchStopCondition``).
WOLFE_SATISFIED = "WolfeSatisfied"
METRIC_ERROR = "MetricError"
MAXIMUM_ITERATIONS = "MaxNrIterations"
STEP_TOO_SMALL = "StepTooSmall"
STEP_TOO_LARGE = "StepTooLarge"
INTERVAL_TOO_SMALL = "IntervalTooSmall"
ROUNDING_ERROR = "RoundingError"
ASCENT_DIRECTION = "AscentSearchDir"

# C++ ``.66f``: a float literal promoted to double in ``stx + (sty - stx) * .66f``.
_066F = float(np.float32(0.66))
# Extrapolation factor of the unbracketed interval (``xtrapf``).
_XTRAPF = 4.0


def _div(a: float, b: float) -> float:
    """IEEE division (``±inf``/``nan`` for a zero divisor), as C++ doubles behave."""
    if b == 0.0:
        if a == 0.0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def _sqrt(a: float) -> float:
    """``std::sqrt``: ``nan`` for a negative argument instead of raising."""
    return math.sqrt(a) if a >= 0.0 else math.nan


def _cubic_step(stp, fp, dp, st, f, d):
    """Minimiser of the cubic through ``(stp, fp, dp)`` and ``(st, f, d)`` (Moré–Thuente dcstep).

    ``(f − fp)·3/(stp − st)`` equals the dcstep's ``(fp − f)·3/(st − stp)`` bit for bit (IEEE
    negation is exact), so one helper serves both of its cubic cases.
    """
    theta = _div((f - fp) * 3.0, stp - st) + d + dp
    s = max(abs(theta), abs(d), abs(dp))
    gamma = s * _sqrt(_div(theta, s) ** 2 - _div(d, s) * _div(dp, s))
    if stp > st:
        gamma = -gamma
    p = gamma - dp + theta
    q = gamma - dp + gamma + d
    return stp + _div(p, q) * (st - stp)


def safeguarded_step(stx: float, fx: float, dx: float, sty: float, fy: float, dy: float,
                     stp: float, fp: float, dp: float, brackt: bool, stpmin: float, stpmax: float
                     ) -> tuple[int, float, float, float, float, float, float, float, bool]:
    """One safeguarded step of the More–Thuente search and the update of the interval of uncertainty.

    ``(stx, fx, dx)`` is the best step so far (lowest value; its derivative points towards ``stp``),
    ``(sty, fy, dy)`` the other end of the interval, ``(stp, fp, dp)`` the step just evaluated. Four
    cases (higher value; lower value with derivatives of opposite sign; lower value, same sign and
    decreasing magnitude; lower value, same sign, not decreasing) choose a cubic, quadratic (secant)
    or mixed interpolation step, or ``stpmin``/``stpmax``; the result is clamped to
    ``[stpmin, stpmax]`` and, when the minimiser is bracketed and the case asks for it, kept within
    66 % of the interval from ``stx``.

    Args:
        stx, fx, dx: best step, its value and directional derivative.
        sty, fy, dy: other interval end point, its value and directional derivative.
        stp, fp, dp: current step, its value and directional derivative.
        brackt: whether a minimiser is already bracketed by ``[stx, sty]``.
        stpmin, stpmax: bounds for the new step.

    Returns:
        ``(info, stx, fx, dx, sty, fy, dy, stp, brackt)``: ``info`` is the case used (1–4), or 0 for
        inconsistent input (``stp`` outside a bracket, ``dx`` not pointing towards ``stp``, or
        ``stpmax < stpmin``), in which case nothing is changed. The other values are the updated
        interval, the new trial step and the bracketing flag.

    Source: elastix ``itkMoreThuenteLineSearchOptimizer.cxx`` ``SafeGuardedStep`` (MINPACK ``mcstep``).
    """
    unchanged = (0, stx, fx, dx, sty, fy, dy, stp, brackt)
    if (brackt and (stp <= min(stx, sty) or stp >= max(stx, sty))) or dx * (stp - stx) >= 0.0 or stpmax < stpmin:
        return unchanged

    sgnd = dp * _div(dx, abs(dx))
    if fp > fx:
        # Case 1: higher value, the minimum is bracketed. Cubic step if it is closer to stx than the
        # quadratic one, else their mean.
        info, bound = 1, True
        theta = _div((fx - fp) * 3.0, stp - stx) + dx + dp
        s = max(abs(theta), abs(dx), abs(dp))
        gamma = s * _sqrt(_div(theta, s) ** 2 - _div(dx, s) * _div(dp, s))
        if stp < stx:
            gamma = -gamma
        p = gamma - dx + theta
        q = gamma - dx + gamma + dp
        stpc = stx + _div(p, q) * (stp - stx)
        stpq = stx + _div(dx, _div(fx - fp, stp - stx) + dx) / 2.0 * (stp - stx)
        stpf = stpc if abs(stpc - stx) < abs(stpq - stx) else stpc + (stpq - stpc) / 2.0
        brackt = True
    elif sgnd < 0.0:
        # Case 2: lower value, derivatives of opposite sign: bracketed. The step farther from stp
        # (cubic or secant) is taken.
        info, bound = 2, False
        stpc = _cubic_step(stp, fp, dp, stx, fx, dx)
        stpq = stp + _div(dp, dp - dx) * (stx - stp)
        stpf = stpc if abs(stpc - stp) > abs(stpq - stp) else stpq
        brackt = True
    elif abs(dp) < abs(dx):
        # Case 3: lower value, same sign, derivative magnitude decreases. The cubic step is used only
        # if the cubic tends to infinity in the step direction or its minimum lies beyond stp; else
        # stpmin/stpmax. Bracketed: the step closer to stp (cubic or secant); else the farther one.
        info, bound = 3, True
        theta = _div((fx - fp) * 3.0, stp - stx) + dx + dp
        s = max(abs(theta), abs(dx), abs(dp))
        gamma = s * _sqrt(max(0.0, _div(theta, s) ** 2 - _div(dx, s) * _div(dp, s)))
        if stp > stx:
            gamma = -gamma
        p = gamma - dp + theta
        q = gamma + (dx - dp) + gamma
        r = _div(p, q)
        if r < 0.0 and gamma != 0.0:
            stpc = stp + r * (stx - stp)
        elif stp > stx:
            stpc = stpmax
        else:
            stpc = stpmin
        stpq = stp + _div(dp, dp - dx) * (stx - stp)
        if brackt:
            stpf = stpc if abs(stp - stpc) < abs(stp - stpq) else stpq
        else:
            stpf = stpc if abs(stp - stpc) > abs(stp - stpq) else stpq
    else:
        # Case 4: lower value, same sign, derivative magnitude does not decrease. Bracketed: the
        # cubic step between stp and sty; else stpmin/stpmax.
        info, bound = 4, False
        if brackt:
            stpf = _cubic_step(stp, fp, dp, sty, fy, dy)
        elif stp > stx:
            stpf = stpmax
        else:
            stpf = stpmin

    # Interval update (independent of the new step).
    if fp > fx:
        sty, fy, dy = stp, fp, dp
    else:
        if sgnd < 0.0:
            sty, fy, dy = stx, fx, dx
        stx, fx, dx = stp, fp, dp

    stp = max(stpmin, min(stpmax, stpf))
    if brackt and bound:
        limit = stx + (sty - stx) * _066F
        stp = min(limit, stp) if sty > stx else max(limit, stp)
    return info, stx, fx, dx, sty, fy, dy, stp, brackt


@dataclass
class LineSearchState:
    """The line search's progress, as elastix's QuasiNewtonLBFGS reads it for its iteration table.

    Attributes:
        iteration: the line search's iteration counter (0-based; not advanced by the final trial, so
            after a stop it is the number of evaluations minus one; elastix's ``1b:LineItNr``).
        step: the current step length ``α`` (0 before the first trial).
        value: ``φ(α)`` of the current step.
        directional_derivative: ``φ'(α)``.
        payload: whatever the caller's ``φ`` returned with the current step (e.g. position, gradient).
        sufficient_decrease: Wolfe condition 1 holds at the current step (elastix ``6a:Wolfe1``).
        curvature: the strong curvature condition holds (elastix ``6b:Wolfe2``).
        stop_condition: one of this module's stop-condition names, "" while searching.
        start: True for the report made before the first trial (elastix's StartEvent).
    """

    iteration: int = 0
    step: float = 0.0
    value: float = 0.0
    directional_derivative: float = 0.0
    payload: Any = None
    sufficient_decrease: bool = False
    curvature: bool = False
    stop_condition: str = ""
    start: bool = False


@dataclass
class MoreThuenteLineSearch:
    """elastix's More–Thuente line search settings and the search itself.

    Attributes:
        maximum_number_of_iterations: trial evaluations at most (elastix clamps to ≥ 1;
            ``MaximumNumberOfLineSearchIterations``, default 20).
        initial_step_length: first trial step (``StepLength``, default 1).
        value_tolerance: sufficient-decrease constant μ (``LineSearchValueTolerance``, default 1e-4).
        gradient_tolerance: curvature constant η (``LineSearchGradientTolerance``, default 0.9).
        interval_tolerance: relative width of the interval of uncertainty at which the search stops
            (machine epsilon).
        minimum_step_length, maximum_step_length: bounds of the trial step (1e-20, 1e20).

    Source: elastix ``itkMoreThuenteLineSearchOptimizer.cxx`` (constructor, ``StartOptimization``,
    ``InitializeLineSearch``, ``UpdateIntervalMinimumAndMaximum``, ``BoundStep``,
    ``PrepareForUnusualTermination``, ``TestConvergence``, ``ComputeNewStepAndInterval``,
    ``ForceSufficientDecreaseInIntervalWidth``).
    """

    maximum_number_of_iterations: int = 20
    initial_step_length: float = 1.0
    value_tolerance: float = 1e-4
    gradient_tolerance: float = 0.9
    interval_tolerance: float = float(np.finfo(np.float64).eps)
    minimum_step_length: float = 1e-20
    maximum_step_length: float = 1e20

    def check(self) -> None:
        """Raise ``ValueError`` for settings elastix's ``CheckSettings`` refuses.

        Raises:
            ValueError: ``minimum_step_length ≤ 0``, ``minimum > maximum`` step length, or
                ``gradient_tolerance < value_tolerance``.
        """
        if self.minimum_step_length <= 0.0:
            raise ValueError("the line search's minimum step length must be higher than zero")
        if self.minimum_step_length > self.maximum_step_length:
            raise ValueError("the line search's minimum step length must be smaller than the maximum step length")
        if self.gradient_tolerance < self.value_tolerance:
            raise ValueError(
                f"(LineSearchGradientTolerance {self.gradient_tolerance}) is smaller than (LineSearchValueTolerance "
                f"{self.value_tolerance}); the More-Thuente line search needs GradientTolerance >= ValueTolerance "
                "(elastix stops at the first line search with \"Error in LineSearch\"). Use e.g. 0.9 and 1e-4.")

    def search(self, phi: Callable[[float], tuple], value0: float, derivative0: float, payload0: Any = None,
               on_event: Optional[Callable[[LineSearchState], None]] = None) -> LineSearchState:
        """Search a step along the line from ``φ(0) = value0``, ``φ'(0) = derivative0``.

        Args:
            phi: ``phi(step) -> (value, directional_derivative, payload)``: one evaluation of the cost at
                ``x + step·d``. Exceptions propagate unchanged (elastix: ``MetricError``, the caller
                decides).
            value0, derivative0: ``φ(0)`` and ``φ'(0)`` (given, so ``φ(0)`` is not evaluated again).
            payload0: the caller's data at step 0 (returned when no trial is made).
            on_event: called with the :class:`LineSearchState` once before the first trial
                (``start=True``) and after every trial (elastix's StartEvent / IterationEvent).

        Returns:
            The final :class:`LineSearchState`: the last evaluated step (which is the accepted one),
            its value, derivative and payload, the Wolfe flags and the stop condition. With an ascent
            direction (``derivative0 ≥ 0``) nothing is evaluated: step 0, ``"AscentSearchDir"``.

        Raises:
            ValueError: invalid settings (:meth:`check`).
        """
        self.check()
        maxit = max(1, int(self.maximum_number_of_iterations))
        ftol, gtol, xtol = self.value_tolerance, self.gradient_tolerance, self.interval_tolerance
        smin, smax = self.minimum_step_length, self.maximum_step_length

        state = LineSearchState(0, 0.0, value0, derivative0, payload0, start=True)
        finit, dginit = value0, derivative0
        dgtest = ftol * dginit
        stx = sty = 0.0
        fx = fy = finit
        dgx = dgy = dginit
        step = self.initial_step_length
        stmin = stmax = 0.0
        width = smax - smin
        width1 = width / 0.5
        brackt, stage1, failed = False, True, False
        if on_event is not None:
            on_event(state)
        state.start = False
        if dginit >= 0.0:
            state.stop_condition = ASCENT_DIRECTION
            return state

        while True:
            # Interval of uncertainty for this trial.
            if brackt:
                stmin, stmax = min(stx, sty), max(stx, sty)
            else:
                stmin, stmax = stx, step + _XTRAPF * (step - stx)
            step = min(max(step, smin), smax)
            # If this is going to be the last trial, evaluate the best step so far instead.
            if ((brackt and (step <= stmin or step >= stmax)) or state.iteration >= maxit - 1 or failed
                    or (brackt and stmax - stmin <= xtol * stmax)):
                step = stx
            value, dg, payload = phi(step)
            state.step, state.value, state.directional_derivative, state.payload = step, value, dg, payload

            # Convergence tests, in elastix's order: the last one that holds names the stop.
            sufficient = value <= finit + step * dgtest
            state.sufficient_decrease = sufficient
            state.curvature = abs(dg) <= gtol * (-dginit)
            stop = ""
            if (brackt and (step <= stmin or step >= stmax)) or failed:
                stop = ROUNDING_ERROR
            if step == smax and sufficient and dg <= dgtest:
                stop = STEP_TOO_LARGE
            if step == smin and (not sufficient or dg >= dgtest):
                stop = STEP_TOO_SMALL
            if state.iteration >= maxit - 1:
                stop = MAXIMUM_ITERATIONS
            if brackt and stmax - stmin <= xtol * stmax:
                stop = INTERVAL_TOO_SMALL
            if sufficient and state.curvature:
                stop = WOLFE_SATISFIED
            state.stop_condition = stop
            if on_event is not None:
                on_event(state)
            if stop:
                return state
            state.iteration += 1

            # New step and interval. In stage 1 (no step yet with a nonpositive modified value and
            # nonnegative modified derivative), a lower but insufficiently decreased value is
            # interpolated on the modified function ψ(α) = φ(α) − φ(0) − μ·α·φ'(0).
            if stage1 and sufficient and dg >= dginit * min(ftol, gtol):
                stage1 = False
            if stage1 and value <= fx and not sufficient:
                fm, fxm, fym = value - step * dgtest, fx - stx * dgtest, fy - sty * dgtest
                dgm, dgxm, dgym = dg - dgtest, dgx - dgtest, dgy - dgtest
                info, stx, fxm, dgxm, sty, fym, dgym, step, brackt = safeguarded_step(
                    stx, fxm, dgxm, sty, fym, dgym, step, fm, dgm, brackt, stmin, stmax)
                fx, fy = fxm + stx * dgtest, fym + sty * dgtest
                dgx, dgy = dgxm + dgtest, dgym + dgtest
            else:
                info, stx, fx, dgx, sty, fy, dgy, step, brackt = safeguarded_step(
                    stx, fx, dgx, sty, fy, dgy, step, value, dg, brackt, stmin, stmax)
            if info == 0:
                failed = True
            # Force a sufficient decrease of the interval width (bisect after two poor reductions).
            if brackt:
                if abs(sty - stx) >= 0.66 * width1:
                    step = stx + 0.5 * (sty - stx)
                width1 = width
                width = abs(sty - stx)
