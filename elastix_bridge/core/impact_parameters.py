"""IMPACT metric parameters of one resolution level, parsed and validated up front.

Input is a plain elastix parameter map, ``dict[str, list[str]]`` (what ``itk.ParameterObject``
or a parameter-file parser produces: every value is a list of strings). This module implements
docs/design.md §I2 in full:

* **Mechanism A** (§I2.1, §I2.6) — per-level scalars ``ImpactMode``, ``ImpactGPU``,
  ``ImpactUseMixedPrecision``, ``ImpactFeaturesMapUpdateInterval``,
  ``ImpactFeatureMapOutputDirectory`` / ``ImpactWriteFeatureMaps``: take entry 0 if present, then
  entry ``L`` if present; then the same with the component-label prefix ``Metric<i>`` (e.g.
  ``Metric0ImpactGPU``), which wins. Absent → code default.
* **Mechanism B** (§I2.1, §I2.3, §I2.4) — level-indexed lists (``ImpactPatchSize1``): mandatory at
  every level, exact minimum count (fewer entries → error; extra entries are ignored, as upstream,
  with a logged warning), no component-label prefix.
* Shared / fixed-specific / moving-specific model sets (§I2.2), layers masks (§I2.5), the count
  rules (PatchSize Σd_m; VoxelSize Σd_m in Jacobian mode, M·D in Static mode; per-layer lists Λ
  entries, Λ counted on the fixed models), accepted distances and modes, ``RandomSeed`` (entry 0).

Every problem is raised as :class:`ImpactParameterError` *before* any model is loaded or any
computation starts; the message names the offending key, the level, what was found and the
expected form.

Deliberate deviations from upstream elastix (we validate where upstream fails late or silently;
docs/design.md §I2.7, §I13):

* unknown ``ImpactDistance`` names are rejected while parsing (upstream: at metric Initialize);
* ``ImpactPatchSize`` 0 (= whole extent) is accepted only in Static mode; in Jacobian mode the
  patch must be a real patch (e.g. ``5 5 5``);
* a model dimension must be 2 or 3 and ≤ the image dimension, ``ImpactNumberOfChannels`` ≥ 1,
  ``ImpactSubsetFeatures`` ≥ 1 (upstream clamps 0 to 1), voxel sizes > 0;
* the class documentation's ``FixedModelsPath<L>`` (Q2) is *not* accepted — only the code names
  ``ImpactFixedModelsPath<L>`` etc. — but when such a name (or a wrong-case / unnumbered /
  ``Metric<i>``-prefixed variant of a required list key) is present, the error says so; maps
  copied from ImpactLoss's ``ParameterMaps`` folder get the rewrite elastix needs: unnumbered
  ``ImpactPatchSize`` (``ParameterMap_Recommended.txt``) → one level-numbered key per level, the
  old unprefixed syntax (``ModelsPath``, ``"11*11*11"``, ``Mode``) → ``ImpactModelsPath0`` etc.
  with space-separated values; old scalar names (``Mode``, ``GPU``, ...) are logged as ignored;
* reserved model names (``mind-ssc-2d``/``mind-ssc-3d``) are checked against ``ImpactDimension``
  and a one-entry layers mask.

This module holds the order of the checks and the IMPACT-specific rules; the two reading mechanisms
(and :class:`ImpactParameterError`) are :mod:`elastix_bridge.core.impact_option_readers`, the hints of
a missing option (near misses, ImpactLoss's syntaxes, old scalar names) :mod:`elastix_bridge.core.impact_hints`.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from elastix_bridge.core.impact_hints import (
    PER_LAYER_LISTS, PER_MODEL_LISTS, format_hints, missing_hints, option_values, warn_old_scalars)
from elastix_bridge.core.impact_option_readers import (
    ImpactParameterError, plural, read_list, scalar_bool, scalar_int, scalar_str, show_entries, to_float, to_uint)
from elastix_bridge.core.reserved_models import RESERVED_MODELS

__all__ = [
    "DISTANCES",
    "IMPACT_LIST_OPTIONS",
    "IMPACT_SCALAR_OPTIONS",
    "MODES",
    "ImpactLevelConfig",
    "ImpactParameterError",
    "ModelConfig",
    "group_by_dimensions",
    "impact_levels",
    "parse_layers_mask",
    "read_impact_level",
    "resolve_model_path",
]

logger = logging.getLogger(__name__)

#: Accepted ``ImpactDistance`` names (case-sensitive, docs/design.md §I2.4): the one list. The compiled plugin
#: holds the same names in this order (``distances()`` of plugin/impact_plugin.cpp; tests/test_plugin.py checks).
DISTANCES = ("L1", "L2", "NCC", "Cosine", "L1Cosine", "DotProduct", "Dice")
#: Accepted ``ImpactMode`` values (case-sensitive, docs/design.md §I2.6).
MODES = ("Jacobian", "Static")


@dataclass(frozen=True)
class ModelConfig:
    """One feature model of a fixed or moving model set (docs/design.md §I2.3).

    Attributes:
        path: ``ModelsPath`` entry as written (a file path, possibly relative, or a reserved name;
            see :func:`resolve_model_path`).
        dimension: model input dimensionality ``d_m`` (2 or 3, ≤ image dimension).
        channels: ``NumberOfChannels`` C (the intensity patch is replicated C times).
        patch_size: ``d_m`` patch sizes in voxels, in the order written (X Y Z); 0 = whole extent
            (Static mode only).
        voxel_size: mm; ``d_m`` values in Jacobian mode (model space), ``D`` values in Static mode
            (image space).
        layers_mask: one bool per model output layer (§I2.5); its length is passed to the model as
            ``nLayers``.
    """

    path: str
    dimension: int
    channels: int
    patch_size: tuple
    voxel_size: tuple
    layers_mask: tuple

    @property
    def n_layers(self) -> int:
        """Number of layers the model must return (mask length)."""
        return len(self.layers_mask)

    @property
    def n_selected(self) -> int:
        """Number of selected ('1') layers."""
        return sum(1 for m in self.layers_mask if m)

    @property
    def selected_layers(self) -> tuple:
        """Indices of the selected output layers, ascending."""
        return tuple(i for i, m in enumerate(self.layers_mask) if m)


@dataclass(frozen=True)
class ImpactLevelConfig:
    """All IMPACT options of one resolution level (docs/design.md §I2).

    Attributes:
        level: resolution level L (0-based).
        mode: ``"Jacobian"`` or ``"Static"``.
        fixed_models: tuple of :class:`ModelConfig` applied to the fixed image.
        moving_models: tuple of :class:`ModelConfig` applied to the moving image.
        subset_features: Λ ints >= 1, channels compared per selected layer (0 is refused here,
            where upstream clamps it to 1; a value above the layer's channel count means all
            channels, §I2.4).
        pca: Λ ints, PCA components per layer (0 = off; used in Static mode only).
        layers_weight: Λ floats, weight of each layer.
        distances: Λ names from :data:`DISTANCES`.
        gpu: CUDA device index, < 0 = CPU (availability is checked by the engine, not here).
        mixed_precision: ``ImpactUseMixedPrecision`` as written.
        features_map_update_interval: Static mode: > 0 refreshes moving feature maps every N
            iterations; ≤ 0 never (unused in Jacobian mode).
        feature_map_directory: Static mode feature-map output folder, or None (off; always None
            in Jacobian mode, which has no feature maps).
        random_seed: ``RandomSeed`` (entry 0, default 0 = time-based seeding downstream).
    """

    level: int
    mode: str
    fixed_models: tuple
    moving_models: tuple
    subset_features: tuple
    pca: tuple
    layers_weight: tuple
    distances: tuple
    gpu: int
    mixed_precision: bool
    features_map_update_interval: int
    feature_map_directory: Optional[str]
    random_seed: int

    @property
    def n_selected_layers(self) -> int:
        """Λ: total selected layers of the fixed models (= of the moving models)."""
        return sum(m.n_selected for m in self.fixed_models)


# --------------------------------------------------------------------------------------------
# small helpers


def parse_layers_mask(text: str) -> tuple:
    """Parse a layers-mask string (docs/design.md §I2.5).

    Whitespace is skipped; every other character is one layer, selected iff it is ``'1'``.
    An empty result is a single unselected layer.

    Args:
        text: the mask, e.g. ``"00000001"``, ``"1"``, ``"0 1"``.

    Returns:
        Tuple of bools, e.g. ``"0 1"`` → ``(False, True)``.
    """
    mask = tuple(ch == "1" for ch in str(text) if not ch.isspace())
    return mask if mask else (False,)


def group_by_dimensions(values: Sequence, dimensions: Sequence[int]) -> list:
    """Split a flat per-model list into groups of ``d_m`` values (upstream ``GroupByDimensions``).

    Programmatic-API semantics of the upstream helper (docs/design.md §I2.1, §I11.2): when the flat
    list runs out, the **last** value is repeated; surplus values are dropped. (Parameter maps
    never reach the padding branch: :func:`read_impact_level` requires the full count.)

    Args:
        values: flat list (non-empty when any group is non-empty).
        dimensions: group sizes.

    Returns:
        List of tuples, one per group. ``[5,5,5,8,6]`` / ``[3,3]`` → ``[(5,5,5), (8,6,6)]``.
    """
    values = list(values)
    out, pos = [], 0
    for d in dimensions:
        group = []
        for _ in range(int(d)):
            group.append(values[pos] if pos < len(values) else values[-1])
            pos += 1
        out.append(tuple(group))
    return out


def resolve_model_path(path: str | Path, base_dir: Optional[str | Path] = None) -> Path:
    """Map a ``ModelsPath`` entry that names a file to its path.

    A relative path is taken relative to ``base_dir`` or, when None, to the current working
    directory (upstream semantics, docs/design.md §I2.3). Existence is not checked here.
    Reserved names (``mind-ssc-2d``, ``mind-ssc-3d``; :data:`~elastix_bridge.core.reserved_models.RESERVED_MODELS`)
    name no file yet: :func:`elastix_bridge.runtime.loader.model_file` writes theirs (it needs torch)
    and maps every other entry through this function.

    Args:
        path: entry as written in the parameter map.
        base_dir: optional folder for relative paths.

    Returns:
        An absolute :class:`~pathlib.Path`.

    Raises:
        ValueError: ``path`` is a reserved model name.
    """
    text = os.fspath(path)
    if text in RESERVED_MODELS:
        raise ValueError(f"{text!r} is a built-in model name, not a file; "
                         "elastix_bridge.runtime.loader.model_file writes its TorchScript file")
    p = Path(text).expanduser()
    if not p.is_absolute():
        p = Path(base_dir if base_dir is not None else os.getcwd()) / p
    return p


#: Every IMPACT option name without its ``Impact`` prefix: level-indexed lists (written with the level
#: number, ``ImpactPatchSize0``) and per-level scalars (mechanism A, optionally ``Metric<i>``-prefixed).
IMPACT_LIST_OPTIONS = tuple(side + n for n in PER_MODEL_LISTS for side in ("", "Fixed", "Moving")) + PER_LAYER_LISTS
IMPACT_SCALAR_OPTIONS = ("Mode", "GPU", "UseMixedPrecision", "FeaturesMapUpdateInterval",
                         "FeatureMapOutputDirectory", "WriteFeatureMaps")


# --------------------------------------------------------------------------------------------
# model sets


def _read_model_set(parameter_map, prefix, level, mode, image_dimension):
    """Read the six per-model lists of one model set (docs/design.md §I2.3)."""
    paths_key = f"{prefix}ModelsPath{level}"
    paths = option_values(parameter_map, paths_key)
    if not paths or all(not p.strip() for p in paths):
        raise ImpactParameterError(
            f"{paths_key} (level {level}): expected at least one model path, got "
            f"{show_entries(paths or [])}")
    paths = tuple(p.strip() for p in paths)
    m = len(paths)
    why_models = f"one per model, {plural(m, 'model')} in {paths_key}"

    dim_key = f"{prefix}Dimension{level}"
    dims = read_list(
        parameter_map, dim_key, level, m, "unsigned integers", why_models, to_uint,
        check=lambda d: None if 2 <= d <= image_dimension else (
            f"is not a valid model dimension: it must be 2 or 3 and may not exceed the image "
            f"dimension {image_dimension}"))
    channels = read_list(
        parameter_map, f"{prefix}NumberOfChannels{level}", level, m, "unsigned integers",
        why_models, to_uint, check=lambda c: None if c >= 1 else "must be >= 1")

    patch_key = f"{prefix}PatchSize{level}"
    total = sum(dims)
    why_axes = f"one per model axis, Σ {dim_key} = {total}"

    def patch_check(p: int) -> Optional[str]:
        if p == 0 and mode == "Jacobian":
            return ("is 0 (= whole image extent), which is only allowed in Static mode; "
                    "Jacobian mode needs a real patch size such as 5 5 5")
        return None

    patches = read_list(parameter_map, patch_key, level, total, "unsigned integers", why_axes,
                        to_uint, check=patch_check)

    voxel_key = f"{prefix}VoxelSize{level}"
    if mode == "Static":
        n_vox = m * image_dimension
        why_vox = (f"Static mode: image dimension {image_dimension} per model × "
                   f"{plural(m, 'model')} = {n_vox}")
        vox_dims = [image_dimension] * m
    else:
        n_vox = total
        why_vox = f"Jacobian mode: one per model axis, Σ {dim_key} = {total}"
        vox_dims = list(dims)
    voxels = read_list(parameter_map, voxel_key, level, n_vox, "positive numbers (mm)", why_vox,
                       to_float, check=lambda v: None if v > 0 else "must be > 0 mm")

    mask_key = f"{prefix}LayersMask{level}"
    masks = read_list(parameter_map, mask_key, level, m, "layer-mask strings", why_models, str)

    models = []
    for i, (path, d, c, patch, vox, mask) in enumerate(zip(
            paths, dims, channels, group_by_dimensions(patches, dims),
            group_by_dimensions(voxels, vox_dims), masks)):
        stray = sorted({ch for ch in str(mask) if not ch.isspace() and ch not in "01"})
        if stray:  # parse_layers_mask would read them as '0' and select a layer silently less
            raise ImpactParameterError(
                f"{mask_key} (level {level}): model {i}: the mask '{mask}' holds {', '.join(map(repr, stray))}; "
                f"a layers mask is one character per layer, '1' (use it) or '0' (skip it), e.g. \"1\" or \"0 1\"")
        layers = parse_layers_mask(mask)
        if path in RESERVED_MODELS:
            rd = RESERVED_MODELS[path][0]
            if rd != d:
                raise ImpactParameterError(
                    f"{dim_key} (level {level}): model {i} is the reserved model '{path}' of "
                    f"dimension {rd}, but {dim_key} says {d}")
            if len(layers) != 1:
                raise ImpactParameterError(
                    f"{mask_key} (level {level}): model {i} is the reserved model '{path}', which "
                    f"returns one layer; expected the mask \"1\", got '{mask}'")
        models.append(ModelConfig(path=path, dimension=d, channels=c, patch_size=patch,
                                  voxel_size=vox, layers_mask=layers))
    return tuple(models), mask_key, paths_key


# --------------------------------------------------------------------------------------------
# public entry points


def read_impact_level(parameter_map: Mapping, level: int, image_dimension: int,
                      metric_index: int = 0) -> ImpactLevelConfig:
    """Parse and validate the IMPACT options of one resolution level (docs/design.md §I2).

    Validation follows the upstream order of §I2.7 (RandomSeed, GPU, mixed precision, mode, fixed
    models, moving models, model-count rule, layer counts, per-layer lists, feature-map
    directory, distances), but everything is checked here, before any model is loaded.

    Args:
        parameter_map: elastix parameter map: a :class:`~elastix_bridge.core.parameters.ParameterMap`
            or a ``{name: [str, ...]}`` mapping (a plain string value is accepted as a one-entry list).
        level: resolution level L (0-based).
        image_dimension: D, 2 or 3.
        metric_index: index i of the metric component, for the ``Metric<i>`` label prefix of the
            per-level scalar options (mechanism A).

    Returns:
        The :class:`ImpactLevelConfig` of level L.

    Raises:
        ImpactParameterError: any missing or malformed option; the message names the key (e.g.
            ``ImpactPatchSize1``), the level, the text found and the expected form.
        ValueError: ``level < 0`` or ``image_dimension`` not 2/3 (caller errors).
    """
    if image_dimension not in (2, 3):
        raise ValueError(f"image_dimension must be 2 or 3, got {image_dimension!r}")
    if int(level) != level or level < 0:
        raise ValueError(f"level must be an integer >= 0, got {level!r}")
    level = int(level)
    pm = parameter_map

    # 1. RandomSeed (entry 0 only, unsigned, default 0), GPU, mixed precision, mode.
    seed_vals = option_values(pm, "RandomSeed")
    random_seed = 0
    if seed_vals:
        try:
            random_seed = to_uint(seed_vals[0])
        except ValueError:
            raise ImpactParameterError(
                f"RandomSeed (level {level}): expected an unsigned integer, got "
                f"'{seed_vals[0]}'") from None
    gpu = scalar_int(pm, "ImpactGPU", level, metric_index, -1)
    mixed = scalar_bool(pm, "ImpactUseMixedPrecision", level, metric_index, False)
    got = scalar_str(pm, "ImpactMode", level, metric_index, None)
    mode = "Jacobian"
    if got is not None:
        mode, key, entry = got
        if mode not in MODES:
            raise ImpactParameterError(
                f"{key} (level {level}, entry {entry}): invalid mode '{mode}'; supported modes "
                f"are 'Jacobian' and 'Static' (case-sensitive)")

    if level == 0:
        warn_old_scalars(pm)

    # 2. model sets (§I2.2)
    has_shared = f"ImpactModelsPath{level}" in pm
    sets = {}
    for side in ("Fixed", "Moving"):
        own = f"Impact{side}ModelsPath{level}"
        if own in pm:
            prefix = f"Impact{side}"
        elif has_shared:
            prefix = "Impact"
        else:
            hint = format_hints(missing_hints(pm, own, level)
                                + missing_hints(pm, f"ImpactModelsPath{level}", level))
            raise ImpactParameterError(
                f"Missing parameter for level {level}: {own} or the shared "
                f"ImpactModelsPath{level} must be provided" + hint)
        sets[side] = _read_model_set(pm, prefix, level, mode, image_dimension)
    fixed, fixed_mask_key, fixed_paths_key = sets["Fixed"]
    moving, moving_mask_key, moving_paths_key = sets["Moving"]

    # 3. Jacobian mode: as many fixed as moving models.
    if mode == "Jacobian" and len(fixed) != len(moving):
        raise ImpactParameterError(
            f"{fixed_paths_key}/{moving_paths_key} (level {level}): in "
            f"'Jacobian' mode the number of fixed and moving models must be the same, got "
            f"{len(fixed)} fixed and {len(moving)} moving model(s)")

    # 5. update interval (validated in both modes; used in Static mode only).
    interval = scalar_int(pm, "ImpactFeaturesMapUpdateInterval", level, metric_index, -1)

    # 6. layer counts
    n_fixed = sum(mm.n_selected for mm in fixed)
    n_moving = sum(mm.n_selected for mm in moving)
    if n_fixed != n_moving:
        raise ImpactParameterError(
            f"{fixed_mask_key}/{moving_mask_key} (level {level}): the fixed models select "
            f"{n_fixed} layer(s) but the moving models select {n_moving}; they must match")
    if n_fixed == 0:
        raise ImpactParameterError(
            f"{fixed_mask_key} (level {level}): at least one layer must be selected (a '1' in a "
            f"layers mask), got " + show_entries(["".join("1" if b else "0" for b in mm.layers_mask)
                                                  for mm in fixed]))
    lam = n_fixed
    why_layers = f"one per selected layer, Λ = {lam} from {fixed_mask_key}"

    # 7. per-layer lists
    subset = read_list(pm, f"ImpactSubsetFeatures{level}", level, lam, "unsigned integers",
                       why_layers, to_uint,
                       check=lambda k: None if k >= 1 else "must be >= 1 (channels compared per layer)")
    pca = read_list(pm, f"ImpactPCA{level}", level, lam, "unsigned integers", why_layers,
                    to_uint)
    weights = read_list(pm, f"ImpactLayersWeight{level}", level, lam, "numbers", why_layers,
                        to_float)

    # 8. feature-map directory (Static mode only)
    directory = None
    new = scalar_str(pm, "ImpactFeatureMapOutputDirectory", level, metric_index, None)
    old = scalar_str(pm, "ImpactWriteFeatureMaps", level, metric_index, None)
    if new is not None:
        directory = new[0].strip() or None
    elif old is not None:
        directory = None if old[0].strip() == "false" else (old[0].strip() or None)
    if mode != "Static":
        if directory is not None:
            logger.info("level %d: feature-map output directory %r ignored in Jacobian mode",
                        level, directory)
        directory = None

    # 9. distances
    def distance_check(name: str) -> Optional[str]:
        if name in DISTANCES:
            return None
        close = [d for d in DISTANCES if d.lower() == name.lower()]
        return ("is not a known distance" + (f" (names are case-sensitive: did you mean "
                                              f"'{close[0]}'?)" if close else "")
                + f"; accepted: {' '.join(DISTANCES)}")

    distances = read_list(pm, f"ImpactDistance{level}", level, lam, "distance names",
                          why_layers, lambda s: s.strip(), check=distance_check)

    return ImpactLevelConfig(
        level=level, mode=mode, fixed_models=fixed, moving_models=moving,
        subset_features=subset, pca=pca, layers_weight=weights, distances=distances, gpu=gpu,
        mixed_precision=mixed, features_map_update_interval=interval,
        feature_map_directory=directory, random_seed=random_seed)


def impact_levels(parameter_map: Mapping, number_of_resolutions: int, image_dimension: int,
                  metric_index: int = 0) -> list:
    """Parse every resolution level (see :func:`read_impact_level`).

    Args:
        parameter_map: elastix parameter map (a ``ParameterMap`` or a ``{name: [str, ...]}`` mapping).
        number_of_resolutions: number of levels (``NumberOfResolutions``), ≥ 1.
        image_dimension: D, 2 or 3.
        metric_index: component index for the ``Metric<i>`` prefix.

    Returns:
        ``[ImpactLevelConfig(level=0), …]``, one per level.

    Raises:
        ImpactParameterError: the first invalid option found, level by level.
        ValueError: ``number_of_resolutions < 1``.
    """
    if int(number_of_resolutions) != number_of_resolutions or number_of_resolutions < 1:
        raise ValueError(f"number_of_resolutions must be >= 1, got {number_of_resolutions!r}")
    return [read_impact_level(parameter_map, lv, image_dimension, metric_index)
            for lv in range(int(number_of_resolutions))]
