"""A component registered from a test file runs in a registration, with no edit anywhere else.

Each toy is one class (and, for the optimizer, its settings class) and one ``register`` call: a pyramid
that keeps the image as it is, a fixed-step gradient descent, and a sampler whose ``samples`` hook the
memory plan asks. The registry is the only place the engine, the validation and the plan look.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from elastix_bridge.core.geometry import ImageGeometry
from elastix_bridge.core.parameters import ParameterMap
from elastix_bridge.engine.components import component_table, names, register, unregister

torch = pytest.importorskip("torch")
itk = pytest.importorskip("itk")

from elastix_bridge.engine.images.pyramids import ImagePyramid, PyramidSchedule  # noqa: E402
from elastix_bridge.engine.optimizers.base import IterationRecord, Optimizer  # noqa: E402


def _blob(shift, size=(40, 48)):
    y, x = np.mgrid[:size[0], :size[1]].astype(np.float64)
    array = 100 * np.exp(-((x - size[1] / 2 - shift[0]) ** 2 + (y - size[0] / 2 - shift[1]) ** 2) / (size[0] + 1))
    return itk.image_from_array(array.astype(np.float32))


def _map(**changes) -> ParameterMap:
    pmap = {"Metric": ["AdvancedMeanSquares"], "Transform": ["TranslationTransform"],
            "Optimizer": ["QuasiNewtonLBFGS"], "ImageSampler": ["Full"], "NumberOfResolutions": ["2"],
            "MaximumNumberOfIterations": ["50"]}
    pmap.update(changes)
    return ParameterMap.from_dict(pmap)


def _run(pmap: ParameterMap):
    from elastix_bridge.engine.registration import run_stage

    return run_stage(_blob((0, 0)), _blob((1.5, -2.0)), pmap)


# -- a pyramid ---------------------------------------------------------------------------------------------

class KeepImagePyramid(ImagePyramid):
    """Every level is the full image, unsmoothed (a toy, not an elastix pyramid)."""

    levels_made: list = []

    @classmethod
    def schedule(cls, factors, spacing, smoothing):
        return PyramidSchedule(np.ones_like(factors), np.zeros(factors.shape))

    @classmethod
    def level(cls, image, schedule, level, use_shrink_image_filter):
        cls.levels_made.append(level)
        return itk.image_duplicator(image)


@pytest.fixture
def toy_pyramid():
    KeepImagePyramid.levels_made = []
    for side in ("Fixed", "Moving"):
        register(f"{side}ImagePyramid", f"{side}KeepImagePyramid", KeepImagePyramid, notes="toy")
    yield KeepImagePyramid
    for side in ("Fixed", "Moving"):
        unregister(f"{side}ImagePyramid", f"{side}KeepImagePyramid")


def test_a_toy_pyramid_runs_a_registration(plugin, toy_pyramid):
    assert "`FixedKeepImagePyramid` (toy)" in component_table()
    stage = _run(_map(FixedImagePyramid=["FixedKeepImagePyramid"], MovingImagePyramid=["MovingKeepImagePyramid"]))
    assert toy_pyramid.levels_made == [0, 0, 1, 1]  # fixed and moving, per level
    np.testing.assert_allclose(stage.parameters.numpy(), [1.5, -2.0], atol=0.05)


# -- an optimizer ------------------------------------------------------------------------------------------

@dataclasses.dataclass
class FixedStepSettings:
    """``MaximumNumberOfIterations`` and ``ToyStepSize`` (a toy key), read per level."""

    maximum_number_of_iterations: int
    step: float

    @classmethod
    def from_parameter_map(cls, pmap, level, number_of_parameters=1, fixed_spacing=(1.0,), moving_spacing=(1.0,)):
        step = pmap.get("ToyStepSize", level=level, default=0.5, type=float)
        if step <= 0:
            raise ValueError(f"(ToyStepSize {step}) must be positive")
        return cls(pmap.get("MaximumNumberOfIterations", level=level, default=100, type=int), step)


class FixedStepGradientDescent(Optimizer):
    """``x <- x - step * g / |g|`` (a toy, not an elastix optimizer)."""

    def optimize(self, cost, x0, terms=None, scales=None):
        x = x0.clone()
        for k in range(self.s.maximum_number_of_iterations):
            value, g = cost.value_and_derivative(x)
            norm = float(g.norm())
            x = x - (self.s.step / max(norm, 1e-12)) * g * min(1.0, norm)
            record = IterationRecord(k, float(value), 0.0, self.s.step, norm, 0.0)
            self.history.append(record)
            if self.on_iteration is not None:
                self.on_iteration(record, x)
        self.stop_condition = "Maximum number of iterations has been reached"
        return x


@pytest.fixture
def toy_optimizer():
    register("Optimizer", "FixedStepGradientDescent", FixedStepGradientDescent, settings=FixedStepSettings,
             iteration_columns="gradient_descent", notes="toy")
    yield FixedStepGradientDescent
    unregister("Optimizer", "FixedStepGradientDescent")


def test_a_toy_optimizer_runs_a_registration_and_its_settings_are_checked_before_work(plugin, toy_optimizer):
    from elastix_bridge.engine.stage_settings import check_components, check_stage_settings

    assert "FixedStepGradientDescent" in names("Optimizer")
    pmap = _map(Optimizer=["FixedStepGradientDescent"], NumberOfResolutions=["1"], MaximumNumberOfIterations=["200"],
                ToyStepSize=["0.05"])
    stage = _run(pmap)
    np.testing.assert_allclose(stage.parameters.numpy(), [1.5, -2.0], atol=0.1)
    assert len(stage.history[0]) == 200
    bad = _map(Optimizer=["FixedStepGradientDescent"], ToyStepSize=["-1"])
    with pytest.raises(ValueError, match="ToyStepSize"):
        check_stage_settings(bad, check_components(bad), 2, 2)


# -- a sampler the plan asks -------------------------------------------------------------------------------

def test_the_plan_asks_a_toy_samplers_own_count():
    from elastix_bridge.plan import plan_registration

    register("ImageSampler", "ThousandPoints", "elastix_bridge.engine.samplers:GridSampler", random=False,
             samples=lambda pmap, level, fixed_size: 1000 * (level + 1))
    try:
        geometry = ImageGeometry((64, 64, 64), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
        plan = plan_registration(geometry, geometry, _map(ImageSampler=["ThousandPoints"]), engine="bridge")
    finally:
        unregister("ImageSampler", "ThousandPoints")
    assert [level.samples for level in plan.stages[0].levels] == [1000, 2000]
