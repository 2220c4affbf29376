"""elastix's iteration table: the per-iteration log lines and ``IterationInfo.<e>.R<r>.txt`` files.

Beside :mod:`elastix_bridge.core.transform_io` (the TransformParameters files), this module writes the other
per-stage output elastix leaves in its output folder: one tab-separated row per optimizer iteration,
with the columns and number formats of elastix (docs/design.md §E13; ``Core/Kernel/elxIterationInfo.cxx``,
``Core/Kernel/elxElastixTemplate.hxx``, ``elxQuasiNewtonLBFGS.hxx``). :mod:`elastix_bridge.qc` reads the
files back.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Protocol, Sequence, Union

from elastix_bridge.core.parameters import ParameterMap

__all__ = ["IterationRow", "IterationTable"]

log = logging.getLogger("elastix_bridge")


class IterationRow(Protocol):
    """What a row of the table is made from: an optimizer's iteration record (the engine's optimizers make them).

    Attributes:
        iteration, metric, step_size, gradient_norm, time_ms: every table's columns (``1:ItNr``,
            ``2:Metric``, ``3:StepSize``/``3b:StepSize``/``3:StepLength``, ``4:||Gradient||``, ``Time[ms]``).
        time: ASGD's ``3a:Time``.
        search_direction, line_iteration, search_direction_norm, directional_derivative, phase, wolfe1,
            wolfe2, line_search_stop: QuasiNewtonLBFGS's columns ``1a`` … ``7`` (read only for its table).
    """

    iteration: int
    metric: float
    time: float
    step_size: float
    gradient_norm: float
    time_ms: float
    search_direction: int
    line_iteration: Union[int, str]
    search_direction_norm: float
    directional_derivative: float
    phase: str
    wolfe1: bool
    wolfe2: bool
    line_search_stop: str


class IterationTable:
    """elastix's iteration table: log lines and ``IterationInfo.<e>.R<r>.txt`` (docs/design.md §E13).

    Columns as elastix writes them: ASGD ``3a:Time 3b:StepSize``, the other gradient descents
    ``3:StepSize``, QuasiNewtonLBFGS ``1a:SrchDirNr 1b:LineItNr … 7:LinSrchStopCondition``
    (``elxQuasiNewtonLBFGS.hxx``); with several metrics, each metric's value, gradient norm and time
    beside the totals.
    """

    def __init__(self, output_directory: Optional[Path], elastix_level: int, level: int, pmap: ParameterMap,
                 columns: str = "asgd", number_of_metrics: int = 1) -> None:
        """Open the table of one resolution level.

        Args:
            output_directory: folder of ``IterationInfo.<elastix_level>.R<level>.txt``, or None (log only).
            elastix_level: index of the parameter map in the parameter object.
            level: resolution level.
            pmap: the stage's :class:`~elastix_bridge.core.parameters.ParameterMap` (``WriteIterationInfo``).
            columns: the optimizer's column set, its registered ``iteration_columns`` trait
                (``"asgd"``, ``"lbfgs"`` or ``"gradient_descent"``).
            number_of_metrics: more than one adds each metric's value, gradient norm and time.

        Raises:
            ValueError: an unknown column set.
            OSError: the file cannot be created.
        """
        if columns not in ("asgd", "lbfgs", "gradient_descent"):
            raise ValueError(f"unknown iteration columns {columns!r}: expected 'asgd', 'lbfgs' or 'gradient_descent'")
        self.asgd = columns == "asgd"
        self.lbfgs = columns == "lbfgs"
        self.multi = number_of_metrics > 1
        n = range(number_of_metrics) if self.multi else range(0)
        if self.lbfgs:
            columns = (["1:ItNr", "1a:SrchDirNr", "1b:LineItNr", "2:Metric"] + [f"2:Metric{i}" for i in n]
                       + ["3:StepLength"] + [f"4:||Gradient{i}||" for i in n]
                       + ["4a:||Gradient||", "4b:||SearchDir||", "4c:DirGradient", "5:Phase", "6a:Wolfe1",
                          "6b:Wolfe2", "7:LinSrchStopCondition"] + [f"Time{i}[ms]" for i in n] + ["Time[ms]"])
        else:
            columns = (["1:ItNr", "2:Metric"] + [f"2:Metric{i}" for i in n]
                       + (["3a:Time", "3b:StepSize"] if self.asgd else ["3:StepSize"])
                       + [f"4:||Gradient{i}||" for i in n] + ["4:||Gradient||"]
                       + [f"Time{i}[ms]" for i in n] + ["Time[ms]"])
        self.header = "\t".join(columns)
        self.file = None
        self._header_written = False  # elastix prints the header before the level's first row only
        if output_directory is not None and pmap.get("WriteIterationInfo", default=True, type=bool):
            self.file = open(Path(output_directory) / f"IterationInfo.{elastix_level}.R{level}.txt", "w")

    def add(self, r: IterationRow, parts: Sequence[tuple] = ()) -> None:
        """One row from an iteration record and the cost's per-metric ``(value, ‖gradient‖, ms)``."""
        parts = list(parts) if self.multi else []
        if self.lbfgs:
            cells = ([str(r.iteration), str(r.search_direction), str(r.line_iteration), f"{r.metric:.6f}"]
                     + [f"{v:.6f}" for v, _, _ in parts] + [f"{r.step_size:.6f}"]
                     + [f"{g:.6f}" for _, g, _ in parts]
                     + [f"{r.gradient_norm:.6f}", f"{r.search_direction_norm:.6f}", f"{r.directional_derivative:.6f}",
                        r.phase, "true" if r.wolfe1 else "false", "true" if r.wolfe2 else "false",
                        r.line_search_stop] + [f"{ms:.1f}" for _, _, ms in parts] + [f"{r.time_ms:.1f}"])
            self._write("\t".join(cells))
            return
        cells = [str(r.iteration), f"{r.metric:.6f}"] + [f"{v:.6f}" for v, _, _ in parts]
        cells += [f"{r.time:.6f}", f"{r.step_size:.6f}"] if self.asgd else [f"{r.step_size:.6f}"]
        cells += [f"{g:.6f}" for _, g, _ in parts] + [f"{r.gradient_norm:.6f}"]
        cells += [f"{ms:.1f}" for _, _, ms in parts] + [f"{r.time_ms:.1f}"]
        self._write("\t".join(cells))

    def _write(self, row: str) -> None:
        if not self._header_written:  # a level without iterations leaves an empty file, as elastix does
            self._header_written = True
            self._write(self.header)
        log.debug(row)
        if self.file is not None:
            self.file.write(row + "\n")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
