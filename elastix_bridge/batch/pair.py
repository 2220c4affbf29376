"""One pair of a cohort, on a Dask worker: its registration, measures and record (:func:`run_pair`).

The pair is registered by :func:`elastix_bridge.file_registration.register_files`, as
``elastix-bridge -f FIXED -m MOVING -p ... -out DIR/<id>`` registers it, into ``DIR/.batch/tmp/``,
then renamed into place when complete (a pair is complete or absent); its record goes to
``DIR/.batch/pairs/<id>.json`` and, after a failure, its log to ``DIR/failed/<id>.log``
(:mod:`elastix_bridge.batch.runner` describes the layout).
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from elastix_bridge.batch import evaluation
from elastix_bridge.batch.manifest import Pair
from elastix_bridge.core.files import write_atomically
from elastix_bridge.core.output_folder import LOCK_NAME
from elastix_bridge.core.parameters import read_parameter_file
from elastix_bridge.core.transform_io import transform_parameter_file_text
from elastix_bridge.file_registration import FileRegistration, register_files
from elastix_bridge.runtime.memory import PeakRSS

__all__ = ["ForeignPairFolderError", "PairSettings", "run_pair"]


@dataclass(frozen=True)
class PairSettings:
    """What every pair's run shares: the map files, the engine, threads, and the GPU rule."""

    output_directory: str
    map_files: tuple
    engine: str
    threads: Optional[int]  # None: the cores this worker process may use (a cluster's own workers)
    gpu_count: int  # > 0: maps that ask for a GPU get the worker's own (LocalCluster workers 0, 1, ...)
    started: float = 0.0  # time.time() before the batch checked DIR: later files in DIR/<id> are not from then


def _worker_gpu(settings: PairSettings) -> Optional[int]:
    """This worker's GPU (its LocalCluster index modulo the GPUs), or None when maps keep their own."""
    if settings.gpu_count <= 0:
        return None
    from distributed import get_worker  # deferred: dask.distributed is the batch extra, checked before any pair

    name = get_worker().name
    return int(name) % settings.gpu_count if str(name).isdigit() else None


def _map_files(settings: PairSettings) -> list[str]:
    """The map files for this worker: copies whose ``ImpactGPU`` is this worker's GPU, when it has one."""
    gpu = _worker_gpu(settings)
    if gpu is None:
        return list(settings.map_files)
    out = []
    for name in settings.map_files:
        target = Path(name).with_name(f"gpu{gpu}.{Path(name).name}")
        if not target.is_file():
            pmap = read_parameter_file(name)[0]
            if any(int(v) >= 0 for v in pmap.values("ImpactGPU")):
                pmap.set("ImpactGPU", [str(gpu)])
            text = transform_parameter_file_text(pmap)
            write_atomically(target, lambda f: f.write(text))
        out.append(str(target))
    return out


def register_pair(pair: Pair, settings: PairSettings, out: Path) -> FileRegistration:
    """The pair's registration into ``out``: what ``elastix-bridge -f FIXED -m MOVING -p ... -out OUT`` runs
    with ``--engine``, ``-threads`` (this worker's), the pair's masks and ``-t0``, no progress bars and no
    console log (every pair's log is its ``elastix.log``)."""
    return register_files(pair.fixed, pair.moving, _map_files(settings), out, fixed_mask=pair.fixed_mask or None,
                          moving_mask=pair.moving_mask or None, initial_transform=pair.t0 or None,
                          engine=settings.engine, threads=settings.threads or len(os.sched_getaffinity(0)),
                          log_to_console=False, progress=False)


def _retarget_chain(folder: Path, old: Path, new: Path) -> None:
    """TransformParameters files name their predecessor by path: point them at the final folder."""
    for path in folder.glob("TransformParameters.*.txt"):
        text = path.read_text()
        if str(old) in text:
            changed = text.replace(f'"{old}{os.sep}', f'"{new}{os.sep}')
            write_atomically(path, lambda f: f.write(changed))


def _move_into_place(tmp: Path, final: Path, trash: Path) -> None:
    """Rename ``tmp`` to ``final``; an earlier ``final`` (``--force``) is moved aside first, then removed."""
    old = None
    if final.exists():
        old = trash / f"{final.name}-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# elastix is not thread-safe: a worker that runs several tasks at once (a cluster's worker with
# --nthreads > 1) still registers one pair at a time.
_ONE_AT_A_TIME = threading.Lock()


def run_pair(pair: Pair, settings: PairSettings, digest: str) -> dict:
    """Register one pair on this worker and return its summary record; never raises for the pair's own errors.

    One pair at a time per process. Runs :func:`elastix_bridge.file_registration.register_files` into a fresh
    folder under ``DIR/.batch/tmp``; on success computes the final metrics, Dice and TRE, renames the
    folder to ``DIR/<id>`` and writes the pair's record; on an error keeps the log as
    ``DIR/failed/<id>.log`` (an earlier complete ``DIR/<id>`` stays as it was).

    Returns:
        The record: ``id, status ("complete"/"failed"), error, attempts, wall_s, peak_rss_mb``,
        ``folded_fraction, jacobian_min, transform_warnings`` and the measures of
        :mod:`elastix_bridge.batch.evaluation`.
    """
    with _ONE_AT_A_TIME:
        return _run_pair(pair, settings, digest)


def _point_to_kept_log(message: str, tmp: Path, kept: Path) -> str:
    """``message`` with the temporary folder's ``elastix.log`` (removed after a failure) replaced by ``kept``."""
    for log in {str(tmp / "elastix.log"), str((tmp / "elastix.log").resolve()), str((tmp / "elastix.log").absolute())}:
        message = message.replace(log, str(kept))
    return message


def _run_pair(pair: Pair, settings: PairSettings, digest: str) -> dict:
    root = Path(settings.output_directory)
    state = root / ".batch"
    with open(state / "attempts" / pair.id, "a") as f:  # a killed worker never returns: count on disk
        f.write(f"{os.getpid()} {time.time():.0f}\n")
    attempts = len((state / "attempts" / pair.id).read_text().splitlines())
    tmp = state / "tmp" / f"{pair.id}-{uuid.uuid4().hex[:8]}"
    final = root / pair.id
    record: dict[str, Any] = {"id": pair.id, "status": "complete", "error": "", "attempts": attempts,
                              "hash": digest}
    tic = time.perf_counter()
    foreign = False  # DIR/<id> written by another run meanwhile
    with PeakRSS() as memory:
        try:
            run = register_pair(pair, settings, tmp)
            record.update(evaluation.final_metrics(tmp))
            record.update(_transform_check_columns(run.checks))
            if pair.fixed_labels:
                record.update(evaluation.dice_per_label(tmp, pair.fixed_labels, pair.moving_labels))
            if pair.fixed_points:
                record.update(evaluation.target_registration_error(tmp, pair))
            _retarget_chain(tmp, tmp, final)
            record["files"] = _file_sizes(tmp)  # what resume checks is still there
            _refuse_foreign_folder(final, state, settings.started)  # written meanwhile by another run: kept
            _write_record(state, record)  # before the rename: a kill in between leaves a record, never a stray folder
            _move_into_place(tmp, final, state / "tmp")
            (root / "failed" / f"{pair.id}.log").unlink(missing_ok=True)  # an earlier failure's log is stale now
        except Exception as error:  # the pair's own failure: recorded, the cohort goes on
            foreign = isinstance(error, ForeignPairFolderError)
            record.update(status="failed", error=str(error).strip() or type(error).__name__)
            (root / "failed").mkdir(exist_ok=True)
            if (tmp / "elastix.log").is_file():
                shutil.copyfile(tmp / "elastix.log", root / "failed" / f"{pair.id}.log")
                record["error"] = _point_to_kept_log(record["error"], tmp, root / "failed" / f"{pair.id}.log")
            else:  # the inputs failed before the run began: an earlier attempt's log would mislead
                (root / "failed" / f"{pair.id}.log").unlink(missing_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
    record.update(wall_s=time.perf_counter() - tic, peak_rss_mb=memory.megabytes)
    _write_record(state, record)
    if foreign:  # no record: the next batch's start check refuses the folder instead of replacing it
        (state / "pairs" / f"{pair.id}.json").unlink(missing_ok=True)
    return record


def _transform_check_columns(checks) -> dict:
    """The last stage's folding numbers and every stage's transform-check warnings (:mod:`elastix_bridge.transform_check`)."""
    if not checks:
        return {}
    return {"folded_fraction": checks[-1].folded_fraction, "jacobian_min": checks[-1].jacobian_min,
            "transform_warnings": " | ".join(w for c in checks for w in c.warnings)}


class ForeignPairFolderError(RuntimeError):
    """``DIR/<id>`` was written by another run while the batch ran; the batch keeps it."""


def _refuse_foreign_folder(final: Path, state: Path, started: float) -> None:
    """Refuse to replace a ``DIR/<id>`` that another run wrote after the batch's start checks.

    The batch's own: absent; or a folder with the pair's record, no lock, and no file newer than
    ``started`` that the record does not list with its size (a retry after a kill following the move).

    Raises:
        ForeignPairFolderError: ``final`` is a file, holds a run's lock, has no record, or holds newer files.
    """
    if not final.exists() and not final.is_symlink():
        return
    record_path = state / "pairs" / f"{final.name}.json"
    if not final.is_dir():
        why = "is a file"
    elif (final / LOCK_NAME).exists():
        why = "holds the lock of a run still writing into it"
    elif not record_path.is_file():
        why = f"has no record in {record_path.parent}"
    else:
        newer = _unrecorded_newer_files(final, record_path, started)
        why = f"holds {newer[0]}, written after the batch started" if newer else ""
    if why:
        raise ForeignPairFolderError(
            f"{final} was not written by this batch ({why}; another run wrote it while the batch ran), so it is kept "
            f"and this pair's result was discarded: move {final} away and run the same batch command again")


def _unrecorded_newer_files(folder: Path, record_path: Path, started: float) -> list:
    """Files under ``folder`` modified after ``started`` that the pair's record does not list with their size."""
    try:
        listed = json.loads(record_path.read_text()).get("files") or {}
    except (ValueError, OSError, AttributeError):  # a truncated record lists nothing
        listed = {}
    sizes = _file_sizes(folder)
    return [name for name, size in sizes.items()
            if (folder / name).stat().st_mtime > started and listed.get(name) != size]


def _file_sizes(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` (relative POSIX path -> bytes), but the run's lock."""
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK_NAME}


def _write_record(state: Path, record: Mapping[str, Any]) -> None:
    text = json.dumps(dict(record), indent=1)
    write_atomically(state / "pairs" / f"{record['id']}.json", lambda f: f.write(text))
