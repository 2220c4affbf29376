"""Output folders that never mix runs: one run owns its folder, clears the old outputs, lists its own.

elastix's own behaviour is the baseline: it writes ``TransformParameters.<k>.txt``,
``result.<k>.<fmt>``, ``IterationInfo.<k>.R<r>.txt`` and ``elastix.log`` into ``-out`` and
overwrites them per name, leaving every other file as it was (``elastix.log`` first, so a failed
run leaves its error there). What differs here, and why (docs/outputs_and_resources.md):

* **Lock.** A run holds an exclusive ``fcntl.flock`` on ``-out/.elastix-bridge.lock`` for its
  duration; a second run into the same folder fails at once, naming the first (PID, host, start
  time, command, which the lock file records). Two runs into one folder otherwise interleave:
  run B's ``TransformParameters.1.txt`` would chain onto run A's ``.0``.
* **Stale outputs removed.** Before anything is written, every file a run of this command writes
  (:data:`OUTPUT_PATTERNS`: ``TransformParameters.<k>.*``, ``IterationInfo.<k>.*``,
  ``result.<k>.*``, the log, ``qc.png``) is removed; other files are never touched. Per-name overwriting
  would leave a 2-stage run's ``TransformParameters.1.txt`` beside a new 1-stage run's ``.0``,
  chained onto a transform it was not fitted on.
* **Failure.** The outputs the failed run wrote are removed (a stage-0 TransformParameters beside
  a failed chain looks like a result to scripts that test for the file); the log stays and ends
  with the error (and says which files were removed).
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import re
import shutil
import socket
import sys
import threading
from pathlib import Path
from typing import Iterator, Optional

from elastix_bridge.core.interruption import interruption_text

LOCK_NAME = ".elastix-bridge.lock"
SCRATCH_PATTERN = r"\.stage\d+-.*"  # scratch folders of elastix stages (elastix_bridge.api), left by a killed run
# The image formats elastix writes results in (ResultImageFormat), with MetaImage's data files.
_IMAGE_EXTENSIONS = r"(mha|mhd|raw|zraw|nii|nii\.gz|hdr|img|img\.gz|nrrd|nhdr|vtk|png|tif|tiff|jpg|jpeg|bmp|gipl|mnc)"
#: The exact names a run of elastix-bridge (or elastix) writes into its output folder, numbered by
#: stage as elastix numbers them (``result.0.mha``, ``IterationInfo.1.R2.txt``,
#: ``TransformParameters.0.R1.txt``): a user's ``result.xlsx`` or ``TransformParameters.1.txt.bak`` is
#: not one of them; ``{log}`` is the log's name. Regular expressions matched against whole names.
OUTPUT_PATTERNS = (r"TransformParameters\.\d+(\.R\d+(\.It\d+)?)?\.txt", r"IterationInfo\.\d+\.R\d+\.txt",
                   rf"result\.\d+(\.R\d+(\.It\d+)?)?\.{_IMAGE_EXTENSIONS}", "{log}", r"qc\.png",
                   SCRATCH_PATTERN,
                   r"\.(TransformParameters|result)\.\d+.*\.tmp", r"\.qc\.png\..*\.tmp")  # write_atomically


class OutputFolderError(ValueError):
    """The output folder cannot be used: it is a file, or it cannot be created."""


class OutputFolderBusyError(RuntimeError):
    """Another run holds the output folder; the message names it."""


def _is_output(name: str, log_name: str) -> bool:
    return any(re.fullmatch(re.escape(log_name) if p == "{log}" else p, name) for p in OUTPUT_PATTERNS)


def prepare_output_folder(path: str | Path, flag: str = "-out", create: bool = True) -> Path:
    """Create ``path`` (and its parents) if absent (``create``); refuse a file with a named error.

    Raises:
        OutputFolderError: ``path`` is an empty or blank string (an unset shell variable: it would
            mean the current folder, whose earlier outputs would be removed), ``path`` (or one of
            its parents) is an existing file, or it cannot be created (permissions), naming
            ``flag`` and the fix.
    """
    if isinstance(path, str) and not path.strip():
        raise OutputFolderError(f"output folder ({flag}) {path!r} is {'blank' if path else 'empty'} (an unset shell "
                                "variable?); it would mean the current folder, whose earlier outputs a run removes: "
                                "give a folder path" + (" (it is created if absent)" if flag == "-out" else ""))
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            what = "is" if parent == path else f"is inside {parent}, which is"
            raise OutputFolderError(f"output folder ({flag}) {path} {what} an existing file, not a folder; "
                                    # the command creates a missing -out; in Python it must exist, as in itk-elastix
                                    + ("give a folder path (it is created if absent)" if flag == "-out" else
                                       "give an existing folder"))
    if not create:
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputFolderError(f"output folder ({flag}) {path} cannot be created: {error.strerror or error}; "
                                "give a folder you can write to") from error
    return path


class OutputRun:
    """One run's ownership of an output folder (made by :func:`owned_output_folder`).

    Attributes:
        folder: the output folder.
        log_name: the log's file name (elastix's ``elastix.log``).
        removed: names of the earlier run's outputs removed by :meth:`clear`.
    """

    def __init__(self, folder: Path, log_name: str, error_to_log: bool = True) -> None:
        self.folder = folder
        self.log_name = log_name
        self.error_to_log = error_to_log
        self.removed: list = []
        self._before: set = set()

    def clear(self) -> list:
        """Remove every earlier output of this command (:data:`OUTPUT_PATTERNS`), nothing else.

        An input at one of these names would be lost here: the command and the API refuse it before
        (:func:`check_inputs_outside_outputs`); files under other names, and subfolders other than
        scratch folders, are never entered.

        Returns:
            The names removed, sorted.
        """
        for entry in sorted(self.folder.iterdir()):
            if entry.name == LOCK_NAME or not _is_output(entry.name, self.log_name):
                continue
            if entry.is_dir() and not entry.is_symlink():
                if not re.fullmatch(SCRATCH_PATTERN, entry.name):
                    continue  # a folder named like an output is the user's: outputs are files
                shutil.rmtree(entry)
            else:
                entry.unlink()
            self.removed.append(entry.name)
        self._before = {p.name for p in self.folder.iterdir()}
        return sorted(self.removed)

    def written(self) -> list:
        """Names of the outputs this run wrote (files matching :data:`OUTPUT_PATTERNS` not there before it)."""
        return sorted(p.name for p in self.folder.iterdir()
                      if p.name not in self._before and _is_output(p.name, self.log_name) and p.is_file()
                      and not p.name.startswith("."))

    def fail(self, error: BaseException) -> None:
        """After a failed run: remove what it wrote, except the log, which gets the error at its end."""
        removed = [name for name in self.written() if name != self.log_name]
        for name in removed:
            with contextlib.suppress(OSError):
                (self.folder / name).unlink()
        text = str(error).strip() or type(error).__name__
        if isinstance(error, KeyboardInterrupt):  # Ctrl-C, or SIGTERM / SIGHUP in the command (core/interruption.py)
            text = interruption_text(error)
        if not self.error_to_log:
            return
        note = f"\nelastix-bridge: error: {text}\n"
        if removed:
            note += f"elastix-bridge: removed the outputs of this failed run: {', '.join(removed)}\n"
        with contextlib.suppress(OSError), open(self.folder / self.log_name, "a", encoding="utf-8") as log:
            log.write(note)


def is_held(path: str | Path) -> bool:
    """Whether this thread already owns ``path`` (the command owns it around the API call)."""
    with _HELD_LOCK:
        return (str(Path(path).resolve()), threading.get_ident()) in _HELD


# Folders this process holds, per thread: a nested call (the command calling the API) re-enters.
_HELD: dict = {}
_HELD_LOCK = threading.Lock()


def _describe_holder(text: str) -> str:
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    if not fields:
        return "another run (its lock file is empty: it has only just started)"
    return (f"run PID {fields.get('pid', '?')} on host {fields.get('host', '?')}, started "
            f"{fields.get('started', '?')}: {fields.get('command', '?')}")


def check_inputs_outside_outputs(path: str | Path, inputs: dict, log_name: str = "elastix.log",
                                 flag: str = "-out") -> None:
    """Refuse a run whose input lies in its output folder where the run writes or removes files.

    elastix would overwrite such a file (``-m OUT/result.0.mha``, ``-t0 OUT/TransformParameters.0.txt``)
    and elastix-bridge would remove it as an earlier run's output (:meth:`OutputRun.clear`, the lock
    file, a scratch folder ``.stage<k>-*``): either way the input is lost. Inputs elsewhere in the
    folder (``OUT/params.txt``, ``OUT/sub/TransformParameters.0.txt``) are never touched and pass.
    Both the input's own entry (its folder resolved, ``./OUT/../OUT/x`` included) and the file it
    links to are checked: removing a symbolic link loses the link, overwriting its target the file.

    Args:
        path: the output folder.
        inputs: how each input is named in messages (``"moving image (-m)"``) -> its path (None: absent).
        log_name: the log's file name (elastix's ``elastix.log``).
        flag: how the folder was given, for messages (``-out`` or ``output_directory``).

    Raises:
        OutputFolderError: names the input, the clash and the fix.
    """
    folder = Path(path).resolve()
    for what, file in inputs.items():
        if file is None:
            continue
        given = Path(file)
        for location in dict.fromkeys((given.parent.resolve() / given.name, given.resolve())):
            clash = _clash_with_outputs(folder, location, log_name)
            if clash is None:
                continue
            through = "" if location == given.parent.resolve() / given.name else f" (a link to {location})"
            raise OutputFolderError(
                f"{what} {file}{through} lies in the output folder ({flag}) {path} {clash}: it would be overwritten "
                f"or removed. Move it out of the folder, or give another {flag}; elastix-bridge never overwrites "
                "or removes an input")


def _clash_with_outputs(folder: Path, location: Path, log_name: str) -> Optional[str]:
    """How ``location`` clashes with what a run does in ``folder`` (None: it does not)."""
    try:
        parts = location.relative_to(folder).parts
    except ValueError:
        return None
    if len(parts) == 1 and (_is_output(parts[0], log_name) or parts[0] == LOCK_NAME):
        return f"under a name this run writes or removes ({parts[0]})"
    if len(parts) > 1 and re.fullmatch(SCRATCH_PATTERN, parts[0]):
        return f"inside {parts[0]}, a scratch folder that this run removes"
    return None


@contextlib.contextmanager
def owned_output_folder(path: str | Path, log_name: str = "elastix.log", command: Optional[str] = None,
                        flag: str = "-out", error_to_log: bool = True) -> Iterator[OutputRun]:
    """Own ``path`` for one run: lock it, clear earlier outputs, clean up after a failure.

    The folder is created if absent (:func:`prepare_output_folder`). The lock is
    ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``path/.elastix-bridge.lock``, which records the
    holder's PID, host, start time and command and is removed when the run ends; the kernel
    releases the lock when the process ends, so a killed run never leaves the folder locked (its
    lock file stays, harmless, until the next run). A nested call from the same thread (the command
    calling :func:`elastix_bridge.api.elastix_registration_method`) re-enters without clearing.
    flock is advisory and per host on most network file systems: it guards against runs of
    elastix-bridge, not against other programs writing into the folder.

    On an exception inside the block, :meth:`OutputRun.fail` removes this run's outputs (except
    the log) and appends the error to the log (``error_to_log``; off when no log is written); the
    exception propagates. A KeyboardInterrupt is such an exception: Ctrl-C, and in the command
    SIGTERM / SIGHUP too (:mod:`elastix_bridge.core.interruption`; the log gets "interrupted by SIGTERM").
    No signal handler is installed here, so the Python API leaves a program's handlers alone.

    Args:
        path: the output folder.
        log_name: the log's file name.
        command: what the lock file records as the command (default: ``sys.argv``).
        flag: how the folder was given, for messages (``-out`` or ``output_directory``).

    Raises:
        OutputFolderError: ``path`` is a file or cannot be created.
        OutputFolderBusyError: another run holds the folder; names that run.
    """
    folder = prepare_output_folder(path, flag).resolve()
    key = (str(folder), threading.get_ident())
    with _HELD_LOCK:
        held = _HELD.get(key)
    if held is not None:
        yield held
        return
    handle = _lock(folder / LOCK_NAME, path, flag)
    try:
        handle.seek(0)
        handle.truncate()
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        handle.write(f"pid={os.getpid()}\nhost={socket.gethostname()}\nstarted={started}\n"
                     f"command={command or ' '.join(sys.argv)}\n")
        handle.flush()
        run = OutputRun(folder, log_name, error_to_log)
        run.clear()
        with _HELD_LOCK:
            _HELD[key] = run
        try:
            yield run
        except BaseException as error:
            run.fail(error)
            raise
        finally:
            with _HELD_LOCK:
                _HELD.pop(key, None)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(folder / LOCK_NAME)  # while still locked: a waiting opener then sees a new file
        handle.close()  # releases the flock


def _lock(lock_file: Path, path, flag: str):
    """Open and flock ``lock_file``; the open file, or OutputFolderBusyError naming the holder.

    The file is removed when a run ends, so a file opened just before that removal is locked but
    no longer in the folder: locking is retried on the file now at that name.
    """
    while True:
        handle = open(lock_file, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = _describe_holder(handle.read())
            handle.close()
            raise OutputFolderBusyError(
                f"output folder ({flag}) {path} is in use by {holder}; two runs into one folder would mix their "
                "files. Wait for it to finish, or give another folder") from None
        try:
            if os.stat(lock_file).st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()
