"""Reading and writing images the way the bridge's entry points need them (ITK I/O).

Images are read as float pixels (elastix's internal type); masks of any pixel type (MET_CHAR
included, which itk's Python wrapping cannot read as such) become unsigned char 0/1. Writing never
leaves a half-written file behind.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import itk

    from elastix_bridge.core.geometry import ImageGeometry


def read_image(path: str | Path, what: str = "image") -> itk.Image:
    """Read an image as float pixels (elastix's internal type).

    Args:
        path: image file.
        what: how error messages name it, e.g. ``"fixed image (-f)"``.

    Raises:
        FileNotFoundError: ``path`` does not exist, or it is a MetaImage header whose data file
            (``ElementDataFile``, e.g. the ``.raw`` beside a ``.mhd``) does not (the message names
            ``what`` and the missing file).
    """
    import itk

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist; check the path")
    _check_metaimage_data_file(path, what)
    try:
        return itk.imread(str(path), itk.F)
    except RuntimeError as error:
        raise ValueError(f"{what} {path} cannot be read: {_itk_reason(error)}") from None


def _itk_reason(error: Exception) -> str:
    """ITK's own words without its source path and object address, plus the fix for known causes."""
    text = " ".join(line.strip() for line in str(error).splitlines()
                    if line.strip() and not re.match(r"^\S+\.(hxx|cxx|h):\d+:?$", line.strip()))
    text = re.sub(r"ITK ERROR: \w+\(0x[0-9a-f]+\): ", "", text)
    if "Zero-valued spacing" in text:
        text += " (the header gives a voxel size of 0 mm: set the spacing, e.g. ElementSpacing in a .mhd, pixdim in a .nii)"
    return text


def read_image_geometry(path: str | Path, what: str = "image") -> ImageGeometry:
    """Read an image file's header only: size, spacing, origin and direction (no pixel data).

    Returns:
        :class:`~elastix_bridge.core.geometry.ImageGeometry` (ITK (x, y, z) order, mm).

    Raises:
        FileNotFoundError: as :func:`read_image`.
        ValueError: no ITK reader recognises the file.
    """
    import itk
    import numpy as np

    from elastix_bridge.core.geometry import ImageGeometry

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist; check the path")
    _check_metaimage_data_file(path, what)
    io = itk.ImageIOFactory.CreateImageIO(str(path), itk.CommonEnums.IOFileMode_ReadMode)
    if io is None:
        raise ValueError(f"{what} {path}: no ITK image reader recognises this file; give an image ITK reads "
                         "(.mha, .mhd, .nii, .nrrd, ...)")
    io.SetFileName(str(path))
    io.ReadImageInformation()  # the header only, any pixel type
    n = io.GetNumberOfDimensions()
    return ImageGeometry([io.GetDimensions(i) for i in range(n)], [io.GetSpacing(i) for i in range(n)],
                         [io.GetOrigin(i) for i in range(n)], np.column_stack([io.GetDirection(i) for i in range(n)]))


def _check_metaimage_data_file(path: Path, what: str) -> None:
    """A ``.mhd`` header names its pixel data file (``ElementDataFile``); ITK's error would blame the header."""
    if path.suffix.lower() != ".mhd":
        return
    with open(path, "rb") as f:
        header = f.read(65536).decode("latin-1")
    m = re.search(r"^\s*ElementDataFile\s*=\s*(.+?)\s*$", header, re.M)
    if not m or m.group(1) == "LOCAL" or m.group(1).startswith("LIST") or "%" in m.group(1):
        return  # data inside the header, or a list / pattern of slice files
    data = path.parent / m.group(1)
    if not data.is_file():
        raise FileNotFoundError(
            f"{what} {path}: its pixel data file {data} (ElementDataFile in the header) does not exist; a .mhd "
            f"header needs its data file beside it: copy both files, or use one .mha file")


def read_mask(path: str | Path, what: str = "mask") -> itk.Image:
    """Read a mask of any pixel type (MET_CHAR included) as unsigned char, non-zero = 1."""
    import itk
    import numpy as np

    image = read_image(path, what)
    mask = itk.image_from_array((itk.array_view_from_image(image) != 0).astype(np.uint8))
    mask.CopyInformation(image)
    return mask


def write_image(image: itk.Image, path: Path) -> None:
    """Write an ``itk.Image`` without ever leaving a half-written file at ``path``.

    The image is written into a temporary folder beside ``path`` and its files (one, or a MetaImage
    header and its data file) are renamed into place.
    """
    import tempfile

    import itk

    path = Path(path)
    with tempfile.TemporaryDirectory(prefix=".tmp-", dir=path.parent) as tmp:
        itk.imwrite(image, str(Path(tmp) / path.name))
        for f in Path(tmp).iterdir():
            os.replace(f, path.parent / f.name)
