"""A cohort: ``elastix-bridge batch`` against a shell loop of single commands (docs/benchmarks.md, "Cohorts").

N demo-sized 3D pairs (``make_demo_pair`` with seeds 0..N-1: the MNI152 template at 2 mm and a
T2-like moving image with a known deformation, no download), one parameter map (default: the MIND
Static preset). The loop runs ``elastix-bridge -f -m -fMask -p -out -threads <cores>`` once per
pair, each a fresh process that imports itk-elastix and torch and loads the plugin and the models;
the batch runs the same registrations on a LocalCluster (default sizing: the cores shared among the
workers). Printed: wall time of both, the per-process start-up (a process that only imports and
loads what a registration needs), peak RSS per process of the loop and per worker of the batch (the
largest a worker reached during any of its pairs).

    python benchmarks/batch_speed.py [--pairs 8] [--parameters FILE] [--workers W]
"""
from __future__ import annotations

import argparse
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STARTUP = ("import itk, elastix_bridge; itk.ElastixRegistrationMethod; import torch; "
           "from elastix_bridge.runtime.loader import load_plugin; load_plugin()")


def _timed(argv: list) -> float:
    tic = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--parameters", default=str(REPO / "parameter_files" / "impact_mind_static_3d.txt"))
    parser.add_argument("--workers", type=int, help="batch workers (default: the batch's own sizing)")
    args = parser.parse_args()
    from elastix_bridge.demo_data import make_demo_pair

    cores = len(os.sched_getaffinity(0))
    cli = [sys.executable, "-m", "elastix_bridge.cli"]
    with tempfile.TemporaryDirectory(prefix="batch-speed-") as tmp:
        tmp = Path(tmp)
        rows = ["id,fixed,moving,fixed_mask"]
        for i in range(args.pairs):
            p = make_demo_pair(tmp / f"pair{i}", dimension=3, voxel_size=2.0, seed=i)
            rows.append(f"pair{i},{p['fixed']},{p['moving']},{p['fixed_mask']}")
        (tmp / "pairs.csv").write_text("\n".join(rows) + "\n")
        startup = min(_timed([sys.executable, "-c", STARTUP]) for _ in range(2))

        loop = 0.0
        for i, row in enumerate(rows[1:]):
            _, fixed, moving, mask = row.split(",")
            loop += _timed(cli + ["-f", fixed, "-m", moving, "-fMask", mask, "-p", args.parameters,
                                  "-out", str(tmp / "loop" / f"pair{i}"), "-threads", str(cores), "--no-progress"])
        loop_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

        batch_argv = cli + ["batch", str(tmp / "pairs.csv"), "-p", args.parameters, "-out", str(tmp / "batch"),
                            "--no-progress"]
        if args.workers:
            batch_argv += ["--workers", str(args.workers)]
        batch = _timed(batch_argv)
        with open(tmp / "batch" / "summary.csv") as f:
            records = [r for r in csv.DictReader(f) if r["status"] == "complete"]
        walls = [float(r["wall_s"]) for r in records]
        worker_rss = max(float(r["peak_rss_mb"]) for r in records)

    n = args.pairs
    print(f"{n} pairs, {cores} cores, map {Path(args.parameters).name}")
    print(f"per-process start-up (imports, plugin): {startup:.1f} s")
    print(f"shell loop of single commands: {loop:.1f} s ({loop / n:.1f} s per pair), peak RSS per process "
          f"{loop_rss:.0f} MB")
    print(f"elastix-bridge batch:          {batch:.1f} s ({batch / n:.1f} s per pair), peak RSS per worker "
          f"{worker_rss:.0f} MB; a pair in a worker: first {max(walls):.1f} s, median "
          f"{sorted(walls)[len(walls) // 2]:.1f} s")
    print(f"batch saves {loop - batch:.1f} s in all ({(loop - batch) / startup:.1f} start-ups; target: at least "
          f"one) and {(loop - batch) / n:.1f} s per pair (the start-up is {startup:.1f} s)")


if __name__ == "__main__":
    main()
