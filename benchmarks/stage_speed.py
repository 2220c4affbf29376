"""Wall time and peak memory of one stage: elastix, the bridge engine and IMPACT on the same map (docs/performance.md).

Every case runs in its own fresh interpreter (so peak RSS is that case's alone and nothing is
warm from another case), imports itk-elastix and the bridge first (not timed), then times one
registration with the same parameter map except for the metric:

* ``elastix MI``: the preset's map with ``AdvancedMattesMutualInformation`` on itk-elastix;
* ``bridge MI``: the same map on the bridge engine (``engine="bridge"``);
* ``Impact Static``: the preset itself (MIND-SSC, Static mode), its feature-map set-up per level
  read from the log ("Initialization of Impact metric took");
* ``Impact Jacobian`` (``--jacobian``; ~2 min on 2 cores): ``impact_mind_jacobian_3d.txt``;
* the Static case with 1 thread, and with a competing CPU-bound process running.

Pairs: the demo's MNI152 T1/T2-like 3D pair at 2 mm (``make_demo_pair``, no download) and, with
``../shared``, the 2D multimodal brain pair with its masks. Threads: ``--threads`` (default 2) for
every case (``number_of_threads``: torch, OpenMP and ITK). The cases run in rounds (``--rounds``,
default 3), each round every case once, in turn: a ratio is taken within one round, whose cases ran
back to back, and its median over the rounds is printed beside the project's goal for it
(docs/performance.md) with the spread (lowest to highest), so that a machine that slowed down for a
while cannot decide a ratio, and shows when it did:

    python benchmarks/stage_speed.py [--shared ../shared] [--threads 2] [--rounds 3] [--jacobian] [--only 2D|3D]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# One case, in a child interpreter: argv[1] is a JSON description; prints one JSON line.
CHILD = r"""
import json, logging, re, resource, sys, time
case = json.loads(sys.argv[1])
import itk
import elastix_bridge
from elastix_bridge.api import elastix_registration_method
from elastix_bridge.core.parameters import read_parameter_file

setups = []
class Grab(logging.Handler):
    def emit(self, record):
        m = re.search(r"Initialization of Impact metric took: (\d+) ms", record.getMessage())
        if m:
            setups.append(int(m.group(1)) / 1000.0)
logger = logging.getLogger("elastix_bridge")
logger.addHandler(Grab()); logger.setLevel(logging.INFO)

fixed = itk.imread(case["fixed"], itk.F)
moving = itk.imread(case["moving"], itk.F)
masks = {k: itk.imread(case[k], itk.UC) for k in ("fixed_mask", "moving_mask") if case.get(k)}
pmap = read_parameter_file(case["parameters"])[0]
for key, value in case["changes"].items():
    pmap[key] = value
tic = time.perf_counter()
elastix_registration_method(fixed, moving, parameter_object=[pmap.to_dict()], engine=case["engine"],
                            number_of_threads=case["threads"], **masks)
wall = time.perf_counter() - tic
print(json.dumps({"wall": wall, "setups": setups, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

MI = {"Metric": ["AdvancedMattesMutualInformation"]}
QUIET = {"WriteResultImage": ["false"]}


def _run(case: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(case)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"case {case['name']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _pairs(args, folder: Path) -> list:
    from elastix_bridge.demo_data import make_demo_pair

    pairs = []
    if args.only in (None, "3D"):
        p = make_demo_pair(folder / "mni3d", dimension=3, voxel_size=2.0)
        pairs.append(("3D MNI 2 mm", {"fixed": str(p["fixed"]), "moving": str(p["moving"]),
                                       "fixed_mask": str(p["fixed_mask"])}, REPO / "parameter_files" / "impact_mind_static_3d.txt",
                      REPO / "parameter_files" / "impact_mind_jacobian_3d.txt"))
    brain = Path(args.shared) / "data" / "elastix-2d-brain"
    if args.only in (None, "2D"):
        if brain.is_dir():
            pairs.append(("2D brain", {"fixed": str(brain / "fixed.mhd"), "moving": str(brain / "moving.mhd"),
                                       "fixed_mask": str(brain / "mask_fixed.mhd"),
                                       "moving_mask": str(brain / "mask_moving.mhd")},
                          REPO / "parameter_files" / "impact_mind_static_2d.txt", None))
        else:
            print(f"(2D brain pair skipped: {brain} is absent)")
    return pairs


@contextlib.contextmanager
def _busy_core():
    """A competing CPU-bound process for the duration of the block."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        busy.kill()
        busy.wait()


def _meets(value: float, target: str) -> bool:
    """Whether ``value`` meets a target written as ``"<= 1.0"`` / ``">= 1.6"`` (a trailing note is ignored)."""
    sign, bound = target.split()[:2]
    return value <= float(bound) if sign == "<=" else value >= float(bound)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", default=str(REPO.parent / "shared"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all cases, alternating (default 3)")
    parser.add_argument("--jacobian", action="store_true", help="also the Jacobian preset (3D, minutes)")
    parser.add_argument("--only", choices=["2D", "3D"])
    args = parser.parse_args()
    ratios: dict = {}  # (pair, what, target) -> one value per round
    with tempfile.TemporaryDirectory() as tmp:
        pairs = _pairs(args, Path(tmp))
        for round_ in range(1, args.rounds + 1):
            print(f"-- round {round_} of {args.rounds}", flush=True)
            for name, images, static_map, jacobian_map in pairs:
                def case(label, parameters, engine, changes, threads=args.threads):
                    result = _run(dict(images, name=label, parameters=str(parameters), engine=engine,
                                       changes={**QUIET, **changes}, threads=threads))
                    print(f"{name:12s} {label:28s} {result['wall']:7.2f} s  peak RSS {result['peak_rss_mb']:6.0f} MB"
                          + (f"  feature maps per level {', '.join(f'{s:.2f}' for s in result['setups'])} s"
                             if result["setups"] else ""), flush=True)
                    return result

                elastix_mi = case("elastix MI", static_map, "elastix", MI)
                bridge_mi = case("bridge MI", static_map, "bridge", MI)
                static = case("Impact Static", static_map, "auto", {})
                static_1 = case("Impact Static, 1 thread", static_map, "auto", {}, threads=1)
                with _busy_core():
                    static_busy = case("Impact Static, busy machine", static_map, "auto", {})
                rows = [
                    ("bridge MI / elastix MI (time)", bridge_mi["wall"] / elastix_mi["wall"], "<= 1.0"),
                    ("Impact Static / elastix MI (time)", static["wall"] / elastix_mi["wall"], "<= 1.0"),
                    ("Static feature maps, slowest level (s)", max(static["setups"] or [0.0]), "<= 0.5 (3D)"),
                    ("Impact Static / elastix MI (peak RSS)", static["peak_rss_mb"] / elastix_mi["peak_rss_mb"],
                     "<= 1.2"),
                    ("Static with a busy core / quiet (time)", static_busy["wall"] / static["wall"], "<= 2.5"),
                    ("Static 1 thread / 2 threads (time)", static_1["wall"] / static["wall"], ">= 1.6"),
                ]
                if args.jacobian and jacobian_map is not None:
                    jac = case("Impact Jacobian", jacobian_map, "auto", {})
                    with _busy_core():
                        jac_busy = case("Impact Jacobian, busy machine", jacobian_map, "auto", {})
                    rows += [("Jacobian preset (s)", jac["wall"], "<= 75"),
                             ("Jacobian peak RSS (GB)", jac["peak_rss_mb"] / 1024, "<= 1.5"),
                             ("Jacobian with a busy core / quiet (time)", jac_busy["wall"] / jac["wall"], "<= 2.5")]
                for what, value, target in rows:
                    ratios.setdefault((name, what, target), []).append(value)
    # Each ratio is taken within one round (its cases ran back to back); the median over rounds decides,
    # the spread shows how much the machine moved between rounds.
    print(f"\n| pair | ratio | median of {args.rounds} | spread (min-max) | target | met |\n|---|---|---|---|---|---|")
    for (name, what, target), values in ratios.items():
        median = statistics.median(values)
        print(f"| {name} | {what} | {median:.2f} | {min(values):.2f}-{max(values):.2f} | {target} | "
              f"{'yes' if _meets(median, target) else 'no'} |")


if __name__ == "__main__":
    main()
