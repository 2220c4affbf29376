"""The bridge engine against elastix on maps both run: agreement and wall-time ratio (docs/engine.md).

Each case runs the same parameter map with ``engine="elastix"`` (itk-elastix) and ``engine="bridge"``
in one process (warmed up first) and prints the mean distance between the two deformation fields
over the fixed mask (in voxels of the fixed image), the two final metric values (mean of the last
20 iteration rows: each row is a random-sample estimate) and the wall times with their ratio.

Pairs: the real 2D multimodal brain pair of ../shared (with its masks; NCC and Mattes MI) and the
MNI152 T1/T2-like 3D pair of the demo (2 mm, brain mask; Mattes MI). Maps: 3 resolutions, ASGD with
automatic parameter estimation, RandomCoordinate with 2,000 samples, automatic transform
initialisation and scales; rigid (Euler), affine and B-spline. QuasiNewtonLBFGS cases (2D pair, rigid
NCC and affine Mattes MI) use a Full sampler instead, so nothing is random: their final metric is the
last row's value, and the two engines should follow the same path (docs/design.md §E9.4).

    python benchmarks/engine_fidelity.py [--shared ../shared] [--iterations 250] [--only 2D|3D]
                                         [--optimizer AdaptiveStochasticGradientDescent|QuasiNewtonLBFGS]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _map(transform: str, metric: str, dim: int, iterations: int,
         optimizer: str = "AdaptiveStochasticGradientDescent") -> dict:
    pmap = {"Registration": ["MultiResolutionRegistration"], "Metric": [metric], "Transform": [transform],
            "Optimizer": [optimizer], "MaximumNumberOfIterations": [str(iterations)],
            "NumberOfResolutions": ["3"], "ImageSampler": ["RandomCoordinate"], "NumberOfSpatialSamples": ["2000"],
            "NewSamplesEveryIteration": ["true"], "AutomaticTransformInitialization": ["true"],
            "AutomaticScalesEstimation": ["true"], "FinalGridSpacingInPhysicalUnits": ["16" if dim == 2 else "20"],
            "RandomSeed": ["121212"], "WriteResultImage": ["false"]}
    if optimizer == "QuasiNewtonLBFGS":  # deterministic: Full sampler, elastix's default iteration budget
        pmap.update(ImageSampler=["Full"], NewSamplesEveryIteration=["false"], MaximumNumberOfIterations=["100"])
        del pmap["NumberOfSpatialSamples"]
    return pmap


def _run(fixed, moving, masks, pmap, engine, folder):
    import itk

    from elastix_bridge.api import elastix_registration_method

    folder.mkdir(parents=True)
    tic = time.perf_counter()
    _, tp = elastix_registration_method(fixed, moving, parameter_object=pmap, engine=engine,
                                        output_directory=str(folder), fixed_mask=masks[0], moving_mask=masks[1],
                                        log_to_file=True)
    seconds = time.perf_counter() - tic
    field = np.asarray(itk.array_from_image(itk.transformix_deformation_field(moving, tp)), dtype=np.float64)
    tables = [p.read_text().splitlines()[1:] for p in sorted(folder.glob("IterationInfo.0.R*.txt"))]
    last = [rows for rows in tables if rows][-1]  # a level without iterations leaves an empty file
    if pmap["Optimizer"] == ["QuasiNewtonLBFGS"]:  # deterministic: the last main row is the final value
        value = float([r for r in last if "\tMain\t" in r][-1].split("\t")[3])
    else:  # each row is a random-sample estimate
        value = float(np.mean([float(r.split("\t")[1]) for r in last[-20:]]))
    return field, value, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--iterations", type=int, default=250)
    parser.add_argument("--only", choices=["2D", "3D"])
    parser.add_argument("--optimizer", choices=["AdaptiveStochasticGradientDescent", "QuasiNewtonLBFGS"])
    args = parser.parse_args()

    import itk

    from elastix_bridge.runtime import loader
    from elastix_bridge.demo_data import make_demo_pair
    from elastix_bridge.core.image_io import read_mask

    loader.load_plugin()
    pairs = {}
    data = Path(args.shared) / "data" / "elastix-2d-brain"
    if data.is_dir() and args.only != "3D":
        pairs["2D brain"] = (itk.imread(str(data / "fixed.mhd"), itk.F), itk.imread(str(data / "moving.mhd"), itk.F),
                             (read_mask(data / "mask_fixed.mhd"), read_mask(data / "mask_moving.mhd")))
    tmp = Path(tempfile.mkdtemp())
    if args.only != "2D":
        demo = make_demo_pair(tmp / "mni", dimension=3, voxel_size=2.0, seed=0)
        pairs["3D MNI"] = (itk.imread(str(demo["fixed"]), itk.F), itk.imread(str(demo["moving"]), itk.F),
                           (read_mask(demo["fixed_mask"]), None))
    metrics = ("AdvancedMeanSquares", "AdvancedNormalizedCorrelation", "AdvancedMattesMutualInformation")
    rows = []
    for pair_name, (fixed, moving, masks) in pairs.items():
        dim = fixed.GetImageDimension()
        inside = itk.array_from_image(masks[0]) > 0
        voxel = float(np.min(itk.spacing(fixed)))
        # Both pairs are multimodal: mean squares has no meaningful optimum there (elastix itself leaves the
        # image with it), so the comparison uses the multimodal metrics.
        used = metrics[1:] if dim == 2 else metrics[2:]
        cases = [(t, m, "AdaptiveStochasticGradientDescent")
                 for t in ("EulerTransform", "AffineTransform", "BSplineTransform") for m in used]
        if dim == 2:
            cases += [("EulerTransform", metrics[1], "QuasiNewtonLBFGS"),
                      ("AffineTransform", metrics[2], "QuasiNewtonLBFGS")]
        cases = [c for c in cases if args.optimizer in (None, c[2])]
        _run(fixed, moving, masks, _map("EulerTransform", metrics[0], dim, 2), "bridge", tmp / f"warm{dim}")
        for transform, metric, optimizer in cases:
            pmap = _map(transform, metric, dim, args.iterations, optimizer)
            key = f"{pair_name}-{transform}-{metric}-{optimizer}"
            fe, ve, te = _run(fixed, moving, masks, pmap, "elastix", tmp / key / "elastix")
            fb, vb, tb = _run(fixed, moving, masks, pmap, "bridge", tmp / key / "bridge")
            difference = np.linalg.norm(fb - fe, axis=-1)[inside].mean() / voxel
            label = metric if optimizer == "AdaptiveStochasticGradientDescent" else f"{metric} (L-BFGS, Full)"
            rows.append((pair_name, transform, label, difference, ve, vb, te, tb))
            print(f"{pair_name} {transform} {label}: |Δu| {difference:.3f} voxel, metric elastix {ve:.5f} "
                  f"bridge {vb:.5f}, time elastix {te:.1f} s bridge {tb:.1f} s (ratio {tb / te:.1f})", flush=True)
    print("\n| pair | transform | metric | mean |Δu| (voxels) | final metric elastix / bridge | elastix s | bridge s "
          "| ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for pair_name, transform, metric, d, ve, vb, te, tb in rows:
        print(f"| {pair_name} | {transform} | {metric} | {d:.3f} | {ve:.4f} / {vb:.4f} | {te:.1f} | {tb:.1f} "
              f"| {tb / te:.1f} |")


if __name__ == "__main__":
    main()
