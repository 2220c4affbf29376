"""ASGD: Jacobian terms against dense formulas, parameter estimation and convergence."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from elastix_bridge.engine.optimizers import asgd  # noqa: E402
from elastix_bridge.engine.errors import SamplingError  # noqa: E402
from elastix_bridge.engine.optimizers.asgd import AdaptiveStochasticGradientDescent, jacobian_terms  # noqa: E402
from elastix_bridge.engine.optimizers.settings import ASGDSettings  # noqa: E402
from elastix_bridge.engine.transforms.bspline import BSplineTransform, grid_for_level  # noqa: E402
from helpers.geometry import GEO2, GEO3  # noqa: E402


def _dense_terms(values, indices, p):
    n, d, nnz = values.shape
    j = np.zeros((n, d, p))
    for s in range(n):
        j[s][:, indices[s]] = values[s]
    c = np.einsum("ndp,ndq->pq", j, j) / n
    jj = np.einsum("ndp,nep->nde", j, j)
    max_jj = max(np.sum(j[s] ** 2) + 2 * math.sqrt(2) * np.linalg.norm(jj[s]) for s in range(n))
    jcj = np.einsum("ndp,pq,neq->nde", j, c, j)
    max_jcj = max(np.trace(jcj[s]) + 2 * math.sqrt(2) * np.linalg.norm(jcj[s]) for s in range(n))
    return np.trace(c), np.sum(c ** 2), max_jj, max_jcj


@pytest.mark.parametrize("dim,nnz,p", [(2, 8, 30), (3, 12, 50)])
def test_jacobian_terms_match_dense_formulas(dim, nnz, p):
    rng = np.random.default_rng(0)
    n = 40
    values = rng.normal(size=(n, dim, nnz))
    indices = np.stack([rng.choice(p, nnz, replace=False) for _ in range(n)])
    terms = jacobian_terms(values, indices, p)
    expected = _dense_terms(values, indices, p)
    np.testing.assert_allclose([terms.tr_c, terms.tr_cc, terms.max_jj, terms.max_jcj], expected, rtol=1e-10)


@pytest.mark.parametrize("dim", [2, 3])
def test_jacobian_terms_of_block_diagonal_jacobians(dim):
    """B-spline layout (component d non-zero in block d only; a point outside with zeros): the zeros
    left out of the sparse products change nothing."""
    rng = np.random.default_rng(dim)
    n, m, nodes = 30, 4 ** dim, 90
    w = rng.uniform(size=(n, m))
    values = np.zeros((n, dim, dim * m))
    for d in range(dim):
        values[:, d, d * m:(d + 1) * m] = w
    node = np.stack([rng.choice(nodes, m, replace=False) for _ in range(n)])
    indices = np.concatenate([node + d * nodes for d in range(dim)], axis=1)
    values[0] = 0.0
    indices[0] = np.arange(dim * m)
    terms = jacobian_terms(values, indices, dim * nodes)
    expected = _dense_terms(values, indices, dim * nodes)
    np.testing.assert_allclose([terms.tr_c, terms.tr_cc, terms.max_jj, terms.max_jcj], expected, rtol=1e-12)


def test_translation_terms_are_elastix_values():
    # Translation: J = I at every point -> C = I, TrC = D, TrCC = D, and N = ceil(32 D / D²).
    n, d = 10, 2
    values = np.broadcast_to(np.eye(d), (n, d, d)).copy()
    indices = np.broadcast_to(np.arange(d), (n, d)).copy()
    t = jacobian_terms(values, indices, d)
    assert t.tr_c == pytest.approx(2) and t.tr_cc == pytest.approx(2)
    assert t.max_jj == pytest.approx(2 + 2 * math.sqrt(2) * math.sqrt(2))
    assert math.ceil(32 * t.tr_cc / t.tr_c ** 2) == 16  # docs/design.md §E9.1 [verified: translation -> 16]


class _Quadratic:
    """f(x) = ½‖x − x*‖² with optional gradient noise; counts sampling-error retries."""

    uses_random_sampler = True

    def __init__(self, target, noise=0.0, fail_first=0, seed=0):
        self.target = target
        self.noise = noise
        self.fail = fail_first
        self.gen = torch.Generator().manual_seed(seed)
        self.new_samples = 0

    def select_new_samples(self):
        self.new_samples += 1

    def value_and_derivative(self, x, exact=False):
        if self.fail and not exact:
            self.fail -= 1
            raise SamplingError("Too many samples map outside moving image buffer: 0 / 10")
        g = x - self.target
        if not exact and self.noise:
            g = g + self.noise * torch.randn(x.shape, generator=self.gen, dtype=torch.float64)
        return 0.5 * float((x - self.target).square().sum()), g


def _terms_identity(p):
    return jacobian_terms(np.broadcast_to(np.eye(p), (5, p, p)).copy(), np.broadcast_to(np.arange(p), (5, p)).copy(), p)


def test_asgd_converges_with_automatic_estimation():
    target = torch.tensor([3.0, -2.0, 1.0], dtype=torch.float64)
    s = ASGDSettings(maximum_number_of_iterations=200, new_samples_every_iteration=True, maximum_step_length=1.0)
    opt = AdaptiveStochasticGradientDescent(s, torch.Generator().manual_seed(1))
    x = opt.optimize(_Quadratic(target, noise=0.05), torch.zeros(3, dtype=torch.float64), _terms_identity(3))
    assert torch.allclose(x, target, atol=0.1)
    assert opt.alpha == 1.0 and opt.a > 0 and -0.99 <= opt.f_min <= -0.01
    assert len(opt.history) == 200 and opt.history[0].time == 0.0
    # The time parameter never goes negative and the step size is a / (A + t + 1).
    for r in opt.history:
        assert r.time >= 0 and r.step_size == pytest.approx(opt.a / (s.sp_A + r.time + 1))


def test_asgd_without_estimation_uses_given_gains():
    s = ASGDSettings(maximum_number_of_iterations=3, automatic_parameter_estimation=False, sp_a=2.0,
                     sp_alpha=0.602, use_adaptive_step_sizes=False)
    opt = AdaptiveStochasticGradientDescent(s, torch.Generator())
    opt.optimize(_Quadratic(torch.ones(2, dtype=torch.float64)), torch.zeros(2, dtype=torch.float64))
    t_step = (s.sigmoid_max + s.sigmoid_min) / 2
    assert [r.step_size for r in opt.history] == pytest.approx(
        [2.0 / (20 + 1 + k * t_step) ** 0.602 for k in range(3)])


def test_sampling_errors_retry_then_fail():
    s = ASGDSettings(maximum_number_of_iterations=2, automatic_parameter_estimation=False,
                     maximum_number_of_sampling_attempts=2)
    cost = _Quadratic(torch.ones(2, dtype=torch.float64), fail_first=2)
    AdaptiveStochasticGradientDescent(s, torch.Generator()).optimize(cost, torch.zeros(2, dtype=torch.float64))
    assert cost.new_samples == 2
    with pytest.raises(SamplingError, match="Too many samples"):
        AdaptiveStochasticGradientDescent(s, torch.Generator()).optimize(
            _Quadratic(torch.ones(2, dtype=torch.float64), fail_first=3), torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("noise_compensation", [False, True])
def test_displacement_distribution_estimation(noise_compensation):
    """a = δ(A+1)/(mean + 2 std of ‖J_j g₀‖) [× gg/(gg+ee)], α = 1, sigmoid unchanged (docs/design.md §E9.1)."""
    rng = np.random.default_rng(2)
    p, n = 6, 30
    values = rng.normal(size=(n, 2, 3))
    indices = np.stack([rng.choice(p, 3, replace=False) for _ in range(n)])
    terms = jacobian_terms(values, indices, p)
    target = torch.tensor(rng.normal(size=p), dtype=torch.float64)
    s = ASGDSettings(maximum_number_of_iterations=1, estimation_method="DisplacementDistribution",
                     new_samples_every_iteration=True, noise_compensation=noise_compensation,
                     maximum_step_length=0.7)
    opt = AdaptiveStochasticGradientDescent(s, torch.Generator().manual_seed(0))
    cost = _Quadratic(target, noise=0.3 if noise_compensation else 0.0)
    opt.estimate_parameters(cost, torch.zeros(p, dtype=torch.float64), terms)
    g0 = -target.numpy()  # the gradient at 0 (noisy with noise compensation: only bounds are checked)
    d = np.array([np.linalg.norm(values[j] @ g0[indices[j]]) for j in range(n)])
    expected = 0.7 * (s.sp_A + 1) / (d.mean() + 2 * d.std())
    if noise_compensation:
        assert 0 < opt.a < 3 * expected  # noise reduces a by gg / (gg + ee)
    else:
        assert opt.a == pytest.approx(expected, rel=1e-12)
    assert opt.alpha == 1.0
    assert (opt.f_max, opt.f_min, opt.omega) == (s.sigmoid_max, s.sigmoid_min, s.sigmoid_scale)


def test_scaled_optimisation_follows_elastix_scaled_space():
    """With squared scales S, a step moves x by −γ·g/S and the log shows ‖g/√S‖ (docs/design.md §E6.3)."""
    target = torch.tensor([2.0, -1.0], dtype=torch.float64)
    scales = torch.tensor([100.0, 1.0], dtype=torch.float64)
    s = ASGDSettings(maximum_number_of_iterations=2, automatic_parameter_estimation=False, sp_a=1.0,
                     sp_alpha=1.0, use_adaptive_step_sizes=False)
    seen = []
    opt = AdaptiveStochasticGradientDescent(s, torch.Generator(), on_iteration=lambda r, x: seen.append(x.clone()))
    x0 = torch.zeros(2, dtype=torch.float64)
    x = opt.optimize(_Quadratic(target), x0, scales=scales)
    g0 = x0 - target
    gamma0 = opt.history[0].step_size
    torch.testing.assert_close(seen[0], x0 - gamma0 * g0 / scales)  # callbacks see unscaled positions
    assert opt.history[0].gradient_norm == pytest.approx(float((g0 / scales.sqrt()).norm()))
    g1 = seen[0] - target
    torch.testing.assert_close(x, seen[0] - opt.history[1].step_size * g1 / scales)
    # all-ones scales are ignored, as in elastix
    plain = AdaptiveStochasticGradientDescent(s, torch.Generator()).optimize(_Quadratic(target), x0)
    ones = AdaptiveStochasticGradientDescent(s, torch.Generator()).optimize(_Quadratic(target), x0,
                                                                           scales=torch.ones(2))
    torch.testing.assert_close(plain, ones)


def test_jacobian_terms_with_scales_divide_columns():
    rng = np.random.default_rng(3)
    values = rng.normal(size=(20, 2, 3))
    indices = np.stack([rng.choice(5, 3, replace=False) for _ in range(20)])
    scales = np.array([4.0, 1.0, 9.0, 16.0, 1.0])
    scaled = jacobian_terms(values, indices, 5, scales=torch.tensor(scales))
    manual = jacobian_terms(values / np.sqrt(scales)[indices][:, None, :], indices, 5)
    np.testing.assert_allclose([scaled.tr_c, scaled.tr_cc, scaled.max_jj, scaled.max_jcj],
                               [manual.tr_c, manual.tr_cc, manual.max_jj, manual.max_jcj], rtol=1e-12)


@pytest.mark.parametrize("dim", [2, 3])
def test_bspline_jacobian_terms_take_the_separable_path_with_the_same_numbers(dim):
    """A B-spline's J_j = w_jᵀ ⊗ I_D (points outside the grid included) is recognised, and the node-sized
    products give what the parameter-sized ones give."""
    geo = GEO2 if dim == 2 else GEO3
    transform = BSplineTransform(grid_for_level(geo, [5.0] * dim, 1))
    pts = torch.cat([torch.as_tensor(geo.voxel_centres()), torch.full((3, dim), 1e4, dtype=torch.float64)])
    values, indices = transform.jacobian(pts)
    assert asgd.component_blocks(values.numpy(), indices.numpy(), transform.number_of_parameters) is not None
    fast = jacobian_terms(values, indices, transform.number_of_parameters)
    # The same J_j with their columns in reverse order: not the B-spline layout, so the parameter-sized products.
    reordered = values.numpy()[..., ::-1], indices.numpy()[:, ::-1]
    assert asgd.component_blocks(*reordered, transform.number_of_parameters) is None
    general = jacobian_terms(*reordered, transform.number_of_parameters)
    np.testing.assert_allclose([fast.tr_c, fast.tr_cc, fast.max_jj, fast.max_jcj],
                               [general.tr_c, general.tr_cc, general.max_jj, general.max_jcj], rtol=1e-12)
