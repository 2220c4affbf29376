"""Writing files without ever leaving a half-written one, and without touching the target early."""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable, IO


def write_atomically(path: str | Path, write: Callable[[IO], None], binary: bool = False) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, flush it to disk, then rename it to ``path``.

    The temporary file is created with the user's usual permissions (``tempfile.mkstemp`` would make
    it private, 0600, and the rename would keep that). On any error it is removed and ``path`` is
    left as it was.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OSError: the folder is not writable; whatever ``write`` raises.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb" if binary else "x", **({} if binary else {"encoding": "utf-8", "newline": "\n"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def input_file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as an input file, as a phrase that follows its name; None when it can.

    ``Path("")`` is ``"."``, a folder, so an empty value (an unset shell variable) is named before the
    path is made; a folder and a device or pipe (``/dev/null``) exist, so "does not exist" would mislead.
    """
    if not str(path).strip():
        return "is empty (an unset shell variable?); give the file's path"
    p = Path(path)
    if p.is_file():
        return None
    if p.is_dir():
        return "is a folder, not a file; give the path of a file (in that folder?)"
    if p.exists():
        return "is not a regular file (a device, pipe or socket); give a regular file (save the data to a file first)"
    if p.is_symlink():
        return f"is a symbolic link to {os.readlink(p)}, which does not exist; check the link"
    return "does not exist; check the path"


def check_input_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a :class:`~pathlib.Path` when it names a readable regular file (or a link to one).

    Args:
        path: the file.
        what: how the message names it, e.g. ``"parameter file (-p)"``.

    Raises:
        FileNotFoundError: ``path`` is empty, missing, or a link to nothing.
        IsADirectoryError: ``path`` is a folder.
        ValueError: ``path`` is not a regular file (a device such as ``/dev/null``, a pipe, a socket).
    """
    problem = input_file_problem(path)
    if problem is None:
        return Path(path)
    text = f"{what} {path} {problem}" if str(path).strip() else f"{what} {problem}"
    if problem.startswith("is a folder"):
        raise IsADirectoryError(text)
    if problem.startswith("is not a regular"):
        raise ValueError(text)
    raise FileNotFoundError(text)
