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

Why this module is longer than ~600 lines: it is the one reader of the whole IMPACT parameter set
(docs/design.md §I2), in upstream's validation order (§I2.7), with a message per malformed option;
splitting it would split that order.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from elastix_bridge.core.parameters import ParameterMap

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

#: Accepted ``ImpactDistance`` names (case-sensitive, docs/design.md §I2.4).
DISTANCES = ("L1", "L2", "NCC", "Cosine", "L1Cosine", "DotProduct", "Dice")
#: Accepted ``ImpactMode`` values (case-sensitive, docs/design.md §I2.6).
MODES = ("Jacobian", "Static")


class ImpactParameterError(ValueError):
    """An IMPACT parameter is missing or malformed; the message names the key and the level."""


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
    """Map a ``ModelsPath`` entry to a file path.

    Reserved names (``mind-ssc-2d``, ``mind-ssc-3d``; :data:`elastix_bridge.models.mind.
    RESERVED_MODELS`) resolve to the cached TorchScript file of
    :func:`elastix_bridge.models.mind.mind_model_path` (written on first use; imports torch).
    A relative path is taken relative to ``base_dir`` or, when None, to the current working
    directory (upstream semantics, docs/design.md §I2.3). Existence is not checked here.

    Args:
        path: entry as written in the parameter map.
        base_dir: optional folder for relative paths.

    Returns:
        An absolute :class:`~pathlib.Path`.
    """
    from elastix_bridge.models.mind import RESERVED_MODELS

    text = os.fspath(path)
    if text in RESERVED_MODELS:
        from elastix_bridge.models.mind import mind_model_path

        return mind_model_path(text)
    p = Path(text).expanduser()
    if not p.is_absolute():
        p = Path(base_dir if base_dir is not None else os.getcwd()) / p
    return p


def _values(parameter_map: Mapping, key: str) -> Optional[list]:
    """The entries of ``key`` as a list of strings, or None when absent."""
    if key not in parameter_map:
        return None
    v = parameter_map[key]
    if isinstance(v, (str, bytes)):
        return [v.decode() if isinstance(v, bytes) else v]
    return [str(x) for x in v]


def _show(values: Sequence[str]) -> str:
    return "'" + " ".join(values) + "'"


#: Level-indexed list options (docs/design.md §I2.3, §I2.4), without the ``Impact`` prefix and level.
_PER_MODEL_LISTS = ("ModelsPath", "Dimension", "NumberOfChannels", "PatchSize", "VoxelSize", "LayersMask")
_PER_LAYER_LISTS = ("SubsetFeatures", "PCA", "LayersWeight", "Distance")
#: Lists whose entries are strings (quoted when a rewrite is suggested).
_STRING_LISTS = ("ModelsPath", "LayersMask", "Distance")
#: ImpactLoss's old per-level scalar names (ParameterMaps/README.md) and what elastix reads instead.
#: Every IMPACT option name without its ``Impact`` prefix: level-indexed lists (written with the level
#: number, ``ImpactPatchSize0``) and per-level scalars (mechanism A, optionally ``Metric<i>``-prefixed).
IMPACT_LIST_OPTIONS = tuple(side + n for n in _PER_MODEL_LISTS for side in ("", "Fixed", "Moving")) + _PER_LAYER_LISTS
IMPACT_SCALAR_OPTIONS = ("Mode", "GPU", "UseMixedPrecision", "FeaturesMapUpdateInterval",
                         "FeatureMapOutputDirectory", "WriteFeatureMaps")
_OLD_SCALARS = {"Mode": "ImpactMode", "GPU": "ImpactGPU", "Device": "ImpactGPU",
                "UseMixedPrecision": "ImpactUseMixedPrecision",
                "FeaturesMapUpdateInterval": "ImpactFeaturesMapUpdateInterval",
                "WriteFeatureMaps": "ImpactWriteFeatureMaps"}


def _old_syntax_names(parameter_map: Mapping) -> list:
    """Names of ImpactLoss's old syntax present in the map (unprefixed, unnumbered: 'ModelsPath',
    'FixedPatchSize', 'Mode', ...); empty unless a ``[Fixed|Moving]ModelsPath`` marks the old syntax."""
    if not any(n in parameter_map for n in ("ModelsPath", "FixedModelsPath", "MovingModelsPath")):
        return []
    names = [side + n for n in _PER_MODEL_LISTS for side in ("", "Fixed", "Moving")]
    names += list(_PER_LAYER_LISTS) + list(_OLD_SCALARS)
    return [n for n in names if n in parameter_map]


def _rewrite(parameter_map: Mapping, name: str, new: str, level: int, count=None,
             old_syntax: bool = False) -> Optional[str]:
    """Suggested ``(new v1 v2 ...)`` for ``level`` from the entries of ``name``, or None if unclear.

    ``old_syntax`` (ImpactLoss's old syntax, one quoted string per level): the level's string is
    used, or the first one, which ImpactLoss reused for missing levels; it is split at spaces and
    '*'. Otherwise (an unnumbered elastix list) all entries are used, or, when ``count`` entries are
    expected per level and the list holds a multiple of it (``ImpactVoxelSize 6 6 6 3 3 3`` for two
    levels), the level's chunk; None when neither fits. String lists are quoted.
    """
    values = _values(parameter_map, name) or [""]
    if old_syntax:
        tokens = (values[level] if len(values) > level else values[0]).replace("*", " ").split()
    elif count is None or len(values) == count:
        tokens = values
    elif len(values) % count == 0 and len(values) >= (level + 1) * count:
        tokens = values[level * count:(level + 1) * count]
    else:
        return None
    if any(name.endswith(n) for n in _STRING_LISTS):
        tokens = [f'"{t}"' for t in tokens]
    return f"({new} {' '.join(tokens)})"


def _missing_hints(parameter_map: Mapping, key: str, level: int, count=None) -> list:
    """Explanations of near misses of a missing key: upstream doc names, case, level number,
    component-label prefix, ImpactLoss's unnumbered and old unprefixed syntaxes (``count``: the
    number of entries expected, None for a models path)."""
    hints = []
    if key.startswith("Impact"):
        doc_name = key[len("Impact"):]
        if doc_name in parameter_map and doc_name.startswith(("Fixed", "Moving")):
            hints.append(
                f"found '{doc_name}': that name (from the upstream class documentation) is not "
                f"read by elastix or by us; write '{key}'")
    lower = key.lower()
    for other in parameter_map:
        if other != key and other.lower() == lower:
            hints.append(f"found '{other}': parameter names are case-sensitive, write '{key}'")
    base = key[: len(key) - len(str(level))] if key.endswith(str(level)) else None
    if base and base in parameter_map:
        # ImpactLoss's ParameterMap_Recommended.txt style: every list option unnumbered.
        others = [p + n for n in _PER_MODEL_LISTS + _PER_LAYER_LISTS
                  for p in ("Impact", "ImpactFixed", "ImpactMoving")
                  if p + n in parameter_map and p + n != base
                  and (p == "Impact" or n in _PER_MODEL_LISTS)]
        example = _rewrite(parameter_map, base, key, level, count)
        text = (f"found '{base}' without a level number (ImpactLoss's ParameterMap_Recommended "
                f"style): elastix reads list options only level-indexed, so write one key per "
                f"resolution level ('{base}0', '{base}1', …) holding that level's values"
                + (f", here {example}" if example else ""))
        if others:
            text += (f"; the same holds for {', '.join(repr(o) for o in others)} (a list that "
                     f"covers several levels, such as (ImpactVoxelSize 6 6 6 3 3 3), is split into "
                     f"(ImpactVoxelSize0 6 6 6) (ImpactVoxelSize1 3 3 3))")
        hints.append(text)
    for other in parameter_map:
        if other.endswith(key) and other != key and other[: -len(key)].startswith("Metric"):
            hints.append(f"found '{other}': the component-label prefix is not supported for "
                         f"level-indexed list options, write '{key}'")
    old_names = _old_syntax_names(parameter_map)
    if old_names:
        hints.append(
            "the map uses ImpactLoss's old parameter syntax (found "
            + ", ".join(repr(n) for n in old_names)
            + "): unprefixed names, one quoted string per resolution level, models separated by "
              "spaces and sizes by '*' (\"11*11*11\"); elastix does not read it. Rewrite every option "
              "with the 'Impact' prefix, one level-numbered key per level and space-separated "
              "values: (ModelsPath \"a.pt\" \"b.pt c.pt\") becomes (ImpactModelsPath0 \"a.pt\") "
              "(ImpactModelsPath1 \"b.pt\" \"c.pt\"), (PatchSize \"11*11*11\" \"29*29 11*11*11\") "
              "becomes (ImpactPatchSize0 11 11 11) (ImpactPatchSize1 29 29 11 11 11), likewise "
              "Dimension, NumberOfChannels, VoxelSize, LayersMask, SubsetFeatures, PCA, "
              "LayersWeight, Distance; FixedModelsPath/MovingModelsPath become "
              "ImpactFixedModelsPath<L>/ImpactMovingModelsPath<L>; (Mode …) becomes (ImpactMode …) "
              "and (GPU …)/(Device …) (ImpactGPU …)")
        if key.startswith("Impact") and base:
            old = base[len("Impact"):]
            if old in parameter_map:
                hints.append(f"for level {level} write "
                             + _rewrite(parameter_map, old, key, level, old_syntax=True))
    return hints


def _format_hints(hints: Sequence[str]) -> str:
    unique = list(dict.fromkeys(hints))
    return (" (" + "; ".join(unique) + ")") if unique else ""


def _hint_missing(parameter_map: Mapping, key: str, level: int, count=None) -> str:
    """Explain near misses of a missing key (see :func:`_missing_hints`), as ``" (...)"`` or ``""``."""
    return _format_hints(_missing_hints(parameter_map, key, level, count))


def _warn_old_scalars(parameter_map: Mapping) -> None:
    """Log ImpactLoss's old per-level scalar names that elastix ignores (the default is used)."""
    for old, new in _OLD_SCALARS.items():
        if old in parameter_map and new not in parameter_map:
            logger.warning("(%s ...) is ImpactLoss's old name and is not read by elastix or by us; "
                           "write (%s ...). The default is used.", old, new)


# --------------------------------------------------------------------------------------------
# mechanism A: per-level scalars


def _read_scalar(parameter_map, name, level, metric_index):
    """Mechanism A lookup: returns ``(raw, key, entry)`` or None (docs/design.md §I2.1 A).

    Mechanism A is elastix's ``ReadParameter`` with the component prefix ``Metric<i>``
    (:meth:`ParameterMap.reads`); the raw text is returned so that the messages stay IMPACT's.
    """
    prefix = f"Metric{metric_index}"
    keys = {key: _values(parameter_map, key) or [] for key in (name, prefix + name)}
    reads = ParameterMap(keys).reads(name, level, prefix)
    if not reads:
        return None
    key, entry = reads[-1]
    return keys[key][entry], key, entry


def _scalar_int(parameter_map, name, level, metric_index, default, minimum=None):
    got = _read_scalar(parameter_map, name, level, metric_index)
    if got is None:
        return default
    raw, key, entry = got
    try:
        value = int(raw.strip())
    except ValueError:
        raise ImpactParameterError(
            f"{key} (level {level}, entry {entry}): expected an integer, got '{raw}'") from None
    if minimum is not None and value < minimum:
        raise ImpactParameterError(
            f"{key} (level {level}, entry {entry}): expected an integer >= {minimum}, got '{raw}'")
    return value


def _scalar_bool(parameter_map, name, level, metric_index, default):
    got = _read_scalar(parameter_map, name, level, metric_index)
    if got is None:
        return default
    raw, key, entry = got
    if raw == "true":
        return True
    if raw == "false":
        return False
    raise ImpactParameterError(
        f"{key} (level {level}, entry {entry}): expected a boolean, i.e. either \"true\" or "
        f"\"false\", got '{raw}'")


def _scalar_str(parameter_map, name, level, metric_index, default):
    got = _read_scalar(parameter_map, name, level, metric_index)
    return default if got is None else got


# --------------------------------------------------------------------------------------------
# mechanism B: level-indexed lists


def _read_list(parameter_map, key, level, count, what, why, convert: Callable, check=None):
    """Mechanism B: exactly ``count`` leading entries of ``key``, converted (docs/design.md §I2.1 B).

    Args:
        what: plural noun of the expected entries ("unsigned integers").
        why: explanation of the count, e.g. "one per model axis, Σ ImpactDimension = 2".
        convert: ``str -> value``; raises ValueError on bad text.
        check: optional ``value -> error text or None``.
    """
    vals = _values(parameter_map, key)
    if count == 1:  # singular form of the noun
        what = {"unsigned integers": "unsigned integer", "positive numbers (mm)":
                "positive number (mm)", "numbers": "number", "distance names": "distance name",
                "layer-mask strings": "layer-mask string"}.get(what, what)
    expected = f"{count} {what} ({why})"
    if vals is None:
        raise ImpactParameterError(
            f"Missing required parameter {key} (level {level}): expected {expected}"
            + _hint_missing(parameter_map, key, level, count))
    if len(vals) < count:
        raise ImpactParameterError(
            f"{key} (level {level}): expected {expected}, got {len(vals)}: {_show(vals)}")
    if len(vals) > count:
        logger.warning("%s (level %d): %d entries given, only the first %d are used (%s)",
                       key, level, len(vals), count, why)
    out = []
    for i, raw in enumerate(vals[:count]):
        try:
            value = convert(raw)
        except ValueError:
            raise ImpactParameterError(
                f"{key} (level {level}): entry {i} '{raw}' is not valid; expected {expected}, "
                f"got {len(vals)}: {_show(vals)}") from None
        if check is not None:
            problem = check(value)
            if problem:
                raise ImpactParameterError(
                    f"{key} (level {level}): entry {i} '{raw}' {problem}; expected {expected}, "
                    f"got {_show(vals)}")
        out.append(value)
    return tuple(out)


def _to_uint(text: str) -> int:
    t = text.strip()
    if not t or not (t.isdigit() or (t[0] == "+" and t[1:].isdigit())):
        raise ValueError(text)
    return int(t)


def _to_float(text: str) -> float:
    value = float(text.strip())
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


# --------------------------------------------------------------------------------------------
# model sets


def _read_model_set(parameter_map, prefix, level, mode, image_dimension):
    """Read the six per-model lists of one model set (docs/design.md §I2.3)."""
    from elastix_bridge.models.mind import RESERVED_MODELS  # no torch import

    paths_key = f"{prefix}ModelsPath{level}"
    paths = _values(parameter_map, paths_key)
    if not paths or all(not p.strip() for p in paths):
        raise ImpactParameterError(
            f"{paths_key} (level {level}): expected at least one model path, got "
            f"{_show(paths or [])}")
    paths = tuple(p.strip() for p in paths)
    m = len(paths)
    why_models = f"one per model, {_plural(m, 'model')} in {paths_key}"

    dim_key = f"{prefix}Dimension{level}"
    dims = _read_list(
        parameter_map, dim_key, level, m, "unsigned integers", why_models, _to_uint,
        check=lambda d: None if 2 <= d <= image_dimension else (
            f"is not a valid model dimension: it must be 2 or 3 and may not exceed the image "
            f"dimension {image_dimension}"))
    channels = _read_list(
        parameter_map, f"{prefix}NumberOfChannels{level}", level, m, "unsigned integers",
        why_models, _to_uint, check=lambda c: None if c >= 1 else "must be >= 1")

    patch_key = f"{prefix}PatchSize{level}"
    total = sum(dims)
    why_axes = f"one per model axis, Σ {dim_key} = {total}"

    def patch_check(p: int) -> Optional[str]:
        if p == 0 and mode == "Jacobian":
            return ("is 0 (= whole image extent), which is only allowed in Static mode; "
                    "Jacobian mode needs a real patch size such as 5 5 5")
        return None

    patches = _read_list(parameter_map, patch_key, level, total, "unsigned integers", why_axes,
                         _to_uint, check=patch_check)

    voxel_key = f"{prefix}VoxelSize{level}"
    if mode == "Static":
        n_vox = m * image_dimension
        why_vox = (f"Static mode: image dimension {image_dimension} per model × "
                   f"{_plural(m, 'model')} = {n_vox}")
        vox_dims = [image_dimension] * m
    else:
        n_vox = total
        why_vox = f"Jacobian mode: one per model axis, Σ {dim_key} = {total}"
        vox_dims = list(dims)
    voxels = _read_list(parameter_map, voxel_key, level, n_vox, "positive numbers (mm)", why_vox,
                        _to_float, check=lambda v: None if v > 0 else "must be > 0 mm")

    mask_key = f"{prefix}LayersMask{level}"
    masks = _read_list(parameter_map, mask_key, level, m, "layer-mask strings", why_models, str)

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
    seed_vals = _values(pm, "RandomSeed")
    random_seed = 0
    if seed_vals:
        try:
            random_seed = _to_uint(seed_vals[0])
        except ValueError:
            raise ImpactParameterError(
                f"RandomSeed (level {level}): expected an unsigned integer, got "
                f"'{seed_vals[0]}'") from None
    gpu = _scalar_int(pm, "ImpactGPU", level, metric_index, -1)
    mixed = _scalar_bool(pm, "ImpactUseMixedPrecision", level, metric_index, False)
    got = _scalar_str(pm, "ImpactMode", level, metric_index, None)
    mode = "Jacobian"
    if got is not None:
        mode, key, entry = got
        if mode not in MODES:
            raise ImpactParameterError(
                f"{key} (level {level}, entry {entry}): invalid mode '{mode}'; supported modes "
                f"are 'Jacobian' and 'Static' (case-sensitive)")

    if level == 0:
        _warn_old_scalars(pm)

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
            hint = _format_hints(_missing_hints(pm, own, level)
                                 + _missing_hints(pm, f"ImpactModelsPath{level}", level))
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
    interval = _scalar_int(pm, "ImpactFeaturesMapUpdateInterval", level, metric_index, -1)

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
            f"layers mask), got " + _show(["".join("1" if b else "0" for b in mm.layers_mask)
                                             for mm in fixed]))
    lam = n_fixed
    why_layers = f"one per selected layer, Λ = {lam} from {fixed_mask_key}"

    # 7. per-layer lists
    subset = _read_list(pm, f"ImpactSubsetFeatures{level}", level, lam, "unsigned integers",
                        why_layers, _to_uint,
                        check=lambda k: None if k >= 1 else "must be >= 1 (channels compared per layer)")
    pca = _read_list(pm, f"ImpactPCA{level}", level, lam, "unsigned integers", why_layers,
                     _to_uint)
    weights = _read_list(pm, f"ImpactLayersWeight{level}", level, lam, "numbers", why_layers,
                         _to_float)

    # 8. feature-map directory (Static mode only)
    directory = None
    new = _scalar_str(pm, "ImpactFeatureMapOutputDirectory", level, metric_index, None)
    old = _scalar_str(pm, "ImpactWriteFeatureMaps", level, metric_index, None)
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

    distances = _read_list(pm, f"ImpactDistance{level}", level, lam, "distance names",
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
