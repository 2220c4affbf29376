"""The main job on real anatomy from PyPI alone: MNI152 → known deformation + contrast change → IMPACT.

The fixed image is the MNI152 T1 template that the nilearn wheel ships; the moving image is the
same anatomy warped by a known smooth deformation with a T2-like contrast (``demo_data``). The
registration uses IMPACT in Static (or Jacobian) mode with the project's own MIND-SSC TorchScript
model, and the report compares the recovered displacement with the true one, next to elastix's
own Mattes mutual information B-spline registration of the same pair.

Outputs in ``out``: ``data/`` (the pair and the true displacement), ``impact/`` and
``elastix-mattes/`` (elastix's files: TransformParameters, result image, log, iteration tables,
deformation field), ``impact_parameters.txt`` (the IMPACT map as an elastix parameter file),
``report.json`` (the measured numbers) and ``demo.png`` (images, registered results and error maps;
``demo_picture``), with the quality numbers of ``registration_quality``.

The IMPACT map itself is :func:`demo_parameter_map`; ``parameter_files/impact_mind_*.txt`` are
the same maps rendered by :func:`parameter_file_text` (``python -m elastix_bridge.demo
--write-parameter-files parameter_files`` rewrites them).
"""
from __future__ import annotations

import importlib.resources
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

from elastix_bridge.api import elastix_registration_method
from elastix_bridge.core.image_io import read_mask
from elastix_bridge.core.parameters import ParameterMap, read_parameter_file
from elastix_bridge.core.transform_io import write_transform_parameter_file
from elastix_bridge.demo_data import make_demo_pair
from elastix_bridge.demo_picture import write_picture
from elastix_bridge.registration_quality import dice, displacement_error, nmi
from elastix_bridge.transform_check import collected_checks

# (key, values, comment) entries, grouped in sections with a heading comment. The dict map
# (demo_parameter_map) and the commented elastix parameter files are both rendered from here, so
# they cannot drift apart.
_LEVELS = 2
# Chosen on the accuracy suite (benchmarks/accuracy, docs/benchmarks.md), not on one pair.
_FINE_FEATURE_MM = 1          # ImpactVoxelSize of the fine level, Static mode
_FINE_SMOOTHING_MM = 0        # pyramid smoothing of the fine level, Static mode
_WEIGHTS = ("1", "2")         # relative weights of IMPACT and Mattes MI in the impact+mattes recipe
_QC_DISPLACEMENT_MM = 20      # QCMaximumDisplacement of the B-spline stages


RECIPES = ("impact", "impact+mattes")


def _entries(dimension: int, mode: str, recipe: str = "impact") -> list:
    """Sections ``(heading, [(key, [values], comment)])`` of a demo map.

    ``recipe``: ``"impact"`` (IMPACT alone) or ``"impact+mattes"`` (IMPACT and elastix's Mattes MI
    in one multi-metric map, elastix's ``MultiMetricMultiResolutionRegistration``). Every entry
    carries the reason for its value (units: mm, voxels, per level), so the rendered parameter files
    (``parameter_files/impact_mind_*.txt``) are ready-to-use, commented presets. The values were
    chosen on the accuracy suite (``benchmarks/accuracy``, docs/benchmarks.md).
    """
    if dimension not in (2, 3):
        raise ValueError(f"dimension must be 2 or 3, got {dimension!r}")
    if mode not in ("Static", "Jacobian"):
        raise ValueError(f"mode must be 'Static' or 'Jacobian', got {mode!r}")
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    if recipe == "impact+mattes" and mode != "Static":
        raise ValueError("the impact+mattes recipe is a Static-mode map")
    d = dimension
    jac = mode == "Jacobian"
    both = recipe == "impact+mattes"
    rep = lambda v: [str(v)] * d  # noqa: E731 - one value per dimension
    channels = "12" if d == 3 else "4"
    samples = "1000" if jac else "2000"
    iterations = "150"
    level_keys = []
    # mm. Static: the fine level's features on a 1 mm grid, finer than the 2 mm images: MIND-SSC's
    # offsets are 2 voxels of its input grid, and on the suite a 1 mm grid halved IMPACT's error at
    # 2 mm (docs/benchmarks.md). Jacobian: a 7-voxel patch per sample, kept on the images' grid.
    voxel = {0: 4, 1: 2} if jac else {0: 4, 1: _FINE_FEATURE_MM}
    voxel_why = {0: "coarse anatomy",
                 1: "the images' own spacing in the demo (MNI at 2 mm)" if jac else
                    "finer than 2 mm images: sharper MIND-SSC features (docs/benchmarks.md); keep it at or "
                    "below your images' spacing"}
    for level in range(_LEVELS):
        first = level == 0
        level_keys += [
            (f"ImpactModelsPath{level}", [f"mind-ssc-{d}d"],
             f"level {level}: built-in MIND-SSC descriptor ({channels} channels), no download" if first
             else f"level {level}: the same model"),
            (f"ImpactDimension{level}", [str(d)], f"a {d}D model" + (f" on {d}D images" if first else "")),
            (f"ImpactNumberOfChannels{level}", ["1"],
             "one input channel (the image intensity)" if first else "one input channel"),
            (f"ImpactPatchSize{level}", rep(7 if jac else 0),
             ("voxels; 7 = MIND-SSC's support (dilation 2 + box radius 1 on each side): the smallest "
              "patch whose centre feature is exact" if jac else "0 = feature maps of the whole image (Static mode)")
             if first else ("voxels; same patch" if jac else "whole image")),
            (f"ImpactVoxelSize{level}", rep(voxel[level]),
             f"mm; model input grid of level {level}: {voxel_why[level]}"),
            (f"ImpactLayersMask{level}", ["1"], "MIND-SSC has one output layer" if first else "its one layer"),
            (f"ImpactSubsetFeatures{level}", [channels],
             f"all {channels} channels at every iteration (fewer: faster, noisier)" if first
             else f"all {channels} channels"),
            (f"ImpactLayersWeight{level}", ["1"], "one layer, weight 1"),
            (f"ImpactPCA{level}", ["0"], "no PCA reduction (MIND has few channels)" if first else "no PCA"),
            (f"ImpactDistance{level}", ["L2"],
             "squared difference of the descriptors (MIND is already contrast-invariant)" if first
             else "squared difference"),
        ]
    metric_entries = [
        ("Metric", ["Impact", "AdvancedMattesMutualInformation"],
         "IMPACT (runs on the elastix-bridge engine) and elastix's Mattes MI, summed") if both else
        ("Metric", ["Impact"], "runs on the elastix-bridge engine")]
    fine_smoothing = _FINE_SMOOTHING_MM if not jac else 1
    sections = [
        ("Components", [
            ("Registration", ["MultiMetricMultiResolutionRegistration" if both else "MultiResolutionRegistration"],
             "several metrics, levels from coarse to fine" if both else "one metric, levels from coarse to fine"),
            ("FixedImagePyramid", ["FixedGenericImagePyramid"], "separate rescale and smoothing schedules (below)"),
            ("MovingImagePyramid", ["MovingGenericImagePyramid"], None),
            ("Interpolator", ["BSplineInterpolator"], "moving image during the registration (order below)"),
            *metric_entries,
            ("Optimizer", ["AdaptiveStochasticGradientDescent"], "ASGD: elastix's standard for B-splines"),
            ("ResampleInterpolator", ["FinalBSplineInterpolator"], "result image (order below)"),
            ("Resampler", ["DefaultResampler"], None),
            ("Transform", ["BSplineTransform"], "cubic B-spline: smooth local deformation"),
            ("ImageSampler", ["RandomCoordinate"], "random points off the voxel grid (no grid aliasing)"),
        ]),
        ("Pyramid: level 0 at half resolution, level 1 at full resolution", [
            ("NumberOfResolutions", [str(_LEVELS)],
             "coarse to fine; each level has its own Impact*<level> entries below"),
            ("ImagePyramidRescaleSchedule", rep(2) + rep(1), "shrink factors per level and axis"),
            ("ImagePyramidSmoothingSchedule", rep(2) + rep(fine_smoothing),
             "Gaussian sigma in mm (physical units) per level and axis" + (
                 "; none at the fine level: smoothing blurred away detail both metrics use (docs/benchmarks.md)"
                 if fine_smoothing == 0 else "")),
        ]),
        ("Transform: cubic B-spline, 32 mm control points at level 0, 16 mm at level 1", [
            ("FinalGridSpacingInPhysicalUnits", rep(16), "mm; control-point spacing of the last level"),
            ("GridSpacingSchedule", ["2", "1"], "multiplies the final spacing per level: 32 mm, then 16 mm"),
            ("HowToCombineTransforms", ["Compose"],
             "on top of an earlier stage (-t0, or a previous -p such as affine_mi.txt)"),
        ]),
        *([("Metrics: relative weights (elastix's UseRelativeWeights: each metric's gradient is scaled to this share "
            "of the first metric's)", [
            ("UseRelativeWeights", ["true"], "weights relative to the metrics' gradient magnitudes, not raw values"),
            ("Metric0RelativeWeight", [_WEIGHTS[0]], "IMPACT (MIND-SSC): robust to contrast and bias, local detail"),
            ("Metric1RelativeWeight", [_WEIGHTS[1]],
             "Mattes MI: global intensity statistics; the weights were chosen on the accuracy suite"),
            ("NumberOfHistogramBins", ["32"], "Mattes MI's joint histogram bins per image"),
        ])] if both else []),
        ("Metric: IMPACT with the MIND-SSC model", [
            ("ImpactMode", [mode],
             "Jacobian: patches through the model at every sample" if jac
             else "Static: feature maps computed once per level, then interpolated"),
            ("ImpactGPU", ["-1"], "CPU; a CUDA device index (0, 1, ...) runs the model on that GPU"),
        ] + level_keys),
        ("Optimizer: adaptive stochastic gradient descent", [
            ("MaximumNumberOfIterations", [iterations], "per level"),
            ("AutomaticParameterEstimation", ["true"], "step sizes estimated from the images and the transform"),
            ("UseAdaptiveStepSizes", ["true"], "steps shrink when successive gradients disagree"),
            ("NumberOfSamplesForExactGradient", ["10000"],
             "elastix default 100000; 10000 grid samples estimate the step size as well, much faster"),
            ("NumberOfJacobianMeasurements", ["2000"], "default max(1000, number of parameters)"),
        ]),
        ("Sampler: new random points (off the voxel grid) every iteration, inside the fixed mask", [
            ("NumberOfSpatialSamples", [samples],
             "per iteration; each sample carries a 7^D patch through the model" if jac
             else "per iteration; features are only interpolated there, so samples are cheap"),
            ("NewSamplesEveryIteration", ["true"], "fresh points every iteration: an unbiased stochastic gradient"),
            ("MaximumNumberOfSamplingAttempts", ["8"], "redraws when too few points map inside the moving image"),
            ("ErodeMask", ["false"], "masks used as given (elastix's default erodes them at coarse levels)"),
            ("RandomSeed", ["42"], "reproducible runs"),
        ]),
        ("Interpolation and output", [
            ("BSplineInterpolationOrder", ["1"], "moving image during the registration (linear: fast)"),
            ("FinalBSplineInterpolationOrder", ["3"], "result image (cubic: smooth)"),
            ("DefaultPixelValue", ["0"], "result intensity outside the moving image"),
            ("WriteResultImage", ["true"], "result.<stage>.mha in the output folder"),
            ("ResultImageFormat", ["mha"], None),
            ("ResultImagePixelType", ["float"], None),
        ]),
        ("Transform check after the stage (elastix-bridge; elastix ignores these keys; docs/qc.md)", [
            ("QCMaximumFoldedFraction", ["0.001"],
             "warn when more than 0.1 % of the fixed-mask voxels fold (Jacobian determinant <= 0)"),
            ("QCMaximumVolumeChange", ["3"],
             "warn when the Jacobian determinant leaves 1/3 .. 3 anywhere in the mask (the suite's results: "
             "0.5 .. 1.9)"),
            ("QCMaximumDisplacement", [str(_QC_DISPLACEMENT_MM)],
             "mm; warn when a control point moves further (the suite's results: up to 12 mm for deformations "
             "up to 8 mm)"),
        ]),
    ]
    return sections


def demo_parameter_map(dimension: int, mode: str = "Static", recipe: str = "impact") -> dict:
    """A two-level IMPACT B-spline map with the built-in MIND-SSC model (``parameter_files`` style).

    Args:
        dimension: 2 or 3 (image and model dimension).
        mode: ``"Static"`` (feature maps of the whole image) or ``"Jacobian"`` (patches per sample).
        recipe: ``"impact"`` (IMPACT alone) or ``"impact+mattes"`` (IMPACT and Mattes MI in one
            multi-metric map, Static mode).

    Returns:
        ``dict[str, list[str]]`` elastix parameter map.

    Raises:
        ValueError: an unknown dimension, mode or recipe.
    """
    return {key: list(values) for _, entries in _entries(dimension, mode, recipe) for key, values, _ in entries}


def _format_value(value: str) -> str:
    try:
        float(value)
        return value
    except ValueError:
        return f'"{value}"'


def parameter_file_text(dimension: int, mode: str = "Static", recipe: str = "impact") -> str:
    """:func:`demo_parameter_map` as a commented elastix parameter file."""
    name = next((f"parameter_files/{n}" for n, key in PARAMETER_FILES.items() if key == (dimension, mode, recipe)),
                "<this file>")
    purpose = _PURPOSE.get((dimension, mode, recipe),
                           f"multimodal {dimension}D images, built-in MIND-SSC model, {mode} mode.")
    flags = f"{'' if dimension == 3 else ' --dimension 2'}{'' if mode == 'Static' else ' --mode Jacobian'}"
    what = (f"IMPACT (MIND-SSC) + Mattes MI, {dimension}D multi-metric B-spline registration: the recommended recipe's "
            f"second stage in `elastix-bridge demo{flags}`." if recipe == "impact+mattes" else
            f"IMPACT (MIND-SSC, {mode} mode) {dimension}D B-spline registration: the IMPACT map of `elastix-bridge "
            f"demo{flags}`.")
    run = (f"-p parameter_files/affine_mi.txt -p {name}" if recipe == "impact+mattes" else f"-p {name}")
    lines = [
        f"// {what}",
        f"// Preset: {purpose}",
        "// Generated from elastix_bridge/demo.py (demo_parameter_map); keep the two identical.",
        f"// Run: elastix-bridge -f fixed.nii.gz -m moving.nii.gz -fMask fixed_mask.nii.gz {run} -out OUT",
        f"// After an affine: -p parameter_files/affine_mi.txt -p {name}   (see parameter_files/README.md)"
        if recipe == "impact" else "// The affine stage first, as above: this map refines its result locally.",
    ]
    for heading, entries in _entries(dimension, mode, recipe):
        lines += ["", f"// {heading}"]
        for key, values, comment in entries:
            text = f"({key} {' '.join(_format_value(v) for v in values)})"
            lines.append(text if not comment else f"{text:<52} // {comment}")
    return "\n".join(lines) + "\n"


_PURPOSE = {
    (3, "Static", "impact"): "multimodal 3D MR (e.g. T1 <-> T2 brain), built-in MIND-SSC model (no download); Static "
                             "mode: fast, features computed once per level.",
    (2, "Static", "impact"): "multimodal 2D slices (e.g. T1 <-> T2 brain slices), built-in 2D MIND-SSC model (no "
                             "download); Static mode.",
    (3, "Jacobian", "impact"): "multimodal 3D MR like impact_mind_static_3d.txt, in Jacobian mode: the model runs on a "
                               "patch at every sample and its gradient drives the registration (slower, exact "
                               "derivative).",
    (3, "Static", "impact+mattes"): "multimodal 3D MR (e.g. T1 <-> T2/PD/FLAIR brain), after affine_mi.txt: IMPACT "
                                    "(MIND-SSC) and Mattes MI in one map; the most accurate recipe on the accuracy "
                                    "suite (docs/benchmarks.md).",
    (2, "Static", "impact+mattes"): "multimodal 2D slices, after affine_mi.txt: IMPACT (2D MIND-SSC) and Mattes MI in "
                                    "one map.",
}

PARAMETER_FILES = {
    "impact_mind_static_3d.txt": (3, "Static", "impact"),
    "impact_mind_static_2d.txt": (2, "Static", "impact"),
    "impact_mind_jacobian_3d.txt": (3, "Jacobian", "impact"),
    "impact_mind_mattes_3d.txt": (3, "Static", "impact+mattes"),
    "impact_mind_mattes_2d.txt": (2, "Static", "impact+mattes"),
}

#: The recipe ``elastix-bridge demo`` recommends: its parameter files (in ``parameter_files/``), in order.
RECOMMENDED = {"name": "affine + IMPACT (MIND-SSC) + Mattes MI",
               "parameter_files": {3: ["affine_mi.txt", "impact_mind_mattes_3d.txt"],
                                   2: ["affine_mi.txt", "impact_mind_mattes_2d.txt"]}}


def write_parameter_files(folder: str | Path) -> list:
    """Write ``parameter_files/impact_mind_*.txt`` (:data:`PARAMETER_FILES`) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (d, mode, recipe) in PARAMETER_FILES.items():
        (folder / name).write_text(parameter_file_text(d, mode, recipe))
        written.append(folder / name)
    return written


def mattes_parameter_map(dimension: int) -> dict:
    """elastix's Mattes MI B-spline map with the same grid, pyramid, samples and iterations as the
    impact+mattes recipe (:func:`demo_parameter_map`), without IMPACT: the classic peer of the recipe."""
    pmap = demo_parameter_map(dimension, "Static", "impact+mattes")
    for key in [k for k in pmap if k.startswith("Impact") or k.startswith("Metric") or k == "UseRelativeWeights"]:
        del pmap[key]
    pmap["Registration"] = ["MultiResolutionRegistration"]
    pmap["Metric"] = ["AdvancedMattesMutualInformation"]
    return pmap


# --------------------------------------------------------------------------------------------
# the demo


def upstream_brain_parameter_file(shared: Path, folder: Path, mode: str = "Static") -> Path:
    """Upstream's 2D IMPACT test file for the brain pair of ``shared``, made runnable from anywhere.

    Changed only where it must be: the model path becomes absolute, ``ImpactWriteFeatureMaps``
    points into ``folder``, and for ``mode="Jacobian"`` the mode and a 7×7 patch are set (Jacobian
    mode needs a patch; ``ImpactPatchSize 0`` is Static-only, as upstream).

    Raises:
        FileNotFoundError: ``shared`` lacks the brain pair's parameter file.
        ValueError: the upstream file no longer has the expected entries.
    """
    text = (Path(shared) / "data" / "elastix-2d-brain" / "upstream-parameters.2D.IMPACT.bspline.ASGD.002.txt"
            ).read_text()
    model = (Path(shared) / "models" / "R1D2_2D.pt").resolve()
    edits = [(r'"\./R1D2_2D\.pt"', f'"{model}"', 2),
             (r'\(ImpactWriteFeatureMaps "[^"]*"\)',
              f'(ImpactWriteFeatureMaps "{Path(folder).resolve() / "Features"}/")', 1)]
    if mode == "Jacobian":
        edits += [(r"\(ImpactPatchSize([01]) 0 0\)", r"(ImpactPatchSize\1 7 7)", 2),
                  (r'\(ImpactMode "Static"\)', '(ImpactMode "Jacobian")', 1)]
    for pattern, replacement, count in edits:
        text, n = re.subn(pattern, replacement, text)
        if n != count:
            raise ValueError(f"the upstream 2D parameter file changed: expected {count} match(es) of {pattern}")
    path = Path(folder) / f"parameters.2D.IMPACT.{mode}.txt"
    path.write_text(text)
    return path


def run_brain_pair(shared: Path, out: Path, mode: str = "Static") -> dict:
    """Register the real 2D brain pair of ``shared`` with upstream's IMPACT file and the R1D2 MIND model.

    Returns NMI(fixed, result) and the Dice of the warped moving mask with the fixed mask (the
    transform applied by itk-elastix's transformix), next to the identity values, and the time.
    """
    itk = _itk()
    data = Path(shared) / "data" / "elastix-2d-brain"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fixed = itk.imread(str(data / "fixed.mhd"), itk.F)
    moving = itk.imread(str(data / "moving.mhd"), itk.F)
    fmask, mmask = read_mask(data / "mask_fixed.mhd"), read_mask(data / "mask_moving.mhd")
    pmap = read_parameter_file(upstream_brain_parameter_file(shared, out, mode))
    tic = time.perf_counter()
    result, tp = elastix_registration_method(fixed, moving, parameter_object=pmap, fixed_mask=fmask,
                                             moving_mask=mmask, output_directory=str(out), log_to_file=True)
    seconds = time.perf_counter() - tic
    fixed_mask = itk.array_from_image(fmask) > 0
    tp.SetParameter(0, "FinalBSplineInterpolationOrder", "0")
    mmask_float = itk.cast_image_filter(mmask, ttype=(type(mmask), itk.Image[itk.F, 2]))
    warped = itk.array_from_image(itk.transformix_filter(mmask_float, tp)) > 0.5
    return {"brain_2d_mode": mode,
            "brain_2d_identity_nmi": round(float(nmi(fixed, moving)), 4),
            "brain_2d_identity_dice": round(float(dice(itk.array_from_image(mmask) > 0, fixed_mask)), 4),
            "brain_2d_nmi": round(float(nmi(fixed, result)), 4),
            "brain_2d_dice": round(float(dice(warped, fixed_mask)), 4),
            "brain_2d_seconds": round(seconds, 1)}


#: The demo's methods, in the report's and the picture's order: (key, label, files or recipe).
DEMO_METHODS = ("elastix_mattes", "impact", "recommended")
_LABELS_OF = {"elastix_mattes": "Mattes MI (elastix)", "impact": "IMPACT", "recommended": "recommended"}


def preset_path(name: str) -> Path:
    """The shipped preset ``parameter_files/<name>``: installed as the package data
    ``elastix_bridge.parameter_files``, or the checkout's ``parameter_files/`` folder.

    Raises:
        FileNotFoundError: no such preset (naming where it looked).
    """
    candidates = []
    try:
        candidates.append(Path(str(importlib.resources.files("elastix_bridge.parameter_files"))) / name)
    except (ImportError, TypeError, ValueError):  # a source checkout without installation
        pass
    candidates.append(Path(__file__).resolve().parents[1] / "parameter_files" / name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"preset {name} not found (looked in {', '.join(map(str, candidates))}); reinstall "
                            "elastix-bridge (pip install -e . from the checkout)")


def demo_chains(dimension: int, mode: str = "Static") -> dict:
    """The parameter maps of each demo method, in order: ``{key: [(file name, map dict), ...]}``.

    All three start with the same affine stage (``parameter_files/affine_mi.txt``, on elastix), so
    they differ only in the B-spline stage's metric: elastix's Mattes MI (:func:`mattes_parameter_map`),
    IMPACT alone (:func:`demo_parameter_map` in ``mode``), and the recommended recipe, IMPACT + Mattes
    MI in one map (:data:`RECOMMENDED`).
    """
    affine = ("affine_mi.txt", read_parameter_file(preset_path("affine_mi.txt"))[0].to_dict())
    impact_name = next((n for n, key in PARAMETER_FILES.items() if key == (dimension, mode, "impact")),
                       f"impact_mind_{mode.lower()}_{dimension}d.txt")
    return {"elastix_mattes": [affine, (f"mattes_{dimension}d.txt", mattes_parameter_map(dimension))],
            "impact": [affine, (impact_name, demo_parameter_map(dimension, mode))],
            "recommended": [affine, (RECOMMENDED["parameter_files"][dimension][1],
                                     demo_parameter_map(dimension, "Static", "impact+mattes"))]}


def run_demo(out: Path, dimension: int = 3, mode: str = "Static", shared: Path | None = None) -> dict:
    """Make the demo pair in ``out`` and register it three ways: Mattes MI, IMPACT and the recommended recipe.

    Each method is an affine stage (elastix) then a B-spline stage: elastix's Mattes MI, IMPACT
    (MIND-SSC, ``mode``) alone, and the recommended recipe (IMPACT + Mattes MI in one map, the most
    accurate on the accuracy suite, docs/benchmarks.md). Each method's folder holds elastix's files
    and its parameter files (``parameters.<k>.txt``, as run: ``elastix-bridge ... -p parameters.0.txt
    -p parameters.1.txt`` repeats it). With ``shared`` (the project's ``../shared`` folder), the real
    2D brain pair is registered too (:func:`run_brain_pair`, into ``out/brain-2d``). Writes
    ``report.json`` (the returned numbers; ``"recommended"`` names the recipe and its files, in
    order) and ``demo.png`` in ``out``.

    Returns:
        dict of measured numbers per method: displacement errors (mm, mean and 95th percentile) in
        the fixed mask, NMI(fixed, result), the transform check (folded fraction, smallest Jacobian
        determinant, warnings), wall time (s).
    """
    itk = _itk()
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pair = make_demo_pair(out / "data", dimension=dimension, voxel_size=2.0, seed=0)
    fixed = itk.imread(str(pair["fixed"]), itk.F)
    moving = itk.imread(str(pair["moving"]), itk.F)
    fmask = itk.imread(str(pair["fixed_mask"]), itk.UC)
    true_u = itk.imread(str(pair["true_displacement"]))
    mask_arr = itk.array_from_image(fmask) > 0
    true_arr = np.asarray(itk.array_from_image(true_u), dtype=np.float64)
    data_seconds = time.perf_counter() - start
    initial = displacement_error(lambda points: points, true_u, mask_arr)
    fixed_arr = itk.array_from_image(fixed)

    report = {"pair": f"MNI152 T1 {dimension}D at 2 mm, known deformation + T2-like contrast",
              "dimension": dimension, "mode": mode,
              "initial_error_mm": round(initial["mean"], 3),
              "initial_nmi": round(float(nmi(fixed_arr, itk.array_from_image(moving), mask=mask_arr)), 4),
              "methods": {}}
    results, error_maps = {}, {"error before": np.linalg.norm(true_arr, axis=-1)}
    for key, chain in demo_chains(dimension, mode).items():
        folder = out / key.replace("_", "-")
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for k, (source, pmap) in enumerate(chain):  # the maps as run, beside the results
            path = folder / f"parameters.{k}.txt"
            write_transform_parameter_file(pmap, path)
            files.append(str(path.relative_to(out)))
        tic = time.perf_counter()
        with collected_checks() as checks:
            result, tp = elastix_registration_method(
                fixed, moving, parameter_object=[ParameterMap(m) for _, m in chain],
                fixed_mask=fmask, output_directory=str(folder), log_to_file=True, log_to_console=False)
        seconds = time.perf_counter() - tic
        field = itk.transformix_deformation_field(moving, tp, output_directory=str(folder))
        field_arr = np.asarray(itk.array_from_image(field), dtype=np.float64)
        err = displacement_error(field_arr, true_u, mask_arr)
        result_arr = itk.array_from_image(result)
        results[key] = result_arr
        error_maps[f"{_LABELS_OF[key]} error"] = np.linalg.norm(field_arr - true_arr, axis=-1)
        report["methods"][key] = {
            "label": _LABELS_OF[key], "parameter_files": files, "same_as": [name for name, _ in chain],
            "error_mm": round(err["mean"], 3), "error_p95_mm": round(err["p95"], 3),
            "recovered_fraction": round(1 - err["mean"] / initial["mean"], 3),
            "nmi": round(float(nmi(fixed_arr, result_arr, mask=mask_arr)), 4),
            "folded_fraction": checks[-1].folded_fraction, "jacobian_min": round(checks[-1].jacobian_min, 4),
            "transform_warnings": [w for c in checks for w in c.warnings],
            "seconds": round(seconds, 1)}
    methods = report["methods"]
    report["recommended"] = {"name": RECOMMENDED["name"], "parameter_files": methods["recommended"]["parameter_files"],
                             "same_as": [f"parameter_files/{n}" for n in RECOMMENDED["parameter_files"][dimension]]}
    report["data_seconds"] = round(data_seconds, 1)

    direction = np.array(fixed.GetDirection(), dtype=np.float64).reshape(dimension, dimension)
    spacing = [float(s) for s in itk.spacing(fixed)]
    impact_label = f"IMPACT {mode}" if mode != "Static" else "IMPACT"
    write_picture(out / "demo.png",
                  {"fixed (T1)": fixed_arr, "moving (T2-like)": itk.array_from_image(moving),
                   **{f"{_LABELS_OF[k]} result": results[k] for k in DEMO_METHODS}},
                  error_maps, mask_arr, direction, spacing,
                  f"MNI152 {dimension}D, affine then B-spline; mean error {report['initial_error_mm']:.2f} mm before: "
                  f"Mattes MI {methods['elastix_mattes']['error_mm']:.2f}, {impact_label} (MIND-SSC) "
                  f"{methods['impact']['error_mm']:.2f}, recommended (IMPACT + Mattes MI) "
                  f"{methods['recommended']['error_mm']:.2f} mm")
    if shared is not None:
        report.update(run_brain_pair(shared, out / "brain-2d", mode))
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    report["machine"] = {"python": platform.python_version(), "processor": platform.machine(),
                         "cpus": _cpu_count()}
    report["files"] = {"report": "report.json", "picture": "demo.png", "data": "data/",
                       **{key: key.replace("_", "-") + "/" for key in DEMO_METHODS}}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _itk():
    """The ``itk`` module, imported on first use."""
    import itk  # deferred: itk takes seconds to import; the command line imports this module for every command

    return itk


if __name__ == "__main__":  # python -m elastix_bridge.demo --write-parameter-files parameter_files
    if len(sys.argv) == 3 and sys.argv[1] == "--write-parameter-files":
        for p in write_parameter_files(sys.argv[2]):
            print(f"wrote {p}")
    else:
        print("usage: python -m elastix_bridge.demo --write-parameter-files FOLDER", file=sys.stderr)
        sys.exit(2)
