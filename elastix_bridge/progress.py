"""Progress bars for long registrations: one tqdm bar per resolution level of a bridge stage.

A bar shows the level's iterations out of ``MaximumNumberOfIterations``, the last metric value
and the elapsed time. Elastix stages report no iterations to Python; they get one bar that shows
the stage's elapsed time, redrawn every 0.1 s while the parent waits for elastix's child process
(:func:`elastix_bridge.runtime.itk_elastix.run_itk_elastix_in_child`). Library calls are quiet unless ``progress=True`` is passed; the command
line shows the bars when its error stream is a terminal (``--progress`` / ``--no-progress``).
"""
from __future__ import annotations

import shutil
import sys
from typing import IO, TYPE_CHECKING, Optional

if TYPE_CHECKING:  # pragma: no cover
    from tqdm.auto import tqdm

    from elastix_bridge.core.parameters import ParameterMap
    from elastix_bridge.engine.optimizers.base import IterationRecord


class StageProgress:
    """``on_iteration(level, record)`` callback of one bridge stage that drives its level bars.

    Args:
        stage: index of the parameter map (shown as ``stage k``).
        parameter_map: the stage's :class:`~elastix_bridge.core.parameters.ParameterMap`, for the
            per-level ``MaximumNumberOfIterations`` (the bar's total; open-ended when absent).
        file: where the bars go (default ``sys.stderr``).
    """

    def __init__(self, stage: int, parameter_map: ParameterMap, file: Optional[IO[str]] = None) -> None:
        self.stage = stage
        self.pmap = parameter_map
        self.file = file or sys.stderr
        self.level = None
        self.bar = None

    def __call__(self, level: int, record: IterationRecord) -> None:
        if level != self.level:
            self.close()
            total = self.pmap.get("MaximumNumberOfIterations", level=level, type=int) \
                if self.pmap.has("MaximumNumberOfIterations") else None
            self.bar = _tqdm()(total=total, desc=f"stage {self.stage} level {level}", unit="it", file=self.file,
                               ncols=_columns(), leave=True)
            self.level = level
        self.bar.set_postfix_str(f"metric {record.metric:.6f}", refresh=False)
        # L-BFGS line-search rows (GenerateLineSearchIterations) are not iterations
        self.bar.update(0 if getattr(record, "phase", "Main") != "Main" else 1)

    def close(self) -> None:
        """Close the open bar (at a level change and at the end of the stage)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _columns() -> int:
    """Terminal width, 100 where the terminal reports none (tqdm would then draw an empty bar)."""
    return min(shutil.get_terminal_size(fallback=(100, 24)).columns, 120)


def elastix_stage_bar(stage: int, file: Optional[IO[str]] = None) -> tqdm:
    """A bar for a stage that runs on elastix: elapsed time only (elastix reports no iterations); its
    ``refresh`` is called at each poll of the stage's child process."""
    return _tqdm()(total=None, desc=f"stage {stage} (elastix)", bar_format="{desc}: {elapsed}",
                   file=file or sys.stderr, ncols=_columns())


def _tqdm() -> type[tqdm]:
    """tqdm's bar class (``tqdm.auto``: a notebook widget in Jupyter, text elsewhere), imported on first use."""
    from tqdm.auto import tqdm  # deferred: tqdm.auto takes ~0.1 s (asyncio, notebook check); only shown bars need it

    return tqdm
