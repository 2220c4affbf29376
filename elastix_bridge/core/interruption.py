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

#: Signals received in :func:`signals_interrupt` whose Interrupted has not yet left the block.
_pending: list = []


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
    a KeyboardInterrupt raised while ITK's lazy loader imports a module is lost). A swallowed one is
    raised again at :func:`raise_if_swallowed` or, at the latest, when the block ends (another error
    leaving the block after a signal becomes the Interrupted too), so the command never exits 0 after a
    signal. Does nothing outside the main thread (Python runs signal handlers only there).

    Raises:
        Interrupted: a signal came; see above.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    last = []  # when the last Interrupted was raised

    def interrupt(signum, frame):
        _pending.append(signum)
        if not last or time.monotonic() - last[-1] > 2.0:
            last.append(time.monotonic())
            raise Interrupted(signum)

    previous = {number: signal.signal(number, interrupt) for number in signals}
    try:
        yield
    except KeyboardInterrupt:
        raise
    except Exception as error:  # e.g. an ITK module left half loaded by the swallowed interrupt
        if _pending:
            raise Interrupted(_pending[-1]) from error
        raise
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        signum = _pending[-1] if _pending else None
        _pending.clear()
    if signum is not None:  # the block ended normally although a signal came: C code swallowed it
        raise Interrupted(signum)


def raise_if_swallowed() -> None:
    """Raise the :class:`Interrupted` of a signal that C code swallowed (measured: ITK's lazy loader).

    Call it only where no interruption can be propagating (not in clean-up code): right after
    the work that may swallow one, so that the command stops there rather than at its end.

    Raises:
        Interrupted: a signal came inside :func:`signals_interrupt` and its exception was lost.
    """
    if _pending:
        raise Interrupted(_pending[-1])
