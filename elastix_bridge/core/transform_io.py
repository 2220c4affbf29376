"""TransformParameters maps and files in elastix's exact format (both ways).

:func:`transform_parameter_map` builds the complete map elastix writes after a registration (transform block,
common keys, ResampleInterpolator block, Resampler block); :func:`write_transform_parameter_file` writes it in
elastix's text layout (sorted keys, numbers unquoted, other values quoted; atomically);
:func:`read_transform_parameter_file` reads one back with itk-elastix's parser, :func:`chain_from_file` a file
and the initial transforms it names; :func:`to_parameter_object` builds an ``itk.ParameterObject`` for transformix.

Sources: docs/design.md §E10, §E1.5, §E8.2 — ``Core/ComponentBaseClasses/elxTransformBase.hxx``
(``CreateTransformParameterMap``, ``WriteToFile``), ``elxResampleInterpolatorBase.hxx``,
``elxResamplerBase.hxx``, ``Core/Install/elxConversion.cxx`` (``ParameterMapToString``).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

import numpy as np

from elastix_bridge.core.files import write_atomically
from elastix_bridge.core.geometry import ImageGeometry
from elastix_bridge.core.parameters import (
    ParameterError,
    ParameterMap,
    UInt,
    as_parameter_map,
    format_number,
    format_numbers,
    is_number,
    parameter_maps_from_object,
    read_parameter_file,
)

if TYPE_CHECKING:  # pragma: no cover
    import itk
    import torch  # annotations only: never imported at run time

__all__ = [
    "RESAMPLE_INTERPOLATOR_KEYS",
    "RESAMPLER_KEYS",
    "transform_parameter_map",
    "transform_parameter_file_text",
    "write_transform_parameter_file",
    "read_transform_parameter_file",
    "chain_from_file",
    "to_parameter_object",
]

#: keys elastix writes in the ``// ResampleInterpolator specific`` block.
RESAMPLE_INTERPOLATOR_KEYS = frozenset({"ResampleInterpolator", "FinalBSplineInterpolationOrder"})
#: keys elastix writes in the ``// Resampler specific`` block.
RESAMPLER_KEYS = frozenset(
    {"Resampler", "DefaultPixelValue", "ResultImageFormat", "ResultImagePixelType", "CompressResultImage"}
)
_BSPLINE_RESAMPLE_INTERPOLATORS = (
    "FinalBSplineInterpolator",
    "FinalBSplineInterpolatorFloat",
    "FinalReducedDimensionBSplineInterpolator",
)


class MappedTransform(Protocol):
    """What :func:`transform_parameter_map` asks of a transform (the engine's transforms provide it).

    Attributes:
        dimension: space dimension D.
    """

    dimension: int

    def parameter_map(self, params: Any = None) -> dict[str, list[str]]:
        """The transform block: ``Transform``, ``NumberOfParameters``, ``TransformParameters`` and the
        transform's own keys, at ``params`` (``(P,)``)."""


def transform_parameter_map(
    transform: MappedTransform,
    params: torch.Tensor | np.ndarray,
    fixed_geometry: ImageGeometry,
    *,
    initial_transform_file: str | None = "NoInitialTransform",
    how_to_combine: str = "Compose",
    registration_map: ParameterMap | None = None,
    result_pixel_type: str = "float32",
) -> ParameterMap:
    """The complete TransformParameters map elastix writes for one registration.

    Args:
        transform: a transform that writes its own block (:class:`MappedTransform`, e.g. one of
            ``elastix_bridge.engine.transforms``).
        params: its final parameters, ``(P,)`` tensor or array (unscaled).
        fixed_geometry: full-resolution fixed image ``ImageGeometry`` (output domain of transformix).
        initial_transform_file: ``InitialTransformParameterFileName`` value; ``None``/``""`` →
            ``NoInitialTransform``.
        how_to_combine: ``HowToCombineTransforms`` (``Compose`` or ``Add``).
        registration_map: the registration's parameter map; supplies ``ResampleInterpolator``,
            ``FinalBSplineInterpolationOrder``, ``Resampler``, ``DefaultPixelValue``, ``ResultImageFormat``,
            ``CompressResultImage``, ``UseDirectionCosines`` and the internal pixel types (entry 0; defaults of
            docs/design.md §E8.2/§E1.8 when absent).
        result_pixel_type: ``ResultImagePixelType`` (itk-elastix writes the input image's type).

    Returns:
        A :class:`ParameterMap` (the union of the three blocks, as itk-elastix returns it in memory).

    Raises:
        ParameterError: a registration-map value cannot be converted.

    Source: ``elxTransformBase.hxx`` ``CreateTransformParameterMap``; docs/design.md §E10.1–§E10.2.
    """
    reg = registration_map if registration_map is not None else ParameterMap()
    dim = fixed_geometry.dimension
    if transform.dimension != dim:
        raise ValueError(f"transform dimension {transform.dimension} != fixed image dimension {dim}")
    pm = ParameterMap(transform.parameter_map(params))
    if not initial_transform_file:
        initial_transform_file = "NoInitialTransform"
    pm.set("InitialTransformParameterFileName", [str(initial_transform_file)])
    pm.set("HowToCombineTransforms", [how_to_combine])
    pm.set("FixedImageDimension", [str(dim)])
    pm.set("MovingImageDimension", [str(dim)])
    pm.set("FixedInternalImagePixelType", [reg.get("FixedInternalImagePixelType", default="float")])
    pm.set("MovingInternalImagePixelType", [reg.get("MovingInternalImagePixelType", default="float")])
    pm.set("Size", [str(int(s)) for s in fixed_geometry.size])
    pm.set("Index", ["0"] * dim)
    pm.set("Spacing", format_numbers(fixed_geometry.spacing))
    pm.set("Origin", format_numbers(fixed_geometry.origin))
    pm.set("Direction", format_numbers(np.asarray(fixed_geometry.direction).T.reshape(-1)))  # column-major
    use_dc = reg.get("UseDirectionCosines", default=True, type=bool)
    pm.set("UseDirectionCosines", ["true" if use_dc else "false"])
    # ResampleInterpolator block
    interp = reg.get("ResampleInterpolator", default="FinalBSplineInterpolator")
    pm.set("ResampleInterpolator", [interp])
    if interp in _BSPLINE_RESAMPLE_INTERPOLATORS:
        order = reg.get("FinalBSplineInterpolationOrder", default=3, type=UInt)
        pm.set("FinalBSplineInterpolationOrder", [str(order)])
    # Resampler block
    pm.set("Resampler", [reg.get("Resampler", default="DefaultResampler")])
    pm.set("DefaultPixelValue", [format_number(reg.get("DefaultPixelValue", default=0.0, type=float), float32=True)])
    pm.set("ResultImageFormat", [reg.get("ResultImageFormat", default="mhd")])
    pm.set("ResultImagePixelType", [result_pixel_type])
    compress = reg.get("CompressResultImage", default="false")
    pm.set("CompressResultImage", [compress])
    return pm


def _block_text(items) -> str:
    lines = []
    for key, values in sorted(items, key=lambda kv: kv[0].encode("utf-8")):
        parts = [key]
        for v in values:
            parts.append(v if is_number(v) else f'"{v}"')
        lines.append("(" + " ".join(parts) + ")\n")
    return "".join(lines)


def transform_parameter_file_text(parameter_map: ParameterMap | Mapping[str, Any]) -> str:
    """elastix's text serialisation of a TransformParameters map (three sorted blocks with comment headers).

    Args:
        parameter_map: :class:`ParameterMap` or ``dict[str, list[str]]``.

    Returns:
        The file content.

    Raises:
        ParameterError: a key without values (elastix's parser would reject ``(Key)``), or a value containing
            ``"``, ``//`` or a line break (unrepresentable in the text format).
    """
    pm = as_parameter_map(parameter_map)
    for key, values in pm.items():
        if not values:
            raise ParameterError(f"parameter {key!r} has no values; elastix cannot read '({key})' back")
        for v in values:
            if '"' in v or "//" in v or "\n" in v or "\r" in v:
                raise ParameterError(f"parameter {key!r}: value {v!r} cannot be written to an elastix text file")
    blocks = {"transform": [], "interp": [], "resampler": []}
    for key, values in pm.items():
        if key in RESAMPLE_INTERPOLATOR_KEYS:
            blocks["interp"].append((key, values))
        elif key in RESAMPLER_KEYS:
            blocks["resampler"].append((key, values))
        else:
            blocks["transform"].append((key, values))
    text = _block_text(blocks["transform"])
    if blocks["interp"]:
        text += "\n// ResampleInterpolator specific\n" + _block_text(blocks["interp"])
    if blocks["resampler"]:
        text += "\n// Resampler specific\n" + _block_text(blocks["resampler"])
    return text


def write_transform_parameter_file(parameter_map: ParameterMap | Mapping[str, Any], path: str | Path) -> Path:
    """Write a TransformParameters file in elastix's layout, atomically (temporary file + rename).

    Args:
        parameter_map: :class:`ParameterMap` or dict.
        path: target file name; must end with ``.txt`` (elastix also accepts ``.toml``, which is not written
            here).

    Returns:
        The path written.

    Raises:
        ValueError: the file name does not end with ``.txt``.
        ParameterError: see :func:`transform_parameter_file_text`.
        OSError: the directory is not writable.

    Source: ``elxTransformBase.hxx`` ``WriteToFile``; docs/design.md §E10.1, §E1.5.
    """
    p = Path(path)
    if p.suffix != ".txt":
        raise ValueError(f"elastix parameter files must end with '.txt': {p}")
    text = transform_parameter_file_text(parameter_map)
    return write_atomically(p, lambda f: f.write(text))


def read_transform_parameter_file(path: str | Path) -> ParameterMap:
    """Read one TransformParameters file with itk-elastix's parser.

    Raises:
        FileNotFoundError: no such file.
        ParameterError: elastix's parser rejected it.
    """
    return read_parameter_file(path)[0]


def chain_from_file(path: str | Path) -> list:
    """The TransformParameters maps of a file and of the initial transforms it names, earliest first.

    ``InitialTransformParameterFileName`` (or the deprecated ``InitialTransformParametersFileName``)
    is followed recursively until ``NoInitialTransform``. A relative name is used as it is when it is
    absolute, when the referencing file's own path has no folder part, or when it exists relative to
    the working directory; otherwise it is taken relative to the referencing file's folder
    (docs/design.md §E1.7).

    Args:
        path: a TransformParameters file (``-t0``).

    Returns:
        list of :class:`~elastix_bridge.core.parameters.ParameterMap`.

    Raises:
        FileNotFoundError: a file of the chain is missing (the message names the referencing file).
        ValueError: a file references itself or a chain loops.
    """
    maps, seen = [], set()
    current, referrer = str(path), None
    while True:
        p = Path(current)
        if not p.is_file():
            where = f" (named by {referrer})" if referrer else ""
            fix = (f"; correct its (InitialTransformParameterFileName ...) in {referrer}, or copy the file there"
                   if referrer else "; check the path")
            raise FileNotFoundError(f"initial TransformParameters file {current} does not exist{where}{fix}")
        key = str(p.resolve())
        if key in seen:
            raise ValueError(f"the initial transform chain loops at {current}")
        seen.add(key)
        pm = read_transform_parameter_file(p)
        maps.insert(0, pm)
        name = pm.get("InitialTransformParameterFileName",
                      default=pm.get("InitialTransformParametersFileName", default="NoInitialTransform"))
        if not name or name == "NoInitialTransform":
            return maps
        nxt = Path(name)
        if not (nxt.is_absolute() or ("/" not in current and "\\" not in current) or nxt.exists()):
            nxt = p.parent / nxt
        referrer, current = current, str(nxt)


def to_parameter_object(maps: ParameterMap | Mapping[str, Any] | Sequence[Any]) -> itk.ParameterObject:
    """An ``itk.ParameterObject`` holding ``maps`` (in order; for transformix the last map is the output domain).

    Args:
        maps: a :class:`ParameterMap`/dict, or a list of them (or of itk maps).

    Returns:
        ``itk.ParameterObject``.
    """
    import itk  # deferred: only a caller handing maps to itk-elastix reaches here; importing core never imports itk

    po = itk.ParameterObject.New()
    for m in parameter_maps_from_object(maps if isinstance(maps, (list, tuple)) else [maps]):
        po.AddParameterMap(m.to_dict())
    return po
