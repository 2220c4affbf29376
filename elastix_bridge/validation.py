"""Everything about a registration request checked before any work: one pass, before any stage runs.

:func:`validate_request` is the one entry point; :func:`elastix_bridge.api.elastix_registration_method`
calls it before the first stage (so the drop-in and the command get it too), and the command calls
:func:`validate_maps` once more on the maps alone before it reads the images. It checks, for every map
of the chain:

* component names against elastix's (``(Metric "Impakt")`` → "did you mean 'Impact'?"), and, for
  maps that run on the bridge engine, against the components the bridge runs;
* the type and range of every value the bridge engine reads, with elastix's conversion rules
  (:meth:`elastix_bridge.core.parameters.ParameterMap.get_entry`): ``(MaximumNumberOfIterations -3)`` is an
  error, as in elastix;
* pyramid and grid schedules of the right length (elastix warns and silently uses its default
  schedule; here that is an error, since the schedule the user wrote is then not the one used);
* the result-writing keys (``ResultImagePixelType``, ``WriteResultImage``, ``ResultImageFormat``);
* IMPACT keys against the known set (an unknown ``Impact…`` key is an error with suggestions; an
  unknown non-IMPACT key is a warning, elastix ignores it) and every level's IMPACT options
  (:func:`elastix_bridge.core.impact_parameters.impact_levels`);

and for the call: the images and masks (itk images, equal dimensions, non-empty masks, finite
pixels), ``number_of_threads``, and keywords a chain with bridge stages does not support.

Errors are :class:`~elastix_bridge.core.parameters.ParameterError`,
:class:`~elastix_bridge.core.impact_parameters.ImpactParameterError`,
:class:`~elastix_bridge.engine.registration.UnsupportedComponentError` (all ``ValueError``),
:class:`InputImageError` (``ValueError``) and ``TypeError`` for arguments of the wrong kind.
Nothing here imports torch; itk is imported only to check ``ResultImageFormat``.
"""
from __future__ import annotations

import difflib
import logging
import math
import os
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from elastix_bridge.core.parameters import ParameterError, UInt

if TYPE_CHECKING:  # pragma: no cover
    import itk

    from elastix_bridge.core.parameters import ParameterMap

log = logging.getLogger("elastix_bridge")

__all__ = ["InputImageError", "check_component_names", "check_image_argument", "check_mask_dimension", "check_threads", "validate_images", "validate_maps",
           "validate_request"]


class InputImageError(ValueError):
    """An input image or mask cannot be registered as given (dimension, empty mask, NaN/Inf pixels)."""


# ----------------------------------------------------------------------------------------------------------------
# value types and ranges of the keys the bridge engine reads (elastix's types: docs/design.md §E1.3)

def _at_least(low):
    return lambda v: None if v >= low else f"must be >= {low}"


def _between(low, high):
    return lambda v: None if low <= v <= high else f"must be between {low} and {high}"


def _positive(v):
    return None if v > 0 else "must be > 0"


def _one_of(*names):
    return lambda v: None if v in names else "must be one of " + ", ".join(f'"{n}"' for n in names)


#: key → (type, check or None); every entry of the key is converted and checked. Component-label
#: prefixes (``Metric0``, ``Optimizer0``, ...) are stripped before the lookup.
VALUE_TYPES = {
    # counts (unsigned in elastix: a leading "-" is a conversion error)
    "NumberOfResolutions": (UInt, _between(1, 32)),  # more levels would shrink the coarsest image by 2**32
    "FixedImageDimension": (UInt, None),
    "MovingImageDimension": (UInt, None),
    "MaximumNumberOfIterations": (UInt, None),
    "NumberOfSpatialSamples": (UInt, _at_least(1)),
    "NumberOfHistogramBins": (UInt, None),
    "NumberOfFixedHistogramBins": (UInt, None),
    "NumberOfMovingHistogramBins": (UInt, None),
    "NumberOfJacobianMeasurements": (UInt, None),
    "NumberOfGradientMeasurements": (UInt, None),
    "NumberOfSamplesForExactGradient": (UInt, None),
    "NumberOfSamplesForCenteredTransformInitialization": (UInt, None),
    "MaximumNumberOfSamplingAttempts": (UInt, None),
    "MaximumNumberOfLineSearchIterations": (UInt, None),
    "LBFGSUpdateAccuracy": (UInt, None),
    "RandomSeed": (UInt, None),
    "SampleGridSpacing": (int, _at_least(1)),
    # orders
    "BSplineTransformSplineOrder": (UInt, _between(1, 3)),
    "BSplineInterpolationOrder": (UInt, _between(0, 5)),
    "FinalBSplineInterpolationOrder": (UInt, _between(0, 5)),
    "FixedImageBSplineInterpolationOrder": (UInt, _between(0, 5)),
    "FixedKernelBSplineOrder": (UInt, _between(0, 3)),
    "MovingKernelBSplineOrder": (UInt, _between(0, 3)),
    # schedules (lengths are checked in _check_schedules)
    "ImagePyramidSchedule": (UInt, _at_least(1)),
    "FixedImagePyramidSchedule": (UInt, _at_least(1)),
    "MovingImagePyramidSchedule": (UInt, _at_least(1)),
    "ImagePyramidRescaleSchedule": (UInt, _at_least(1)),
    "FixedImagePyramidRescaleSchedule": (UInt, _at_least(1)),
    "MovingImagePyramidRescaleSchedule": (UInt, _at_least(1)),
    "ImagePyramidSmoothingSchedule": (float, _at_least(0)),
    "FixedImagePyramidSmoothingSchedule": (float, _at_least(0)),
    "MovingImagePyramidSmoothingSchedule": (float, _at_least(0)),
    "GridSpacingSchedule": (float, _positive),
    "FinalGridSpacingInPhysicalUnits": (float, _positive),
    "FinalGridSpacingInVoxels": (float, _positive),
    # real numbers
    "SP_a": (float, None), "SP_A": (float, None), "SP_alpha": (float, None),
    "MaximumStepLength": (float, _positive), "MaximumStepLengthRatio": (float, _positive),
    "MinimumStepLength": (float, None), "MinimumGradientMagnitude": (float, None), "RelaxationFactor": (float, None),
    "SigmoidMax": (float, None), "SigmoidMin": (float, None), "SigmoidScale": (float, None),
    "SigmoidScaleFactor": (float, None), "SigmoidInitialTime": (float, None),
    "StepLength": (float, None), "LineSearchValueTolerance": (float, None),
    "LineSearchGradientTolerance": (float, None), "GradientMagnitudeTolerance": (float, None),
    "RequiredRatioOfValidSamples": (float, _between(0, 1)),
    "FixedLimitRangeRatio": (float, None), "MovingLimitRangeRatio": (float, None),
    "SampleRegionSize": (float, _positive), "DefaultPixelValue": (float, None),
    "Scales": (float, None), "CenterOfRotationPoint": (float, None), "LowerThresholdForCenterGravity": (float, None),
    "MovingImageDerivativeScales": (float, None),
    "Weight": (float, None), "RelativeWeight": (float, None),  # Metric<i>Weight, Metric<i>RelativeWeight
    # booleans ("true" / "false", exactly)
    **{key: (bool, None) for key in (
        "ErodeMask", "ErodeFixedMask", "ErodeMovingMask", "WriteResultImage", "WriteIterationInfo",
        "WriteTransformParametersEachResolution", "AutomaticParameterEstimation", "AutomaticTransformInitialization",
        "AutomaticScalesEstimation", "UseRandomSampleRegion", "NewSamplesEveryIteration", "CheckNumberOfSamples",
        "UseRelativeWeights", "SubtractMean", "UseNormalization", "UseAdaptiveStepSizes", "UseCruzAcceleration",
        "NoiseCompensation", "UseConstantStep", "CenterOfGravityUsesLowerThreshold", "UseFastAndLowMemoryVersion",
        "UseJacobianPreconditioning", "FiniteDifferenceDerivative",
        "Use")},  # Metric<i>Use
    # names
    "HowToCombineTransforms": (str, _one_of("Compose", "Add")),
    "ASGDParameterEstimationMethod": (str, _one_of("Original", "DisplacementDistribution")),
    "AutomaticTransformInitializationMethod": (str, _one_of("GeometricalCenter", "CenterOfGravity", "Origins",
                                                            "GeometryTop")),
}

# Component-label prefixes elastix puts before a key (``ReadParameter(..., prefix, ...)``).
_LABEL = re.compile(r"(Metric|Optimizer|Transform|Interpolator|ImageSampler|ResampleInterpolator|Resampler|"
                    r"FixedImagePyramid|MovingImagePyramid|Registration)\d+(?=[A-Z])")


def _unlabelled(key: str) -> str:
    """``key`` without a leading component label: ``Optimizer0MaximumNumberOfIterations`` → the plain name."""
    m = _LABEL.match(key)
    return key[m.end():] if m else key


# ----------------------------------------------------------------------------------------------------------------
# parameter maps


def _where(k: int, names) -> str:
    return f"parameter map {k}" + (f" ({names[k]})" if names and k < len(names) and names[k] else "")


def _did_you_mean(name: str, candidates) -> str:
    """`` Did you mean 'X' or 'Y'?`` for the close matches of ``name`` (or a case-insensitive match), or ``""``."""
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in candidates}
        close = [lowered[name.lower()]] if name.lower() in lowered else []
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def check_component_names(maps: Sequence[ParameterMap], names: Optional[Sequence[str]] = None) -> None:
    """Every component name of every map is one of elastix's (elastix says only ``Internal elastix error``).

    Used by the drop-in for parameter objects that go to itk-elastix unchanged.

    Raises:
        UnsupportedComponentError: the map, the key, the name, the close matches and the known names.
    """
    for k, pmap in enumerate(maps):
        try:
            _check_component_names(pmap)
        except ValueError as error:
            raise _in_map(error, _where(k, names)) from None


def _check_component_names(pmap) -> None:
    from elastix_bridge.core.elastix_names import COMPONENTS
    from elastix_bridge.engine.components import UnsupportedComponentError

    for key, known in COMPONENTS.items():
        for value in pmap.values(key):
            if value not in known:
                raise UnsupportedComponentError(
                    f"({key} \"{value}\"): {value!r} is not an elastix {key} component."
                    f"{_did_you_mean(value, known)} Known: {', '.join(known)}.")


_UINT_MAX = 2**64 - 1


def _check_values(pmap) -> None:
    """Type and range of every entry of the keys in :data:`VALUE_TYPES`."""
    for key in pmap.keys():
        spec = VALUE_TYPES.get(_unlabelled(key))
        if spec is None:
            continue
        typ, check = spec
        for i in range(len(pmap.values(key))):
            value = pmap.get_entry(key, i, type=typ)
            problem = check(value) if check is not None else None
            if typ is UInt and value > _UINT_MAX:  # elastix reads counts into 64-bit unsigned integers
                problem = f"is out of range: elastix's unsigned integers go up to {_UINT_MAX}"
            if problem:
                raise ParameterError(f"parameter {key!r}, entry {i}: {pmap.values(key)[i]!r} {problem}")


def _check_result_keys(pmap) -> None:
    """``ResultImagePixelType``, ``WriteResultImage`` and ``ResultImageFormat`` before any result is written."""
    from elastix_bridge.core.elastix_names import RESULT_PIXEL_TYPES

    pixel = pmap.get("ResultImagePixelType", default="short")
    if pixel not in RESULT_PIXEL_TYPES:
        raise ParameterError(f"(ResultImagePixelType \"{pixel}\") is not an elastix pixel type."
                             f"{_did_you_mean(pixel, RESULT_PIXEL_TYPES)} "
                             f"Use one of {', '.join(sorted(RESULT_PIXEL_TYPES))}.")
    if pmap.has("ResultImageFormat") and pmap.get("WriteResultImage", default=True, type=bool):
        fmt = pmap.get("ResultImageFormat")
        import itk

        io = itk.ImageIOFactory.CreateImageIO(f"result.{fmt}", itk.CommonEnums.IOFileMode_WriteMode)
        if io is None or not fmt:
            raise ParameterError(
                f"(ResultImageFormat \"{fmt}\"): ITK cannot write 'result.{fmt}'; use a file extension "
                f"ITK writes, e.g. \"mhd\", \"mha\", \"nii\", \"nii.gz\" or \"nrrd\" (or (WriteResultImage \"false\"))")


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
    from elastix_bridge.core.elastix_names import COMPONENTS, PARAMETERS
    from elastix_bridge.core.impact_parameters import IMPACT_LIST_OPTIONS, IMPACT_SCALAR_OPTIONS

    for key in pmap.keys():
        plain = _unlabelled(key)
        if not plain.startswith("Impact"):
            if full and warn and plain not in PARAMETERS and plain not in COMPONENTS:
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


def _check_against_dimension(pmap, where: str, levels: int, dimension: int, warn: bool = True) -> None:
    """``Fixed/MovingImageDimension`` equal the images' dimension; pyramid schedules have levels × dimension entries.

    Fewer: an error (elastix would silently use its default schedule instead). More: a warning; elastix
    reads the first levels × dimension entries (upstream's own 2D IMPACT test file has six for 2 × 2).
    """
    for key in ("FixedImageDimension", "MovingImageDimension"):
        if pmap.has(key) and pmap.get(key, type=UInt) != dimension:
            raise ParameterError(f"({key} {pmap.get(key)}) but the images are {dimension}D; the map was written for "
                                 f"other images: change {key} to {dimension} (or remove it)")
    n = levels * dimension
    for key in pmap.keys():
        if re.fullmatch(r"((Fixed|Moving)?ImagePyramid(Rescale|Smoothing)?)?Schedule", _unlabelled(key)):
            count = len(pmap.values(key))
            if count < n:
                raise ParameterError(
                    f"({key} ...) has {count} values; it needs one per resolution level and image axis: "
                    f"NumberOfResolutions {levels} × dimension {dimension} = {n} (elastix would silently replace a "
                    f"schedule of the wrong length by its default one)")
            if count > n and warn:
                log.warning("%s: (%s ...) has %d values; only the first %d (NumberOfResolutions %d × dimension %d) "
                            "are used, as in elastix", where, key, count, n, levels, dimension)


def _check_model_files(pmap, configs) -> None:
    """Every model file of every level exists (built-in model names are written on first use)."""
    from elastix_bridge.core.impact_parameters import resolve_model_path
    from elastix_bridge.runtime.loader import ImpactModelError
    from elastix_bridge.models.mind import RESERVED_MODELS

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
                if not path.is_file():
                    raise ImpactModelError(f"{where}: model file not found; give an existing TorchScript file (an "
                                           f"absolute path avoids working-directory surprises) or a built-in model "
                                           f"name ({', '.join(RESERVED_MODELS)})")
                if not zipfile.is_zipfile(path):  # TorchScript and torch.export files are zip archives
                    raise ImpactModelError(f"{where}: not a TorchScript or torch.export model (both are zip archives, "
                                           "this file is not); save the model with torch.jit.script(model).save(path) "
                                           "or torch.export.save(program, path) with a .pt2 name")


def _check_devices(configs) -> None:
    """A level with ``ImpactGPU`` >= 0 has a usable CUDA device (this imports torch: only for Impact stages
    on the bridge engine, which need it anyway).

    Raises:
        elastix_bridge.runtime.loader.ImpactUnavailableError: naming the level, the device and the fix.
    """
    from elastix_bridge.runtime.loader import ImpactUnavailableError, resolve_device

    for cfg in configs:
        if cfg.gpu >= 0:
            try:
                resolve_device(cfg.gpu)
            except ImpactUnavailableError as error:
                raise ImpactUnavailableError(f"resolution level {cfg.level}: {error}") from None


def _in_map(error: Exception, where: str) -> Exception:
    """``error`` again, of the same type, with the map named in front of its message."""
    return type(error)(f"{where}: {error}")


def validate_maps(maps: Sequence[ParameterMap], engines: Optional[Sequence[str]] = None,
                  dimension: Optional[int] = None, names: Optional[Sequence[str]] = None, warn: bool = True) -> None:
    """Check every parameter map of a chain before any stage runs.

    Args:
        maps: :class:`~elastix_bridge.core.parameters.ParameterMap` per stage.
        engines: ``"bridge"`` / ``"elastix"`` per map (:func:`elastix_bridge.api.stage_engines`), or None
            when not known yet (then the bridge's own component list is not checked).
        dimension: image dimension D (2 or 3), or None before the images are read (then what depends on D
            is not checked: schedule lengths, the bridge's optimizer and grid settings, the IMPACT options
            per level and the model files; nor are warnings logged, which the check with images does).
        names: how messages name each map, e.g. ``"-p affine.txt"``; default ``"parameter map <k>"``.
        warn: log the warnings (unknown keys, schedules longer than needed); the command's early check
            leaves them to the request's check, so that each is logged once.

    Raises:
        UnsupportedComponentError: an unknown component name (with "did you mean"), or one the bridge
            engine does not run for a map it runs.
        ParameterError: a value of the wrong type or range, a schedule of the wrong length, a result key
            that cannot be written, an unknown ``Impact…`` key in an Impact map.
        ImpactParameterError: a missing or malformed IMPACT option at some level.
    """
    from elastix_bridge.api import uses_impact
    from elastix_bridge.engine.registration import check_components, check_stage_settings
    from elastix_bridge.core.impact_parameters import impact_levels

    for k, pmap in enumerate(maps):
        where = _where(k, names)
        impact = uses_impact(pmap)
        bridge = engines is not None and engines[k] == "bridge"
        try:
            missing = [key for key in ("Metric", "Optimizer", "Transform") if not pmap.has(key)]
            if missing:  # elastix stops with "Internal elastix error" after it has started
                raise ParameterError(
                    f"no ({' ...), ('.join(missing)} ...) line: elastix needs a Metric, an Optimizer and a Transform in "
                    "every parameter map" + (" (this one is empty: is it the right file?)" if not pmap.keys() else "")
                    + "; start from a file in parameter_files/ or from elastix's documentation")
            _check_component_names(pmap)
            _check_values(pmap)
            _check_result_keys(pmap)
            levels = pmap.get("NumberOfResolutions", default=3, type=UInt)
            components = check_components(pmap) if bridge else None
            if dimension is not None:
                _check_against_dimension(pmap, where, levels, dimension, warn)
                if bridge:
                    check_stage_settings(pmap, components, levels, dimension)
                if impact:
                    configs = impact_levels(pmap, levels, dimension,
                                            metric_index=pmap.values("Metric").index("Impact"))
                    _check_model_files(pmap, configs)
                    if bridge:
                        _check_devices(configs)
        except ValueError as error:  # the same error, naming the map
            raise _in_map(error, where) from None
        _check_impact_keys(pmap, where, levels, impact, full=dimension is not None, warn=warn)


# ----------------------------------------------------------------------------------------------------------------
# images and call arguments


def check_image_argument(value: Any, what: str) -> None:
    """Raise a TypeError saying what to pass when ``value`` is not an ``itk.Image`` (None is a mask left out).

    Numpy arrays are refused rather than guessed: an array has no spacing, origin or direction, and
    numpy's axis order is (z, y, x) where ITK's is (x, y, z).
    """
    if hasattr(value, "GetImageDimension") or (value is None and "mask" in what):
        return
    import os

    if isinstance(value, (str, bytes, os.PathLike)):
        path = os.fsdecode(value)
        raise TypeError(f"{what} is a path ({path!r}), not an image; read it first: itk.imread({path!r}, itk.F)"
                        + (" (a mask: itk.imread(path, itk.UC))" if "mask" in what else ""))
    if hasattr(value, "__array__") and hasattr(value, "shape"):
        raise TypeError(
            f"{what} is an array of shape {tuple(value.shape)}, not an itk.Image: elastix needs the image's spacing, "
            f"origin and direction. Use itk.image_from_array(array) (numpy axis order (z, y, x) becomes ITK's "
            f"(x, y, z)) and set its geometry with SetSpacing / SetOrigin / SetDirection, or read the file with "
            f"itk.imread(path, itk.F)")
    raise TypeError(f"{what} is a {type(value).__name__}, not an itk.Image; pass an image read with "
                    f"itk.imread(path, itk.F) or made with itk.image_from_array(array)")


def check_threads(number_of_threads: Any, what: str = "number_of_threads") -> None:
    """``number_of_threads`` is None or an integer >= 1 (elastix ``-threads``)."""
    if number_of_threads is None:
        return
    if isinstance(number_of_threads, bool) or not isinstance(number_of_threads, int) or number_of_threads < 1:
        raise ValueError(f"{what} {number_of_threads!r}: the number of threads must be an integer >= 1; "
                         f"leave it out to use all cores")


def _first_non_finite(image, what: str) -> None:
    """Raise naming the first NaN/Inf voxel (ITK index order x, y, z, and its physical point in mm)."""
    import itk
    import numpy as np

    array = itk.array_view_from_image(image)
    if array.dtype.kind not in "fc" or math.isfinite(float(np.sum(array, dtype=np.float64))):
        return  # a float32 sum in float64 cannot overflow: it is finite exactly when every pixel is
    flat = array.reshape(-1)
    position = int(np.argmax(~np.isfinite(flat)))
    count = int(np.count_nonzero(~np.isfinite(flat)))
    index = tuple(int(i) for i in reversed(np.unravel_index(position, array.shape)))
    point = tuple(float(x) for x in image.TransformIndexToPhysicalPoint(index))
    value = flat[position]
    raise InputImageError(
        f"{what} has {count} non-finite pixel(s) ({'NaN' if np.isnan(value) else 'Inf'} first at index "
        f"{list(index)} (x, y, z), physical point {[round(p, 4) for p in point]} mm); elastix cannot register "
        f"NaN or Inf: replace them (e.g. numpy.nan_to_num on itk.array_view_from_image(image)) or mask them out "
        f"and set them to a finite value")


def check_mask_dimension(mask: itk.Image, dimension: int, which: str) -> None:
    """A mask has its image's dimension (itk-elastix's own check is a SWIG type error).

    Raises:
        InputImageError: naming the mask (``which`` is ``"fixed"`` or ``"moving"``) and both dimensions.
    """
    if mask is not None and mask.GetImageDimension() != dimension:
        raise InputImageError(f"the {which} mask is {mask.GetImageDimension()}D but the {which} image is "
                              f"{dimension}D; give a mask of the image's dimension")


def validate_images(fixed_image: itk.Image, moving_image: itk.Image, fixed_mask: Optional[itk.Image] = None,
                    moving_mask: Optional[itk.Image] = None) -> int:
    """Check the images and masks of a registration; returns the image dimension.

    Raises:
        TypeError: an argument is not an ``itk.Image`` (see :func:`check_image_argument`).
        InputImageError: fixed and moving dimensions differ, a mask's dimension differs from its image's,
            a mask has no non-zero pixel or none inside its image's extent, or an image has NaN/Inf pixels
            (first offending voxel named).
    """
    import itk
    import numpy as np

    for value, what in ((fixed_image, "fixed_image"), (moving_image, "moving_image"), (fixed_mask, "fixed_mask"),
                        (moving_mask, "moving_mask")):
        check_image_argument(value, what)
    dimension = fixed_image.GetImageDimension()
    if moving_image.GetImageDimension() != dimension:
        raise InputImageError(f"the fixed image is {dimension}D but the moving image is "
                              f"{moving_image.GetImageDimension()}D; elastix registers images of equal dimension")
    for mask, which in ((fixed_mask, "fixed"), (moving_mask, "moving")):
        if mask is None:
            continue
        check_mask_dimension(mask, dimension, which)
        if not np.any(itk.array_view_from_image(mask)):
            raise InputImageError(f"the {which} mask is empty (no non-zero pixel): no sample could be drawn "
                                  f"{'in the fixed image' if which == 'fixed' else 'inside the moving image'}; "
                                  f"check the mask file, or leave the mask out")
        image = fixed_image if which == "fixed" else moving_image
        inside, box = _physical_box(mask, itk.array_view_from_image(mask) != 0), _physical_box(image)
        if np.any(inside[1] < box[0]) or np.any(inside[0] > box[1]):
            raise InputImageError(
                f"the {which} mask's non-zero region (physical {', '.join('xyz'[:dimension])} from {np.round(inside[0], 2).tolist()} to "
                f"{np.round(inside[1], 2).tolist()} mm) lies entirely outside the {which} image ({np.round(box[0], 2).tolist()}"
                f" to {np.round(box[1], 2).tolist()} mm): check the mask's origin, spacing and direction against the "
                f"image's, or that the right mask was given")
    _first_non_finite(fixed_image, "the fixed image")
    _first_non_finite(moving_image, "the moving image")
    return dimension


def _physical_box(image, zyx_selected=None):
    """Axis-aligned physical bounding box ``(low, high)``, ITK (x, y, z) order in mm, of the selected voxels
    (a numpy (z, y, x) boolean array, not all False) or of the whole image; voxels count with their
    half-voxel extent."""
    import itk
    import numpy as np

    size = np.array(image.GetLargestPossibleRegion().GetSize())
    low_index, high_index = np.zeros(len(size)), size - 1.0
    if zyx_selected is not None:
        for axis in range(len(size)):  # x is the last numpy axis
            hits = np.flatnonzero(zyx_selected.any(axis=tuple(a for a in range(len(size)) if a != len(size) - 1 - axis)))
            low_index[axis], high_index[axis] = hits[0], hits[-1]
    corners = np.array(np.meshgrid(*[(lo - 0.5, hi + 0.5) for lo, hi in zip(low_index, high_index)],
                                   indexing="ij")).reshape(len(size), -1).T
    matrix = itk.array_from_matrix(image.GetDirection()) * np.array(image.GetSpacing())  # columns scaled by spacing
    points = np.array(image.GetOrigin()) + corners @ matrix.T
    return points.min(axis=0), points.max(axis=0)


#: Keywords of ``elastix_registration_method`` that a chain with bridge stages understands.
CHAIN_KEYWORDS = ("number_of_threads", "initial_transform_parameter_file_name", "initial_transform_parameter_object")


def validate_request(maps: Sequence[ParameterMap], engines: Sequence[str], fixed_image: itk.Image,
                     moving_image: itk.Image, fixed_mask: Optional[itk.Image] = None,
                     moving_mask: Optional[itk.Image] = None,
                     keywords: Optional[dict] = None, names: Optional[Sequence[str]] = None) -> None:
    """The one check of a registration request before any work (no file written, no stage run).

    The command also calls :func:`validate_maps` on its maps alone, before it reads the images.

    Args:
        maps: the chain's :class:`~elastix_bridge.core.parameters.ParameterMap` list.
        engines: engine per map (``"bridge"`` / ``"elastix"``, :func:`elastix_bridge.api.stage_engines`).
        fixed_image, moving_image, fixed_mask, moving_mask: ``itk.Image`` (masks may be None).
        keywords: further keyword arguments of the call (itk-elastix's).
        names: how messages name each map (see :func:`validate_maps`).

    Raises:
        see :func:`validate_maps` and :func:`validate_images`; ``ValueError`` for a keyword that a chain
        with bridge stages does not support, or a bad ``number_of_threads``.
    """
    keywords = keywords or {}
    check_threads(keywords.get("number_of_threads"))
    if engines is not None and "bridge" in engines:
        unsupported = sorted(k for k in keywords if k not in CHAIN_KEYWORDS)
        if unsupported:
            raise ValueError(
                f"{', '.join(unsupported)}: not supported when a stage runs on the bridge engine (maps with "
                f"(Metric \"Impact\")); supported: {', '.join(CHAIN_KEYWORDS)}. Remove it, or run every map on "
                f"elastix with a native IMPACT plugin (engine='elastix')")
    dimension = validate_images(fixed_image, moving_image, fixed_mask, moving_mask)
    validate_maps(maps, engines, dimension, names)
