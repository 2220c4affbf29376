"""Drop-in itk-elastix (``import elastix_bridge``) and chains that mix elastix and Impact stages.

An unchanged itk-elastix script, in both call styles, must run Impact maps; everything else must
stay plain itk-elastix. A chain of an elastix stage and an Impact stage must give transforms that
transformix applies identically from the written files and from memory.
"""
import numpy as np
import pytest
from helpers.images import blobs, make_image
from helpers.maps import elastix_map, impact_map, transform_parameters
from helpers.paths import shared_path

itk = pytest.importorskip("itk")

import elastix_bridge  # noqa: E402
from elastix_bridge.api import elastix_registration_method  # noqa: E402
from elastix_bridge.core.parameters import read_parameter_file  # noqa: E402


def parameter_object(*maps):
    po = itk.ParameterObject.New()
    for m in maps:
        po.AddParameterMap(m)
    return po


@pytest.fixture(scope="module")
def pair():
    return make_image(blobs((40, 40), (20, 20))), make_image(blobs((40, 40), (22, 18)))


@pytest.fixture
def dropin_installed():
    """The drop-in as ``import elastix_bridge`` leaves it; afterwards, whatever state it was in before."""
    from elastix_bridge import dropin

    was_installed = dropin.installed()
    elastix_bridge.install_dropin()
    yield
    (elastix_bridge.install_dropin if was_installed else elastix_bridge.uninstall_dropin)()  # tests may switch it


def test_functional_style_runs_impact_maps(plugin, pair, dropin_installed):
    """``itk.elastix_registration_method`` with an Impact map gives the bridge's own result."""
    ours_image, ours = elastix_registration_method(*pair, parameter_object=impact_map())
    image, tp = itk.elastix_registration_method(*pair, parameter_object=parameter_object(impact_map()))
    assert transform_parameters(tp) == transform_parameters(ours)
    np.testing.assert_array_equal(itk.array_from_image(image), itk.array_from_image(ours_image))


def test_object_style_runs_impact_maps(plugin, pair, dropin_installed, tmp_path):
    """New / setters / Update / GetOutput / GetTransformParameterObject, as itk-elastix scripts use them."""
    fixed, moving = pair
    method = itk.ElastixRegistrationMethod[type(fixed), type(moving)].New()
    method.SetFixedImage(fixed)
    method.SetMovingImage(moving)
    method.SetParameterObject(parameter_object(impact_map()))
    method.SetOutputDirectory(str(tmp_path))
    method.SetLogToConsole(False)
    method.SetLogToFile(True)
    method.SetNumberOfThreads(1)
    method.Update()
    _, expected = elastix_registration_method(fixed, moving, parameter_object=impact_map())
    np.testing.assert_allclose(np.array(transform_parameters(method.GetTransformParameterObject()), float),
                               np.array(transform_parameters(expected), float), rtol=0, atol=1e-6)
    assert method.GetOutput().GetLargestPossibleRegion().GetSize() == fixed.GetLargestPossibleRegion().GetSize()
    assert {"TransformParameters.0.txt", "elastix.log", "IterationInfo.0.R0.txt"} <= {p.name for p in tmp_path.iterdir()}


def test_object_style_without_impact_is_itk_elastix(pair, dropin_installed):
    """Without Impact the object is itk-elastix's filter: same parameters as after uninstalling."""
    fixed, moving = pair
    method = itk.ElastixRegistrationMethod.New(fixed, moving, parameter_object=parameter_object(elastix_map()))
    method.Update()
    ours = transform_parameters(method.GetTransformParameterObject())
    elastix_bridge.uninstall_dropin()
    plain = itk.ElastixRegistrationMethod.New(fixed, moving, parameter_object=parameter_object(elastix_map()))
    assert type(plain).__name__.startswith("itkElastixRegistrationMethod")
    plain.Update()
    assert transform_parameters(plain.GetTransformParameterObject()) == ours
    assert any(float(v) != 0 for v in ours)


def test_uninstall_restores_plain_itk_elastix(pair, dropin_installed):
    """After ``uninstall_dropin()`` an Impact map reaches elastix's own loader, which has no plugin."""
    elastix_bridge.uninstall_dropin()
    with pytest.raises(RuntimeError, match="elastix"):
        itk.elastix_registration_method(*pair, parameter_object=parameter_object(impact_map()))
    elastix_bridge.install_dropin()
    assert elastix_bridge.dropin.installed()


def test_itk_attribute_reaches_itk_elastix_under_the_dropin(dropin_installed):
    """The adapter's door to itk-elastix bypasses the drop-in; ``itk``'s own name answers the bridge."""
    from elastix_bridge import dropin
    from elastix_bridge.runtime.itk_elastix import itk_attribute

    own = itk_attribute("elastix_registration_method")
    assert itk.elastix_registration_method is dropin.bridged_elastix_registration_method
    assert own is not dropin.bridged_elastix_registration_method
    assert own.__module__.startswith("itk")
    elastix_bridge.uninstall_dropin()
    assert itk.elastix_registration_method is own


def test_api_and_dropin_do_not_import_each_other_in_a_cycle():
    """``api`` reaches itk-elastix through ``itk_elastix``, never through ``dropin`` (no import cycle)."""
    import ast
    import inspect

    from elastix_bridge import api

    from elastix_bridge.runtime import itk_elastix

    for module, forbidden in ((api, "dropin"), (itk_elastix, "dropin"), (itk_elastix, "api")):
        imported = {node.module for node in ast.walk(ast.parse(inspect.getsource(module)))
                    if isinstance(node, ast.ImportFrom) and node.module}
        assert forbidden not in imported, f"{module.__name__} imports .{forbidden}"


def _mixed_chain_files_and_memory(fixed, moving, maps, folder):
    """Run a chain; return (tp, transformix result from memory, from the last written file)."""
    result, tp = itk.elastix_registration_method(fixed, moving, parameter_object=parameter_object(*maps),
                                                 output_directory=str(folder), log_to_file=True)
    from_memory = itk.transformix_filter(moving, tp)
    written = itk.ParameterObject.New()
    written.AddParameterFile(str(folder / f"TransformParameters.{len(maps) - 1}.txt"))
    from_file = itk.transformix_filter(moving, written)
    return result, tp, itk.array_from_image(from_memory), itk.array_from_image(from_file)


def test_mixed_chain_runs_each_stage_on_its_engine(plugin, pair, dropin_installed, tmp_path, caplog):
    """Translation on elastix, then Impact B-spline on the bridge, started from the translation."""
    fixed, moving = pair
    with caplog.at_level("INFO", logger="elastix_bridge"):
        result, tp, memory, file = _mixed_chain_files_and_memory(
            fixed, moving, [elastix_map(iterations=30), impact_map(iterations=10)], tmp_path)
    assert tp.GetNumberOfParameterMaps() == 2
    assert list(tp.GetParameterMap(0)["Transform"]) == ["TranslationTransform"]
    assert list(tp.GetParameterMap(1)["Transform"]) == ["BSplineTransform"]
    names = {p.name for p in tmp_path.iterdir()}
    assert {"TransformParameters.0.txt", "TransformParameters.1.txt", "result.0.mha", "result.1.mha",
            "IterationInfo.1.R0.txt", "elastix.log"} <= names
    assert not any(n.startswith(".stage") for n in names)  # the elastix stage's scratch folder is gone
    second = read_parameter_file(tmp_path / "TransformParameters.1.txt")[0]
    assert second.get("InitialTransformParameterFileName").endswith("TransformParameters.0.txt")
    # The translation stage's result, alone, is elastix's own (not refitted by the bridge).
    _, alone = itk.elastix_registration_method(fixed, moving, parameter_object=parameter_object(elastix_map(30)))
    assert transform_parameters(tp, 0) == transform_parameters(alone)
    np.testing.assert_array_equal(memory, file)
    np.testing.assert_array_equal(itk.array_from_image(result), memory)
    log = (tmp_path / "elastix.log").read_text()
    assert "Stage 0 (elastix engine)" in log and "Stage 1 (bridge engine)" in log
    assert "Resolution" in log  # elastix's own log of stage 0 was appended


def test_mixed_chain_on_the_brain_pair(plugin, dropin_installed, tmp_path):
    """The drop-in's acceptance chain: affine Mattes MI on elastix, then Impact B-spline on the bridge."""
    data = shared_path("data", "elastix-2d-brain")
    fixed, moving = itk.imread(str(data / "fixed.mhd"), itk.F), itk.imread(str(data / "moving.mhd"), itk.F)
    affine = itk.ParameterObject.New().GetDefaultParameterMap("affine", 2)
    affine["MaximumNumberOfIterations"] = ["100"]
    bspline = read_parameter_file(elastix_bridge_root() / "parameter_files" / "impact_mind_static_2d.txt")[0]
    bspline.set("MaximumNumberOfIterations", ["30"])
    result, tp, memory, file = _mixed_chain_files_and_memory(fixed, moving, [affine, bspline.to_itk()], tmp_path)
    np.testing.assert_array_equal(memory, file)
    np.testing.assert_array_equal(itk.array_from_image(result), memory)
    from elastix_bridge.registration_quality import nmi

    affine_only = itk.transformix_filter(moving, parameter_object(tp.GetParameterMap(0)))
    # Each stage adds alignment: identity < affine (elastix) < affine + Impact B-spline (bridge).
    scores = [nmi(fixed, image) for image in (moving, affine_only, result)]
    assert scores[0] < scores[1] < scores[2], scores


def elastix_bridge_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]


# Found by re-trying the bad inputs of docs/bad_input.md through the drop-in.


def test_dropin_refuses_negative_threads_and_a_mask_of_another_dimension(tmp_path):
    import numpy as np

    from elastix_bridge.validation import InputImageError

    image = itk.image_from_array(np.random.default_rng(0).random((16, 16)).astype(np.float32))
    mask3d = itk.image_from_array(np.ones((4, 16, 16), np.uint8))
    parameters = itk.ParameterObject.New()
    parameters.AddParameterMap(parameters.GetDefaultParameterMap("translation", 1))
    with pytest.raises(ValueError, match=r"number_of_threads -1: the number of threads must be an integer >= 1"):
        itk.elastix_registration_method(image, image, parameter_object=parameters, number_of_threads=-1)
    with pytest.raises(InputImageError, match="the fixed mask is 3D but the fixed image is 2D"):
        itk.elastix_registration_method(image, image, parameter_object=parameters, fixed_mask=mask3d)
