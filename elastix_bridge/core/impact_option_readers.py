"""How one IMPACT option is read from a parameter map: per-level scalars and level-indexed lists.

The two reading mechanisms of docs/design.md §I2.1, shared by every IMPACT option that
:mod:`elastix_bridge.core.impact_parameters` reads:

* **Mechanism A** (:func:`read_scalar`, :func:`scalar_int`, :func:`scalar_bool`, :func:`scalar_str`):
  a per-level scalar (``ImpactGPU``): entry 0 if present, then entry ``L``; then the same with the
  component-label prefix ``Metric<i>``, which wins (elastix's ``ReadParameter``,
  :meth:`~elastix_bridge.core.parameters.ParameterMap.reads`).
* **Mechanism B** (:func:`read_list`): a level-indexed list (``ImpactPatchSize1``), mandatory, at
  least the expected count of entries (extra entries are ignored with a logged warning, as upstream),
  each converted (:func:`to_uint`, :func:`to_float`) and checked.

Every problem is raised as :class:`ImpactParameterError`, naming the key, the level, what was found
and the expected form; a missing list key gets the hints of :mod:`elastix_bridge.core.impact_hints`.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Sequence

from elastix_bridge.core.impact_hints import hint_missing, option_values
from elastix_bridge.core.parameters import ParameterMap

__all__ = [
    "ImpactParameterError",
    "plural",
    "read_list",
    "read_scalar",
    "scalar_bool",
    "scalar_int",
    "scalar_str",
    "show_entries",
    "to_float",
    "to_uint",
]

#: The IMPACT reader's logger, as before these helpers left core/impact_parameters.py: its warnings are
#: part of reading a map, and callers and tests select them by this name.
logger = logging.getLogger("elastix_bridge.core.impact_parameters")


class ImpactParameterError(ValueError):
    """An IMPACT parameter is missing or malformed; the message names the key and the level."""


def show_entries(values: Sequence[str]) -> str:
    """The entries as the messages quote them: ``['5', '5']`` → ``"'5 5'"``."""
    return "'" + " ".join(values) + "'"


# --------------------------------------------------------------------------------------------
# mechanism A: per-level scalars


def read_scalar(parameter_map, name, level, metric_index):
    """Mechanism A lookup: returns ``(raw, key, entry)`` or None (docs/design.md §I2.1 A).

    Mechanism A is elastix's ``ReadParameter`` with the component prefix ``Metric<i>``
    (:meth:`ParameterMap.reads`); the raw text is returned so that the messages stay IMPACT's.
    """
    prefix = f"Metric{metric_index}"
    keys = {key: option_values(parameter_map, key) or [] for key in (name, prefix + name)}
    reads = ParameterMap(keys).reads(name, level, prefix)
    if not reads:
        return None
    key, entry = reads[-1]
    return keys[key][entry], key, entry


def scalar_int(parameter_map, name, level, metric_index, default, minimum=None):
    """Mechanism A integer (``default`` when absent); ImpactParameterError when not an integer or below ``minimum``."""
    got = read_scalar(parameter_map, name, level, metric_index)
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


def scalar_bool(parameter_map, name, level, metric_index, default):
    """Mechanism A boolean, exactly ``"true"`` or ``"false"`` (``default`` when absent); else ImpactParameterError."""
    got = read_scalar(parameter_map, name, level, metric_index)
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


def scalar_str(parameter_map, name, level, metric_index, default):
    """Mechanism A text: ``(raw, key, entry)`` as :func:`read_scalar`, or ``default`` when absent."""
    got = read_scalar(parameter_map, name, level, metric_index)
    return default if got is None else got


# --------------------------------------------------------------------------------------------
# mechanism B: level-indexed lists


def read_list(parameter_map, key, level, count, what, why, convert: Callable, check=None):
    """Mechanism B: exactly ``count`` leading entries of ``key``, converted (docs/design.md §I2.1 B).

    Args:
        what: plural noun of the expected entries ("unsigned integers").
        why: explanation of the count, e.g. "one per model axis, Σ ImpactDimension = 2".
        convert: ``str -> value``; raises ValueError on bad text.
        check: optional ``value -> error text or None``.
    """
    vals = option_values(parameter_map, key)
    if count == 1:  # singular form of the noun
        what = {"unsigned integers": "unsigned integer", "positive numbers (mm)":
                "positive number (mm)", "numbers": "number", "distance names": "distance name",
                "layer-mask strings": "layer-mask string"}.get(what, what)
    expected = f"{count} {what} ({why})"
    if vals is None:
        raise ImpactParameterError(
            f"Missing required parameter {key} (level {level}): expected {expected}"
            + hint_missing(parameter_map, key, level, count))
    if len(vals) < count:
        raise ImpactParameterError(
            f"{key} (level {level}): expected {expected}, got {len(vals)}: {show_entries(vals)}")
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
                f"got {len(vals)}: {show_entries(vals)}") from None
        if check is not None:
            problem = check(value)
            if problem:
                raise ImpactParameterError(
                    f"{key} (level {level}): entry {i} '{raw}' {problem}; expected {expected}, "
                    f"got {show_entries(vals)}")
        out.append(value)
    return tuple(out)


def to_uint(text: str) -> int:
    """An unsigned integer written in decimal (an optional ``+``, surrounding spaces allowed); ValueError else."""
    t = text.strip()
    if not t or not (t.isdigit() or (t[0] == "+" and t[1:].isdigit())):
        raise ValueError(text)
    return int(t)


def to_float(text: str) -> float:
    """A finite number; ValueError for any other text, ``nan`` and ``inf`` included."""
    value = float(text.strip())
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def plural(n: int, word: str) -> str:
    """``"1 model"``, ``"2 models"``."""
    return f"{n} {word}" + ("" if n == 1 else "s")
