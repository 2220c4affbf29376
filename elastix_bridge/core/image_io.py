"""Reading and writing images the way the bridge's entry points need them (ITK I/O).

Images are read as float pixels (elastix's internal type); masks of any pixel type (MET_CHAR
included, which itk's Python wrapping cannot read as such) become unsigned char 0/1. Truncated pixel
data (MetaImage, NIfTI) are named as truncated, with the byte counts, before ITK reads them. Writing
never leaves a half-written file behind.
"""
from __future__ import annotations

import gzip
import math
import os
import re
import struct
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from elastix_bridge.core.files import check_input_file
from elastix_bridge.core.geometry import ImageGeometry

if TYPE_CHECKING:  # pragma: no cover
    import itk


def _itk():
    """The ``itk`` module, imported on first use."""
    import itk  # deferred: itk takes seconds to import; importing core never imports itk

    return itk


def read_image(path: str | Path, what: str = "image") -> itk.Image:
    """Read an image as float pixels (elastix's internal type).

    Args:
        path: image file.
        what: how error messages name it, e.g. ``"fixed image (-f)"``.

    Raises:
        FileNotFoundError: ``path`` is empty or does not exist, or it is a MetaImage header whose data file
            (``ElementDataFile``, e.g. the ``.raw`` beside a ``.mhd``) does not (the message names
            ``what`` and the missing file).
        IsADirectoryError: ``path`` is a folder (:func:`elastix_bridge.core.files.check_input_file`).
        ValueError: ``path`` is not a regular file (a device, a pipe); the pixel data are truncated (a MetaImage's, a NIfTI's: expected and actual byte
            counts named), or ITK cannot read the file (its reason).
    """
    itk = _itk()
    path = check_input_file(path, what)
    _check_metaimage_data_file(path, what)
    _check_nifti_data(path, what)
    try:
        return itk.imread(str(path), itk.F)
    except RuntimeError as error:
        raise ValueError(f"{what} {path} cannot be read: {_itk_reason(error)}") from None


def _itk_reason(error: Exception | str) -> str:
    """ITK's own words without its source path and object address, plus the fix for known causes."""
    text = " ".join(line.strip() for line in str(error).splitlines()
                    if line.strip() and not re.match(r"^\S+\.(hxx|cxx|h):\d+:?$", line.strip()))
    text = re.sub(r"ITK ERROR: \w+\(0x[0-9a-f]+\): ", "", text)
    if "Zero-valued spacing" in text or "is not a finite number" in text:
        size = "0" if "Zero-valued" in text else "no finite"
        text += (f" (the header gives a voxel size of {size} mm: set the spacing, e.g. ElementSpacing in a .mhd, "
                 "pixdim in a .nii)")
    return text


def read_image_geometry(path: str | Path, what: str = "image") -> ImageGeometry:
    """Read an image file's header only: size, spacing, origin and direction (no pixel data).

    Returns:
        :class:`~elastix_bridge.core.geometry.ImageGeometry` (ITK (x, y, z) order, mm).

    Raises:
        FileNotFoundError, IsADirectoryError: as :func:`read_image`.
        ValueError: not a regular file; no ITK reader recognises the file; truncated MetaImage or ``.nii`` data (as
            :func:`read_image`; a ``.nii.gz`` is not decompressed here); a zero or non-finite spacing (in
            :func:`read_image`'s words: ITK's reader refuses it).
    """
    itk = _itk()
    path = check_input_file(path, what)
    _check_metaimage_data_file(path, what)
    _check_nifti_data(path, what, decompress=False)
    io = itk.ImageIOFactory.CreateImageIO(str(path), itk.CommonEnums.IOFileMode_ReadMode)
    if io is None:
        raise ValueError(f"{what} {path}: no ITK image reader recognises this file; give an image ITK reads "
                         "(.mha, .mhd, .nii, .nrrd, ...)")
    io.SetFileName(str(path))
    io.ReadImageInformation()  # the header only, any pixel type
    n = io.GetNumberOfDimensions()
    spacing = np.array([io.GetSpacing(i) for i in range(n)], dtype=np.float64)
    _check_header_spacing(spacing, path, what)
    direction = np.column_stack([io.GetDirection(i) for i in range(n)])
    # As itk::ImageFileReader::GenerateOutputInformation: a negative spacing is read as its magnitude along the
    # reversed direction, so that the header's geometry is the read image's.
    direction[:, spacing < 0] *= -1
    return ImageGeometry([io.GetDimensions(i) for i in range(n)], np.abs(spacing), [io.GetOrigin(i) for i in range(n)],
                         direction)


def _check_header_spacing(spacing, path: Path, what: str) -> None:
    """Refuse a zero or non-finite voxel size in a header with the words :func:`read_image` gives for it.

    ITK's reader refuses a zero spacing (``itk::ImageBase::SetSpacing``: "Zero-valued spacing is not
    supported") and MetaIO reads "nan" / "inf" as 0; a negative one it reads as its magnitude (kept).

    Raises:
        ValueError: a spacing that is 0, NaN or infinite (names ``what``, ``path`` and the fix).
    """
    if all(math.isfinite(s) and s != 0 for s in spacing):
        return
    shown = " ".join(f"{s:g}" for s in spacing)
    if all(math.isfinite(s) for s in spacing):
        reason = f"Zero-valued spacing is not supported and may result in undefined behavior (spacing {shown})"
    else:
        reason = f"spacing {shown} is not a finite number"
    raise ValueError(f"{what} {path} cannot be read: {_itk_reason(reason)}")


def _check_metaimage_data_file(path: Path, what: str) -> None:
    """A MetaImage's pixel data are all there: a ``.mhd`` header's data file (``ElementDataFile``) exists, and
    the data (in that file, or after a ``.mha`` header) are as long as the header says. ITK's error for
    either blames the header ("No such file or directory", ``itk::MetaImageIO::Read``)."""
    if path.suffix.lower() not in (".mhd", ".mha"):
        return
    with open(path, "rb") as f:
        head = f.read(65536)
    m = re.search(rb"^[ \t]*ElementDataFile[ \t]*=[ \t]*([^\r\n]*?)[ \t]*\r?\n", head, re.M)
    if not m:
        return  # not a MetaImage header ITK can read: ITK says so
    header = head[:m.end()].decode("latin-1")
    name = m.group(1).decode("latin-1")
    if name.startswith("LIST") or "%" in name:
        return  # a list / pattern of slice files
    if name == "LOCAL":
        data, available = path, path.stat().st_size - m.end()
    else:
        data = path.parent / name
        if not data.is_file():
            raise FileNotFoundError(
                f"{what} {path}: its pixel data file {data} (ElementDataFile in the header) does not exist; a .mhd "
                f"header needs its data file beside it: copy both files, or use one .mha file")
        skip = _metaimage_field(header, "HeaderSize")
        available = data.stat().st_size - (int(skip[0]) if skip and int(skip[0]) > 0 else 0)
    expected = _metaimage_data_bytes(header)
    if expected is not None and available < expected:
        raise ValueError(
            f"{what} {path}: its pixel data{'' if data == path else f' file {data}'} is truncated: the header "
            f"says {expected} bytes of {'compressed ' if _compressed(header) else ''}data, the file holds "
            f"{max(available, 0)}; the copy or download was cut short: copy the image again")


def _metaimage_field(header: str, key: str) -> Optional[list]:
    m = re.search(rf"^[ \t]*{key}[ \t]*=[ \t]*(.*?)[ \t]*$", header, re.M)
    return m.group(1).split() if m else None


def _compressed(header: str) -> bool:
    return (_metaimage_field(header, "CompressedData") or ["False"])[0].lower() == "true"


#: Bytes per MetaImage ``ElementType`` (MetaIO ``metaTypes.h``; MET_LONG is left out: its size is the platform's).
_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}


def _metaimage_data_bytes(header: str) -> Optional[int]:
    """Bytes of pixel data a MetaImage header announces (``CompressedDataSize`` when compressed), or None
    when it does not say (a compressed image without that field, an element type of unknown size)."""
    if _compressed(header):
        size = _metaimage_field(header, "CompressedDataSize")
        return int(size[0]) if size and size[0].isdigit() else None
    dims, kind = _metaimage_field(header, "DimSize"), (_metaimage_field(header, "ElementType") or [""])[0]
    channels = _metaimage_field(header, "ElementNumberOfChannels") or ["1"]
    if not dims or kind not in _MET_BYTES or not all(v.isdigit() for v in dims + channels):
        return None
    return math.prod(int(v) for v in dims) * int(channels[0]) * _MET_BYTES[kind]


def _check_nifti_data(path: Path, what: str, decompress: bool = True) -> None:
    """A NIfTI file holds as many data bytes as its header announces (``vox_offset`` + ∏dim · bitpix/8);
    ITK reads a truncated ``.nii`` or ``.nii.gz`` without a word, the missing voxels as zeros
    (``itk::NiftiImageIO``). A ``.nii.gz`` is decompressed to count (skipped when ``decompress`` is False)."""
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")) or (name.endswith(".gz") and not decompress):
        return
    try:
        with (gzip.open(path, "rb") if name.endswith(".gz") else open(path, "rb")) as f:
            header = f.read(540)
            for order in "<>":
                if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:  # NIfTI-1
                    dims = struct.unpack(order + "8h", header[40:56])
                    bitpix = struct.unpack(order + "h", header[72:74])[0]
                    offset = struct.unpack(order + "f", header[108:112])[0]
                    break
                if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:  # NIfTI-2
                    dims = struct.unpack(order + "8q", header[16:80])
                    bitpix = struct.unpack(order + "h", header[14:16])[0]
                    offset = struct.unpack(order + "q", header[168:176])[0]
                    break
            else:
                return  # not a NIfTI header: ITK says so
            if not 1 <= dims[0] <= 7 or bitpix <= 0 or any(d < 1 for d in dims[1:dims[0] + 1]):
                return
            expected = int(offset) + math.prod(dims[1:dims[0] + 1]) * bitpix // 8
            if name.endswith(".gz"):
                available = len(header)
                while chunk := f.read(1 << 22):
                    available += len(chunk)
            else:
                available = path.stat().st_size
    except EOFError:  # gzip: "Compressed file ended before the end-of-stream marker was reached"
        raise ValueError(f"{what} {path} is truncated: its compressed data end before the gzip end-of-stream marker; "
                         f"the copy or download was cut short: copy the image again") from None
    if available < expected:
        raise ValueError(f"{what} {path} is truncated: the header says {expected} bytes (header and pixel data), the "
                         f"file holds {available}{' once decompressed' if name.endswith('.gz') else ''}; the copy or "
                         f"download was cut short: copy the image again")


def read_mask(path: str | Path, what: str = "mask") -> itk.Image:
    """Read a mask of any pixel type (MET_CHAR included) as unsigned char, non-zero = 1."""
    itk = _itk()
    image = read_image(path, what)
    mask = itk.image_from_array((itk.array_view_from_image(image) != 0).astype(np.uint8))
    mask.CopyInformation(image)
    return mask


def write_image(image: itk.Image, path: Path) -> None:
    """Write an ``itk.Image`` without ever leaving a half-written file at ``path``.

    The image is written into a temporary folder beside ``path`` and its files (one, or a MetaImage
    header and its data file) are renamed into place.
    """
    itk = _itk()
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix=".tmp-", dir=path.parent) as tmp:
        itk.imwrite(image, str(Path(tmp) / path.name))
        for f in Path(tmp).iterdir():
            os.replace(f, path.parent / f.name)
