"""What a cohort's summary says of one registered pair: final metric values, Dice per label, TRE.

Everything is read from the pair's output folder as any elastix user would: the metric from the
``IterationInfo`` files, the transform from the last ``TransformParameters.<k>.txt`` (its chain
followed by transformix), which warps the moving labels (nearest neighbour) onto the fixed grid
and maps the fixed points into the moving image.

Convention (elastix): the transform maps fixed-image points to moving-image points, so the target
registration error of point ``j`` is ``‖T(p_fixed,j) − p_moving,j‖`` in mm.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from elastix_bridge.batch.manifest import Pair, read_points
from elastix_bridge.core.image_io import read_image, read_image_geometry
from elastix_bridge.qc import read_iteration_histories, read_transform_object


def final_metrics(folder: str | Path) -> dict[str, float]:
    """``{"metric_<stage>": value}``: each stage's last metric value (its last level's last iteration)."""
    last = {}
    for stage, level, _, values, _ in read_iteration_histories(folder):
        if len(values):
            last[stage] = float(values[-1])  # sorted by level: the last level's value wins
    return {f"metric_{stage}": value for stage, value in sorted(last.items())}


def dice_per_label(folder: str | Path, fixed_labels: str | Path, moving_labels: str | Path) -> dict[str, float]:
    """Dice of every label after registration: the moving labels warped by transformix (nearest neighbour).

    Args:
        folder: the pair's output folder.
        fixed_labels, moving_labels: label images (integer values; 0 is background).

    Returns:
        ``{"dice_<label>": value}`` for every non-zero label of either image (sorted), and
        ``"dice_mean"`` over them.

    Raises:
        ValueError: the warped labels do not lie on the fixed labels' grid.
    """
    import itk  # deferred: itk's import takes seconds; only a pair with labels needs it here

    moving = read_image(moving_labels, "moving_labels")
    fixed = itk.array_from_image(read_image(fixed_labels, "fixed_labels"))
    po = read_transform_object(None, folder)
    po.SetParameter(po.GetNumberOfParameterMaps() - 1, "ResampleInterpolator", "FinalNearestNeighborInterpolator")
    with tempfile.TemporaryDirectory(prefix="elastix-bridge-labels-") as tmp:
        transformix = itk.TransformixFilter.New(moving)
        transformix.SetTransformParameterObject(po)
        transformix.SetOutputDirectory(tmp)
        transformix.SetLogToConsole(False)
        transformix.UpdateLargestPossibleRegion()
        warped = np.rint(itk.array_from_image(transformix.GetOutput())).astype(np.int64)
    if warped.shape != fixed.shape:
        raise ValueError(f"warped moving labels have shape {warped.shape}, the fixed labels {fixed.shape}")
    fixed = np.rint(fixed).astype(np.int64)
    labels = sorted((set(np.unique(fixed).tolist()) | set(np.unique(warped).tolist())) - {0})
    out = {}
    for label in labels:
        a, b = fixed == label, warped == label
        total = int(a.sum()) + int(b.sum())
        out[f"dice_{label}"] = 2.0 * int((a & b).sum()) / total if total else 1.0
    if out:
        out["dice_mean"] = float(np.mean(list(out.values())))
    return out


def target_registration_error(folder: str | Path, pair: Pair) -> dict[str, float]:
    """Mean, median and largest TRE in mm of the pair's corresponding points (transformix's point mapping).

    Returns:
        ``{"tre_mean_mm", "tre_median_mm", "tre_max_mm"}``.
    """
    import itk  # deferred: itk's import takes seconds; only a pair with points needs it here

    fixed_points = read_points(pair.fixed_points, read_image_geometry(pair.fixed, "fixed"))
    moving_points = read_points(pair.moving_points, read_image_geometry(pair.moving, "moving"))
    po = read_transform_object(None, folder)
    with tempfile.TemporaryDirectory(prefix="elastix-bridge-points-") as tmp:
        points_file = Path(tmp) / "fixed_points.txt"
        points_file.write_text("point\n%d\n" % len(fixed_points)
                               + "".join(" ".join(repr(float(v)) for v in p) + "\n" for p in fixed_points))
        transformix = itk.TransformixFilter.New(read_image(pair.moving, "moving"))
        transformix.SetTransformParameterObject(po)
        transformix.SetFixedPointSetFileName(str(points_file))
        transformix.SetOutputDirectory(tmp)
        transformix.SetLogToConsole(False)
        transformix.UpdateLargestPossibleRegion()
        mapped = _output_points(Path(tmp) / "outputpoints.txt")
    errors = np.linalg.norm(mapped - moving_points, axis=1)
    return {"tre_mean_mm": float(errors.mean()), "tre_median_mm": float(np.median(errors)),
            "tre_max_mm": float(errors.max())}


def _output_points(path: Path) -> np.ndarray:
    """The ``OutputPoint = [ x y z ]`` column of transformix's ``outputpoints.txt``, ``(N, D)`` mm."""
    rows = []
    for line in path.read_text().splitlines():
        part = line.split("OutputPoint = [")[1].split("]")[0]
        rows.append([float(v) for v in part.split()])
    return np.asarray(rows, dtype=np.float64)
