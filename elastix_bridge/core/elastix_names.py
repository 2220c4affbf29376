"""The names elastix knows: its components per family and the parameter names its components read.

Used to name a typo with a "did you mean" before a stage runs (:mod:`elastix_bridge.validation`)
instead of elastix's "Internal elastix error". Collected from elastix's sources (commit 0c0b19f4,
2026-05-15): component names from ``elxClassNameMacro`` under ``Components/<family>/``; parameter
names from the string literals passed to ``ReadParameter`` / ``RetrieveValue`` / ``HasParameter`` /
``CountNumberOfParameterEntries`` in ``Core/``, ``Common/`` and ``Components/``, plus the component
keys and the names elastix builds at run time (``Erode<Fixed|Moving>Mask``,
``<Fixed|Moving>ImagePyramid<Rescale|Smoothing>Schedule``, ``Metric<i>Weight`` / ``Use`` /
``RelativeWeight``). The IMPACT keys are listed in :mod:`elastix_bridge.core.impact_parameters`.
"""

#: Component names per component key (``(Metric "...")`` etc.).
COMPONENTS = {
    "Registration": ("MultiMetricMultiResolutionRegistration", "MultiResolutionRegistration",
                     "MultiResolutionRegistrationWithFeatures"),
    "Metric": ("AdvancedKappaStatistic", "AdvancedMattesMutualInformation", "AdvancedMeanSquares",
               "AdvancedNormalizedCorrelation", "CorrespondingPointsEuclideanDistanceMetric",
               "DisplacementMagnitudePenalty", "DistancePreservingRigidityPenalty", "GradientDifference", "Impact",
               "KNNGraphAlphaMutualInformation", "MissingStructurePenalty", "NormalizedGradientCorrelation",
               "NormalizedMutualInformation", "PCAMetric", "PCAMetric2", "PatternIntensity", "PolydataDummyPenalty",
               "StatisticalShapePenalty", "SumOfPairwiseCorrelationCoefficientsMetric",
               "SumSquaredTissueVolumeDifference", "TransformBendingEnergyPenalty", "TransformRigidityPenalty",
               "VarianceOverLastDimensionMetric"),
    "Optimizer": ("AdaGrad", "AdaptiveStochasticGradientDescent", "AdaptiveStochasticLBFGS",
                  "AdaptiveStochasticVarianceReducedGradient", "CMAEvolutionStrategy", "ConjugateGradient",
                  "ConjugateGradientFRPR", "FiniteDifferenceGradientDescent", "FullSearch", "Powell",
                  "PreconditionedStochasticGradientDescent", "QuasiNewtonLBFGS", "RSGDEachParameterApart",
                  "RegularStepGradientDescent", "Simplex", "SimultaneousPerturbation", "StandardGradientDescent"),
    "Transform": ("AffineDTITransform", "AffineLogStackTransform", "AffineLogTransform", "AffineTransform",
                  "BSplineStackTransform", "BSplineTransform", "BSplineTransformWithDiffusion",
                  "DeformationFieldTransform", "EulerStackTransform", "EulerTransform", "ExternalTransform",
                  "MultiBSplineTransformWithNormal", "RecursiveBSplineTransform", "SimilarityTransform",
                  "SplineKernelTransform", "TranslationStackTransform", "TranslationTransform",
                  "WeightedCombinationTransform"),
    "ImageSampler": ("Full", "Grid", "MultiInputRandomCoordinate", "Random", "RandomCoordinate", "RandomSparseMask"),
    "Interpolator": ("BSplineInterpolator", "BSplineInterpolatorFloat", "LinearInterpolator",
                     "NearestNeighborInterpolator", "RayCastInterpolator", "ReducedDimensionBSplineInterpolator"),
    "ResampleInterpolator": ("FinalBSplineInterpolator", "FinalBSplineInterpolatorFloat", "FinalLinearInterpolator",
                             "FinalNearestNeighborInterpolator", "FinalRayCastInterpolator",
                             "FinalReducedDimensionBSplineInterpolator"),
    "Resampler": ("DefaultResampler", "OpenCLResampler"),
    "FixedImagePyramid": ("FixedGenericImagePyramid", "FixedRecursiveImagePyramid", "FixedShrinkingImagePyramid",
                          "FixedSmoothingImagePyramid", "OpenCLFixedGenericImagePyramid"),
    "MovingImagePyramid": ("MovingGenericImagePyramid", "MovingRecursiveImagePyramid", "MovingShrinkingImagePyramid",
                           "MovingSmoothingImagePyramid", "OpenCLMovingGenericImagePyramid"),
}

#: Parameter names elastix reads (without component-label prefixes such as ``Metric0``).
PARAMETERS = frozenset((
    "ASGDParameterEstimationMethod", "AfterIterations", "AirValue", "Alpha", "AutomaticInitialSimplex",
    "AutomaticLBFGSstepsizeEstimation", "AutomaticParameterEstimation", "AutomaticScalesEstimation",
    "AutomaticScalesEstimationStackTransform", "AutomaticTransformInitialization",
    "AutomaticTransformInitializationMethod", "AvoidDivisionBy", "BSplineInterpolationOrder",
    "BSplineTransformSplineOrder", "BaseVariance", "BucketSize", "CalculateLinearityCondition",
    "CalculateOrthonormalityCondition", "CalculatePropernessCondition", "CenterOfGravityUsesLowerThreshold",
    "CenterOfRotation", "CenterOfRotationPoint", "CentroidXVariance", "CentroidYVariance", "CentroidZVariance",
    "CheckNumberOfSamples", "CompressResultImage", "ComputePyramidImagesPerResolution", "ComputeZYX",
    "ConditionNumber", "ConjugateGradientType", "CurvatureSampler", "CutOffSharpness", "CutOffValue",
    "DefaultPixelValue", "DefaultPixelValueForGVI", "DeformationFieldFileName",
    "DeformationFieldInterpolationOrder", "DiffusionEachNIterations", "DilateRigidityImages",
    "DilationRadiusMultiplier", "Direction", "ErodeFixedMask", "ErodeMask", "ErodeMovingMask", "ErrorBound",
    "ExactMetricEveryXIterations", "ExactMetricSampleGridSpacing", "FilterPattern",
    "FinalBSplineInterpolationOrder", "FinalGridSpacing", "FinalGridSpacingInPhysicalUnits",
    "FinalGridSpacingInVoxels", "FinalReducedDimensionBSplineInterpolationOrder", "FiniteDifferenceDerivative",
    "FixedImageBSplineInterpolationOrder", "FixedImageDimension", "FixedImageInterpolatorBSplineOrder",
    "FixedImageLandmarks", "FixedImagePyramid", "FixedImagePyramidRescaleSchedule",
    "FixedImagePyramidSchedule", "FixedImagePyramidSmoothingSchedule", "FixedInternalImagePixelType",
    "FixedKernelBSplineOrder", "FixedLimitRangeRatio", "FixedRigidityImageName", "FixedSegmentationFileName",
    "FixedShrinkingRule", "FixedSplittingRule", "FocalPoint", "ForegroundValue",
    "GenerateLineSearchIterations", "GradientMagnitudeTolerance", "GrayValueImageAlsoBasedOnFixedImage",
    "GridDirection", "GridIndex", "GridOrigin", "GridSize", "GridSpacing", "GridSpacingSchedule",
    "HowManyIterations", "HowToCombineTransforms", "ITKTransformFixedParameters", "ITKTransformParameters",
    "ImagePyramidRescaleSchedule", "ImagePyramidSchedule", "ImagePyramidSmoothingSchedule",
    "ImagePyramidUseShrinkImageFilter", "ImageSampler", "Index", "InitialSimplexDelta",
    "InitialTransformParameterFileName", "InitialTransformParametersFileName", "Interpolator",
    "JacobiTypePreconditioner", "JointShrinkingRule", "JointSplittingRule", "KNearestNeighbours",
    "LBFGSMemory", "LBFGSUpdateAccuracy", "LineSearchGradientTolerance", "LineSearchStepTolerance",
    "LineSearchValueTolerance", "LinearityConditionWeight", "LowerThresholdForCenterGravity", "MaxBandCovSize",
    "MaximumDeviation", "MaximumDisplacementEstimationMethod", "MaximumNumberOfInnerLoopIterations",
    "MaximumNumberOfIterations", "MaximumNumberOfLineSearchIterations", "MaximumNumberOfSamplingAttempts",
    "MaximumStepLength", "MaximumStepLengthRatio", "Metric", "MinimumDeviation", "MinimumGradientMagnitude",
    "MinimumStepLength", "MovingImageDerivativeScales", "MovingImageDimension", "MovingImagePyramid",
    "MovingImagePyramidRescaleSchedule", "MovingImagePyramidSchedule", "MovingImagePyramidSmoothingSchedule",
    "MovingInternalImagePixelType", "MovingKernelBSplineOrder", "MovingLimitRangeRatio",
    "MovingRigidityImageName", "MovingSegmentationFileName", "MovingShrinkingRule", "MovingSplittingRule",
    "MultiBSplineTransformWithNormalLabels", "NewSamplesEveryIteration", "NoiseCompensation",
    "NormalizeCombinationWeights", "NormalizedShapeModel", "NumAdditionalSamplesFixed", "NumEigenValues",
    "NumSamplesLastDimension", "NumberOfBandStructureSamples", "NumberOfDiffusionIterations",
    "NumberOfFixedHistogramBins", "NumberOfGradientMeasurements", "NumberOfHistogramBins",
    "NumberOfInnerLoopSamples", "NumberOfJacobianMeasurements", "NumberOfMovingHistogramBins",
    "NumberOfParameters", "NumberOfParents", "NumberOfPerturbations", "NumberOfResolutions",
    "NumberOfSamplesForCenteredTransformInitialization", "NumberOfSamplesForExactGradient",
    "NumberOfSamplesForNoiseCompensationFactor", "NumberOfSamplesForPrecondition", "NumberOfSpatialSamples",
    "NumberOfSubTransforms", "OpenCLDeviceID", "OpenCLDeviceType", "OpenCLFixedGenericImagePyramidUseOpenCL",
    "OpenCLMovingGenericImagePyramidUseOpenCL", "OpenCLResamplerUseOpenCL", "OptimizeNormalizationFactor",
    "Optimizer", "Origin", "OrthonormalityConditionWeight", "PassiveEdgeWidth", "PenaltyGridSpacingInVoxels",
    "PopulationSize", "PositionToleranceMax", "PositionToleranceMin", "PreParameters", "PrintErrorMessages",
    "PropernessConditionWeight", "Radius", "RandomSeed", "RecombinationWeightsPreset", "ReducedDimensionIndex",
    "Registration", "RegularizationKappa", "RelativeWeight", "RelaxationFactor",
    "ReleaseMemoryBeforeResampling", "RequiredRatioOfValidSamples", "ResampleInterpolator", "Resampler",
    "ResultImageFormat", "ResultImagePixelType", "ResultMeshFormat", "SP_A", "SP_a", "SP_alpha", "SP_beta",
    "SP_c", "SP_gamma", "SampleGradientMethod", "SampleGridSpacing", "SampleLastDimensionRandomly",
    "SampleRegionSize", "Schedule", "ScaleGradientWithRespectToMovingImageOrientation", "Scales", "SegmentedImageName",
    "ShapeModelCalculation", "ShowExactMetricValue", "ShowMetricValues", "ShrinkageIntensity", "ShrinkingRule",
    "Sigma", "SigmoidInitialTime", "SigmoidMax", "SigmoidMin", "SigmoidScale", "SigmoidScaleFactor", "Size",
    "SizeVariance", "Spacing", "SplineKernelType", "SplinePoissonRatio", "SplineRelaxationFactor",
    "SplittingRule", "SquaredSearchRadius", "StackOrigin", "StackSpacing", "StepLength", "StepSizeStrategy",
    "StepTolerance", "StopIfWolfeNotSatisfied", "SubTransforms", "SubtractMean", "TPSMatrixInversionMethod",
    "Threshold", "ThresholdBool", "ThresholdHU", "TissueValue", "Transform", "TransformParameters",
    "TreeSearchType", "TreeType", "UpdateBDPeriod", "UpdateFrequenceL", "UpsampleGridOption", "Use",
    "UseAdaptiveLBFGSStepSizes", "UseAdaptiveStepSizes", "UseComplement", "UseConstantStep",
    "UseCovarianceMatrixAdaptation", "UseCruzAcceleration", "UseCyclicTransform", "UseDecayingSigma",
    "UseDirectionCosines", "UseFastAndLowMemoryVersion", "UseFixedSegmentation", "UseForegroundValue",
    "UseImagePyramidRescaleSchedule", "UseImagePyramidSmoothingSchedule", "UseJacobianPreconditioning",
    "UseLinearityCondition", "UseMovingSegmentation", "UseMultiThreadingForMetrics", "UseNoiseFactor",
    "UseNormalization", "UseOrthonormalityCondition", "UsePropernessCondition", "UseRandomSampleRegion",
    "UseRelativeWeights", "UseSearchDirForAdaptiveStepSize", "UseZeroAverageDisplacementConstraint",
    "ValueTolerance", "Weight", "WindowScale", "WriteDiffusionFiles", "WriteFinalTransformParameters",
    "WriteITKCompositeTransform", "WriteIterationInfo", "WriteOptimizationSurfaceEachResolution",
    "WritePyramidImagesAfterEachResolution", "WriteResultImage", "WriteResultImageAfterEachIteration",
    "WriteResultImageAfterEachResolution", "WriteResultMeshAfterEachIteration",
    "WriteResultMeshAfterEachResolution", "WriteTransformParametersEachIteration",
    "WriteTransformParametersEachResolution",
))

#: elastix's ``ResultImagePixelType`` names (docs/design.md §E8.2) as numpy types: the command casts
#: each result to it, and the validation refuses any other name.
RESULT_PIXEL_TYPES = {
    "char": "int8", "int8": "int8", "unsigned char": "uint8", "uint8": "uint8",
    "short": "int16", "int16": "int16", "ushort": "uint16", "unsigned short": "uint16", "uint16": "uint16",
    "int": "int32", "int32": "int32", "unsigned int": "uint32", "uint32": "uint32",
    "long": "int64", "int64": "int64", "unsigned long": "uint64", "uint64": "uint64",
    "float": "float32", "float32": "float32", "double": "float64", "float64": "float64",
}

#: The pixel types (numpy names, as in :data:`RESULT_PIXEL_TYPES`) that ITK's writer for a result
#: format can write, where it cannot write every type; formats not listed (mhd, mha, nii, nii.gz,
#: nrrd, ...) write all of them. elastix writes each result image in ``ResultImagePixelType``
#: (``ResamplerBase::WriteResultImage``, through ``itk::ImageFileCastWriter``), so a type missing
#: here fails in the writer after the registration. Sources: ITK ``PNGImageIO::Write`` ("PNG supports
#: unsigned char and unsigned short"), ``JPEGImageIO::Write`` and ``BMPImageIO::Write`` (unsigned char
#: only), ``TIFFImageIO::Write`` (no 64-bit types), ``GiplImageIO::Write`` (no 32/64-bit integers);
#: tests/hostile/test_prework_checks.py checks this table against ITK's writers.
RESULT_FORMAT_PIXEL_TYPES = {
    "png": ("uint8", "uint16"),
    "jpg": ("uint8",), "jpeg": ("uint8",),
    "bmp": ("uint8",),
    "tif": ("int8", "uint8", "int16", "uint16", "int32", "uint32", "float32"),
    "tiff": ("int8", "uint8", "int16", "uint16", "int32", "uint32", "float32"),
    "gipl": ("int8", "uint8", "int16", "uint16", "float32", "float64"),
    "gipl.gz": ("int8", "uint8", "int16", "uint16", "float32", "float64"),
}

#: Result formats that ITK writes under another name, or refuses after the registration, when not spelt
#: in lower case (checked with ``itk.imwrite``): metaio's ``MetaImage::Write`` keeps the data in the
#: header only for the suffix ".mha" exactly and renames every other header to ``.mhd`` beside a
#: ``.raw`` ("MHA" → result.0.mhd + result.0.raw); ``NiftiImageIO::Write`` stops with "Bad Nifti file
#: name" for "NII", "NII.GZ", "HDR". Other formats ("PNG", "NRRD", "TIF") are written as spelt.
RESULT_FORMATS_LOWER_CASE_ONLY = ("mha", "mhd", "nii", "nii.gz", "hdr", "img", "img.gz", "hdr.gz")

#: Result formats whose ITK writer writes 2D images only (``JPEGImageIO``: "JPEG Writer can only write
#: 2-dimensional images"; ``BMPImageIO``: "BMPImageIO cannot write images with a dimension != 2").
RESULT_FORMAT_2D_ONLY = ("jpg", "jpeg", "bmp")

#: ``Fixed/MovingInternalImagePixelType`` values itk-elastix's build runs, per image dimension: elastix
#: instantiates its components only for the types of its CMake settings ``ELASTIX_IMAGE_2D_PIXELTYPES`` /
#: ``ELASTIX_IMAGE_3D_PIXELTYPES``, each as a (fixed, moving) pair of one type (``elxSupportedImageTypes.h``),
#: and stops after the images are read with "Failed to cast to the specified internal pixel type"
#: (``elxLibUtilities.h``) or, for a mixed pair, "Internal elastix error". Found by running a 2-iteration
#: registration with itk-elastix 0.25.4 here for each elastix type name (char ... double, int8 ... float64).
INTERNAL_PIXEL_TYPES = {2: ("float",), 3: ("float", "short")}
