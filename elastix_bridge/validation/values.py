"""The type and range of every value the bridge engine reads, with elastix's types and conversion
rules (docs/design.md §E1.3; :meth:`elastix_bridge.core.parameters.ParameterMap.get_entry`):
``(MaximumNumberOfIterations -3)`` is an error, as in elastix."""
from __future__ import annotations

from elastix_bridge.core.parameters import ParameterError, UInt
from elastix_bridge.validation.names import _unlabelled


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
