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
pixels), their sizes against every map's pyramids and Jacobian patches, the initial transform (read and,
for a chain with bridge stages, built), ``number_of_threads``, and keywords a chain with bridge stages
does not support.

Errors are :class:`~elastix_bridge.core.parameters.ParameterError`,
:class:`~elastix_bridge.core.impact_parameters.ImpactParameterError`,
:class:`~elastix_bridge.engine.registration.UnsupportedComponentError` (all ``ValueError``),
:class:`InputImageError` (``ValueError``) and ``TypeError`` for arguments of the wrong kind.
Nothing here imports torch, except to build an initial transform for a chain with bridge stages (which
need torch anyway); itk is imported to check ``ResultImageFormat`` and to read image headers.
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
from elastix_bridge import transform_check

if TYPE_CHECKING:  # pragma: no cover
    import itk

    from elastix_bridge.core.parameters import ParameterMap

log = logging.getLogger("elastix_bridge")

__all__ = ["InputImageError", "check_component_names", "check_equal_dimensions", "check_image_argument",
           "check_initial_transforms", "check_mask_dimension", "check_pyramid_sizes", "check_threads",
           "initial_transform_maps", "validate_images", "validate_maps", "validate_request"]


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


def _check_result_keys(pmap, dimension: Optional[int] = None) -> None:
    """``ResultImagePixelType``, ``WriteResultImage`` and ``ResultImageFormat`` before any result is written:
    the pixel type is one of elastix's, the format one ITK writes, and ITK's writer for the format writes
    that pixel type (and, where known, the images' ``dimension``)."""
    from elastix_bridge.core.elastix_names import RESULT_PIXEL_TYPES

    pixel = pmap.get("ResultImagePixelType", default="short")
    if pixel not in RESULT_PIXEL_TYPES:
        raise ParameterError(f"(ResultImagePixelType \"{pixel}\") is not an elastix pixel type."
                             f"{_did_you_mean(pixel, RESULT_PIXEL_TYPES)} "
                             f"Use one of {', '.join(sorted(RESULT_PIXEL_TYPES))}.")
    if pmap.has("ResultImageFormat") and pmap.get("WriteResultImage", default=True, type=bool):
        fmt = pmap.get("ResultImageFormat")
        _check_format_spelling(fmt)
        import itk

        io = itk.ImageIOFactory.CreateImageIO(f"result.{fmt}", itk.CommonEnums.IOFileMode_WriteMode)
        if io is None or not fmt:
            raise ParameterError(
                f"(ResultImageFormat \"{fmt}\"): ITK cannot write 'result.{fmt}'; use a file extension "
                f"ITK writes, e.g. \"mhd\", \"mha\", \"nii\", \"nii.gz\" or \"nrrd\" (or (WriteResultImage \"false\"))")
        _check_format_writes(fmt, pixel, dimension)


def _check_internal_pixel_types(pmap, dimension: int) -> None:
    """``Fixed/MovingInternalImagePixelType``: one type for both that itk-elastix's build runs in ``dimension``
    (:data:`~elastix_bridge.core.elastix_names.INTERNAL_PIXEL_TYPES`); elastix refuses others only after the
    images are read, and a chain after its earlier stages have run."""
    from elastix_bridge.core.elastix_names import INTERNAL_PIXEL_TYPES

    accepted = INTERNAL_PIXEL_TYPES.get(dimension, ("float",))
    types = {key: pmap.get(key, default="float") for key in ("FixedInternalImagePixelType",
                                                              "MovingInternalImagePixelType")}
    for key, value in types.items():
        if value not in accepted:
            raise ParameterError(
                f"({key} \"{value}\"): itk-elastix's elastix is built for {dimension}D internal pixel type(s) "
                f"{', '.join(accepted)} only (its ELASTIX_IMAGE_{dimension}D_PIXELTYPES); use "
                f"({key} \"float\") or leave the key out (elastix's default, float)")
    if len(set(types.values())) > 1:
        raise ParameterError(
            f"(FixedInternalImagePixelType \"{types['FixedInternalImagePixelType']}\") and "
            f"(MovingInternalImagePixelType \"{types['MovingInternalImagePixelType']}\") differ: itk-elastix's "
            f"elastix runs only equal fixed and moving internal pixel types; give both the same type")


def _check_format_spelling(fmt: str) -> None:
    """A ``ResultImageFormat`` that elastix (and ITK) would write under another name than ``result.<k>.<fmt>``.

    elastix appends the value after a dot (``ResamplerBase::WriteResultImage``: "result.0." + format), so
    ".mha" gives ``result.0..mha``; an upper-case MetaImage or NIfTI extension is written as ``.mhd`` + ``.raw``
    or refused by ITK's writer (:data:`~elastix_bridge.core.elastix_names.RESULT_FORMATS_LOWER_CASE_ONLY`).

    Raises:
        ParameterError: a leading dot, or such an upper-case extension.
    """
    from elastix_bridge.core.elastix_names import RESULT_FORMATS_LOWER_CASE_ONLY

    if fmt.startswith("."):
        raise ParameterError(f"(ResultImageFormat \"{fmt}\"): the value is the extension without its dot (elastix "
                             f"would write 'result.0.{fmt}'); write (ResultImageFormat \"{fmt.lstrip('.')}\")")
    if fmt != fmt.lower() and fmt.lower() in RESULT_FORMATS_LOWER_CASE_ONLY:
        what = ("as result.0.mhd + result.0.raw, not result.0." + fmt) if fmt.lower() in ("mha", "mhd") else \
            "not at all: its NIfTI writer refuses the name after the registration"
        raise ParameterError(f"(ResultImageFormat \"{fmt}\"): ITK writes this extension in lower case only ({what}); "
                             f"write (ResultImageFormat \"{fmt.lower()}\")")


#: elastix's usual name of each pixel type, to name the fix.
_CANONICAL_PIXEL_NAMES = ("unsigned char", "unsigned short", "char", "short", "int", "unsigned int", "float", "double")


def _check_format_writes(fmt: str, pixel: str, dimension: Optional[int]) -> None:
    """ITK's writer for ``result.<fmt>`` writes ``pixel`` (an elastix name) images of ``dimension``
    (:data:`~elastix_bridge.core.elastix_names.RESULT_FORMAT_PIXEL_TYPES`); elastix finds out in the writer,
    after the registration."""
    from elastix_bridge.core.elastix_names import RESULT_FORMAT_2D_ONLY, RESULT_FORMAT_PIXEL_TYPES, RESULT_PIXEL_TYPES

    fmt = fmt.lower()
    if dimension is not None and dimension != 2 and fmt in RESULT_FORMAT_2D_ONLY:
        raise ParameterError(f"(ResultImageFormat \"{fmt}\"): ITK writes {fmt} images in 2D only and the images are "
                             f"{dimension}D; use (ResultImageFormat \"mha\") or \"nii.gz\", "
                             f"or (WriteResultImage \"false\")")
    allowed = RESULT_FORMAT_PIXEL_TYPES.get(fmt)
    if allowed is None or RESULT_PIXEL_TYPES[pixel] in allowed:
        _check_wrapped_pixel_type(fmt, pixel)
        return
    from elastix_bridge.core.result_images import UNWRAPPED_TYPES

    names = [f'"{name}"' for name in _CANONICAL_PIXEL_NAMES
             if RESULT_PIXEL_TYPES[name] in allowed and RESULT_PIXEL_TYPES[name] not in UNWRAPPED_TYPES]
    holders = '"mha", "mhd"' if RESULT_PIXEL_TYPES[pixel] in UNWRAPPED_TYPES else '"mha", "nii.gz", "nrrd"'
    raise ParameterError(
        f"(ResultImageFormat \"{fmt}\") with (ResultImagePixelType \"{pixel}\"): ITK's {fmt} writer cannot write "
        f"{RESULT_PIXEL_TYPES[pixel]} pixels, so the result image would fail after the registration; use "
        f"(ResultImagePixelType {names[0]})" + (f" (or {', '.join(names[1:])})" if names[1:] else "")
        + f" for {fmt}, or a format that writes {pixel} ({holders})")


def _check_wrapped_pixel_type(fmt: str, pixel: str) -> None:
    """char and (unsigned) long results are written as MetaImage only (core/result_images.py): ITK's
    Python wrapping, which writes them, has no image of those types."""
    from elastix_bridge.core.elastix_names import RESULT_PIXEL_TYPES
    from elastix_bridge.core.result_images import METAIMAGE_FORMATS, UNWRAPPED_TYPES

    if RESULT_PIXEL_TYPES[pixel] in UNWRAPPED_TYPES and fmt not in METAIMAGE_FORMATS:
        raise ParameterError(
            f"(ResultImageFormat \"{fmt}\") with (ResultImagePixelType \"{pixel}\"): ITK's Python wrapping, which "
            f"writes the result here, has no {RESULT_PIXEL_TYPES[pixel]} image, so only MetaImage can hold it; use "
            f"(ResultImageFormat \"mha\") or \"mhd\", or another pixel type (\"short\", \"int\")")


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
    from elastix_bridge.runtime.loader import ImpactModelError, model_file_problem
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
    :func:`elastix_bridge.engine.metrics.impact._patch_grid_offsets`); wider than the image's n·s mm,
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
    (ITK ``ShrinkImageFilter`` / ``MultiResolutionPyramidImageFilter``;
    :func:`elastix_bridge.engine.images.pyramids.downsampled_geometry`); the Smoothing pyramid keeps the size.

    Raises:
        ParameterError: naming the level, the pyramid and its factors, the image and level sizes and the fix.
    """
    from elastix_bridge.engine.images.pyramids import downsampled_geometry, pyramid_base_kind
    from elastix_bridge.engine.registration import map_pyramid_schedule

    for which, geometry in zip(("Fixed", "Moving"), geometries):
        kind = pmap.get(f"{which}ImagePyramid", default=f"{which}SmoothingImagePyramid")
        try:
            if pyramid_base_kind(kind) == "SmoothingImagePyramid":
                continue
            schedule = map_pyramid_schedule(pmap, which, kind, levels, geometry)
        except ValueError:
            continue  # a pyramid the bridge does not model, or a schedule the stage's own check names
        for level in range(levels):
            factors = [int(f) for f in schedule.rescale[level]]
            size = downsampled_geometry(geometry, factors).size
            small = [a for a, n in enumerate(size) if n < IMPACT_LEVEL_MINIMUM <= geometry.size[a]]
            if small:
                a, axes, full = small[0], "xyzt"[:len(size)], " × ".join(map(str, geometry.size))
                raise ParameterError(
                    f"level {level}: the {kind} shrinks the {which.lower()} image ({full} "
                    f"voxels in {', '.join(axes)}) by {' '.join(map(str, factors))} to {' × '.join(map(str, size))} "
                    f"voxels, {size[a]} along {axes[a]}: the IMPACT features would be constant and the metric 0; use "
                    f"{which}ImagePyramidSchedule factors of at most {geometry.size[a] // IMPACT_LEVEL_MINIMUM} along "
                    f"{axes[a]}, or a larger image")


#: ITK ``RecursiveSeparableImageFilter`` (under the recursive Gaussian filters of the Smoothing and Generic
#: pyramids) refuses "fewer than 4 pixels along the dimension to be processed".
RECURSIVE_GAUSSIAN_MINIMUM = 4


def check_pyramid_sizes(pmap, levels: int, geometries) -> None:
    """Both images are large enough for the map's pyramids, from their headers (no pixel is read).

    Found by running elastix 5's pyramids on images of 1-16 voxels per axis: an axis of 1 voxel fails in
    every pyramid ("too many samples map outside"); the Smoothing pyramid
    (``itkMultiResolutionGaussianSmoothingPyramidImageFilter``, recursive Gaussian per axis, every level,
    the finest too) and the Generic pyramid (``itk::SmoothingRecursiveGaussianImageFilter`` on the full
    image, all axes, at every level with a σ > 0) fail inside ITK's ``RecursiveSeparableImageFilter`` on
    an axis of fewer than 4 voxels. The Recursive and Shrinking pyramids (``itk::DiscreteGaussian``,
    ``itk::ShrinkImageFilter``) have no such limit.

    Args:
        pmap: the stage's parameter map.
        levels: ``NumberOfResolutions``.
        geometries: ``(fixed, moving)`` :class:`~elastix_bridge.core.geometry.ImageGeometry` (ITK order).

    Raises:
        ParameterError: naming the image, its size, the axis, the pyramid, the level and the fix.
    """
    from elastix_bridge.engine.images.pyramids import pyramid_base_kind
    from elastix_bridge.engine.registration import map_pyramid_schedule

    for which, geometry in zip(("Fixed", "Moving"), geometries):
        size = tuple(geometry.size)
        image = f"the {which.lower()} image ({' × '.join(map(str, size))} voxels in {', '.join('xyzt'[:len(size)])})"
        for a, n in enumerate(size):
            if n < 2:
                raise ParameterError(f"{image} has 1 voxel along {'xyzt'[a]}: elastix cannot sample or pyramid it "
                                     f"(\"too many samples map outside\"); give images of at least 2 voxels per "
                                     f"axis ({RECURSIVE_GAUSSIAN_MINIMUM} for the Smoothing and Generic pyramids)")
        kind = pmap.get(f"{which}ImagePyramid", default=f"{which}SmoothingImagePyramid")
        try:
            base = pyramid_base_kind(kind)
        except ValueError:
            continue  # a pyramid the bridge does not model (OpenCL): elastix checks it
        if base not in ("SmoothingImagePyramid", "GenericImagePyramid"):
            continue
        try:
            schedule = map_pyramid_schedule(pmap, which, kind, levels, geometry)
        except ValueError:
            continue  # a schedule the pyramid does not read (elastix ignores it) or one the stage's check names
        for level in range(levels):
            if base == "SmoothingImagePyramid":
                smoothed = [a for a in range(len(size)) if schedule.rescale[level, a] != 0 and size[a] > 1]
            else:
                smoothed = list(range(len(size))) if (schedule.smoothing[level] != 0).any() else []
            small = [a for a in smoothed if size[a] < RECURSIVE_GAUSSIAN_MINIMUM]
            if small:
                a = small[0]
                raise ParameterError(
                    f"{image} has {size[a]} voxels along {'xyzt'[a]}, but the {kind} smooths it at level {level} "
                    f"with ITK's recursive Gaussian, which needs at least {RECURSIVE_GAUSSIAN_MINIMUM} voxels per "
                    f"axis; use ({which}ImagePyramid \"{which}ShrinkingImagePyramid\") or "
                    f"\"{which}RecursiveImagePyramid\", or a larger image")


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


def check_native_plugin() -> None:
    """An Impact map sent to itk-elastix's elastix needs a native IMPACT plugin (itk-elastix ships none).

    Raises:
        UnsupportedComponentError: no plugin is preloaded, named by ``$ELASTIX_BRIDGE_NATIVE_PLUGIN`` or
            where elastix's loader looks (:func:`~elastix_bridge.runtime.native_plugins.native_plugin_offered`).
    """
    from elastix_bridge.engine.components import UnsupportedComponentError
    from elastix_bridge.runtime.native_plugins import NATIVE_PLUGIN_ENV, native_plugin_offered

    if not native_plugin_offered():  # elastix would run, then fail: "component could not be created: Impact"
        raise UnsupportedComponentError(
            f'(Metric "Impact") cannot run on the elastix engine here: itk-elastix ships no IMPACT plugin and none '
            f"is preloaded, named by ${NATIVE_PLUGIN_ENV} or on the loader's path; use engine 'auto' or 'bridge' "
            f"(--engine auto), or set ${NATIVE_PLUGIN_ENV} to upstream's libImpactMetric.so (docs/native_plugins.md)")


def _in_map(error: Exception, where: str) -> Exception:
    """``error`` again, of the same type, with the map named in front of its message."""
    return type(error)(f"{where}: {error}")


def validate_maps(maps: Sequence[ParameterMap], engines: Optional[Sequence[str]] = None,
                  dimension: Optional[int] = None, names: Optional[Sequence[str]] = None, warn: bool = True,
                  geometries: Optional[Sequence] = None, initial_transform: Optional[dict] = None) -> None:
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
        geometries: ``(fixed, moving)`` :class:`~elastix_bridge.core.geometry.ImageGeometry` (from the
            images or their headers), or None; given, the images' sizes are checked against every map's
            pyramids (:func:`check_pyramid_sizes`) and Jacobian patches, and ``dimension`` defaults to theirs.
        initial_transform: the call's ``initial_transform_parameter_file_name`` /
            ``initial_transform_parameter_object`` keywords, checked with :func:`check_initial_transforms`
            (the command checks its ``-t0`` here, before it creates ``-out``).

    Raises:
        UnsupportedComponentError: an unknown component name (with "did you mean"), or one the bridge
            engine does not run for a map it runs; an Impact map on the elastix engine without a native
            IMPACT plugin.
        ParameterError: a value of the wrong type or range, a schedule of the wrong length, a result key
            that cannot be written (a format × pixel type ITK's writer refuses, a ``ResultImageFormat`` with a
            leading dot or an upper-case MetaImage/NIfTI extension), a ``Fixed/MovingInternalImagePixelType``
            itk-elastix's build does not run in ``dimension`` D, an unknown ``Impact…`` key in
            an Impact map, an ``ImpactFeatureMapOutputDirectory`` that cannot be a folder, images too small
            for a pyramid, a Jacobian patch larger than an image, a bridge Impact level image of 1 voxel
            along an axis (:func:`_check_impact_level_sizes`).
        ImpactParameterError: a missing or malformed IMPACT option at some level.
        InputImageError: images of a dimension the stage does not run (:func:`check_supported_dimension`).
    """
    from elastix_bridge.api import uses_impact
    from elastix_bridge.engine.registration import check_components, check_stage_settings
    from elastix_bridge.core.impact_parameters import impact_levels

    if geometries is not None:
        check_equal_dimensions(geometries[0].dimension, geometries[1].dimension)
        dimension = geometries[0].dimension if dimension is None else dimension
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
            if dimension is not None:  # before anything indexes an axis
                check_supported_dimension(dimension, impact, bridge)
            if impact and engines is not None and engines[k] == "elastix":
                check_native_plugin()
            _check_values(pmap)
            transform_check.thresholds(pmap)  # QC* values: the numbers the check after the stage compares with
            _check_result_keys(pmap, dimension)
            levels = pmap.get("NumberOfResolutions", default=3, type=UInt)
            components = check_components(pmap) if bridge else None
            if dimension is not None:
                _check_internal_pixel_types(pmap, dimension)
                _check_against_dimension(pmap, where, levels, dimension, warn)
                if bridge:
                    check_stage_settings(pmap, components, levels, dimension)
                if geometries is not None:
                    check_pyramid_sizes(pmap, levels, geometries)
                if impact:
                    configs = impact_levels(pmap, levels, dimension,
                                            metric_index=pmap.values("Metric").index("Impact"))
                    _check_model_files(pmap, configs)
                    _check_feature_map_directories(configs)
                    if geometries is not None:
                        _check_patches_fit(configs, geometries)
                    if geometries is not None and bridge:
                        _check_static_grids(configs, geometries[0])
                        _check_impact_level_sizes(pmap, levels, geometries)
                    if bridge:
                        _check_devices(configs)
        except ValueError as error:  # the same error, naming the map
            raise _in_map(error, where) from None
        _check_impact_keys(pmap, where, levels, impact, full=dimension is not None, warn=warn)
    if initial_transform and dimension is not None:
        check_initial_transforms(maps, engines, dimension, initial_transform)


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


def available_cores() -> int:
    """The CPU cores this process may run on: ``os.sched_getaffinity`` (which honours ``taskset``,
    cgroup cpusets and a Slurm allocation), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def check_threads(number_of_threads: Any, what: str = "number_of_threads", warn: bool = False) -> Optional[int]:
    """Check a thread count (elastix ``-threads``) and return the count to use.

    elastix passes ``-threads`` to ``itk::MultiThreaderBase::SetGlobalMaximumNumberOfThreads``
    (Core/Kernel/elxMainBase.cxx), which clamps it to ``ITK_MAX_THREADS`` without a word. Here a
    count above the cores this process may use (:func:`available_cores`) is lowered to them: more
    threads than cores only wait for one another (``-threads 10000`` ran 7x slower on 2 cores, and
    ``-threads 100000`` made torch's thread pools fail).

    Args:
        number_of_threads: None (all cores) or an integer >= 1.
        what: how messages name it (``-threads``, ``number_of_threads``).
        warn: log a warning when the count is lowered (once per run: where the count is applied).

    Returns:
        None, or ``min(number_of_threads, available_cores())``.

    Raises:
        ValueError: not an integer, or below 1.
    """
    if number_of_threads is None:
        return None
    if isinstance(number_of_threads, bool) or not isinstance(number_of_threads, int) or number_of_threads < 1:
        raise ValueError(f"{what} {number_of_threads!r}: the number of threads must be an integer >= 1; "
                         f"leave it out to use all cores")
    cores = available_cores()
    if number_of_threads <= cores:
        return number_of_threads
    if warn:
        log.warning("%s %d is more than the %d CPU core(s) this process may use; using %d (more threads than "
                    "cores only wait for one another)", what, number_of_threads, cores, cores)
    return cores


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


def check_equal_dimensions(fixed: int, moving: int) -> None:
    """The fixed and moving images have one dimension (itk-elastix's filter is typed by the fixed image's and
    would read a moving image of another dimension as garbage).

    Raises:
        InputImageError: naming both dimensions.
    """
    if fixed != moving:
        raise InputImageError(f"the fixed image is {fixed}D but the moving image is {moving}D; elastix registers "
                              f"images of equal dimension: give a {fixed}D moving image (or a {moving}D fixed image)")


#: Image dimensions a stage runs: the bridge engine and IMPACT's feature models (``ImpactDimension``) 2 and 3;
#: itk-elastix's ElastixRegistrationMethod is wrapped for 2, 3 and 4 (``itk.ElastixRegistrationMethod.keys()``).
BRIDGE_DIMENSIONS = (2, 3)
ELASTIX_DIMENSIONS = (2, 3, 4)


def check_supported_dimension(dimension: int, impact: bool, bridge: bool) -> None:
    """The images' dimension is one the stage runs (:data:`BRIDGE_DIMENSIONS`, :data:`ELASTIX_DIMENSIONS`);
    else the first check that indexes an axis fails on an internal error (a 4D image's fourth axis).

    Args:
        dimension: the images' dimension.
        impact: the stage uses the Impact metric; bridge: it runs on the bridge engine.

    Raises:
        InputImageError: naming the dimension, what the stage runs and the fix.
    """
    supported = BRIDGE_DIMENSIONS if impact or bridge else ELASTIX_DIMENSIONS
    if dimension in supported:
        return
    runner = "an Impact stage" if impact else "the bridge engine" if bridge else "itk-elastix"
    fix = ("register each 3D volume of the series on its own (itk.extract_image_filter), or use a map without Impact "
           "on the elastix engine (4D)" if dimension == 4 and supported == BRIDGE_DIMENSIONS else
           "give 2D or 3D images")
    names = [f"{d}D" for d in supported]
    raise InputImageError(f"the images are {dimension}D, but {runner} runs {', '.join(names[:-1])} and {names[-1]} "
                          f"images only; {fix}")


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
    check_equal_dimensions(dimension, moving_image.GetImageDimension())
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


def initial_transform_maps(keywords: dict) -> list:
    """The TransformParameters maps of the call's initial transform, earliest first (``[]`` without one).

    Reads ``initial_transform_parameter_file_name`` (elastix ``-t0``; its ``InitialTransformParameterFileName``
    chain is followed, :func:`~elastix_bridge.engine.transforms.initial.chain_from_file`) or
    ``initial_transform_parameter_object``.

    Raises:
        ValueError: both are given, or a file of the chain is not a TransformParameters file or loops.
        FileNotFoundError: the file or a file of its chain is missing (naming the referencing file).
    """
    from elastix_bridge.core.files import check_input_file
    from elastix_bridge.core.parameters import parameter_maps_from_object
    from elastix_bridge.engine.transforms.initial import chain_from_file

    t0 = keywords.get("initial_transform_parameter_file_name")
    given = keywords.get("initial_transform_parameter_object")
    if t0 and given is not None:
        raise ValueError("give either initial_transform_parameter_file_name or initial_transform_parameter_object, "
                         "not both (elastix would use only one)")
    if not t0:
        return [] if given is None else parameter_maps_from_object(given, "initial_transform_parameter_object")
    check_input_file(t0, "initial transform file")
    maps = chain_from_file(t0)
    for i, pm in enumerate(maps):
        if not pm.has("Transform") or not pm.has("TransformParameters"):
            raise ValueError(f"initial transform {t0}: file {i + 1} of its chain of {len(maps)} has no (Transform ...) "
                             "and (TransformParameters ...) lines, so it is not a TransformParameters file; give a "
                             "TransformParameters.<k>.txt that elastix or elastix-bridge wrote (a parameter file for a "
                             "new registration goes to -p / parameter_object)")
    return maps


def check_initial_transforms(maps: Sequence[ParameterMap], engines: Optional[Sequence[str]], dimension: int,
                             keywords: dict) -> None:
    """The initial transform, and every transform a bridge stage starts from, can be read before any stage runs.

    Each map of the initial chain is of the images' ``dimension`` (``FixedImageDimension`` /
    ``MovingImageDimension``); when a stage runs on the bridge engine, each is also built as the bridge
    builds it (:func:`~elastix_bridge.engine.transforms.initial.transform_from_parameter_map`: its kind and
    its ``TransformParameters`` count), and every earlier elastix stage's ``Transform`` is one the bridge
    reads back (docs/design.md §E1.7; elastix ``Core/Main/elxTransformBase.hxx``,
    ``ReadInitialTransformFromFile``).

    Raises:
        ValueError / FileNotFoundError: see :func:`initial_transform_maps`; ``InputImageError`` for a
            dimension other than the images'; ``UnsupportedComponentError`` / ``ValueError`` for a transform
            the bridge cannot build, naming the file or stage, what was found and the fix.
    """
    initial = initial_transform_maps(keywords)
    source = (f"initial transform {keywords['initial_transform_parameter_file_name']}"
              if keywords.get("initial_transform_parameter_file_name") else "initial_transform_parameter_object")
    for i, pm in enumerate(initial):
        where = f"{source} (map {i + 1} of {len(initial)} in its chain)" if len(initial) > 1 else source
        for key in ("FixedImageDimension", "MovingImageDimension"):
            if pm.has(key) and pm.get_entry(key, 0) != str(dimension):
                raise InputImageError(f"{where}: ({key} {pm.get_entry(key, 0)}) but the images are {dimension}D; "
                                      f"give an initial transform written for {dimension}D images (or none)")
    if engines is None or "bridge" not in engines:
        return
    from elastix_bridge.engine.components import UnsupportedComponentError
    from elastix_bridge.engine.transforms.initial import transform_from_parameter_map

    for i, pm in enumerate(initial):
        where = f"{source} (map {i + 1} of {len(initial)} in its chain)" if len(initial) > 1 else source
        try:
            transform, _ = transform_from_parameter_map(pm)
        except (ValueError, KeyError, IndexError, TypeError) as error:
            if isinstance(error, UnsupportedComponentError):  # its message names the supported kinds and the fix
                raise UnsupportedComponentError(f"{where}: the bridge engine cannot read it: {error}") from None
            raise ValueError(f"{where}: the bridge engine cannot read it: {error}; give a TransformParameters file "
                             f"that elastix wrote for these images, or run every map on elastix (engine='elastix')"
                             ) from None
        if getattr(transform, "dimension", dimension) != dimension:
            raise InputImageError(f"{where}: a {transform.dimension}D {pm.get('Transform')} but the images are "
                                  f"{dimension}D; give an initial transform written for {dimension}D images")
    for k, (pmap, engine) in enumerate(zip(maps, engines)):
        if engine == "bridge":
            continue
        later = [j for j in range(k + 1, len(maps)) if engines[j] == "bridge"]
        name = pmap.get("Transform")
        if later and not _bridge_reads(name):
            raise UnsupportedComponentError(
                f"parameter map {k}: its (Transform \"{name}\") runs on elastix, but stage {later[0]} runs on the "
                f"bridge engine, which cannot start from its result; use one of the transforms the bridge reads back "
                f"({', '.join(_readable_transforms())}) in map {k}, or run every map on elastix (engine='elastix')")


def _bridge_reads(transform_name: str) -> bool:
    """Whether the bridge engine reads a TransformParameters map of ``(Transform transform_name)`` back."""
    from elastix_bridge.engine.components import UnsupportedComponentError, component

    try:
        return component("Transform", transform_name).trait("read") is not None
    except UnsupportedComponentError:
        return False


def _readable_transforms() -> list:
    from elastix_bridge.engine.components import components

    return [c.name for c in components("Transform") if c.trait("read") is not None]


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
        see :func:`validate_maps`, :func:`validate_images` and :func:`check_initial_transforms`; ``ValueError``
        for a keyword that a chain with bridge stages does not support, or a bad ``number_of_threads``;
        ``TypeError`` for a keyword itk-elastix does not take (a typo: "did you mean",
        :func:`elastix_bridge.runtime.itk_elastix.check_keywords`).
    """
    from elastix_bridge.runtime.itk_elastix import check_keywords

    keywords = keywords or {}
    check_keywords(keywords, own=("engine", "progress"))  # the API's own arguments: near misses of them are named
    check_threads(keywords.get("number_of_threads"))
    if engines is not None and "bridge" in engines:
        unsupported = sorted(k for k in keywords if k not in CHAIN_KEYWORDS)
        if unsupported:
            raise ValueError(
                f"{', '.join(unsupported)}: not supported when a stage runs on the bridge engine (maps with "
                f"(Metric \"Impact\")); supported: {', '.join(CHAIN_KEYWORDS)}. Remove it, or run every map on "
                f"elastix with a native IMPACT plugin (engine='elastix')")
    dimension = validate_images(fixed_image, moving_image, fixed_mask, moving_mask)
    validate_maps(maps, engines, dimension, names, geometries=(_header_geometry(fixed_image),
                                                               _header_geometry(moving_image)))
    check_initial_transforms(maps, engines, dimension, keywords)


def _header_geometry(image):
    """:class:`~elastix_bridge.core.geometry.ImageGeometry` of an ``itk.Image``'s largest region (any start index)."""
    import itk

    from elastix_bridge.core.geometry import ImageGeometry

    return ImageGeometry(tuple(image.GetLargestPossibleRegion().GetSize()), tuple(image.GetSpacing()),
                         tuple(image.GetOrigin()), itk.array_from_matrix(image.GetDirection()))
