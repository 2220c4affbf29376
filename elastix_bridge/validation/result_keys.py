"""The result-writing keys (``ResultImagePixelType``, ``WriteResultImage``, ``ResultImageFormat``) and the
internal pixel types, checked before any result is written (docs/design.md §E8.2): elastix finds a bad
one in ITK's writer, after the registration."""
from __future__ import annotations

from typing import Optional

from elastix_bridge.core.elastix_names import (INTERNAL_PIXEL_TYPES, RESULT_FORMAT_2D_ONLY, RESULT_FORMAT_PIXEL_TYPES,
                                               RESULT_FORMATS_LOWER_CASE_ONLY, RESULT_PIXEL_TYPES)
from elastix_bridge.core.parameters import ParameterError
from elastix_bridge.core.result_images import METAIMAGE_FORMATS, UNWRAPPED_TYPES
from elastix_bridge.validation.names import _did_you_mean


def _check_result_keys(pmap, dimension: Optional[int] = None) -> None:
    """``ResultImagePixelType``, ``WriteResultImage`` and ``ResultImageFormat`` before any result is written:
    the pixel type is one of elastix's, the format one ITK writes, and ITK's writer for the format writes
    that pixel type (and, where known, the images' ``dimension``)."""
    pixel = pmap.get("ResultImagePixelType", default="short")
    if pixel not in RESULT_PIXEL_TYPES:
        raise ParameterError(f"(ResultImagePixelType \"{pixel}\") is not an elastix pixel type."
                             f"{_did_you_mean(pixel, RESULT_PIXEL_TYPES)} "
                             f"Use one of {', '.join(sorted(RESULT_PIXEL_TYPES))}.")
    if pmap.has("ResultImageFormat") and pmap.get("WriteResultImage", default=True, type=bool):
        fmt = pmap.get("ResultImageFormat")
        _check_format_spelling(fmt)
        import itk  # deferred: itk's import takes seconds; only a map naming a format needs it

        io = itk.ImageIOFactory.CreateImageIO(f"result.{fmt}", itk.CommonEnums.IOFileMode_WriteMode)
        if io is None or not fmt:
            raise ParameterError(
                f"(ResultImageFormat \"{fmt}\"): ITK cannot write 'result.{fmt}'; use a file extension "
                f"ITK writes, e.g. \"mhd\", \"mha\", \"nii\", \"nii.gz\" or \"nrrd\" (or (WriteResultImage \"false\"))")
        _check_format_writes(fmt, pixel, dimension)


def _check_internal_pixel_types(pmap, dimension: int) -> None:
    """``Fixed/MovingInternalImagePixelType``: one type for both that itk-elastix's build runs in ``dimension``
    (:data:`~elastix_bridge.core.elastix_names.INTERNAL_PIXEL_TYPES`); elastix refuses others only after the
    images are read, and a chain after its earlier stages have run."""
    accepted = INTERNAL_PIXEL_TYPES.get(dimension, ("float",))
    types = {key: pmap.get(key, default="float") for key in ("FixedInternalImagePixelType",
                                                              "MovingInternalImagePixelType")}
    for key, value in types.items():
        if value not in accepted:
            raise ParameterError(
                f"({key} \"{value}\"): itk-elastix's elastix is built for {dimension}D internal pixel type(s) "
                f"{', '.join(accepted)} only (its ELASTIX_IMAGE_{dimension}D_PIXELTYPES); use "
                f"({key} \"float\") or leave the key out (elastix's default, float)")
    if len(set(types.values())) > 1:
        raise ParameterError(
            f"(FixedInternalImagePixelType \"{types['FixedInternalImagePixelType']}\") and "
            f"(MovingInternalImagePixelType \"{types['MovingInternalImagePixelType']}\") differ: itk-elastix's "
            f"elastix runs only equal fixed and moving internal pixel types; give both the same type")


def _check_format_spelling(fmt: str) -> None:
    """A ``ResultImageFormat`` that elastix (and ITK) would write under another name than ``result.<k>.<fmt>``.

    elastix appends the value after a dot (``ResamplerBase::WriteResultImage``: "result.0." + format), so
    ".mha" gives ``result.0..mha``; an upper-case MetaImage or NIfTI extension is written as ``.mhd`` + ``.raw``
    or refused by ITK's writer (:data:`~elastix_bridge.core.elastix_names.RESULT_FORMATS_LOWER_CASE_ONLY`).

    Raises:
        ParameterError: a leading dot, or such an upper-case extension.
    """
    if fmt.startswith("."):
        raise ParameterError(f"(ResultImageFormat \"{fmt}\"): the value is the extension without its dot (elastix "
                             f"would write 'result.0.{fmt}'); write (ResultImageFormat \"{fmt.lstrip('.')}\")")
    if fmt != fmt.lower() and fmt.lower() in RESULT_FORMATS_LOWER_CASE_ONLY:
        what = ("as result.0.mhd + result.0.raw, not result.0." + fmt) if fmt.lower() in ("mha", "mhd") else \
            "not at all: its NIfTI writer refuses the name after the registration"
        raise ParameterError(f"(ResultImageFormat \"{fmt}\"): ITK writes this extension in lower case only ({what}); "
                             f"write (ResultImageFormat \"{fmt.lower()}\")")


#: elastix's usual name of each pixel type, to name the fix.
_CANONICAL_PIXEL_NAMES = ("unsigned char", "unsigned short", "char", "short", "int", "unsigned int", "float", "double")


def _check_format_writes(fmt: str, pixel: str, dimension: Optional[int]) -> None:
    """ITK's writer for ``result.<fmt>`` writes ``pixel`` (an elastix name) images of ``dimension``
    (:data:`~elastix_bridge.core.elastix_names.RESULT_FORMAT_PIXEL_TYPES`); elastix finds out in the writer,
    after the registration."""
    fmt = fmt.lower()
    if dimension is not None and dimension != 2 and fmt in RESULT_FORMAT_2D_ONLY:
        raise ParameterError(f"(ResultImageFormat \"{fmt}\"): ITK writes {fmt} images in 2D only and the images are "
                             f"{dimension}D; use (ResultImageFormat \"mha\") or \"nii.gz\", "
                             f"or (WriteResultImage \"false\")")
    allowed = RESULT_FORMAT_PIXEL_TYPES.get(fmt)
    if allowed is None or RESULT_PIXEL_TYPES[pixel] in allowed:
        _check_wrapped_pixel_type(fmt, pixel)
        return

    names = [f'"{name}"' for name in _CANONICAL_PIXEL_NAMES
             if RESULT_PIXEL_TYPES[name] in allowed and RESULT_PIXEL_TYPES[name] not in UNWRAPPED_TYPES]
    holders = '"mha", "mhd"' if RESULT_PIXEL_TYPES[pixel] in UNWRAPPED_TYPES else '"mha", "nii.gz", "nrrd"'
    raise ParameterError(
        f"(ResultImageFormat \"{fmt}\") with (ResultImagePixelType \"{pixel}\"): ITK's {fmt} writer cannot write "
        f"{RESULT_PIXEL_TYPES[pixel]} pixels, so the result image would fail after the registration; use "
        f"(ResultImagePixelType {names[0]})" + (f" (or {', '.join(names[1:])})" if names[1:] else "")
        + f" for {fmt}, or a format that writes {pixel} ({holders})")


def _check_wrapped_pixel_type(fmt: str, pixel: str) -> None:
    """char and (unsigned) long results are written as MetaImage only (core/result_images.py): ITK's
    Python wrapping, which writes them, has no image of those types."""
    if RESULT_PIXEL_TYPES[pixel] in UNWRAPPED_TYPES and fmt not in METAIMAGE_FORMATS:
        raise ParameterError(
            f"(ResultImageFormat \"{fmt}\") with (ResultImagePixelType \"{pixel}\"): ITK's Python wrapping, which "
            f"writes the result here, has no {RESULT_PIXEL_TYPES[pixel]} image, so only MetaImage can hold it; use "
            f"(ResultImageFormat \"mha\") or \"mhd\", or another pixel type (\"short\", \"int\")")
