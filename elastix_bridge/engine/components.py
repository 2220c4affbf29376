"""The bridge engine's component registry: each component registered once under its elastix name.

As in elastix (``Core/Install/elxComponentDatabase.cxx``, ``elxInstallComponent``), a component is
found by its family (the parameter-map key: ``Metric``, ``Transform``, ``ImageSampler`` …) and its
name (the value, e.g. ``"RandomCoordinate"``). The bridge's own components are listed in
:mod:`elastix_bridge.engine.component_list`, apart from their code (as elastix keeps its component
list apart from the components), each with a lazy ``"module:attribute"`` target: looking a name up
imports nothing, building it imports its module (and torch) then. :func:`component` finds one, and an
unknown name raises :class:`UnsupportedComponentError` listing the family's supported names.
``check_components`` (:mod:`elastix_bridge.engine.stage_settings`), the validation pass, the memory
plan and ``docs/engine.md``'s component table (:func:`component_table`) are all read from here, so a
new component needs one class, one registration line and its tests (docs/engine.md, "Adding a
component"); a test may register a toy component with the object itself as target.

Importing this module, and every look-up that does not build a component, imports no torch.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Optional

#: The families, in the order of the docs table, and what a registered target is and is asked.
FAMILIES: Mapping[str, str] = MappingProxyType({
    "Registration": "nothing to build: selects single- or multi-metric registration (trait ``multi_metric``)",
    "Metric": "the metric class, built as ``cls.for_level(inputs)`` from "
              ":class:`~elastix_bridge.engine.stage_settings.MetricInputs`; trait ``feature_models`` (Impact)",
    "Transform": "the transform class; trait ``kind`` (``linear``, ``translation``, ``bspline``) says how the "
                 "stage sets it up, ``read(TransformParameters map) -> (transform, parameters)`` reads it back",
    "Optimizer": "the optimizer class, built as ``cls(settings, generator, on_iteration)`` and prepared per level "
                 "by ``before_level(context)``; trait ``settings``: its settings class, "
                 "``Settings.from_parameter_map(pmap, level, number_of_parameters=, fixed_spacing=, "
                 "moving_spacing=)`` (reads and checks the level's keys, no torch); ``iteration_columns`` "
                 "(``asgd``, ``lbfgs``, ``gradient_descent``)",
    "ImageSampler": "a sampler class whose ``name`` is its elastix name; ``cls.from_parameter_map(geometry, "
                    "mask, parameter_map=, level=, number_of_samples=, generator=, region=, device=, dtype=)``; "
                    "traits ``random`` (new samples each iteration when ``NewSamplesEveryIteration``) and "
                    "``samples(pmap, level, fixed_size) -> int`` (how many points a level evaluates, no torch)",
    "Interpolator": "a function ``(pmap, level) -> int``: the B-spline order of the moving image's interpolation "
                    "(no torch)",
    "FixedImagePyramid": "a pyramid class: ``schedule(levels, geometry, rescale=, smoothing=)``, "
                         "``level(image, schedule, level)`` and ``level_size(geometry, schedule, level)``",
    "MovingImagePyramid": "as ``FixedImagePyramid``",
})

#: elastix's default of the families a map may leave out (docs/design.md §E1.8).
DEFAULTS: Mapping[str, str] = MappingProxyType({
    "Registration": "MultiResolutionRegistration",
    "Interpolator": "BSplineInterpolator",
    "FixedImagePyramid": "FixedSmoothingImagePyramid",
    "MovingImagePyramid": "MovingSmoothingImagePyramid",
})

_REGISTRY: dict[str, dict[str, "Component"]] = {family: {} for family in FAMILIES}
_listed = False


class UnsupportedComponentError(ValueError):
    """A parameter map names a component the bridge engine does not run."""


def _load(target: Any) -> Any:
    """``"package.module:attribute.path"`` imported and looked up; any other object (or string) as it is."""
    if not isinstance(target, str) or ":" not in target:
        return target
    module, _, attribute = target.partition(":")
    found = importlib.import_module(module)
    for part in attribute.split("."):
        found = getattr(found, part)
    return found


@dataclass(frozen=True)
class Component:
    """One registered component.

    Attributes:
        family: the parameter-map key (``"ImageSampler"``).
        name: the elastix name (``"RandomCoordinate"``).
        target: what builds it (see :data:`FAMILIES` for each family), as the object or as a lazy
            ``"module:attribute"`` string; None for a family with nothing to build.
        traits: facts and hooks the engine, the validation and the plan consult instead of comparing
            names (e.g. ``random``); a hook may also be a lazy ``"module:attribute"`` string.
        notes: the options it reads, for the docs table.
        source: the elastix source it follows.
    """

    family: str
    name: str
    target: Any = None
    traits: Mapping[str, Any] = field(default_factory=dict)
    notes: str = ""
    source: str = ""

    @property
    def factory(self) -> Any:
        """The target, imported on first use (this imports the component's module, and torch with it)."""
        return _load(self.target)

    def trait(self, key: str, default: Any = None) -> Any:
        """A trait's value; a hook given as ``"module:attribute"`` is imported here."""
        return _load(self.traits[key]) if key in self.traits else default

    def has_trait(self, key: str) -> bool:
        """Whether the trait is given, without importing a hook."""
        return self.traits.get(key) is not None


def register(family: str, name: str, target: Any = None, *, notes: str = "", source: str = "",
             **traits: Any) -> None:
    """Register a component under ``(family "name")``.

    Args:
        family: one of :data:`FAMILIES`.
        name: the elastix name; registered once.
        target: what builds it: the object, or ``"package.module:attribute"`` imported on first use;
            None for ``Registration`` (nothing to build).
        notes, source: the options it reads and its elastix source, for docs/engine.md.
        **traits: facts and hooks the engine consults (e.g. ``random=True`` for a sampler).

    Raises:
        ValueError: an unknown family, a name already registered in the family, or no target for a
            family that builds one.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown component family {family!r}; families: {', '.join(FAMILIES)}")
    if name in _registry()[family]:
        raise ValueError(f"({family} \"{name}\") is already registered; unregister it first or choose another name")
    if target is None and family != "Registration":
        raise ValueError(f"({family} \"{name}\") needs a target: the object, or \"module:attribute\"")
    _REGISTRY[family][name] = Component(family, name, target, MappingProxyType(dict(traits)), notes, source)


def unregister(family: str, name: str) -> None:
    """Remove a registered component (tests register toy components and remove them afterwards)."""
    _registry()[family].pop(name, None)


def _registry() -> dict[str, dict[str, Component]]:
    global _listed
    if not _listed:
        _listed = True  # before the import: the list registers through register(), which asks for the registry
        importlib.import_module(f"{__package__}.component_list")
    return _REGISTRY


def names(family: str) -> tuple[str, ...]:
    """The supported names of a family, sorted."""
    return tuple(sorted(_registry()[family]))


def components(family: str) -> tuple[Component, ...]:
    """The registered components of a family, sorted by name."""
    return tuple(_registry()[family][name] for name in names(family))


def component(family: str, name: str) -> Component:
    """The component registered as ``(family "name")``.

    Raises:
        UnsupportedComponentError: the bridge engine does not run it; the message lists the supported names.
    """
    found = _registry()[family].get(name)
    if found is None:
        raise UnsupportedComponentError(
            f"({family} \"{name}\") is not supported by the bridge engine. Supported: {', '.join(names(family))}. "
            "Choose one of them, or run this map on elastix (engine='elastix', --engine elastix).")
    return found


def find(family: str, name: str) -> Optional[Component]:
    """The component registered as ``(family "name")``, or None (for maps elastix runs: any name is allowed)."""
    return _registry()[family].get(name)


def component_table() -> str:
    """The markdown table of docs/engine.md's "Components" section, one row per family."""
    rows = ["| component | supported |", "|---|---|"]
    for family in FAMILIES:
        cells = []
        for c in components(family):
            notes = ["default"] if DEFAULTS.get(family) == c.name else []
            notes += [c.notes] if c.notes else []
            text = f"`{c.name}`" + (f" ({'; '.join(notes)})" if notes else "")
            cells.append(text)
        rows.append(f"| {family} | {', '.join(cells)} |")
    return "\n".join(rows) + "\n"
