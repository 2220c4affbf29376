"""Quality-control picture of a registration result: :func:`write_qc_figure`.

One PNG shows, on slices through the centre of the fixed image (one slice in 2D, three
orthogonal slices in 3D):

* a checkerboard of the fixed image and the warped moving image;
* an overlay, fixed image in magenta and warped moving image in green (grey where they agree);
* the determinant of the spatial Jacobian of the final transform, diverging colormap centred
  at 1, folded voxels (det <= 0) in black; the number of folded voxels in the whole fixed
  domain is in the panel title;
* the metric per iteration, one curve per resolution level, one plot per stage, read from
  elastix's ``IterationInfo.<stage>.R<level>.txt`` files (elastix and the bridge engine both write
  them).

Everything transform-related comes from itk-elastix's transformix: the warped moving image and
the Jacobian determinant are what transformix computes from the TransformParameters maps, never a
re-implementation.

Index order. ITK indexes a voxel as ``(i, j, k)`` (x fastest) and gives spacing as ``(x, y, z)``;
``itk.array_from_image`` returns numpy arrays indexed ``[k, j, i]`` (z, y, x). This module works on
the numpy arrays and converts explicitly.

Orientation. Slices are taken from the fixed image's *index grid*, not resampled in physical
space. Each slice is flipped and/or transposed (never interpolated) so that its screen axes follow
the nearest physical axis of the fixed image's direction cosines, with elastix's LPS world
convention: 3D views are shown radiologically (axial: patient right on the left, anterior up;
coronal and sagittal: superior up), 2D images with x to the right and y down (row 0 at the top,
like an ordinary picture). Pixels are drawn with their physical aspect ratio (spacing). For
oblique direction cosines the picture is therefore only approximately anatomical; the title says
so.

matplotlib is imported only when a figure is drawn (``pip install 'elastix-bridge[qc]'``), and only
its object-oriented API is used (``matplotlib.figure.Figure`` with the Agg canvas): pyplot's global
state and the user's backend are left alone.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from elastix_bridge.core.files import write_atomically
from elastix_bridge.core.image_io import read_image
from elastix_bridge.core.transform_io import to_parameter_object
from elastix_bridge.runtime.itk_elastix import as_float_image

if TYPE_CHECKING:  # pragma: no cover
    import itk

log = logging.getLogger("elastix_bridge")

__all__ = ["write_qc_figure"]

# Figure geometry (inches at ``dpi``): the picture's pixel size depends only on the dimension.
_WIDTH_IN = 13.0
_IMAGE_ROW_IN = {2: 4.6, 3: 3.7}
_METRIC_ROW_IN = 3.0
_TITLE_IN = 0.9

_ITERATION_FILE = re.compile(r"^IterationInfo\.(\d+)\.R(\d+)\.txt$")
_LPS = ("L", "P", "S")  # the letter of each physical axis' positive direction (elastix/ITK world)
_OPPOSITE = {"L": "R", "P": "A", "S": "I", "R": "L", "A": "P", "I": "S"}

# 3D views: (name, physical axis across the slice, physical axis to the right, physical axis downwards,
# and the sign each must have on screen). Radiological display: +x (patient left) to the right,
# +y (posterior) downwards in the axial view, +z (superior) upwards in coronal and sagittal views.
_VIEWS_3D = (
    ("axial", 2, (0, +1), (1, +1)),
    ("coronal", 1, (0, +1), (2, -1)),
    ("sagittal", 0, (1, +1), (2, -1)),
)


def write_qc_figure(fixed_image: itk.Image | str | Path, moving_image: itk.Image | str | Path,
                    transform_parameter_object: itk.ParameterObject | Sequence[Any] | str | Path | None,
                    path: str | Path, output_directory: str | Path | None = None, *,
                    stages: str = "all", title: str | None = None, dpi: int = 100) -> Path:
    """Write a PNG that shows how well ``moving_image`` was registered to ``fixed_image``.

    The moving image is warped with ``itk.TransformixFilter`` (transformix, exactly what
    ``itk.transformix_filter`` applies), which also computes the determinant of the spatial
    Jacobian (``ComputeDeterminantOfSpatialJacobian``) on the fixed grid; transformix runs in a
    temporary folder that is removed afterwards, so nothing is written into the working directory.

    Panels (see the module docstring for the orientation rules):

    * rows: the fixed image's index grid sliced through its centre: one row in 2D; in 3D three
      rows, axial / coronal / sagittal (the slices across the index axes closest to physical z, y
      and x), each labelled with the index letter and value (``i, j, k`` = ITK index axes 0, 1, 2
      = numpy axes 2, 1, 0);
    * columns: checkerboard (fixed / warped moving, each windowed to its own 0.5-99.5
      percentiles), overlay (fixed magenta, warped moving green), Jacobian determinant (``RdBu_r``
      centred at 1; det <= 0 black; one colorbar for the column); 3D panels carry the
      anatomical letters R/L, A/P, S/I at their edges;
    * bottom row: ``2:Metric`` of each ``IterationInfo.<stage>.R<level>.txt`` in
      ``output_directory`` against ``1:ItNr``, one plot per stage, one curve per level (for
      several metrics, the weighted total that the optimizer minimises).

    The PNG also carries the numbers in a PNG text chunk ``elastix-bridge-qc`` (JSON):
    ``folded_voxels``, ``voxels``, ``folded_percent``, ``jacobian_min``, ``jacobian_max``,
    ``dimension``, ``iteration_files`` (``[{"stage", "level", "iterations"}]``), e.g. for
    ``PIL.Image.open(path).text["elastix-bridge-qc"]``.

    Args:
        fixed_image: ``itk.Image`` (2D or 3D, scalar pixels) or the path of an image file: the
            image the registration used as fixed image; its grid is the one shown.
        moving_image: ``itk.Image`` or path, same dimension: the moving image of the registration.
        transform_parameter_object: the registration's result, what transformix applies: an
            ``itk.ParameterObject`` (e.g. the second value returned by
            ``elastix_registration_method``; map ``i`` starts from maps ``0..i-1``), a list of maps,
            or the path of a ``TransformParameters`` file (its ``InitialTransformParameterFileName``
            chain is followed by transformix). None: the ``TransformParameters.<n>.txt`` with the
            highest ``n`` in ``output_directory``.
        path: the PNG to write (its folder must exist). It is written under a temporary name in
            the same folder and renamed, so an existing file is replaced only by a complete one.
        output_directory: the registration's output folder, where ``IterationInfo.*.R*.txt`` are
            read (elastix writes them only with ``(WriteIterationInfo "true")``; the bridge engine
            by default). None: no metric plot.
        stages: ``"all"`` (a plot per stage found) or ``"last"`` (only the highest stage number).
        title: first line of the figure title (default: ``"Registration QC"``).
        dpi: resolution; the PNG is ``13 * dpi`` pixels wide and ``(0.9 + 3.0 + 4.6) * dpi`` (2D)
            or ``(0.9 + 3.0 + 3 * 3.7) * dpi`` (3D) pixels high: 1300 x 850 and 1300 x 1500 at
            the default 100.

    Returns:
        ``Path`` of the written PNG.

    Raises:
        ImportError: matplotlib is not installed (``pip install 'elastix-bridge[qc]'``).
        FileNotFoundError: an image or TransformParameters file, ``output_directory`` or the folder
            of ``path`` does not exist.
        ValueError: images that are not 2D/3D scalar images of one dimension, ``stages`` not
            ``"all"``/``"last"``, or a transform whose output grid (``Size``, ``Spacing``,
            ``Origin``, ``Direction`` of its last map) is not the fixed image's grid.
        RuntimeError: transformix failed (its message is included).
    """
    start = time.perf_counter()
    require_matplotlib()
    if stages not in ("all", "last"):
        raise ValueError(f"stages must be 'all' or 'last'; got {stages!r}")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder of the QC picture {path} does not exist; create it first")
    if output_directory is not None and not Path(output_directory).is_dir():
        raise FileNotFoundError(f"output directory {output_directory} (for IterationInfo files) does not exist; "
                                "pass the folder the registration wrote, or None for no metric plot")
    fixed = _load_image(fixed_image, "fixed image")
    moving = _load_image(moving_image, "moving image")
    dim = fixed.GetImageDimension()
    if dim not in (2, 3) or moving.GetImageDimension() != dim:
        raise ValueError(f"the QC picture needs two 2D or two 3D images; got a {dim}D fixed and a "
                         f"{moving.GetImageDimension()}D moving image")
    tpo = read_transform_object(transform_parameter_object, output_directory)
    maps = [dict(tpo.GetParameterMap(i)) for i in range(tpo.GetNumberOfParameterMaps())]

    warped, det = _transformix(moving, tpo)
    _check_same_grid(fixed, warped)

    itk = _itk()
    f = itk.array_from_image(fixed).astype(np.float32)     # [z,] y, x
    m = itk.array_from_image(warped).astype(np.float32)    # on the fixed grid
    d = itk.array_from_image(det).astype(np.float64)
    folded = int(np.count_nonzero(d <= 0))
    histories = read_iteration_histories(output_directory, stages) if output_directory is not None else []
    stats = {
        "dimension": dim,
        "voxels": int(d.size),
        "folded_voxels": folded,
        "folded_percent": 100.0 * folded / d.size,
        "jacobian_min": float(d.min()),
        "jacobian_max": float(d.max()),
        "iteration_files": [{"stage": s, "level": r, "iterations": len(v)} for s, r, _, v, _ in histories],
    }
    fig = _draw(fixed, f, m, d, histories, maps, stats, title or "Registration QC", dpi)
    _save_atomically(fig, path, dpi, stats)
    log.info("QC picture %s written in %.1f s (%d folded voxels).", path, time.perf_counter() - start, folded)
    return path


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def require_matplotlib() -> None:
    """Raise ImportError with the fix when matplotlib is missing (checked before any work)."""
    try:
        import matplotlib  # noqa: F401  # deferred: optional (the [qc] extra); this checks it is there before any work
    except ImportError as error:
        raise ImportError("the QC picture needs matplotlib, which is not installed; "
                          "pip install 'elastix-bridge[qc]' (or matplotlib)") from error


def _load_image(image, what: str):
    """An ``itk.Image`` with float pixels from an image or a file name."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, what)
    if not hasattr(image, "GetImageDimension"):
        raise ValueError(f"the {what} must be an itk.Image or an image file name; got {type(image).__name__}")
    try:
        return as_float_image(image)
    except Exception as error:  # itk raises for vector/RGB pixels
        raise ValueError(f"the {what} must have scalar pixels ({error})") from error


def read_transform_object(tp, output_directory=None):
    """``itk.ParameterObject`` from a ParameterObject, maps, a TransformParameters file, or, with ``tp``
    None, the last ``TransformParameters.<k>.txt`` of a registration's output folder (transformix
    follows its chain of initial transforms).

    Raises:
        ValueError, FileNotFoundError: nothing to read, naming what to pass.
    """
    if tp is None:
        if output_directory is None:
            raise ValueError("no transform: pass transform_parameter_object, or output_directory with the "
                             "registration's TransformParameters.<n>.txt files")
        files = sorted(Path(output_directory).glob("TransformParameters.*.txt"),
                       key=lambda p: int(p.name.split(".")[1]) if p.name.split(".")[1].isdigit() else -1)
        if not files:
            raise FileNotFoundError(f"no TransformParameters.<n>.txt in {output_directory}; pass "
                                    "transform_parameter_object (the registration's result)")
        tp = files[-1]
    if isinstance(tp, (str, os.PathLike)):
        if not Path(tp).is_file():
            raise FileNotFoundError(f"TransformParameters file {tp} does not exist; check the path")
        po = _itk().ParameterObject.New()
        po.ReadParameterFile(str(tp))
        return po
    if hasattr(tp, "GetNumberOfParameterMaps"):
        if tp.GetNumberOfParameterMaps() == 0:
            raise ValueError("the transform parameter object holds no maps; pass the registration's result")
        return tp
    return to_parameter_object(tp)


def _transformix(moving, tpo):
    """Warped moving image and spatial Jacobian determinant, both from one transformix run.

    transformix writes the determinant as ``spatialJacobian.<ResultImageFormat>`` into its output
    directory (and may write into the working directory when it has none), so it runs in a
    temporary folder that is deleted afterwards.
    """
    itk = _itk()
    with tempfile.TemporaryDirectory(prefix="elastix-bridge-qc-") as tmp:
        try:
            transformix = itk.TransformixFilter.New(moving)
            transformix.SetTransformParameterObject(tpo)
            transformix.SetComputeDeterminantOfSpatialJacobian(True)
            transformix.SetOutputDirectory(tmp)
            transformix.SetLogToConsole(False)
            transformix.UpdateLargestPossibleRegion()
        except RuntimeError as error:
            raise RuntimeError(f"transformix could not apply the transform for the QC picture: {error}") from error
        warped = transformix.GetOutput()
        written = [p for p in Path(tmp).glob("spatialJacobian.*") if p.suffix not in (".raw", ".zraw")]
        if not written:
            raise RuntimeError(f"transformix wrote no spatialJacobian image into {tmp} (files: "
                               f"{sorted(p.name for p in Path(tmp).iterdir())}); check ResultImageFormat")
        det = itk.imread(str(written[0]), itk.F)
    return warped, det


def _check_same_grid(fixed, warped) -> None:
    """ValueError when transformix's output grid is not the fixed image's."""
    itk = _itk()
    size_f = tuple(fixed.GetLargestPossibleRegion().GetSize())
    size_w = tuple(warped.GetLargestPossibleRegion().GetSize())
    same = size_f == size_w
    if same:
        scale = max(float(np.max(np.abs(itk.array_from_matrix(fixed.GetDirection())))), 1.0)
        same = (np.allclose(tuple(fixed.GetSpacing()), tuple(warped.GetSpacing()), rtol=1e-4)
                and np.allclose(tuple(fixed.GetOrigin()), tuple(warped.GetOrigin()),
                                atol=1e-3 * max(fixed.GetSpacing()))
                and np.allclose(itk.array_from_matrix(fixed.GetDirection()),
                                itk.array_from_matrix(warped.GetDirection()), atol=1e-4 * scale))
    if not same:
        raise ValueError(
            f"the transform's output grid (Size {list(size_w)}, Spacing {list(warped.GetSpacing())}, Origin "
            f"{list(warped.GetOrigin())} of its last map) is not the fixed image's (Size {list(size_f)}, Spacing "
            f"{list(fixed.GetSpacing())}, Origin {list(fixed.GetOrigin())}); pass the fixed image the registration used")


def read_iteration_histories(folder, stages: str = "all"):
    """The metric per iteration of every ``IterationInfo.<stage>.R<level>.txt`` in an output folder.

    Args:
        folder: a registration's output folder (elastix's or the bridge's: both write these files).
        stages: ``"all"``, or ``"last"`` for the last stage's levels only.

    Returns:
        ``[(stage, level, iterations, metric values, header name)]`` sorted by stage and level; the
        arrays are float64 numpy arrays (rows cut short by a stopped run are left out).
    """
    found = []
    for p in Path(folder).iterdir():
        match = _ITERATION_FILE.match(p.name)
        if match:
            found.append((int(match.group(1)), int(match.group(2)), p))
    if stages == "last" and found:
        last = max(s for s, _, _ in found)
        found = [x for x in found if x[0] == last]
    histories = []
    for stage, level, p in sorted(found):
        lines = [line for line in p.read_text().splitlines() if line.strip()]
        if not lines:
            continue
        header = lines[0].split("\t")
        names = [h.split(":", 1)[-1] for h in header]
        if "Metric" not in names:
            log.warning("QC picture: %s has no Metric column; skipped", p)
            continue
        col, it_col = names.index("Metric"), (names.index("ItNr") if "ItNr" in names else None)
        its, values = [], []
        for row_number, line in enumerate(lines[1:]):
            cells = line.split("\t")
            try:
                value = float(cells[col])
                it = float(cells[it_col]) if it_col is not None else float(row_number)
            except (IndexError, ValueError):
                continue  # a row cut short (a run that was stopped) or a non-number
            its.append(it)
            values.append(value)
        histories.append((stage, level, np.asarray(its), np.asarray(values), header[col]))
    return histories


# ---------------------------------------------------------------------------------------------
# Slices and display orientation
# ---------------------------------------------------------------------------------------------


def _axis_to_world(image):
    """For each ITK index axis: (nearest physical axis, sign) from the direction cosines.

    Falls back to the identity when two index axes are nearest to the same physical axis
    (directions at 45 degrees).
    """
    direction = _itk().array_from_matrix(image.GetDirection())  # column a = physical direction of index axis a
    dim = direction.shape[0]
    nearest = [int(np.argmax(np.abs(direction[:, a]))) for a in range(dim)]
    if sorted(nearest) != list(range(dim)):
        nearest = list(range(dim))
    signs = [1 if direction[nearest[a], a] >= 0 else -1 for a in range(dim)]
    oblique = bool(np.max(np.abs(np.abs(direction) - np.abs(direction).round())) > 1e-3)
    return nearest, signs, oblique


def display_views(image):
    """The slices to draw: ``[(label, slicer, transpose, flip_rows, flip_cols, (row mm, col mm), edges)]``.

    ``slicer`` indexes the numpy array ``[z,] y, x``; the slice is transposed when ``transpose``
    and then flipped, so that it is shown with row 0 at the top. ``edges`` are the orientation
    letters (left, right, top, bottom) or None (2D).
    """
    size = tuple(int(s) for s in image.GetLargestPossibleRegion().GetSize())  # ITK order (x, y[, z])
    spacing = tuple(float(s) for s in image.GetSpacing())
    dim = len(size)
    nearest, signs, _ = _axis_to_world(image)
    index_of = {w: a for a, w in enumerate(nearest)}  # physical axis -> ITK index axis
    letters = "ijk"
    if dim == 2:
        specs = [("", None, (0, +1), (1, +1))]
    else:
        specs = _VIEWS_3D
    views = []
    for name, across, (right_w, right_sign), (down_w, down_sign) in specs:
        col_a, row_a = index_of[right_w], index_of[down_w]  # ITK index axes shown across / down
        slicer = [slice(None)] * dim
        label = name
        if across is not None:
            cut_a = index_of[across]
            # The same physical slice whichever way the axis is stored (for even sizes too).
            centre = size[cut_a] // 2 if signs[cut_a] > 0 else size[cut_a] - 1 - size[cut_a] // 2
            slicer[dim - 1 - cut_a] = centre  # numpy axis of ITK axis a is dim-1-a
            label = f"{name}, {letters[cut_a]} = {centre}"
        # After slicing, the remaining numpy axes are the ITK axes in decreasing order.
        remaining = sorted((a for a in range(dim) if across is None or a != index_of[across]), reverse=True)
        transpose = remaining.index(row_a) != 0
        flip_cols = signs[col_a] * right_sign < 0
        flip_rows = signs[row_a] * down_sign < 0
        edges = None
        if dim == 3:
            right = _LPS[right_w] if right_sign > 0 else _OPPOSITE[_LPS[right_w]]
            down = _LPS[down_w] if down_sign > 0 else _OPPOSITE[_LPS[down_w]]
            edges = (_OPPOSITE[right], right, _OPPOSITE[down], down)
        views.append((label, tuple(slicer), transpose, flip_rows, flip_cols, (spacing[row_a], spacing[col_a]), edges))
    return views


def display_slice(array, view):
    """The 2D slice of a numpy image for ``view``, oriented for display (row 0 at the top)."""
    _, slicer, transpose, flip_rows, flip_cols, _, _ = view
    s = array[slicer]
    if transpose:
        s = s.T
    if flip_rows:
        s = s[::-1]
    if flip_cols:
        s = s[:, ::-1]
    return s


def _window(array):
    """Intensity window ``(low, high)``: the 0.5 and 99.5 percentiles (of at most ~2 M voxels)."""
    flat = array.ravel()
    step = max(1, flat.size // 2_000_000)
    low, high = (float(v) for v in np.percentile(flat[::step], [0.5, 99.5]))
    if not high > low:
        high = low + 1.0
    return low, high


def _scaled(s, window):
    low, high = window
    return np.clip((s - low) / (high - low), 0.0, 1.0)


def _checkerboard(a, b, pixel_mm):
    """Tiles of ``a`` and ``b`` (display arrays in [0, 1]), 8 tiles along the physically longer side."""
    rows, cols = a.shape
    tile_mm = max(rows * pixel_mm[0], cols * pixel_mm[1]) / 8.0
    r = (np.arange(rows) * pixel_mm[0] // tile_mm).astype(int)
    c = (np.arange(cols) * pixel_mm[1] // tile_mm).astype(int)
    use_a = (r[:, None] + c[None, :]) % 2 == 0
    return np.where(use_a, a, b)


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------


def _fmt_vector(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _draw(fixed_image, f, m, d, histories, maps, stats, title, dpi):
    mpl = _matplotlib()
    dim = f.ndim
    views = display_views(fixed_image)
    n_rows = len(views)
    height = _TITLE_IN + _METRIC_ROW_IN + n_rows * _IMAGE_ROW_IN[dim]
    fig = mpl.figure.Figure(figsize=(_WIDTH_IN, height), dpi=dpi, layout="constrained")
    mpl.backends.backend_agg.FigureCanvasAgg(fig)
    grid = fig.add_gridspec(n_rows + 1, 3, height_ratios=[_IMAGE_ROW_IN[dim]] * n_rows + [_METRIC_ROW_IN])

    window_f, window_m = _window(f), _window(m)
    low, high = stats["jacobian_min"], stats["jacobian_max"]
    folded = stats["folded_voxels"]
    # Diverging around 1 (blue: compression, red: expansion); det <= 0 (folding) is black ("under").
    vmin = float(np.finfo(np.float32).tiny) if folded else min(low, 0.95)
    norm = mpl.colors.TwoSlopeNorm(vcenter=1.0, vmin=vmin, vmax=max(high, 1.05))
    cmap = mpl.colormaps["RdBu_r"].with_extremes(under="black")

    jacobian_axes = []
    for row, view in enumerate(views):
        label, _, _, _, _, pixel_mm, edges = view
        aspect = pixel_mm[0] / pixel_mm[1]  # height / width of one displayed pixel
        fs, ms = _scaled(display_slice(f, view), window_f), _scaled(display_slice(m, view), window_m)
        ds = display_slice(d, view)
        axes = [fig.add_subplot(grid[row, c]) for c in range(3)]
        axes[0].imshow(_checkerboard(fs, ms, pixel_mm), cmap="gray", vmin=0, vmax=1, aspect=aspect,
                       interpolation="nearest")
        axes[1].imshow(np.stack([fs, ms, fs], axis=-1), aspect=aspect, interpolation="nearest")
        image = axes[2].imshow(ds, cmap=cmap, norm=norm, aspect=aspect, interpolation="nearest")
        jacobian_axes.append(axes[2])
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        if edges is not None:
            for ax in axes:
                _orientation_letters(ax, edges)
        if dim == 3:
            axes[0].set_ylabel(label, fontsize=11)
            axes[2].set_xlabel(f"folded voxels in this slice: {int(np.count_nonzero(ds <= 0))}", fontsize=9)
        if row == 0:
            axes[0].set_title("checkerboard: fixed | warped moving", fontsize=11)
            axes[1].set_title("overlay: fixed magenta, warped moving green", fontsize=11)
            axes[2].set_title(f"Jacobian determinant, range {low:.3g} to {high:.3g}\n"
                              f"folded (det \u2264 0): {folded} of {stats['voxels']} voxels "
                              f"({stats['folded_percent']:.3g} %)",
                              fontsize=11, color="firebrick" if folded else "black")
    bar = fig.colorbar(image, ax=jacobian_axes, extend="min" if folded else "neither", shrink=0.9,
                       aspect=25 * n_rows)
    bar.set_label("det of spatial Jacobian" + (" (black: \u2264 0, folded)" if folded else ""), fontsize=9)
    bar.ax.tick_params(labelsize=8)

    _draw_histories(fig, grid[n_rows, :], histories, maps)

    spacing = _fmt_vector(fixed_image.GetSpacing())
    size = _fmt_vector(fixed_image.GetLargestPossibleRegion().GetSize())
    if dim == 3:
        _, _, oblique = _axis_to_world(fixed_image)
        orientation = ("radiological (patient right on the left), axes flipped/swapped to the fixed image's "
                       "nearest LPS axes" + (" (oblique direction cosines: approximate)" if oblique else ""))
    else:
        orientation = "x to the right, y downwards (row 0 at the top)"
    fig.suptitle(f"{title}: {folded} folded voxels ({stats['folded_percent']:.3g} %)\n"
                 f"fixed image index grid, size {size}, spacing {spacing} mm (index order i, j{', k' if dim == 3 else ''}); "
                 f"{'central slices' if dim == 3 else 'whole image'}, not resampled, physical aspect ratio\n{orientation}",
                 fontsize=11)
    return fig


def _orientation_letters(ax, edges) -> None:
    """Anatomical letters (left, right, top, bottom) at the panel's edges."""
    left, right, top, bottom = edges
    style = dict(transform=ax.transAxes, fontsize=9, color="yellow", fontweight="bold",
                 path_effects=[_matplotlib().patheffects.withStroke(linewidth=2, foreground="black")])
    ax.text(0.01, 0.5, left, ha="left", va="center", **style)
    ax.text(0.99, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.99, top, ha="center", va="top", **style)
    ax.text(0.5, 0.01, bottom, ha="center", va="bottom", **style)


def _draw_histories(fig, cell, histories, maps) -> None:
    """One metric plot per stage, one curve per resolution level."""
    by_stage = {}
    for stage, level, its, values, column in histories:
        by_stage.setdefault(stage, []).append((level, its, values, column))
    if not by_stage:
        ax = fig.add_subplot(cell)
        ax.axis("off")
        ax.text(0.5, 0.5, "no metric curves: no IterationInfo.<stage>.R<level>.txt files given\n"
                "(pass output_directory; elastix writes them with (WriteIterationInfo \"true\"))",
                ha="center", va="center", fontsize=10, color="dimgray", transform=ax.transAxes)
        return
    n_stages = max(by_stage) + 1
    cells = cell.subgridspec(1, len(by_stage))
    for c, (stage, levels) in enumerate(sorted(by_stage.items())):
        ax = fig.add_subplot(cells[0, c])
        for level, its, values, column in levels:
            ax.plot(its, values, linewidth=0.9, label=f"level R{level} ({len(values)} it.)")
        # The TransformParameters maps end with the stages' maps (any -t0 maps come first).
        k = len(maps) - n_stages + stage
        transform = maps[k].get("Transform", ("",))[0] if 0 <= k < len(maps) else ""
        ax.set_title(f"stage {stage}{': ' + transform if transform else ''}  (IterationInfo.{stage}.R*.txt)",
                     fontsize=10)
        ax.set_xlabel("iteration (1:ItNr)", fontsize=9)
        ax.set_ylabel(f"metric ({levels[0][3]})", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(_matplotlib().ticker.MaxNLocator(integer=True))
        ax.legend(fontsize=8, loc="best")


def _save_atomically(fig, path: Path, dpi: int, stats: dict) -> None:
    """Save as PNG under a temporary name beside ``path``, then rename it into place."""
    write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=dpi, metadata={
        "Software": "elastix-bridge", "elastix-bridge-qc": json.dumps(stats)}), binary=True)


# ---------------------------------------------------------------------------------------------
# Deferred imports
# ---------------------------------------------------------------------------------------------


def _itk():
    """The ``itk`` module, imported on first use."""
    import itk  # deferred: itk takes seconds to import; the command line imports this module for every command

    return itk


def _matplotlib():
    """``matplotlib`` with the submodules the picture uses imported: the Agg canvas, colors, the
    object-oriented ``Figure``, path effects and tick locators (never pyplot: module docstring)."""
    import matplotlib  # deferred: optional (the [qc] extra), and only a picture needs it
    import matplotlib.backends.backend_agg  # deferred: as matplotlib
    import matplotlib.colors  # deferred: as matplotlib
    import matplotlib.figure  # deferred: as matplotlib
    import matplotlib.patheffects  # deferred: as matplotlib
    import matplotlib.ticker  # deferred: as matplotlib

    return matplotlib
