"""Real anatomy with a known deformation and contrast change, without any download.

The MNI ICBM152 2009a symmetric T1 template ships inside the nilearn wheel
(``nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``, 1 mm, 197×233×189,
ITK direction ``diag(−1, −1, 1)``, intensities 0..255, already skull-stripped with a rim of CSF).
:func:`make_demo_pair` turns it into a multimodal registration problem with a ground truth:

* ``fixed``: the template resampled to ``voxel_size`` mm (3D), or the axial slice through the
  middle of the brain mask (2D, in-plane geometry of the 3D grid: spacing, origin ``(x, y)`` and
  the 2×2 direction block ``diag(−1, −1)``);
* ``moving``: the fixed image warped by a known smooth transform ``T(x) = x + u(x)`` (a small
  rotation about the brain centre, a small translation and a random Gaussian-smoothed field) and
  then given a T2-like contrast (CSF bright, WM dark; non-monotonic), a smooth multiplicative bias
  field and a little noise;
* ``true_displacement``: ``u`` on the fixed grid, in physical mm, components in ITK ``(x, y[, z])``
  order — the same convention as ``itk.transformix_deformation_field``: the fixed point ``x``
  corresponds to the moving point ``x + u(x)``.

:func:`make_pair` generalises it (other contrasts: PD, FLAIR, inverted, another non-monotonic
remap, T1; larger rotations, translations and a scale change; other deformation, bias and noise
levels) and also writes CSF/GM/WM tissue labels from the MNI GM/WM probability maps;
``make_demo_pair`` is ``make_pair`` with its defaults (bit-identical outputs) minus the labels.

Axis conventions: ITK index / physical vectors are ``(x, y, z)``; numpy arrays obtained from ITK
are ``[z, y, x]`` (vector images ``[z, y, x, component]`` with the component axis in ``(x, y, z)``
order). All geometry keeps the template's direction matrix (p = origin + direction·diag(spacing)·i);
the grid helpers that apply it (:func:`image_geometry`, :func:`physical_grid`,
:func:`physical_to_index`, :func:`sample_at_index`) are shared with
:mod:`elastix_bridge.registration_quality` (the quality numbers: displacement error, NMI, Dice) and
the accuracy suite.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

__all__ = [
    "image_geometry",
    "make_demo_pair",
    "make_pair",
    "remap_contrast",
    "mni_template_path",
    "physical_grid",
    "physical_to_index",
    "sample_at_index",
]

_TEMPLATE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def _itk():
    """The ``itk`` module, imported on first use."""
    import itk  # deferred: itk takes seconds to import; importing demo_data stays light (tests/test_demo_data.py)

    return itk


def _ndimage():
    """``scipy.ndimage``, imported on first use."""
    from scipy import ndimage  # deferred: ~0.25 s to import; the command line imports this module (through demo)

    return ndimage


def mni_template_path() -> Path:
    """Path of the MNI152 2009a T1 template inside the installed nilearn wheel.

    nilearn is located with ``importlib.util.find_spec`` and not imported (importing it is slow).

    Returns:
        Path to ``mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``.

    Raises:
        ModuleNotFoundError: nilearn is not installed (message says ``pip install nilearn``).
        FileNotFoundError: nilearn is installed but the template file is missing.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the demo data needs the MNI152 template shipped with nilearn: pip install nilearn "
            "(or pip install 'elastix-bridge[demo]')")
    path = Path(spec.origin).parent / "datasets" / "data" / _TEMPLATE
    if not path.is_file():
        raise FileNotFoundError(f"nilearn is installed but {path} is missing; reinstall nilearn")
    return path


# --------------------------------------------------------------------------------------------
# geometry helpers (numpy; ITK (x, y, z) order)


def image_geometry(image):
    """``(size_xyz, spacing, origin, direction)`` of an itk image as numpy arrays.

    ITK order: ``size`` int ``(D,)``, ``spacing`` (mm) and ``origin`` (mm) float64 ``(D,)``,
    ``direction`` float64 ``(D, D)`` (column ``k`` is index axis ``k``).
    """
    itk = _itk()
    size = np.array(itk.size(image), dtype=int)
    spacing = np.array(itk.spacing(image), dtype=np.float64)
    origin = np.array(itk.origin(image), dtype=np.float64)
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(len(size), len(size))
    return size, spacing, origin, direction


def physical_grid(size, spacing, origin, direction) -> np.ndarray:
    """Physical points (mm, (x, y, z)) of every voxel, array ``[*reversed(size), D]``.

    ``size``, ``spacing``, ``origin``, ``direction`` as :func:`image_geometry` returns them.
    """
    d = len(size)
    idx = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in reversed(size)], indexing="ij")
    idx_xyz = np.stack(idx[::-1], axis=-1)  # [..., D] in (x, y, z)
    m = direction @ np.diag(spacing)
    return idx_xyz @ m.T + origin.reshape((1,) * d + (d,))


def physical_to_index(points, spacing, origin, direction) -> np.ndarray:
    """Continuous ITK indices ``(x, y, z)`` of physical points ``[..., D]`` (mm), same shape."""
    m_inv = np.linalg.inv(direction @ np.diag(spacing))
    return (points - origin) @ m_inv.T


def sample_at_index(array_zyx, index_xyz, order=1, mode="nearest", cval=0.0) -> np.ndarray:
    """Interpolate ``array_zyx`` at continuous ITK indices ``[..., D]`` (scipy map_coordinates).

    ``order``: spline order (0 nearest, 1 linear, 3 cubic, prefiltered); ``mode`` and ``cval``: outside
    the array, as ``scipy.ndimage.map_coordinates``. Returns an array of shape ``index_xyz.shape[:-1]``.
    """
    coords = np.moveaxis(index_xyz[..., ::-1], -1, 0)  # [D(z,y,x), ...]
    return _ndimage().map_coordinates(array_zyx, coords, order=order, mode=mode, cval=cval,
                                      prefilter=order > 1)


def _to_itk(array, spacing, origin, direction, vector=False):
    """numpy ``[z, y, x]`` (or ``[z, y, x, D]``) → itk image with the given geometry."""
    itk = _itk()
    d = len(spacing)
    if vector:
        ttype = itk.Image[itk.Vector[itk.F, d], d]
        image = itk.image_from_array(np.ascontiguousarray(array, dtype=np.float32), ttype=ttype)
    else:
        image = itk.image_from_array(np.ascontiguousarray(array))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction, dtype=np.float64)))
    return image


def _head_mask(array, spacing) -> np.ndarray:
    """Brain/head mask: threshold at 10 % of the 99th percentile, close, fill, keep largest, open."""
    ndimage = _ndimage()
    positive = array[array > 0]
    if positive.size == 0:
        return np.zeros(array.shape, dtype=np.uint8)
    mask = array > 0.1 * np.percentile(positive, 99)
    radius = max(1, int(round(4.0 / float(np.min(spacing)))))  # ~4 mm closing
    structure = ndimage.generate_binary_structure(array.ndim, 1)
    mask = ndimage.binary_closing(mask, structure, iterations=radius, border_value=0)
    mask = ndimage.binary_fill_holes(mask)
    mask = ndimage.binary_opening(mask, structure, iterations=1)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    return mask.astype(np.uint8)


def _rotation(dimension, angle_rad, rng) -> np.ndarray:
    """Rotation matrix: in-plane (2D) or about a random unit axis (3D, Rodrigues)."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    if dimension == 2:
        return np.array([[c, -s], [s, c]])
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + s * k + (1 - c) * (k @ k)


# --------------------------------------------------------------------------------------------
# contrasts

#: Knots of the contrast remappings, in units of the reference intensity (≈ WM in the template:
#: template background 0, CSF ≈ 0.3, GM ≈ 0.75, WM ≈ 1).
_KNOTS = [0.0, 0.06, 0.3, 0.55, 0.75, 0.95, 1.3]
_CONTRASTS = {
    # background, edge, CSF, CSF/GM, GM, WM, bright WM
    "t2": [0.0, 0.0, 1.0, 0.75, 0.55, 0.25, 0.2],            # CSF bright, WM dark (non-monotonic)
    "pd": [0.0, 0.0, 0.9, 0.88, 0.85, 0.65, 0.6],            # flat PD-like: CSF ≳ GM > WM
    "flair": [0.0, 0.0, 0.12, 0.5, 0.9, 0.6, 0.55],          # CSF dark, GM bright, WM darker than GM
    "inverted": [1.0, 0.95, 0.7, 0.5, 0.35, 0.15, 0.1],      # monotonic decreasing (background bright)
    "nonmonotonic": [0.0, 0.1, 0.55, 0.8, 1.0, 0.2, 0.15],   # GM brightest, CSF mid, WM darkest
    "t1": [0.0, 0.06, 0.3, 0.55, 0.75, 0.95, 1.3],           # identity: same contrast as fixed
}
CONTRASTS = tuple(_CONTRASTS)


def _t2_like(t1, reference) -> np.ndarray:
    """Non-monotonic T1 → T2-like remapping: background 0, CSF bright, GM mid, WM dark.

    Knots in units of ``reference`` (≈ WM intensity): template CSF ≈ 0.3, GM ≈ 0.75, WM ≈ 1.
    """
    return remap_contrast(t1, reference, "t2")


def remap_contrast(t1, reference: float, contrast: str) -> np.ndarray:
    """Piecewise-linear remapping of T1 template intensities to another contrast.

    Args:
        t1: array of T1 template intensities (any shape).
        reference: intensity that maps to 1 (the 95th percentile in the brain mask ≈ WM).
        contrast: one of :data:`CONTRASTS`: ``"t2"`` (CSF bright, GM mid, WM dark),
            ``"pd"`` (CSF ≳ GM > WM, low contrast), ``"flair"`` (CSF dark, GM bright, WM darker
            than GM), ``"inverted"`` (monotonic decreasing, background bright),
            ``"nonmonotonic"`` (GM brightest, CSF mid, WM darkest), ``"t1"`` (identity up to
            scale: a monomodal case).

    Returns:
        float64 array in [0, ~1.3] of the same shape (callers scale it).

    Raises:
        ValueError: unknown contrast.
    """
    if contrast not in _CONTRASTS:
        raise ValueError(f"contrast must be one of {CONTRASTS}, got {contrast!r}")
    return np.interp(np.asarray(t1, dtype=np.float64) / reference, _KNOTS, _CONTRASTS[contrast])


# --------------------------------------------------------------------------------------------
# the demo pair and its generalisation


def _resample_like_template(path: Path, vs: float, new_size, new_origin):
    """Read a 1 mm MNI probability map and resample it exactly like the T1 template (smoothing
    included); nilearn stores the maps as 0..255, returned as probabilities 0..1."""
    itk = _itk()
    image = itk.imread(str(path), itk.F)
    scale = 255.0 if float(itk.array_view_from_image(image).max()) > 1.0 else 1.0
    _, sp0, _, _ = image_geometry(image)
    if vs > float(sp0.min()):
        image = itk.smoothing_recursive_gaussian_image_filter(image, sigma=vs / 2.0)
    out = itk.resample_image_filter(
        image, size=[int(s) for s in new_size], output_spacing=[vs] * 3,
        output_origin=[float(o) for o in new_origin], output_direction=image.GetDirection())
    return np.clip(itk.array_from_image(out).astype(np.float64) / scale, 0, 1)


def _tissue_labels(gm, wm, mask) -> np.ndarray:
    """uint8 labels 0 background, 1 CSF, 2 GM, 3 WM (see :func:`make_pair`)."""
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    labels = 1 + np.argmax(np.stack([csf, gm, wm]), axis=0)  # ties → the lower class (CSF first)
    return np.where(mask.astype(bool), labels, 0).astype(np.uint8)


def make_pair(output_dir: str | Path, dimension: int = 3, voxel_size: float = 2.0, seed: int = 0,
              contrast: str = "t2", deformation_mm: tuple = (4.0, 6.0),
              rotation_deg: tuple = (1.0, 2.0), translation_mm: float = 2.0, scale: float = 0.0,
              bias: float = 0.15, noise: float = 0.01, field_sigma_mm: float = 20.0,
              labels: bool = True) -> dict:
    """Write a fixed/moving pair from the MNI template with a known transform, a chosen contrast and
    tissue labels (no download; the data ship in the nilearn wheel).

    Known transform (fixed → moving, physical mm, ITK ``(x, y, z)``):
    ``T(x) = R·S·(x − c) + c + t + n(x)`` with ``c`` the brain-mask centroid, ``R`` a rotation by
    an angle uniform in ``rotation_deg`` (random sign; in-plane in 2D, random axis in 3D), ``S`` =
    ``diag(1 + s_i)`` with ``s_i`` uniform in ``±scale`` per axis (only drawn when ``scale > 0``),
    ``t`` uniform in ``±translation_mm`` per axis, and ``n`` a Gaussian-smoothed
    (σ = ``field_sigma_mm``) white-noise field per component scaled so that its maximum magnitude in
    the brain mask is uniform in ``deformation_mm``. The moving image is ``F(T⁻¹(y))`` (``T⁻¹`` by
    fixed-point iteration, cubic interpolation), remapped by :func:`remap_contrast`, times a smooth
    bias field ``exp(±bias·b)`` (σ = 40 mm, ``b`` in [−1, 1]) plus Gaussian noise of standard
    deviation ``noise`` (in units of the remapped range ≈ 1), clipped at 0 and scaled by 1000.

    Tissue labels (``labels=True``): the GM and WM probability maps of the same MNI 2009a release
    (``mni_icbm152_{gm,wm}_tal_nlin_sym_09a_converted.nii.gz`` in nilearn, stored as 0..255 and
    divided by 255) are smoothed and resampled exactly like the T1; with ``p_csf = clip(1 − p_gm − p_wm, 0, 1)``, every voxel of
    the fixed head mask (the template is skull-stripped, so the mask is brain + CSF rim) gets
    ``1 + argmax(p_csf, p_gm, p_wm)`` (1 CSF, 2 GM, 3 WM; ties go to the lower class), every
    voxel outside the mask 0. ``moving_labels`` are those labels warped with the same ``T⁻¹``,
    nearest neighbour.

    With the defaults this is exactly :func:`make_demo_pair` (same random draws, same files,
    bit-identical arrays) plus the label files.

    Files written in ``output_dir`` (NIfTI, direction ``diag(−1, −1[, 1])`` of the template):
    ``fixed`` (float32, T1), ``fixed_mask`` / ``moving_mask`` (uint8 0/1), ``moving`` (float32,
    the chosen contrast), ``moving_t1`` (warped T1 before the contrast change),
    ``true_displacement`` (vector, D float32 components ``(x, y[, z])`` in mm on the fixed grid,
    ``u(x) = T(x) − x``) and, with ``labels``, ``fixed_labels`` / ``moving_labels`` (uint8).

    Args:
        output_dir: folder (created).
        dimension: 3 (volume) or 2 (axial slice through the middle of the brain mask, in-plane
            geometry of the 3D grid).
        voxel_size: isotropic spacing in mm (> 0); 1 mm keeps the template's resolution.
        seed: numpy generator seed (transform, bias, noise).
        contrast: moving contrast, one of :data:`CONTRASTS`.
        deformation_mm: (low, high) of the non-rigid field's maximum magnitude, mm.
        rotation_deg: (low, high) of the rotation angle, degrees.
        translation_mm: half-width of the uniform translation per axis, mm.
        scale: half-width of the uniform per-axis scale change (0.05 = ±5 %).
        bias: amplitude of the log bias field.
        noise: noise standard deviation (relative to the remapped range).
        field_sigma_mm: smoothing σ of the non-rigid field, mm.
        labels: also write ``fixed_labels`` and ``moving_labels``.

    Returns:
        dict of paths (keys = file names without extension), ``mean_displacement_mm``,
        ``max_displacement_mm`` (in the fixed mask), ``rotation_deg``, ``translation_mm``,
        ``scale`` (per-axis factors − 1), ``nonrigid_max_mm``, ``inverse_residual_mm``
        (max |T(T⁻¹(y)) − y|, mm), ``contrast`` and for 2D ``slice_index`` / ``slice_z_mm``.

    Raises:
        ValueError: bad dimension, voxel_size or contrast.
        ModuleNotFoundError: nilearn missing (see :func:`mni_template_path`).
    """
    if dimension not in (2, 3):
        raise ValueError(f"dimension must be 2 or 3, got {dimension!r}")
    if not voxel_size > 0:
        raise ValueError(f"voxel_size must be > 0 mm, got {voxel_size!r}")
    if contrast not in _CONTRASTS:
        raise ValueError(f"contrast must be one of {CONTRASTS}, got {contrast!r}")
    itk, ndimage = _itk(), _ndimage()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    # 1. template → isotropic voxel_size (corner-aligned: same physical extent)
    template_path = mni_template_path()
    template = itk.imread(str(template_path), itk.F)
    size0, sp0, org0, dir0 = image_geometry(template)
    vs = float(voxel_size)
    if vs > float(sp0.min()):
        template = itk.smoothing_recursive_gaussian_image_filter(template, sigma=vs / 2.0)
    new_size = np.maximum(1, np.round(size0 * sp0 / vs)).astype(int)
    new_origin = org0 + dir0 @ ((vs - sp0) / 2.0)
    resampled = itk.resample_image_filter(
        template, size=[int(s) for s in new_size], output_spacing=[vs] * 3,
        output_origin=[float(o) for o in new_origin], output_direction=template.GetDirection())
    fixed3 = np.clip(itk.array_from_image(resampled).astype(np.float32), 0, None)
    mask3 = _head_mask(fixed3, [vs] * 3)
    if labels:
        gm3 = _resample_like_template(template_path.parent / _TEMPLATE.replace("_t1_", "_gm_"),
                                      vs, new_size, new_origin)
        wm3 = _resample_like_template(template_path.parent / _TEMPLATE.replace("_t1_", "_wm_"),
                                      vs, new_size, new_origin)

    spacing, origin, direction = np.full(3, vs), new_origin, dir0
    info: dict = {}
    if dimension == 2:
        zs = np.nonzero(mask3.any(axis=(1, 2)))[0]
        k = int(round((zs.min() + zs.max()) / 2.0))
        fixed = np.ascontiguousarray(fixed3[k])
        mask = _head_mask(fixed, [vs] * 2)
        if labels:
            gm, wm = gm3[k], wm3[k]
        info["slice_index"] = k
        info["slice_z_mm"] = float((origin + direction @ (np.array([0, 0, k]) * vs))[2])
        spacing, origin, direction = spacing[:2], origin[:2], direction[:2, :2]
    else:
        fixed, mask = fixed3, mask3
        if labels:
            gm, wm = gm3, wm3
    d = dimension
    size = np.array(fixed.shape[::-1])

    # 2. known transform T(x) = R S (x − c) + c + t + n(x), u = T(x) − x on the fixed grid
    grid = physical_grid(size, spacing, origin, direction)  # [..., D]
    inside = mask.astype(bool)
    centre = grid[inside].mean(axis=0)
    angle = np.deg2rad(rng.uniform(*rotation_deg) * rng.choice([-1.0, 1.0]))
    rot = _rotation(d, angle, rng)
    trans = rng.uniform(-translation_mm, translation_mm, size=d)
    if scale > 0:  # drawn only when asked, so the defaults reproduce make_demo_pair's draws
        scales = rng.uniform(-scale, scale, size=d)
        lin = rot @ np.diag(1.0 + scales)
        lin_inv_t = np.linalg.inv(lin).T
    else:
        scales = np.zeros(d)
        lin, lin_inv_t = rot, rot  # (R^T)^T = R
    sigma_vox = field_sigma_mm / vs
    field = np.stack([ndimage.gaussian_filter(rng.normal(size=fixed.shape), sigma_vox,
                                              mode="reflect") for _ in range(d)], axis=-1)
    target_max = rng.uniform(*deformation_mm)
    field *= target_max / np.linalg.norm(field[inside], axis=-1).max()

    def linear(x: np.ndarray) -> np.ndarray:
        return (x - centre) @ lin.T + centre + trans

    u = linear(grid) + field - grid

    # 3. inverse by fixed-point iteration: x = (RS)^-1 (y − c − t − n(x)) + c
    def n_at(points: np.ndarray) -> np.ndarray:
        idx = physical_to_index(points, spacing, origin, direction)
        return np.stack([sample_at_index(field[..., a], idx, order=1, mode="nearest")
                         for a in range(d)], axis=-1)

    x = (grid - centre - trans) @ lin_inv_t + centre
    for _ in range(40):
        x_new = (grid - centre - trans - n_at(x)) @ lin_inv_t + centre
        step = np.abs(x_new - x).max()
        x = x_new
        if step < 1e-4:
            break
    residual = float(np.linalg.norm(linear(x) + n_at(x) - grid, axis=-1).max())
    x_idx = physical_to_index(x, spacing, origin, direction)

    # 4. warped anatomy, warped mask, contrast change
    moving_t1 = np.clip(sample_at_index(fixed.astype(np.float64), x_idx, order=3, mode="constant"),
                        0, None).astype(np.float32)
    moving_mask = (sample_at_index(mask.astype(np.float32), x_idx, order=1, mode="constant") > 0.5)
    reference = float(np.percentile(fixed[inside], 95))
    remapped = remap_contrast(moving_t1.astype(np.float64), reference, contrast)
    bias_field = ndimage.gaussian_filter(rng.normal(size=fixed.shape), 40.0 / vs, mode="reflect")
    bias_field /= np.abs(bias_field).max() + 1e-12
    moving = remapped * np.exp(bias * bias_field) + rng.normal(scale=noise, size=fixed.shape)
    moving = (np.clip(moving, 0, None) * 1000.0).astype(np.float32)

    # 5. write
    names = ["fixed", "fixed_mask", "moving", "moving_mask", "moving_t1", "true_displacement"]
    if labels:
        names += ["fixed_labels", "moving_labels"]
    paths = {name: out / f"{name}.nii.gz" for name in names}
    geo = (spacing, origin, direction)
    itk.imwrite(_to_itk(fixed.astype(np.float32), *geo), str(paths["fixed"]), compression=True)
    itk.imwrite(_to_itk(mask.astype(np.uint8), *geo), str(paths["fixed_mask"]), compression=True)
    itk.imwrite(_to_itk(moving, *geo), str(paths["moving"]), compression=True)
    itk.imwrite(_to_itk(moving_mask.astype(np.uint8), *geo), str(paths["moving_mask"]),
                compression=True)
    itk.imwrite(_to_itk(moving_t1, *geo), str(paths["moving_t1"]), compression=True)
    itk.imwrite(_to_itk(u.astype(np.float32), *geo, vector=True),
                str(paths["true_displacement"]), compression=True)
    if labels:
        fixed_labels = _tissue_labels(gm, wm, mask)
        moving_labels = np.rint(sample_at_index(fixed_labels.astype(np.float32), x_idx, order=0,
                                                mode="constant")).astype(np.uint8)
        itk.imwrite(_to_itk(fixed_labels, *geo), str(paths["fixed_labels"]), compression=True)
        itk.imwrite(_to_itk(moving_labels, *geo), str(paths["moving_labels"]), compression=True)

    mag = np.linalg.norm(u[inside], axis=-1)
    result = dict(paths)
    result.update(
        mean_displacement_mm=float(mag.mean()), max_displacement_mm=float(mag.max()),
        rotation_deg=float(np.rad2deg(angle)), translation_mm=tuple(float(v) for v in trans),
        scale=tuple(float(v) for v in scales), nonrigid_max_mm=float(target_max),
        inverse_residual_mm=residual, contrast=contrast, **info)
    return result


def make_demo_pair(output_dir: str | Path, dimension: int = 3, voxel_size: float = 2.0,
                   seed: int = 0) -> dict:
    """Write a fixed/moving pair from the MNI template with a known deformation (no download).

    Deformation (fixed → moving, ``T(x) = x + u(x)``): rotation of 1–2° about the brain-mask
    centroid (random axis in 3D), translation uniform in ±2 mm per axis, and a non-rigid field of
    Gaussian-smoothed (σ = 20 mm) white noise per component, scaled to a maximum magnitude drawn
    in [4, 6] mm inside the brain mask. The moving image is ``F(T⁻¹(y))`` (``T⁻¹`` by fixed-point
    iteration), cubic interpolation, then the T2-like remapping, a smooth bias field
    ``exp(±0.15·b)`` (σ = 40 mm) and Gaussian noise (1 % of the range).
    This is :func:`make_pair` with its defaults, without the label files.

    Files written in ``output_dir`` (NIfTI, geometry of the resampled template, direction
    preserved): ``fixed.nii.gz`` (float32), ``fixed_mask.nii.gz`` (uint8), ``moving.nii.gz``
    (float32, T2-like), ``moving_mask.nii.gz`` (uint8, the fixed mask warped), ``moving_t1.nii.gz``
    (the warped template before the contrast change, for checks) and ``true_displacement.nii.gz``
    (vector image, ``D`` float32 components (x, y[, z]) in mm on the fixed grid).

    Args:
        output_dir: folder (created).
        dimension: 3 (volume) or 2 (axial slice through the middle of the brain mask).
        voxel_size: isotropic output spacing in mm (> 0); the template is Gaussian-smoothed
            (σ = voxel_size/2 mm) before downsampling.
        seed: seed of the numpy generator (deformation, bias field, noise).

    Returns:
        dict with the paths (``fixed``, ``fixed_mask``, ``moving``, ``moving_mask``,
        ``moving_t1``, ``true_displacement``), ``mean_displacement_mm`` and
        ``max_displacement_mm`` (inside the fixed mask), ``rotation_deg``, ``translation_mm``,
        ``nonrigid_max_mm``, ``inverse_residual_mm`` (max |T(T⁻¹(y)) − y| over the grid),
        and for 2D ``slice_index`` (z index in the resampled 3D grid) and ``slice_z_mm``.

    Raises:
        ValueError: dimension not 2/3 or voxel_size ≤ 0.
        ModuleNotFoundError: nilearn missing (see :func:`mni_template_path`).
    """
    result = make_pair(output_dir, dimension=dimension, voxel_size=voxel_size, seed=seed,
                       labels=False)
    del result["scale"], result["contrast"]
    return result
