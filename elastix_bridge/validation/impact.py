"""The IMPACT side of a map (docs/design.md §I2): its ``Impact…`` keys against the known set, the model
files, the feature-map folders, Jacobian patches and Static feature grids against the images' sizes,
the pyramid levels of a bridge Impact stage, and the CUDA device a level asks for."""
from __future__ import annotations

import difflib
import logging
import math
import os
import re
import zipfile
from pathlib import Path

from elastix_bridge import transform_check
from elastix_bridge.core.elastix_names import COMPONENTS, PARAMETERS
from elastix_bridge.core.impact_parameters import IMPACT_LIST_OPTIONS, IMPACT_SCALAR_OPTIONS, resolve_model_path
from elastix_bridge.core.parameters import ParameterError
from elastix_bridge.core.reserved_models import RESERVED_MODELS
from elastix_bridge.engine.images.pyramids import pyramid_class
from elastix_bridge.engine.stage_settings import map_pyramid_schedule
from elastix_bridge.runtime.loader import ImpactModelError, ImpactUnavailableError, model_file_problem, resolve_device
from elastix_bridge.validation.names import _did_you_mean, _unlabelled

log = logging.getLogger("elastix_bridge")


_KNOWN_IMPACT_KEYS = ("Impact[Fixed|Moving]{ModelsPath, Dimension, NumberOfChannels, PatchSize, VoxelSize, "
                      "LayersMask}<level>, Impact{SubsetFeatures, PCA, LayersWeight, Distance}<level> (e.g. "
                      "ImpactPatchSize0) and [Metric<i>]Impact{Mode, GPU, UseMixedPrecision, "
                      "FeaturesMapUpdateInterval, FeatureMapOutputDirectory, WriteFeatureMaps}")


def _check_impact_keys(pmap, where: str, levels: int, uses_impact: bool, full: bool, warn: bool = True) -> None:
    """IMPACT keys against the known set (error, with suggestions); other unknown keys are logged as warnings.

    ``full`` (the check with images): also refuse unnumbered list options (``ImpactPatchSize``; before,
    they are left to :func:`~elastix_bridge.core.impact_parameters.impact_levels`, which explains the rewrite
    they need) and log the warnings (once per request, although the command checks its maps twice).
    """
    for key in pmap.keys():
        plain = _unlabelled(key)
        if not plain.startswith("Impact"):
            if full and warn and plain not in PARAMETERS and plain not in COMPONENTS \
                    and plain not in transform_check.THRESHOLD_KEYS:
                log.warning("%s: (%s ...) is not a parameter that elastix or elastix-bridge reads; it is ignored, as "
                            "elastix ignores it.%s", where, key, _did_you_mean(plain, PARAMETERS))
            continue
        base, number = re.fullmatch(r"(.*?)(\d*)", plain).groups()
        option = base[len("Impact"):]
        hint = ""
        if option in IMPACT_SCALAR_OPTIONS:
            if not number:
                continue
            problem = f"per-level scalar options take no level number: write ({base} <level 0> <level 1> ...)"
        elif option in IMPACT_LIST_OPTIONS and key != plain:
            problem = f"level-indexed IMPACT options take no component-label prefix: write ({plain} ...)"
        elif option in IMPACT_LIST_OPTIONS and number:
            if full and warn and int(number) >= levels:
                log.warning("%s: (%s ...) is for level %s but the map has NumberOfResolutions %d; it is ignored, as "
                            "elastix ignores it", where, key, number, levels)
            continue
        elif option in IMPACT_LIST_OPTIONS:
            if not full:
                continue
            problem = f"a level-indexed option needs its level number (e.g. '{base}0'); elastix never reads it"
        else:
            problem = "it is not an IMPACT parameter"
            # Compared without the common "Impact" prefix, which would make every name look close.
            close = difflib.get_close_matches(option, IMPACT_LIST_OPTIONS + IMPACT_SCALAR_OPTIONS, n=2, cutoff=0.6)
            if close:
                names = [f"Impact{c}" + (number if c in IMPACT_LIST_OPTIONS else "") for c in close]
                hint = f" Did you mean {' or '.join(repr(n) for n in names)}?"
        message = f"{where}: ({key} ...): {problem}.{hint} Known IMPACT keys: {_KNOWN_IMPACT_KEYS}."
        if uses_impact:
            raise ParameterError(message)
        if full and warn:
            log.warning("%s (The map does not use (Metric \"Impact\"), so it is ignored.)", message)


def _check_model_files(pmap, configs) -> None:
    """Every model file of every level exists (built-in model names are written on first use)."""
    for cfg in configs:
        for side, models in (("Fixed", cfg.fixed_models), ("Moving", cfg.moving_models)):
            key = (f"Impact{side}ModelsPath{cfg.level}" if pmap.has(f"Impact{side}ModelsPath{cfg.level}")
                   else f"ImpactModelsPath{cfg.level}")
            for model in models:
                if model.path in RESERVED_MODELS:
                    continue
                path = resolve_model_path(model.path)
                where = f"{key} {model.path!r}"
                if not Path(model.path).expanduser().is_absolute():
                    where += f" (relative to the current working directory {os.getcwd()})"
                problem = model_file_problem(path)
                if problem:
                    raise ImpactModelError(f"{where}: {problem}")
                if not zipfile.is_zipfile(path):  # TorchScript and torch.export files are zip archives
                    raise ImpactModelError(f"{where}: not a TorchScript or torch.export model (both are zip archives, "
                                           "this file is not); save the model with torch.jit.script(model).save(path) "
                                           "or torch.export.save(program, path) with a .pt2 name")


def _check_feature_map_directories(configs) -> None:
    """Every ``ImpactFeatureMapOutputDirectory`` (Static mode) is a folder or can be made one: not a file,
    under a writable folder (the stage makes it with ``mkdir(parents=True)`` when it writes the first map).
    Nothing is created here.

    Raises:
        ParameterError: naming the level, the directory, what is in the way and the fix.
    """
    for cfg in configs:
        if not cfg.feature_map_directory:
            continue
        directory = Path(cfg.feature_map_directory).expanduser()
        where = f"level {cfg.level}: (ImpactFeatureMapOutputDirectory \"{cfg.feature_map_directory}\")"
        existing = directory
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if existing.exists() and not existing.is_dir():
            what = "is a file" if existing == directory else f"lies under {existing}, which is a file"
            raise ParameterError(f"{where} {what}, so no feature map can be written there; name a folder "
                                 f"(existing or new), or remove the key to write no feature maps")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ParameterError(f"{where}: {existing} is not writable, so the folder cannot be made or written; "
                                 f"name a folder you can write, or remove the key")


def _check_patches_fit(configs, geometries) -> None:
    """Jacobian mode: every model's patch fits inside the fixed and the moving image along each of its axes.

    The patch of ``ImpactPatchSize<L>`` P voxels of ``ImpactVoxelSize<L>`` v mm spans (P − 1)·v mm along
    model axis a (ITK order x, y[, z]; a model of lower dimension lies along the first image axes,
    :func:`elastix_bridge.engine.metrics.impact.patch_grid_offsets`); wider than the image's n·s mm,
    every patch has points outside the image, and the stage fails with "too many samples map outside".

    Raises:
        ParameterError: naming the level, the patch in voxels and mm, the image and its extent.
    """
    for cfg in configs:
        if cfg.mode != "Jacobian":
            continue
        for side, geometry in zip(("fixed", "moving"), geometries):
            for model in (cfg.fixed_models if side == "fixed" else cfg.moving_models):
                for a, (p, v) in enumerate(zip(model.patch_size, model.voxel_size)):
                    span, extent = (int(p) - 1) * float(v), geometry.size[a] * float(geometry.spacing[a])
                    if span > extent:
                        raise ParameterError(
                            f"level {cfg.level}: the Jacobian patch of model {model.path!r} "
                            f"(ImpactPatchSize{cfg.level} {' '.join(map(str, model.patch_size))} × ImpactVoxelSize{cfg.level} "
                            f"{' '.join(f'{x:g}' for x in model.voxel_size)} mm) spans {span:g} mm along {'xyz'[a]}, "
                            f"more than the {side} image's extent of {extent:g} mm ({geometry.size[a]} voxels × "
                            f"{geometry.spacing[a]:g} mm): every sample would map outside the image; use a smaller "
                            f"ImpactPatchSize{cfg.level} or ImpactVoxelSize{cfg.level}")


def _check_static_grids(configs, fixed) -> None:
    """Static mode: the feature grid at ``ImpactVoxelSize`` has at least 2 points along every axis.

    The bridge's Static feature maps are sampled on round(n·s / v) points per axis over the fixed image's
    extent n·s mm, at least 1 (:meth:`elastix_bridge.engine.metrics.impact.ImpactMetric._static_grid`).
    One point along an axis gives features that are constant along it: the metric is 0, its derivative
    0, and the stage returns the identity transform as if it had converged.

    Raises:
        ParameterError: naming the level, the model, the voxel size in mm and the image's extent.
    """
    for cfg in configs:
        if cfg.mode != "Static":
            continue
        for model in cfg.fixed_models + cfg.moving_models:
            for a, v in enumerate(model.voxel_size[:fixed.dimension]):
                extent = fixed.size[a] * float(fixed.spacing[a])
                if math.floor(extent / float(v) + 0.5) < 2:
                    raise ParameterError(
                        f"level {cfg.level}: ImpactVoxelSize{cfg.level} {float(v):g} mm along {'xyz'[a]} of model "
                        f"{model.path!r} gives a Static feature grid of 1 point across the fixed image's extent of "
                        f"{extent:g} mm ({fixed.size[a]} voxels × {fixed.spacing[a]:g} mm): the features would be "
                        f"constant and the metric 0; use ImpactVoxelSize{cfg.level} of at most {extent / 1.5:.3g} mm "
                        "along that axis, or check the image's spacing")


#: Voxels per axis an IMPACT level image needs: with 1 the Static feature maps and the Jacobian patches are
#: interpolated from one value, so the features are constant, the metric 0 and the transform the identity.
IMPACT_LEVEL_MINIMUM = 2


def _check_impact_level_sizes(pmap, levels: int, geometries) -> None:
    """Bridge Impact stages: every pyramid level keeps :data:`IMPACT_LEVEL_MINIMUM` voxels per axis or more.

    The Shrinking, Recursive and Generic pyramids make a level of ``max(1, floor(n / f))`` voxels per axis
    (ITK ``ShrinkImageFilter`` / ``MultiResolutionPyramidImageFilter``); the Smoothing pyramid keeps the size
    (each pyramid's ``level_size``, :mod:`elastix_bridge.engine.images.pyramids`).

    Raises:
        ParameterError: naming the level, the pyramid and its factors, the image and level sizes and the fix.
    """
    for which, geometry in zip(("Fixed", "Moving"), geometries):
        kind = pmap.get(f"{which}ImagePyramid", default=f"{which}SmoothingImagePyramid")
        try:
            pyramid = pyramid_class(kind)
            schedule = map_pyramid_schedule(pmap, which, kind, levels, geometry)
        except ValueError:
            continue  # a pyramid the bridge does not model, or a schedule the stage's own check names
        for level in range(levels):
            factors = [int(f) for f in schedule.rescale[level]]
            size = pyramid.level_size(geometry, schedule, level)
            small = [a for a, n in enumerate(size) if n < IMPACT_LEVEL_MINIMUM <= geometry.size[a]]
            if small:
                a, axes, full = small[0], "xyzt"[:len(size)], " × ".join(map(str, geometry.size))
                raise ParameterError(
                    f"level {level}: the {kind} shrinks the {which.lower()} image ({full} "
                    f"voxels in {', '.join(axes)}) by {' '.join(map(str, factors))} to {' × '.join(map(str, size))} "
                    f"voxels, {size[a]} along {axes[a]}: the IMPACT features would be constant and the metric 0; use "
                    f"{which}ImagePyramidSchedule factors of at most {geometry.size[a] // IMPACT_LEVEL_MINIMUM} along "
                    f"{axes[a]}, or a larger image")


def _check_devices(configs) -> None:
    """A level with ``ImpactGPU`` >= 0 has a usable CUDA device (this imports torch: only for Impact stages
    on the bridge engine, which need it anyway).

    Raises:
        elastix_bridge.runtime.loader.ImpactUnavailableError: naming the level, the device and the fix.
    """
    for cfg in configs:
        if cfg.gpu >= 0:
            try:
                resolve_device(cfg.gpu)
            except ImpactUnavailableError as error:
                raise ImpactUnavailableError(f"resolution level {cfg.level}: {error}") from None
