"""The installed itk-elastix's elastix, read from its files without importing itk (which takes seconds).

What a native IMPACT plugin must match and whether elastix can load one at all: the shared library
that holds elastix (:func:`elastix_library`), the itk-elastix version, whether its elastix has
upstream's lazy IMPACT plugin loader (elastix ``Core/Kernel/elxMainBase.cxx``,
``MainBase::TryLoadComponentPlugin``; docs/design.md §I10; :func:`lazy_impact_loader`)
and the elastix commit it was built from (:func:`elastix_git_revision`). Each answer comes from
the package metadata or a scan of the library file, cached per process and file version.
"""
from __future__ import annotations

import mmap
import re
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Optional

from elastix_bridge.runtime.elf import section_range

__all__ = ["LAZY_LOADER_MESSAGE", "elastix_git_revision", "elastix_library", "itk_elastix_version",
           "lazy_impact_loader"]

#: The error message of upstream's lazy loader, a string literal of ``TryLoadComponentPlugin``.
LAZY_LOADER_MESSAGE = b"IMPACT requested but could not be loaded"


def elastix_library() -> Optional[Path]:
    """The shared library of itk-elastix that contains elastix (``itk/_ElastixPython*.so``).

    Found through the installed distribution's file list (``importlib.metadata``), without importing
    itk (importing it takes seconds).

    Returns:
        Its path, or None when itk-elastix is not installed or holds no such file.
    """
    try:
        dist = metadata.distribution("itk-elastix")
    except metadata.PackageNotFoundError:
        return None
    for entry in dist.files or ():
        name = Path(str(entry)).name
        if name.startswith("_ElastixPython") and (name.endswith(".so") or name.endswith(".pyd")):
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    return None


def itk_elastix_version() -> Optional[str]:
    """The installed itk-elastix version (package metadata), or None when it is not installed."""
    try:
        return metadata.version("itk-elastix")
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=8)
def _file_contains(path: str, size: int, mtime: float, needle: bytes) -> bool:
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
        return view.find(needle) >= 0


def lazy_impact_loader(library: str | Path | None = None) -> Optional[bool]:
    """Whether itk-elastix's elastix has upstream's lazy IMPACT plugin loader.

    Detection without side effects: the loader's error message
    ``IMPACT requested but could not be loaded`` is a string literal of ``TryLoadComponentPlugin``
    and so sits in the library's read-only data exactly when the loader was compiled in. The file
    is scanned through ``mmap`` (~0.1-0.3 s for the ~90 MB library; cached per process).

    Args:
        library: The elastix library to scan; default :func:`elastix_library`.

    Returns:
        True/False, or None when the library is not found (itk-elastix not installed).
    """
    path = Path(library) if library is not None else elastix_library()
    if path is None or not path.is_file():
        return None
    stat = path.stat()
    return _file_contains(str(path), stat.st_size, stat.st_mtime, LAZY_LOADER_MESSAGE)


@lru_cache(maxsize=4)
def _git_revision(path: str, size: int, mtime: float) -> Optional[str]:
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
        start, length = section_range(view, b".rodata") or (0, len(view))
        found = set(re.findall(rb"\x00([0-9a-f]{40})\x00", view[start:start + length]))
    return found.pop().decode() if len(found) == 1 else None


def elastix_git_revision(library: str | Path | None = None) -> Optional[str]:
    """The elastix commit itk-elastix's elastix was built from, as its log header shows it.

    elastix compiles its ``Git revision SHA`` (printed at the top of every elastix log) into the
    library as a string; it is the only NUL-delimited 40-hex-digit string in the read-only data
    of the itk-elastix 0.25 wheels. A native plugin must be built from this commit.

    Args:
        library: The elastix library; default :func:`elastix_library`.

    Returns:
        The 40-hex-digit SHA, or None when the library is missing or holds no unique candidate.
    """
    path = Path(library) if library is not None else elastix_library()
    if path is None or not path.is_file():
        return None
    stat = path.stat()
    return _git_revision(str(path), stat.st_size, stat.st_mtime)

