"""The bridge engine refuses, by name and with the supported list, every component it does not run."""
import pytest

from elastix_bridge.engine.registration import SUPPORTED_COMPONENTS, UnsupportedComponentError, check_components
from elastix_bridge.parameters import ParameterMap


def base(**changes):
    pmap = {"Metric": ["AdvancedMeanSquares"], "Transform": ["EulerTransform"],
            "Optimizer": ["AdaptiveStochasticGradientDescent"], "ImageSampler": ["Random"]}
    pmap.update(changes)
    return ParameterMap.from_dict(pmap)


def test_defaults_are_elastix_defaults():
    chosen = check_components(base())
    assert chosen["Registration"] == "MultiResolutionRegistration"
    assert chosen["Interpolator"] == "BSplineInterpolator"
    assert chosen["FixedImagePyramid"] == "FixedSmoothingImagePyramid"
    assert chosen["ImageSampler"] == ["Random"]


@pytest.mark.parametrize("key,name", [
    ("Metric", "AdvancedKappaStatistic"), ("Transform", "SplineKernelTransform"), ("Optimizer", "CMAEvolutionStrategy"),
    ("ImageSampler", "MultiInputRandomCoordinate"), ("Interpolator", "NearestNeighborInterpolator"),
    ("FixedImagePyramid", "OpenCLFixedGenericImagePyramid"), ("Registration", "MultiResolutionRegistrationWithFeatures"),
])
def test_unsupported_component_is_named_with_the_supported_list(key, name):
    with pytest.raises(UnsupportedComponentError) as info:
        check_components(base(**{key: [name]}))
    message = str(info.value)
    assert name in message and "upported" in message
    supported = SUPPORTED_COMPONENTS.get(key, ("AdvancedMeanSquares",))
    assert supported[0] in message


@pytest.mark.parametrize("name", sorted(SUPPORTED_COMPONENTS["Optimizer"]))
def test_every_listed_optimizer_is_accepted(name):
    assert check_components(base(Optimizer=[name]))["Optimizer"] == name


def test_moving_image_derivative_scales_are_refused_unless_all_one():
    assert check_components(base(MovingImageDerivativeScales=["1", "1"]))
    with pytest.raises(UnsupportedComponentError, match=r"MovingImageDerivativeScales 1 1 0.*engine='elastix'"):
        check_components(base(MovingImageDerivativeScales=["1", "1", "0"]))


def test_several_metrics_need_the_multi_metric_registration():
    with pytest.raises(UnsupportedComponentError, match="MultiMetricMultiResolutionRegistration"):
        check_components(base(Metric=["AdvancedMeanSquares", "TransformBendingEnergyPenalty"]))
