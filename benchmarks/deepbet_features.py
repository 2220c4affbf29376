"""A pretrained network as IMPACT features: deepbet's first block against MIND-SSC and Mattes MI (docs/models.md).

deepbet (MIT licence, on PyPI) ships its brain-extraction LinkNet3D, trained on T1 images, as a traced
TorchScript file. This script exports its ``init`` block (16 channels at 1/4 resolution) with a
z-score input normalisation (``elastix_bridge.models.export``), then registers the demo's MNI152 pair
(T1 fixed, T2-like moving with a known deformation, 2 mm) three times with the same two-level
B-spline map: IMPACT Static with MIND-SSC (the demo's map), the same map with the deepbet features,
and elastix's Mattes MI. Printed: mean displacement error inside the brain mask (mm) and wall time.

    pip download deepbet==1.0.2 --no-deps -d wheels
    python benchmarks/deepbet_features.py wheels/deepbet-1.0.2-py3-none-any.whl
"""
from __future__ import annotations

import sys
import tempfile
import time
import zipfile
from pathlib import Path


def main() -> None:
    import itk
    import numpy as np

    from elastix_bridge.api import elastix_registration_method
    from elastix_bridge.demo import demo_parameter_map, mattes_parameter_map
    from elastix_bridge.demo_data import make_demo_pair
    from elastix_bridge.registration_quality import displacement_error
    from elastix_bridge.models.export import export

    wheel = Path(sys.argv[1])
    with tempfile.TemporaryDirectory(prefix="deepbet-") as tmp:
        tmp = Path(tmp)
        with zipfile.ZipFile(wheel) as archive:
            (tmp / "deepbet.pt").write_bytes(archive.read("data/models/model.pt"))
        report = export(tmp / "deepbet.pt", ["init"], 3, tmp / "deepbet_init.pt", normalisation="zscore")
        print(report.text().split("\n\n")[0])
        pair = make_demo_pair(tmp / "pair", dimension=3, voxel_size=2.0, seed=0)
        fixed, moving = itk.imread(str(pair["fixed"]), itk.F), itk.imread(str(pair["moving"]), itk.F)
        mask = itk.imread(str(pair["fixed_mask"]), itk.UC)
        true_u = itk.imread(str(pair["true_displacement"]))
        inside = itk.array_from_image(mask) > 0
        mind = demo_parameter_map(3, "Static")
        deepbet = dict(mind)
        for level in (0, 1):
            deepbet[f"ImpactModelsPath{level}"] = [str(tmp / "deepbet_init.pt")]
            deepbet[f"ImpactSubsetFeatures{level}"] = ["16"]
        print(f"before: mean error {displacement_error(lambda p: p, true_u, inside)['mean']:.2f} mm")
        for name, pmap in (("IMPACT Static, MIND-SSC", mind), ("IMPACT Static, deepbet init", deepbet),
                           ("elastix Mattes MI", mattes_parameter_map(3))):
            tic = time.perf_counter()
            _, tp = elastix_registration_method(fixed, moving, parameter_object=pmap, fixed_mask=mask)
            seconds = time.perf_counter() - tic
            field = np.asarray(itk.array_from_image(itk.transformix_deformation_field(moving, tp)), dtype=np.float64)
            error = displacement_error(field, true_u, inside)
            print(f"{name:30s} mean error {error['mean']:.2f} mm (95th percentile {error['p95']:.2f}), {seconds:.1f} s")


if __name__ == "__main__":
    main()
