"""QuasiNewtonLBFGS and its More–Thuente line search (docs/design.md §E9.4; elastix QuasiNewtonLBFGS component).

The line search is checked on analytic 1-D functions (the strong Wolfe conditions at the returned step,
exact interpolation of a quadratic, elastix's edge cases), the two-loop recursion against an explicit
BFGS inverse Hessian, the optimizer on quadratics and Rosenbrock's function, elastix's stop conditions,
scales and iteration-table columns. The comparison with elastix itself is in
``tests/test_engine_fidelity.py``.
"""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from elastix_bridge.engine.optimizers.line_search import MoreThuenteLineSearch, safeguarded_step  # noqa: E402
from elastix_bridge.engine.errors import SamplingError  # noqa: E402
from elastix_bridge.engine.optimizers.quasi_newton import QuasiNewtonLBFGS, two_loop_direction  # noqa: E402
from elastix_bridge.engine.optimizers.settings import QuasiNewtonLBFGSSettings  # noqa: E402
from elastix_bridge.core.parameters import ParameterError, ParameterMap  # noqa: E402


# ---------------------------------------------------------------------------------------------------------------
# line search on 1-D functions

class _Line:
    """φ and φ' of a 1-D function; counts evaluations."""

    def __init__(self, f, df):
        self.f, self.df, self.steps = f, df, []

    def __call__(self, step):
        self.steps.append(step)
        return self.f(step), self.df(step), step


def _search(line, **kw):
    return MoreThuenteLineSearch(**kw).search(line, line.f(0.0), line.df(0.0), 0.0)


def _strong_wolfe(line, step, mu, eta):
    return (line.f(step) <= line.f(0.0) + mu * step * line.df(0.0)
            and abs(line.df(step)) <= eta * abs(line.df(0.0)))


# Moré & Thuente (1994), functions 1-3 of their test set, with their tolerances.
_MT_FUNCTIONS = {
    "-a/(a^2+2)": (lambda a: -a / (a * a + 2.0), lambda a: (a * a - 2.0) / (a * a + 2.0) ** 2, 1e-3, 0.1),
    "(a+0.004)^5-2(a+0.004)^4": (lambda a: (a + 0.004) ** 5 - 2 * (a + 0.004) ** 4,
                                 lambda a: 5 * (a + 0.004) ** 4 - 8 * (a + 0.004) ** 3, 0.1, 0.1),
    "phi0+sin(39pi a/2)": (lambda a: _phi3(a), lambda a: _dphi3(a), 0.1, 0.1),
}


def _phi0(a, beta=0.01):
    if a <= 1 - beta:
        return 1 - a
    if a >= 1 + beta:
        return a - 1
    return (a - 1) ** 2 / (2 * beta) + beta / 2


def _dphi0(a, beta=0.01):
    if a <= 1 - beta:
        return -1.0
    if a >= 1 + beta:
        return 1.0
    return (a - 1) / beta


def _phi3(a, beta=0.01, ell=39):
    return _phi0(a, beta) + 2 * (1 - beta) / (ell * math.pi) * math.sin(ell * math.pi / 2 * a)


def _dphi3(a, beta=0.01, ell=39):
    return _dphi0(a, beta) + (1 - beta) * math.cos(ell * math.pi / 2 * a)


@pytest.mark.parametrize("name", list(_MT_FUNCTIONS))
@pytest.mark.parametrize("initial", [1e-3, 1e-1, 1e1, 1e3])
def test_more_thuente_finds_a_strong_wolfe_point(name, initial):
    f, df, mu, eta = _MT_FUNCTIONS[name]
    line = _Line(f, df)
    result = _search(line, initial_step_length=initial, value_tolerance=mu, gradient_tolerance=eta)
    assert result.stop_condition == "WolfeSatisfied"
    assert result.sufficient_decrease and result.curvature
    assert _strong_wolfe(line, result.step, mu, eta)
    assert result.step == line.steps[-1] and result.iteration == len(line.steps) - 1
    assert len(line.steps) <= 20


def test_more_thuente_minimises_a_quadratic_exactly_by_interpolation():
    line = _Line(lambda a: (a - 3.0) ** 2, lambda a: 2 * (a - 3.0))
    result = _search(line, gradient_tolerance=0.1)
    # first trial α = 1 does not satisfy the curvature condition; the safeguarded (cubic/secant)
    # interpolation of a quadratic lands on its minimum
    assert line.steps == [1.0, pytest.approx(3.0, abs=1e-12)]
    assert result.stop_condition == "WolfeSatisfied" and result.directional_derivative == pytest.approx(0, abs=1e-10)


def test_more_thuente_accepts_the_first_step_when_it_is_the_minimum():
    line = _Line(lambda a: (a - 1.0) ** 2, lambda a: 2 * (a - 1.0))
    result = _search(line)
    assert line.steps == [1.0] and result.iteration == 0 and result.stop_condition == "WolfeSatisfied"


def test_more_thuente_brackets_after_an_overshoot():
    line = _Line(lambda a: (a - 0.01) ** 2, lambda a: 2 * (a - 0.01))
    result = _search(line, gradient_tolerance=0.1)
    assert line.steps[0] == 1.0 and line.steps[1] < 0.66  # case 1: bracketed, safeguarded step
    assert _strong_wolfe(line, result.step, 1e-4, 0.1)


def test_more_thuente_ascent_direction_evaluates_nothing():
    line = _Line(lambda a: a, lambda a: 1.0)
    result = _search(line)
    assert line.steps == [] and result.step == 0.0 and result.stop_condition == "AscentSearchDir"
    assert not result.sufficient_decrease and not result.curvature


def test_more_thuente_single_iteration_evaluates_the_best_step_so_far():
    # elastix's PrepareForUnusualTermination: with one trial allowed, that trial is stx = 0
    line = _Line(lambda a: (a - 3.0) ** 2, lambda a: 2 * (a - 3.0))
    result = _search(line, maximum_number_of_iterations=1)
    assert line.steps == [0.0] and result.stop_condition == "MaxNrIterations" and not result.curvature


def test_more_thuente_budget_exhausted_ends_on_the_best_step():
    line = _Line(lambda a: -a, lambda a: -1.0)  # unbounded below: the search extrapolates
    result = _search(line, maximum_number_of_iterations=4)
    assert result.stop_condition == "MaxNrIterations" and len(line.steps) == 4
    assert line.steps[:3] == [1.0, 5.0, 21.0]  # stmax = α + 4(α − stx): 1 → 5 → 21
    assert line.steps[3] == 21.0  # the last trial is the best step so far, stx


def test_more_thuente_reports_events_like_elastix():
    line = _Line(lambda a: (a - 3.0) ** 2, lambda a: 2 * (a - 3.0))
    events = []
    MoreThuenteLineSearch(gradient_tolerance=0.1).search(
        line, 9.0, -6.0, "p0", on_event=lambda s: events.append((s.start, s.iteration, s.step, s.payload)))
    assert events[0] == (True, 0, 0.0, "p0")
    assert [e[1] for e in events[1:]] == [0, 1] and not any(e[0] for e in events[1:])


def test_line_search_settings_are_checked():
    with pytest.raises(ValueError, match="LineSearchGradientTolerance"):
        MoreThuenteLineSearch(value_tolerance=0.5, gradient_tolerance=0.1).search(lambda a: (0, 0, 0), 0.0, -1.0)


def test_safeguarded_step_cases():
    # case 1: higher value → bracketed, new step inside (stx, stp)
    info, stx, fx, dx, sty, fy, dy, stp, brackt = safeguarded_step(0.0, 1.0, -1.0, 0.0, 1.0, -1.0, 2.0, 5.0, 3.0,
                                                                   False, 0.0, 10.0)
    assert info == 1 and brackt and (sty, fy, dy) == (2.0, 5.0, 3.0) and stx == 0.0 and 0.0 < stp < 2.0
    # case 2: lower value, opposite derivative → bracketed, stx moves to stp
    info, stx, *_, stp, brackt = safeguarded_step(0.0, 1.0, -1.0, 0.0, 1.0, -1.0, 2.0, 0.5, 1.0, False, 0.0, 10.0)
    assert info == 2 and brackt and stx == 2.0 and 0.0 < stp < 2.0
    # case 4 unbracketed: same sign, magnitude not decreasing → stpmax
    info, stx, *_, stp, brackt = safeguarded_step(0.0, 1.0, -1.0, 0.0, 1.0, -1.0, 2.0, 0.5, -2.0, False, 0.0, 10.0)
    assert info == 4 and not brackt and stp == 10.0 and stx == 2.0
    # inconsistent input (derivative at stx points away from stp): nothing changes
    assert safeguarded_step(0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 2.0, 0.5, 1.0, False, 0.0, 10.0)[0] == 0


# ---------------------------------------------------------------------------------------------------------------
# two-loop recursion

def test_two_loop_equals_explicit_bfgs_inverse_hessian():
    rng = np.random.default_rng(3)
    n = 5
    a = rng.normal(size=(n, n))
    hessian = a @ a.T + n * np.eye(n)  # SPD, so every pair has s·t > 0
    pairs = []
    for _ in range(3):
        s = rng.normal(size=n)
        t = hessian @ s
        pairs.append((torch.from_numpy(s), torch.from_numpy(t), 1.0 / float(s @ t)))
    g = rng.normal(size=n)
    h0 = float(pairs[-1][0] @ pairs[-1][1]) / float(pairs[-1][1] @ pairs[-1][1])
    h = h0 * np.eye(n)
    for s, t, rho in pairs:  # H ← (I − ρ s tᵀ) H (I − ρ t sᵀ) + ρ s sᵀ, oldest pair first
        s, t = s.numpy(), t.numpy()
        v = np.eye(n) - rho * np.outer(t, s)
        h = v.T @ h @ v + rho * np.outer(s, s)
    d = two_loop_direction(torch.from_numpy(g), pairs, h0)
    np.testing.assert_allclose(d.numpy(), -h @ g, rtol=1e-12, atol=1e-12)
    assert float(d @ torch.from_numpy(g)) < 0  # descent direction
    np.testing.assert_allclose(two_loop_direction(torch.from_numpy(g), [], 2.0).numpy(), -2 * g)


# ---------------------------------------------------------------------------------------------------------------
# the optimizer

class _Cost:
    """A cost ``f(x)`` with gradient ``grad(x)``; counts evaluations and new-sample requests."""

    uses_random_sampler = False

    def __init__(self, f, grad, fail_at=None):
        self.f, self.grad, self.evaluations, self.new_samples, self.fail_at = f, grad, 0, 0, fail_at

    def select_new_samples(self):
        self.new_samples += 1

    def value_and_derivative(self, x, exact=False):
        self.evaluations += 1
        if self.fail_at is not None and self.evaluations == self.fail_at:
            raise SamplingError("Too many samples map outside moving image buffer: 0 / 10")
        return float(self.f(x)), self.grad(x)


def _quadratic(diagonal, target):
    a = torch.tensor(diagonal, dtype=torch.float64)
    t = torch.tensor(target, dtype=torch.float64)
    return _Cost(lambda x: 0.5 * float((a * (x - t) ** 2).sum()), lambda x: a * (x - t))


def _rosenbrock():
    def f(x):
        return float(((1 - x[:-1]) ** 2 + 100 * (x[1:] - x[:-1] ** 2) ** 2).sum())

    def grad(x):
        g = torch.zeros_like(x)
        g[:-1] += -2 * (1 - x[:-1]) - 400 * x[:-1] * (x[1:] - x[:-1] ** 2)
        g[1:] += 200 * (x[1:] - x[:-1] ** 2)
        return g

    return _Cost(f, grad)


def test_lbfgs_minimises_an_ill_conditioned_quadratic():
    cost = _quadratic([1.0, 10.0, 100.0, 1000.0], [1.0, -2.0, 3.0, 0.5])
    opt = QuasiNewtonLBFGS(QuasiNewtonLBFGSSettings(gradient_magnitude_tolerance=1e-10))
    x = opt.optimize(cost, torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(x, torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=torch.float64), atol=1e-8, rtol=0)
    assert opt.stop_condition == "The gradient magnitude has (nearly) vanished"
    assert len(opt.history) < 30
    assert opt.history[0].search_direction_norm == pytest.approx(1.0)  # first direction −g/‖g‖
    assert all(b.metric <= a.metric for a, b in zip(opt.history, opt.history[1:]))


@pytest.mark.parametrize("dimension", [2, 4])
def test_lbfgs_minimises_rosenbrock(dimension):
    x0 = torch.tensor([-1.2, 1.0] * (dimension // 2), dtype=torch.float64)
    opt = QuasiNewtonLBFGS(QuasiNewtonLBFGSSettings(maximum_number_of_iterations=200,
                                                    gradient_magnitude_tolerance=1e-9))
    x = opt.optimize(_rosenbrock(), x0)
    torch.testing.assert_close(x, torch.ones(dimension, dtype=torch.float64), atol=1e-5, rtol=0)
    assert opt.stop_condition in ("The gradient magnitude has (nearly) vanished", "Wolfe conditions are not satisfied")


def test_memory_zero_is_steepest_descent_with_line_search():
    cost = _quadratic([1.0, 4.0], [1.0, 1.0])
    opt = QuasiNewtonLBFGS(QuasiNewtonLBFGSSettings(lbfgs_update_accuracy=0, maximum_number_of_iterations=3))
    opt.optimize(cost, torch.zeros(2, dtype=torch.float64))
    assert [r.search_direction_norm for r in opt.history] == pytest.approx([1.0, 1.0, 1.0])  # always −g/‖g‖


def test_maximum_number_of_iterations_counts_line_searches_and_one_means_none():
    for maximum, rows in ((1, 0), (2, 2), (3, 3)):
        cost = _rosenbrock()
        opt = QuasiNewtonLBFGS(QuasiNewtonLBFGSSettings(maximum_number_of_iterations=maximum))
        x = opt.optimize(cost, torch.tensor([-1.2, 1.0], dtype=torch.float64))
        assert len(opt.history) == rows, maximum
        assert opt.stop_condition == "Maximum number of iterations has been reached"
        assert [r.iteration for r in opt.history] == list(range(rows))
    torch.testing.assert_close(QuasiNewtonLBFGS(QuasiNewtonLBFGSSettings(maximum_number_of_iterations=1)).optimize(
        _rosenbrock(), torch.tensor([-1.2, 1.0], dtype=torch.float64)), torch.tensor([-1.2, 1.0], dtype=torch.float64))


def test_wolfe_failure_stops_unless_told_otherwise():
    # one line-search trial is allowed: it is made at step 0 (elastix's unusual termination), the
    # curvature condition fails
    cost = _quadratic([1.0, 4.0], [1.0, 1.0])
    settings = QuasiNewtonLBFGSSettings(maximum_number_of_line_search_iterations=1)
    opt = QuasiNewtonLBFGS(settings)
    x = opt.optimize(cost, torch.zeros(2, dtype=torch.float64))
    assert opt.stop_condition == "The last step size was (nearly) zero"  # ZeroStep is tested first
    assert opt.history[0].line_search_stop == "MaxNrIterations" and float(x.abs().sum()) == 0.0
    # two trials: the second is the best so far; Wolfe1 holds, Wolfe2 (η = 0.01) does not
    settings = QuasiNewtonLBFGSSettings(maximum_number_of_line_search_iterations=2, line_search_gradient_tolerance=0.01)
    opt = QuasiNewtonLBFGS(settings)
    opt.optimize(_quadratic([1.0, 4.0], [3.0, 0.2]), torch.zeros(2, dtype=torch.float64))
    assert opt.stop_condition == "Wolfe conditions are not satisfied" and len(opt.history) == 1
    assert not opt.history[0].wolfe2
    settings.stop_if_wolfe_not_satisfied = False
    opt = QuasiNewtonLBFGS(settings)
    opt.optimize(_quadratic([1.0, 4.0], [3.0, 0.2]), torch.zeros(2, dtype=torch.float64))
    assert len(opt.history) > 1


def test_metric_error_in_the_line_search_assumes_convergence(caplog):
    cost = _quadratic([1.0, 4.0], [1.0, 1.0])
    cost.fail_at = 2  # the first line-search trial
    opt = QuasiNewtonLBFGS(QuasiNewtonLBFGSSettings())
    with caplog.at_level("ERROR", logger="elastix_bridge"):
        x = opt.optimize(cost, torch.zeros(2, dtype=torch.float64))
    assert opt.stop_condition == "Error in LineSearch" and opt.history == []
    assert float(x.abs().sum()) == 0.0
    assert "convergence is assumed" in caplog.text
    cost = _quadratic([1.0], [1.0])
    cost.fail_at = 1  # the level's first evaluation: the error propagates
    with pytest.raises(SamplingError):
        QuasiNewtonLBFGS(QuasiNewtonLBFGSSettings()).optimize(cost, torch.zeros(1, dtype=torch.float64))


def test_scales_work_in_y_equals_root_s_times_x():
    # f = ½‖x − t‖²; scaled space y = √S x: first direction −ĝ/‖ĝ‖ with ĝ = g/√S, first trial y0 + d
    s = torch.tensor([4.0, 1.0], dtype=torch.float64)
    t = torch.tensor([2.0, 1.0], dtype=torch.float64)
    cost = _quadratic([1.0, 1.0], t.tolist())
    positions = []
    opt = QuasiNewtonLBFGS(QuasiNewtonLBFGSSettings(generate_line_search_iterations=True,
                                                    gradient_magnitude_tolerance=1e-12),
                           on_iteration=lambda r, x: positions.append(x.clone()))
    x0 = torch.tensor([0.5, -1.0], dtype=torch.float64)
    x = opt.optimize(cost, x0, scales=s)
    torch.testing.assert_close(x, t)
    g_hat = (x0 - t) / s.sqrt()
    first_trial = x0 + g_hat.neg() / g_hat.norm() / s.sqrt()
    assert opt.history[0].line_iteration == "start" and opt.history[0].phase == "LineOptimizing"
    torch.testing.assert_close(positions[1], first_trial)
    assert opt.history[0].gradient_norm == pytest.approx(float(g_hat.norm()))
    assert opt.history[1].metric == pytest.approx(0.5 * float(((first_trial - t) ** 2).sum()))
    mains = [r for r in opt.history if r.phase == "Main"]
    assert [r.search_direction for r in mains] == list(range(len(mains)))
    assert [r.iteration for r in opt.history] == list(range(len(opt.history)))


def test_new_samples_every_iteration_reevaluates_after_each_line_search(caplog):
    cost = _quadratic([1.0, 4.0], [1.0, 1.0])
    opt = QuasiNewtonLBFGS(QuasiNewtonLBFGSSettings(maximum_number_of_iterations=3, new_samples_every_iteration=True))
    with caplog.at_level("WARNING", logger="elastix_bridge"):
        opt.optimize(cost, torch.zeros(2, dtype=torch.float64))
    assert cost.new_samples == 3 and "NewSamplesEveryIteration" in caplog.text
    trials = sum(r.line_iteration + 1 for r in opt.history)
    assert cost.evaluations == 1 + trials + 3


def test_settings_from_parameter_map():
    s = QuasiNewtonLBFGSSettings.from_parameter_map(ParameterMap.from_dict({}), 0)
    assert s == QuasiNewtonLBFGSSettings()
    assert (s.maximum_number_of_iterations, s.maximum_number_of_line_search_iterations, s.step_length,
            s.line_search_value_tolerance, s.line_search_gradient_tolerance, s.gradient_magnitude_tolerance,
            s.lbfgs_update_accuracy, s.stop_if_wolfe_not_satisfied) == (100, 20, 1.0, 1e-4, 0.9, 1e-6, 5, True)
    pmap = ParameterMap.from_dict({"MaximumNumberOfIterations": ["10", "20"], "StepLength": ["2", "0.5"],
                                   "LBFGSUpdateAccuracy": ["3"], "StopIfWolfeNotSatisfied": ["true", "false"],
                                   "MaximumNumberOfLineSearchIterations": ["0"],
                                   "GenerateLineSearchIterations": ["true"], "NewSamplesEveryIteration": ["true"]})
    s1 = QuasiNewtonLBFGSSettings.from_parameter_map(pmap, 1)
    assert (s1.maximum_number_of_iterations, s1.step_length, s1.lbfgs_update_accuracy) == (20, 0.5, 3)
    assert not s1.stop_if_wolfe_not_satisfied and s1.generate_line_search_iterations
    assert s1.maximum_number_of_line_search_iterations == 1 and s1.new_samples_every_iteration
    assert QuasiNewtonLBFGSSettings.from_parameter_map(pmap, 0).stop_if_wolfe_not_satisfied
    assert QuasiNewtonLBFGSSettings.from_parameter_map(
        ParameterMap.from_dict({"StopIfWolfeNotSatisfied": ["False"]}), 0).stop_if_wolfe_not_satisfied
    with pytest.raises(ValueError, match="LineSearchGradientTolerance"):
        QuasiNewtonLBFGSSettings.from_parameter_map(
            ParameterMap.from_dict({"LineSearchGradientTolerance": ["1e-5"]}), 0)
    with pytest.raises(ParameterError):
        QuasiNewtonLBFGSSettings.from_parameter_map(ParameterMap.from_dict({"MaximumNumberOfIterations": ["-1"]}), 0)


def test_iteration_table_columns(tmp_path):
    from elastix_bridge.engine.optimizers.quasi_newton import LBFGSIterationRecord
    from elastix_bridge.core.iteration_info import IterationTable

    pmap = ParameterMap.from_dict({})
    table = IterationTable(tmp_path, 0, 0, pmap, "lbfgs")
    table.add(LBFGSIterationRecord(0, 1.5, 0.0, 0.25, 2.0, 3.25, search_direction=0, line_iteration=2,
                                   search_direction_norm=1.0, directional_derivative=-0.5, phase="Main", wolfe1=True,
                                   wolfe2=False, line_search_stop="MaxNrIterations"))
    table.close()
    assert (tmp_path / "IterationInfo.0.R0.txt").read_text().splitlines() == [
        "1:ItNr\t1a:SrchDirNr\t1b:LineItNr\t2:Metric\t3:StepLength\t4a:||Gradient||\t4b:||SearchDir||\t"
        "4c:DirGradient\t5:Phase\t6a:Wolfe1\t6b:Wolfe2\t7:LinSrchStopCondition\tTime[ms]",
        "0\t0\t2\t1.500000\t0.250000\t2.000000\t1.000000\t-0.500000\tMain\ttrue\tfalse\tMaxNrIterations\t3.2"]
    # two metrics: per-metric columns in elastix's byte-wise sorted order
    table = IterationTable(tmp_path, 0, 1, pmap, "lbfgs", number_of_metrics=2)
    assert table.header.split("\t")[3:8] == ["2:Metric", "2:Metric0", "2:Metric1", "3:StepLength", "4:||Gradient0||"]
    assert table.header.split("\t") == sorted(table.header.split("\t"))
    table.close()
    assert (tmp_path / "IterationInfo.0.R1.txt").read_text() == ""  # no iteration: empty file, as elastix


# ---------------------------------------------------------------------------------------------------------------
# through the registration stage

def _blob_image(shift):
    itk = pytest.importorskip("itk")
    y, x = np.mgrid[:40, :48].astype(np.float64)
    array = 100 * np.exp(-((x - 22 - shift[0]) ** 2 + (y - 19 - shift[1]) ** 2) / 40)
    return itk.image_from_array(array.astype(np.float32))


def test_run_stage_recovers_a_translation_and_writes_the_lbfgs_table(plugin, tmp_path):
    from elastix_bridge.engine.registration import run_stage

    pmap = ParameterMap.from_dict({"Metric": ["AdvancedMeanSquares"], "Transform": ["TranslationTransform"],
                                   "Optimizer": ["QuasiNewtonLBFGS"], "ImageSampler": ["Full"],
                                   "NumberOfResolutions": ["1"], "MaximumNumberOfIterations": ["50"]})
    stage = run_stage(_blob_image((0, 0)), _blob_image((1.5, -2.0)), pmap, output_directory=tmp_path)
    np.testing.assert_allclose(stage.parameters.numpy(), [1.5, -2.0], atol=0.02)
    lines = (tmp_path / "IterationInfo.0.R0.txt").read_text().splitlines()
    assert lines[0].split("\t")[1:3] == ["1a:SrchDirNr", "1b:LineItNr"]
    assert len(lines) - 1 == len(stage.history[0]) > 0 and lines[1].split("\t")[8] == "Main"


def test_run_stage_refuses_inconsistent_line_search_tolerances_before_computing(plugin):
    from elastix_bridge.engine.registration import run_stage

    pmap = ParameterMap.from_dict({"Metric": ["AdvancedMeanSquares"], "Transform": ["TranslationTransform"],
                                   "Optimizer": ["QuasiNewtonLBFGS"], "ImageSampler": ["Full"],
                                   "NumberOfResolutions": ["2"], "LineSearchValueTolerance": ["1e-4", "0.95"]})
    with pytest.raises(ValueError, match="LineSearchGradientTolerance 0.9.*LineSearchValueTolerance 0.95"):
        run_stage(_blob_image((0, 0)), _blob_image((1.5, -2.0)), pmap)
