"""Scoring of one registration: displacement error, tissue Dice, folding, NMI, time and memory.

Conventions (the same as ``elastix_bridge.demo_data``):

* a *field* is the fixed→moving displacement ``u(x) = T(x) − x`` on the fixed grid, in physical
  mm, as a numpy array ``[z, y, x, D]`` (numpy index order) whose last axis holds the ITK
  ``(x, y[, z])`` components — what ``itk.array_from_image(itk.transformix_deformation_field(...))``
  gives;
* a *geometry* is ``(spacing, origin, direction)`` in ITK ``(x, y, z)`` order: the physical point of
  the continuous ITK index ``i = (i_x, i_y, i_z)`` is ``p = origin + direction · diag(spacing) · i``.
"""
from __future__ import annotations

import threading
import time
from typing import Optional

import numpy as np

from elastix_bridge import demo_data

TISSUES = {1: "csf", 2: "gm", 3: "wm"}


def geometry(image):
    """``(spacing, origin, direction)`` of an itk image, float64 numpy arrays in ITK order."""
    import itk

    d = image.GetImageDimension()
    return (np.array(itk.spacing(image), dtype=np.float64),
            np.array(itk.origin(image), dtype=np.float64),
            np.array(image.GetDirection(), dtype=np.float64).reshape(d, d))


def physical_grid(shape_zyx, spacing, origin, direction) -> np.ndarray:
    """Physical points (mm, ITK (x, y, z) components) of every voxel: ``[*shape_zyx, D]``."""
    return demo_data.physical_grid(np.array(shape_zyx[::-1]), spacing, origin, direction)


def displacement_error(u_est: np.ndarray, u_true: np.ndarray, mask: np.ndarray) -> dict:
    """``|u_est − u_true|`` (mm) in ``mask``: ``mean``, ``median``, ``p95``, ``max``.

    Args:
        u_est, u_true: fields ``[z, y, x, D]`` (mm) on the same grid.
        mask: boolean ``[z, y, x]``.
    """
    if u_est.shape != u_true.shape:
        raise ValueError(f"field shapes differ: {u_est.shape} vs {u_true.shape}")
    err = np.linalg.norm(u_est[mask] - u_true[mask], axis=-1)
    return dict(mean=float(err.mean()), median=float(np.median(err)),
                p95=float(np.percentile(err, 95)), max=float(err.max()))


def jacobian_determinant(u: np.ndarray, spacing, direction) -> np.ndarray:
    """``det(I + ∂u/∂x)`` per voxel, ``∂/∂x`` with respect to *physical* coordinates.

    Central differences (one-sided at the border, ``np.gradient``) give ``∂u_c/∂i_k`` per
    continuous ITK index ``i_k`` (numpy axis ``D−1−k``). Since ``x = o + M i`` with
    ``M = direction · diag(spacing)``, ``∂u/∂x = (∂u/∂i) · M⁻¹``.

    Args:
        u: field ``[z, y, x, D]`` (mm, ITK components).
        spacing, direction: the grid's spacing (mm, ITK order) and direction matrix (D×D).

    Returns:
        array ``[z, y, x]`` of determinants.
    """
    d = u.shape[-1]
    m_inv = np.linalg.inv(np.asarray(direction, float) @ np.diag(np.asarray(spacing, float)))
    du_di = np.empty(u.shape[:-1] + (d, d))  # [..., component c, index axis k (ITK order)]
    for k in range(d):
        du_di[..., :, k] = np.gradient(u, axis=d - 1 - k)[..., :]
    jac = np.eye(d) + du_di @ m_inv
    return np.linalg.det(jac)


def folded_fraction(u: np.ndarray, spacing, direction, mask: np.ndarray) -> float:
    """Fraction of ``mask`` voxels where ``det(I + ∂u/∂x) ≤ 0`` (the transform folds)."""
    det = jacobian_determinant(u, spacing, direction)
    return float((det[mask] <= 0).mean())


def warp_nearest(moving_zyx: np.ndarray, moving_geo, u: np.ndarray, fixed_geo,
                 order: int = 0) -> np.ndarray:
    """Moving image sampled at ``T(x) = x + u(x)`` for every fixed voxel ``x``.

    Args:
        moving_zyx: moving array ``[z, y, x]``.
        moving_geo: ``(spacing, origin, direction)`` of the moving grid.
        u: field ``[z, y, x, D]`` on the fixed grid.
        fixed_geo: geometry of the fixed grid.
        order: 0 nearest neighbour (labels), 1 linear (intensities); 0 outside the moving grid.
    """
    points = physical_grid(u.shape[:-1], *fixed_geo) + u
    index = demo_data.physical_to_index(points, *moving_geo)
    out = demo_data.sample_at_index(moving_zyx.astype(np.float32), index, order=order, mode="constant", cval=0.0)
    return np.rint(out).astype(moving_zyx.dtype) if order == 0 else out


def dice_per_label(a: np.ndarray, b: np.ndarray, labels=TISSUES) -> dict:
    """Dice ``2|A∩B|/(|A|+|B|)`` per label value; keys ``dice_<name>`` (1.0 when both empty)."""
    out = {}
    for value, name in labels.items():
        aa, bb = a == value, b == value
        total = int(aa.sum()) + int(bb.sum())
        out[f"dice_{name}"] = 1.0 if total == 0 else 2.0 * int((aa & bb).sum()) / total
    return out


class PeakMemory:
    """Peak memory (bytes) of this process and all its descendants while active.

    A daemon thread sums the PSS (proportional set size, ``psutil`` ``memory_full_info().pss``;
    RSS where PSS is unavailable) over ``psutil.Process()`` and its recursive children every
    ``interval`` s. The bridge runs itk-elastix stages in forked children: their copy-on-write
    pages shared with the parent would be counted twice by summing RSS; PSS splits shared pages
    between the processes, so the sum is the tree's real footprint. Use as a context manager;
    afterwards ``baseline`` (before), ``peak`` and ``increase = peak − baseline``.
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.baseline = self.peak = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @staticmethod
    def _one(proc) -> int:
        try:
            return int(proc.memory_full_info().pss)
        except AttributeError:  # pragma: no cover - no PSS on this platform
            return int(proc.memory_info().rss)

    @classmethod
    def _tree_memory(cls) -> int:
        import psutil

        root = psutil.Process()
        total = cls._one(root)
        for child in root.children(recursive=True):
            try:
                total += cls._one(child)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return total

    def _loop(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self._tree_memory())
            except Exception:  # pragma: no cover - a process vanished mid-walk
                pass
            time.sleep(self.interval)

    def __enter__(self):
        self.baseline = self.peak = self._tree_memory()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._tree_memory())
        return False

    @property
    def increase(self) -> int:
        return self.peak - self.baseline
