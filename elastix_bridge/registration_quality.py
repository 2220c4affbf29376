"""How close a registration came to a known truth: warping by a displacement, displacement error, NMI, Dice.

The numbers the demo (``demo.py``), the accuracy suite (``benchmarks/accuracy``) and the tests report:

* :func:`warp_with_displacement`: an image resampled at ``x + u(x)`` (itk's ``WarpImageFilter``), e.g.
  the moving image mapped onto the fixed grid by the true displacement of :mod:`elastix_bridge.demo_data`;
* :func:`displacement_error`: the Euclidean error (mm) of a predicted fixed→moving displacement, as a
  field or as a points function, against the true one;
* :func:`nmi`: normalised mutual information (Studholme et al., Pattern Recognition 32(1), 1999:
  ``(H(A)+H(B))/H(A,B)``, 1 = independent, 2 = identical up to a bijection);
* :func:`dice`: the overlap of two binary images.

Conventions are those of :mod:`elastix_bridge.demo_data`: numpy arrays ``[z, y, x]`` (vector images
``[z, y, x, D]`` with components in ITK ``(x, y[, z])`` order), physical points in mm, and a
displacement ``u`` maps the fixed point ``x`` to the moving point ``x + u(x)`` (the convention of
``itk.transformix_deformation_field``). itk is imported only when an image or a path must be read.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Union

import numpy as np

from elastix_bridge.demo_data import image_geometry, physical_grid

if TYPE_CHECKING:  # pragma: no cover
    import itk

__all__ = [
    "dice",
    "displacement_error",
    "nmi",
    "warp_with_displacement",
]


def _itk():
    """The ``itk`` module, imported on first use."""
    import itk  # deferred: itk takes seconds to import; the command line imports this module (through demo)

    return itk


def _as_array(obj, vector=False) -> np.ndarray:
    """Path / itk image / array → numpy array ``[z, y, x(, D)]``."""
    if isinstance(obj, np.ndarray):
        return obj
    itk = _itk()
    if isinstance(obj, (str, Path)):
        obj = itk.imread(str(obj))
    return np.asarray(itk.array_from_image(obj))


def warp_with_displacement(image: itk.Image | str | Path, displacement: itk.Image | str | Path,
                           reference: itk.Image | str | Path | None = None, interpolator: str = "linear") -> itk.Image:
    """Resample ``image`` at ``x + u(x)`` with itk's displacement-field resampler.

    Uses ``itk.WarpImageFilter`` (the displacement-field equivalent of ``ResampleImageFilter`` +
    ``DisplacementFieldTransform``, which ITK Python wraps only for float fields), linear
    interpolation of the field.

    Output(x) = image(x + u(x)) on the grid of ``displacement`` (or ``reference``). With the
    fixed→moving field ``u`` of :func:`make_demo_pair` this maps a moving image onto the fixed
    grid (what elastix's result image is).

    Args:
        image: itk image or path (the moving image).
        displacement: itk vector image or path, components (x, y[, z]) in mm.
        reference: optional itk image or path whose grid is used; default the displacement grid.
        interpolator: ``"linear"`` or ``"nearest"``.

    Returns:
        itk image (float32) on the reference grid.
    """
    itk = _itk()
    if isinstance(image, (str, Path)):
        image = itk.imread(str(image), itk.F)
    else:
        image = itk.cast_image_filter(
            image, ttype=(type(image), itk.Image[itk.F, image.GetImageDimension()]))
    if isinstance(displacement, (str, Path)):
        displacement = itk.imread(str(displacement))
    d = image.GetImageDimension()
    field_type = itk.Image[itk.Vector[itk.F, d], d]
    if not isinstance(displacement, field_type):  # e.g. a VectorImage or a double field
        arr = np.asarray(itk.array_from_image(displacement), dtype=np.float32)
        field = itk.image_from_array(arr, ttype=field_type)
        field.CopyInformation(displacement)
        displacement = field
    ref = displacement if reference is None else (
        itk.imread(str(reference)) if isinstance(reference, (str, Path)) else reference)
    interp = (itk.NearestNeighborInterpolateImageFunction if interpolator == "nearest"
              else itk.LinearInterpolateImageFunction).New(image)
    warp = itk.WarpImageFilter[type(image), type(image), field_type].New(
        Input=image, DisplacementField=displacement, Interpolator=interp, EdgePaddingValue=0.0)
    warp.SetOutputParametersFromImage(ref)
    warp.Update()
    return warp.GetOutput()


def displacement_error(transform_field_or_points_fn: Union[object, Callable], true_displacement: itk.Image | str | Path,
                       mask: Optional[itk.Image | str | Path | np.ndarray] = None) -> dict:
    """Euclidean error (mm) between a predicted and the true fixed→moving displacement.

    Args:
        transform_field_or_points_fn: one of
            * an itk vector image / path / numpy array ``[z, y, x, D]`` on the fixed grid — the
              predicted displacement ``u_pred(x)`` in mm, (x, y[, z]) components (e.g. from
              ``itk.transformix_deformation_field``);
            * a callable mapping fixed physical points ``[N, D]`` (mm, (x, y, z)) to the
              corresponding moving points ``[N, D]`` (e.g. a transformix point transform).
        true_displacement: itk vector image or path (``true_displacement.nii.gz``).
        mask: optional binary image / path / array on the fixed grid; default all voxels.

    Returns:
        dict ``mean``, ``median``, ``p95``, ``max`` (mm) and ``n`` (voxels evaluated).

    Raises:
        ValueError: the predicted field or the mask does not match the true field's grid.
    """
    itk = _itk()
    if isinstance(true_displacement, (str, Path)):
        true_displacement = itk.imread(str(true_displacement))
    true = np.asarray(itk.array_from_image(true_displacement), dtype=np.float64)
    spatial = true.shape[:-1]
    if mask is None:
        inside = np.ones(spatial, dtype=bool)
    else:
        inside = _as_array(mask).astype(bool)
        if inside.shape != spatial:
            raise ValueError(f"mask shape {inside.shape} does not match the displacement grid "
                             f"{spatial} (numpy [z, y, x] order)")
    if callable(transform_field_or_points_fn) and not hasattr(transform_field_or_points_fn,
                                                              "GetLargestPossibleRegion"):
        size, spacing, origin, direction = image_geometry(true_displacement)
        points = physical_grid(size, spacing, origin, direction)[inside]
        mapped = np.asarray(transform_field_or_points_fn(points), dtype=np.float64)
        if mapped.shape != points.shape:
            raise ValueError(f"the points function returned shape {mapped.shape}, expected "
                             f"{points.shape}")
        pred = mapped - points
    else:
        pred_full = np.asarray(_as_array(transform_field_or_points_fn), dtype=np.float64)
        if pred_full.shape != true.shape:
            raise ValueError(f"predicted displacement shape {pred_full.shape} does not match the "
                             f"true displacement {true.shape} (numpy [z, y, x, D] order)")
        pred = pred_full[inside]
    err = np.linalg.norm(pred - true[inside], axis=-1)
    if err.size == 0:
        return dict(mean=float("nan"), median=float("nan"), p95=float("nan"), max=float("nan"),
                    n=0)
    return dict(mean=float(err.mean()), median=float(np.median(err)),
                p95=float(np.percentile(err, 95)), max=float(err.max()), n=int(err.size))


def nmi(a: itk.Image | str | Path | np.ndarray, b: itk.Image | str | Path | np.ndarray, bins: int = 64,
        mask: Optional[np.ndarray] = None) -> float:
    """Normalised mutual information ``(H(A) + H(B)) / H(A, B)`` (Studholme 1999).

    Intensities are binned into ``bins`` equal-width bins over each array's own range (in the
    mask). 2 means one image determines the other (identical arrays give exactly 2), 1 means
    independent.

    Args:
        a, b: arrays of the same shape (numpy, or itk images / paths).
        bins: number of histogram bins per image.
        mask: optional boolean array (same shape) selecting the voxels used.

    Returns:
        NMI in [1, 2]; 2.0 when both are constant in the mask (H(A, B) = 0).

    Raises:
        ValueError: shape mismatch or empty mask.
    """
    a = np.asarray(_as_array(a), dtype=np.float64)
    b = np.asarray(_as_array(b), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"nmi: shapes differ: {a.shape} vs {b.shape}")
    if mask is not None:
        m = np.asarray(_as_array(mask)).astype(bool)
        if m.shape != a.shape:
            raise ValueError(f"nmi: mask shape {m.shape} differs from {a.shape}")
        a, b = a[m], b[m]
    a, b = a.ravel(), b.ravel()
    if a.size == 0:
        raise ValueError("nmi: no voxels (empty mask)")

    def edges(v: np.ndarray) -> np.ndarray:
        lo, hi = float(v.min()), float(v.max())
        return np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)

    joint, _, _ = np.histogram2d(a, b, bins=[edges(a), edges(b)])
    p = joint / joint.sum()

    def entropy(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    h_ab = entropy(p)
    if h_ab <= 0.0:
        return 2.0
    return (entropy(p.sum(axis=1)) + entropy(p.sum(axis=0))) / h_ab


def dice(a: itk.Image | str | Path | np.ndarray, b: itk.Image | str | Path | np.ndarray) -> float:
    """Dice overlap ``2|A∩B| / (|A| + |B|)`` of non-zero voxels; 1.0 when both are empty.

    Args:
        a, b: arrays (or itk images / paths) of the same shape.

    Raises:
        ValueError: shape mismatch.
    """
    a = np.asarray(_as_array(a)).astype(bool)
    b = np.asarray(_as_array(b)).astype(bool)
    if a.shape != b.shape:
        raise ValueError(f"dice: shapes differ: {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total
