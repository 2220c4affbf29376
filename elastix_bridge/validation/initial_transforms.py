"""The call's initial transform (elastix ``-t0`` or an in-memory object): read, of the images' dimension,
and, for a chain with bridge stages, built as the bridge builds it (docs/design.md §E1.7)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

from elastix_bridge.engine.components import UnsupportedComponentError, components, find
from elastix_bridge.runtime.loader import require_torch
from elastix_bridge.core.files import check_input_file
from elastix_bridge.core.parameters import parameter_maps_from_object
from elastix_bridge.core.transform_io import chain_from_file
from elastix_bridge.validation.images import InputImageError

if TYPE_CHECKING:  # pragma: no cover
    from elastix_bridge.core.parameters import ParameterMap


def initial_transform_maps(keywords: dict) -> list:
    """The TransformParameters maps of the call's initial transform, earliest first (``[]`` without one).

    Reads ``initial_transform_parameter_file_name`` (elastix ``-t0``; its ``InitialTransformParameterFileName``
    chain is followed, :func:`~elastix_bridge.core.transform_io.chain_from_file`) or
    ``initial_transform_parameter_object``.

    Raises:
        ValueError: both are given, or a file of the chain is not a TransformParameters file or loops.
        FileNotFoundError: the file or a file of its chain is missing (naming the referencing file).
    """
    t0 = keywords.get("initial_transform_parameter_file_name")
    given = keywords.get("initial_transform_parameter_object")
    if t0 and given is not None:
        raise ValueError("give either initial_transform_parameter_file_name or initial_transform_parameter_object, "
                         "not both (elastix would use only one)")
    if not t0:
        return [] if given is None else parameter_maps_from_object(given, "initial_transform_parameter_object")
    check_input_file(t0, "initial transform file")
    maps = chain_from_file(t0)
    for i, pm in enumerate(maps):
        if not pm.has("Transform") or not pm.has("TransformParameters"):
            raise ValueError(f"initial transform {t0}: file {i + 1} of its chain of {len(maps)} has no (Transform ...) "
                             "and (TransformParameters ...) lines, so it is not a TransformParameters file; give a "
                             "TransformParameters.<k>.txt that elastix or elastix-bridge wrote (a parameter file for a "
                             "new registration goes to -p / parameter_object)")
    return maps


def check_initial_transforms(maps: Sequence[ParameterMap], engines: Optional[Sequence[str]], dimension: int,
                             keywords: dict) -> None:
    """The initial transform, and every transform a bridge stage starts from, can be read before any stage runs.

    Each map of the initial chain is of the images' ``dimension`` (``FixedImageDimension`` /
    ``MovingImageDimension``); when a stage runs on the bridge engine, each is also built as the bridge
    builds it (:func:`~elastix_bridge.engine.transforms.initial.transform_from_parameter_map`: its kind and
    its ``TransformParameters`` count), and every earlier elastix stage's ``Transform`` is one the bridge
    reads back (docs/design.md §E1.7; elastix ``Core/Main/elxTransformBase.hxx``,
    ``ReadInitialTransformFromFile``).

    Raises:
        ValueError / FileNotFoundError: see :func:`initial_transform_maps`; ``InputImageError`` for a
            dimension other than the images'; ``UnsupportedComponentError`` / ``ValueError`` for a transform
            the bridge cannot build, naming the file or stage, what was found and the fix.
    """
    initial = initial_transform_maps(keywords)
    source = (f"initial transform {keywords['initial_transform_parameter_file_name']}"
              if keywords.get("initial_transform_parameter_file_name") else "initial_transform_parameter_object")
    for i, pm in enumerate(initial):
        where = f"{source} (map {i + 1} of {len(initial)} in its chain)" if len(initial) > 1 else source
        for key in ("FixedImageDimension", "MovingImageDimension"):
            if pm.has(key) and pm.get_entry(key, 0) != str(dimension):
                raise InputImageError(f"{where}: ({key} {pm.get_entry(key, 0)}) but the images are {dimension}D; "
                                      f"give an initial transform written for {dimension}D images (or none)")
    if engines is None or "bridge" not in engines:
        return
    require_torch()  # a bridge stage needs torch: its own message when torch cannot be imported
    from elastix_bridge.engine.transforms.initial import transform_from_parameter_map  # deferred: imports torch

    for i, pm in enumerate(initial):
        where = f"{source} (map {i + 1} of {len(initial)} in its chain)" if len(initial) > 1 else source
        try:
            transform, _ = transform_from_parameter_map(pm)
        except (ValueError, KeyError, IndexError, TypeError) as error:
            if isinstance(error, UnsupportedComponentError):  # its message names the supported kinds and the fix
                raise UnsupportedComponentError(f"{where}: the bridge engine cannot read it: {error}") from None
            raise ValueError(f"{where}: the bridge engine cannot read it: {error}; give a TransformParameters file "
                             f"that elastix wrote for these images, or run every map on elastix (engine='elastix')"
                             ) from None
        if getattr(transform, "dimension", dimension) != dimension:
            raise InputImageError(f"{where}: a {transform.dimension}D {pm.get('Transform')} but the images are "
                                  f"{dimension}D; give an initial transform written for {dimension}D images")
    for k, (pmap, engine) in enumerate(zip(maps, engines)):
        if engine == "bridge":
            continue
        later = [j for j in range(k + 1, len(maps)) if engines[j] == "bridge"]
        name = pmap.get("Transform")
        if later and not _bridge_reads(name):
            raise UnsupportedComponentError(
                f"parameter map {k}: its (Transform \"{name}\") runs on elastix, but stage {later[0]} runs on the "
                f"bridge engine, which cannot start from its result; use one of the transforms the bridge reads back "
                f"({', '.join(_readable_transforms())}) in map {k}, or run every map on elastix (engine='elastix')")


def _bridge_reads(transform_name: str) -> bool:
    """Whether the bridge engine reads a TransformParameters map of ``(Transform transform_name)`` back."""
    found = find("Transform", transform_name)
    return found is not None and found.has_trait("read")


def _readable_transforms() -> list:
    return [c.name for c in components("Transform") if c.has_trait("read")]
