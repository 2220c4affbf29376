"""The methods of the accuracy suite: each registers one case and returns its dense field.

Every method is a :class:`Method`: ``register(case_paths, workdir)`` runs the registration (timed,
memory-sampled by the runner) and returns a zero-argument callable that gives the fixed→moving
displacement ``u(x) = T(x) − x`` on the fixed grid as a numpy array ``[z, y, x, D]`` (mm, ITK
``(x, y[, z])`` components). Turning a result into a field is not timed.

How fields are obtained:

* elastix and bridge results: ``itk.transformix_deformation_field(moving, transform_parameters)``;
* ANTs and DIPY: the *coordinate-image trick*. For each axis ``a`` the image
  ``C_a(y) = y_a`` (physical coordinate of every voxel of the moving grid, float) is warped onto the
  fixed grid by the method's own image-warping call with linear interpolation. Linear
  interpolation is exact for linear functions, so the warped ``C_a`` at fixed voxel ``x`` is
  ``T(x)_a`` and ``u = T(x) − x`` needs no knowledge of the tool's transform conventions.
  (tests/test_accuracy_suite.py checks the trick against transformix on an elastix result.)

To add an elastix-bridge recipe, add one line to :data:`BRIDGE_CHAINS`.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .metrics import geometry, physical_grid

ROOT = Path(__file__).resolve().parents[2]
PARAMETER_FILES = ROOT / "parameter_files"

#: elastix-bridge chains: name → {dimension: [parameter files in parameter_files/, run in order]}.
#: A chain without an entry for a dimension does not run on cases of that dimension.
#: Optional per-method case filter in :data:`CASE_FILTERS`.
#: Left out: impact_totalseg_jacobian_ct_3d.txt (a CT preset whose TorchScript model is not
#: shipped: its ImpactModelsPath is a placeholder).
BRIDGE_CHAINS = {
    "impact-static": {3: ["impact_mind_static_3d.txt"], 2: ["impact_mind_static_2d.txt"]},
    "affine+impact-static": {3: ["affine_mi.txt", "impact_mind_static_3d.txt"],
                             2: ["affine_mi.txt", "impact_mind_static_2d.txt"]},
    "impact-jacobian": {3: ["impact_mind_jacobian_3d.txt"]},
    "affine+impact-mattes": {3: ["affine_mi.txt", "impact_mind_mattes_3d.txt"],
                             2: ["affine_mi.txt", "impact_mind_mattes_2d.txt"]},
}
#: The recipe the project recommends (elastix_bridge.demo.RECOMMENDED); the table compares every
#: method with it on the cases that method ran.
RECOMMENDED = "affine+impact-mattes"

#: Methods that run only on some cases, to keep the full suite within ~45 min on 2 cores
#: (method name → case names; a method not listed runs on every case of its dimensions).
#: Measured on the 2 mm 3D case t2_small (2 cores shared with another job, load ~3.5):
#: impact-jacobian 225 s, dipy-syn 61 s, dipy-syn-em 48 s, elastix-default 61 s, ants-syn 14 s,
#: the elastix/bridge presets 9–11 s; at 1 mm: ants-syn 103 s, affine+impact-static 93 s,
#: impact-static 32 s, elastix-mattes-preset 24 s.
#: the slow peers (~50–60 s per 2 mm 3D case) run on some of the 2 mm 3D cases and every 2D case
_SUBSET = ("t2_small", "t2_affine", "flair_mid", "inverted_noisy", "nonmono_mid", "t1_mono",
           "2d_t2", "2d_flair_affine", "2d_nonmono", "2d_real_brain")
CASE_FILTERS = {
    "impact-jacobian": ("t2_small", "flair_mid", "nonmono_mid"),
    # CCMetric is a same-contrast metric (fails on T2-like pairs: 12.9 mm on t2_small)
    "dipy-syn": ("t1_mono", "t2_small", "2d_t2", "2d_nonmono"),
    "dipy-syn-em": ("t2_small", "flair_mid", "t1_mono", "2d_t2", "2d_flair_affine", "2d_nonmono"),
    "elastix-default": _SUBSET,
    "ants-syn-fine": _SUBSET,
}
THREADS = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
              else (os.cpu_count() or 1))


@dataclass
class Method:
    """One row of the method table.

    Attributes:
        name: method name (file name of its results).
        register: ``(paths: dict, workdir: Path) -> (() -> field [z, y, x, D])``.
        dims: dimensions it runs on.
        version: text whose hash identifies the method definition (resume check): library
            versions and parameter texts, plus a ``-vN`` tag to bump when the code changes.
        family: "elastix", "bridge", "ants" or "dipy".
        cases: optional case-name filter (None = every case of its dimensions).
        requires: importable module names it needs (absent → method skipped, not failed).
    """

    name: str
    register: Callable
    dims: tuple
    version: str
    family: str
    cases: Optional[tuple] = None
    requires: tuple = ()
    note: str = ""

    def key(self) -> str:
        """Hash of the method definition (code version, parameter texts, library versions)."""
        return hashlib.sha1(self.version.encode()).hexdigest()[:16]

    def applies_to(self, case) -> bool:
        return case.dimension in self.dims and (self.cases is None or case.name in self.cases)


# --------------------------------------------------------------------------------------------
# image loading


def _read(paths: dict):
    """(fixed, moving, fixed_mask) as itk images (float, float, unsigned char 0/1)."""
    import itk

    fixed = itk.imread(str(paths["fixed"]), itk.F)
    moving = itk.imread(str(paths["moving"]), itk.F)
    mask = itk.imread(str(paths["fixed_mask"]), itk.UC)
    arr = (itk.array_from_image(mask) > 0).astype(np.uint8)
    mask01 = itk.image_from_array(arr)
    mask01.CopyInformation(mask)
    return fixed, moving, mask01


def _pkg_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _transformix_field(moving, transform_parameters) -> Callable:
    def field():
        import itk

        out = itk.transformix_deformation_field(moving, transform_parameters)
        return np.asarray(itk.array_from_image(out), dtype=np.float64)
    return field


def coordinate_arrays(shape_zyx, spacing, origin, direction) -> list:
    """Physical coordinate images of a grid: list of D float64 arrays ``[z, y, x]``, the ``a``-th
    holding the ITK ``a`` component (x, y, z) of each voxel's physical point (mm)."""
    grid = physical_grid(shape_zyx, spacing, origin, direction)
    return [np.ascontiguousarray(grid[..., a]) for a in range(grid.shape[-1])]


def field_from_warped_coordinates(warped: list, fixed_shape_zyx, fixed_geo) -> np.ndarray:
    """``u = T(x) − x`` from the D warped coordinate arrays ``[z, y, x]`` on the fixed grid."""
    t = np.stack([np.asarray(w, dtype=np.float64) for w in warped], axis=-1)
    return t - physical_grid(fixed_shape_zyx, *fixed_geo)


# --------------------------------------------------------------------------------------------
# elastix (itk-elastix directly)


def _elastix_default(paths, workdir):
    import itk

    fixed, moving, mask = _read(paths)
    po = itk.ParameterObject.New()
    po.AddParameterMap(po.GetDefaultParameterMap("affine"))
    po.AddParameterMap(po.GetDefaultParameterMap("bspline"))
    # no number_of_threads=: itk-elastix 0.25.4 segfaults with it on a B-spline map; its default
    # already uses every core
    _, tp = itk.elastix_registration_method(fixed, moving, parameter_object=po, fixed_mask=mask,
                                            log_to_console=False)
    return _transformix_field(moving, tp)


def _mattes_maps(dimension: int, affine_first: bool) -> list:
    from elastix_bridge.core.parameters import read_parameter_file
    from elastix_bridge.demo import mattes_parameter_map

    maps = list(read_parameter_file(str(PARAMETER_FILES / "affine_mi.txt"))) if affine_first else []
    return maps + [mattes_parameter_map(dimension)]


def _elastix_mattes(affine_first: bool):
    def register(paths, workdir):
        from elastix_bridge.api import elastix_registration_method

        fixed, moving, mask = _read(paths)
        maps = _mattes_maps(fixed.GetImageDimension(), affine_first)
        _, tp = elastix_registration_method(fixed, moving, parameter_object=maps,
                                            fixed_mask=mask, output_directory=str(workdir),
                                            log_to_file=True)
        return _transformix_field(moving, tp)
    return register


# --------------------------------------------------------------------------------------------
# elastix-bridge chains


def _bridge_chain(files: dict):
    def register(paths, workdir):
        from elastix_bridge.api import elastix_registration_method
        from elastix_bridge.core.parameters import read_parameter_file

        fixed, moving, mask = _read(paths)
        maps = []
        for name in files[fixed.GetImageDimension()]:
            maps += list(read_parameter_file(str(PARAMETER_FILES / name)))
        _, tp = elastix_registration_method(fixed, moving, parameter_object=maps,
                                            fixed_mask=mask, output_directory=str(workdir),
                                            log_to_file=True)
        return _transformix_field(moving, tp)
    return register


# --------------------------------------------------------------------------------------------
# ANTs (antspyx)


def _ants_syn(paths, workdir, reg_iterations=None):
    """antspyx SyN (its default: rigid + affine with Mattes MI, then SyN with Mattes MI).

    antspyx's default ``reg_iterations=(40, 20, 0)`` runs no SyN iteration at full resolution;
    ``ants-syn-fine`` passes ``(40, 20, 10)``. The fixed head mask is passed (``mask=``): ANTs then
    samples the metric inside the brain, as the elastix methods do. Threads:
    ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` = available cores.
    """
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(THREADS)
    os.environ["ANTS_RANDOM_SEED"] = "1"
    import ants
    import itk

    fixed = ants.image_read(str(paths["fixed"]), pixeltype="float")
    moving = ants.image_read(str(paths["moving"]), pixeltype="float")
    mask = ants.image_read(str(paths["fixed_mask"]), pixeltype="float")
    extra = {} if reg_iterations is None else {"reg_iterations": reg_iterations}
    reg = ants.registration(fixed, moving, type_of_transform="SyN", mask=mask,
                            outprefix=str(Path(workdir) / "ants_"), **extra)
    # antspyx finds its output transforms by globbing the prefix: keep other files off it
    transforms = list(reg["fwdtransforms"])

    def field():
        # coordinate images on the moving grid, written by itk, read by ANTs (same LPS space)
        mov_itk = itk.imread(str(paths["moving"]), itk.F)
        fix_itk = itk.imread(str(paths["fixed"]), itk.F)
        mshape = itk.array_from_image(mov_itk).shape
        fshape = itk.array_from_image(fix_itk).shape
        warped = []
        for a, coord in enumerate(coordinate_arrays(mshape, *geometry(mov_itk))):
            img = itk.image_from_array(coord.astype(np.float32))
            img.CopyInformation(mov_itk)
            path = Path(workdir) / f"coord{a}.nii"  # uncompressed: fast
            itk.imwrite(img, str(path))
            out = ants.apply_transforms(fixed, ants.image_read(str(path)), transforms,
                                        interpolator="linear", singleprecision=False)
            out_path = Path(workdir) / f"coord{a}_warped.nii"
            ants.image_write(out, str(out_path))
            warped.append(itk.array_from_image(itk.imread(str(out_path), itk.D)))
        return field_from_warped_coordinates(warped, fshape, geometry(fix_itk))
    return field


# --------------------------------------------------------------------------------------------
# DIPY


def _grid2world(image) -> np.ndarray:
    """DIPY grid-to-world matrix of an itk image for arrays in ITK index order ``(x, y[, z])``:
    ``world = direction · diag(spacing) · i + origin`` (ITK physical space, not RAS: DIPY only needs
    the fixed and moving matrices to share one world)."""
    spacing, origin, direction = geometry(image)
    d = len(spacing)
    a = np.eye(d + 1)
    a[:d, :d] = direction @ np.diag(spacing)
    a[:d, d] = origin
    return a


def _dipy_syn(metric_name: str):
    def register(paths, workdir):
        """DIPY: centre of mass → translation → rigid → affine (MI, 32 bins, 30 % of the voxels
        sampled; DIPY ignores masks when sampling, so none is passed), then
        SymmetricDiffeomorphicRegistration (levels 50/25/10 iterations) with ``CCMetric`` (local
        cross-correlation: made for one contrast) or ``EMMetric`` (expectation-maximisation
        intensity mapping: DIPY's multimodal SyN metric)."""
        import logging

        import itk
        from dipy.align import imaffine, transforms
        from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
        from dipy.align.metrics import CCMetric, EMMetric

        for name in [n for n in logging.root.manager.loggerDict if n.startswith("dipy")] + ["dipy"]:
            logging.getLogger(name).setLevel(logging.WARNING)  # DIPY logs every level at INFO
        fix_itk = itk.imread(str(paths["fixed"]), itk.F)
        mov_itk = itk.imread(str(paths["moving"]), itk.F)
        d = fix_itk.GetImageDimension()
        # DIPY arrays in ITK index order (x, y[, z]) = numpy's [z, y, x] transposed
        static = np.asarray(itk.array_from_image(fix_itk), dtype=np.float64).T
        moving = np.asarray(itk.array_from_image(mov_itk), dtype=np.float64).T
        s2w, m2w = _grid2world(fix_itk), _grid2world(mov_itk)

        com = imaffine.transform_centers_of_mass(static, s2w, moving, m2w)
        affreg = imaffine.AffineRegistration(
            metric=imaffine.MutualInformationMetric(nbins=32, sampling_proportion=0.3),
            level_iters=[100, 50, 25], sigmas=[3.0, 1.0, 0.0], factors=[4, 2, 1], verbosity=0)
        kinds = (["TranslationTransform3D", "RigidTransform3D", "AffineTransform3D"] if d == 3
                 else ["TranslationTransform2D", "RigidTransform2D", "AffineTransform2D"])
        current = com.affine
        for kind in kinds:
            tr = getattr(transforms, kind)()
            res = affreg.optimize(static, moving, tr, None, static_grid2world=s2w,
                                  moving_grid2world=m2w, starting_affine=current)
            current = res.affine
        metric = CCMetric(d, sigma_diff=2.0, radius=4) if metric_name == "cc" else EMMetric(d)
        sdr = SymmetricDiffeomorphicRegistration(metric, level_iters=[50, 25, 10])
        mapping = sdr.optimize(static, moving, static_grid2world=s2w, moving_grid2world=m2w,
                               prealign=current)

        def field():
            mshape = itk.array_from_image(mov_itk).shape
            fshape = itk.array_from_image(fix_itk).shape
            warped = [mapping.transform(c.T, interpolation="linear").T
                      for c in coordinate_arrays(mshape, *geometry(mov_itk))]
            return field_from_warped_coordinates(warped, fshape, geometry(fix_itk))
        return field
    return register


# --------------------------------------------------------------------------------------------
# the table


def _chain_version(files: dict) -> str:
    texts = []
    for dim in sorted(files):
        for name in files[dim]:
            texts.append(f"{dim}:{name}:{(PARAMETER_FILES / name).read_text()}")
    return "bridge-chain-v1\n" + "\n".join(texts)


def methods() -> list:
    """All methods, in table order (peers first, then the bridge chains of :data:`BRIDGE_CHAINS`)."""
    itk_v = _pkg_version("itk-elastix")
    mattes_text = repr(_mattes_maps(3, False)[-1]) + repr(_mattes_maps(2, False)[-1])
    affine_text = (PARAMETER_FILES / "affine_mi.txt").read_text()
    table = [
        Method("elastix-default", _elastix_default, (2, 3), f"elastix-default-v1 {itk_v}",
               "elastix", note="itk-elastix default affine + bspline maps (Mattes MI)"),
        Method("elastix-mattes-preset", _elastix_mattes(False), (2, 3),
               f"mattes-v1 {itk_v} {mattes_text}", "elastix",
               note="Mattes MI with the IMPACT presets' grid/pyramid (demo.mattes_parameter_map)"),
        Method("elastix-affine+mattes-preset", _elastix_mattes(True), (2, 3),
               f"affine-mattes-v1 {itk_v} {affine_text} {mattes_text}", "elastix",
               note="affine_mi.txt, then the Mattes preset map"),
        Method("ants-syn", _ants_syn, (2, 3), f"ants-syn-v2 {_pkg_version('antspyx')}", "ants",
               requires=("ants",), note="antspyx SyN (affine MI + SyN MI), fixed mask"),
        Method("ants-syn-fine", lambda paths, workdir: _ants_syn(paths, workdir, (40, 20, 10)), (2, 3),
               f"ants-syn-fine-v1 {_pkg_version('antspyx')}", "ants", requires=("ants",),
               note="antspyx SyN with 10 SyN iterations at full resolution (reg_iterations 40, 20, 10)"),
        Method("dipy-syn", _dipy_syn("cc"), (2, 3), f"dipy-syn-cc-v2 {_pkg_version('dipy')}",
               "dipy", requires=("dipy",),
               note="DIPY MI affine (trans→rigid→affine) + SyN CCMetric"),
        Method("dipy-syn-em", _dipy_syn("em"), (2, 3), f"dipy-syn-em-v1 {_pkg_version('dipy')}",
               "dipy", requires=("dipy",),
               note="DIPY MI affine (trans→rigid→affine) + SyN EMMetric (multimodal)"),
    ]
    for name, files in BRIDGE_CHAINS.items():
        table.append(Method(name, _bridge_chain(files), tuple(sorted(files)),
                            _chain_version(files), "bridge",
                            note=" → ".join(files[max(files)])))
    for m in table:
        m.cases = CASE_FILTERS.get(m.name, m.cases)
    return table
