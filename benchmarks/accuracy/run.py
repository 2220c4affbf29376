"""Run the accuracy suite: every (case, method), scored the same way, resumable.

Usage (from the repository root)::

    python -m benchmarks.accuracy.run --out DIR [--quick] [--cases A B ...] [--methods X Y ...]

Writes ``DIR/cases/<case>/`` (generated once), ``DIR/results/<case>/<method>.json`` (one per
pair, written atomically as soon as it is done; a rerun skips a result whose method key and case
key are unchanged), ``DIR/work/<case>/<method>/`` (the methods' own outputs), then
``DIR/table.md``, ``DIR/results.csv`` and ``DIR/accuracy.png`` (see :mod:`.report`).

Scores (synthetic cases; ``mask`` = fixed brain mask = ``fixed_labels > 0``, which is the fixed
head mask of the skull-stripped template):
``err_mean``/``err_median``/``err_p95``/``err_max`` = ``|u_est − u_true|`` in mm in the mask;
``dice_csf``/``dice_gm``/``dice_wm`` (and their mean ``dice_mean``) of the moving labels warped by
the estimated transform (nearest neighbour) vs the fixed labels; ``folded`` = fraction of mask
voxels with ``det(I + ∂u/∂x) ≤ 0``; ``nmi`` of the warped moving image vs the fixed image in the
mask; ``mask_dice`` of the warped moving mask vs the fixed mask. Real pair: ``mask_dice``, ``nmi``
and ``folded`` only. Per run: ``time_s`` (registration wall time, excluding the field
computation), ``peak_mem_mb`` / ``mem_increase_mb`` (PSS summed over the process tree, forked
children included, sampled every 20 ms; increase over the value just before the method).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from elastix_bridge.core.files import write_atomically

from . import cases as cases_mod
from . import methods as methods_mod
from .metrics import (PeakMemory, dice_per_label, displacement_error, folded_fraction, geometry,
                      warp_nearest)

SCORE_VERSION = "2"


def score(case, paths: dict, u: np.ndarray) -> dict:
    """Scores of an estimated field ``u`` ``[z, y, x, D]`` (mm) for one case (see module doc)."""
    import itk

    from elastix_bridge.registration_quality import nmi

    fixed = itk.imread(str(paths["fixed"]), itk.F)
    moving = itk.imread(str(paths["moving"]), itk.F)
    fgeo, mgeo = geometry(fixed), geometry(moving)
    fmask = itk.array_from_image(itk.imread(str(paths["fixed_mask"]), itk.UC)) > 0
    mmask = (itk.array_from_image(itk.imread(str(paths["moving_mask"]), itk.UC)) > 0).astype(
        np.uint8)
    out = {}
    if case.has_truth:
        labels_f = itk.array_from_image(itk.imread(str(paths["fixed_labels"])))
        labels_m = itk.array_from_image(itk.imread(str(paths["moving_labels"])))
        brain = labels_f > 0
        u_true = itk.array_from_image(itk.imread(str(paths["true_displacement"]))).astype(
            np.float64)
        out.update({f"err_{k}": v for k, v in displacement_error(u, u_true, brain).items()})
        warped = warp_nearest(labels_m, mgeo, u, fgeo, order=0)
        dices = dice_per_label(warped, labels_f)
        out.update(dices)
        out["dice_mean"] = float(np.mean(list(dices.values())))
    else:
        brain = fmask
    out["folded"] = folded_fraction(u, fgeo[0], fgeo[2], brain)
    warped_mask = warp_nearest(mmask, mgeo, u, fgeo, order=0)
    out["mask_dice"] = float(2 * (warped_mask.astype(bool) & fmask).sum()
                             / max(1, warped_mask.astype(bool).sum() + fmask.sum()))
    warped_img = warp_nearest(itk.array_from_image(moving), mgeo, u, fgeo, order=1)
    out["nmi"] = float(nmi(itk.array_from_image(fixed), warped_img, mask=fmask))
    return out


def run_one(case, method, paths: dict, out: Path) -> dict:
    """Register, compute the field, score; never raises (failures are recorded)."""
    workdir = out / "work" / case.name / method.name
    if workdir.exists():  # a fresh folder: stale files of an earlier run must not be picked up
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    record = dict(case=case.name, method=method.name, dimension=case.dimension,
                  family=method.family, case_key=case.key(), method_key=method.key(),
                  score_version=SCORE_VERSION, status="ok")
    try:
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            field_fn = method.register(paths, workdir)
            record["time_s"] = time.perf_counter() - t0
        record["peak_mem_mb"] = mem.peak / 2**20
        record["mem_increase_mb"] = mem.increase / 2**20
        u = field_fn()
        record.update(score(case, paths, u))
    except Exception as exc:  # recorded, the suite goes on
        record["status"] = "failed"
        record["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        record["traceback"] = traceback.format_exc()[-4000:]
    return record


def is_current(path: Path, case, method) -> bool:
    """True when ``path`` holds a result for the same case key, method key and score version."""
    if not path.is_file():
        return False
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return (old.get("case_key") == case.key() and old.get("method_key") == method.key()
            and old.get("score_version") == SCORE_VERSION)


def select(items, names, what):
    if not names:
        return list(items)
    known = {i.name for i in items}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {unknown}; known: {sorted(known)}")
    return [i for i in items if i.name in names]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.accuracy.run",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="output folder (resumable)")
    ap.add_argument("--quick", action="store_true",
                    help=f"cases {cases_mod.QUICK}, methods {QUICK_METHODS} (< 5 min)")
    ap.add_argument("--cases", nargs="+", help="case names (default: all)")
    ap.add_argument("--methods", nargs="+", help="method names (default: all)")
    ap.add_argument("--rerun-failed", action="store_true", help="rerun recorded failures")
    ap.add_argument("--list", action="store_true", help="list cases and methods and exit")
    args = ap.parse_args(argv)

    all_cases = cases_mod.all_cases()
    all_methods = methods_mod.methods()
    if args.list:
        for c in all_cases:
            print(f"case   {c.name:22s} {c.dimension}D  {c.note}")
        for m in all_methods:
            print(f"method {m.name:30s} {m.family:8s} dims={m.dims} cases={m.cases or 'all'}")
        return 0
    case_names = args.cases or (list(cases_mod.QUICK) if args.quick else None)
    if args.quick and not args.cases:
        case_names = [n for n in case_names if n in {c.name for c in all_cases}]
    chosen_cases = select(all_cases, case_names, "cases")
    method_names = args.methods or ([m.name for m in all_methods if m.name in QUICK_METHODS]
                                    if args.quick else None)
    chosen_methods = select(all_methods, method_names, "methods")
    usable = []
    for m in chosen_methods:
        missing = [r for r in m.requires if importlib.util.find_spec(r) is None]
        if missing:
            print(f"skip {m.name}: {missing} not installed (pip install -e '.[benchmark]')",
                  file=sys.stderr)
        else:
            usable.append(m)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    case_paths = {}
    for c in tqdm(chosen_cases, desc="cases", unit="case"):
        case_paths[c.name] = c.generate(out)
    jobs = [(c, m) for c in chosen_cases for m in usable if m.applies_to(c)]
    bar = tqdm(jobs, desc="registrations", unit="run")
    for c, m in bar:
        bar.set_postfix_str(f"{c.name} / {m.name}")
        path = out / "results" / c.name / f"{m.name}.json"
        if is_current(path, c, m) and not (
                args.rerun_failed and json.loads(path.read_text()).get("status") != "ok"):
            continue
        record = run_one(c, m, case_paths[c.name], out)
        record["note"] = c.note
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(record, indent=1, default=str)
        write_atomically(path, lambda f: f.write(text))
        if record["status"] != "ok":
            tqdm.write(f"FAILED {c.name} / {m.name}: {record['error']}")

    from . import report

    report.write_all(out, [c.name for c in chosen_cases], [m.name for m in usable],
                     {m.name: m for m in all_methods}, {c.name: c for c in all_cases})
    print(f"wrote {out / 'table.md'}, {out / 'results.csv'}, {out / 'accuracy.png'}")
    return 0


#: Methods of ``--quick`` (the cheap ones: no DIPY, no Jacobian mode).
QUICK_METHODS = ("elastix-mattes-preset", "elastix-affine+mattes-preset", "ants-syn",
                 "impact-static", "affine+impact-static", "affine+impact-mattes")

if __name__ == "__main__":
    sys.exit(main())
