"""Why an IMPACT option was not found: near misses of a missing key and ImpactLoss's old syntaxes.

Part of the IMPACT parameter reader (:mod:`elastix_bridge.core.impact_parameters`, docs/design.md
§I2.7, §I13): when a required option is missing, the error message explains what the map holds
instead, and how to write it:

* the class documentation's names (``FixedModelsPath<L>``, Q2), which elastix does not read;
* a wrong case, a ``Metric<i>`` component-label prefix on a level-indexed list;
* ImpactLoss's ``ParameterMap_Recommended.txt`` style: list options without a level number
  (``ImpactPatchSize``), with the per-level keys to write (a list covering several levels is split);
* ImpactLoss's old unprefixed syntax (``ModelsPath``, ``"11*11*11"``, ``Mode``), with the rewrite
  of the missing key for that level.

Old per-level scalar names (``Mode``, ``GPU``, ...) are not errors: elastix ignores them and uses
the default, so :func:`warn_old_scalars` logs them.

This is the lowest of the three reader modules (``impact_parameters`` → ``impact_option_readers`` →
``impact_hints``): the option-name tables the checks enumerate and :func:`option_values`, the one
access to a key's raw entries, live here, so that the readers can add these hints to their messages.
"""
from __future__ import annotations

import logging
from typing import Mapping, Optional, Sequence

__all__ = [
    "PER_LAYER_LISTS",
    "PER_MODEL_LISTS",
    "format_hints",
    "hint_missing",
    "missing_hints",
    "option_values",
    "warn_old_scalars",
]

#: The IMPACT reader's logger, as before these helpers left core/impact_parameters.py: its warnings are
#: part of reading a map, and callers and tests select them by this name.
logger = logging.getLogger("elastix_bridge.core.impact_parameters")

#: Level-indexed list options (docs/design.md §I2.3, §I2.4), without the ``Impact`` prefix and level.
PER_MODEL_LISTS = ("ModelsPath", "Dimension", "NumberOfChannels", "PatchSize", "VoxelSize", "LayersMask")
PER_LAYER_LISTS = ("SubsetFeatures", "PCA", "LayersWeight", "Distance")
#: Lists whose entries are strings (quoted when a rewrite is suggested).
_STRING_LISTS = ("ModelsPath", "LayersMask", "Distance")
#: ImpactLoss's old per-level scalar names (ParameterMaps/README.md) and what elastix reads instead.
_OLD_SCALARS = {"Mode": "ImpactMode", "GPU": "ImpactGPU", "Device": "ImpactGPU",
                "UseMixedPrecision": "ImpactUseMixedPrecision",
                "FeaturesMapUpdateInterval": "ImpactFeaturesMapUpdateInterval",
                "WriteFeatureMaps": "ImpactWriteFeatureMaps"}


def option_values(parameter_map: Mapping, key: str) -> Optional[list]:
    """The entries of ``key`` as a list of strings, or None when absent.

    ``parameter_map``: a :class:`~elastix_bridge.core.parameters.ParameterMap` or a ``{name: [str, ...]}``
    mapping; a plain string (or bytes) value is one entry, other entries are converted with ``str``.
    """
    if key not in parameter_map:
        return None
    v = parameter_map[key]
    if isinstance(v, (str, bytes)):
        return [v.decode() if isinstance(v, bytes) else v]
    return [str(x) for x in v]


def _old_syntax_names(parameter_map: Mapping) -> list:
    """Names of ImpactLoss's old syntax present in the map (unprefixed, unnumbered: 'ModelsPath',
    'FixedPatchSize', 'Mode', ...); empty unless a ``[Fixed|Moving]ModelsPath`` marks the old syntax."""
    if not any(n in parameter_map for n in ("ModelsPath", "FixedModelsPath", "MovingModelsPath")):
        return []
    names = [side + n for n in PER_MODEL_LISTS for side in ("", "Fixed", "Moving")]
    names += list(PER_LAYER_LISTS) + list(_OLD_SCALARS)
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
    values = option_values(parameter_map, name) or [""]
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


def missing_hints(parameter_map: Mapping, key: str, level: int, count=None) -> list:
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
        others = [p + n for n in PER_MODEL_LISTS + PER_LAYER_LISTS
                  for p in ("Impact", "ImpactFixed", "ImpactMoving")
                  if p + n in parameter_map and p + n != base
                  and (p == "Impact" or n in PER_MODEL_LISTS)]
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


def format_hints(hints: Sequence[str]) -> str:
    """The hints as a message suffix ``" (a; b)"``, duplicates dropped in order; ``""`` when none."""
    unique = list(dict.fromkeys(hints))
    return (" (" + "; ".join(unique) + ")") if unique else ""


def hint_missing(parameter_map: Mapping, key: str, level: int, count=None) -> str:
    """Explain near misses of a missing key (see :func:`missing_hints`), as ``" (...)"`` or ``""``."""
    return format_hints(missing_hints(parameter_map, key, level, count))


def warn_old_scalars(parameter_map: Mapping) -> None:
    """Log ImpactLoss's old per-level scalar names that elastix ignores (the default is used)."""
    for old, new in _OLD_SCALARS.items():
        if old in parameter_map and new not in parameter_map:
            logger.warning("(%s ...) is ImpactLoss's old name and is not read by elastix or by us; "
                           "write (%s ...). The default is used.", old, new)
