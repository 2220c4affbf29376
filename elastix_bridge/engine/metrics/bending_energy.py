"""elastix's ``TransformBendingEnergyPenalty`` and the B-spline spatial Hessian it is made of.

``V = 1/N · Σ_x Σ_k ‖H_k(x)‖_F²`` over the samples whose ``T(x)`` lies in the moving mask (no buffer
check), ``H_k`` the physical spatial Hessian of component k of a B-spline transform (§E7.5); transforms
without a spatial Hessian give 0. The derivative with respect to the coefficients comes from autograd
(the Hessian is linear in them).

Sources: docs/design.md §E6.4, §E7.5; elastix
``Components/Metrics/BendingEnergyPenalty/itkTransformBendingEnergyPenaltyTerm.hxx``,
``Common/Transforms/itkAdvancedBSplineDeformableTransform.hxx`` (``GetSpatialHessian``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from elastix_bridge.engine.metrics.base import ClassicMetric, check_samples, zero_like_parameters
from elastix_bridge.engine.transforms.bspline import BSplineTransform
from elastix_bridge.engine.transforms.initial import ComposedTransform

if TYPE_CHECKING:  # pragma: no cover
    from elastix_bridge.engine.images.level_images import LevelImage, Mask
    from elastix_bridge.engine.transforms.base import Transform

__all__ = ["TransformBendingEnergyPenalty", "bspline_spatial_hessian"]


def _weights_and_derivatives(t, order: int):
    """Per-axis B-spline weights and their first and second derivatives at fractional positions.

    Args:
        t: ``(..., )`` fractional positions in ``[0, 1)`` (``ξ − (order−1)/2 − k0``).
        order: spline order 1..3.

    Returns:
        three ``(..., order + 1)`` tensors ``β(t + (order−1)/2 − m)`` and its first and second
        derivatives with respect to ``ξ``.
    """
    if order == 3:
        t2, t3, s = t * t, t * t * t, 1.0 - t
        w = torch.stack([s * s * s / 6.0, (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0,
                         (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0, t3 / 6.0], dim=-1)
        d1 = torch.stack([-0.5 * s * s, 1.5 * t2 - 2.0 * t, -1.5 * t2 + t + 0.5, 0.5 * t2], dim=-1)
        d2 = torch.stack([s, 3.0 * t - 2.0, 1.0 - 3.0 * t, t], dim=-1)
        return w, d1, d2
    if order == 2:
        s, h = 1.0 - t, t - 0.5
        w = torch.stack([0.5 * s * s, 0.75 - h * h, 0.5 * t * t], dim=-1)
        d1 = torch.stack([-s, -2.0 * h, t], dim=-1)
        d2 = torch.stack([torch.ones_like(t), torch.full_like(t, -2.0), torch.ones_like(t)], dim=-1)
        return w, d1, d2
    if order == 1:
        w = torch.stack([1.0 - t, t], dim=-1)
        d1 = torch.stack([-torch.ones_like(t), torch.ones_like(t)], dim=-1)
        return w, d1, torch.zeros_like(w)
    raise ValueError(f"B-spline transform order must be 1, 2 or 3; got {order}")


def bspline_spatial_hessian(transform: BSplineTransform, parameters: torch.Tensor,
                            points: torch.Tensor) -> torch.Tensor:
    """Physical spatial Hessian of every displacement component of a B-spline transform.

    ``H_k = Pᵀ·(Σ_m c_k[k0+m]·∂²w_m/∂ξ∂ξᵀ)·P`` with ``P = (Dir_g·diag(G))⁻¹``; zero outside the valid
    region (docs/design.md §E6.4).

    Args:
        transform: :class:`~elastix_bridge.engine.transforms.bspline.BSplineTransform`.
        parameters: ``(P,)`` coefficients (mm), may require grad.
        points: ``(N, D)`` physical points (mm).

    Returns:
        ``(N, D, D, D)`` tensor ``H[n, k, a, b] = ∂²T_k/∂x_a∂x_b`` in 1/mm, differentiable (linear) in
        ``parameters``.

    Source: ``Common/Transforms/itkAdvancedBSplineDeformableTransform.hxx`` (``GetSpatialHessian``).
    """
    dtype = torch.promote_types(parameters.dtype, points.dtype)
    pts = points.detach().to(dtype)
    dim, order = transform.dimension, transform.order
    _, node_index, valid = transform.support(pts)  # node indices (N, S^D), x fastest
    grid = transform.grid
    p_mat = torch.as_tensor(np.linalg.inv(grid.direction @ np.diag(grid.spacing)), dtype=dtype)
    xi = (pts - torch.as_tensor(grid.origin, dtype=dtype)) @ p_mat.T
    half = (order - 1) / 2.0
    size = torch.as_tensor(grid.size_xyz, dtype=dtype)
    k0 = torch.minimum(torch.clamp(torch.floor(xi - half), min=0.0), size - (order + 1))
    w, d1, d2 = _weights_and_derivatives(xi - half - k0, order)  # each (N, D, S)
    by_order = (w, d1, d2)
    n = pts.shape[0]
    coef = parameters.to(dtype).view(dim, -1).T  # (nodes, D): node-major rows
    gathered = coef[node_index.reshape(-1)].view(n, -1, dim)  # (N, S^D, D)
    h_xi = []
    for a in range(dim):
        row = []
        for b in range(dim):
            prod = None
            for d in range(dim):  # outer product over the axes, x fastest
                factor = by_order[int(d == a) + int(d == b)][:, d, :]
                prod = factor if prod is None else (factor.unsqueeze(-1) * prod.unsqueeze(1)).reshape(n, -1)
            row.append(torch.einsum("nm,nmk->nk", prod, gathered))
        h_xi.append(torch.stack(row, dim=-1))  # (N, D_k, D_b)
    h_xi = torch.stack(h_xi, dim=-2)  # (N, D_k, D_a, D_b)
    hess = torch.einsum("ia,nkij,jb->nkab", p_mat, h_xi, p_mat)
    return hess * valid.to(dtype)[:, None, None, None]


class TransformBendingEnergyPenalty(ClassicMetric):
    """elastix ``TransformBendingEnergyPenalty``: ``V = 1/N · Σ_x Σ_k ‖H_k(x)‖_F²``.

    A sample counts when ``T(x)`` lies inside the moving mask (no moving-buffer check); ``N`` is their
    number and the ``RequiredRatioOfValidSamples`` check applies to it. Transforms without a spatial
    Hessian (translation) give 0 without looking at the samples (elastix returns early).

    Args: as :class:`~elastix_bridge.engine.metrics.base.SampledImageMetric` (the images are only used for their presence; the moving
        image geometry is irrelevant).

    Source: ``Components/Metrics/BendingEnergyPenalty/itkTransformBendingEnergyPenaltyTerm.hxx``;
    docs/design.md §E7.5.
    """

    name = "TransformBendingEnergyPenalty"

    def __init__(self, fixed: LevelImage, moving: LevelImage, moving_mask: "Mask | None", transform: Transform,
                 *args: Any, **kwargs: Any) -> None:
        if isinstance(transform, ComposedTransform):
            # The Hessian of T_cur∘T_init (docs/design.md §E1.7) is not implemented; without this check the
            # penalty would silently be 0 (the composed transform is not a BSplineTransform).
            raise ValueError("TransformBendingEnergyPenalty on top of an initial transform (a sequence of maps or "
                             "-t0) is not supported by the bridge engine yet; run that map without the penalty or "
                             "with engine='elastix'")
        super().__init__(fixed, moving, moving_mask, transform, *args, **kwargs)

    def value(self, parameters: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Mean bending energy at the samples.

        Args:
            parameters: ``(P,)`` float64 transform parameters (may require grad).
            points: ``(N, D)`` float64 fixed sample points (mm).

        Returns:
            ``(value, n_valid)``: 0-d tensor in 1/mm² and the number of samples inside the moving mask
            (0 for transforms without a spatial Hessian).

        Raises:
            SamplingError: too few samples map inside the moving mask.
        """
        if not isinstance(self.transform, BSplineTransform):  # linear transforms: zero Hessian
            return zero_like_parameters(parameters), 0
        if self.moving_mask is not None:
            moved = self.transform.transform_points(parameters.detach(), points)
            valid = self.moving_mask.contains(moved)
            pts = points[valid]
        else:
            pts = points
        n = int(pts.shape[0])
        check_samples(n, int(points.shape[0]), self.required_ratio)
        hess = bspline_spatial_hessian(self.transform, parameters, pts)
        return (hess * hess).sum() / n, n
