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
