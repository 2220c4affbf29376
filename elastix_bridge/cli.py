"""The ``elastix-bridge`` command: elastix's flags, plus a few bridge commands.

    elastix-bridge -f fixed.mha -m moving.mha -p params.txt -out OUT [-fMask m.mha] [-mMask m.mha] [-t0 TP.txt]
                   [-threads N] [--engine auto|elastix|bridge] [--qc] [--profile]
    elastix-bridge build-plugin          compile the IMPACT plugin for the installed torch
    elastix-bridge doctor [--json] [--build]  can Impact run here? (exit 1 when not, with the fix)
    elastix-bridge make-model NAME -o F  write a built-in TorchScript feature model (e.g. mind-ssc-3d)
    elastix-bridge model inspect FILE    a model's layers, strides, receptive field and a parameter-map snippet
    elastix-bridge model export F -o O --layers B --dimension D   a network's blocks as a feature model
    elastix-bridge model check MODEL FIXED MOVING   does a model see alignment for this pair of modalities?
                                         (an aligned pair; exit 0 when it does, 1 when not)
    elastix-bridge demo --out DIR        register real anatomy (MNI152 from nilearn) with a known deformation
    elastix-bridge plan -f F -m M -p P   per stage and level: engine, sizes, samples, memory estimate
    elastix-bridge batch MANIFEST -p P -out DIR   a cohort on Dask: a folder per pair, summary.csv, resumable

Flags are matched exactly, as elastix matches them (:class:`ExactParser`). Errors print one message
(what failed, why, what to do) without a Python traceback and exit 1.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Optional, Sequence

from elastix_bridge.batch import register_many  # checks dask.distributed itself, before creating anything
from elastix_bridge.batch.summary import cohort_lines
from elastix_bridge.core import run_timing
from elastix_bridge.core.engines import ENGINES
from elastix_bridge.core.files import check_input_file
from elastix_bridge.core.image_io import read_image_geometry
from elastix_bridge.core.interruption import exit_code, interruption_text, signals_interrupt
from elastix_bridge.core.parameters import read_parameter_file
from elastix_bridge.core.reserved_models import RESERVED_MODELS
from elastix_bridge.demo import run_demo as demo
from elastix_bridge.doctor import collect_report, print_report
from elastix_bridge.file_registration import check_maps_from_headers, register_files
from elastix_bridge.flags import ELASTIX_FLAGS_NOT_RUN, FLAG_RULE, ExactParser
from elastix_bridge.models.alignment_check import check_alignment, parameter_map_options
from elastix_bridge.models.export import export as export_model
from elastix_bridge.models.inspection import inspect_model
from elastix_bridge.plan import plan_registration
from elastix_bridge.runtime import loader
from elastix_bridge.runtime.memory import parse_size

log = logging.getLogger("elastix_bridge")


def _thread_count(text: str) -> int:
    """``-threads`` as an integer; the range is checked by :func:`elastix_bridge.validation.check_threads`."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of threads; give an integer >= 1, "
                                          "or leave -threads out to use every core") from None


def _positive_count(text: str) -> int:
    """An argparse type: a count of at least 1 (``model``'s --channels, --layers; a 0 reaches torch as its own
    "min(): Expected reduction dim" error, a negative one is used as is)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count; give a whole number >= 1 (the default is 1)")
    return value


def registration_parser() -> ExactParser:
    p = ExactParser(
        prog="elastix-bridge", add_help=False, commands=sorted(COMMANDS),
        description="Run an elastix registration; stages with (Metric \"Impact\") run on the bridge engine, "
                    "all others on elastix (itk-elastix). Other commands: build-plugin, doctor, make-model, "
                    "demo, plan, batch, model.",
        epilog=f"The flags are elastix's (Core/Main/elastix.cxx); {FLAG_RULE}; a flag is given once (-p may "
               "repeat). Refused by name: -priority (Windows process priority), -fp/-mp (point sets), "
               "-f0 -f1 ... (multi-image registration).")
    p.add_argument("-h", "-help", "--help", action="help", help="show this message and exit")
    p.add_argument("--version", action="version", version=_version_text(extended=False),
                   help="the versions of elastix-bridge and of the elastix it runs (itk-elastix)")
    p.add_argument("--extended-version", action="version", version=_version_text(extended=True),
                   help="also Python's, ITK's and torch's versions")
    p.add_argument("-f", required=True, metavar="FIXED", help="fixed image")
    p.add_argument("-m", required=True, metavar="MOVING", help="moving image")
    p.add_argument("-p", required=True, action="append", metavar="PARAMS",
                   help="parameter file (.txt or .toml); repeat for a sequence of registrations")
    p.add_argument("-out", required=True, metavar="DIR",
                   help="output directory (created if absent; an empty value is refused); the run locks it, first removes the "
                        "outputs of an earlier run (TransformParameters.*, IterationInfo.*, result.*, elastix.log, "
                        "qc.png; other files are kept), and after a failure removes its own, keeping elastix.log "
                        "with the error. An input (-f, -m, masks, -p, -t0) in DIR under one of those names is "
                        "refused before any work")
    p.add_argument("-fMask", metavar="MASK", help="fixed mask (non-zero = inside)")
    p.add_argument("-mMask", metavar="MASK", help="moving mask (non-zero = inside)")
    p.add_argument("-t0", metavar="TP", help="initial TransformParameters file (followed through its "
                                             "InitialTransformParameterFileName chain)")
    p.add_argument("-threads", type=_thread_count, metavar="N",
                   help="number of threads (>= 1); more than the cores this process may use is lowered to them, "
                        "with a warning")
    p.add_argument("-loglevel", choices=["off", "error", "warning", "info"],
                   help="console log (elastix.log in -out always has everything); default: info, or off "
                        "while progress bars are shown")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar per resolution level (iteration, metric, elapsed); "
                        "default: on when stderr is a terminal")
    p.add_argument("--engine", choices=list(ENGINES), default=ENGINES[0],
                   help="auto: Impact maps on the bridge engine, the others on elastix (default); "
                        "elastix / bridge: every map on that engine")
    p.add_argument("--qc", action="store_true",
                   help="also write qc.png into the output directory: checkerboard, overlay and Jacobian "
                        "determinant (folded voxels) on central slices, metric per iteration (needs matplotlib)")
    p.add_argument("--profile", action="store_true",
                   help="print where the seconds went before the first iteration: imports, itk-elastix's module, "
                        "images, plugin, feature models, pyramid levels, metric set-up")
    return p


def _version_text(extended: bool) -> str:
    """``elastix-bridge X (itk-elastix Y)``; extended: Python's, ITK's and torch's too (package metadata,
    so nothing is imported)."""
    def of(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    text = f"elastix-bridge {of('elastix-bridge')} (itk-elastix {of('itk-elastix')})"
    if extended:
        text += f"\nPython {sys.version.split()[0]}\nITK {of('itk')}\ntorch {of('torch')}"
    return text


def run_registration(argv: Sequence[str]) -> int:
    """``elastix-bridge -f F -m M -p P -out DIR ...``: its flags, then
    :func:`~elastix_bridge.file_registration.register_files`; returns the exit code (0)."""
    args = registration_parser().parse_args(argv)  # flag errors first: they cost no import of itk
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    console = args.loglevel not in ("off", None) or (args.loglevel is None and not progress)
    if args.profile:
        run_timing.start()
        with run_timing.phase("itk-elastix module"):  # itk loads it lazily, on first use, in any run
            import itk  # deferred: itk takes seconds to import; --profile times its elastix module on its own

            itk.ElastixRegistrationMethod  # noqa: B018 (the attribute access is the load)
    try:
        run = register_files(args.f, args.m, args.p, args.out, fixed_mask=args.fMask, moving_mask=args.mMask,
                             initial_transform=args.t0, engine=args.engine, threads=args.threads,
                             log_to_console=console, progress=progress, qc_figure=args.qc,
                             command=" ".join(["elastix-bridge", *map(str, argv)]))
    finally:
        if args.profile:
            print(f"elastix-bridge: {run_timing.report()}", file=sys.stderr)
            run_timing.stop()
    removed = f" (first removed {len(run.removed)} file(s) of an earlier run)" if run.removed else ""
    print(f"elastix-bridge: wrote {', '.join(run.written)} to {run.output_directory}{removed}")
    return 0


def _byte_size(text: str) -> int:
    """``"8G"``, ``"512MiB"``, a number of bytes -> bytes (binary units, as $ELASTIX_BRIDGE_MEMORY_LIMIT)."""
    try:
        return parse_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size; write e.g. 8G or 512MiB") from None


def run_batch(argv: Sequence[str]) -> int:
    p = ExactParser(  # -p, -out: elastix's flags, matched exactly
        prog="elastix-bridge batch",
        description="Register every pair of a manifest (CSV, TSV or JSON lines: id, fixed, moving and optional "
                    "fixed_mask, moving_mask, t0, fixed_labels, moving_labels, fixed_points, moving_points; paths "
                    "relative to the manifest) on Dask: DIR/<id>/ per pair as -out writes it, DIR/summary.csv and "
                    ".json. Running it again skips complete, unchanged pairs.")
    p.add_argument("manifest", help="the cohort's manifest file")
    p.add_argument("-p", required=True, action="append", metavar="PARAMS",
                   help="parameter file; repeat for a sequence of registrations (every pair runs them all)")
    p.add_argument("-out", required=True, metavar="DIR", help="output directory (created if absent)")
    p.add_argument("--engine", choices=list(ENGINES), default=ENGINES[0], help="as for one registration")
    p.add_argument("--workers", type=int, metavar="N", help="LocalCluster worker processes (default: from the "
                   "cores and the memory a registration needs)")
    p.add_argument("--threads-per-worker", type=int, metavar="N",
                   help="threads of each registration (-threads; default: the cores shared among the workers)")
    p.add_argument("--memory-limit", type=_byte_size, metavar="SIZE",
                   help="memory per worker, e.g. 8GB; a worker above it is restarted and its pair retried")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on an existing Dask cluster (tcp://host:8786) instead of a LocalCluster")
    p.add_argument("--retries", type=int, default=2, metavar="N",
                   help="how many more times a pair whose worker process died is tried (default 2)")
    p.add_argument("--force", action="store_true", help="redo complete, unchanged pairs too")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a cohort progress bar (default: on when stderr is a terminal)")
    args = p.parse_args(argv)
    for path in args.p:
        check_input_file(path, "parameter file (-p)")
    records = register_many(args.manifest, args.p, args.out, engine=args.engine, workers=args.workers,
                            threads_per_worker=args.threads_per_worker, memory_limit=args.memory_limit,
                            scheduler=args.scheduler, force=args.force, retries=args.retries, progress=args.progress)
    counts = {s: sum(r["status"] == s for r in records) for s in ("complete", "skipped", "failed")}
    print(f"elastix-bridge batch: {counts['complete']} registered, {counts['skipped']} skipped (unchanged), "
          f"{counts['failed']} failed; summary in {Path(args.out) / 'summary.csv'}")
    for r in records:
        if r["status"] == "failed":
            print(f"  {r['id']}: {r['error']}")
    mean, _, worst = cohort_lines(records)
    for column in ("dice_mean", "tre_mean_mm"):
        if column in mean:
            print(f"  cohort {column}: mean {mean[column]:.4g}, worst {worst[column]:.4g}")
    return 1 if counts["failed"] else 0


def run_build_plugin(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="elastix-bridge build-plugin",
                                description="Compile the IMPACT plugin against the installed torch.")
    p.add_argument("--output", help="folder for the plugin (default: the per-torch cache)")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    path = loader.build_plugin(Path(args.output) if args.output else None, verbose=args.verbose)
    print(f"built {path}")
    return 0


def run_make_model(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="elastix-bridge make-model",
                                description="Write a built-in TorchScript feature model to a file.")
    p.add_argument("name", choices=sorted(RESERVED_MODELS))
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args(argv)
    dimension = RESERVED_MODELS[args.name][0]
    loader.require_torch()
    from elastix_bridge.runtime.mind import write_mind_ssc  # deferred: imports torch; the LibTorch check ran

    print(f"wrote {write_mind_ssc(args.output, dimension)}")
    return 0


def run_model(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="elastix-bridge model",
                                description="Feature models: `inspect FILE` measures what IMPACT needs to know of a "
                                            "model (layers, channels, strides, receptive field, gradients, time) and "
                                            "prints a parameter-map snippet; `export` writes a network's blocks as "
                                            "a feature model and inspects it; `check MODEL FIXED MOVING` says "
                                            "whether the model sees alignment between two modalities (exit 0 when "
                                            "it does, 1 when not).")
    sub = p.add_subparsers(dest="action", required=True)
    inspect = sub.add_parser("inspect", help="measure a model: TorchScript, .pt2, mind-ssc-2d or mind-ssc-3d")
    inspect.add_argument("file", help="model file (.pt TorchScript, .pt2 torch.export) or built-in name")
    inspect.add_argument("--dimension", type=int, choices=[2, 3], help="default: tries 3D, then 2D")
    inspect.add_argument("--channels", type=_positive_count, default=1,
                         help="input channels (ImpactNumberOfChannels; 1)")
    inspect.add_argument("--layers", type=_positive_count, default=1,
                         help="n_layers passed to the model (layers-mask length; 1)")
    export = sub.add_parser("export", help="a TorchScript network's blocks as an IMPACT feature model (.pt); "
                                           "from Python, elastix_bridge.models.export also takes torch.nn.Modules "
                                           "and writes .pt2")
    export.add_argument("file", help="TorchScript model file (scripted or traced)")
    export.add_argument("-o", "--output", required=True, help="the feature model to write (.pt)")
    export.add_argument("--layers", nargs="+", required=True,
                        help="top-level blocks whose outputs are the features: names, or positions in forward's order")
    export.add_argument("--dimension", type=int, choices=[2, 3], required=True)
    export.add_argument("--channels", type=_positive_count, default=1, help="input channels (1)")
    export.add_argument("--normalisation", choices=["none", "zscore", "minmax", "ct"], default="none",
                        help="input normalisation inside the model, from the level statistics (none)")
    export.add_argument("--window", nargs=2, type=float, metavar=("LOW", "HIGH"),
                        help="HU window for --normalisation ct")
    export.add_argument("--reorient", action="store_true",
                        help="show the network every image in the identity orientation (by the direction argument)")
    check = sub.add_parser(
        "check", usage="%(prog)s MODEL FIXED MOVING [options]\n       %(prog)s -p MAP.txt [--level L] [MODEL] FIXED "
                       "MOVING [options]",
        help="does MODEL see alignment between FIXED and MOVING (an ALIGNED pair of two modalities)? The "
                      "moving image is shifted by known amounts along each axis and the IMPACT distance of the "
                      "features is profiled; exit 0 when it is smallest at 0 and rises with |shift|, 1 when not",
        description="Measure the IMPACT distance between FIXED's features and those of MOVING shifted by +-SHIFTS "
                    "mm along each physical axis (Static mode's whole-image features on the model grid, "
                    "linear interpolation) and judge the profile (docs/models.md). Exit 0: the model sees "
                    "alignment for this pair of modalities; 1: it does not (the problem is named), or an error.")
    check.add_argument("images", nargs="+", metavar="MODEL FIXED MOVING",
                       help="the model file (.pt TorchScript, .pt2 torch.export) or mind-ssc-2d / mind-ssc-3d, then "
                            "the fixed image (one modality) and the moving image (the other modality), ALIGNED; "
                            "with -p, MODEL may be left out")
    check.add_argument("-p", dest="parameter_file", metavar="MAP.txt",
                       help="take the model, voxel size, layers mask, channels and distance from an Impact map "
                            "(options given here override it)")
    check.add_argument("--level", type=int, default=0, help="the map's resolution level for -p (0)")
    check.add_argument("--voxel-size", type=float, nargs="+", metavar="MM",
                       help="the model grid's spacing in mm, 1 or D values (ImpactVoxelSize; default: the fixed "
                            "image's spacing)")
    check.add_argument("--layers-mask", help='ImpactLayersMask, e.g. "1" or "01" ("1")')
    check.add_argument("--distance", help="ImpactDistance: L1, L2, NCC, Cosine, L1Cosine, DotProduct or Dice (L2)")
    check.add_argument("--mask", help="fixed mask (non-zero = compared; default: the fixed voxels above its lowest "
                                      "value + 5%% of (99th percentile - lowest))")
    check.add_argument("--shifts", type=float, nargs="+", metavar="MM", default=[1.0, 2.0, 4.0, 8.0],
                       help="shift magnitudes in mm, each applied + and - along every axis (1 2 4 8)")
    check.add_argument("--channels", type=_positive_count, help="input channels (ImpactNumberOfChannels; 1)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    if args.action == "check":
        given = len(args.images)
        if given not in ((2, 3) if args.parameter_file else (3,)):
            takes = "MODEL FIXED MOVING" + (" (or FIXED MOVING with -p)" if args.parameter_file else "")
            check.error(f"model check takes {takes}, got {given} name(s): {' '.join(args.images)}")
        options = {"model": None, "voxel_size": None, "layers_mask": "1", "distance": "L2", "channels": 1}
        if args.parameter_file:
            dimension = read_image_geometry(args.images[-2], "fixed image").dimension
            options.update(parameter_map_options(args.parameter_file, args.level, dimension))
        model = args.images[0] if given == 3 else options["model"]
        for name in ("voxel_size", "layers_mask", "distance", "channels"):
            if getattr(args, name) is not None:
                options[name] = getattr(args, name)
        report = check_alignment(model, args.images[-2], args.images[-1], voxel_size=options["voxel_size"],
                                 layers_mask=options["layers_mask"], distance=options["distance"], mask=args.mask,
                                 shifts=args.shifts, channels=options["channels"])
        print(json.dumps(report.as_dict(), indent=2) if args.json else report.text())
        return 0 if report.sees_alignment else 1
    if args.action == "export":
        report = export_model(args.file, args.layers, args.dimension, args.output, in_channels=args.channels,
                              normalisation=args.normalisation, window=args.window, reorient=args.reorient)
        print(f"wrote {args.output}\n{report.text()}")
        return 0
    print(inspect_model(args.file, dimension=args.dimension, input_channels=args.channels, layers=args.layers).text())
    return 0


def run_demo(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="elastix-bridge demo",
                                description="Register the MNI152 template (shipped by nilearn) to a copy with a "
                                            "known deformation and a changed contrast three ways: elastix's Mattes "
                                            "MI, IMPACT + MIND-SSC, and the recommended recipe (both in one map).")
    p.add_argument("--out", default="demo-out")
    p.add_argument("--dimension", type=int, choices=[2, 3], default=3)
    p.add_argument("--mode", choices=["Static", "Jacobian"], default="Static")
    p.add_argument("--shared", default="../shared",
                   help="the project's shared folder; when it holds the 2D brain pair, that real pair is "
                        "registered too with upstream's IMPACT file and the R1D2 MIND model (default ../shared)")
    args = p.parse_args(argv)
    shared = Path(args.shared)
    has_brain = (shared / "data" / "elastix-2d-brain").is_dir() and (shared / "models" / "R1D2_2D.pt").is_file()
    out = Path(args.out)
    report = demo(out, dimension=args.dimension, mode=args.mode, shared=shared if has_brain else None)
    print(f"{report['pair']}: mean displacement error {report['initial_error_mm']:.2f} mm before registration; "
          "affine then B-spline with")
    for method in report["methods"].values():
        warned = f"  WARNING: {'; '.join(method['transform_warnings'])}" if method["transform_warnings"] else ""
        print(f"  {method['label']:<20} {method['error_mm']:.2f} mm (95th percentile {method['error_p95_mm']:.2f} mm), "
              f"{100 * method['folded_fraction']:.3f} % folded, {method['seconds']:.0f} s{warned}")
    files = " ".join(f"-p {out / f}" for f in report["recommended"]["parameter_files"])
    print(f"recommended recipe ({report['recommended']['name']}), to run on your images: elastix-bridge -f FIXED "
          f"-m MOVING -fMask FIXED_MASK {files} -out OUT")
    for key in [k for k in report if k.startswith("brain_2d")]:
        print(f"{key}: {report[key]}")
    print(f"wrote {out / 'report.json'} and {out / 'demo.png'} in {report['total_seconds']:.0f} s")
    return 0


def run_plan(argv: Sequence[str]) -> int:
    not_planned = ("is a flag of the registration, not of `elastix-bridge plan`, which runs and writes nothing: "
                   "leave it out")
    registration_only = ("-out", "-t0", "-threads", "-loglevel", "--qc", "--progress", "--no-progress")
    p = ExactParser(prog="elastix-bridge plan",
                    refused={**ELASTIX_FLAGS_NOT_RUN, **{flag: not_planned for flag in registration_only}},
                    description="Print, per stage and resolution level, the engine, image sizes, feature maps, "
                                "samples and the memory estimate, against this machine's available memory; runs "
                                "nothing (only the images' headers are read).")
    p.add_argument("-f", required=True, metavar="FIXED", help="fixed image")
    p.add_argument("-m", required=True, metavar="MOVING", help="moving image")
    p.add_argument("-p", required=True, action="append", metavar="PARAMS", help="parameter file; repeat for a chain")
    p.add_argument("-fMask", metavar="MASK", help="fixed mask")
    p.add_argument("-mMask", metavar="MASK", help="moving mask")
    p.add_argument("--engine", choices=list(ENGINES), default=ENGINES[0])
    p.add_argument("--probe-models", action="store_true",
                   help="run each Impact model once on zero patches (needs torch and the plugin) for exact feature "
                        "channels and Jacobian-mode activations; without it only MIND-SSC is known (a lower bound)")
    args = p.parse_args(argv)
    for path, what in ((args.f, "fixed image (-f)"), (args.m, "moving image (-m)"), (args.fMask, "fixed mask (-fMask)"),
                       (args.mMask, "moving mask (-mMask)"), *((q, "parameter file (-p)") for q in args.p)):
        if path is not None:
            check_input_file(path, what)
    maps_by_file = [(path, m) for path in args.p for m in read_parameter_file(path)]
    maps = [m for _, m in maps_by_file]
    # plan refuses what the registration refuses
    geometries = check_maps_from_headers(args.f, args.m, maps_by_file, args.engine)
    plan = plan_registration(geometries[0], geometries[1], maps, args.fMask, args.mMask, args.engine,
                             probe_models=args.probe_models)
    print(plan.format())
    return 0


def run_doctor(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="elastix-bridge doctor",
                                description="Check whether (Metric \"Impact\") can run here: itk-elastix and its lazy "
                                            "IMPACT loader, torch and GPUs, the IMPACT plugin, JIT switches and a "
                                            "native plugin ($ELASTIX_BRIDGE_NATIVE_PLUGIN). Exits 1 when Impact "
                                            "cannot run, saying why and what to do.")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--build", action="store_true", help="build the IMPACT plugin if it is missing or stale")
    args = p.parse_args(argv)
    report = collect_report(build=args.build)
    print_report(report, as_json=args.json)
    return 0 if report["ok"] else 1


COMMANDS = {"build-plugin": run_build_plugin, "make-model": run_make_model, "demo": run_demo, "doctor": run_doctor,
            "plan": run_plan, "batch": run_batch, "model": run_model}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``elastix-bridge`` command; returns the exit code.

    Interrupted by SIGINT, SIGTERM or SIGHUP (:mod:`elastix_bridge.core.interruption`), the run's
    outputs are removed and the lock released first; then, as the process itself (``argv`` None),
    it ends at once with ``os._exit(128 + signal)``: the interpreter's own shutdown (ITK, torch)
    takes seconds that a ``timeout`` or ``docker stop`` grace period does not give.
    """
    as_process = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    command = COMMANDS.get(argv[0]) if argv else None
    try:
        # SIGTERM / SIGHUP (timeout, Slurm, docker stop, a closed terminal) clean up as Ctrl-C does.
        with signals_interrupt((signal.SIGINT, signal.SIGTERM, signal.SIGHUP)):
            return command(argv[1:]) if command else run_registration(argv)
    except KeyboardInterrupt as interruption:
        if command is run_batch:
            what = ("the pairs registered so far are kept, the unfinished ones removed; run the same command again "
                    "to register the rest")
        elif command is None:
            what = ("this run's outputs were removed (the reason is at the end of elastix.log when the run had "
                    "started); run it again to get a result")
        else:
            what = "stopped before it finished"
        print(f"elastix-bridge: {interruption_text(interruption)}; {what}", file=sys.stderr)
        if as_process:
            sys.stdout.flush()
            sys.stderr.flush()
            logging.shutdown()
            os._exit(exit_code(interruption))
        return exit_code(interruption)
    except Exception as error:  # one clear message, no traceback
        text = str(error).strip() or type(error).__name__
        print(f"elastix-bridge: error: {text}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
