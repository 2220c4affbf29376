"""StandardGradientDescent and RegularStepGradientDescent (docs/design.md §E9.2, §E9.3)."""
import pytest

torch = pytest.importorskip("torch")

from elastix_bridge.engine.errors import SamplingError  # noqa: E402
from elastix_bridge.engine.optimizers.gradient_descent import (RegularStepGradientDescent,  # noqa: E402
                                                               StandardGradientDescent)
from elastix_bridge.engine.optimizers.settings import (RegularStepGradientDescentSettings,  # noqa: E402
                                                       StandardGradientDescentSettings)
from elastix_bridge.core.parameters import ParameterMap  # noqa: E402


class _Quadratic:
    """f(x) = ½‖x − x*‖²; ``fail_first`` evaluations raise SamplingError."""

    uses_random_sampler = False

    def __init__(self, target, fail_first=0):
        self.target = torch.as_tensor(target, dtype=torch.float64)
        self.fail = fail_first
        self.new_samples = 0

    def select_new_samples(self):
        self.new_samples += 1

    def value_and_derivative(self, x, exact=False):
        if self.fail:
            self.fail -= 1
            raise SamplingError("Too many samples map outside moving image buffer: 0 / 10")
        return 0.5 * float((x - self.target).square().sum()), x - self.target


def test_standard_gradient_descent_gains_and_steps():
    s = StandardGradientDescentSettings(maximum_number_of_iterations=3, sp_a=0.1)
    opt = StandardGradientDescent(s)
    x0 = torch.zeros(2, dtype=torch.float64)
    x = opt.optimize(_Quadratic([1.0, -2.0]), x0)
    assert opt.history[0].step_size == pytest.approx(0.009377, abs=5e-7)  # docs/design.md §E9.2 [verified]
    expected = x0.clone()
    for k, r in enumerate(opt.history):
        gamma = 0.1 / (50 + k + 1) ** 0.602
        assert r.step_size == pytest.approx(gamma)
        expected = expected - gamma * (expected - torch.tensor([1.0, -2.0], dtype=torch.float64))
    torch.testing.assert_close(x, expected)


def test_standard_gradient_descent_with_scales_steps_by_g_over_s():
    s = StandardGradientDescentSettings(maximum_number_of_iterations=1, sp_a=1.0, sp_A=0.0, sp_alpha=1.0)
    x = StandardGradientDescent(s).optimize(_Quadratic([4.0, 4.0]), torch.zeros(2, dtype=torch.float64),
                                            scales=torch.tensor([4.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(x, torch.tensor([4.0 / 4.0, 4.0], dtype=torch.float64))  # γ = 1, Δx = −g/S


def test_regular_step_halves_on_reversal_and_stops_on_gradient():
    s = RegularStepGradientDescentSettings(maximum_number_of_iterations=20, maximum_step_length=1.0,
                                           minimum_step_length=0.1)
    opt = RegularStepGradientDescent(s)
    x = opt.optimize(_Quadratic([2.5]), torch.zeros(1, dtype=torch.float64))
    assert [r.step_size for r in opt.history] == [1.0, 1.0, 1.0, 0.5]  # 0 → 1 → 2 → 3 → 2.5
    assert float(x) == pytest.approx(2.5) and opt.stop_condition == "Gradient magnitude tolerance met"


def test_regular_step_stops_when_the_step_is_too_small_and_divides_by_scales_once():
    s = RegularStepGradientDescentSettings(maximum_number_of_iterations=50, maximum_step_length=1.0,
                                           minimum_step_length=0.3)
    opt = RegularStepGradientDescent(s)
    opt.optimize(_Quadratic([2.3]), torch.zeros(1, dtype=torch.float64))
    assert opt.stop_condition == "Step too small" and min(r.step_size for r in opt.history) >= 0.3
    # direction of g/S, length = step: with S = (1, 4) and g = (−1, −1) the first step is along (1, 1/4)
    opt = RegularStepGradientDescent(RegularStepGradientDescentSettings(maximum_number_of_iterations=1,
                                                                        maximum_step_length=1.0))
    x = opt.optimize(_Quadratic([1.0, 1.0]), torch.zeros(2, dtype=torch.float64),
                     scales=torch.tensor([1.0, 4.0], dtype=torch.float64))
    direction = torch.tensor([1.0, 0.25], dtype=torch.float64)
    torch.testing.assert_close(x, direction / direction.norm())


def test_settings_from_parameter_map_and_sampling_retries():
    pmap = ParameterMap.from_dict({"MaximumStepLength": ["4", "2"], "RelaxationFactor": ["0.7"],
                                   "MaximumNumberOfSamplingAttempts": ["2"]})
    s1 = RegularStepGradientDescentSettings.from_parameter_map(pmap, 1)
    assert (s1.maximum_step_length, s1.minimum_step_length, s1.relaxation_factor) == (2.0, 0.25, 0.7)
    with pytest.raises(ValueError, match="RelaxationFactor"):
        RegularStepGradientDescentSettings.from_parameter_map(ParameterMap.from_dict({"RelaxationFactor": ["1"]}), 0)
    sgd = StandardGradientDescentSettings.from_parameter_map(pmap, 0)
    assert (sgd.sp_a, sgd.sp_A, sgd.sp_alpha, sgd.maximum_number_of_sampling_attempts) == (400.0, 50.0, 0.602, 2)
    cost = _Quadratic([1.0], fail_first=2)
    StandardGradientDescent(StandardGradientDescentSettings(maximum_number_of_iterations=1,
                                                            maximum_number_of_sampling_attempts=2)).optimize(
        cost, torch.zeros(1, dtype=torch.float64))
    assert cost.new_samples == 2
    with pytest.raises(SamplingError):
        StandardGradientDescent(StandardGradientDescentSettings(maximum_number_of_iterations=1)).optimize(
            _Quadratic([1.0], fail_first=1), torch.zeros(1, dtype=torch.float64))
