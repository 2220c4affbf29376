"""Parameter maps and files: a small valid Impact map, small maps for elastix, the parameter-file writer."""
from pathlib import Path

# The Impact keys of a one-level, one-model Static map with the built-in 2D MIND-SSC model.
MIND_SSC_2D_STATIC = {
    "ImpactMode": ["Static"],
    "ImpactGPU": ["-1"],
    "ImpactModelsPath0": ["mind-ssc-2d"],
    "ImpactDimension0": ["2"],
    "ImpactNumberOfChannels0": ["1"],
    "ImpactPatchSize0": ["0", "0"],
    "ImpactVoxelSize0": ["1", "1"],
    "ImpactLayersMask0": ["1"],
    "ImpactSubsetFeatures0": ["4"],
    "ImpactLayersWeight0": ["1"],
    "ImpactPCA0": ["0"],
    "ImpactDistance0": ["L2"],
}


def impact_parameters(**changes) -> dict:
    """A small valid Impact map (Static, MIND-SSC 2D, 1 level); ``changes`` override keys, None removes."""
    pmap = {
        "Registration": ["MultiResolutionRegistration"],
        "NumberOfResolutions": ["1"],
        "Metric": ["Impact"],
        "Optimizer": ["AdaptiveStochasticGradientDescent"],
        "MaximumNumberOfIterations": ["5"],
        "Transform": ["BSplineTransform"],
        "FinalGridSpacingInPhysicalUnits": ["10"],
        "ImageSampler": ["RandomCoordinate"],
        "NumberOfSpatialSamples": ["300"],
        "NewSamplesEveryIteration": ["true"],
        "Interpolator": ["BSplineInterpolator"],
        "ErodeMask": ["false"],
        "RandomSeed": ["11"],
        "ResultImageFormat": ["mha"],
        **MIND_SSC_2D_STATIC,
    }
    for key, value in changes.items():
        if value is None:
            pmap.pop(key, None)
        else:
            pmap[key] = [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    return pmap


def elastix_map(iterations: int = 5) -> dict:
    """A small translation / AdvancedMeanSquares map that runs on elastix (no Impact)."""
    return {
        "Registration": ["MultiResolutionRegistration"],
        "Metric": ["AdvancedMeanSquares"],
        "Transform": ["TranslationTransform"],
        "Optimizer": ["AdaptiveStochasticGradientDescent"],
        "MaximumNumberOfIterations": [str(iterations)],
        "NumberOfResolutions": ["1"],
        "ImageSampler": ["Full"],
        "AutomaticTransformInitialization": ["false"],
        "RandomSeed": ["3"],
        "ResultImageFormat": ["mha"],
    }


def impact_map(transform: str = "BSplineTransform", iterations: int = 10, fmt: str = "mha") -> dict:
    """A one-level Static-mode Impact map with the built-in MIND-SSC 2D model."""
    pmap = {
        "Registration": ["MultiResolutionRegistration"],
        "FixedImagePyramid": ["FixedSmoothingImagePyramid"],
        "MovingImagePyramid": ["MovingSmoothingImagePyramid"],
        "NumberOfResolutions": ["1"],
        "Metric": ["Impact"],
        "Optimizer": ["AdaptiveStochasticGradientDescent"],
        "MaximumNumberOfIterations": [str(iterations)],
        "Transform": [transform],
        "ImageSampler": ["RandomCoordinate"],
        "NumberOfSpatialSamples": ["500"],
        "NewSamplesEveryIteration": ["true"],
        "Interpolator": ["BSplineInterpolator"],
        "BSplineInterpolationOrder": ["1"],
        "RandomSeed": ["7"],
        "ResultImageFormat": [fmt],
        **MIND_SSC_2D_STATIC,
    }
    if transform == "BSplineTransform":
        pmap["FinalGridSpacingInPhysicalUnits"] = ["12"]
    return pmap


def write_parameter_file(path: Path, pmap: dict) -> Path:
    """Write ``pmap`` as an elastix parameter file (numbers unquoted, other values quoted)."""
    def show(v):
        try:
            float(v)
            return v
        except ValueError:
            return f'"{v}"'

    path.write_text("".join(f"({k} {' '.join(show(v) for v in vs)})\n" for k, vs in pmap.items()))
    return path


def transform_parameters(parameter_object, index: int = 0) -> list:
    """The ``TransformParameters`` strings of map ``index`` of an ``itk.ParameterObject``."""
    return [str(v) for v in parameter_object.GetParameterMap(index)["TransformParameters"]]
