"""The cohort's summary: ``DIR/summary.csv`` and ``DIR/summary.json``, a row per pair and the cohort's
mean, median and worst of every measure (:func:`write_summary`)."""
from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

from elastix_bridge.core.files import write_atomically

__all__ = ["cohort_lines", "write_summary"]


_FIRST = ("id", "status", "error", "attempts", "wall_s", "peak_rss_mb")


def cohort_lines(records: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Mean, median and worst of every measure over the complete (and skipped) pairs.

    Worst is the largest wall time, memory, TRE, folded fraction and metric value (elastix minimises its
    metrics), and the smallest Dice and Jacobian determinant.
    """
    done = [r for r in records if r.get("status") in ("complete", "skipped")]
    columns = [c for c in _columns(records) if c not in ("id", "status", "error", "hash")]
    lines = []
    for name, reduce in (("mean", statistics.fmean), ("median", statistics.median), ("worst", None)):
        warned = sum(1 for r in done if r.get("transform_warnings"))
        line = {"id": f"cohort {name}", "status": f"{len(done)} of {len(records)} registered"
                + (f", {warned} with transform warnings" if warned else "")}
        for column in columns:
            values = [float(r[column]) for r in done if isinstance(r.get(column), (int, float))
                      and math.isfinite(float(r[column]))]
            if values:
                if reduce is not None:
                    line[column] = reduce(values)
                else:
                    line[column] = min(values) if column.startswith(("dice", "jacobian_min")) else max(values)
        lines.append(line)
    return lines


def _columns(records) -> list[str]:
    seen = list(_FIRST)
    for r in records:
        seen += [k for k in r if k not in seen and k != "hash"]
    return seen


def write_summary(root: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """``DIR/summary.csv`` (a row per pair, then the cohort lines) and ``DIR/summary.json``, written atomically."""
    lines = cohort_lines(records)
    columns = _columns(records)

    def csv_text(f):
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in list(records) + lines:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})

    write_atomically(root / "summary.csv", csv_text)
    text = json.dumps({"pairs": [{k: v for k, v in r.items() if k != "hash"} for r in records],
                       "cohort": lines}, indent=1)
    write_atomically(root / "summary.json", lambda f: f.write(text))
