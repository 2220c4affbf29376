"""Wall time and quality on the real 2D brain pair: bridge (IMPACT Static / Jacobian) vs elastix.

Runs upstream's 2D IMPACT parameter file (absolute model path; Jacobian with ``ImpactPatchSize 7 7``)
on the bridge engine and elastix's default Mattes MI B-spline map on itk-elastix, in one process,
with elastix's Mattes MI on the same map (only the metric changed) as the reference, and
prints the wall time of each registration (itk/torch imports and the plugin build excluded:
everything is warmed up first), the bridge/elastix time ratio, NMI(fixed, result) and the Dice of the
warped moving mask with the fixed mask.

    python benchmarks/brain_2d.py [--shared ../shared]

Needs ../shared (the brain pair and the R1D2 model).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    args = parser.parse_args()
    shared = Path(args.shared)
    data = shared / "data" / "elastix-2d-brain"
    if not data.is_dir():
        raise SystemExit(f"needs {data} (the ../shared folder)")

    import itk

    from elastix_bridge.runtime import loader
    from elastix_bridge.api import elastix_registration_method
    from elastix_bridge.core.image_io import read_mask
    from elastix_bridge.registration_quality import dice, nmi
    from elastix_bridge.demo import upstream_brain_parameter_file
    from elastix_bridge.core.parameters import read_parameter_file
    from elastix_bridge.core.transform_io import to_parameter_object

    loader.load_plugin()
    fixed = itk.imread(str(data / "fixed.mhd"), itk.F)
    moving = itk.imread(str(data / "moving.mhd"), itk.F)
    fmask, mmask = read_mask(data / "mask_fixed.mhd"), read_mask(data / "mask_moving.mhd")
    fixed_mask_array = itk.array_from_image(fmask) > 0

    with tempfile.TemporaryDirectory() as tmp:
        maps = {f"bridge {mode}": read_parameter_file(upstream_brain_parameter_file(shared, Path(tmp), mode))[0]
                for mode in ("Static", "Jacobian")}
        same = maps["bridge Static"].copy()
        for key in [k for k in same.keys() if k.startswith("Impact")]:
            same.remove(key)
        same.set("Metric", ["AdvancedMattesMutualInformation"])
        maps["elastix Mattes MI (same map)"] = to_parameter_object([same])
        default = itk.ParameterObject.New()
        default.AddParameterMap(default.GetDefaultParameterMap("bspline"))
        maps["elastix Mattes MI (default bspline)"] = default

        rows = []
        for name, pmap in maps.items():
            call = elastix_registration_method if name.startswith("bridge") else itk.elastix_registration_method
            tic = time.perf_counter()
            result, tp = call(fixed, moving, parameter_object=pmap, fixed_mask=fmask, moving_mask=mmask)
            seconds = time.perf_counter() - tic
            tp.SetParameter(0, "FinalBSplineInterpolationOrder", "0")
            tp.SetParameter(0, "ResultImagePixelType", "float")
            warped = itk.array_from_image(itk.transformix_filter(itk.cast_image_filter(
                mmask, ttype=(type(mmask), itk.Image[itk.F, 2])), tp)) > 0.5
            rows.append((name, seconds, nmi(fixed, result), dice(warped, fixed_mask_array)))

    reference = rows[2][1]  # elastix on the same map: the ratio the bridge is held against
    print(f"{'registration':38s} {'seconds':>8s} {'ratio':>7s} {'NMI':>7s} {'Dice':>7s}")
    for name, seconds, n, d in rows:
        print(f"{name:38s} {seconds:8.1f} {seconds / reference:7.1f} {n:7.4f} {d:7.4f}")


if __name__ == "__main__":
    main()
