"""Register a cohort on Dask: every pair in a worker process that stays warm, a summary at the end.

Each pair is one task running what ``elastix-bridge -f FIXED -m MOVING -p ... -out DIR/<id>`` runs,
in a ``dask.distributed`` worker process. A worker keeps itk, torch, the plugin and the loaded models
between its pairs, so only its first pair pays the start-up. elastix is not thread-safe, so a worker
runs one pair at a time, with its own thread count. A pair whose Python code fails is recorded as
failed with the error and the cohort goes on; a pair that kills its worker process (a segmentation
fault, the out-of-memory killer, the nanny's memory limit) is rescheduled by Dask on a fresh worker
up to ``retries`` more times, then recorded as failed with that cause.

Layout of ``DIR``:

* ``DIR/<id>/``: exactly what ``elastix-bridge -out`` writes for the pair, written into
  ``DIR/.batch/tmp/`` and renamed into place when complete (a pair is complete or absent);
* ``DIR/summary.csv`` and ``DIR/summary.json``: a row per pair (status, error, attempts, wall time,
  peak memory, final metric per stage, the last stage's folded fraction and smallest Jacobian
  determinant and every stage's transform-check warnings (:mod:`elastix_bridge.transform_check`),
  Dice per label and TRE when the manifest gives labels or points) and the cohort's mean, median and worst;
* ``DIR/failed/<id>.log``: the log of a pair whose last run failed (removed when it completes);
* ``DIR/.batch/``: the maps the workers read, one record per pair (its input hash and the sizes of
  its output files: a complete pair whose inputs are unchanged and whose files are all there is
  skipped when the command is run again, otherwise redone with the reason logged) and the attempts
  per pair.

No id may be one of these names (:data:`~elastix_bridge.batch.manifest.BATCH_NAMES`), and everything
that can be checked is checked before ``DIR`` is created: the dask dependency, the settings, the
manifest, its files, the maps, the memory limit against what a worker needs, and ``DIR`` itself
(inputs inside the folders the batch replaces, a file where a pair's folder goes).

This module is the cohort, on the client; a pair's own work, on its worker, is
:mod:`elastix_bridge.batch.pair`, and the summary :mod:`elastix_bridge.batch.summary`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import psutil
from tqdm import tqdm

from elastix_bridge.batch.manifest import (BATCH_NAMES, ManifestError, Pair, check_pairs, id_problems, pair_hash,
                                           pairs_from_rows, read_manifest)
from elastix_bridge.batch.pair import PairSettings, _write_record, run_pair
from elastix_bridge.batch.summary import write_summary
from elastix_bridge.core.engines import ENGINES
from elastix_bridge.core.files import write_atomically
from elastix_bridge.core.image_io import read_image_geometry
from elastix_bridge.core.output_folder import OutputFolderError, prepare_output_folder
from elastix_bridge.core.parameters import parameter_maps_from_object, read_parameter_file
from elastix_bridge.core.transform_io import transform_parameter_file_text
from elastix_bridge.plan import plan_registration
from elastix_bridge.runtime.memory import format_bytes
from elastix_bridge.validation import check_threads, validate_maps

log = logging.getLogger("elastix_bridge")

#: Resident memory of a worker process before its first registration (itk-elastix, torch, the plugin).
WORKER_BASELINE_BYTES = int(1.3 * 2**30)


@dataclass
class ClusterSize:
    """How a LocalCluster is sized: workers, threads per registration, memory limit per worker (bytes)."""

    workers: int
    threads: int
    memory_limit: int

    @classmethod
    def for_machine(cls, pairs: int, peak_bytes: int, workers: Optional[int] = None,
                    threads: Optional[int] = None, memory_limit: Optional[int] = None,
                    cores: Optional[int] = None, memory: Optional[int] = None) -> "ClusterSize":
        """Workers from the cores and the memory a registration needs; the cores shared among them.

        ``workers = min(pairs, cores // threads, usable memory // (baseline + peak))``; without
        ``threads``, one thread per registration when that gives as many workers as pairs or cores,
        since separate registrations scale better than the threads of one. Memory: 90 % of what is
        available now.
        """
        cores = cores or len(os.sched_getaffinity(0))
        memory = memory or psutil.virtual_memory().available
        need = WORKER_BASELINE_BYTES + max(0, int(peak_bytes))
        by_memory = max(1, int(0.9 * memory) // need)
        if workers is None:
            workers = max(1, min(pairs, cores // (threads or 1), by_memory))
        if threads is None:
            threads = max(1, cores // workers)
        limit = memory_limit or max(need, int(0.9 * memory) // workers)
        return cls(int(workers), int(threads), int(limit))


def _maps(parameter_object) -> list:
    if isinstance(parameter_object, (str, os.PathLike)):
        return read_parameter_file(parameter_object)
    if isinstance(parameter_object, (list, tuple)) and parameter_object and all(
            isinstance(m, (str, os.PathLike)) for m in parameter_object):
        return [m for p in parameter_object for m in read_parameter_file(p)]
    return parameter_maps_from_object(parameter_object)


def _as_pairs(pairs) -> list[Pair]:
    if isinstance(pairs, (str, os.PathLike)):
        return read_manifest(pairs)
    rows = [p for p in pairs]
    if rows and all(isinstance(p, Pair) for p in rows):
        problems = id_problems([p.id for p in rows])
        if problems:
            raise ManifestError("pairs", problems)
        return rows
    return pairs_from_rows([dict(r) for r in rows], os.getcwd(), "pairs")


def _require_dask() -> None:
    """Refuse, with the install fix, where dask.distributed cannot be imported (before anything is created)."""
    try:
        import distributed  # noqa: F401  # deferred: the check itself (dask.distributed is the batch extra)
    except ImportError as error:
        raise ImportError(f"the batch needs dask.distributed, which cannot be imported ({error}); install it with "
                          "pip install \"elastix-bridge[batch]\"") from None


def _setting_problems(engine: str, workers, threads_per_worker, memory_limit, retries, own_cluster: bool) -> list:
    """What is wrong with the run's settings (register_many's arguments, the command's flags)."""
    problems = []
    if engine not in ENGINES:
        problems.append(f"engine {engine!r}: use {', '.join(map(repr, ENGINES[:-1]))} or {ENGINES[-1]!r}")
    for name, value in (("workers (--workers)", workers), ("threads_per_worker (--threads-per-worker)",
                                                            threads_per_worker)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            problems.append(f"{name} {value!r}: give a whole number of at least 1, or leave it out to size it from "
                            "this machine")
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        problems.append(f"retries (--retries) {retries!r}: give how many more times a pair whose worker died is "
                        "tried, 0 or more")
    if memory_limit is not None and (not isinstance(memory_limit, int) or memory_limit <= 0):
        problems.append(f"memory_limit (--memory-limit) {memory_limit!r}: give bytes per worker (e.g. 8G), or leave "
                        "it out to size it from this machine")
    if not own_cluster:
        given = [n for n, v in (("workers (--workers)", workers), ("memory_limit (--memory-limit)", memory_limit))
                 if v is not None]
        if given:
            problems.append(f"{' and '.join(given)} size the LocalCluster the batch starts, not a cluster of your own "
                            "(a client or --scheduler): leave them out, and set them on that cluster's workers")
    return problems


def _check_memory_limit(memory_limit: Optional[int], peak_bytes: int, pair: Pair) -> None:
    """Refuse a worker memory limit below the worker's baseline plus the plan's peak for the maps.

    A lower limit makes the nanny kill every worker before (or while) its first pair runs: each pair
    fails after its retries, or the cluster never starts a worker at all.

    Raises:
        ValueError: the limit, the number needed and where it comes from.
    """
    need = WORKER_BASELINE_BYTES + max(0, int(peak_bytes))
    if memory_limit is not None and memory_limit < need:
        raise ValueError(
            f"memory limit (--memory-limit) {format_bytes(memory_limit)} per worker is below what a worker needs: "
            f"{format_bytes(need)} ({format_bytes(WORKER_BASELINE_BYTES)} for a worker with itk-elastix, torch and "
            f"the plugin loaded, plus {format_bytes(peak_bytes)} the plan estimates for the maps on pair {pair.id}); "
            f"give --memory-limit {math.ceil(need / 2**30 * 10) / 10:g}G or more, or leave it out to size the "
            "workers from this machine's memory")


def output_problems(root: Path, pairs: Sequence[Pair], inputs: Sequence[Path]) -> list:
    """What in ``DIR`` the batch would overwrite or remove that is not its own, before anything is created.

    Refused: ``DIR`` (or a parent) a file; a file where the batch puts a folder (``failed``, ``.batch``,
    a pair's ``DIR/<id>``) or a folder where it writes a file (``summary.*``); a ``DIR/<id>`` that no
    earlier batch wrote (it would be replaced); any input (image, mask, t0, points, map, manifest)
    inside a folder the batch replaces or at a name it writes.
    """
    try:
        prepare_output_folder(root, "-out", create=False)
    except OutputFolderError as error:
        return [str(error)]
    problems = []
    for name in BATCH_NAMES:
        path = root / name
        is_file = name.startswith("summary.")
        if path.exists() and (path.is_dir() if is_file else not path.is_dir()):
            problems.append(f"{path} is a {'folder' if is_file else 'file'}, where the batch writes its own "
                            f"{'file' if is_file else 'folder'}; move it away, or give another -out")
    for pair in pairs:
        path = root / pair.id
        if path.exists() and not path.is_dir():
            problems.append(f"pair {pair.id}: {path} is an existing file, where the batch writes the pair's folder; "
                            "move it away, or give another -out")
        elif path.is_dir() and not (root / ".batch" / "pairs" / f"{pair.id}.json").exists():
            problems.append(f"pair {pair.id}: {path} is a folder this batch did not write (no record in "
                            f"{root / '.batch' / 'pairs'}), and the batch replaces a pair's folder; move it away, or "
                            "give another -out")
    resolved = root.resolve()
    owned = {resolved / p.id: f"pair {p.id}'s folder, which the batch replaces" for p in pairs}
    owned.update({resolved / n: "a name the batch writes" for n in BATCH_NAMES})
    for path in inputs:
        where = next((what for place, what in owned.items()
                      if Path(path).resolve() == place or place in Path(path).resolve().parents), None)
        if where:
            problems.append(f"input {path} lies in {where}; it would be overwritten or removed. Move it out of "
                            f"{root}, or give another -out; the batch never removes an input")
    return problems


def _validate(pairs: Sequence[Pair], maps: Sequence, source: str) -> None:
    """Every problem of the pairs and the maps, at once (ManifestError); nothing has run yet."""
    problems = check_pairs(pairs)
    dimensions = set()
    for pair in pairs:
        with contextlib.suppress(OSError, ValueError):
            dimensions.add(read_image_geometry(pair.fixed).dimension)
    for dimension in sorted(dimensions) or [None]:
        try:
            validate_maps(maps, dimension=dimension, warn=False)
        except ValueError as error:
            problems.append(f"parameter maps ({dimension}D images): {error}" if dimension else str(error))
    if problems:
        raise ManifestError(source, problems)


def _previous(state: Path, pair: Pair, digest: str, root: Path) -> tuple[Optional[dict], str]:
    """The record of a complete, unchanged earlier run of this pair whose files are all there, or None and
    why the pair is registered again ("" when there is nothing to say: a new pair, or one that failed).

    Unchanged: the input hash (files, maps, engine) and every output file's size, as recorded.
    """
    path = state / "pairs" / f"{pair.id}.json"
    if not path.exists():
        return None, ""
    try:
        record = json.loads(path.read_text())
        files = record.get("files") if record.get("status") == "complete" else {}
        if not isinstance(files, dict):
            raise ValueError("no file list")
    except (ValueError, OSError, AttributeError) as error:  # a truncated or hand-edited record
        return None, f"its record {path} cannot be read ({error})"
    if record.get("status") != "complete":
        return None, ""
    if record.get("hash") != digest:
        return None, "its input files, the maps or the engine changed since it was registered"
    folder = root / pair.id
    if not folder.is_dir():
        return None, f"its folder {folder} is missing"
    if not files:
        return None, f"its record {path} lists no output files (written before the batch recorded them)"
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        return None, f"its file(s) {', '.join(missing)} are missing from {folder}"
    changed = [f"{name} ({size} -> {(folder / name).stat().st_size} bytes)" for name, size in files.items()
               if (folder / name).stat().st_size != size]
    if changed:
        return None, f"its file(s) {', '.join(changed)} changed since it was registered"
    return record, ""


def _gpus() -> int:
    """CUDA devices torch sees here (0 without torch or CUDA)."""
    try:
        import torch  # deferred: torch is optional (the impact extra); only a cohort that asks for a GPU looks
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _asks_gpu(maps) -> bool:
    return any(int(v) >= 0 for m in maps for v in m.values("ImpactGPU"))


@contextlib.contextmanager
def _process_state_kept():
    """Restore what a LocalCluster changes in the caller's process: its nannies set the workers' variables
    (``distributed.nanny.pre-spawn-environ``: OMP_NUM_THREADS=1, ...) in ``os.environ`` itself, and the
    "distributed" logger's level."""
    environ, logger = dict(os.environ), logging.getLogger("distributed")
    level = logger.level
    try:
        yield
    finally:
        logger.setLevel(level)
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        os.environ.update(environ)


@contextlib.contextmanager
def _client(client, scheduler: Optional[str], size: Optional[ClusterSize], retries: int, gpus: int):
    """The Dask client to use: the caller's, one for ``scheduler``, or a LocalCluster of ``size``."""
    import dask  # deferred: dask.distributed is the batch extra, checked by _require_dask first
    from distributed import Client, LocalCluster  # deferred: as dask

    if client is not None:
        yield client
        return
    if scheduler:
        with Client(scheduler) as own:
            yield own
        return
    # Registrations are not Dask data: no spilling or pausing on memory (a paused worker would never
    # start its next pair while the allocator keeps the last pair's pages); the nanny still restarts a
    # worker over its limit, and a task whose worker died is tried `retries` more times.
    settings = {"distributed.scheduler.allowed-failures": int(retries),
                "distributed.worker.memory.target": False, "distributed.worker.memory.spill": False,
                "distributed.worker.memory.pause": False, "distributed.worker.memory.terminate": 0.98}
    with dask.config.set(settings), _process_state_kept():
        logging.getLogger("distributed").setLevel(logging.ERROR)  # the in-process scheduler's INFO lines
        cluster = LocalCluster(n_workers=size.workers, threads_per_worker=1, processes=True,
                               memory_limit=size.memory_limit, dashboard_address=":0", silence_logs=logging.ERROR,
                               resources={"GPU": 1} if gpus else None)
        with cluster, Client(cluster) as own:
            yield own


def register_many(pairs, parameter_object, output_directory: str | Path, client=None, *,
                  engine: str = "auto", workers: Optional[int] = None, threads_per_worker: Optional[int] = None,
                  memory_limit: Optional[int] = None, scheduler: Optional[str] = None, force: bool = False,
                  retries: int = 2, progress: Optional[bool] = None) -> list[dict]:
    """Register every pair of a cohort on Dask; the summary records, also written to ``DIR/summary.*``.

    Args:
        pairs: a manifest file (CSV, TSV, JSON lines; :mod:`elastix_bridge.batch.manifest`), or
            :class:`~elastix_bridge.batch.manifest.Pair` objects or dicts with the manifest's columns
            (relative paths from the working directory).
        parameter_object: parameter file(s), ParameterMap(s), dicts or an ``itk.ParameterObject``:
            the maps every pair runs, in order (a chain).
        output_directory: ``DIR``; created if absent.
        client: a ``distributed.Client`` to run on (its cluster's workers, retries and memory
            settings are the caller's). Default: ``scheduler``, else a LocalCluster sized from
            this machine (:class:`ClusterSize`), closed at the end.
        engine: ``"auto"``, ``"elastix"`` or ``"bridge"``, as the command's ``--engine``.
        workers, threads_per_worker, memory_limit: the LocalCluster's workers, each registration's
            threads (``-threads``) and each worker's memory limit in bytes; derived when None.
        scheduler: the address of a running Dask scheduler (``tcp://host:8786``).
        force: redo pairs that are complete and unchanged (otherwise skipped).
        retries: how many more times a pair whose worker process died is tried (LocalCluster).
        progress: a cohort progress bar; default when stderr is a terminal.

    Returns:
        One record per pair in manifest order (see :func:`run_pair`); ``status`` is
        ``"complete"``, ``"skipped"`` (complete and unchanged from an earlier run) or ``"failed"``.

    Raises:
        ImportError: dask.distributed is not installed (with the install command).
        ValueError: a setting out of range (workers or threads below 1, negative retries, a memory
            limit below what a worker needs, LocalCluster sizes with a cluster of your own).
        ManifestError: every problem of the manifest, its files, the maps and ``output_directory``
            (inputs inside it where the batch writes, a file where a pair's folder goes).
        All before anything is created or any pair runs.
    """
    _require_dask()
    own_cluster = client is None and not scheduler
    problems = _setting_problems(engine, workers, threads_per_worker, memory_limit, retries, own_cluster)
    if problems:
        raise ValueError("; ".join(problems))
    if own_cluster:
        threads_per_worker = check_threads(threads_per_worker, "--threads-per-worker", warn=True)  # as -threads
    source = str(pairs) if isinstance(pairs, (str, os.PathLike)) else "pairs"
    inputs = [Path(pairs)] if isinstance(pairs, (str, os.PathLike)) else []
    pairs, maps = _as_pairs(pairs), _maps(parameter_object)
    _validate(pairs, maps, source)
    inputs += [path for p in pairs for path in p.files().values()]
    if isinstance(parameter_object, (str, os.PathLike)):
        inputs.append(Path(parameter_object))
    elif isinstance(parameter_object, (list, tuple)):
        inputs += [Path(m) for m in parameter_object if isinstance(m, (str, os.PathLike))]
    if not os.fspath(output_directory).strip():  # Path("") would be the working folder
        raise ValueError("the output directory (-out) is an empty path (an unset variable?); give the cohort's "
                         "folder (it is created if absent)")
    root = Path(output_directory)
    started = time.time()  # what appears in DIR/<id> after this check is not the batch's (_refuse_foreign_folder)
    problems = output_problems(root, pairs, inputs)
    if problems:
        raise ManifestError(f"output directory {root}", problems)
    # One GPU per worker of our LocalCluster; a cluster of your own places its GPUs itself.
    gpus = _gpus() if own_cluster and _asks_gpu(maps) else 0
    size = None  # a cluster of your own is sized by you
    if own_cluster:
        plan = plan_registration(pairs[0].fixed, pairs[0].moving, maps, pairs[0].fixed_mask, pairs[0].moving_mask,
                                 engine=engine)
        _check_memory_limit(memory_limit, plan.peak_bytes, pairs[0])
        size = ClusterSize.for_machine(len(pairs), plan.peak_bytes, workers if workers else (gpus or None),
                                       threads_per_worker, memory_limit)
    root = prepare_output_folder(root, "-out").resolve()  # the first thing the batch creates
    state = root / ".batch"
    for sub in ("maps", "pairs", "attempts", "tmp"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    texts = [transform_parameter_file_text(m) for m in maps]
    map_files = []
    for k, text in enumerate(texts):
        map_files.append(str(write_atomically(state / "maps" / f"parameters.{k}.txt", lambda f, t=text: f.write(t))))
    settings = PairSettings(str(root), tuple(map_files), engine, size.threads if size else threads_per_worker, gpus,
                            started)
    digest_of = {p.id: pair_hash(p, "".join(texts), {"engine": engine}) for p in pairs}
    records = {}
    todo = []
    for pair in pairs:
        previous, why = (None, "") if force else _previous(state, pair, digest_of[pair.id], root)
        if previous is not None:
            records[pair.id] = dict(previous, status="skipped")
        else:
            if why:
                log.warning("batch: pair %s is registered again: %s", pair.id, why)
            todo.append(pair)
            (state / "attempts" / pair.id).unlink(missing_ok=True)
    try:
        if todo:
            log.info("batch: %d pair(s) to register, %d skipped (complete and unchanged)", len(todo),
                     len(pairs) - len(todo))
            with _client(client, scheduler, size, retries, gpus) as dask_client:
                if dask_client.dashboard_link and client is None:
                    print(f"elastix-bridge batch: Dask dashboard at {dask_client.dashboard_link}", file=sys.stderr)
                records.update(_run(dask_client, todo, settings, digest_of, gpus, state,
                                    sys.stderr.isatty() if progress is None else progress, tqdm))
    finally:  # also when interrupted (the LocalCluster is closed by then): a pair is complete or absent
        shutil.rmtree(state / "tmp", ignore_errors=True)
    ordered = [records[p.id] for p in pairs]
    write_summary(root, ordered)
    return ordered


def _run(client, todo, settings, digest_of, gpus, state, progress, tqdm) -> dict:
    """Submit every pair, collect the records as they finish (a dead worker's pair: failed with the cause)."""
    from distributed import as_completed  # deferred: as dask
    from distributed.scheduler import KilledWorker  # deferred: as dask

    resources = {"GPU": 1} if gpus else None
    futures = {client.submit(run_pair, pair, settings, digest_of[pair.id], key=f"pair-{pair.id}-{uuid.uuid4().hex[:6]}",
                             resources=resources, pure=False): pair for pair in todo}
    records, failed = {}, 0
    bar = tqdm(total=len(futures), unit="pair", desc="cohort", disable=not progress, dynamic_ncols=True)
    try:
        for future in as_completed(futures):
            pair = futures[future]
            try:
                record = future.result()
            except Exception as error:
                attempts_file = state / "attempts" / pair.id
                attempts = len(attempts_file.read_text().splitlines()) if attempts_file.is_file() else 0
                if isinstance(error, KilledWorker):  # the worker process died every time it ran this pair
                    cause = (f"the worker process running it died {attempts} time(s) (a crash of the interpreter, "
                             "e.g. a segmentation fault, or memory exhausted; see the Dask worker logs, and lower "
                             "--workers or raise --memory-limit if it was memory)")
                else:  # the batch's own bookkeeping failed on the worker (e.g. a full disk)
                    cause = f"{type(error).__name__}: {error}"
                record = {"id": pair.id, "status": "failed", "attempts": attempts, "hash": digest_of[pair.id],
                          "error": cause}
                for leftover in (state / "tmp").glob(f"{pair.id}-*"):
                    shutil.rmtree(leftover, ignore_errors=True)
                (state.parent / "failed" / f"{pair.id}.log").unlink(missing_ok=True)  # an earlier run's log
                _write_record(state, record)
            records[pair.id] = record
            failed += record["status"] == "failed"
            bar.update(1)
            running = min(len(futures) - bar.n, len(client.scheduler_info().get("workers", {})) or 1)
            bar.set_postfix(done=bar.n - failed, failed=failed, running=running)
    finally:
        bar.close()
        client.cancel([f for f in futures if not f.done()])  # interrupted: nothing keeps running
    return records
