"""The bridge engine's components, one registration each, kept apart from their code.

As elastix lists its components apart from their code (``Components/*/CMakeLists.txt`` and
``elxInstallComponent``), this module names every component the bridge engine runs, with its family,
its elastix name, a lazy ``"module:attribute"`` target, and the traits and hooks the stage, the
validation and the memory plan ask of it (:data:`elastix_bridge.engine.components.FAMILIES`). Importing
it imports no component module (and no torch); :func:`elastix_bridge.engine.components.component`
reads it on first look-up. Adding a component: its class, one line here, its tests (docs/engine.md).
"""
from __future__ import annotations

from elastix_bridge.engine.components import register

_ENGINE = "elastix_bridge.engine"
_SETTINGS = f"{_ENGINE}.component_settings"

# -- Registration --------------------------------------------------------------------------------------
register("Registration", "MultiResolutionRegistration", multi_metric=False,
         source="Components/Registrations/MultiResolutionRegistration")
register("Registration", "MultiMetricMultiResolutionRegistration", multi_metric=True,
         notes="`Metric<i>Weight`, `Metric<i>Use`, `UseRelativeWeights`/`Metric<i>RelativeWeight`, one "
               "`ImageSampler` per metric or a shared one",
         source="Components/Registrations/MultiMetricMultiResolutionRegistration")

# -- Metric --------------------------------------------------------------------------------------------
register("Metric", "Impact", f"{_ENGINE}.metrics.impact:ImpactMetric", feature_models=True,
         memory=f"{_ENGINE}.metrics.impact_memory:ImpactMemory", notes="see [impact.md](impact.md)")
register("Metric", "AdvancedMeanSquares", f"{_ENGINE}.metrics.classic:AdvancedMeanSquares",
         notes="`UseNormalization`", source="Components/Metrics/AdvancedMeanSquares")
register("Metric", "AdvancedNormalizedCorrelation", f"{_ENGINE}.metrics.classic:AdvancedNormalizedCorrelation",
         source="Components/Metrics/AdvancedNormalizedCorrelation")
register("Metric", "AdvancedMattesMutualInformation", f"{_ENGINE}.metrics.classic:AdvancedMattesMutualInformation",
         notes="histogram bins, kernel orders, limit-range ratios",
         source="Components/Metrics/AdvancedMattesMutualInformation")
register("Metric", "TransformBendingEnergyPenalty", f"{_ENGINE}.metrics.bending_energy:TransformBendingEnergyPenalty",
         source="Components/Metrics/TransformBendingEnergyPenalty")

# -- Transform -----------------------------------------------------------------------------------------
_LINEAR_READ = f"{_ENGINE}.transforms.linear:linear_transform_from_parameter_map"
# Linear transforms: ``initializer`` is ITK's CenteredTransformInitializer (no masks) or elastix's
# CenteredTransformInitializer2 (masks, grid centre of gravity, Origins, GeometryTop); ``labelled_scales``:
# ``Scales`` read entry by entry, also with the component label (docs/design.md §E6.2, §E6.3).
register("Transform", "TranslationTransform", f"{_ENGINE}.transforms.base:TranslationTransform", kind="translation",
         read=f"{_ENGINE}.transforms.base:translation_from_parameter_map",
         source="Components/Transforms/TranslationTransform")
register("Transform", "BSplineTransform", f"{_ENGINE}.transforms.bspline:BSplineTransform", kind="bspline",
         read=f"{_ENGINE}.transforms.bspline:bspline_from_parameter_map",
         source="Components/Transforms/BSplineTransform")
register("Transform", "RecursiveBSplineTransform", f"{_ENGINE}.transforms.bspline:BSplineTransform", kind="bspline",
         read=f"{_ENGINE}.transforms.bspline:bspline_from_parameter_map",
         source="Components/Transforms/RecursiveBSplineTransform")
register("Transform", "EulerTransform", f"{_ENGINE}.transforms.linear:EulerTransform", kind="linear",
         read=_LINEAR_READ, initializer="CenteredTransformInitializer", compute_zyx=True, labelled_scales=False,
         source="Components/Transforms/EulerTransform/elxEulerTransform.hxx")
register("Transform", "SimilarityTransform", f"{_ENGINE}.transforms.linear:SimilarityTransform", kind="linear",
         read=_LINEAR_READ, initializer="CenteredTransformInitializer", compute_zyx=False, labelled_scales=True,
         source="Components/Transforms/SimilarityTransform/elxSimilarityTransform.hxx")
register("Transform", "AffineTransform", f"{_ENGINE}.transforms.linear:AffineTransform", kind="linear",
         read=_LINEAR_READ, initializer="CenteredTransformInitializer2", compute_zyx=False, labelled_scales=False,
         source="Components/Transforms/AffineTransform/elxAdvancedAffineTransform.hxx")

# -- Optimizer -----------------------------------------------------------------------------------------
_OPTIMIZER_SETTINGS = f"{_ENGINE}.optimizers.settings"
register("Optimizer", "AdaptiveStochasticGradientDescent",
         f"{_ENGINE}.optimizers.asgd:AdaptiveStochasticGradientDescent",
         settings=f"{_OPTIMIZER_SETTINGS}:ASGDSettings", iteration_columns="asgd",
         notes="Original and DisplacementDistribution estimation, adaptive steps, scaled space",
         source="Components/Optimizers/AdaptiveStochasticGradientDescent")
register("Optimizer", "StandardGradientDescent", f"{_ENGINE}.optimizers.gradient_descent:StandardGradientDescent",
         settings=f"{_OPTIMIZER_SETTINGS}:StandardGradientDescentSettings", iteration_columns="gradient_descent",
         source="Components/Optimizers/StandardGradientDescent")
register("Optimizer", "RegularStepGradientDescent",
         f"{_ENGINE}.optimizers.gradient_descent:RegularStepGradientDescent",
         settings=f"{_OPTIMIZER_SETTINGS}:RegularStepGradientDescentSettings", iteration_columns="gradient_descent",
         source="Components/Optimizers/RegularStepGradientDescent")
register("Optimizer", "QuasiNewtonLBFGS", f"{_ENGINE}.optimizers.quasi_newton:QuasiNewtonLBFGS",
         settings=f"{_OPTIMIZER_SETTINGS}:QuasiNewtonLBFGSSettings", iteration_columns="lbfgs",
         notes="More–Thuente line search; see below", source="Components/Optimizers/QuasiNewtonLBFGS")

# -- ImageSampler --------------------------------------------------------------------------------------
register("ImageSampler", "Full", f"{_ENGINE}.samplers:FullSampler", random=False,
         samples=f"{_SETTINGS}:every_voxel", source="Common/ImageSamplers/itkImageFullSampler.hxx")
register("ImageSampler", "Grid", f"{_ENGINE}.samplers:GridSampler", random=False,
         samples=f"{_SETTINGS}:grid_points", notes="`SampleGridSpacing`",
         source="Common/ImageSamplers/itkImageGridSampler.hxx")
register("ImageSampler", "RandomCoordinate", f"{_ENGINE}.samplers:RandomCoordinateSampler", random=True,
         samples=f"{_SETTINGS}:spatial_samples", notes="`UseRandomSampleRegion`, `SampleRegionSize`",
         source="Common/ImageSamplers/itkImageRandomCoordinateSampler.hxx")
register("ImageSampler", "Random", f"{_ENGINE}.samplers:RandomSampler", random=True,
         samples=f"{_SETTINGS}:spatial_samples", source="Common/ImageSamplers/itkImageRandomSampler.hxx")
register("ImageSampler", "RandomSparseMask", f"{_ENGINE}.samplers:RandomSparseMaskSampler", random=True,
         samples=f"{_SETTINGS}:spatial_samples", source="Common/ImageSamplers/itkImageRandomSamplerSparseMask.hxx")

# -- Interpolator --------------------------------------------------------------------------------------
register("Interpolator", "BSplineInterpolator", f"{_SETTINGS}:bspline_interpolation_order", notes="orders 0–3",
         source="Components/Interpolators/BSplineInterpolator")
register("Interpolator", "LinearInterpolator", f"{_SETTINGS}:linear_interpolation_order",
         source="Components/Interpolators/LinearInterpolator")

# -- Image pyramids ------------------------------------------------------------------------------------
for _side in ("Fixed", "Moving"):
    for _kind in ("Smoothing", "Recursive", "Shrinking", "Generic"):
        register(f"{_side}ImagePyramid", f"{_side}{_kind}ImagePyramid",
                 f"{_ENGINE}.images.pyramids:{_kind}ImagePyramid",
                 source=f"Components/{_side}ImagePyramids/{_side}{_kind}ImagePyramid")
