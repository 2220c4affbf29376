"""The ``elastix-bridge`` command: elastix's flags, plus a few bridge commands.

    elastix-bridge -f fixed.mha -m moving.mha -p params.txt -out OUT [-fMask m.mha] [-mMask m.mha] [-t0 TP.txt]
                   [-threads N] [--engine auto|elastix|bridge]
    elastix-bridge build-plugin          compile the IMPACT plugin for the installed torch
    elastix-bridge make-model NAME -o F  write a built-in TorchScript feature model (e.g. mind-ssc-3d)
    elastix-bridge demo --out DIR        register real anatomy (MNI152 from nilearn) with a known deformation

Errors print one message (what failed, why, what to do) without a Python traceback and exit 1.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("elastix_bridge")


def _registration_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="elastix-bridge",
        description="Run an elastix registration; stages with (Metric \"Impact\") run on the bridge engine, "
                    "all others on elastix (itk-elastix). Other commands: build-plugin, make-model, demo.")
    p.add_argument("-f", required=True, metavar="FIXED", help="fixed image")
    p.add_argument("-m", required=True, metavar="MOVING", help="moving image")
    p.add_argument("-p", required=True, action="append", metavar="PARAMS",
                   help="parameter file (.txt or .toml); repeat for a sequence of registrations")
    p.add_argument("-out", required=True, metavar="DIR", help="output directory (created if absent)")
    p.add_argument("-fMask", metavar="MASK", help="fixed mask (non-zero = inside)")
    p.add_argument("-mMask", metavar="MASK", help="moving mask (non-zero = inside)")
    p.add_argument("-t0", metavar="TP", help="initial TransformParameters file (followed through its "
                                             "InitialTransformParameterFileName chain)")
    p.add_argument("-threads", type=int, metavar="N", help="number of threads")
    p.add_argument("-loglevel", choices=["off", "error", "warning", "info"], default="info")
    p.add_argument("--engine", choices=["auto", "elastix", "bridge"], default="auto",
                   help="auto: Impact maps on the bridge engine, the others on elastix (default); "
                        "elastix / bridge: every map on that engine")
    return p


def run_registration(argv) -> int:
    import itk

    from .api import elastix_registration_method
    from .image_io import read_image, read_mask
    from .parameters import read_parameter_file

    args = _registration_parser().parse_args(argv)
    out = Path(args.out)
    for path in args.p:
        if not Path(path).is_file():
            raise FileNotFoundError(f"parameter file (-p) {path} does not exist; check the path")
    parameter_object = [m for path in args.p for m in read_parameter_file(path)]
    fixed, moving = read_image(args.f, "fixed image (-f)"), read_image(args.m, "moving image (-m)")
    fixed_mask = read_mask(args.fMask, "fixed mask (-fMask)") if args.fMask else None
    moving_mask = read_mask(args.mMask, "moving mask (-mMask)") if args.mMask else None
    out.mkdir(parents=True, exist_ok=True)  # only once the inputs are readable
    kwargs = {}
    if args.t0:
        if not Path(args.t0).is_file():
            raise FileNotFoundError(f"initial transform (-t0) {args.t0} does not exist; check the path")
        kwargs["initial_transform_parameter_file_name"] = str(args.t0)
    if args.threads:
        kwargs["number_of_threads"] = args.threads
    console = args.loglevel != "off"
    result, tp = elastix_registration_method(
        fixed, moving, parameter_object=parameter_object,
        fixed_mask=fixed_mask, moving_mask=moving_mask,
        log_to_console=console, output_directory=str(out), log_to_file=True, engine=args.engine, **kwargs)
    print(f"elastix-bridge: wrote {', '.join(sorted(p.name for p in out.iterdir() if not p.name.startswith('.')))} "
          f"to {out}")
    return 0


def run_build_plugin(argv) -> int:
    p = argparse.ArgumentParser(prog="elastix-bridge build-plugin",
                                description="Compile the IMPACT plugin against the installed torch.")
    p.add_argument("--output", help="folder for the plugin (default: the per-torch cache)")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    from . import loader

    path = loader.build_plugin(Path(args.output) if args.output else None, verbose=args.verbose)
    print(f"built {path}")
    return 0


def run_make_model(argv) -> int:
    from .models.mind import RESERVED_MODELS, write_mind_ssc

    p = argparse.ArgumentParser(prog="elastix-bridge make-model",
                                description="Write a built-in TorchScript feature model to a file.")
    p.add_argument("name", choices=sorted(RESERVED_MODELS))
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args(argv)
    dimension = RESERVED_MODELS[args.name][0]
    print(f"wrote {write_mind_ssc(args.output, dimension)}")
    return 0


def run_demo(argv) -> int:
    from .demo import run_demo as demo

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


COMMANDS = {"build-plugin": run_build_plugin, "make-model": run_make_model, "demo": run_demo}


def main(argv=None) -> int:
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
