"""SIGTERM and SIGHUP handled like Ctrl-C (SIGINT) while the command runs.

``timeout``, Slurm and ``docker stop`` send SIGTERM, a closed terminal SIGHUP; their default
action kills the process at once, leaving a run's partial outputs and its lock file. Inside
:func:`signals_interrupt` they raise :class:`Interrupted`, a ``KeyboardInterrupt``, so that the same
clean-up runs as for Ctrl-C (:func:`elastix_bridge.core.output_folder.owned_output_folder`: the
run's outputs removed, the reason appended to the log, the lock released) and the command exits
with ``128 + signal`` as shells report a process killed by a signal (130 SIGINT, 143 SIGTERM,
129 SIGHUP). The Python API never installs these handlers: a program's own handlers stay its own.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Iterator


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; ``signal_name`` (``"SIGTERM"``) and ``exit_code`` (128 + number)."""

    def __init__(self, signum: int) -> None:
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {self.signal_name}")


def interruption_text(error: KeyboardInterrupt) -> str:
    """``"interrupted by SIGTERM"``; a plain KeyboardInterrupt is Ctrl-C."""
    return str(error) if isinstance(error, Interrupted) else "interrupted by SIGINT (Ctrl-C)"


def exit_code(error: KeyboardInterrupt) -> int:
    """128 + the signal's number (130 for a plain KeyboardInterrupt, SIGINT)."""
    return error.exit_code if isinstance(error, Interrupted) else 128 + signal.SIGINT


@contextlib.contextmanager
def signals_interrupt(signals=(signal.SIGTERM, signal.SIGHUP)) -> Iterator[None]:
    """Within the block, ``signals`` raise :class:`Interrupted`; the previous handlers are restored after it.

    A repeat within 2 s of the last one is ignored, so that it does not cut the clean-up short (which
    takes ~0.1 s); a later one raises again, because C code may swallow the first exception (measured:
    a KeyboardInterrupt raised while ITK's lazy loader imports a module is lost). Does nothing outside
    the main thread (Python runs signal handlers only there).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    last = []  # when the last Interrupted was raised

    def interrupt(signum, frame):
        if not last or time.monotonic() - last[-1] > 2.0:
            last.append(time.monotonic())
            raise Interrupted(signum)

    previous = {number: signal.signal(number, interrupt) for number in signals}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
