"""IMPACT cost per iteration against the feature model's own cost (docs/benchmarks.md).

For each model (the project's MIND-SSC 2D/3D and, with ../shared, upstream's R1D2 and M730) on
real anatomy (the MNI152 template shipped in nilearn's wheel, T1 fixed / T2-like moving, with a
known deformation; 2D = an axial slice) this measures, in one process and on one device:

* **Jacobian mode**: one value-and-derivative evaluation of the metric (sample validation, patch
  interpolation, fixed forward, moving forward, autograd back to the B-spline parameters) against
  the model's own work on the *same* batch of patches: the moving forward+backward to the input
  (``fwd+bwd``) and the fixed forward that any implementation must add (``+fixed fwd``). The ratio
  ``iteration / (fixed fwd + moving fwd+bwd)`` is the overhead of everything that is not the
  model; the goal is ≤ 1.5 against the moving fwd+bwd alone.
* **Static mode**: the time to build the fixed and moving feature maps of a level (resampling to
  ``ImpactVoxelSize``, tiled inference, interpolator set-up) and one evaluation.

Timings are medians over repeats after a warm-up. Run quietly (no other load) on 2+ cores:

    python benchmarks/impact_overhead.py [--shared ../shared] [--samples 2000] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def _median_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


class _Recorder:
    """Wraps a plugin FeatureModel and keeps the last input it saw (the batch to replay)."""

    def __init__(self, model):
        self.model = model
        self.last = None

    def forward(self, x, n_layers, stats, direction):
        self.last = (x.detach(), n_layers, stats, direction)
        return self.model.forward(x, n_layers, stats, direction)


def _pair(dimension, folder):
    import itk

    from elastix_bridge.demo_data import make_demo_pair
    from elastix_bridge.engine.images.level_images import LevelImage

    paths = make_demo_pair(folder / f"pair{dimension}d", dimension=dimension, voxel_size=2.0 if dimension == 3 else 1.0)
    return (LevelImage.from_itk(itk.imread(str(paths["fixed"]), itk.F)),
            LevelImage.from_itk(itk.imread(str(paths["moving"]), itk.F)))


def _config(mode, path, dim, image_dim, patch, voxel, channels):
    from elastix_bridge.core.impact_parameters import ImpactLevelConfig, ModelConfig

    model = ModelConfig(str(path), dim, 1, tuple(patch), tuple(voxel), (True,))
    return ImpactLevelConfig(level=0, mode=mode, fixed_models=(model,), moving_models=(model,),
                             subset_features=(channels,), pca=(0,), layers_weight=(1.0,), distances=("L2",),
                             gpu=-1, mixed_precision=False, features_map_update_interval=-1,
                             feature_map_directory=None, random_seed=0)


def run_case(name, path, dim, fixed, moving, jac_patch, jac_voxel, static_voxel, samples, repeats, plugin):
    import torch

    from elastix_bridge.runtime import loader
    from elastix_bridge.engine.metrics.impact import ImpactMetric
    from elastix_bridge.engine.samplers import RandomCoordinateSampler
    from elastix_bridge.engine.transforms.bspline import BSplineTransform, grid_for_level

    device = torch.device("cpu")
    image_dim = fixed.geometry.dimension
    transform = BSplineTransform(grid_for_level(fixed.geometry, [10.0] * image_dim, 1.0))
    generator = torch.Generator().manual_seed(0)
    params = (0.5 * torch.randn(transform.number_of_parameters, generator=generator, dtype=torch.float64))
    points = RandomCoordinateSampler(fixed.geometry, None, samples, generator).sample()
    fixed_model = _Recorder(loader.load_feature_model(str(path), device))
    moving_model = _Recorder(loader.load_feature_model(str(path), device))
    row = {"model": name}

    # -- Jacobian mode ------------------------------------------------------------------------
    out = fixed_model.model.forward(torch.zeros((1, 1) + (9,) * dim), 1, torch.zeros(4),
                                    torch.eye(image_dim, dtype=torch.int16))
    channels = out[0].shape[1]
    cfg = _config("Jacobian", path, dim, image_dim, jac_patch, jac_voxel, channels)
    metric = ImpactMetric(cfg, fixed, moving, None, transform, plugin, ([fixed_model], [moving_model]),
                          device, generator)
    metric.initialize(params)

    def iteration():
        # A new points tensor, as with NewSamplesEveryIteration: the metric reuses fixed features
        # only for an unchanged sample set, and the benchmark must not benefit from that.
        p = params.clone().requires_grad_(True)
        value, _ = metric.value(p, points.clone())
        torch.autograd.grad(value, p)

    t_iter = _median_time(iteration, repeats)
    xf, n_layers, fstats, fdir = fixed_model.last
    xm, _, mstats, mdir = moving_model.last

    def fixed_forward():
        with torch.no_grad():
            fixed_model.model.forward(xf, n_layers, fstats, fdir)

    def moving_forward_backward():
        x = xm.clone().requires_grad_(True)
        o = moving_model.model.forward(x, n_layers, mstats, mdir)[0]
        centre = o[(slice(None), slice(None)) + tuple(s // 2 for s in o.shape[2:])]
        torch.autograd.grad(centre, x, torch.ones_like(centre))

    t_fixed = _median_time(fixed_forward, repeats)
    t_fb = _median_time(moving_forward_backward, repeats)
    row.update(batch=tuple(xm.shape), iteration_s=t_iter, fwd_bwd_s=t_fb, fixed_fwd_s=t_fixed,
               ratio_fwd_bwd=t_iter / t_fb, ratio_model=t_iter / (t_fb + t_fixed))

    # -- Static mode --------------------------------------------------------------------------
    patch0 = (0,) * dim
    scfg = _config("Static", path, dim, image_dim, patch0, static_voxel, channels)
    smetric = ImpactMetric(scfg, fixed, moving, None, transform, plugin,
                           ([fixed_model.model], [moving_model.model]), device, generator)
    t_maps = _median_time(lambda: smetric.initialize(params), max(1, repeats // 2))

    def static_iteration():
        p = params.clone().requires_grad_(True)
        value, _ = smetric.value(p, points)
        torch.autograd.grad(value, p)

    row.update(static_maps_s=t_maps, static_iteration_s=_median_time(static_iteration, repeats))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--samples", type=int, default=2000, help="NumberOfSpatialSamples (default 2000)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default=None, help="run only the models whose name contains this text")
    args = parser.parse_args()

    import torch

    from elastix_bridge.runtime import loader
    from elastix_bridge.runtime.mind import mind_model_path

    torch.set_num_threads(max(1, torch.get_num_threads()))
    plugin = loader.load_plugin()
    shared = Path(args.shared) / "models"
    with tempfile.TemporaryDirectory() as tmp, loader.jit_optimization_disabled():
        pairs = {d: _pair(d, Path(tmp)) for d in (2, 3)}
        cases = [("MIND-SSC 2D (mind-ssc-2d)", mind_model_path("mind-ssc-2d"), 2, (7, 7), (1, 1), (1, 1)),
                 ("MIND-SSC 3D (mind-ssc-3d)", mind_model_path("mind-ssc-3d"), 3, (5, 5, 5), (2, 2, 2), (2, 2, 2))]
        if (shared / "R1D2_2D.pt").exists():
            cases.append(("R1D2 2D (upstream MIND)", shared / "R1D2_2D.pt", 2, (7, 7), (1, 1), (1, 1)))
        if (shared / "M730_1_Layers.pt").exists():
            cases.append(("M730 3D (TotalSegmentator, 32 ch)", shared / "M730_1_Layers.pt", 3, (5, 5, 5), (3, 3, 3),
                          (3, 3, 3)))
        rows = []
        for name, path, dim, patch, jvox, svox in cases:
            if args.only and args.only not in name:
                continue
            fixed, moving = pairs[dim]
            rows.append(run_case(name, path, dim, fixed, moving, patch, jvox, svox, args.samples, args.repeats,
                                 plugin))
            r = rows[-1]
            print(f"{r['model']}: batch {r['batch']}; Jacobian iteration {1000 * r['iteration_s']:.1f} ms, "
                  f"model fwd+bwd {1000 * r['fwd_bwd_s']:.1f} ms, fixed fwd {1000 * r['fixed_fwd_s']:.1f} ms; "
                  f"ratio {r['ratio_fwd_bwd']:.2f}x (vs fwd+bwd), {r['ratio_model']:.2f}x (vs all model work); "
                  f"Static maps {r['static_maps_s']:.2f} s, Static iteration {1000 * r['static_iteration_s']:.1f} ms",
                  flush=True)
    print(f"\n{torch.__version__}, {torch.get_num_threads()} threads, {args.samples} samples")
    print("| model | batch | Jacobian iteration | model fwd+bwd | fixed fwd | ratio vs fwd+bwd | ratio vs model work "
          "| Static maps | Static iteration |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {'×'.join(str(s) for s in r['batch'])} | {1000 * r['iteration_s']:.0f} ms "
              f"| {1000 * r['fwd_bwd_s']:.0f} ms | {1000 * r['fixed_fwd_s']:.0f} ms | {r['ratio_fwd_bwd']:.2f}× "
              f"| {r['ratio_model']:.2f}× | {r['static_maps_s']:.2f} s | {1000 * r['static_iteration_s']:.0f} ms |")


if __name__ == "__main__":
    main()
