"""Tests of IMPACT parameter parsing/validation (docs/design.md §I2)."""
from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

from elastix_bridge.core.impact_parameters import (
    DISTANCES,
    ImpactParameterError,
    ModelConfig,
    group_by_dimensions,
    impact_levels,
    parse_layers_mask,
    read_impact_level,
    resolve_model_path,
)
from helpers.paths import SHARED

UPSTREAM_2D = SHARED / "data" / "elastix-2d-brain" / "upstream-parameters.2D.IMPACT.bspline.ASGD.002.txt"


def parse_parameter_text(text: str) -> dict:
    """Tiny elastix parameter-file parser: ``(Name v1 "v 2" ...)`` lines, ``//`` comments."""
    out = {}
    for line in text.splitlines():
        line = line.split("//", 1)[0].strip()
        if not (line.startswith("(") and line.endswith(")")):
            continue
        tokens = shlex.split(line[1:-1])
        if tokens:
            out[tokens[0]] = tokens[1:]
    return out


def base_map_3d() -> dict:
    """A valid 3D Jacobian-mode map with one shared model and two levels."""
    return {
        "ImpactModelsPath0": ["model.pt"], "ImpactModelsPath1": ["model.pt"],
        "ImpactDimension0": ["3"], "ImpactDimension1": ["3"],
        "ImpactNumberOfChannels0": ["1"], "ImpactNumberOfChannels1": ["1"],
        "ImpactPatchSize0": ["5", "5", "5"], "ImpactPatchSize1": ["7", "7", "7"],
        "ImpactVoxelSize0": ["3", "3", "3"], "ImpactVoxelSize1": ["1.5", "1.5", "1.5"],
        "ImpactLayersMask0": ["1"], "ImpactLayersMask1": ["01"],
        "ImpactSubsetFeatures0": ["32"], "ImpactSubsetFeatures1": ["16"],
        "ImpactPCA0": ["0"], "ImpactPCA1": ["0"],
        "ImpactLayersWeight0": ["1"], "ImpactLayersWeight1": ["0.5"],
        "ImpactDistance0": ["L2"], "ImpactDistance1": ["NCC"],
    }


def test_upstream_2d_parameter_file_parses():
    if not UPSTREAM_2D.is_file():
        pytest.skip(f"needs {UPSTREAM_2D} (the ../shared folder beside the checkout is absent)")
    pm = parse_parameter_text(UPSTREAM_2D.read_text())
    n = int(pm["NumberOfResolutions"][0])
    levels = impact_levels(pm, n, int(pm["FixedImageDimension"][0]))
    assert [lv.level for lv in levels] == [0, 1]
    for lv, vox in zip(levels, [(3.0, 3.0), (1.5, 1.5)]):
        assert lv.mode == "Static"
        assert lv.random_seed == 42 and lv.gpu == -1 and lv.mixed_precision is False
        assert lv.features_map_update_interval == -1
        assert lv.feature_map_directory == "./Features/"
        assert lv.distances == ("L2",) and lv.subset_features == (4,) and lv.pca == (0,)
        assert lv.layers_weight == (1.0,)
        (fm,), (mm,) = lv.fixed_models, lv.moving_models
        assert fm == mm == ModelConfig("./R1D2_2D.pt", 2, 1, (0, 0), vox, (True,))
        assert fm.n_layers == 1 and lv.n_selected_layers == 1


def test_shared_model_jacobian_defaults():
    levels = impact_levels(base_map_3d(), 2, 3)
    a, b = levels
    assert a.mode == b.mode == "Jacobian"
    assert a.gpu == -1 and a.mixed_precision is False and a.random_seed == 0
    assert a.feature_map_directory is None
    assert a.fixed_models[0].patch_size == (5, 5, 5)
    assert b.fixed_models[0].voxel_size == (1.5, 1.5, 1.5)
    assert b.fixed_models[0].layers_mask == (False, True)
    assert b.fixed_models[0].selected_layers == (1,)
    assert b.distances == ("NCC",) and b.layers_weight == (0.5,)


def test_multi_model_fixed_moving_specific():
    pm = {
        "ImpactFixedModelsPath0": ["seg3d.pt", "mind-ssc-2d"],
        "ImpactFixedDimension0": ["3", "2"],
        "ImpactFixedNumberOfChannels0": ["1", "1"],
        "ImpactFixedPatchSize0": ["5", "5", "5", "9", "9"],
        "ImpactFixedVoxelSize0": ["2", "2", "2", "1", "1"],
        "ImpactFixedLayersMask0": ["0 1 1", "1"],
        "ImpactMovingModelsPath0": ["seg3d_mr.pt", "mind-ssc-2d"],
        "ImpactMovingDimension0": ["3", "2"],
        "ImpactMovingNumberOfChannels0": ["3", "1"],
        "ImpactMovingPatchSize0": ["5", "5", "5", "9", "9"],
        "ImpactMovingVoxelSize0": ["2", "2", "2", "1", "1"],
        "ImpactMovingLayersMask0": ["011", "1"],
        "ImpactSubsetFeatures0": ["8", "8", "4"],
        "ImpactPCA0": ["0", "0", "0"],
        "ImpactLayersWeight0": ["1", "0.5", "2"],
        "ImpactDistance0": ["L1", "Cosine", "Dice"],
        "ImpactGPU": ["-1"], "ImpactUseMixedPrecision": ["false"],
        "RandomSeed": ["7"],
    }
    cfg = read_impact_level(pm, 0, 3)
    assert [m.path for m in cfg.fixed_models] == ["seg3d.pt", "mind-ssc-2d"]
    assert [m.path for m in cfg.moving_models] == ["seg3d_mr.pt", "mind-ssc-2d"]
    assert cfg.fixed_models[0].patch_size == (5, 5, 5)
    assert cfg.fixed_models[1].patch_size == (9, 9) and cfg.fixed_models[1].voxel_size == (1, 1)
    assert cfg.moving_models[0].channels == 3
    assert cfg.fixed_models[0].layers_mask == (False, True, True)
    assert cfg.n_selected_layers == 3 and cfg.distances == ("L1", "Cosine", "Dice")
    assert cfg.layers_weight == (1.0, 0.5, 2.0) and cfg.random_seed == 7


def test_only_moving_specific_falls_back_to_shared_for_fixed():
    pm = base_map_3d()
    pm.update({"ImpactMovingModelsPath0": ["other.pt"], "ImpactMovingDimension0": ["3"],
               "ImpactMovingNumberOfChannels0": ["2"], "ImpactMovingPatchSize0": ["5"] * 3,
               "ImpactMovingVoxelSize0": ["3"] * 3, "ImpactMovingLayersMask0": ["1"]})
    cfg = read_impact_level(pm, 0, 3)
    assert cfg.fixed_models[0].path == "model.pt" and cfg.moving_models[0].path == "other.pt"
    assert cfg.moving_models[0].channels == 2


def test_per_level_mode_changes_voxel_size_count():
    # 2D model in a 3D image: Static needs D=3 voxel sizes per model, Jacobian d_m=2.
    pm = {
        "ImpactModelsPath0": ["m.pt"], "ImpactModelsPath1": ["m.pt"],
        "ImpactDimension0": ["2"], "ImpactDimension1": ["2"],
        "ImpactNumberOfChannels0": ["1"], "ImpactNumberOfChannels1": ["1"],
        "ImpactPatchSize0": ["0", "0"], "ImpactPatchSize1": ["5", "5"],
        "ImpactVoxelSize0": ["2", "2", "2"], "ImpactVoxelSize1": ["1", "1"],
        "ImpactLayersMask0": ["1"], "ImpactLayersMask1": ["1"],
        "ImpactSubsetFeatures0": ["4"], "ImpactSubsetFeatures1": ["4"],
        "ImpactPCA0": ["2"], "ImpactPCA1": ["0"],
        "ImpactLayersWeight0": ["1"], "ImpactLayersWeight1": ["1"],
        "ImpactDistance0": ["L2"], "ImpactDistance1": ["L1Cosine"],
        "ImpactMode": ["Static", "Jacobian"],
        "ImpactFeaturesMapUpdateInterval": ["10"],
        "ImpactFeatureMapOutputDirectory": ["out/features"],
    }
    a, b = impact_levels(pm, 2, 3)
    assert a.mode == "Static" and b.mode == "Jacobian"
    assert a.fixed_models[0].voxel_size == (2, 2, 2) and b.fixed_models[0].voxel_size == (1, 1)
    assert a.features_map_update_interval == 10 and a.pca == (2,)
    assert a.feature_map_directory == "out/features" and b.feature_map_directory is None


def test_mechanism_a_entry_fallback_and_metric_prefix():
    pm = base_map_3d()
    for k in list(pm):
        if k.endswith("0"):
            pm[k[:-1] + "2"] = pm[k]
    pm["ImpactGPU"] = ["-1", "-1"]           # level 2 absent → entry 0
    pm["ImpactUseMixedPrecision"] = ["false", "true"]
    pm["Metric0ImpactGPU"] = ["-1", "-1", "3"]  # prefix wins
    levels = impact_levels(pm, 3, 3)
    assert [lv.mixed_precision for lv in levels] == [False, True, False]
    assert [lv.gpu for lv in levels] == [-1, -1, 3]
    assert impact_levels(pm, 3, 3, metric_index=1)[2].gpu == -1  # Metric1 prefix: not present


def test_write_feature_maps_old_name():
    pm = base_map_3d()
    pm["ImpactMode"] = ["Static"]
    pm["ImpactPatchSize0"] = ["0", "0", "0"]
    pm["ImpactWriteFeatureMaps"] = ["false"]
    assert read_impact_level(pm, 0, 3).feature_map_directory is None
    pm["ImpactWriteFeatureMaps"] = ["true"]  # quirk Q17: any other value is a directory
    assert read_impact_level(pm, 0, 3).feature_map_directory == "true"
    pm["ImpactFeatureMapOutputDirectory"] = [""]  # new name wins, empty = off
    assert read_impact_level(pm, 0, 3).feature_map_directory is None


@pytest.mark.parametrize("text,expected", [
    ("00000001", (False,) * 7 + (True,)),
    ("1", (True,)),
    ("0 1", (False, True)),
    ("", (False,)),
    ("1x1", (True, False, True)),
])
def test_layers_mask_examples(text, expected):
    assert parse_layers_mask(text) == expected


@pytest.mark.parametrize("values,expected", [
    ([5, 5, 5, 8, 6, 7], [(5, 5, 5), (8, 6, 7)]),
    ([5, 5, 5, 8, 6], [(5, 5, 5), (8, 6, 6)]),
    ([5, 5, 5, 8, 6, 7, 8], [(5, 5, 5), (8, 6, 7)]),
])
def test_group_by_dimensions_upstream_gtest(values, expected):
    assert group_by_dimensions(values, [3, 3]) == expected


def _drop(key):
    return lambda pm: pm.pop(key)


def _set(key, *vals):
    return lambda pm: pm.__setitem__(key, list(vals))


ERROR_CASES = {
    "missing key": (_drop("ImpactPatchSize1"), "ImpactPatchSize1"),
    "missing models": (_drop("ImpactModelsPath0"), "ImpactModelsPath0"),
    "short list": (_set("ImpactPatchSize0", "5"), "ImpactPatchSize0"),
    "short voxel list": (_set("ImpactVoxelSize1", "1.5", "1.5"), "ImpactVoxelSize1"),
    "bad uint": (_set("ImpactPatchSize0", "5", "-1", "5"), "ImpactPatchSize0"),
    "bad float": (_set("ImpactVoxelSize0", "3", "x", "3"), "ImpactVoxelSize0"),
    "bad distance": (_set("ImpactDistance0", "MSE"), "ImpactDistance0"),
    "distance case": (_set("ImpactDistance0", "l2"), "ImpactDistance0"),
    "bad mode": (_set("ImpactMode", "jacobian"), "ImpactMode"),
    "bad bool": (_set("ImpactUseMixedPrecision", "True"), "ImpactUseMixedPrecision"),
    "bad prefixed bool": (_set("Metric0ImpactUseMixedPrecision", "yes"),
                          "Metric0ImpactUseMixedPrecision"),
    "bad gpu": (_set("ImpactGPU", "cuda"), "ImpactGPU"),
    "bad interval": (_set("ImpactFeaturesMapUpdateInterval", "1.5"),
                     "ImpactFeaturesMapUpdateInterval"),
    "bad seed": (_set("RandomSeed", "-3"), "RandomSeed"),
    "patch 0 in Jacobian": (_set("ImpactPatchSize0", "0", "0", "0"), "ImpactPatchSize0"),
    "dim > image dim": (_set("ImpactDimension0", "4"), "ImpactDimension0"),
    "no layer selected": (_set("ImpactLayersMask1", "00"), "ImpactLayersMask1"),
    "weights short": (_set("ImpactLayersWeight1"), "ImpactLayersWeight1"),
    "channels 0": (_set("ImpactNumberOfChannels0", "0"), "ImpactNumberOfChannels0"),
    "reserved dim": (_set("ImpactModelsPath0", "mind-ssc-2d"), "ImpactDimension0"),
    "fixed/moving count (Jacobian)": (
        lambda pm: pm.update({
            "ImpactMovingModelsPath0": ["a.pt", "b.pt"], "ImpactMovingDimension0": ["3", "3"],
            "ImpactMovingNumberOfChannels0": ["1", "1"], "ImpactMovingPatchSize0": ["5"] * 6,
            "ImpactMovingVoxelSize0": ["3"] * 6, "ImpactMovingLayersMask0": ["1", "1"]}),
        "ImpactMovingModelsPath0"),
    "fixed/moving layer count": (
        lambda pm: pm.update({
            "ImpactMovingModelsPath0": ["a.pt"], "ImpactMovingDimension0": ["3"],
            "ImpactMovingNumberOfChannels0": ["1"], "ImpactMovingPatchSize0": ["5"] * 3,
            "ImpactMovingVoxelSize0": ["3"] * 3, "ImpactMovingLayersMask0": ["11"]}),
        "ImpactMovingLayersMask0"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_error_cases_name_the_key(case):
    mutate, key = ERROR_CASES[case]
    pm = base_map_3d()
    mutate(pm)
    with pytest.raises(ImpactParameterError) as info:
        impact_levels(pm, 2, 3)
    msg = str(info.value)
    assert key in msg, msg
    assert "level" in msg
    assert isinstance(info.value, ValueError)


def test_error_message_form():
    pm = base_map_3d()
    pm["ImpactDimension0"] = ["2"]
    pm["ImpactPatchSize0"] = ["5"]
    pm["ImpactVoxelSize0"] = ["3", "3"]
    with pytest.raises(ImpactParameterError) as info:
        read_impact_level(pm, 0, 3)
    assert str(info.value) == ("ImpactPatchSize0 (level 0): expected 2 unsigned integers (one per "
                               "model axis, Σ ImpactDimension0 = 2), got 1: '5'")


def test_doc_name_fixed_models_path_is_explained():
    pm = base_map_3d()
    del pm["ImpactModelsPath0"]
    pm["FixedModelsPath0"] = ["model.pt"]
    pm["MovingModelsPath0"] = ["model.pt"]
    with pytest.raises(ImpactParameterError, match="FixedModelsPath0.*ImpactFixedModelsPath0"):
        read_impact_level(pm, 0, 3)


def test_near_miss_hints():
    pm = base_map_3d()
    pm["impactPatchSize1"] = pm.pop("ImpactPatchSize1")
    with pytest.raises(ImpactParameterError, match="case-sensitive"):
        read_impact_level(pm, 1, 3)
    pm = base_map_3d()
    pm["ImpactDistance"] = pm.pop("ImpactDistance1")
    with pytest.raises(ImpactParameterError, match="without a level number"):
        read_impact_level(pm, 1, 3)


def test_patch_zero_allowed_in_static():
    pm = base_map_3d()
    pm["ImpactMode"] = ["Static"]
    pm["ImpactPatchSize0"] = ["0", "0", "0"]
    assert read_impact_level(pm, 0, 3).fixed_models[0].patch_size == (0, 0, 0)


def test_extra_entries_ignored():
    pm = base_map_3d()
    pm["ImpactPatchSize0"] = ["5", "5", "5", "9"]
    assert read_impact_level(pm, 0, 3).fixed_models[0].patch_size == (5, 5, 5)


def test_distances_list():
    assert DISTANCES == ("L1", "L2", "NCC", "Cosine", "L1Cosine", "DotProduct", "Dice")


def test_resolve_model_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("./m.pt") == tmp_path / "m.pt"
    assert resolve_model_path("m.pt", base_dir=tmp_path / "b") == tmp_path / "b" / "m.pt"
    assert resolve_model_path(tmp_path / "abs.pt") == tmp_path / "abs.pt"
    with pytest.raises(ValueError, match="built-in model name"):  # the loader writes built-in models (needs torch)
        resolve_model_path("mind-ssc-2d")


def test_import_does_not_import_torch_or_itk():
    code = ("import sys, elastix_bridge.core.impact_parameters as m; "
            "m.read_impact_level({'ImpactModelsPath0': ['mind-ssc-3d'], 'ImpactDimension0': ['3'],"
            "'ImpactNumberOfChannels0': ['1'], 'ImpactPatchSize0': ['5']*3,"
            "'ImpactVoxelSize0': ['2']*3, 'ImpactLayersMask0': ['1'],"
            "'ImpactSubsetFeatures0': ['12'], 'ImpactPCA0': ['0'], 'ImpactLayersWeight0': ['1'],"
            "'ImpactDistance0': ['L2']}, 0, 3); "
            "assert 'torch' not in sys.modules and 'itk' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------------------------------------
# Maps copied from ImpactLoss's ParameterMaps folder (upstream elastix cannot read them either:
# "Missing required parameter"); our error names the missing key and explains the near miss.
# ---------------------------------------------------------------------------------------------

# ParameterMap_Recommended style: the Impact names, but without level numbers (4 levels).
IMPACTLOSS_UNNUMBERED = """
(Metric "Impact")
(ImpactModelsPath "/models/seg_2_layers.pt")
(ImpactDimension 3)
(ImpactNumberOfChannels 1)
(ImpactPatchSize 11 11 11)
(ImpactVoxelSize 6 6 6 3 3 3 1.5 1.5 1.5 1 1 1)
(ImpactLayersMask "01")
(ImpactPCA 0)
(ImpactSubsetFeatures 64)
(ImpactDistance "L2")
(ImpactLayersWeight 1)
(ImpactMode "Jacobian")
(ImpactGPU 0)
(NumberOfResolutions 4)
"""

# The old "Full_example" style: unprefixed names, one quoted string per level, '*'-separated sizes.
IMPACTLOSS_OLD_SYNTAX = """
(Metric "Impact")
(ModelsPath "/models/seg_8_layers.pt" "/models/sam_2_layers.pt /models/seg_2_layers.pt")
(Dimension "3" "2 3")
(NumberOfChannels "1" "3 1")
(PatchSize "11*11*11" "29*29 11*11*11")
(VoxelSize "6*6*6" "3*3 3*3*3")
(LayersMask "00000001" "01 01")
(SubsetFeatures "30" "1000 64")
(LayersWeight "1" "1 1")
(Mode "Jacobian")
(GPU 0)
(PCA "0")
(Distance "Dice" "L2 L1")
(NumberOfResolutions 2)
"""


def _error(pm, level=None, levels=2):
    with pytest.raises(ImpactParameterError) as info:
        if level is None:
            impact_levels(pm, levels, 3)
        else:
            read_impact_level(pm, level, 3)
    return str(info.value)


def test_impactloss_unnumbered_names_are_explained():
    pm = parse_parameter_text(IMPACTLOSS_UNNUMBERED)
    msg = _error(pm, levels=4)  # raised while parsing: the model file does not exist
    assert msg.startswith("Missing parameter for level 0: ImpactFixedModelsPath0 or the shared "
                          "ImpactModelsPath0 must be provided")
    assert "found 'ImpactModelsPath' without a level number" in msg
    assert "(ImpactModelsPath0 \"/models/seg_2_layers.pt\")" in msg
    for other in ("ImpactPatchSize", "ImpactVoxelSize", "ImpactLayersMask", "ImpactDistance"):
        assert f"'{other}'" in msg  # the other unnumbered options are listed too
    assert "(ImpactVoxelSize0 6 6 6) (ImpactVoxelSize1 3 3 3)" in msg  # how a multi-level list splits


def test_impactloss_unnumbered_voxel_sizes_split_per_level():
    """Once the other keys are numbered, a 12-value ImpactVoxelSize is split: level 2 gets 1.5 mm."""
    pm = parse_parameter_text(IMPACTLOSS_UNNUMBERED)
    for name in ("ModelsPath", "Dimension", "NumberOfChannels", "PatchSize"):
        for level in range(4):
            pm[f"Impact{name}{level}"] = pm[f"Impact{name}"]
        del pm[f"Impact{name}"]
    msg = _error(pm, level=2)
    assert msg.startswith("Missing required parameter ImpactVoxelSize2 (level 2): expected 3")
    assert "found 'ImpactVoxelSize' without a level number" in msg
    assert "here (ImpactVoxelSize2 1.5 1.5 1.5)" in msg


def test_impactloss_old_syntax_is_explained():
    pm = parse_parameter_text(IMPACTLOSS_OLD_SYNTAX)
    msg = _error(pm)
    assert "ImpactModelsPath0" in msg and "level 0" in msg
    assert "ImpactLoss's old parameter syntax" in msg and "elastix does not read it" in msg
    for old in ("ModelsPath", "Dimension", "PatchSize", "LayersMask", "Distance", "Mode", "GPU"):
        assert f"'{old}'" in msg  # the old names found are listed
    assert "sizes by '*'" in msg and "one level-numbered key per level" in msg
    assert "(ImpactPatchSize0 11 11 11) (ImpactPatchSize1 29 29 11 11 11)" in msg
    assert "(Mode …) becomes (ImpactMode …)" in msg
    assert msg.endswith("for level 0 write (ImpactModelsPath0 \"/models/seg_8_layers.pt\"))")
    # the level's own entry is rewritten: two models at level 1
    assert _error(pm, level=1).endswith(
        "for level 1 write (ImpactModelsPath1 \"/models/sam_2_layers.pt\" \"/models/seg_2_layers.pt\"))")


def test_impactloss_old_syntax_fixed_and_moving_models():
    pm = {"FixedModelsPath": ["/models/ct.pt"], "MovingModelsPath": ["/models/mr.pt"],
          "FixedPatchSize": ["5*5*5"], "MovingPatchSize": ["7*7*7"], "Mode": ["Static"]}
    msg = _error(pm, level=0)
    assert "ImpactFixedModelsPath0" in msg and "old parameter syntax" in msg
    assert "'FixedModelsPath', 'MovingModelsPath', 'FixedPatchSize', 'MovingPatchSize', 'Mode'" in msg
    assert msg.endswith("for level 0 write (ImpactFixedModelsPath0 \"/models/ct.pt\"))")


def test_old_scalar_names_are_warned_about(caplog):
    """``(Mode "Static")`` is not ImpactMode: the default (Jacobian) is used, and the log says why."""
    pm = base_map_3d()
    pm["Mode"] = ["Static"]
    with caplog.at_level("WARNING", logger="elastix_bridge.core.impact_parameters"):
        assert read_impact_level(pm, 0, 3).mode == "Jacobian"
    assert "(Mode ...) is ImpactLoss's old name" in caplog.text and "(ImpactMode ...)" in caplog.text


# ParameterMap_Config_AllOptions structure: level 1 selects two layers but gives one PCA entry.
IMPACTLOSS_ALL_OPTIONS = """
(ImpactModelsPath0 "/models/seg_8_layers.pt")
(ImpactDimension0 3)
(ImpactNumberOfChannels0 1)
(ImpactPatchSize0 11 11 11)
(ImpactVoxelSize0 6 6 6)
(ImpactLayersMask0 "00000001")
(ImpactPCA0 0)
(ImpactSubsetFeatures0 30)
(ImpactDistance0 "Dice")
(ImpactLayersWeight0 1)
(ImpactModelsPath1 "/models/sam_2_layers.pt" "/models/seg_2_layers.pt")
(ImpactDimension1 2 3)
(ImpactNumberOfChannels1 3 1)
(ImpactPatchSize1 29 29 11 11 11)
(ImpactVoxelSize1 1.5 1.5 1.5 1.5 1.5)
(ImpactLayersMask1 "01" "01")
(ImpactPCA1 0)
(ImpactSubsetFeatures1 1000 64)
(ImpactDistance1 "L2" "L1")
(ImpactLayersWeight1 1 1)
(ImpactMode "Jacobian")
(ImpactGPU 0)
(NumberOfResolutions 2)
"""


def test_impactloss_all_options_short_pca_list():
    """The docs' "first value is reused" does not hold in elastix: ImpactPCA1 needs Λ = 2 entries."""
    pm = parse_parameter_text(IMPACTLOSS_ALL_OPTIONS)
    assert read_impact_level(pm, 0, 3).n_selected_layers == 1  # level 0 is fine
    msg = _error(pm)
    assert msg.startswith("ImpactPCA1 (level 1): expected 2 unsigned integers (one per selected layer, "
                          "Λ = 2 from ImpactLayersMask1), got 1: '0'")
    pm["ImpactPCA1"] = ["0", "0"]  # the fix
    levels = impact_levels(pm, 2, 3)
    assert levels[1].pca == (0, 0) and levels[1].distances == ("L2", "L1") and levels[1].gpu == 0
