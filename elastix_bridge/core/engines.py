"""The engines a registration can run its parameter maps on, as ``engine=`` and ``--engine`` name them.

``auto`` runs maps with ``(Metric "Impact")`` on the bridge engine and the others on itk-elastix;
``elastix`` and ``bridge`` run every map on that engine (docs/design.md §1.3,
:func:`stage_engines`). The choice reads only a map's ``Metric`` key, so it lives on this floor: the
API, the memory plan, the request's validation and the command all take it from here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from elastix_bridge.core.parameters import ParameterMap

__all__ = ["ENGINES", "stage_engines", "uses_impact"]

#: The engine choices, the default first.
ENGINES = ("auto", "elastix", "bridge")


def uses_impact(parameter_map: ParameterMap) -> bool:
    """Whether a :class:`~elastix_bridge.core.parameters.ParameterMap` asks for the Impact metric."""
    return "Impact" in parameter_map.values("Metric")


def stage_engines(maps: Sequence[ParameterMap], engine: str = "auto", native_plugin: bool = False) -> list:
    """The engine that runs each parameter map: ``"bridge"`` or ``"elastix"``.

    ``auto`` sends maps with ``(Metric "Impact")`` to the bridge engine (to elastix when a native
    IMPACT plugin is preloaded, ``native_plugin``) and all others to elastix; ``elastix`` /
    ``bridge`` send every map to that engine.

    Raises:
        ValueError: an unknown ``engine``.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    if engine != "auto":
        return [engine] * len(maps)
    return ["bridge" if uses_impact(m) and not native_plugin else "elastix" for m in maps]
