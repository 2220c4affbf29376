"""Tables and picture of the accuracy suite from ``DIR/results/<case>/<method>.json``.

``table.md``: machine and versions; per method the suite summary (over the cases with ground
truth: mean / median / worst of the per-case mean error, mean p95, mean tissue Dice, mean folded
fraction, wins = cases where it has the lowest mean error, "≤10 %" = cases where its mean error is
within 10 % of that case's best, mean time, mean peak memory); then per case the methods ranked by
mean error (or, for the real pair, by mask Dice). ``results.csv``: one row per (case, method).
``accuracy.png``: per method the per-case mean errors (dots over a box), methods sorted by their
suite mean; and mean time vs mean error per method.
"""
from __future__ import annotations

import csv
import datetime
import importlib.metadata
import json
import os
import platform
from pathlib import Path

import numpy as np

COLUMNS = ["case", "method", "family", "dimension", "status", "err_mean", "err_median", "err_p95",
           "err_max", "dice_csf", "dice_gm", "dice_wm", "dice_mean", "mask_dice", "nmi",
           "folded", "time_s", "peak_mem_mb", "mem_increase_mb", "error"]


def load(out: Path, case_names, method_names) -> list:
    """Result records of the chosen cases and methods that exist."""
    rows = []
    for c in case_names:
        for m in method_names:
            p = out / "results" / c / f"{m}.json"
            if p.is_file():
                rows.append(json.loads(p.read_text()))
    return rows


def machine() -> str:
    """One markdown paragraph: CPU, cores, RAM, Python and library versions, date."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil

        ram = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    except ImportError:  # pragma: no cover
        ram = "?"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    def v(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "absent"
    return (f"Machine: {cpu}, {cores} usable cores, {ram} RAM. Python {platform.python_version()}, "
            f"torch {v('torch')}, itk-elastix {v('itk-elastix')}, antspyx {v('antspyx')}, "
            f"dipy {v('dipy')}, elastix-bridge {v('elastix-bridge')}. "
            f"Date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.")


def _f(x, fmt="{:.2f}"):
    return "—" if x is None or (isinstance(x, float) and not np.isfinite(x)) else fmt.format(x)


def summary(rows: list, method_names) -> list:
    """Per-method summary dicts (see module doc), in ``method_names`` order."""
    ok = [r for r in rows if r.get("status") == "ok"]
    best = {}
    for r in ok:
        if "err_mean" in r:
            best[r["case"]] = min(best.get(r["case"], np.inf), r["err_mean"])
    from .methods import RECOMMENDED

    recommended = {r["case"]: r["err_mean"] for r in ok if r["method"] == RECOMMENDED and "err_mean" in r}
    out = []
    for m in method_names:
        mine = [r for r in rows if r["method"] == m]
        good = [r for r in mine if r.get("status") == "ok"]
        truth = [r for r in good if "err_mean" in r]
        errs = np.array([r["err_mean"] for r in truth])

        def mean(key, rs=good):
            vals = [r[key] for r in rs if r.get(key) is not None]
            return float(np.mean(vals)) if vals else None
        out.append(dict(
            method=m, runs=len(mine), failed=len(mine) - len(good), n_truth=len(truth),
            err_mean=float(errs.mean()) if errs.size else None,
            err_median=float(np.median(errs)) if errs.size else None,
            err_worst=float(errs.max()) if errs.size else None,
            err_p95=mean("err_p95", truth), dice_mean=mean("dice_mean", truth),
            folded=mean("folded"), mask_dice=mean("mask_dice"),
            wins=sum(1 for r in truth if r["err_mean"] <= best[r["case"]] + 1e-12),
            within10=sum(1 for r in truth if r["err_mean"] <= 1.1 * best[r["case"]]),
            time_s=mean("time_s"), peak_mem_mb=mean("peak_mem_mb"),
            mem_increase_mb=mean("mem_increase_mb"),
            # the recommended recipe's mean error on the cases this method has a result for
            recommended_same=(float(np.mean([recommended[r["case"]] for r in truth]))
                              if truth and all(r["case"] in recommended for r in truth) else None)))
    return out


def write_table(out: Path, rows: list, case_names, method_names, methods=None, cases=None):
    """Write ``table.md``."""
    from .methods import RECOMMENDED as RECOMMENDED_NAME

    methods = methods or {}
    cases = cases or {}
    lines = ["# Accuracy suite", "", machine(), "",
             "Errors: |u_est − u_true| in mm inside the fixed brain mask (fixed_labels > 0 = the "
             "fixed head mask of the skull-stripped MNI template). Dice: moving tissue labels "
             "warped by the estimated transform (nearest neighbour) vs fixed labels, mean of "
             "CSF/GM/WM. Folded: fraction of mask voxels with det(I + ∂u/∂x) ≤ 0. Time: "
             "registration wall time; memory: peak PSS (proportional set size: pages shared "
             "with forked children counted once) summed over the process tree during the "
             "registration (increase over the value just before it in parentheses).",
             "",
             "Left out: `impact_totalseg_jacobian_ct_3d.txt` (CT preset, its TorchScript model is "
             "not shipped: placeholder path).", ""]
    filtered = False
    for m in method_names:
        meth = methods.get(m)
        if meth is None or not meth.cases:
            continue
        dims_ok = [c for c in case_names if c in cases and cases[c].dimension in meth.dims]
        skipped = [c for c in dims_ok if not meth.applies_to(cases[c])]
        if skipped:
            filtered = True
            lines.append(f"* `{m}` runs on a declared subset ({len(dims_ok) - len(skipped)} of "
                         f"{len(dims_ok)} cases; time budget): not on {', '.join(skipped)}.")
    if filtered:
        lines.append("")
    lines += ["## Over the suite (cases with ground truth)", "",
              f"`{RECOMMENDED_NAME}` is the recommended recipe; \"{RECOMMENDED_NAME} on the same cases\" is its mean "
              "error on the cases the method ran (the fair comparison for a method run on a subset).", "",
              "| method | runs (failed) | mean err | median | worst | p95 | Dice | folded | wins "
              f"| ≤10 % of best | {RECOMMENDED_NAME} on the same cases | time s | peak MB (+incr.) | mask Dice |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    summ = sorted(summary(rows, method_names),
                  key=lambda s: np.inf if s["err_mean"] is None else s["err_mean"])
    for s in summ:
        if s["runs"] == 0:
            continue
        lines.append(
            f"| {s['method']} | {s['runs']} ({s['failed']}) | {_f(s['err_mean'])} | "
            f"{_f(s['err_median'])} | {_f(s['err_worst'])} | {_f(s['err_p95'])} | "
            f"{_f(s['dice_mean'], '{:.3f}')} | {_f(s['folded'], '{:.2e}')} | {s['wins']} | "
            f"{s['within10']}/{s['n_truth']} | {_f(s['recommended_same'])} | {_f(s['time_s'], '{:.1f}')} | "
            f"{_f(s['peak_mem_mb'], '{:.0f}')} (+{_f(s['mem_increase_mb'], '{:.0f}')}) | "
            f"{_f(s['mask_dice'], '{:.3f}')} |")
    lines += ["", "## Per case", ""]
    for c in case_names:
        mine = [r for r in rows if r["case"] == c]
        if not mine:
            continue
        note = cases[c].note if c in cases else mine[0].get("note", "")
        lines += [f"### {c} ({mine[0]['dimension']}D) — {note}", ""]
        truth = any("err_mean" in r for r in mine)
        key = "err_mean" if truth else "mask_dice"
        sign = 1 if truth else -1
        mine.sort(key=lambda r: (r.get("status") != "ok", sign * r.get(key, np.inf)
                                 if r.get(key) is not None else np.inf))
        if truth:
            lines += ["| rank | method | mean err | p95 | Dice CSF/GM/WM | folded | NMI | time s "
                      "| peak MB |", "|---|---|---|---|---|---|---|---|---|"]
        else:
            lines += ["| rank | method | mask Dice | NMI | folded | time s | peak MB |",
                      "|---|---|---|---|---|---|---|"]
        for i, r in enumerate(mine, 1):
            if r.get("status") != "ok":
                lines.append(f"| — | {r['method']} | failed: {r.get('error', '')[:120]} |")
                continue
            if truth:
                lines.append(
                    f"| {i} | {r['method']} | {_f(r['err_mean'])} | {_f(r['err_p95'])} | "
                    f"{_f(r['dice_csf'], '{:.3f}')}/{_f(r['dice_gm'], '{:.3f}')}/"
                    f"{_f(r['dice_wm'], '{:.3f}')} | {_f(r['folded'], '{:.1e}')} | "
                    f"{_f(r['nmi'], '{:.3f}')} | {_f(r['time_s'], '{:.1f}')} | "
                    f"{_f(r['peak_mem_mb'], '{:.0f}')} |")
            else:
                lines.append(
                    f"| {i} | {r['method']} | {_f(r['mask_dice'], '{:.3f}')} | "
                    f"{_f(r['nmi'], '{:.3f}')} | {_f(r['folded'], '{:.1e}')} | "
                    f"{_f(r['time_s'], '{:.1f}')} | {_f(r['peak_mem_mb'], '{:.0f}')} |")
        lines.append("")
    (out / "table.md").write_text("\n".join(lines) + "\n")


def write_csv(out: Path, rows: list):
    """Write ``results.csv`` (one row per case × method, :data:`COLUMNS`)."""
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in COLUMNS})


def write_plot(out: Path, rows: list, method_names):
    """Write ``accuracy.png`` (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = {m: [r["err_mean"] for r in rows if r["method"] == m and r.get("status") == "ok"
               and "err_mean" in r] for m in method_names}
    per = {m: v for m, v in per.items() if v}
    order = sorted(per, key=lambda m: np.mean(per[m]))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [2, 1]})
    if order:
        ax1.boxplot([per[m] for m in order], showfliers=False)
        rng = np.random.default_rng(0)
        for i, m in enumerate(order, 1):
            ax1.scatter(i + rng.uniform(-0.15, 0.15, len(per[m])), per[m], s=14, alpha=0.7,
                        zorder=3)
        ax1.set_xticks(range(1, len(order) + 1))
        ax1.set_xticklabels(order, rotation=30, ha="right", fontsize=8)
    ax1.set_ylabel("mean displacement error per case (mm)")
    ax1.set_title("per-case mean error (sorted by suite mean)")
    for m in order:
        times = [r["time_s"] for r in rows if r["method"] == m and r.get("status") == "ok"
                 and "err_mean" in r]
        ax2.scatter(np.mean(times), np.mean(per[m]), s=30)
        ax2.annotate(m, (np.mean(times), np.mean(per[m])), fontsize=7)
    ax2.set_xscale("log")
    ax2.set_xlabel("mean registration time (s, log)")
    ax2.set_ylabel("suite mean error (mm)")
    ax2.set_title("time vs error")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)


def write_all(out: Path, case_names, method_names, methods=None, cases=None):
    """Write ``table.md``, ``results.csv`` and ``accuracy.png`` for the chosen cases/methods."""
    rows = load(out, case_names, method_names)
    write_table(out, rows, case_names, method_names, methods, cases)
    write_csv(out, rows)
    write_plot(out, rows, method_names)
