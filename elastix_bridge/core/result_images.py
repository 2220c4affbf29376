"""Result images (``result.<k>.<fmt>``) written once, in the pixel type the parameter map asks.

The elastix command resamples the moving image in float and writes it as ``ResultImagePixelType``
(default ``short``) by a C cast (elastix ``ResamplerBase::WriteResultImage``, through
``itk::CastImageFilter``): here clipped to the type's range, then truncated toward zero
(docs/design.md §E8.2). itk-elastix instead writes the float image. Casting before writing, in
memory, lets every format elastix accepts take the type it needs (png, bmp, jpg: ``unsigned char``),
and a file is never written twice.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from elastix_bridge.core.elastix_names import RESULT_PIXEL_TYPES
from elastix_bridge.core.image_io import write_image

if TYPE_CHECKING:  # pragma: no cover
    import itk

    from elastix_bridge.core.parameters import ParameterMap


def _itk():
    """The ``itk`` module, imported on first use."""
    import itk  # deferred: itk takes seconds to import; importing core never imports itk

    return itk


def result_dtype(pixel_type: str, where: str) -> np.dtype:
    """The numpy dtype of an elastix ``ResultImagePixelType`` (``"unsigned char"`` -> uint8).

    Raises:
        ValueError: not an elastix pixel type; names ``where`` (e.g. ``parameter map 1``) and the types.
    """
    if pixel_type not in RESULT_PIXEL_TYPES:
        raise ValueError(f"(ResultImagePixelType \"{pixel_type}\") in {where} is not an elastix pixel type; "
                         f"use one of {', '.join(sorted(RESULT_PIXEL_TYPES))}")
    return np.dtype(RESULT_PIXEL_TYPES[pixel_type])


def cast_to_pixel_type(image: itk.Image, dtype: np.dtype) -> itk.Image:
    """``image`` (any scalar pixel type) as ``dtype`` by elastix's C cast: clip to the range, truncate toward zero.

    The geometry (origin, spacing, direction) is kept. Floating types are converted without clipping.

    Raises:
        itk's error when ITK's Python wrapping has no image of ``dtype`` (e.g. ``char``, ``long``).
    """
    itk = _itk()
    cast = itk.image_from_array(_c_cast(image, dtype))
    cast.CopyInformation(image)
    return cast


def _c_cast(image: itk.Image, dtype: np.dtype) -> np.ndarray:
    """The pixels of ``image`` as ``dtype`` (numpy ``[z,] y, x``): clipped to an integer type's range, truncated."""
    values = _itk().array_view_from_image(image).astype(np.float64)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = np.trunc(np.clip(values, info.min, info.max))
    return values.astype(dtype)


#: Pixel types ITK's Python wrapping has no image for, with a wrapped type of the same size and the
#: MetaImage element type that names them (``MET_CHAR`` etc., ITK ``MetaImageIO``/MetaIO ``metaTypes.h``).
UNWRAPPED_TYPES = {"int8": ("uint8", "MET_CHAR"), "int64": ("float64", "MET_LONG_LONG"),
                   "uint64": ("float64", "MET_ULONG_LONG")}
#: The formats these types are written in (as MetaImage, by :func:`_write_metaimage_as`).
METAIMAGE_FORMATS = ("mha", "mhd")


def _write_metaimage_as(values: np.ndarray, like: itk.Image, path: Path) -> None:
    """Write ``values`` (an :data:`UNWRAPPED_TYPES` dtype) as MetaImage ``path`` with ``like``'s geometry.

    ITK writes the header (geometry) of a same-sized wrapped type, uncompressed, into a temporary
    folder; the element type and the data are then replaced, and the files renamed into place.
    """
    itk = _itk()
    stand_in, element_type = UNWRAPPED_TYPES[values.dtype.name]
    header = itk.image_from_array(values.view(stand_in))
    header.CopyInformation(like)
    with tempfile.TemporaryDirectory(prefix=".tmp-", dir=path.parent) as tmp:
        written = Path(tmp) / path.name
        itk.imwrite(header, str(written), compression=False)
        text = written.read_bytes()
        head, separator, tail = text.partition(b"ElementDataFile = ")
        head = re.sub(rb"ElementType = \w+", b"ElementType = " + element_type.encode(), head)
        data = values.astype(values.dtype.newbyteorder("<")).tobytes()  # MetaIO: BinaryDataByteOrderMSB = False
        if path.suffix == ".mha":  # the data follow "ElementDataFile = LOCAL"
            written.write_bytes(head + separator + b"LOCAL\n" + data)
        else:  # the header names its .raw file
            written.write_bytes(head + separator + tail)
            (Path(tmp) / (path.stem + ".raw")).write_bytes(data)
        for f in Path(tmp).iterdir():
            os.replace(f, path.parent / f.name)


def write_result_image(image: itk.Image, out: Path, k: int, pmap: ParameterMap, default_pixel_type: str) -> Path:
    """Write stage ``k``'s result ``out/result.<k>.<ResultImageFormat>`` in the map's pixel type, atomically.

    Args:
        image: the resampled moving image (float), on the fixed image's grid.
        out: the output folder.
        k: the stage (parameter map) number.
        pmap: the stage's parameter map (``ResultImageFormat``, default ``mha``; ``ResultImagePixelType``).
        default_pixel_type: the type when the map names none: ``"short"`` as the elastix command,
            ``"float"`` as itk-elastix.

    Returns:
        The path written (a temporary name renamed into place: never a half-written file).

    Raises:
        ValueError: an unknown ``ResultImagePixelType``, or a format / pixel type pair ITK cannot write,
            naming the map, the file and the fix.
    """
    pixel_type = pmap.get("ResultImagePixelType", default=default_pixel_type)
    path = Path(out) / f"result.{k}.{pmap.get('ResultImageFormat', default='mha')}"
    dtype = result_dtype(pixel_type, f"parameter map {k}")
    fmt = path.name.split(".", 2)[2].lower()
    try:
        if dtype.name in UNWRAPPED_TYPES and fmt in METAIMAGE_FORMATS:
            _write_metaimage_as(_c_cast(image, dtype), image, path)
        else:
            write_image(image if dtype.name == "float32" else cast_to_pixel_type(image, dtype), path)
    except (RuntimeError, TypeError, KeyError) as error:  # ITK: no writer for the format, or no such image type
        first = str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else type(error).__name__
        raise ValueError(f"cannot write result image {path.name} as (ResultImagePixelType \"{pixel_type}\") in "
                         f"parameter map {k}: {first}; choose a pixel type this format holds (png, bmp, jpg: "
                         "\"unsigned char\"; char and (unsigned) long: mha or mhd) or set (WriteResultImage \"false\")"
                         ) from None
    return path
