"""How much memory this process may still use: the cgroup limit or the machine's available memory.

Read from the kernel (no psutil): cgroup v2 ``memory.max`` − ``memory.current`` (or cgroup v1
``memory.limit_in_bytes`` − ``memory.usage_in_bytes``) of this process's cgroup and its parents,
and ``MemAvailable`` in ``/proc/meminfo``; the smallest wins. ``$ELASTIX_BRIDGE_MEMORY_LIMIT``
(e.g. ``512M``, ``2G``, a number of bytes) replaces them all, to plan for another machine or to
test the refusal without allocating memory.
"""
from __future__ import annotations

import ctypes
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import psutil

MEMORY_LIMIT_ENV = "ELASTIX_BRIDGE_MEMORY_LIMIT"
_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}
_NO_LIMIT = 2 ** 60  # cgroup v1 writes "no limit" as a page-rounded 2^63 − 1


@dataclass(frozen=True)
class MemoryBudget:
    """Memory available to this process.

    Attributes:
        bytes: how many bytes may still be allocated.
        source: where the number comes from, for messages (e.g. ``MemAvailable in /proc/meminfo``).
    """

    bytes: int
    source: str


def parse_size(text: str) -> int:
    """``"512M"``, ``"2G"``, ``"1.5GiB"``, ``"1000000"`` → bytes (binary units).

    Raises:
        ValueError: not a size.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
    if not match:
        raise ValueError(f"${MEMORY_LIMIT_ENV}={text!r} is not a size; write e.g. 512M, 2G or a number of bytes")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_bytes(n: float) -> str:
    """Bytes as a short binary-unit text: ``1536`` → ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _read_int(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (cgroup v2: no limit) → None


def _cgroup_budgets(root: Path = Path("/sys/fs/cgroup")) -> list:
    """``(bytes, source)`` of every memory-limited cgroup this process is in (v2 and v1, parents too)."""
    budgets = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return budgets
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and controllers == "":
            base, files = root, ("memory.max", "memory.current")  # v2
        elif "memory" in controllers.split(","):
            base, files = root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes")  # v1
        else:
            continue
        # The cgroup's own folder and its parents; inside a container the path may not be mounted,
        # and the container's own limit is at the mount's root.
        folder = base / path.lstrip("/")
        for candidate in [folder, *folder.parents]:
            if not str(candidate).startswith(str(base)):
                break
            limit, used = _read_int(candidate / files[0]), _read_int(candidate / files[1])
            if limit is not None and limit < _NO_LIMIT:
                budgets.append((max(0, limit - (used or 0)), f"cgroup {candidate / files[0]} minus its usage"))
    return budgets


def available_memory() -> Optional[MemoryBudget]:
    """The memory this process may still allocate, or None where it cannot be read (not Linux).

    Raises:
        ValueError: ``$ELASTIX_BRIDGE_MEMORY_LIMIT`` is not a size.
    """
    if os.environ.get(MEMORY_LIMIT_ENV, "").strip():
        return MemoryBudget(parse_size(os.environ[MEMORY_LIMIT_ENV]), f"${MEMORY_LIMIT_ENV}")
    budgets = _cgroup_budgets()
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                budgets.append((int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"))
    except OSError:
        pass
    if not budgets:
        return None
    return MemoryBudget(*min(budgets))


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc malloc.h
SMALL_THRESHOLD = 1 << 20  # 1 MiB
LARGE_THRESHOLD = 32 << 20  # glibc's own upper bound for its dynamic threshold


def set_mmap_threshold(large_blocks_every_iteration: bool) -> Optional[int]:
    """Choose glibc's mmap threshold for a stage; blocks at least this large get their own mappings.

    glibc's default threshold grows to the size of the last freed large block (up to 32 MiB), after
    which such blocks come from the heap and stay in the process when freed: on the 3D demo pair a
    Static stage's feature maps, pyramids and model temporaries then leave ~120 MB more peak RSS than
    with a fixed 1 MiB threshold, at no cost in time (its iterations allocate only small blocks).
    Impact Jacobian stages allocate patch batches of several MB every iteration: a small threshold
    would map and fault them in each time (2.5x slower), so they get 32 MiB, the heap reuse the
    default reaches anyway (docs/performance.md, "Memory"). Left alone when ``MALLOC_MMAP_THRESHOLD_``
    is set (the user's choice) and off glibc.

    Args:
        large_blocks_every_iteration: whether the stage's iterations allocate blocks of megabytes.

    Returns:
        The threshold in bytes that was set, or None when it was left alone.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return None
    threshold = LARGE_THRESHOLD if large_blocks_every_iteration else SMALL_THRESHOLD
    try:
        libc = ctypes.CDLL("libc.so.6")
        # Free heap above twice the threshold goes back to the kernel, as glibc pairs them itself.
        ok = libc.mallopt(M_MMAP_THRESHOLD, threshold) and libc.mallopt(M_TRIM_THRESHOLD, 2 * threshold)
        return threshold if ok else None
    except (OSError, AttributeError):
        return None


class PeakRSS:
    """Largest resident memory of this process while the block runs (sampled every 20 ms and at the end).

    Attributes:
        start: resident bytes when the block began; peak: the largest; ``megabytes``: peak in MB (2^20 bytes).
    """

    def __enter__(self) -> "PeakRSS":
        self._process, self._stop = psutil.Process(), threading.Event()
        self.start = self.peak = self._process.memory_info().rss

        def sample():
            while not self._stop.is_set():
                self.peak = max(self.peak, self._process.memory_info().rss)
                self._stop.wait(0.02)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def megabytes(self) -> float:
        return self.peak / 2**20
