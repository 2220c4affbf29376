"""The demo's picture, ``demo.png``: the images, the registered results and the displacement-error maps.

Axial, coronal and sagittal slices through the centre of the fixed mask (one axial panel in 2D), in
radiological display with the patient's sides labelled, the fixed-mask contour on every panel, and
the error maps on the fixed image inside the mask. matplotlib (the ``[demo]`` extra) is imported
only when a picture is written.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["write_picture"]


def _display_slices(array_zyx, direction, centre_zyx):
    """Axial / coronal / sagittal slices of a ``[z, y, x]`` array in radiological display.

    Axial: patient right on screen left, anterior up; coronal: right on the left, superior up;
    sagittal: anterior on the left, superior up. ITK physical space is LPS; ``direction`` is
    assumed axis-aligned (sign of its diagonal; MNI: ``diag(−1, −1, 1)``, i.e. index x grows
    towards the patient's right and index y towards anterior).
    """
    sx, sy, sz = (np.sign(direction[i, i]) or 1.0 for i in range(3))
    cz, cy, cx = centre_zyx
    # rows/columns that should increase in LPS: screen right = +x (L) and +y (P); screen down = +y (P) / −z (I)
    axial = array_zyx[cz]                       # rows y, columns x
    axial = axial[::-1] if sy < 0 else axial
    axial = axial[:, ::-1] if sx < 0 else axial
    coronal = array_zyx[:, cy, :]               # rows z, columns x
    coronal = coronal[::-1] if sz > 0 else coronal
    coronal = coronal[:, ::-1] if sx < 0 else coronal
    sagittal = array_zyx[:, :, cx]              # rows z, columns y
    sagittal = sagittal[::-1] if sz > 0 else sagittal
    sagittal = sagittal[:, ::-1] if sy < 0 else sagittal
    return {"axial": axial, "coronal": coronal, "sagittal": sagittal}


def _display_slice_2d(array_yx, direction):
    sx, sy = (direction[i, i] < 0 for i in range(2))
    a = array_yx[::-1] if sy else array_yx
    return a[:, ::-1] if sx else a


_LABELS = {"axial": ("R", "L", "A", "P"), "coronal": ("R", "L", "S", "I"), "sagittal": ("A", "P", "S", "I")}


def write_picture(path: str | Path, images: dict, errors: dict, mask: np.ndarray, direction: np.ndarray,
                  spacing: np.ndarray | Sequence[float], title: str) -> Path:
    """Save ``demo.png``: images with the fixed-mask contour, then the displacement-error maps.

    Args:
        path: output PNG.
        images: ``{label: array [z, y, x] or [y, x]}`` (fixed, moving, results), intensity panels.
        errors: ``{label: error magnitude (mm) array}``, same shape; shown inside the mask only.
        mask: fixed mask array (bool).
        direction: ITK direction matrix (numpy ``D×D``); spacing: ITK order.
        title: figure title.
    """
    import matplotlib  # deferred: optional (the [demo] extra), and only the demo's picture needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: after matplotlib.use("Agg"), as matplotlib

    d = mask.ndim
    if d == 3:
        zs, ys, xs = np.nonzero(mask)
        centre = tuple(int(round((v.min() + v.max()) / 2)) for v in (zs, ys, xs))
        views = ["axial", "coronal", "sagittal"]
        cut = lambda a: _display_slices(a, direction, centre)  # noqa: E731
        aspect = {"axial": spacing[1] / spacing[0], "coronal": spacing[2] / spacing[0],
                  "sagittal": spacing[2] / spacing[1]}
    else:
        views = ["axial"]
        cut = lambda a: {"axial": _display_slice_2d(a, direction)}  # noqa: E731
        aspect = {"axial": spacing[1] / spacing[0]}
    cols = list(images) + list(errors)
    fig = plt.figure(figsize=(2.3 * len(cols) + 0.8, 2.6 * len(views) + 0.5), constrained_layout=True)
    grid = fig.add_gridspec(len(views), len(cols) + 1, width_ratios=[1.0] * len(cols) + [0.06])
    axes = np.array([[fig.add_subplot(grid[r, c]) for c in range(len(cols))] for r in range(len(views))])
    mask_cut = cut(mask.astype(float))
    vmax_err = max(float(np.percentile(e[mask], 99)) for e in errors.values()) if errors else 1.0
    err_im = None
    for c, label in enumerate(cols):
        is_err = label in errors
        arr = errors[label] if is_err else images[label]
        sl = cut(np.where(mask, arr, np.nan) if is_err else arr)
        vmax = float(np.percentile(arr[mask], 99.5)) if not is_err else vmax_err
        for r, view in enumerate(views):
            ax = axes[r, c]
            if is_err:
                ax.imshow(cut(images[cols[0]])[view], cmap="gray", aspect=aspect[view], interpolation="nearest")
                err_im = ax.imshow(sl[view], cmap="magma", vmin=0, vmax=vmax_err, aspect=aspect[view],
                                   interpolation="nearest")
            else:
                ax.imshow(sl[view], cmap="gray", vmin=0, vmax=vmax, aspect=aspect[view], interpolation="nearest")
            ax.contour(mask_cut[view], levels=[0.5], colors="c", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            left, right, top, bottom = _LABELS[view]
            for x, y, text, ha, va in ((0.01, 0.5, left, "left", "center"), (0.99, 0.5, right, "right", "center"),
                                       (0.5, 0.99, top, "center", "top"), (0.5, 0.01, bottom, "center", "bottom")):
                ax.text(x, y, text, transform=ax.transAxes, color="y", fontsize=7, ha=ha, va=va)
            if r == 0:
                ax.set_title(label, fontsize=9)
            if c == 0:
                ax.set_ylabel(view, fontsize=9)
    if err_im is not None:
        fig.colorbar(err_im, cax=fig.add_subplot(grid[:, -1]), label="displacement error (mm)")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
