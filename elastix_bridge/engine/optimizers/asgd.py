"""AdaptiveStochasticGradientDescent with automatic parameter estimation, as elastix runs it.

Source: elastix ``Components/Optimizers/AdaptiveStochasticGradientDescent`` and
``Common/itkComputeJacobianTerms.hxx``; Klein et al., "Adaptive stochastic gradient descent
optimisation for image registration", IJCV 81(3), 2009. Spec: docs/design.md §E9.1, §E14.

The optimizer works on the transform parameters ``μ`` (float64, length P), in elastix's scaled space
when the transform has scales (docs/design.md §E6.3). The cost function is anything with the
:class:`~elastix_bridge.engine.optimizers.base.CostFunction` methods; its settings are
:class:`~elastix_bridge.engine.optimizers.settings.ASGDSettings`.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
import scipy.sparse as sp
import torch

from elastix_bridge.engine.optimizers.base import (CostFunction, IterationRecord, Optimizer, ScaledCost,
                                                   evaluate_with_retries, scale_roots)
from elastix_bridge.engine.optimizers.settings import ASGDSettings
from elastix_bridge.engine.random import as_elastix_random
from elastix_bridge.engine.samplers import GridSampler

if TYPE_CHECKING:  # pragma: no cover
    from elastix_bridge.engine.random import ElastixRandom

log = logging.getLogger("elastix_bridge")


@dataclass
class JacobianTerms:
    """Statistics of the transform Jacobian over a grid of fixed points (docs/design.md §E9.1)."""

    tr_c: float
    tr_cc: float
    max_jj: float
    max_jcj: float
    values: Optional[np.ndarray] = None
    indices: Optional[np.ndarray] = None

    def displacement_distribution(self, gradient: torch.Tensor | np.ndarray) -> float:
        """``mean(d) + 2·std(d)`` of ``d_j = ‖J_j g‖`` over the points (population std).

        Source: elastix ``Common/itkComputeDisplacementDistribution.hxx`` (docs/design.md §E9.1).
        """
        g = np.asarray(gradient.detach().cpu() if hasattr(gradient, "detach") else gradient, dtype=np.float64)
        d = np.linalg.norm(np.einsum("ndk,nk->nd", self.values, g[self.indices]), axis=1)
        return float(d.mean() + 2.0 * d.std())


def jacobian_terms(values: np.ndarray | torch.Tensor, indices: np.ndarray | torch.Tensor, number_of_parameters: int,
                   scales: torch.Tensor | None = None) -> JacobianTerms:
    """Compute TrC, TrCC, maxJJ and maxJCJ from sparse transform Jacobians.

    ``C = (1/n) Σ_j J_jᵀ J_j``; ``maxJJ = max_j ‖J_j‖_F² + 2√2 ‖J_j J_jᵀ‖_F``;
    ``maxJCJ = max_j tr(J_j C J_jᵀ) + 2√2 ‖J_j C J_jᵀ‖_F``. C is held as a sparse matrix, so a
    3D B-spline with tens of thousands of parameters needs no dense P×P matrix.

    Args:
        values: ``(n, D, nnz)`` Jacobian values ∂T_d/∂μ at n points (numpy or torch).
        indices: ``(n, nnz)`` parameter index of each column.
        number_of_parameters: P.
        scales: the transform's squared scales ``S`` ``(P,)`` or None; the columns are divided by
            ``√S`` when they are not all 1.

    Source: elastix ``Common/itkComputeJacobianTerms.hxx`` (docs/design.md §E9.1).
    """
    vals = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64)
    idx = np.asarray(indices.detach().cpu() if hasattr(indices, "detach") else indices, dtype=np.int64)
    root = scale_roots(scales)
    if root is not None:  # columns scaled by 1/√S (docs/design.md §E9.1)
        vals = vals / root.numpy()[idx][:, None, :]
    n, dim, nnz = vals.shape
    compact = component_blocks(vals, idx, number_of_parameters)
    if compact is not None:
        return _separable_jacobian_terms(*compact, dim, vals, idx)
    rows = np.repeat(np.arange(n * dim), nnz)
    cols = np.repeat(idx[:, None, :], dim, axis=1).reshape(-1)
    flat = vals.reshape(-1)
    # Only the non-zero entries: layouts that hold zeros (a component's row of J_j is often zero where
    # another's is not) would otherwise carry them through both sparse products.
    keep = flat != 0
    jmat = sp.csr_matrix((flat[keep], (rows[keep], cols[keep])), shape=(n * dim, number_of_parameters))
    c = (jmat.T @ jmat).tocsr() / n
    tr_c = float(c.diagonal().sum())
    tr_cc = float((c.data ** 2).sum())

    jjt = np.einsum("ndk,nek->nde", vals, vals)
    max_jj = float(np.max(np.einsum("ndk,ndk->n", vals, vals) + 2 * math.sqrt(2) * np.linalg.norm(jjt, axis=(1, 2))))

    # (J_j C J_jᵀ)[a, b] = row j·D + a of J C times row j·D + b of J (row-wise products of sparse rows)
    jc = (jmat @ c).tocsr()
    jcj = np.empty((n, dim, dim))
    for a in range(dim):
        jc_a = jc[a::dim]
        for b in range(dim):
            jcj[:, a, b] = np.asarray(jc_a.multiply(jmat[b::dim]).sum(axis=1)).reshape(-1)
    max_jcj = float(np.max(np.trace(jcj, axis1=1, axis2=2) + 2 * math.sqrt(2) * np.linalg.norm(jcj, axis=(1, 2))))
    return JacobianTerms(tr_c, tr_cc, max_jj, max_jcj, vals, idx)


def component_blocks(vals: np.ndarray, idx: np.ndarray, number_of_parameters: int):
    """``(weights (n, m), nodes (n, m), nodes per component)`` when every J_j is ``w_jᵀ ⊗ I_D``, else None.

    That is the B-spline layout: component d's row holds the same weights ``w_j`` on block d only,
    at node indices shifted by ``d × P/D`` (points outside the grid: all zero). :func:`jacobian_terms`
    takes the node-sized products when it finds it, the parameter-sized ones otherwise.

    Args:
        vals: ``(n, D, nnz)`` Jacobian values, as :func:`jacobian_terms` (after scaling).
        idx: ``(n, nnz)`` parameter index of each column.
        number_of_parameters: P.

    Returns:
        ``(w, nodes, per)``: ``w`` ``(n, m)`` the weights of each point (``m = nnz / D``), ``nodes``
        ``(n, m)`` their node indices within a component's block, ``per = P / D``; or None.
    """
    n, dim, nnz = vals.shape
    if dim < 2 or nnz % dim or number_of_parameters % dim:
        return None
    m, per = nnz // dim, number_of_parameters // dim
    blocks = vals.reshape(n, dim, dim, m)  # [point, row d, block e, support]
    w = blocks[:, 0, 0]
    nodes = idx[:, :m]
    inside = w.any(axis=1)  # outside the grid the indices are placeholders (and the weights zero)
    for d in range(dim):
        for e in range(dim):
            if not (np.array_equal(blocks[:, d, e], w) if d == e else not blocks[:, d, e].any()):
                return None
        if not np.array_equal(idx[inside, d * m:(d + 1) * m], nodes[inside] + d * per):
            return None
    return w, nodes, per


def _separable_jacobian_terms(w: np.ndarray, nodes: np.ndarray, per: int, dim: int, vals: np.ndarray,
                              idx: np.ndarray) -> JacobianTerms:
    """:func:`jacobian_terms` for ``J_j = w_jᵀ ⊗ I_D``: ``C = C_w ⊗ I_D`` with ``C_w = (1/n) Σ_j w_j w_jᵀ``.

    Then ``TrC = D·tr C_w``, ``TrCC = D·‖C_w‖_F²``, ``J_j Jᵀ_j = ‖w_j‖² I`` and
    ``J_j C J_jᵀ = (w_jᵀ C_w w_j) I`` (trace ``D·s``, Frobenius norm ``√D·s``): the same numbers from
    node-sized instead of parameter-sized sparse products (D² times less work).
    """
    n, m = w.shape
    wmat = sp.csr_matrix((w.reshape(-1), (np.repeat(np.arange(n), m), nodes.reshape(-1))), shape=(n, per))
    wmat.eliminate_zeros()
    cw = (wmat.T @ wmat).tocsr() / n
    jj = np.einsum("nk,nk->n", w, w)
    s = np.asarray((wmat @ cw).multiply(wmat).sum(axis=1)).reshape(-1)
    root = math.sqrt(dim)
    return JacobianTerms(tr_c=float(dim * cw.diagonal().sum()), tr_cc=float(dim * (cw.data ** 2).sum()),
                         max_jj=float(np.max(dim * jj + 2 * math.sqrt(2) * root * jj)),
                         max_jcj=float(np.max(dim * s + 2 * math.sqrt(2) * root * s)), values=vals, indices=idx)


class AdaptiveStochasticGradientDescent(Optimizer):
    """elastix's ASGD for one resolution level.

    Args:
        settings: the level's :class:`~elastix_bridge.engine.optimizers.settings.ASGDSettings`.
        generator: the stage's :class:`~elastix_bridge.engine.random.ElastixRandom` (or a seed) for the
            perturbations of the parameter estimation (``GetNormalVariate``, docs/design.md §E14).
        on_iteration: called as ``on_iteration(record, position)`` after each iteration
            (logging, progress, metric hooks such as the Static feature-map refresh).

    Source: docs/design.md §E9.1 (iteration, time update, automatic parameter estimation).
    """

    def __init__(self, settings: ASGDSettings, generator: ElastixRandom | int | torch.Generator,
                 on_iteration: Optional[Callable] = None) -> None:
        super().__init__(settings, generator, on_iteration)
        self.random = as_elastix_random(generator)
        self.terms: Optional[JacobianTerms] = None
        self.a = settings.sp_a
        self.alpha = settings.sp_alpha
        self.f_max = settings.sigmoid_max
        self.f_min = settings.sigmoid_min
        self.omega = settings.sigmoid_scale

    def before_level(self, context: Any) -> None:
        """The dense grid of the exact gradients, and the Jacobian terms when estimating (docs/design.md §E9.1).

        Gives ``context.cost`` its exact-gradient sampler (a Grid sampler of about
        ``NumberOfSamplesForExactGradient`` points in the fixed mask) and, with
        ``AutomaticParameterEstimation``, computes :attr:`terms` from the transform's Jacobian at about
        ``NumberOfJacobianMeasurements`` grid points, with the stage's scales.
        """
        context.cost.exact_sampler = GridSampler(context.fixed.geometry, context.fixed_mask,
                                                 number_of_samples=self.s.number_of_samples_for_exact_gradient)
        if self.s.automatic_parameter_estimation:
            points = GridSampler(context.fixed.geometry, context.fixed_mask,
                                 number_of_samples=self.s.number_of_jacobian_measurements).sample()
            values, indices = context.transform.jacobian(points, context.parameters)
            self.terms = jacobian_terms(values, indices, int(context.parameters.numel()), scales=context.stage.scales)

    # -- automatic parameter estimation -------------------------------------------------------
    def estimate_parameters(self, cost: CostFunction, x0: torch.Tensor, terms: JacobianTerms) -> None:
        """Set ``a``, ``alpha`` and the sigmoid from gradient measurements at ``x0`` (docs/design.md §E9.1).

        "Original" / "OriginalButSigmoidToDefault": from the gradient and noise moments over
        perturbed positions. "DisplacementDistribution": from the distribution of the displacements
        ``J_j g`` that the gradient ``g`` at ``x0`` causes at the Jacobian points, corrected for the
        gradient noise when ``NoiseCompensation`` is on; the sigmoid is left unchanged.
        Draw order (docs/design.md §E14): per measurement, P normals, the exact gradient, new samples,
        the stochastic gradient.
        """
        s = self.s
        delta = s.maximum_step_length
        tiny = 1e-14
        sigma_p = delta / math.sqrt(terms.max_jj) if terms.max_jj > tiny else 0.0
        if s.estimation_method == "DisplacementDistribution":
            _, g0 = self._evaluate(cost, x0)
            jacg = terms.displacement_distribution(g0)
            self.a = delta * (s.sp_A + 1.0) / (jacg + tiny)
            n_meas = 0
            if s.noise_compensation:
                n_meas = s.number_of_gradient_measurements if s.number_of_gradient_measurements > 0 else 2
                gg, ee = self._gradient_moments(cost, x0, n_meas, sigma_p)
                self.a *= gg / (gg + ee + tiny)
            self.alpha = 1.0
        else:
            if s.number_of_gradient_measurements > 0:
                n_meas = s.number_of_gradient_measurements
            elif terms.tr_c <= tiny or terms.tr_cc <= tiny:
                n_meas = 2
            else:
                n_meas = max(2, math.ceil(8.0 * terms.tr_cc / terms.tr_c ** 2 / 0.25))
            gg, ee = self._gradient_moments(cost, x0, n_meas, sigma_p)
            sigma1 = math.sqrt(gg / terms.tr_c) if gg > tiny and terms.tr_c > tiny else 0.0
            sigma3 = math.sqrt(ee / terms.tr_c) if ee > tiny and terms.tr_c > tiny else 0.0
            a_max = (s.sp_A * delta / (sigma1 * math.sqrt(terms.max_jcj))
                     if sigma1 > tiny and terms.max_jcj > tiny else 0.0)
            eta = sigma1 ** 2 / (sigma1 ** 2 + sigma3 ** 2 + 1e-14)
            self.a = a_max * eta
            self.alpha = 1.0
            if s.estimation_method == "Original":
                self.omega = max(1e-14, s.sigmoid_scale_factor * sigma3 ** 2 * math.sqrt(terms.tr_cc))
                self.f_max = 1.0
                self.f_min = -0.99 + 0.98 * eta
        log.info("Automatic parameter estimation (%s): %d gradient measurements, perturbation %g.",
                 s.estimation_method, n_meas, sigma_p)
        log.info("( SP_a %f ) ( SP_A %f ) ( SP_alpha %f ) ( SigmoidMax %f ) ( SigmoidMin %f ) ( SigmoidScale %g )",
                 self.a, s.sp_A, self.alpha, self.f_max, self.f_min, self.omega)

    def _gradient_moments(self, cost: CostFunction, x0, n_meas: int, sigma_p: float):
        """Mean ``‖g‖²`` and ``‖g − ĝ‖²`` over ``n_meas`` perturbed positions (exact g, stochastic ĝ)."""
        stochastic = self.s.new_samples_every_iteration and cost.uses_random_sampler
        gg = ee = 0.0
        for _ in range(n_meas):
            z = torch.from_numpy(self.random.normal(x0.numel())).reshape(x0.shape)
            xi = x0 + sigma_p * z.to(x0.device)
            if stochastic:
                _, g_exact = self._evaluate(cost, xi, exact=True)
                cost.select_new_samples()
                _, g_approx = self._evaluate(cost, xi)
                gg += float(g_exact.square().sum())
                ee += float((g_exact - g_approx).square().sum())
            else:
                _, g = self._evaluate(cost, xi)
                gg += float(g.square().sum())
        return gg / n_meas, ee / n_meas

    def _sigmoid(self, u: float) -> float:
        beta = self.omega * math.log(-self.f_max / self.f_min) if self.f_min < 0 else 0.0
        arg = -(u - beta) / self.omega
        # exp overflow means the sigmoid saturates at f_min (C++ semantics).
        denom = math.inf if arg > 700 else 1.0 + math.exp(arg)
        return self.f_min + (self.f_max - self.f_min) / denom

    def _evaluate(self, cost: CostFunction, x, exact: bool = False):
        return evaluate_with_retries(cost, x, self.s.maximum_number_of_sampling_attempts, exact)

    # -- iterations ------------------------------------------------------------------------------
    def optimize(self, cost: CostFunction, x0: torch.Tensor, terms: Optional[JacobianTerms] = None,
                 scales: torch.Tensor | None = None) -> torch.Tensor:
        """Run the level's iterations from ``x0`` (Tensor[P] float64); returns the final position.

        Args:
            cost: the cost function.
            x0: initial parameters ``(P,)``.
            terms: Jacobian terms for the automatic parameter estimation, computed with the same
                ``scales`` (:func:`jacobian_terms`); default: those of :meth:`before_level`.
            scales: the transform's squared scales ``S`` ``(P,)`` or None; when not all 1, the
                optimisation runs on ``y = √S·x`` as in elastix (docs/design.md §E6.3): the logged
                gradient is ``g/√S`` and a step changes ``x`` by ``−γ·g/S``.

        Raises:
            SamplingError: too few valid samples after the allowed sampling attempts.
        """
        terms = self.terms if terms is None else terms
        root = scale_roots(scales)
        if root is not None:
            cost = ScaledCost(cost, root)
            on_iteration = self.on_iteration
            if on_iteration is not None:
                self.on_iteration = lambda record, y: on_iteration(record, y / root)
            try:
                return self._optimize(cost, x0 * root, terms) / root
            finally:
                self.on_iteration = on_iteration
        return self._optimize(cost, x0, terms)

    def _optimize(self, cost: CostFunction, x0, terms):
        s = self.s
        x = x0.clone()
        if s.automatic_parameter_estimation:
            if terms is None:
                raise ValueError("automatic parameter estimation needs the Jacobian terms")
            self.estimate_parameters(cost, x, terms)
        t = s.sigmoid_initial_time
        g_prev = None
        self.history = []
        for k in range(s.maximum_number_of_iterations):
            tic = time.perf_counter()
            value, g = self._evaluate(cost, x)
            gamma = (self.a / (s.sp_A + 1.0) ** self.alpha if s.use_constant_step
                     else self.a / (s.sp_A + t + 1.0) ** self.alpha)
            x = x - gamma * g
            record = IterationRecord(k, float(value), t, gamma, float(g.norm()),
                                     1000.0 * (time.perf_counter() - tic))
            self.history.append(record)
            if self.on_iteration is not None:
                self.on_iteration(record, x)
            if s.new_samples_every_iteration:
                cost.select_new_samples()
            if s.use_adaptive_step_sizes:
                if g_prev is not None:
                    t = max(0.0, t + self._sigmoid(float(-(g_prev * g).sum())))
            else:
                t = t + (self.f_max + self.f_min) / 2.0
            g_prev = g
        self.stop_condition = "Maximum number of iterations has been reached"
        return x
