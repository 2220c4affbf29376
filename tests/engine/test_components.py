"""The component registry: every component the bridge engine runs, and nothing else, found by its elastix name."""
import contextlib
from pathlib import Path

import numpy as np
import pytest

from elastix_bridge.engine.components import (FAMILIES, UnsupportedComponentError, component, component_table, names,
                                              register, unregister)
from elastix_bridge.engine.stage_settings import check_components
from elastix_bridge.core.parameters import ParameterMap

from helpers.maps import MIND_SSC_2D_STATIC

DOCS = Path(__file__).resolve().parents[2] / "docs" / "engine.md"


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
    assert all(supported in message for supported in names(key))


def test_an_unregistered_name_fails_with_the_supported_list():
    with pytest.raises(UnsupportedComponentError) as info:
        component("Optimizer", "Powell")
    assert "(Optimizer \"Powell\")" in str(info.value)
    assert ("Supported: AdaptiveStochasticGradientDescent, QuasiNewtonLBFGS, RegularStepGradientDescent, "
            "StandardGradientDescent." in str(info.value))


def test_moving_image_derivative_scales_are_refused_unless_all_one():
    assert check_components(base(MovingImageDerivativeScales=["1", "1"]))
    with pytest.raises(UnsupportedComponentError, match=r"MovingImageDerivativeScales 1 1 0.*engine='elastix'"):
        check_components(base(MovingImageDerivativeScales=["1", "1", "0"]))


def test_several_metrics_need_the_multi_metric_registration():
    with pytest.raises(UnsupportedComponentError, match="MultiMetricMultiResolutionRegistration"):
        check_components(base(Metric=["AdvancedMeanSquares", "TransformBendingEnergyPenalty"]))


def test_a_name_is_registered_once_per_family():
    with pytest.raises(ValueError, match="already registered"):
        register("ImageSampler", "Full", lambda *a, **k: None)
    assert component("ImageSampler", "Full").trait("random") is False


def test_docs_component_table_is_the_registry():
    assert component_table() in DOCS.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# every registered component, through one iteration of a stage

def _blob(shift, size=(20, 24)):
    itk = pytest.importorskip("itk")
    y, x = np.mgrid[:size[0], :size[1]].astype(np.float64)
    array = 100 * np.exp(-((x - size[1] / 2 - shift[0]) ** 2 + (y - size[0] / 2 - shift[1]) ** 2) / (size[0] + 1))
    return itk.image_from_array(array.astype(np.float32))


def _mask(size=(20, 24)):
    itk = pytest.importorskip("itk")
    array = np.zeros(size, np.uint8)
    array[3:-3, 3:-3] = 1
    return itk.image_from_array(array)


def _small_map(family: str, name: str) -> dict:
    """A one-level, one-iteration map with ``(family "name")``; the rest are defaults that run with it."""
    pmap = {"Metric": ["AdvancedMeanSquares"], "Transform": ["BSplineTransform"],
            "Optimizer": ["AdaptiveStochasticGradientDescent"], "ImageSampler": ["Full"],
            "NumberOfResolutions": ["1"], "MaximumNumberOfIterations": ["1"], "NumberOfSpatialSamples": ["200"],
            "FinalGridSpacingInPhysicalUnits": ["8"], family: [name]}
    if component(family, name).trait("feature_models"):
        pmap.update(MIND_SSC_2D_STATIC)
    if name == "QuasiNewtonLBFGS":  # elastix's LBFGS makes no iteration with MaximumNumberOfIterations 1
        pmap["MaximumNumberOfIterations"] = ["2"]
    return pmap


CASES = [(family, name) for family in FAMILIES for name in names(family)]


class _Recorder:
    """Stands in for a registered target: calls it, or its class methods (``for_level``, ``schedule`` …), and
    keeps what they return."""

    def __init__(self, target, built):
        self._target, self._built = target, built

    def _record(self, function):
        def call(*args, **kwargs):
            self._built.append(function(*args, **kwargs))
            return self._built[-1]
        return call

    def __call__(self, *args, **kwargs):
        return self._record(self._target)(*args, **kwargs)

    def __getattr__(self, attribute):
        found = getattr(self._target, attribute)
        return self._record(found) if callable(found) else found


@contextlib.contextmanager
def _registered_with_target(chosen, target):
    """``chosen`` registered with ``target`` instead of its own inside the block (its traits, notes and source
    kept), and registered as it was afterwards."""
    def register_again(with_target):
        unregister(chosen.family, chosen.name)
        register(chosen.family, chosen.name, with_target, notes=chosen.notes, source=chosen.source, **chosen.traits)

    register_again(target)
    try:
        yield
    finally:
        register_again(chosen.target)


@pytest.mark.parametrize("family,name", CASES, ids=[f"{f}-{n}" for f, n in CASES])
def test_every_registered_component_builds_from_a_map_and_runs_one_iteration(plugin, family, name):
    from elastix_bridge.engine.registration import run_stage

    built = []
    chosen = component(family, name)
    # record what the stage builds with it, whichever way the family is built
    recording = (contextlib.nullcontext() if family == "ImageSampler"
                 else _registered_with_target(chosen, _Recorder(chosen.factory, built)))
    pmap = ParameterMap.from_dict(_small_map(family, name))
    with recording:
        stage = run_stage(_blob((0, 0)), _blob((1.0, -0.5)), pmap, _mask(), _mask())
    assert len(stage.history) == 1 and len(stage.history[0]) >= 1
    assert np.all(np.isfinite(stage.parameters.numpy()))
    assert stage.transform_parameter_map.get("Transform") == pmap.get("Transform")
    if family == "Optimizer":
        assert [type(b).__name__ for b in built] == [name]  # not another optimizer in its place
    elif family == "Metric" and not chosen.trait("feature_models"):
        assert [type(b).__name__ for b in built] == [name]
    elif family == "Interpolator":
        assert built == [1]  # the map's order (default 1) or the linear interpolator's
    elif family.endswith("ImagePyramid"):  # its schedule, then its one level's image
        assert [type(b).__name__ for b in built] == ["PyramidSchedule", type(built[-1]).__name__]


# ---------------------------------------------------------------------------------------------------------------
# a toy component, added from this file only

def _toy_sampler_class():
    from elastix_bridge.engine.samplers import ImageSampler

    class EveryOtherVoxelSampler(ImageSampler):
        """Every second voxel of the sampling region along each axis (a toy, not an elastix sampler)."""

        name = "EveryOtherVoxel"
        drawn = 0

        def sample(self):
            index = self.region_indices()
            keep = (index[:, 0] % 2 == 0) & (index[:, 1] % 2 == 0)
            type(self).drawn += 1
            return self.to_points(index[keep])

    return EveryOtherVoxelSampler


@pytest.fixture
def toy_sampler():
    sampler = _toy_sampler_class()
    register("ImageSampler", "EveryOtherVoxel", sampler, random=False, notes="toy")
    yield sampler
    unregister("ImageSampler", "EveryOtherVoxel")


def test_a_toy_sampler_registered_in_a_test_runs_a_registration(plugin, toy_sampler):
    from elastix_bridge.engine.registration import run_stage

    assert "EveryOtherVoxel" in names("ImageSampler") and "`EveryOtherVoxel` (toy)" in component_table()
    pmap = ParameterMap.from_dict({"Metric": ["AdvancedMeanSquares"], "Transform": ["TranslationTransform"],
                                   "Optimizer": ["QuasiNewtonLBFGS"], "ImageSampler": ["EveryOtherVoxel"],
                                   "NumberOfResolutions": ["1"], "MaximumNumberOfIterations": ["50"]})
    stage = run_stage(_blob((0, 0), (40, 48)), _blob((1.5, -2.0), (40, 48)), pmap)
    assert toy_sampler.drawn >= 1
    np.testing.assert_allclose(stage.parameters.numpy(), [1.5, -2.0], atol=0.05)


def test_an_unregistered_toy_sampler_is_refused_with_the_supported_list(toy_sampler):
    unregister("ImageSampler", "EveryOtherVoxel")
    with pytest.raises(UnsupportedComponentError, match=r"\(ImageSampler \"EveryOtherVoxel\"\).*Supported: Full, Grid"):
        check_components(base(ImageSampler=["EveryOtherVoxel"]))
