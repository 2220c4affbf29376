"""Does a stage's transform look like a registration that went right? Folding and plausibility, per stage.

After every stage, :func:`check_stage` measures the stage's transform (the chain up to and
including that stage, as transformix applies it) over the fixed mask (the whole fixed image
without one) and compares it with thresholds that the stage's parameter map may set:

* ``QCMaximumFoldedFraction`` (default ``0.001``): the share of fixed-mask voxels where the
  determinant of the spatial Jacobian is ≤ 0 (the transform folds space there: anatomy
  overlaps itself). The determinant is elastix's own (transformix
  ``ComputeDeterminantOfSpatialJacobian``, as ``transformix -jac all``).
* ``QCMaximumVolumeChange`` (default ``4``): how far the determinant may be from 1 anywhere in the
  mask, as a factor: outside [1/c, c] the transform compresses or expands some anatomy implausibly
  (checked when the transform does not fold beyond its limit, which warns already).
* ``QCMaximumDisplacement`` (mm): for a B-spline stage, the largest displacement of the stage's own
  control points (an upper bound of the stage's own displacement anywhere: a cubic B-spline
  displacement is a convex combination of them); default twice the final grid spacing
  (``FinalGridSpacingInPhysicalUnits``, else ``FinalGridSpacingInVoxels`` × the fixed spacing).
  A B-spline stage that moves anatomy by more than two control-point spacings is not a local
  deformation: a global misalignment that an affine stage should take first, or a divergence.
  For a linear stage, the length of its translation (default 50 mm).
* ``QCMaximumScaleChange`` (default ``0.25``): for a linear stage, how far a scale factor (a singular
  value of its matrix) may be from 1: outside [1/(1+c), 1+c] the stage shrinks or grows the anatomy
  implausibly for images of one body region.

The numbers are always logged; a check over a threshold is logged as a warning (console and
``elastix.log``). :func:`collected_checks` hands them to Python callers; a cohort
(``elastix-bridge batch``) puts them in ``summary.csv``. docs/qc.md explains the numbers and what to do when one warns.

Space: the fixed image's physical space (mm); the determinant is computed on the fixed grid,
restricted to the bounding box of the fixed mask.
"""
from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from elastix_bridge.core.parameters import ParameterError
from elastix_bridge.core.transform_io import to_parameter_object

if TYPE_CHECKING:  # pragma: no cover
    import itk

    from elastix_bridge.core.parameters import ParameterMap

log = logging.getLogger("elastix_bridge")


def _itk():
    """The ``itk`` module, imported on first use."""
    import itk  # deferred: itk's import takes seconds, and validation imports this module

    return itk


#: The parameter-map keys of the check and their defaults (None: derived from the map, see the module docstring).
THRESHOLD_KEYS = {"QCMaximumFoldedFraction": 0.001, "QCMaximumVolumeChange": 4.0, "QCMaximumDisplacement": None,
                  "QCMaximumScaleChange": 0.25}
_LOWEST = {"QCMaximumVolumeChange": 1.0}  # the smallest valid value of a key (others: 0)
DEFAULT_LINEAR_TRANSLATION_MM = 50.0
_BSPLINES = ("BSplineTransform", "RecursiveBSplineTransform", "BSplineStackTransform")
_LINEAR = ("TranslationTransform", "EulerTransform", "SimilarityTransform", "AffineTransform",
           "AffineDTITransform", "AffineLogTransform")


@dataclass
class StageCheck:
    """What :func:`check_stage` measured for one stage. Lengths in mm; fractions in [0, 1]."""

    stage: int
    transform: str
    voxels: int                   # fixed-mask voxels measured
    folded_fraction: float        # share of them with det(spatial Jacobian) <= 0
    jacobian_min: float           # smallest determinant over them
    jacobian_max: float
    displacement_mm: Optional[float] = None   # B-spline: largest control-point displacement; linear: |translation|
    scales: tuple = ()            # linear stages: the singular values of the matrix
    warnings: list = field(default_factory=list)

    def record(self) -> dict:
        """Flat numbers for a table (``summary.csv``, ``report.json``)."""
        out = {"folded_fraction": self.folded_fraction, "jacobian_min": self.jacobian_min}
        if self.displacement_mm is not None:
            out["displacement_mm"] = self.displacement_mm
        out["transform_warnings"] = " | ".join(self.warnings)
        return out


# The open collectors: process-wide, not per thread, because the command may run a stage in another thread.
_COLLECTORS: list = []


@contextlib.contextmanager
def collected_checks():
    """Collect the :class:`StageCheck` of every stage checked inside the ``with`` block (a list, in stage order)."""
    checks: list = []
    _COLLECTORS.append(checks)
    try:
        yield checks
    finally:
        _COLLECTORS.remove(checks)


def thresholds(pmap: "ParameterMap") -> dict:
    """The stage's thresholds from its parameter map, with the defaults filled in.

    Raises:
        elastix_bridge.core.parameters.ParameterError: a ``QC*`` value that is not a non-negative number (checked before any work by
            :mod:`elastix_bridge.validation`).
    """
    out = {}
    for key, default in THRESHOLD_KEYS.items():
        if not pmap.has(key):
            out[key] = default
            continue
        text = pmap.get(key)
        try:
            value = float(text)
        except (TypeError, ValueError):
            value = math.nan
        lowest = _LOWEST.get(key, 0.0)
        if not math.isfinite(value) or value < lowest:
            raise ParameterError(f"({key} {text}) must be a number >= {lowest:g} ({_UNITS[key]}); see docs/qc.md")
        out[key] = value
    return out


_UNITS = {"QCMaximumFoldedFraction": "a share of the fixed-mask voxels, e.g. 0.001 for 0.1 %",
          "QCMaximumVolumeChange": "a factor, e.g. 3 for Jacobian determinants within 1/3 .. 3",
          "QCMaximumDisplacement": "mm", "QCMaximumScaleChange": "e.g. 0.25 for scale factors within 0.8-1.25"}


def check_stage(stage: int, pmap: "ParameterMap", transform_maps: Sequence["ParameterMap"], fixed_image: "itk.Image",
                fixed_mask: Optional["itk.Image"] = None, engine: str = "") -> StageCheck:
    """Measure stage ``stage``'s transform, log the numbers, and warn when a threshold is passed.

    Args:
        stage: the stage number (elastix's parameter-map index), for the messages.
        pmap: the stage's parameter map (its ``QC*`` thresholds, its grid spacing).
        transform_maps: the TransformParameters maps of the chain up to and including this stage, in
            order, as transformix applies them (an initial transform file named by the first is followed).
        fixed_image: the fixed image (its grid, physical space).
        fixed_mask: where to measure (non-zero voxels); ``None``: the whole fixed image.
        engine: ``"bridge"`` or ``"elastix"``, for the messages.

    Returns:
        The :class:`StageCheck`; also appended to the list of an enclosing :func:`collected_checks`.

    Raises:
        RuntimeError: transformix could not compute the determinant (naming its error).
    """
    limits = thresholds(pmap)
    own = transform_maps[-1]
    kind = own.get("Transform", default="")
    det = _determinant(transform_maps, fixed_image, fixed_mask)
    check = StageCheck(stage=stage, transform=kind, voxels=int(det.size),
                       folded_fraction=float(np.count_nonzero(det <= 0) / max(det.size, 1)),
                       jacobian_min=float(det.min()) if det.size else math.nan,
                       jacobian_max=float(det.max()) if det.size else math.nan)
    where = f"stage {stage}" + (f" ({engine}, parameter map {stage})" if engine else "")
    folded_limit = limits["QCMaximumFoldedFraction"]
    if check.folded_fraction > folded_limit:
        check.warnings.append(
            f"{where}: the transform folds {100 * check.folded_fraction:.2f} % of the fixed-mask voxels (determinant "
            f"of the spatial Jacobian <= 0, smallest {check.jacobian_min:.3g}), above (QCMaximumFoldedFraction "
            f"{folded_limit:g}): the registration has likely gone wrong there; look at the result (--qc), and use a "
            "coarser grid (FinalGridSpacingInPhysicalUnits), smaller steps (SP_a, MaximumStepLength) or fewer "
            "iterations")
    change = limits["QCMaximumVolumeChange"]
    if check.voxels and check.folded_fraction <= folded_limit and not 1 / change <= check.jacobian_min \
            <= check.jacobian_max <= change:
        check.warnings.append(
            f"{where}: the transform shrinks or grows the anatomy locally by more than a factor {change:g} (Jacobian "
            f"determinant {check.jacobian_min:.3g} .. {check.jacobian_max:.3g}, beyond (QCMaximumVolumeChange "
            f"{change:g})): implausible for one subject's anatomy; look at the result (--qc), and check that the "
            "metric sees alignment for this pair (elastix-bridge model check)")
    if kind in _BSPLINES:
        check.displacement_mm = _largest_control_point_displacement(own)
        limit = limits["QCMaximumDisplacement"]
        default = " (the default: twice the final grid spacing)" if limit is None else ""
        limit = 2 * _final_grid_spacing(pmap, fixed_image) if limit is None else limit
        if check.displacement_mm > limit:
            check.warnings.append(
                f"{where}: its B-spline moves a control point by {check.displacement_mm:.1f} mm, above "
                f"(QCMaximumDisplacement {limit:g}) mm{default}: not a local "
                "deformation; run an affine stage first (e.g. parameter_files/affine_mi.txt) or check that the "
                "metric sees alignment for this pair (elastix-bridge model check)")
    elif kind in _LINEAR:
        matrix, translation = _linear_parts(own)
        check.displacement_mm = float(np.linalg.norm(translation))
        check.scales = tuple(float(s) for s in np.linalg.svd(matrix, compute_uv=False))
        limit = limits["QCMaximumDisplacement"]
        limit = DEFAULT_LINEAR_TRANSLATION_MM if limit is None else limit
        if check.displacement_mm > limit:
            check.warnings.append(
                f"{where}: its {kind} translates by {check.displacement_mm:.1f} mm, above (QCMaximumDisplacement "
                f"{limit:g}) mm: check that the images show the same region, or set a larger limit if they are "
                "that far apart")
        change = limits["QCMaximumScaleChange"]
        bad = [s for s in check.scales if not 1 / (1 + change) <= s <= 1 + change]
        if bad:
            check.warnings.append(
                f"{where}: its {kind} scales the anatomy by {', '.join(f'{s:.3g}' for s in check.scales)}, outside "
                f"1/(1+c) .. 1+c for (QCMaximumScaleChange {change:g}): an implausible affine for images of one "
                "body region; check the masks and the initialisation (AutomaticTransformInitialization)")
    _report(check, where)
    for collected in _COLLECTORS:
        collected.append(check)
    return check


def _report(check: StageCheck, where: str) -> None:
    extra = ""
    if check.displacement_mm is not None:
        extra = (f", largest control-point displacement {check.displacement_mm:.2f} mm" if check.transform in _BSPLINES
                 else f", translation {check.displacement_mm:.2f} mm, scales "
                      f"{' '.join(f'{s:.4g}' for s in check.scales)}")
    log.info("Transform check, %s: %d of %d fixed-mask voxels folded (%.4f %%); Jacobian determinant %.4g .. %.4g%s.",
             where, round(check.folded_fraction * check.voxels), check.voxels, 100 * check.folded_fraction,
             check.jacobian_min, check.jacobian_max, extra)
    for message in check.warnings:
        log.warning("WARNING: %s.", message)


def _final_grid_spacing(pmap: "ParameterMap", fixed_image) -> float:
    """The largest final B-spline control-point spacing (mm): elastix's ``FinalGridSpacingInPhysicalUnits``,
    else ``FinalGridSpacingInVoxels`` (default 16) × the fixed spacing."""
    if pmap.has("FinalGridSpacingInPhysicalUnits"):
        return max(float(v) for v in pmap.values("FinalGridSpacingInPhysicalUnits"))
    voxels = [float(v) for v in pmap.values("FinalGridSpacingInVoxels")] if pmap.has("FinalGridSpacingInVoxels") \
        else [16.0]
    spacing = [float(s) for s in _itk().spacing(fixed_image)]
    voxels = voxels * len(spacing) if len(voxels) == 1 else voxels
    return max(v * s for v, s in zip(voxels, spacing))


def _largest_control_point_displacement(tp_map: "ParameterMap") -> float:
    """max over control points of |c| (mm): ``TransformParameters`` holds D blocks (x, y[, z]) of coefficients."""
    params = np.asarray([float(v) for v in tp_map.values("TransformParameters")], dtype=np.float64)
    dimension = len(tp_map.values("GridSize"))
    if not params.size or dimension == 0:
        return 0.0
    return float(np.linalg.norm(params.reshape(dimension, -1), axis=0).max())


def _linear_parts(tp_map: "ParameterMap"):
    """The matrix ``A`` and translation ``t`` (mm) of a linear TransformParameters map: ``T(x) = A (x - c) + c + t``.

    Parameter layouts as elastix writes them (Components/Transforms/*): Translation ``t``; Euler 2D
    ``θ, t``; 3D ``θx, θy, θz, t`` (ITK's Euler3DTransform, ZXY order unless ``ComputeZYX``); Similarity
    2D ``s, θ, t``; 3D versor ``v, t, s``; Affine ``A`` (row-major) then ``t``. Others: the identity matrix.
    """
    kind = tp_map.get("Transform")
    p = np.asarray([float(v) for v in tp_map.values("TransformParameters")], dtype=np.float64)
    d = int(tp_map.get("FixedImageDimension", default=3 if p.size in (3, 6, 7, 12) else 2))
    eye = np.eye(d)
    if kind == "TranslationTransform":
        return eye, p[:d]
    if kind == "AffineTransform" and p.size == d * d + d:
        return p[:d * d].reshape(d, d), p[d * d:]
    if kind == "EulerTransform":
        if d == 2:
            c, s = math.cos(p[0]), math.sin(p[0])
            return np.array([[c, -s], [s, c]]), p[1:3]
        rx, ry, rz = (_rotation(axis, a) for axis, a in zip("xyz", p[:3]))
        zyx = tp_map.get("ComputeZYX", default=False, type=bool)
        return (rz @ ry @ rx if zyx else rz @ rx @ ry), p[3:6]
    if kind == "SimilarityTransform":
        if d == 2:
            c, s = math.cos(p[1]), math.sin(p[1])
            return p[0] * np.array([[c, -s], [s, c]]), p[2:4]
        return p[6] * _versor_matrix(p[:3]), p[3:6]
    return eye, p[-d:] if p.size >= d else np.zeros(d)


def _rotation(axis: str, angle: float):
    c, s = math.cos(angle), math.sin(angle)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _versor_matrix(v):
    """ITK's VersorRigid3DTransform: the unit quaternion (x, y, z, w = sqrt(1 - |v|^2))."""
    x, y, z = v
    w = math.sqrt(max(0.0, 1 - x * x - y * y - z * z))
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _determinant(transform_maps, fixed_image, fixed_mask):
    """det of the spatial Jacobian (transformix) at the fixed-mask voxels, as a flat float array.

    transformix computes it on the last map's output grid; that grid is cut to the bounding box of
    the mask (fewer voxels), and the image it resamples is a 2-voxel stand-in (its result is not used).
    """
    itk = _itk()
    fixed_size = [int(s) for s in itk.size(fixed_image)]
    mask = None if fixed_mask is None else itk.array_from_image(fixed_mask) > 0   # [z,] y, x
    if mask is not None and mask.shape != tuple(reversed(fixed_size)):
        mask = None  # a mask on another grid: validated elsewhere; measure the whole image
    if mask is not None and not mask.any():
        return np.zeros(0)
    if mask is None:
        start = [0] * len(fixed_size)
        size = fixed_size
    else:
        nonzero = np.nonzero(mask)
        lo = [int(a.min()) for a in nonzero][::-1]     # ITK (x, y, z) order
        hi = [int(a.max()) for a in nonzero][::-1]
        start, size = lo, [h - l + 1 for l, h in zip(lo, hi)]
    spacing = np.array([float(s) for s in itk.spacing(fixed_image)])
    direction = np.array(fixed_image.GetDirection(), dtype=np.float64).reshape(len(size), len(size))
    origin = np.array([float(o) for o in itk.origin(fixed_image)]) + direction @ (np.array(start) * spacing)
    maps = [m.copy() for m in transform_maps]
    last = maps[-1]
    last.set("Size", [str(s) for s in size])
    last.set("Index", ["0"] * len(size))
    last.set("Origin", [repr(float(o)) for o in origin])
    last.set("FinalBSplineInterpolationOrder", ["0"])
    last.set("ResultImageFormat", ["mha"])
    last.set("ResultImagePixelType", ["float"])
    image_type = itk.Image[itk.F, len(size)]
    stand_in = image_type.New()
    stand_in.SetRegions([2] * len(size))
    stand_in.Allocate()
    stand_in.FillBuffer(0.0)
    stand_in.SetOrigin(fixed_image.GetOrigin())
    stand_in.SetSpacing(fixed_image.GetSpacing())
    with tempfile.TemporaryDirectory(prefix="elastix-bridge-check-") as tmp:
        try:
            transformix = itk.TransformixFilter[image_type].New(stand_in)
            transformix.SetTransformParameterObject(to_parameter_object(maps))
            transformix.SetComputeDeterminantOfSpatialJacobian(True)
            transformix.SetOutputDirectory(tmp)
            transformix.SetLogToConsole(False)
            transformix.UpdateLargestPossibleRegion()
        except RuntimeError as error:
            raise RuntimeError(f"transformix could not compute the spatial Jacobian for the transform check: {error}"
                               ) from error
        det = np.asarray(itk.array_from_image(itk.imread(str(Path(tmp) / "spatialJacobian.mha"), itk.F)),
                         dtype=np.float64)
    if mask is None:
        return det.ravel()
    box = tuple(slice(l, l + n) for l, n in zip(start[::-1], size[::-1]))
    return det[mask[box]]
