"""Level images and masks (numpy arrays + :class:`ImageGeometry`).

Arrays are stored in numpy ``(z, y, x)`` order (``array_zyx``); everything geometric
(indices, sizes, radii) is in ITK ``(x, y, z)`` order (``*_xyz``).

Sources: docs/design.md §E0 (conventions), §E4 (masks, erosion);
ITK ``ImageMaskSpatialObject::IsInsideInObjectSpace`` and ``StatisticsImageFilter``;
elastix ``Common/itkErodeMaskImageFilter.hxx``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from scipy import ndimage

from elastix_bridge.core.geometry import ImageGeometry

if TYPE_CHECKING:  # pragma: no cover
    import itk


def _check_shape(geometry: ImageGeometry, array_zyx: np.ndarray) -> None:
    if tuple(array_zyx.shape) != geometry.shape_zyx:
        raise ValueError(f"array shape {tuple(array_zyx.shape)} (z, y, x order) does not match the "
                         f"geometry size {geometry.size} (x, y, z order); expected {geometry.shape_zyx}")


@dataclass
class LevelImage:
    """A scalar float image: geometry plus a ``float32`` array in ``(z, y, x)`` order.

    Attributes:
        geometry: grid of the image (ITK order).
        array_zyx: voxel values, shape ``geometry.shape_zyx``, dtype ``float32``.

    Raises:
        ValueError: if the array shape does not match the geometry.
    """

    geometry: ImageGeometry
    array_zyx: np.ndarray

    def __post_init__(self) -> None:
        self.array_zyx = np.ascontiguousarray(self.array_zyx, dtype=np.float32)
        _check_shape(self.geometry, self.array_zyx)

    @classmethod
    def from_itk(cls, image: itk.Image) -> "LevelImage":
        """Copy a scalar ``itk.Image`` (any pixel type) into a float32 :class:`LevelImage`.

        Raises:
            ValueError: for multi-component images or a non-zero start index.
        """
        import itk  # deferred: itk loads in seconds, and only the ITK conversions need it

        if image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError("LevelImage.from_itk needs a scalar image; got "
                             f"{image.GetNumberOfComponentsPerPixel()} components per pixel")
        geometry = ImageGeometry.from_itk(image)
        array = np.array(itk.array_view_from_image(image), dtype=np.float32, copy=True)
        return cls(geometry, array.reshape(geometry.shape_zyx))

    def to_itk(self) -> itk.Image:
        """A new ``itk.Image[itk.F, D]`` with this geometry and a copy of the values."""
        import itk  # deferred: itk loads in seconds, and only the ITK conversions need it

        image = itk.image_from_array(np.ascontiguousarray(self.array_zyx, dtype=np.float32))
        self.geometry.apply_to_itk(image)
        return image

    def statistics(self) -> np.ndarray:
        """``[min, max, mean, sigma]`` as ``np.float32[4]``, like ITK ``StatisticsImageFilter``.

        sigma = sqrt of the unbiased variance (divisor N − 1), accumulated in float64;
        0 for a single voxel.
        """
        a = self.array_zyx.astype(np.float64).ravel()
        n = a.size
        s = a.sum()
        mean = s / n
        if n > 1:
            var = (np.square(a).sum() - s * s / n) / (n - 1)
            sigma = np.sqrt(max(var, 0.0))
        else:
            sigma = 0.0
        return np.array([a.min(), a.max(), mean, sigma], dtype=np.float32)


@dataclass
class Mask:
    """A binary mask: geometry plus a ``bool`` array in ``(z, y, x)`` order.

    Attributes:
        geometry: grid of the mask (ITK order); masks are used at full resolution (docs/design.md §E4).
        array_zyx: ``True`` = inside, shape ``geometry.shape_zyx``. Treat as immutable: a per-device
            torch copy is cached for :meth:`contains`.

    Raises:
        ValueError: if the array shape does not match the geometry.
    """

    geometry: ImageGeometry
    array_zyx: np.ndarray

    def __post_init__(self) -> None:
        self.array_zyx = np.ascontiguousarray(np.asarray(self.array_zyx) != 0)
        _check_shape(self.geometry, self.array_zyx)
        self._tensor_cache = {}

    @classmethod
    def from_itk(cls, image: itk.Image) -> "Mask":
        """Binarise an ``itk.Image`` of any scalar pixel type: non-zero = inside."""
        import itk  # deferred: itk loads in seconds, and only the ITK conversions need it

        geometry = ImageGeometry.from_itk(image)
        array = np.asarray(itk.array_view_from_image(image))
        return cls(geometry, (array != 0).reshape(geometry.shape_zyx).copy())

    def to_itk(self) -> itk.Image:
        """A new ``itk.Image[itk.UC, D]`` with values 0/1 and this geometry."""
        import itk  # deferred: itk loads in seconds, and only the ITK conversions need it

        image = itk.image_from_array(self.array_zyx.astype(np.uint8))
        self.geometry.apply_to_itk(image)
        return image

    def _flat_tensor(self, device):
        key = str(device)
        t = self._tensor_cache.get(key)
        if t is None:
            t = torch.as_tensor(self.array_zyx.reshape(-1), device=device)
            self._tensor_cache[key] = t
        return t

    def contains(self, points: "torch.Tensor") -> "torch.Tensor":
        """Which physical points lie inside the mask (ITK ``ImageMaskSpatialObject`` rule, docs/design.md §E4).

        The nearest mask voxel ``floor(i + 0.5)`` of the continuous index ``i`` must lie inside the
        mask buffer and be non-zero.

        Args:
            points: ``(N, D)`` physical points in mm (ITK order), any float dtype/device.

        Returns:
            ``(N,)`` bool tensor on ``points.device``.
        """
        if points.ndim != 2 or points.shape[1] != self.geometry.dimension:
            raise ValueError(f"points must have shape (N, {self.geometry.dimension}); got {tuple(points.shape)}")
        p = points if points.dtype == torch.float64 else points.to(torch.float64)
        index = torch.floor(self.geometry.physical_to_index(p) + 0.5)
        size = self.geometry._tensors(index)[3]
        inside = ((index >= 0) & (index <= size - 1)).all(dim=1)
        idx = torch.where(inside[:, None], index, 0.0).to(torch.int64)
        linear = idx @ self._strides(points.device)
        return inside & self._flat_tensor(points.device)[linear]

    def _strides(self, device) -> "torch.Tensor":
        """Linear-index strides ``(D,)`` int64 of the mask buffer (x fastest), cached per device."""
        key = ("strides", str(device))
        if key not in self._tensor_cache:
            strides = np.cumprod((1,) + self.geometry.size[:-1])
            self._tensor_cache[key] = torch.as_tensor(strides, device=device, dtype=torch.int64)
        return self._tensor_cache[key]

    def bounding_box_index(self) -> tuple[np.ndarray, np.ndarray]:
        """Inclusive index box of the non-zero voxels, ITK order.

        Returns:
            ``(first_xyz, last_xyz)``: two ``np.int64[D]`` arrays.

        Raises:
            ValueError: if the mask is empty.
        """
        nz = np.nonzero(self.array_zyx)
        if len(nz[0]) == 0:
            raise ValueError("the mask is empty (no non-zero voxel); it has no bounding box")
        first_zyx = np.array([a.min() for a in nz], dtype=np.int64)
        last_zyx = np.array([a.max() for a in nz], dtype=np.int64)
        return first_zyx[::-1].copy(), last_zyx[::-1].copy()

    def eroded(self, radius_xyz: int | Sequence[int]) -> "Mask":
        """Box erosion of half-width ``radius_xyz[d]`` voxels per axis; the image border does not erode.

        Equivalent to elastix's parabolic erosion of a 0/1 mask (docs/design.md §E4,
        ``Common/itkErodeMaskImageFilter.hxx``): a voxel survives iff no zero voxel lies within
        ``|Δ_d| <= radius_xyz[d]`` on every axis (outside the image counts as inside the mask).

        Args:
            radius_xyz: ``D`` non-negative integers (ITK order), or one integer for all axes.

        Returns:
            a new :class:`Mask` with the same geometry.

        Raises:
            ValueError: on negative radii or a wrong number of entries.
        """
        d = self.geometry.dimension
        r = np.broadcast_to(np.asarray(radius_xyz, dtype=np.int64).reshape(-1), (d,)) \
            if np.size(radius_xyz) == 1 else np.asarray(radius_xyz, dtype=np.int64).reshape(-1)
        if r.shape != (d,) or np.any(r < 0):
            raise ValueError(f"radius_xyz must be {d} non-negative integers; got {radius_xyz!r}")
        if not np.any(r):
            return Mask(self.geometry, self.array_zyx.copy())
        structure = np.ones(tuple(int(2 * v + 1) for v in r[::-1]), dtype=bool)
        out = ndimage.binary_erosion(self.array_zyx, structure=structure, border_value=1)
        return Mask(self.geometry, out)
