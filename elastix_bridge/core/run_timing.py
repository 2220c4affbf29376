"""Where a run's seconds go before its first iteration: named phases on the wall clock (``--profile``).

The command turns it on (:func:`start`); the places that load, read or set up something wrap that
step in :func:`phase` (a no-op when off), and the engine marks its first optimizer iteration
(:func:`first_iteration`). :func:`report` then gives the split, from the process's start: the
imports before the command's first line, then each phase in the order it ran. Phases do not nest
(an inner one would be counted twice): each wraps one step of its own.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator, Optional

import psutil

_state: Optional[dict] = None


def start() -> None:
    """Record from now on; the imports so far are counted from the process's start (``psutil`` create time)."""
    global _state
    started = psutil.Process(os.getpid()).create_time()
    now = time.time()
    _state = {"process_start": started, "phases": [("imports", now - started, now)], "first": None}


def stop() -> None:
    """Stop recording (tests, or a second run in the same process)."""
    global _state
    _state = None


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Count the block's wall time under ``name`` when recording; nothing otherwise."""
    if _state is None:
        yield
        return
    tic = time.time()
    try:
        yield
    finally:
        toc = time.time()
        _state["phases"].append((name, toc - tic, toc))


def first_iteration() -> None:
    """Mark the end of the first optimizer iteration of the run (later calls are ignored)."""
    if _state is not None and _state["first"] is None:
        _state["first"] = time.time()


def report() -> Optional[str]:
    """``start-up: imports 0.51 s, itk-elastix module 9.38 s, ...; first iteration done 10.6 s after the process
    started (0.65 s of it in no phase above); whole run 11.3 s``.

    Phases of the same name are summed (e.g. the pyramid of every level); "in no phase" is the time before
    the first iteration that no phase counted (checks, the plan, the engine's own imports). None when not
    recording.
    """
    if _state is None:
        return None
    totals: dict = {}
    for name, seconds, _ in _state["phases"]:
        totals[name] = totals.get(name, 0.0) + seconds
    parts = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in totals.items())
    first = ""
    if _state["first"] is not None:
        until = _state["first"] - _state["process_start"]
        counted = sum(seconds for _, seconds, end in _state["phases"] if end <= _state["first"])
        first = (f"; first iteration done {until:.1f} s after the process started ({until - counted:.2f} s of it in "
                 "no phase above)")
    return f"start-up: {parts}{first}; whole run {time.time() - _state['process_start']:.1f} s"
