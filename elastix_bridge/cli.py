"""The ``elastix-bridge`` command: elastix's flags, plus a few bridge commands.

    elastix-bridge -f fixed.mha -m moving.mha -p params.txt -out OUT [-fMask m.mha] [-mMask m.mha] [-t0 TP.txt]
                   [-threads N] [--engine auto|elastix|bridge] [--qc]
    elastix-bridge build-plugin          compile the IMPACT plugin for the installed torch
    elastix-bridge doctor [--json] [--build]  can Impact run here? (exit 1 when not, with the fix)
    elastix-bridge make-model NAME -o F  write a built-in TorchScript feature model (e.g. mind-ssc-3d)
    elastix-bridge model inspect FILE    a model's layers, strides, receptive field and a parameter-map snippet
    elastix-bridge model export F -o O --layers B --dimension D   a network's blocks as a feature model
    elastix-bridge demo --out DIR        register real anatomy (MNI152 from nilearn) with a known deformation
    elastix-bridge plan -f F -m M -p P   per stage and level: engine, sizes, samples, memory estimate
    elastix-bridge batch MANIFEST -p P -out DIR   a cohort on Dask: a folder per pair, summary.csv, resumable

Errors print one message (what failed, why, what to do) without a Python traceback and exit 1.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from elastix_bridge.core.parameters import ParameterMap

log = logging.getLogger("elastix_bridge")


def _registration_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="elastix-bridge",
        description="Run an elastix registration; stages with (Metric \"Impact\") run on the bridge engine, "
                    "all others on elastix (itk-elastix). Other commands: build-plugin, doctor, make-model, "
                    "demo, plan, batch, model.")
    p.add_argument("-f", required=True, metavar="FIXED", help="fixed image")
    p.add_argument("-m", required=True, metavar="MOVING", help="moving image")
    p.add_argument("-p", required=True, action="append", metavar="PARAMS",
                   help="parameter file (.txt or .toml); repeat for a sequence of registrations")
    p.add_argument("-out", required=True, metavar="DIR",
                   help="output directory (created if absent); the run locks it, first removes the outputs of an "
                        "earlier run (TransformParameters.*, IterationInfo.*, result.*, elastix.log, qc.png; other "
                        "files are kept), and after a failure removes its own, keeping elastix.log with the error")
    p.add_argument("-fMask", metavar="MASK", help="fixed mask (non-zero = inside)")
    p.add_argument("-mMask", metavar="MASK", help="moving mask (non-zero = inside)")
    p.add_argument("-t0", metavar="TP", help="initial TransformParameters file (followed through its "
                                             "InitialTransformParameterFileName chain)")
    p.add_argument("-threads", type=int, metavar="N", help="number of threads")
    p.add_argument("-loglevel", choices=["off", "error", "warning", "info"],
                   help="console log (elastix.log in -out always has everything); default: info, or off "
                        "while progress bars are shown")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar per resolution level (iteration, metric, elapsed); "
                        "default: on when stderr is a terminal")
    p.add_argument("--engine", choices=["auto", "elastix", "bridge"], default="auto",
                   help="auto: Impact maps on the bridge engine, the others on elastix (default); "
                        "elastix / bridge: every map on that engine")
    p.add_argument("--qc", action="store_true",
                   help="also write qc.png into the output directory: checkerboard, overlay and Jacobian "
                        "determinant (folded voxels) on central slices, metric per iteration (needs matplotlib)")
    return p


def run_registration(argv: Sequence[str]) -> int:
    from elastix_bridge.api import elastix_registration_method
    from elastix_bridge.core.image_io import read_image, read_image_geometry, read_mask
    from elastix_bridge.core.output_folder import check_inputs_outside_outputs, owned_output_folder, prepare_output_folder
    from elastix_bridge.core.parameters import read_parameter_file
    from elastix_bridge.plan import check_resources
    from elastix_bridge.validation import check_threads, validate_images, validate_maps

    args = _registration_parser().parse_args(argv)
    if args.qc:  # before a long registration, not after it
        from elastix_bridge.qc import require_matplotlib

        require_matplotlib()
    out = prepare_output_folder(args.out, "-out", create=False)  # a file: a named error, before any reading
    for path in args.p:
        if not Path(path).is_file():
            raise FileNotFoundError(f"parameter file (-p) {path} does not exist; check the path")
    check_threads(args.threads, "-threads")
    inputs = {"fixed image (-f)": args.f, "moving image (-m)": args.m, "fixed mask (-fMask)": args.fMask,
              "moving mask (-mMask)": args.mMask}
    if args.t0:
        inputs.update(_initial_transform_files(args.t0))
    check_inputs_outside_outputs(out, inputs)
    maps_by_file = [(path, m) for path in args.p for m in read_parameter_file(path)]
    parameter_object = [m for _, m in maps_by_file]
    for pmap in parameter_object:  # elastix's command-line default; itk-elastix's Python default differs
        if not pmap.has("ResultImageFormat"):
            pmap.set("ResultImageFormat", ["mhd"])
    # Every map of the chain, before any pixel is read: the fixed image's header gives the dimension.
    dimension = read_image_geometry(args.f, "fixed image (-f)").dimension
    validate_maps(parameter_object, dimension=dimension, names=[f"-p {path}" for path, _ in maps_by_file],
                  warn=False)  # the request's check logs the warnings, once
    fixed, moving = read_image(args.f, "fixed image (-f)"), read_image(args.m, "moving image (-m)")
    fixed_mask = read_mask(args.fMask, "fixed mask (-fMask)") if args.fMask else None
    moving_mask = read_mask(args.mMask, "moving mask (-mMask)") if args.mMask else None
    validate_images(fixed, moving, fixed_mask, moving_mask)  # named causes before the memory estimate reads them
    check_resources(fixed, moving, parameter_object, fixed_mask, moving_mask, args.engine)
    kwargs = {}
    if args.t0:
        kwargs["initial_transform_parameter_file_name"] = str(args.t0)
    if args.threads is not None:
        kwargs["number_of_threads"] = args.threads
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    console = args.loglevel not in ("off", None) or (args.loglevel is None and not progress)
    # The folder is created only once the inputs are readable, and owned until the QC picture is written.
    with owned_output_folder(out, command=" ".join(["elastix-bridge", *map(str, argv)])) as run:
        result, tp = elastix_registration_method(
            fixed, moving, parameter_object=parameter_object,
            fixed_mask=fixed_mask, moving_mask=moving_mask,
            log_to_console=console, output_directory=str(out), log_to_file=True, engine=args.engine,
            progress=progress, **kwargs)
        cast_results_to_pixel_type(out, parameter_object)
        if args.qc:
            from elastix_bridge.qc import write_qc_figure

            write_qc_figure(fixed, moving, tp, out / "qc.png", output_directory=out)
        written = run.written()
    removed = f" (first removed {len(run.removed)} file(s) of an earlier run)" if run.removed else ""
    print(f"elastix-bridge: wrote {', '.join(written)} to {out}{removed}")
    return 0


def _initial_transform_files(t0) -> dict:
    """``-t0`` and the files of its chain (``{"initial transform (-t0)": path, ...}``), checked to be
    TransformParameters files before any work.

    Raises:
        FileNotFoundError: ``-t0`` or a file of its chain is missing.
        ValueError: a file of the chain is not a TransformParameters file (e.g. a parameter file).
    """
    from elastix_bridge.engine.transforms.initial import chain_from_file

    if not Path(t0).is_file():
        raise FileNotFoundError(f"initial transform (-t0) {t0} does not exist; check the path")
    maps = chain_from_file(t0)
    files = {"initial transform (-t0)": t0}
    for pmap in maps:
        if not pmap.has("TransformParameters") or not pmap.has("Transform"):
            raise ValueError(
                f"initial transform (-t0) {t0}: a file of its chain has no (Transform ...) and (TransformParameters "
                "...) lines, so it is not a TransformParameters file; give a TransformParameters.<k>.txt that "
                "elastix or elastix-bridge wrote (a parameter file for a new registration goes to -p)")
        name = pmap.get("InitialTransformParameterFileName", default="NoInitialTransform")
        if name != "NoInitialTransform":  # earlier files of the chain: inputs too
            named = Path(name) if Path(name).is_absolute() else Path(t0).parent / name
            files[f"initial transform {name} (named by the -t0 chain)"] = named
    return files


def cast_results_to_pixel_type(out: Path, maps: Sequence[ParameterMap]) -> None:
    """Give every ``result.<k>.<fmt>`` the pixel type its map asks, as the elastix command does.

    itk-elastix writes results in the input's pixel type (float here); the elastix command writes
    ``ResultImagePixelType`` (default ``short``) by a C cast: truncation toward zero, here after
    clipping to the type's range (docs/design.md §E8.2).

    Raises:
        ValueError: an unknown ``ResultImagePixelType``.
    """
    import itk
    import numpy as np

    from elastix_bridge.core.elastix_names import RESULT_PIXEL_TYPES
    from elastix_bridge.core.image_io import write_image

    for k, pmap in enumerate(maps):
        name = pmap.get("ResultImagePixelType", default="short")
        if name not in RESULT_PIXEL_TYPES:
            raise ValueError(f"(ResultImagePixelType \"{name}\") in parameter map {k} is not an elastix pixel type; "
                             f"use one of {', '.join(sorted(RESULT_PIXEL_TYPES))}")
        path = out / f"result.{k}.{pmap.get('ResultImageFormat')}"
        dtype = np.dtype(RESULT_PIXEL_TYPES[name])
        if not path.is_file() or dtype == np.float32:
            continue
        image = itk.imread(str(path))
        values = itk.array_from_image(image).astype(np.float64)
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            values = np.trunc(np.clip(values, info.min, info.max))
        cast = itk.image_from_array(values.astype(dtype))
        cast.CopyInformation(image)
        write_image(cast, path)


def _byte_size(text: str) -> int:
    """``"8G"``, ``"512MiB"``, a number of bytes -> bytes (binary units, as $ELASTIX_BRIDGE_MEMORY_LIMIT)."""
    from elastix_bridge.runtime.memory import parse_size

    try:
        return parse_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size; write e.g. 8G or 512MiB") from None


def run_batch(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="elastix-bridge batch",
        description="Register every pair of a manifest (CSV, TSV or JSON lines: id, fixed, moving and optional "
                    "fixed_mask, moving_mask, t0, fixed_labels, moving_labels, fixed_points, moving_points; paths "
                    "relative to the manifest) on Dask: DIR/<id>/ per pair as -out writes it, DIR/summary.csv and "
                    ".json. Running it again skips complete, unchanged pairs.")
    p.add_argument("manifest", help="the cohort's manifest file")
    p.add_argument("-p", required=True, action="append", metavar="PARAMS",
                   help="parameter file; repeat for a sequence of registrations (every pair runs them all)")
    p.add_argument("-out", required=True, metavar="DIR", help="output directory (created if absent)")
    p.add_argument("--engine", choices=["auto", "elastix", "bridge"], default="auto", help="as for one registration")
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
    try:
        from elastix_bridge.batch import register_many
    except ImportError as error:
        raise ImportError(f"elastix-bridge batch needs dask.distributed ({error}); install it with "
                          "pip install \"elastix-bridge[batch]\"") from None
    for path in args.p:
        if not Path(path).is_file():
            raise FileNotFoundError(f"parameter file (-p) {path} does not exist; check the path")
    records = register_many(args.manifest, args.p, args.out, engine=args.engine, workers=args.workers,
                            threads_per_worker=args.threads_per_worker, memory_limit=args.memory_limit,
                            scheduler=args.scheduler, force=args.force, retries=args.retries, progress=args.progress)
    counts = {s: sum(r["status"] == s for r in records) for s in ("complete", "skipped", "failed")}
    print(f"elastix-bridge batch: {counts['complete']} registered, {counts['skipped']} skipped (unchanged), "
          f"{counts['failed']} failed; summary in {Path(args.out) / 'summary.csv'}")
    for r in records:
        if r["status"] == "failed":
            print(f"  {r['id']}: {r['error']}")
    from elastix_bridge.batch.runner import cohort_lines

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
    from elastix_bridge.runtime import loader

    path = loader.build_plugin(Path(args.output) if args.output else None, verbose=args.verbose)
    print(f"built {path}")
    return 0


def run_make_model(argv: Sequence[str]) -> int:
    from elastix_bridge.models.mind import RESERVED_MODELS, write_mind_ssc

    p = argparse.ArgumentParser(prog="elastix-bridge make-model",
                                description="Write a built-in TorchScript feature model to a file.")
    p.add_argument("name", choices=sorted(RESERVED_MODELS))
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args(argv)
    dimension = RESERVED_MODELS[args.name][0]
    print(f"wrote {write_mind_ssc(args.output, dimension)}")
    return 0


def run_model(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="elastix-bridge model",
                                description="Feature models: `inspect FILE` measures what IMPACT needs to know of a "
                                            "model (layers, channels, strides, receptive field, gradients, time) and "
                                            "prints a parameter-map snippet; `export` writes a network's blocks as "
                                            "a feature model and inspects it.")
    sub = p.add_subparsers(dest="action", required=True)
    inspect = sub.add_parser("inspect", help="measure a model: TorchScript, .pt2, mind-ssc-2d or mind-ssc-3d")
    inspect.add_argument("file", help="model file (.pt TorchScript, .pt2 torch.export) or built-in name")
    inspect.add_argument("--dimension", type=int, choices=[2, 3], help="default: tries 3D, then 2D")
    inspect.add_argument("--channels", type=int, default=1, help="input channels (ImpactNumberOfChannels; 1)")
    inspect.add_argument("--layers", type=int, default=1, help="n_layers passed to the model (layers-mask length; 1)")
    export = sub.add_parser("export", help="a TorchScript network's blocks as an IMPACT feature model (.pt); "
                                           "from Python, elastix_bridge.models.export also takes torch.nn.Modules "
                                           "and writes .pt2")
    export.add_argument("file", help="TorchScript model file (scripted or traced)")
    export.add_argument("-o", "--output", required=True, help="the feature model to write (.pt)")
    export.add_argument("--layers", nargs="+", required=True,
                        help="top-level blocks whose outputs are the features: names, or positions in forward's order")
    export.add_argument("--dimension", type=int, choices=[2, 3], required=True)
    export.add_argument("--channels", type=int, default=1, help="input channels (1)")
    export.add_argument("--normalisation", choices=["none", "zscore", "minmax", "ct"], default="none",
                        help="input normalisation inside the model, from the level statistics (none)")
    export.add_argument("--window", nargs=2, type=float, metavar=("LOW", "HIGH"),
                        help="HU window for --normalisation ct")
    export.add_argument("--reorient", action="store_true",
                        help="show the network every image in the identity orientation (by the direction argument)")
    args = p.parse_args(argv)
    if args.action == "export":
        from elastix_bridge.models.export import export as export_model

        report = export_model(args.file, args.layers, args.dimension, args.output, in_channels=args.channels,
                              normalisation=args.normalisation, window=args.window, reorient=args.reorient)
        print(f"wrote {args.output}\n{report.text()}")
        return 0
    from elastix_bridge.models.inspection import inspect_model

    print(inspect_model(args.file, dimension=args.dimension, input_channels=args.channels, layers=args.layers).text())
    return 0


def run_demo(argv: Sequence[str]) -> int:
    from elastix_bridge.demo import run_demo as demo

    p = argparse.ArgumentParser(prog="elastix-bridge demo",
                                description="Register the MNI152 template (shipped by nilearn) to a copy with a "
                                            "known deformation and a changed contrast, with IMPACT + MIND-SSC.")
    p.add_argument("--out", default="demo-out")
    p.add_argument("--dimension", type=int, choices=[2, 3], default=3)
    p.add_argument("--mode", choices=["Static", "Jacobian"], default="Static")
    p.add_argument("--shared", default="../shared",
                   help="the project's shared folder; when it holds the 2D brain pair, that real pair is "
                        "registered too with upstream's IMPACT file and the R1D2 MIND model (default ../shared)")
    args = p.parse_args(argv)
    shared = Path(args.shared)
    has_brain = (shared / "data" / "elastix-2d-brain").is_dir() and (shared / "models" / "R1D2_2D.pt").is_file()
    report = demo(Path(args.out), dimension=args.dimension, mode=args.mode, shared=shared if has_brain else None)
    for key, value in report.items():
        print(f"{key}: {value}")
    return 0


def run_plan(argv: Sequence[str]) -> int:
    from elastix_bridge.core.parameters import read_parameter_file
    from elastix_bridge.plan import plan_registration

    p = argparse.ArgumentParser(prog="elastix-bridge plan",
                                description="Print, per stage and resolution level, the engine, image sizes, feature "
                                            "maps, samples and the memory estimate, against this machine's available "
                                            "memory; runs nothing (only the images' headers are read).")
    p.add_argument("-f", required=True, metavar="FIXED", help="fixed image")
    p.add_argument("-m", required=True, metavar="MOVING", help="moving image")
    p.add_argument("-p", required=True, action="append", metavar="PARAMS", help="parameter file; repeat for a chain")
    p.add_argument("-fMask", metavar="MASK", help="fixed mask")
    p.add_argument("-mMask", metavar="MASK", help="moving mask")
    p.add_argument("--engine", choices=["auto", "elastix", "bridge"], default="auto")
    p.add_argument("--probe-models", action="store_true",
                   help="run each Impact model once on zero patches (needs torch and the plugin) for exact feature "
                        "channels and Jacobian-mode activations; without it only MIND-SSC is known (a lower bound)")
    args = p.parse_args(argv)
    for path, what in ((args.f, "fixed image (-f)"), (args.m, "moving image (-m)"), (args.fMask, "fixed mask (-fMask)"),
                       (args.mMask, "moving mask (-mMask)"), *((q, "parameter file (-p)") for q in args.p)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{what} {path} does not exist; check the path")
    maps = [m for path in args.p for m in read_parameter_file(path)]
    plan = plan_registration(args.f, args.m, maps, args.fMask, args.mMask, args.engine, probe_models=args.probe_models)
    print(plan.format())
    return 0


def run_doctor(argv: Sequence[str]) -> int:
    from elastix_bridge.doctor import collect_report, print_report

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
    """Entry point of the ``elastix-bridge`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    command = COMMANDS.get(argv[0]) if argv else None
    try:
        return command(argv[1:]) if command else run_registration(argv)
    except KeyboardInterrupt:
        print("elastix-bridge: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # one clear message, no traceback
        text = str(error).strip() or type(error).__name__
        print(f"elastix-bridge: error: {text}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
