"""The steps of one bridge stage (engine/registration.py): setup, level context, loop, output.

Each test builds a small 2D pair and a small map, runs one step, and checks what the map asks for;
the last one checks that the steps called by hand give the TransformParameters of ``run_stage``.
"""
import numpy as np
import pytest

itk = pytest.importorskip("itk")
pytest.importorskip("torch")

from elastix_bridge.core.parameters import ParameterMap  # noqa: E402


def _image(shift: float, spacing=(1.0, 1.0)):
    """A 48 × 40 (x, y) blob with a ripple, its centre moved by ``shift`` voxels along x."""
    y, x = np.mgrid[:40, :48].astype(np.float64)
    array = 100 * np.exp(-((x - 22 - shift) ** 2 + (y - 19) ** 2) / 60) + 10 * np.sin(x / 5)
    image = itk.image_from_array(array.astype(np.float32))
    image.SetSpacing(list(spacing))
    return image


def _map(**changes) -> ParameterMap:
    d = {"Metric": ["AdvancedMeanSquares"], "Transform": ["BSplineTransform"],
         "Optimizer": ["AdaptiveStochasticGradientDescent"], "ImageSampler": ["RandomCoordinate"],
         "FixedImagePyramid": ["FixedShrinkingImagePyramid"], "MovingImagePyramid": ["MovingShrinkingImagePyramid"],
         "NumberOfResolutions": ["2"], "ImagePyramidSchedule": ["4", "2", "1", "1"],
         "FinalGridSpacingInPhysicalUnits": ["6"], "GridSpacingSchedule": ["2", "1"],
         "NumberOfSpatialSamples": ["200", "300"], "MaximumNumberOfIterations": ["7", "4"], "RandomSeed": ["7"]}
    d.update(changes)
    return ParameterMap.from_dict(d)


def test_setup_reads_the_levels_and_schedules_the_map_asks_for(plugin):
    from elastix_bridge.engine.registration import setup_stage

    with setup_stage(_image(0), _image(1), _map()) as stage:
        assert stage.levels == 2
        assert stage.fixed_schedule.rescale.tolist() == [[4, 2], [1, 1]]
        assert stage.moving_schedule.rescale.tolist() == [[4, 2], [1, 1]]
        assert stage.grid.schedule.tolist() == [[2, 2], [1, 1]]
        assert stage.grid.final_spacing.tolist() == [6, 6] and stage.grid.order == 3
        assert stage.transform is None and stage.scales is None  # a B-spline's transform is made per level
        assert stage.optimizer.name == "AdaptiveStochasticGradientDescent"
        assert stage.impact_levels == [] and stage.models == []


def test_setup_of_a_linear_map_makes_its_transform_and_scales(plugin):
    from elastix_bridge.engine.registration import setup_stage

    with setup_stage(_image(0), _image(1), _map(Transform=["EulerTransform"], NumberOfResolutions=["1"],
                                                ImagePyramidSchedule=["1", "1"])) as stage:
        assert stage.levels == 1 and stage.grid is None
        assert stage.transform is not None and stage.scales is not None
        assert stage.fixed_schedule.rescale.tolist() == [[1, 1]]


def test_setup_refuses_an_unknown_optimizer_before_loading_anything():
    from elastix_bridge.engine.components import UnsupportedComponentError
    from elastix_bridge.engine.registration import setup_stage

    with pytest.raises(UnsupportedComponentError, match="Optimizer \"Powell\".*Supported"):
        with setup_stage(_image(0), _image(1), _map(Optimizer=["Powell"])):
            pass


def test_level_context_has_the_pyramid_sizes_sampler_and_optimizer_of_the_map(plugin):
    from elastix_bridge.engine.optimizers.asgd import AdaptiveStochasticGradientDescent
    from elastix_bridge.engine.registration import LevelContext, setup_stage

    with setup_stage(_image(0, (1.0, 0.5)), _image(1, (1.0, 0.5)), _map()) as stage:
        coarse = LevelContext(stage, 0)
        assert coarse.fixed.geometry.size == (12, 20) and coarse.moving.geometry.size == (12, 20)
        assert coarse.fixed.geometry.spacing.tolist() == [4.0, 1.0]
        assert [(s.name, s.number_of_samples) for s in coarse.samplers] == [("RandomCoordinate", 200)]
        assert isinstance(coarse.optimizer, AdaptiveStochasticGradientDescent)
        assert coarse.transform.grid.spacing.tolist() == [12.0, 12.0]  # final 6 mm × GridSpacingSchedule 2
        assert coarse.fixed_mask is None and coarse.optimizer.terms is not None  # ASGD estimates its step size
        assert coarse.cost.exact_sampler is not None  # ASGD's exact gradients, set up by its before_level
        fine = LevelContext(stage, 1, (coarse.transform, coarse.parameters))
        assert fine.fixed.geometry.size == (48, 40)
        assert [(s.name, s.number_of_samples) for s in fine.samplers] == [("RandomCoordinate", 300)]
        assert fine.transform.grid.spacing.tolist() == [6.0, 6.0]
        assert fine.parameters.numel() == 2 * np.prod(fine.transform.grid.size_xyz)


def test_loop_stops_at_maximum_number_of_iterations_and_writes_each_row(plugin, tmp_path):
    from elastix_bridge.engine.registration import LevelContext, optimize_level, setup_stage

    seen = []
    with setup_stage(_image(0), _image(1), _map()) as stage:
        context = LevelContext(stage, 0, output_directory=tmp_path, elastix_level=3,
                               on_iteration=lambda level, record: seen.append((level, record.iteration)))
        parameters = optimize_level(context)
    assert len(context.optimizer.history) == 7
    assert context.optimizer.stop_condition == "Maximum number of iterations has been reached"
    assert seen == [(0, k) for k in range(7)]
    assert parameters.shape == context.parameters.shape and not bool((parameters == context.parameters).all())
    rows = (tmp_path / "IterationInfo.3.R0.txt").read_text().splitlines()
    assert rows[0].startswith("1:ItNr\t2:Metric\t3a:Time") and len(rows) == 1 + 7


@pytest.mark.parametrize("transform", ["BSplineTransform", "EulerTransform"])
def test_steps_by_hand_give_the_transform_parameters_of_run_stage(plugin, transform):
    from elastix_bridge.engine.registration import (LevelContext, optimize_level, run_stage, setup_stage,
                                                    stage_output)

    pmap = _map(Transform=[transform])
    fixed, moving = _image(0), _image(1.5)
    with setup_stage(fixed, moving, pmap) as stage:
        history, previous = [], None
        for level in range(stage.levels):
            context = LevelContext(stage, level, previous)
            parameters = optimize_level(context)
            history.append(context.optimizer.history)
            previous = (context.transform, parameters)
        by_hand = stage_output(stage, context.transform, parameters, history, 0.0)
    direct = run_stage(fixed, moving, pmap)
    assert by_hand.transform_parameter_map.to_dict() == direct.transform_parameter_map.to_dict()
    assert [len(h) for h in by_hand.history] == [len(h) for h in direct.history] == [7, 4]
    assert by_hand.transform_parameter_map.get("Transform") == transform
