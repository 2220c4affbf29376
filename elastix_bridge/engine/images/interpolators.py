"""B-spline interpolation of images and feature volumes (ITK ``BSplineInterpolateImageFunction``).

Coefficients come from the recursive B-spline prefilter with mirror boundary
(ITK ``BSplineDecompositionImageFilter``); evaluation uses the ``(order+1)^D`` support with ITK's
periodic mirror index extension (period ``2n − 2``). Order 1 is linear interpolation with mirrored
neighbours, order 0 nearest neighbour (``floor(i + 0.5)``).

Value at continuous index ``i`` (ITK order) for channel ``c``::

    f_c(i) = Σ_k coef_c[mirror(k)] · Π_d β_order(i_d − k_d)

Sources: docs/design.md §E8.1; elastix ``Components/Interpolators/BSplineInterpolator/elxBSplineInterpolator.hxx``;
ITK ``Modules/Core/ImageFunction/include/itkBSplineInterpolateImageFunction.hxx``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage

from elastix_bridge.core.geometry import ImageGeometry
from elastix_bridge.engine.images.level_images import LevelImage
from elastix_bridge.runtime.loader import load_plugin

#: Gathered values per chunk (points × support ``(order+1)^D`` × channels) of the torch code: the plain-autograd
#: path of :func:`bspline_interpolate` (coefficients requiring grad) and
#: :func:`bspline_interpolate_with_gradient_reference` (what other devices than the CPU run); a chunk's
#: support is materialised, so this bounds its memory (2^24 float64 values = 128 MiB).
MAX_CHUNK_ELEMENTS = 1 << 24


def bspline_coefficients(array: np.ndarray | torch.Tensor, order: int,
                         channel_axis: bool = False) -> np.ndarray | torch.Tensor:
    """B-spline prefilter (interpolating coefficients) with mirror boundary.

    Matches ITK ``BSplineDecompositionImageFilter`` (used by ``BSplineInterpolateImageFunction``),
    with the exact mirror-boundary initialisation, in float64: the plugin's ``bspline_prefilter``
    (every line of every axis, on torch's threads); :func:`bspline_coefficients_reference`
    (``scipy.ndimage.spline_filter``) is the reference the tests compare it with.

    Args:
        array: numpy array or torch tensor, shape ``(*zyx)`` or, with ``channel_axis=True``,
            ``(C, *zyx)`` (each channel filtered independently over the spatial axes only).
        order: spline order 0..3; orders 0 and 1 need no prefilter and return the input unchanged.
        channel_axis: whether the first axis is a channel axis.

    Returns:
        coefficients of the same type, shape, dtype (and device for tensors) as ``array``.

    Raises:
        ValueError: if the order is not in 0..3.
    """
    return _prefilter(array, order, channel_axis,
                      lambda a64: load_plugin().bspline_prefilter(torch.from_numpy(a64), order).numpy())


def bspline_coefficients_reference(array: np.ndarray | torch.Tensor, order: int,
                                   channel_axis: bool = False) -> np.ndarray | torch.Tensor:
    """:func:`bspline_coefficients` with ``scipy.ndimage.spline_filter`` (mirror mode), the reference."""
    return _prefilter(array, order, channel_axis, lambda a64: np.stack(
        [ndimage.spline_filter(ch, order=order, output=np.float64, mode="mirror") for ch in a64]))


def _prefilter(array, order, channel_axis, filter_channels):
    """Checks, float64 ``(C, *zyx)`` for ``filter_channels``, and the result in the input's type."""
    order = int(order)
    if order not in (0, 1, 2, 3):
        raise ValueError(f"B-spline order must be 0, 1, 2 or 3; got {order}")
    if order <= 1:
        return array
    is_numpy = isinstance(array, np.ndarray)
    a = array if is_numpy else array.detach().cpu().numpy()
    a64 = np.ascontiguousarray(a, dtype=np.float64)
    out = filter_channels(a64 if channel_axis else a64[None])
    if not channel_axis:
        out = out[0]
    if is_numpy:
        return out.astype(array.dtype if np.issubdtype(array.dtype, np.floating) else np.float64, copy=False)
    return torch.as_tensor(out, dtype=array.dtype if array.is_floating_point() else torch.float64,
                           device=array.device)


def _support(x, order: int, with_derivative: bool):
    """First support index, weights and derivative weights along one axis.

    The support is found from ``x`` rounded to float32, as ITK's ``BSplineInterpolateImageFunction``
    does (``floor((float)x + halfOffset)``); it decides which side's derivative a linear spline takes
    at a knot. The weights use ``x`` itself.

    Args:
        x: ``(n,)`` continuous indices along the axis.
        order: spline order 0..3.

    Returns:
        ``start`` (int64 ``(n,)``), ``w`` ``(n, order+1)``, ``dw`` (``(n, order+1)`` or None);
        ``w`` is differentiable w.r.t. ``x`` by autograd.
    """
    xf = x.detach().to(torch.float32).to(x.dtype)

    if order == 0:
        start = torch.floor(xf + 0.5)
        w = torch.ones_like(x)[:, None] + 0.0 * x[:, None]
        dw = torch.zeros_like(w) if with_derivative else None
        return start.to(torch.int64), w, dw
    if order == 1:
        start = torch.floor(xf)
        t = x - start
        w = torch.stack([1.0 - t, t], dim=1)
        dw = torch.stack([-torch.ones_like(t), torch.ones_like(t)], dim=1) if with_derivative else None
        return start.to(torch.int64), w, dw
    if order == 2:
        centre = torch.floor(xf + 0.5)
        t = x - centre  # in [-0.5, 0.5)
        w = torch.stack([0.5 * (0.5 - t) ** 2, 0.75 - t * t, 0.5 * (t + 0.5) ** 2], dim=1)
        dw = torch.stack([t - 0.5, -2.0 * t, t + 0.5], dim=1) if with_derivative else None
        return (centre - 1).to(torch.int64), w, dw
    # order 3
    base = torch.floor(xf)
    t = x - base  # in [0, 1)
    s = 1.0 - t
    t2, s2 = t * t, s * s
    w = torch.stack([s2 * s / 6.0,
                     2.0 / 3.0 - t2 + 0.5 * t2 * t,
                     2.0 / 3.0 - s2 + 0.5 * s2 * s,
                     t2 * t / 6.0], dim=1)
    dw = None
    if with_derivative:
        dw = torch.stack([-0.5 * s2, -2.0 * t + 1.5 * t2, 2.0 * s - 1.5 * s2, 0.5 * t2], dim=1)
    return (base - 1).to(torch.int64), w, dw


def _mirror(idx, n: int):
    """ITK ``ApplyMirrorBoundaryConditions``: periodic mirror with period ``2n − 2`` (0 if n == 1)."""
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * n - 2
    m = torch.remainder(idx.abs(), period)
    return torch.where(m >= n, period - m, m)


def _chunk_support(coef_pc, size_xyz, index, order: int, with_derivative: bool):
    """Gather support values and separable weights for one chunk.

    Returns:
        vals ``(n, K^D, C)``, per-axis weights list ``[(n, K)]*D`` and derivative weights (or None).
    """
    n, d = index.shape
    k = order + 1
    lin = None
    ws, dws = [], []
    stride = 1
    for axis in range(d):  # ITK order; x has stride 1 in the flattened (z, y, x) array
        start, w, dw = _support(index[:, axis], order, with_derivative)
        idx = start[:, None] + torch.arange(k, device=index.device)[None, :]
        idx = _mirror(idx, size_xyz[axis]) * stride
        shape = [n] + [1] * d
        shape[d - axis] = k  # axis d-1-axis in zyx order, +1 for the point axis
        idx = idx.reshape(shape)
        lin = idx if lin is None else lin + idx
        ws.append(w)
        dws.append(dw)
        stride *= size_xyz[axis]
    vals = coef_pc[lin.reshape(n, -1)]  # (n, K^D, C)
    return vals, ws, dws


def _outer(ws, d: int):
    """Tensor product of per-axis weights ``[(n, K)]*D`` (ITK order) -> ``(n, K^D)``, x fastest."""
    n = ws[0].shape[0]
    out = None
    for axis in range(d):
        shape = [n] + [1] * d
        shape[d - axis] = ws[axis].shape[1]
        term = ws[axis].reshape(shape)
        out = term if out is None else out * term
    return out.reshape(n, -1)


def _chunk_size(order: int, d: int, c: int) -> int:
    return max(1, MAX_CHUNK_ELEMENTS // ((order + 1) ** d * max(c, 1)))


def _prepare(coefficients, index_xyz, order):
    order = int(order)
    if order not in (0, 1, 2, 3):
        raise ValueError(f"B-spline order must be 0, 1, 2 or 3; got {order}")
    if not torch.is_tensor(coefficients) or not torch.is_tensor(index_xyz):
        raise TypeError("coefficients and index_xyz must be torch tensors")
    d = coefficients.ndim - 1
    if index_xyz.ndim != 2 or index_xyz.shape[1] != d:
        raise ValueError(f"index_xyz must have shape (N, {d}) for coefficients of shape "
                         f"{tuple(coefficients.shape)} (C, *zyx); got {tuple(index_xyz.shape)}")
    size_xyz = tuple(int(s) for s in reversed(coefficients.shape[1:]))
    c = coefficients.shape[0]
    coef_pc = coefficients.reshape(c, -1).transpose(0, 1)  # (P, C)
    return order, d, size_xyz, c, coef_pc


def _evaluate(coef_pc, size_xyz, index, order, with_gradient):
    """Value ``(N, C)`` and, optionally, index-space gradient ``(N, C, D)`` without autograd graph.

    Computed and returned in the wider of the coefficients' and the index's dtypes (float32 feature
    maps read at float64 points give float64).

    CPU tensors go through the plugin's ``bspline_evaluate`` kernel (one pass over each support,
    nothing materialised); other devices use :func:`_evaluate_torch`, the reference implementation.
    """
    if coef_pc.device.type == "cpu":
        out = load_plugin().bspline_evaluate(coef_pc.contiguous(), list(size_xyz), index.contiguous(), int(order),
                                             False, bool(with_gradient))
        return out[0], (out[1] if with_gradient else None)
    return _evaluate_torch(coef_pc, size_xyz, index, order, with_gradient)


def _evaluate_torch(coef_pc, size_xyz, index, order, with_gradient):
    """Device-generic torch version of :func:`_evaluate` (chunked gathers of the support)."""
    n, d = index.shape
    c = coef_pc.shape[1]
    dtype = torch.promote_types(coef_pc.dtype, index.dtype)
    index = index.to(dtype)
    values = coef_pc.new_empty((n, c), dtype=dtype)
    grads = coef_pc.new_empty((n, c, d), dtype=dtype) if with_gradient else None
    step = _chunk_size(order, d, c)
    for s in range(0, n, step):
        e = min(n, s + step)
        vals, ws, dws = _chunk_support(coef_pc, size_xyz, index[s:e], order, with_gradient)
        vals = vals.to(dtype)
        ws = [w.to(dtype) for w in ws]
        values[s:e] = torch.einsum("nkc,nk->nc", vals, _outer(ws, d))
        if with_gradient:
            for axis in range(d):
                wa = list(ws)
                wa[axis] = dws[axis].to(dtype)
                grads[s:e, :, axis] = torch.einsum("nkc,nk->nc", vals, _outer(wa, d))
    return values, grads


class _BSplineEval(torch.autograd.Function):
    """Memory-lean autograd: keeps the index-space derivatives ``(N, C, D)``, not the support.

    When the index needs a gradient, one pass over each support gives the values and the
    derivatives together (a second pass in the backward would repeat the values' work).
    """

    @staticmethod
    def forward(ctx: Any, index: torch.Tensor, coef_pc: torch.Tensor, size_xyz: tuple[int, ...],
                order: int) -> torch.Tensor:
        with_gradient = bool(index.requires_grad) and order > 0
        with torch.no_grad():
            values, grads = _evaluate(coef_pc, size_xyz, index.detach(), order, with_gradient)
        ctx.save_for_backward(grads)
        ctx.index_shape, ctx.index_dtype = index.shape, index.dtype
        return values

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (grads,) = ctx.saved_tensors
        if grads is None or not ctx.needs_input_grad[0]:
            return (torch.zeros(ctx.index_shape, dtype=ctx.index_dtype, device=grad_out.device),
                    None, None, None)
        grad_index = torch.einsum("nc,ncd->nd", grad_out.to(grads.dtype), grads).to(ctx.index_dtype)
        return grad_index, None, None, None


def bspline_interpolate(coefficients: "torch.Tensor", index_xyz: "torch.Tensor", order: int) -> "torch.Tensor":
    """Evaluate a B-spline of order 0..3 at continuous indices (ITK ``BSplineInterpolateImageFunction``).

    Mirror index extension as in ITK (index −k ↦ k, n−1+k ↦ n−1−k, periodic with period 2n−2, so
    points far outside the image are handled too; a size-1 axis always uses index 0). No buffer
    check is made: validity (``−0.5 <= i < n − 0.5``) is the caller's business (docs/design.md §E7.1).

    Differentiable w.r.t. ``index_xyz`` by autograd (first order; order 0 has zero derivative).
    If ``coefficients.requires_grad`` a plain autograd graph is built instead (also differentiable
    w.r.t. the coefficients, but memory ∝ N·(order+1)^D·C). Evaluated in chunks of about 2^24
    gathered values, vectorised per chunk.

    Args:
        coefficients: ``(C, *zyx)`` spline coefficients (see :func:`bspline_coefficients`), any float
            dtype and device.
        index_xyz: ``(N, D)`` continuous indices in ITK ``(x, y, z)`` order, same device.
        order: spline order 0..3.

    Returns:
        ``(N, C)`` values in the wider of the dtypes of ``coefficients`` and ``index_xyz``.

    Raises:
        ValueError: on a bad order or shape mismatch; TypeError for non-tensors.
    """
    order, d, size_xyz, c, coef_pc = _prepare(coefficients, index_xyz, order)
    if coefficients.requires_grad:
        n = index_xyz.shape[0]
        step = _chunk_size(order, d, c)
        outs = []
        for s in range(0, n, step):
            vals, ws, _ = _chunk_support(coef_pc, size_xyz, index_xyz[s:s + step], order, False)
            ws = [w.to(coef_pc.dtype) for w in ws]
            outs.append(torch.einsum("nkc,nk->nc", vals, _outer(ws, d)))
        return torch.cat(outs, dim=0) if outs else coef_pc.new_empty((0, c))
    return _BSplineEval.apply(index_xyz, coef_pc.contiguous(), size_xyz, order)


def bspline_interpolate_with_gradient(coefficients: "torch.Tensor", index_xyz: "torch.Tensor",
                                      order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and index-space derivatives in one pass (no autograd graph).

    Args:
        coefficients: ``(C, *zyx)`` spline coefficients.
        index_xyz: ``(N, D)`` continuous indices, ITK order.
        order: spline order 0..3 (order 0 gives zero derivatives).

    Returns:
        ``values (N, C)`` and ``d values / d index_xyz`` of shape ``(N, C, D)`` (ITK order).
    """
    order, d, size_xyz, c, coef_pc = _prepare(coefficients, index_xyz, order)
    with torch.no_grad():
        return _evaluate(coef_pc.contiguous(), size_xyz, index_xyz.detach(), order, True)


def bspline_interpolate_with_gradient_reference(coefficients: "torch.Tensor", index_xyz: "torch.Tensor",
                                                order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`bspline_interpolate_with_gradient` by the device-generic torch code, on any device.

    The code other devices than the CPU run (chunked gathers of the support, :data:`MAX_CHUNK_ELEMENTS`),
    never the plugin's ``bspline_evaluate`` kernel: the reference the tests compare that kernel with.
    Same arguments, results and errors as :func:`bspline_interpolate_with_gradient`.
    """
    order, d, size_xyz, c, coef_pc = _prepare(coefficients, index_xyz, order)
    with torch.no_grad():
        return _evaluate_torch(coef_pc, size_xyz, index_xyz.detach(), order, True)


class ImageInterpolator:
    """B-spline interpolator of a scalar image or a multi-channel feature volume in physical space.

    Used for elastix ``BSplineInterpolator`` (moving image, ``BSplineInterpolationOrder``), the fixed
    image B-spline and Static-mode IMPACT feature maps (cubic, per channel). docs/design.md §E8.1.

    Args:
        image: a :class:`~elastix_bridge.engine.images.level_images.LevelImage`, or a numpy array / torch tensor
            of shape ``(C, *zyx)`` (feature volume) or ``(*zyx)`` (one channel) together with ``geometry``.
        order: B-spline order 0..3.
        geometry: grid of ``image`` when it is an array (ignored/checked for a LevelImage).
        device: torch device of the coefficients (default CPU).
        dtype: torch dtype of the coefficients (default float32).

    Attributes:
        geometry (ImageGeometry), order (int), coefficients (torch.Tensor ``(C, *zyx)``),
        channels (int).

    Raises:
        ValueError: bad order, missing geometry or shape mismatch.
    """

    def __init__(self, image: LevelImage | np.ndarray | torch.Tensor, order: int = 3,
                 geometry: ImageGeometry | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        if isinstance(image, LevelImage):
            geometry = image.geometry
            array = image.array_zyx[None]
        else:
            if geometry is None:
                raise ValueError("an array input needs its geometry")
            array = image
            if tuple(array.shape) == geometry.shape_zyx:
                array = array[None]
        if geometry is None or tuple(array.shape[1:]) != geometry.shape_zyx:
            raise ValueError(f"image shape {tuple(array.shape)} does not match (C, *{geometry.shape_zyx})")
        self.geometry = geometry
        self.order = int(order)
        if self.order not in (0, 1, 2, 3):
            raise ValueError(f"B-spline order must be 0, 1, 2 or 3; got {order}")
        dtype = dtype or torch.float32
        array = torch.as_tensor(array).detach().to(device="cpu", dtype=dtype)
        # Channels-last storage, prefiltered in the coefficients' dtype: the (voxels, C) view that
        # bspline_interpolate gathers from is contiguous, and the one copy of the volume is the
        # prefilter's (a 12-channel 2 mm MNI feature map is 51 MB in float32).
        channels_last = array.movedim(0, -1)
        if self.order > 1:
            coef = load_plugin().bspline_prefilter(channels_last, self.order, True)
        else:
            coef = channels_last.contiguous()
        self.coefficients = coef.to(device=device).movedim(-1, 0)
        self.channels = int(self.coefficients.shape[0])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "ImageInterpolator":
        """Move the coefficients (in place) and return ``self``."""
        coef = self.coefficients.to(device=device, dtype=dtype)
        self.coefficients = coef.reshape(coef.shape[0], -1).T.contiguous().T.reshape(coef.shape)
        return self

    @property
    def table(self) -> tuple["torch.Tensor", tuple[int, ...]]:
        """The coefficients as the plugin's kernels take them: ``(P, C)`` (a view) and ``size_xyz``."""
        size_xyz = tuple(int(s) for s in reversed(self.coefficients.shape[1:]))
        return self.coefficients.reshape(self.channels, -1).T.contiguous(), size_xyz

    def index(self, points: "torch.Tensor") -> "torch.Tensor":
        """Physical points ``(N, D)`` (mm) -> continuous indices ``(N, D)`` (ITK order), differentiable."""
        return self.geometry.physical_to_index(points)

    def inside_buffer(self, points: "torch.Tensor") -> "torch.Tensor":
        """``(N,)`` bool: ITK ``IsInsideBuffer`` of the points' continuous indices (docs/design.md §E7.1)."""
        return self.geometry.inside_buffer(self.index(points.detach()))

    def __call__(self, points: "torch.Tensor") -> "torch.Tensor":
        """Interpolate at physical points.

        Args:
            points: ``(N, D)`` physical points in mm on the coefficients' device; gradients w.r.t.
                ``points`` flow through ``geometry.physical_to_index`` by autograd.

        Returns:
            ``(N, C)`` values (``C = 1`` for a plain image) in the wider of the coefficients' and the
            points' dtypes (float32 feature maps at float64 points give float64).
        """
        return bspline_interpolate(self.coefficients, self.index(points), self.order)

    def value_and_gradient(self, points: "torch.Tensor") -> tuple[torch.Tensor, torch.Tensor]:
        """Values ``(N, C)`` and physical gradients ``(N, C, D)`` (1/mm), no autograd graph.

        Physical gradient = ``(d f / d i) · (d i / d x)``, which equals ITK's
        ``Dir · ((d f / d i) ÷ S)`` for orthonormal directions.
        """
        values, grad_index = bspline_interpolate_with_gradient(self.coefficients, self.index(points.detach()),
                                                               self.order)
        m = torch.as_tensor(self.geometry.physical_to_index_matrix, dtype=grad_index.dtype,
                            device=grad_index.device)
        return values, grad_index @ m
