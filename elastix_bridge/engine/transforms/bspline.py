"""elastix's B-spline transform as a pure function of a flat parameter tensor.

``BSplineTransform`` (orders 1–3, D = 2 or 3; any D works) maps physical points (mm, ITK ``(x, y[, z])``
order) with differentiable torch operations; elastix's grid schedule (:func:`grid_for_level`), the grid
domain under an initial transform (:func:`grid_domain_under_initial`), grid upsampling between
resolution levels (:func:`upsample`), and the TransformParameters reader (:func:`bspline_from_parameter_map`). The transform base class and ``TranslationTransform`` are in
:mod:`elastix_bridge.engine.transforms.base`.

Sources: docs/design.md §E6 — ``Components/Transforms/AdvancedBSplineTransform/elxAdvancedBSplineTransform.hxx``,
``Common/Transforms/itkGridScheduleComputer.hxx``, ``Common/Transforms/itkAdvancedBSplineDeformableTransform.hxx``,
``Common/Transforms/itkBSplineInterpolationWeightFunctionBase.hxx``,
``Common/Transforms/itkUpsampleBSplineParametersFilter.hxx``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

from elastix_bridge.core.geometry import ImageGeometry, matrix_times_points, vnl_inverse
from elastix_bridge.core.parameters import ParameterMap, format_numbers
from elastix_bridge.engine.transforms.base import Transform, itk_point_arithmetic, read_transform_parameters
from elastix_bridge.runtime.loader import load_plugin

__all__ = [
    "BSplineGrid",
    "BSplineTransform",
    "bspline_from_parameter_map",
    "grid_for_level",
    "grid_domain_under_initial",
    "default_grid_schedule",
    "upsample",
    "bspline_kernel",
]


@dataclass(frozen=True)
class BSplineGrid:
    """B-spline control-point grid, ITK ``(x, y, z)`` order.

    Attributes:
        size_xyz: number of nodes per axis ``N_d``, tuple of D ints.
        spacing: node spacing ``G_d`` in mm, ``(D,)``.
        origin: physical position (mm) of node 0, ``(D,)``.
        direction: direction cosines ``(D, D)`` (column k = grid axis k).
    """

    size_xyz: tuple
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "size_xyz", tuple(int(s) for s in self.size_xyz))
        object.__setattr__(self, "spacing", np.asarray(self.spacing, dtype=np.float64).reshape(-1))
        object.__setattr__(self, "origin", np.asarray(self.origin, dtype=np.float64).reshape(-1))
        d = len(self.size_xyz)
        object.__setattr__(self, "direction", np.asarray(self.direction, dtype=np.float64).reshape(d, d))

    @property
    def dimension(self) -> int:
        return len(self.size_xyz)

    @property
    def number_of_nodes(self) -> int:
        return int(np.prod(self.size_xyz))

    def as_geometry(self) -> ImageGeometry:
        """The grid as an :class:`ImageGeometry` (node k ↔ index k)."""
        return ImageGeometry(self.size_xyz, self.spacing, self.origin, self.direction)

    def same_as(self, other: "BSplineGrid") -> bool:
        """Exact equality of size, spacing, origin and direction."""
        return (
            self.size_xyz == other.size_xyz
            and np.array_equal(self.spacing, other.spacing)
            and np.array_equal(self.origin, other.origin)
            and np.array_equal(self.direction, other.direction)
        )


def default_grid_schedule(number_of_resolutions: int, dimension: int) -> list[list[float]]:
    """elastix's default grid spacing schedule ``φ[r][d] = 2^(R−1−r)`` (docs/design.md §E6.4)."""
    return [[float(2 ** (number_of_resolutions - 1 - r))] * dimension for r in range(number_of_resolutions)]


def grid_for_level(
    fixed_geometry_full_resolution: ImageGeometry,
    final_grid_spacing_xyz: Sequence[float],
    schedule_factors_xyz: Sequence[float] | float,
    order: int = 3,
) -> BSplineGrid:
    """B-spline grid of one resolution level, exactly as elastix's ``GridScheduleComputer``.

    ``G_d = g_d·φ_d``; ``N_d = ⌈n_d·S_d/G_d⌉ + order``; ``o_d = O_d − ((N_d−1)·G_d − (n_d−1)·S_d)/2``;
    ``GridOrigin = O + Dir·(o − O)``; ``GridDirection = Dir``.

    Args:
        fixed_geometry_full_resolution: full-resolution fixed image geometry (size n, spacing S, origin O, Dir),
            possibly already replaced by the initial-transform bounding box (docs/design.md §E6.4).
        final_grid_spacing_xyz: final grid spacing ``g`` in mm, ``(D,)`` (``FinalGridSpacingInVoxels·S`` or
            ``FinalGridSpacingInPhysicalUnits``).
        schedule_factors_xyz: this level's factors ``φ[r]``, ``(D,)`` or a scalar.
        order: spline order 1–3.

    Returns:
        The :class:`BSplineGrid`.

    Raises:
        ValueError: bad order or shapes, non-positive spacing.

    Source: ``Common/Transforms/itkGridScheduleComputer.hxx`` ``ComputeBSplineGrid``; docs/design.md §E6.4.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"BSplineTransformSplineOrder must be 1, 2 or 3, got {order}")
    geo = fixed_geometry_full_resolution
    dim = geo.dimension
    g = np.broadcast_to(np.asarray(final_grid_spacing_xyz, dtype=np.float64), (dim,))
    phi = np.broadcast_to(np.asarray(schedule_factors_xyz, dtype=np.float64), (dim,))
    size, spacing, origin = geo.size, geo.spacing, geo.origin
    grid_spacing = np.empty(dim)
    grid_size = []
    o = np.empty(dim)
    for d in range(dim):
        gs = float(g[d]) * float(phi[d])
        if not gs > 0:
            raise ValueError(f"grid spacing must be positive, got {gs} for dimension {d}")
        grid_spacing[d] = gs
        n_d = int(math.ceil(size[d] * float(spacing[d]) / gs)) + order
        grid_size.append(n_d)
        o[d] = float(origin[d]) - ((n_d - 1) * gs - (size[d] - 1) * float(spacing[d])) / 2.0
    # rotate the origin about the image origin (same summation order as ITK's matrix * vector)
    diff = o - origin
    rotated = np.empty(dim)
    for i in range(dim):
        acc = 0.0
        for j in range(dim):
            acc += float(geo.direction[i, j]) * float(diff[j])
        rotated[i] = float(origin[i]) + acc
    return BSplineGrid(tuple(grid_size), grid_spacing, rotated, geo.direction.copy())


def grid_domain_under_initial(geometry: ImageGeometry, final_spacing: np.ndarray | Sequence[float],
                              initial_transform: Callable[[torch.Tensor], torch.Tensor]
                              ) -> tuple[ImageGeometry, np.ndarray]:
    """B-spline grid domain when composing with an initial transform (docs/design.md §E6.4).

    The fixed image's boundary voxels are mapped through the initial transform and bounded in the
    image's rotated frame ``[m, M]``; the origin becomes ``Dir·m`` and, per axis with extent
    ``L = S·(n−1) > 0``, the spacing and the final grid spacing are scaled by ``(M − m)/L``
    (elastix ``Common/Transforms/itkGridScheduleComputer.hxx``, ``ApplyInitialTransform``).

    Args:
        geometry: the full-resolution fixed image's geometry.
        final_spacing: ``(D,)`` final B-spline grid spacing, mm, ITK order.
        initial_transform: the earlier stages' transform, a callable on ``(N, D)`` float64 torch
            tensors of physical points (mm) returning the same shape.

    Returns:
        ``(geometry, final_spacing)`` to build the grids from (:func:`grid_for_level`): an
        :class:`ImageGeometry` of the same size and direction, and the scaled ``(D,)`` final spacing (mm).
    """
    size = np.asarray(geometry.size)
    axes = [np.arange(n) for n in size]
    index = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(size))
    boundary = index[np.any((index == 0) | (index == size - 1), axis=1)]
    # ITK's arithmetic throughout (TransformIndexToPhysicalPoint, TransformPoint, vnl's closed-form
    # inverse, matrix × point summed left to right): a rounding step can change the grid size.
    with itk_point_arithmetic():
        mapped = initial_transform(torch.from_numpy(geometry.itk_index_to_points(boundary))).numpy()
    rotated = matrix_times_points(vnl_inverse(geometry.direction), mapped)
    low, high = rotated.min(axis=0), rotated.max(axis=0)
    spacing = np.asarray(geometry.spacing, dtype=np.float64).copy()
    final = np.asarray(final_spacing, dtype=np.float64).copy()
    extent = spacing * (size - 1)
    ratio = (high - low) / np.where(extent > 1e-12, extent, 1.0)
    scaled = lambda v: np.where(extent > 1e-12, v * ratio, v)  # S·(new/old), in elastix's order
    origin = matrix_times_points(geometry.direction, low[None, :])[0]
    return ImageGeometry(tuple(int(n) for n in size), scaled(spacing), origin, geometry.direction), scaled(final)


def bspline_kernel(u: torch.Tensor, order: int) -> torch.Tensor:
    """Centred B-spline kernel ``β^order(u)`` (order 0–3), elementwise, differentiable.

    Source: ``Common/Transforms/itkBSplineKernelFunction2.h``; docs/design.md §E6.4.
    """
    a = u.abs()
    zero = torch.zeros_like(a)
    if order == 3:
        inner = (4.0 - 6.0 * a * a + 3.0 * a * a * a) / 6.0
        outer = (2.0 - a) ** 3 / 6.0
        return torch.where(a < 1.0, inner, torch.where(a < 2.0, outer, zero))
    if order == 2:
        inner = 0.75 - a * a
        outer = 0.5 * (1.5 - a) ** 2
        return torch.where(a < 0.5, inner, torch.where(a < 1.5, outer, zero))
    if order == 1:
        return torch.where(a < 1.0, 1.0 - a, zero)
    if order == 0:
        return torch.where(a < 0.5, torch.ones_like(a), zero)
    raise ValueError(f"unsupported B-spline order {order}")



def _bspline_weights(t: torch.Tensor, order: int) -> torch.Tensor:
    """Weights ``β^order(t + (order−1)/2 − m)``, ``m = 0..order``, for fractional positions ``t ∈ [0, 1)``.

    Equal to :func:`bspline_kernel` evaluated at the support offsets (closed forms, fewer temporaries).

    Args:
        t: ``(...,)`` fractional positions.

    Returns:
        ``(..., order+1)`` weights (differentiable in ``t``).
    """
    if order == 3:
        t2 = t * t
        t3 = t2 * t
        s = 1.0 - t
        return torch.stack(
            [s * s * s / 6.0, (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0, (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0,
             t3 / 6.0],
            dim=-1,
        )
    if order == 2:
        s = 1.0 - t
        h = t - 0.5
        return torch.stack([0.5 * s * s, 0.75 - h * h, 0.5 * t * t], dim=-1)
    if order == 1:
        return torch.stack([1.0 - t, t], dim=-1)
    raise ValueError(f"unsupported B-spline order {order}")


class _Displacement(torch.autograd.Function):
    """Autograd function ``(params, ξ) -> displacement`` on the plugin's CPU kernels.

    Forward: ``bspline_evaluate(transform=True)`` (zero outside the valid region); backward: the
    adjoint scatter for the coefficients and the kernel's index-space derivative for ``ξ``.
    """

    @staticmethod
    def forward(ctx: Any, params: torch.Tensor, xi: torch.Tensor, size_xyz: Sequence[int],
                order: int) -> torch.Tensor:
        dim = xi.shape[1]
        coef = params.detach().view(dim, -1).T.contiguous()  # (nodes, D), node-major rows
        ctx.save_for_backward(coef, xi)
        ctx.size_xyz, ctx.order = list(size_xyz), int(order)
        return load_plugin().bspline_evaluate(coef, ctx.size_xyz, xi.detach(), ctx.order, True, False)[0]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        coef, xi = ctx.saved_tensors
        plugin = load_plugin()
        grad = grad.to(coef.dtype).contiguous()
        grad_params = grad_xi = None
        if ctx.needs_input_grad[0]:
            grad_params = plugin.bspline_adjoint(grad, ctx.size_xyz, xi.detach(), ctx.order, True).T.reshape(-1)
        if ctx.needs_input_grad[1]:
            d = plugin.bspline_evaluate(coef, ctx.size_xyz, xi.detach(), ctx.order, True, True)[1]
            grad_xi = torch.einsum("nc,ncd->nd", grad, d)
        return grad_params, grad_xi, None, None


class BSplineTransform(Transform):
    """elastix ``BSplineTransform`` (``RecursiveBSplineTransform`` is numerically identical).

    ``T(x) = x + Σ_m w_m(ξ)·c[k0+m]`` with ``ξ = (Dir_g·diag(G))⁻¹(x − GridOrigin)``, zero displacement
    outside the valid region ``(order−1)/2 ≤ ξ_d < N_d − 1 − (order−1)/2``.  Parameters: all x coefficients
    (grid flattened x-fastest), then all y, then z; ``P = D·∏N``; in mm.

    Args:
        grid: the control-point grid.
        order: spline order 1, 2 or 3.
        name: the elastix component, ``"BSplineTransform"`` or ``"RecursiveBSplineTransform"``
            (numerically identical; the name is what TransformParameters maps record).

    Source: ``Common/Transforms/itkAdvancedBSplineDeformableTransform.hxx``; docs/design.md §E6.4.
    """

    name = "BSplineTransform"

    def __init__(self, grid: BSplineGrid, order: int = 3, name: str = "BSplineTransform") -> None:
        if name not in ("BSplineTransform", "RecursiveBSplineTransform"):
            raise ValueError(f"a B-spline transform is named BSplineTransform or RecursiveBSplineTransform, not {name!r}")
        self.name = name  # the elastix component written to TransformParameters maps
        if order not in (1, 2, 3):
            raise ValueError(f"BSplineTransformSplineOrder must be 1, 2 or 3, got {order}")
        self.grid = grid
        self.order = int(order)
        self.dimension = grid.dimension
        dim = self.dimension
        size = np.asarray(grid.size_xyz, dtype=np.int64)
        self._strides = np.concatenate([[1], np.cumprod(size)[:-1]]).astype(np.int64)  # lin(k) = Σ k_d·stride_d
        s = order + 1
        # support offsets m enumerated x-fastest: m_flat = Σ m_d·s^d
        m = np.stack(np.meshgrid(*[np.arange(s)] * dim, indexing="ij"), axis=-1)  # [m_0, m_1, ...] ij order
        m = m.transpose(tuple(reversed(range(dim))) + (dim,)).reshape(-1, dim)  # x fastest
        self._support_m = m.astype(np.int64)  # (S^D, D)
        self._support_offsets = (m @ self._strides).astype(np.int64)  # (S^D,)
        self._to_grid_index = np.linalg.inv(grid.direction @ np.diag(grid.spacing))  # (D, D)
        self._cache: dict = {}

    @property
    def number_of_parameters(self) -> int:
        return self.dimension * self.grid.number_of_nodes

    @property
    def support_size(self) -> int:
        """Number of support nodes per point, ``(order+1)^D``."""
        return (self.order + 1) ** self.dimension

    def _consts(self, dtype, device):
        key = (dtype, device)
        c = self._cache.get(key)
        if c is None:
            c = dict(
                to_index=torch.as_tensor(self._to_grid_index, dtype=dtype, device=device),
                origin=torch.as_tensor(self.grid.origin, dtype=dtype, device=device),
                size=torch.as_tensor(self.grid.size_xyz, dtype=dtype, device=device),
                strides=torch.as_tensor(self._strides, device=device),
                offsets=torch.as_tensor(self._support_offsets, device=device),
            )
            self._cache[key] = c
        return c

    def grid_index(self, points: torch.Tensor) -> torch.Tensor:
        """Continuous grid index ``ξ`` of physical points: ``(N, D)`` mm → ``(N, D)``."""
        c = self._consts(points.dtype, points.device)
        return (points - c["origin"]) @ c["to_index"].T

    def support(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Support nodes and weights of points.

        Args:
            points: ``(N, D)`` physical points (mm).

        Returns:
            ``(weights (N, S^D), node_index (N, S^D) int64, valid (N,) bool)``: B-spline weights ``w_m`` (zero
            for points outside the valid region; differentiable in ``points``), flat node indices ``lin(k0+m)``
            (x-fastest, clamped into the grid for invalid points), validity mask.  ``S = order+1``, ``m``
            enumerated x-fastest.
        """
        c = self._consts(points.dtype, points.device)
        xi = (points - c["origin"]) @ c["to_index"].T  # (N, D)
        half = (self.order - 1) / 2.0
        valid = ((xi >= half) & (xi < c["size"] - 1.0 - half)).all(dim=1)
        k0 = torch.floor(xi.detach() - half)
        max_k0 = c["size"] - (self.order + 1)
        k0 = torch.minimum(torch.maximum(k0, torch.zeros_like(k0)), max_k0)  # keep gathers in range
        # per-dimension weights (N, D, S) from the fractional position t = ξ − (order−1)/2 − k0 ∈ [0, 1)
        wd = _bspline_weights(xi - half - k0, self.order)
        wd = wd * valid.to(wd.dtype)[:, None, None]
        n = points.shape[0]
        w = wd[:, 0, :]  # (N, S) x
        for d in range(1, self.dimension):  # outer products, x fastest
            w = (wd[:, d, :].unsqueeze(-1) * w.unsqueeze(1)).reshape(n, -1)
        base = (k0.long() * c["strides"]).sum(dim=1)  # (N,)
        node_index = base.unsqueeze(1) + c["offsets"]  # (N, S^D)
        return w, node_index, valid

    def transform_points(self, params: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """``T(x) = x + Σ_m w_m·c[k0+m]``.

        Args:
            params: ``(P,)`` coefficients (mm), layout x-block, y-block, (z-block), each x-fastest.
            points: ``(N, D)`` physical points (mm), same device as ``params``.

        Returns:
            ``(N, D)`` mapped points (mm), dtype = promotion of params and points dtypes.

        Raises:
            ValueError: wrong shapes.
        """
        self._check(params, points)
        dtype = torch.promote_types(params.dtype, points.dtype)
        pts = points.to(dtype)
        if pts.device.type == "cpu":
            xi = self.grid_index(pts)
            return pts + _Displacement.apply(params.to(dtype), xi.contiguous(), self.grid.size_xyz, self.order)
        return self.transform_points_reference(params, points)

    def transform_grid(self, params: torch.Tensor, geometry: ImageGeometry) -> torch.Tensor:
        """``T`` at every voxel centre of ``geometry``, ``(∏size, D)`` mm, x fastest (as ``voxel_centres``).

        When the grid's axes are parallel to the control-point grid's (index maps ``ξ_d = a_d·i_d + b_d``,
        as for Static feature grids on the fixed image), the displacement is the tensor product of one
        weight matrix per axis applied to the coefficient image, contracted one axis at a time: ~(order+1)
        multiply-adds per voxel and component instead of (order+1)^D. Otherwise, or off the CPU, it is
        :meth:`transform_points` at the voxel centres. Same validity rule (zero outside the valid region).
        """
        a = self._to_grid_index @ geometry.direction @ np.diag(geometry.spacing)  # d ξ / d index
        off_diagonal = a - np.diag(np.diag(a))
        pts = torch.from_numpy(geometry.voxel_centres())
        if params.device.type != "cpu" or np.abs(off_diagonal).max() > 1e-12 * np.abs(a).max():
            return self.transform_points(params, pts)
        b = self._to_grid_index @ (np.asarray(geometry.origin, dtype=np.float64) - self.grid.origin)
        half = (self.order - 1) / 2.0
        dtype = torch.promote_types(params.dtype, pts.dtype)
        coef = params.detach().to(dtype).view((self.dimension,) + tuple(reversed(self.grid.size_xyz)))  # (D, *zyx)
        for axis in range(self.dimension):  # contract x first: coef's last axis is x
            n_grid = self.grid.size_xyz[axis]
            xi = torch.as_tensor(b[axis] + a[axis, axis] * np.arange(geometry.size[axis], dtype=np.float64),
                                 dtype=dtype)
            valid = (xi >= half) & (xi < n_grid - 1.0 - half)
            k0 = torch.clamp(torch.floor(xi - half), 0, n_grid - (self.order + 1))
            w = _bspline_weights(xi - half - k0, self.order) * valid.to(dtype)[:, None]  # (n, order+1)
            matrix = torch.zeros(len(xi), n_grid, dtype=dtype)
            matrix.scatter_(1, k0.long()[:, None] + torch.arange(self.order + 1), w)
            # (D, ..., N_axis, outputs of the axes done) -> (D, ..., n_axis, outputs of the axes done)
            coef = torch.tensordot(coef, matrix, dims=([self.dimension - axis], [1])).movedim(-1, self.dimension - axis)
        # coef is now (D, *zyx of the grid); rows x fastest as voxel_centres
        return pts.to(dtype) + coef.reshape(self.dimension, -1).T

    def transform_points_reference(self, params: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """:meth:`transform_points` by the device-generic torch code, on any device.

        What :meth:`transform_points` runs off the CPU (a gather of each point's support from :meth:`support`),
        never the plugin's kernels: the reference the tests compare those with. Differentiable by autograd
        w.r.t. ``params`` and ``points``. Same arguments, results and errors as :meth:`transform_points`.
        """
        self._check(params, points)
        dtype = torch.promote_types(params.dtype, points.dtype)
        params, pts = params.to(dtype), points.to(dtype)
        w, node_index, _ = self.support(pts)
        n, m = w.shape
        coef_nodes = params.view(self.dimension, -1).T.contiguous()  # (∏N, D): node-major rows
        gathered = coef_nodes.index_select(0, node_index.reshape(-1)).view(n, m, self.dimension)
        disp = torch.bmm(w.unsqueeze(1), gathered).squeeze(1)  # (N, D)
        return pts + disp

    def jacobian(self, points: torch.Tensor, params: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse ``∂T/∂μ`` in elastix's layout (linear in the coefficients: ``params`` is not needed).

        Args:
            points: ``(N, D)`` physical points (mm).
            params: ignored.

        Returns:
            ``values (N, D, D·S^D)`` and ``indices (N, D·S^D)`` int64 with
            ``indices[n, d·S^D + m] = d·∏N + lin(k0+m)`` and ``values[n, d, d·S^D + m] = w_m`` (zero elsewhere),
            ``d`` outer, ``m`` inner (x-fastest).  Points outside the valid region: zero values, indices
            ``0..nnz−1`` (as elastix).

        Source: ``itkAdvancedBSplineDeformableTransform.hxx`` ``GetJacobian``; docs/design.md §E6.4.
        """
        w, node_index, valid = self.support(points)
        n, m = w.shape
        dim = self.dimension
        total = self.grid.number_of_nodes
        nnz = dim * m
        values = w.new_zeros(n, dim, dim, m)
        ar = torch.arange(dim, device=points.device)
        values[:, ar, ar, :] = w.unsqueeze(1).expand(n, dim, m)
        values = values.reshape(n, dim, nnz)
        offs = torch.arange(dim, device=points.device) * total
        indices = (node_index.unsqueeze(1) + offs[None, :, None]).reshape(n, nnz)
        fallback = torch.arange(nnz, device=points.device).expand(n, nnz)
        indices = torch.where(valid[:, None], indices, fallback)
        return values, indices

    def parameter_map(self, params: torch.Tensor | None = None) -> dict[str, list[str]]:
        """Transform block keys: Transform, NumberOfParameters, TransformParameters, GridSize, GridIndex,
        GridSpacing, GridOrigin, GridDirection (column-major), BSplineTransformSplineOrder, UseCyclicTransform.

        Source: ``elxAdvancedBSplineTransform.hxx`` ``CreateDerivedTransformParameterMap``; docs/design.md §E10.1.
        """
        out = super().parameter_map(params)
        g = self.grid
        out.update(
            {
                "GridSize": [str(s) for s in g.size_xyz],
                "GridIndex": ["0"] * self.dimension,
                "GridSpacing": format_numbers(g.spacing),
                "GridOrigin": format_numbers(g.origin),
                "GridDirection": format_numbers(g.direction.T.reshape(-1)),  # column-major
                "BSplineTransformSplineOrder": [str(self.order)],
                "UseCyclicTransform": ["false"],
            }
        )
        return out

    def upsample(self, params_old: torch.Tensor | np.ndarray, old_grid: BSplineGrid,
                 new_grid: BSplineGrid) -> torch.Tensor | np.ndarray:
        """:func:`upsample` with this transform's order."""
        return upsample(params_old, old_grid, new_grid, order=self.order)


def bspline_from_parameter_map(pm: ParameterMap) -> tuple[BSplineTransform, torch.Tensor]:
    """B-spline transform of a TransformParameters map: ``GridSize``, ``GridSpacing``, ``GridOrigin``,
    ``GridDirection`` (column-major) and ``BSplineTransformSplineOrder`` (docs/design.md §E10.3)."""
    name = pm.get("Transform")
    size = [int(v) for v in pm.values("GridSize")]
    d = len(size)
    direction = np.array([float(v) for v in pm.values("GridDirection")] or np.eye(d).reshape(-1)).reshape(d, d).T
    grid = BSplineGrid(tuple(size), [float(v) for v in pm.values("GridSpacing")],
                       [float(v) for v in pm.values("GridOrigin")], direction)
    transform = BSplineTransform(grid, order=pm.get("BSplineTransformSplineOrder", default=3, type=int), name=name)
    return transform, read_transform_parameters(pm, transform, name)


def upsample(params_old: torch.Tensor | np.ndarray, old_grid: BSplineGrid, new_grid: BSplineGrid,
             order: int = 3) -> torch.Tensor | np.ndarray:
    """Coefficients on ``new_grid`` that reproduce the deformation of ``params_old`` on ``old_grid``.

    Per displacement component: evaluate the old coefficient image with a *cubic* B-spline (coefficients used
    directly, mirror boundary) at the new nodes (nodes whose old continuous index lies outside
    ``[−0.5, N_old−0.5)`` get 0), then an order-``order`` B-spline decomposition (mirror boundary).  An
    unchanged grid copies the coefficients.

    Args:
        params_old: ``(D·∏N_old,)`` tensor (or numpy array) of coefficients (mm).
        old_grid: grid of ``params_old``.
        new_grid: target grid.
        order: transform spline order (decomposition order).

    Returns:
        ``(D·∏N_new,)`` coefficients, same type/dtype/device as ``params_old``.

    Raises:
        ValueError: dimension or length mismatch.

    Source: ``Common/Transforms/itkUpsampleBSplineParametersFilter.hxx``; docs/design.md §E6.4.
    """
    is_tensor = hasattr(params_old, "detach")
    if is_tensor:
        arr = params_old.detach().to("cpu").double().numpy()
    else:
        arr = np.asarray(params_old, dtype=np.float64)
    dim = old_grid.dimension
    if new_grid.dimension != dim:
        raise ValueError("old and new grids have different dimensions")
    if arr.size != dim * old_grid.number_of_nodes:
        raise ValueError(f"params_old has {arr.size} values, expected {dim * old_grid.number_of_nodes}")
    if old_grid.same_as(new_grid):
        out = arr.copy()
    else:
        new_geo, old_geo = new_grid.as_geometry(), old_grid.as_geometry()
        nodes = new_geo.voxel_centres()  # (M, D) physical, x fastest
        xi = old_geo.physical_to_index(nodes)  # (M, D) old continuous index
        inside = old_geo.inside_buffer(xi)
        coords_zyx = xi[:, ::-1].T.copy()  # (D, M) in array axis order
        old_shape = old_grid.size_xyz[::-1]
        new_shape = new_grid.size_xyz[::-1]
        comps = []
        for c in arr.reshape(dim, -1):
            img = c.reshape(old_shape)
            vals = ndimage.map_coordinates(img, coords_zyx, order=3, mode="mirror", prefilter=False)
            vals = np.where(inside, vals, 0.0).reshape(new_shape)
            if order >= 2:
                vals = ndimage.spline_filter(vals, order=order, mode="mirror", output=np.float64)
            comps.append(vals.reshape(-1))
        out = np.concatenate(comps)
    if is_tensor:
        return torch.as_tensor(out, device=params_old.device).to(params_old.dtype)
    return out.astype(np.asarray(params_old).dtype, copy=False)
