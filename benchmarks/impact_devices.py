"""IMPACT's model work on each device torch sees: the CPU and every CUDA GPU (``ImpactGPU``).

For each device: the built-in MIND-SSC 3D feature maps of a 2 mm MNI-sized volume (94×116×98, the
Static set-up of one level; float32) and one Jacobian-mode evaluation (value and gradient) of a
small convolutional model at 1000 samples × 7³ patch points on a 64³ volume. Only the model runs
on the device; patch points, interpolation and the gradient back to the transform stay on the CPU
(docs/design.md §I4.4), so the Jacobian figure shows how much of an iteration a GPU can take over.
Medians of 5 after a warm-up:

    python benchmarks/impact_devices.py
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _median(fn, repeats: int = 5) -> float:
    import torch

    fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        tic = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def main() -> None:
    import torch

    from elastix_bridge.core.geometry import ImageGeometry
    from elastix_bridge.engine.images.level_images import LevelImage
    from elastix_bridge.runtime.mind import mind_model_path
    from elastix_bridge.runtime import loader
    from helpers.impact import impact_metric, level_config, model_config

    class Conv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv3d(1, 16, 3, padding=1)
            self.b = torch.nn.Conv3d(16, 16, 3, padding=1)

        def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
            return [torch.relu(self.b(torch.relu(self.a(x))))]

    plugin = loader.load_plugin()
    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    rng = np.random.default_rng(0)
    volume = torch.from_numpy(rng.random((1, 1, 98, 116, 94), dtype=np.float32))
    stats = torch.tensor([0.0, 1.0, 0.5, 0.29])
    direction = torch.eye(3, dtype=torch.int16)
    geo = ImageGeometry((64, 64, 64), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    fixed = LevelImage(geo, rng.random((64, 64, 64)))
    moving = LevelImage(geo, rng.random((64, 64, 64)))
    points = torch.from_numpy(rng.uniform(10, 53, size=(1000, 3)))
    with tempfile.TemporaryDirectory() as tmp, loader.jit_optimization_disabled():
        conv_path = str(Path(tmp) / "conv.pt")
        torch.jit.script(Conv().eval()).save(conv_path)
        cfg = level_config("Jacobian", [model_config(conv_path, 3, (7, 7, 7), (1.0, 1.0, 1.0))])
        print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
        for device in devices:
            mind = loader.load_feature_model(str(mind_model_path("mind-ssc-3d")), torch.device(device))
            x = volume.to(device)
            t_mind = _median(lambda: mind.forward(x, 1, stats, direction))
            model = loader.load_feature_model(conv_path, torch.device(device))
            metric = impact_metric(plugin, cfg, fixed, moving, [model], device=device)
            params = torch.zeros(3, dtype=torch.float64)

            def jacobian():
                p = params.clone().requires_grad_(True)
                value, _ = metric.value(p, points)
                torch.autograd.grad(value, p)

            t_jac = _median(jacobian)
            name = torch.cuda.get_device_name(device) if device != "cpu" else "CPU"
            print(f"{device:7s} {name:28s} MIND-SSC 3D feature maps {t_mind * 1000:8.1f} ms   "
                  f"Jacobian evaluation (1000 × 7³) {t_jac * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
