"""Image geometry in physical space (ITK conventions).

Everything here is in ITK axis order ``(x, y[, z])`` unless a name says ``zyx``.
An ITK image maps a continuous index ``i`` (ITK order) to a physical point ``p`` (mm) by

    p = origin + direction @ diag(spacing) @ i

so ``direction[:, k]`` is the physical direction of index axis ``k``.  numpy arrays
obtained from ITK are reversed: ``array_zyx[z, y, x]``.

Besides :class:`ImageGeometry`, the ITK-order arithmetic that decisions on transformed points (the
B-spline grid fitted to a moved domain) need to match elastix to the last bit: :func:`vnl_inverse` and
:func:`matrix_times_points`.

Source: ITK ``ImageBase::TransformContinuousIndexToPhysicalPoint``; docs/design.md §E0, §E6.4.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import itk
    import torch  # annotations only: never imported at run time


@dataclass(frozen=True)
class ImageGeometry:
    """Size, spacing, origin and direction of an image grid, ITK (x, y, z) order.

    Attributes:
        size: number of voxels per axis, ITK order, shape ``(D,)``.
        spacing: voxel spacing in mm, shape ``(D,)``.
        origin: physical position (mm) of voxel index 0, shape ``(D,)``.
        direction: direction cosines, shape ``(D, D)``; column ``k`` is index axis ``k``.
    """

    size: tuple
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        object.__setattr__(self, "spacing", np.asarray(self.spacing, dtype=np.float64).reshape(-1))
        object.__setattr__(self, "origin", np.asarray(self.origin, dtype=np.float64).reshape(-1))
        d = len(self.size)
        object.__setattr__(self, "direction", np.asarray(self.direction, dtype=np.float64).reshape(d, d))

    @property
    def dimension(self) -> int:
        return len(self.size)

    @property
    def shape_zyx(self) -> tuple:
        """Array shape in numpy (z, y, x) order."""
        return tuple(reversed(self.size))

    @cached_property
    def index_to_physical_matrix(self) -> np.ndarray:
        """``direction @ diag(spacing)``, shape ``(D, D)``."""
        return self.direction @ np.diag(self.spacing)

    @cached_property
    def physical_to_index_matrix(self) -> np.ndarray:
        """Inverse of :attr:`index_to_physical_matrix`, shape ``(D, D)``."""
        return np.linalg.inv(self.index_to_physical_matrix)

    def _tensors(self, like) -> tuple:
        """``(M, M⁻¹, origin, size)`` as tensors of ``like``'s dtype and device, made once per kind.

        The geometry is immutable, and registrations convert points every iteration.
        """
        cache = self.__dict__.setdefault("_tensor_cache", {})
        key = (like.dtype, like.device)
        if key not in cache:
            cache[key] = tuple(like.new_tensor(a) for a in (self.index_to_physical_matrix,
                                                             self.physical_to_index_matrix, self.origin,
                                                             np.asarray(self.size, dtype=np.float64)))
        return cache[key]

    @classmethod
    def from_itk(cls, image: itk.Image) -> "ImageGeometry":
        """Geometry of an ``itk.Image`` (largest possible region, start index must be 0)."""
        region = image.GetLargestPossibleRegion()
        index = tuple(region.GetIndex())
        if any(index):
            raise ValueError(f"images with a non-zero start index {index} are not supported; "
                             "re-save the image so that its region starts at index 0")
        import itk  # deferred: reached only by callers that hold an itk image; importing core never imports itk

        return cls(
            size=tuple(region.GetSize()),
            spacing=np.asarray(image.GetSpacing(), dtype=np.float64),
            origin=np.asarray(image.GetOrigin(), dtype=np.float64),
            direction=np.asarray(itk.array_from_matrix(image.GetDirection()), dtype=np.float64),
        )

    def apply_to_itk(self, image: itk.Image) -> None:
        """Set spacing, origin and direction of an ``itk.Image`` to this geometry."""
        import itk  # deferred: reached only by callers that hold an itk image; importing core never imports itk

        image.SetSpacing([float(v) for v in self.spacing])
        image.SetOrigin([float(v) for v in self.origin])
        image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(self.direction)))

    def index_to_physical(self, index_xyz: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Continuous index (ITK order) -> physical point (mm).

        Args:
            index_xyz: ``(N, D)`` numpy array or torch tensor.

        Returns:
            ``(N, D)`` points of the same array type and dtype.
        """
        m, o = self.index_to_physical_matrix, self.origin
        if isinstance(index_xyz, np.ndarray):
            return index_xyz @ m.T + o
        m, _, o, _ = self._tensors(index_xyz)
        return index_xyz @ m.T + o

    def itk_index_to_points(self, index: np.ndarray | Sequence[int]) -> np.ndarray:
        """Integer indices -> physical points with ITK's rounding, bit-identical to elastix's.

        ITK ``ImageBase::TransformIndexToPhysicalPoint``: ``p_r = O_r``, then ``p_r += (Dir_rc·S_c)·i_c``
        for each ``c`` in order (not a matrix product, whose rounding differs in the last bit).

        Args:
            index: ``(N, D)`` or ``(D,)`` indices, ITK order.

        Returns:
            ``(N, D)`` float64 points (mm).
        """
        index = np.asarray(index, dtype=np.float64).reshape(-1, self.dimension)
        m = self.direction * self.spacing[None, :]
        out = np.empty_like(index)
        for r in range(self.dimension):
            acc = np.full(index.shape[0], float(self.origin[r]))
            for c in range(self.dimension):
                acc = acc + m[r, c] * index[:, c]
            out[:, r] = acc
        return out

    def itk_continuous_index_to_point(self, index: np.ndarray | Sequence[float]) -> np.ndarray:
        """One continuous index -> physical point with ITK's rounding, bit-identical to elastix's.

        ITK ``ImageBase::TransformContinuousIndexToPhysicalPoint``: ``p_r = (Σ_c (Dir_rc·S_c)·i_c) + O_r``
        (the sum over ``c`` in order, then the origin), so that image centres come out as elastix's.

        Args:
            index: ``(D,)`` continuous index, ITK order.

        Returns:
            ``(D,)`` float64 point (mm).
        """
        index = [float(v) for v in np.asarray(index, dtype=np.float64).reshape(-1)]
        out = np.empty(self.dimension)
        for r in range(self.dimension):
            acc = 0.0
            for c in range(self.dimension):
                acc += float(self.direction[r, c]) * float(self.spacing[c]) * index[c]
            out[r] = acc + float(self.origin[r])
        return out

    def physical_to_index(self, points: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Physical point (mm) -> continuous index (ITK order). ``(N, D)`` -> ``(N, D)``."""
        m, o = self.physical_to_index_matrix, self.origin
        if isinstance(points, np.ndarray):
            return (points - o) @ m.T
        _, m, o, _ = self._tensors(points)
        return (points - o) @ m.T

    def inside_buffer(self, index_xyz: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """ITK ``IsInsideBuffer`` for continuous indices: ``-0.5 <= i_k < n_k - 0.5`` on every axis.

        Args:
            index_xyz: ``(N, D)`` continuous indices (numpy or torch).

        Returns:
            ``(N,)`` boolean mask.
        """
        size = np.asarray(self.size, dtype=np.float64)
        if isinstance(index_xyz, np.ndarray):
            return np.all((index_xyz >= -0.5) & (index_xyz < size - 0.5), axis=1)
        s = self._tensors(index_xyz)[3]
        return ((index_xyz >= -0.5) & (index_xyz < s - 0.5)).all(dim=1)

    def voxel_centres(self) -> np.ndarray:
        """Physical coordinates of all voxels, ``(prod(size), D)``, x fastest (ITK memory order)."""
        # origin + Σ_a i_a · (direction · spacing)[:, a], one broadcast term per axis: no index array and no
        # BLAS call (whose thread pool competes with torch's on a 1-M-voxel grid).
        d = self.dimension
        out = np.broadcast_to(self.origin, self.shape_zyx + (d,)).copy()
        for a in range(d):  # axis a (ITK order) is array axis d - 1 - a
            shape = [1] * d + [d]
            shape[d - 1 - a] = self.size[a]
            step = self.index_to_physical_matrix[:, a]  # mm per index along axis a
            out += (np.arange(self.size[a], dtype=np.float64)[:, None] * step).reshape(shape)
        return out.reshape(-1, d)


def vnl_inverse(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a direction matrix with vnl's closed form, bit-identical to elastix's.

    vnl ``vnl_inverse`` (``vnl/vnl_inverse.h``) computes ``1/det`` once and multiplies it into the
    adjugate for 2×2 and 3×3 matrices; ``np.linalg.inv`` (LU) rounds differently in the last bit,
    which can change a B-spline grid size. Other sizes fall back to ``np.linalg.inv``.

    Args:
        matrix: ``(D, D)`` float64 matrix, ITK order.

    Returns:
        ``(D, D)`` float64 inverse.
    """
    m = matrix
    if m.shape == (2, 2):
        det = 1.0 / (m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0])
        return np.array([[m[1, 1] * det, -m[0, 1] * det], [-m[1, 0] * det, m[0, 0] * det]])
    if m.shape == (3, 3):
        det = 1.0 / (m[0, 0] * m[1, 1] * m[2, 2] - m[0, 0] * m[2, 1] * m[1, 2] - m[1, 0] * m[0, 1] * m[2, 2]
                     + m[1, 0] * m[2, 1] * m[0, 2] + m[2, 0] * m[0, 1] * m[1, 2] - m[2, 0] * m[1, 1] * m[0, 2])
        adj = np.array([[m[1, 1] * m[2, 2] - m[1, 2] * m[2, 1], m[0, 2] * m[2, 1] - m[0, 1] * m[2, 2],
                         m[0, 1] * m[1, 2] - m[0, 2] * m[1, 1]],
                        [m[1, 2] * m[2, 0] - m[1, 0] * m[2, 2], m[0, 0] * m[2, 2] - m[0, 2] * m[2, 0],
                         m[0, 2] * m[1, 0] - m[0, 0] * m[1, 2]],
                        [m[1, 0] * m[2, 1] - m[1, 1] * m[2, 0], m[0, 1] * m[2, 0] - m[0, 0] * m[2, 1],
                         m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]]])
        return adj * det
    return np.linalg.inv(m)


def matrix_times_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``matrix @ p`` for each row ``p`` of ``points``, bit-identical to ITK's ``Matrix * Point``.

    ITK sums ``Σ_j M_ij·p_j`` left to right without fused multiply-adds; a BLAS matrix product rounds
    differently in the last bit.

    Args:
        matrix: ``(D, D)`` float64 matrix, ITK order.
        points: ``(N, D)`` points, ITK order.

    Returns:
        ``(N, D)`` float64 products.
    """
    out = np.zeros_like(points, dtype=np.float64)
    for j in range(points.shape[1]):
        out += points[:, j:j + 1] * matrix[:, j][None, :]
    return out
