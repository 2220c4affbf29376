"""The bridge engine's components: each registered once under its elastix name, with its family.

As in elastix (``Core/Install/elxComponentDatabase.cxx``, ``elxInstallComponent``), a component is
found by its family (the parameter-map key: ``Metric``, ``Transform``, ``ImageSampler`` …) and its
name (the value, e.g. ``"RandomCoordinate"``). Each family module registers its classes next to
their definition with :func:`register`; :func:`component` finds one, and an unknown name raises
:class:`UnsupportedComponentError` listing the family's supported names. ``check_components``
(:mod:`elastix_bridge.engine.registration`), the validation pass and ``docs/engine.md``'s component
table (:func:`component_table`) are all read from here, so a new component needs one class and one
registration line (see docs/engine.md, "Adding a component").

Importing this module does not import torch: the family modules import it lazily.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional

#: The families, in the order of the docs table, and what a registered ``factory`` is called with.
FAMILIES: Mapping[str, str] = MappingProxyType({
    "Registration": "nothing to build: selects single- or multi-metric registration (trait ``multi_metric``)",
    "Metric": "the metric class; classic metrics take ``(fixed, moving, moving_mask, transform, **options)``",
    "Transform": "the transform class; trait ``kind`` (``linear``, ``translation``, ``bspline``) says how the "
                 "stage sets it up, ``read(TransformParameters map) -> (transform, parameters)`` reads it back",
    "Optimizer": "``factory(pmap, level, asgd_settings, generator, on_iteration)`` -> optimizer; traits "
                 "``settings(pmap, level, dimension)`` (reads and checks the level's settings), "
                 "``automatic_parameter_estimation``, ``iteration_columns`` (``asgd``, ``lbfgs``, ``gradient_descent``)",
    "ImageSampler": "a sampler class whose ``name`` is its elastix name; ``cls.from_parameter_map(geometry, "
                    "mask, parameter_map=, level=, number_of_samples=, generator=, region=, device=, dtype=)``; "
                    "trait ``random`` (new samples each iteration when ``NewSamplesEveryIteration``)",
    "Interpolator": "``factory(pmap, level)`` -> B-spline order of the moving image interpolation",
    "FixedImagePyramid": "nothing to build: the kind given to :mod:`elastix_bridge.engine.images.pyramids`",
    "MovingImagePyramid": "nothing to build: the kind given to :mod:`elastix_bridge.engine.images.pyramids`",
})

#: elastix's default of the families a map may leave out (docs/design.md §E1.8).
DEFAULTS: Mapping[str, str] = MappingProxyType({
    "Registration": "MultiResolutionRegistration",
    "Interpolator": "BSplineInterpolator",
    "FixedImagePyramid": "FixedSmoothingImagePyramid",
    "MovingImagePyramid": "MovingSmoothingImagePyramid",
})

# Modules holding the registrations, imported on first look-up (torch-free at import).
_MODULES = ("registration", "metrics.impact", "metrics.classic", "transforms.linear", "transforms.initial",
            "optimizers.asgd", "optimizers.gradient_descent", "optimizers.quasi_newton", "samplers",
            "images.interpolators", "images.pyramids")

_NOTHING_TO_BUILD = ("Registration", "FixedImagePyramid", "MovingImagePyramid")
_REGISTRY: dict[str, dict[str, "Component"]] = {family: {} for family in FAMILIES}
_loaded = False


class UnsupportedComponentError(ValueError):
    """A parameter map names a component the bridge engine does not run."""


@dataclass(frozen=True)
class Component:
    """One registered component.

    Attributes:
        family: the parameter-map key (``"ImageSampler"``).
        name: the elastix name (``"RandomCoordinate"``).
        factory: what builds it (see :data:`FAMILIES` for each family's call), or None.
        traits: facts the engine consults instead of comparing names (e.g. ``random``).
        notes: the options it reads, for the docs table.
        source: the elastix source it follows.
    """

    family: str
    name: str
    factory: Optional[Callable] = None
    traits: Mapping[str, Any] = field(default_factory=dict)
    notes: str = ""
    source: str = ""

    def trait(self, key: str, default: Any = None) -> Any:
        return self.traits.get(key, default)


def register(family: str, name: str, factory: Optional[Callable] = None, *, notes: str = "", source: str = "",
             **traits: Any) -> Callable[[Any], Any]:
    """Register a component; used as ``register(...)(cls)`` / a class decorator, or with ``factory``.

    Args:
        family: one of :data:`FAMILIES`.
        name: the elastix name; registered once.
        factory: what builds it; when omitted, the decorated object.
        notes, source: the options it reads and its elastix source, for docs/engine.md.
        **traits: facts the engine consults (e.g. ``random=True`` for a sampler).

    Returns:
        A decorator returning the decorated object unchanged. With ``factory`` given, or for the
        families with nothing to build, the component is registered at once (the decorator is then a no-op).

    Raises:
        ValueError: an unknown family, or a name already registered in the family.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown component family {family!r}; families: {', '.join(FAMILIES)}")
    if name in _REGISTRY[family]:
        raise ValueError(f"({family} \"{name}\") is already registered; unregister it first or choose another name")

    def add(obj: Any) -> Any:
        _REGISTRY[family][name] = Component(family, name, factory if factory is not None else obj,
                                            MappingProxyType(dict(traits)), notes, source)
        return obj

    if factory is not None or family in _NOTHING_TO_BUILD:
        add(None)
        return lambda obj: obj
    return add


def unregister(family: str, name: str) -> None:
    """Remove a registered component (tests register toy components and remove them afterwards)."""
    _REGISTRY[family].pop(name, None)


def _registry() -> dict[str, dict[str, Component]]:
    global _loaded
    if not _loaded:
        for module in _MODULES:
            importlib.import_module(f"{__package__}.{module}")
        _loaded = True
    return _REGISTRY


def names(family: str) -> tuple[str, ...]:
    """The supported names of a family, sorted (registration order depends on which module is imported first)."""
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
