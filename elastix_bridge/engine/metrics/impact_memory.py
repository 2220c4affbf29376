"""The memory an Impact metric holds per resolution level, as the memory plan asks it (no torch).

:mod:`elastix_bridge.plan` asks each metric of a map for its ``memory`` hook
(:mod:`elastix_bridge.engine.component_list`); for Impact that is :class:`ImpactMemory`, which reads the
map's ``Impact*`` options and returns, per level, the bytes of its parts:

* **Static** mode: per model and side, the grid resampled at ``ImpactVoxelSize`` (points, values, the
  float32 image), and per selected layer the feature map and its interpolation coefficients;
* **Jacobian** mode: per sample the patch points and values, the model inputs, what autograd keeps of
  the transform and the moving interpolation (``derivative_bytes`` per moving patch point), the model
  outputs, and the model's own activations when a probe measured them.

A model's channels and output scale come from a probe (:mod:`elastix_bridge.runtime.model_probe`); an
unknown model counts one channel at full size and makes the estimate a lower bound. Sources: the
metric's own buffers in :mod:`elastix_bridge.engine.metrics.impact` (docs/design.md §I5, §I6).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from elastix_bridge.core.impact_parameters import ImpactLevelConfig, ModelConfig, impact_levels
from elastix_bridge.core.parameters import ParameterMap
from elastix_bridge.runtime.model_probe import ModelProbe

F32, F64 = 4, 8


@dataclass(frozen=True)
class FeatureMapPlan:
    """One selected layer of one model at one level.

    Attributes:
        side: ``"fixed"`` or ``"moving"``.
        model: the ``ImpactModelsPath`` entry.
        channels: feature channels F; None when unknown (counted as 1).
        size: voxels per axis, ITK order: the whole map (Static) or one sample's output (Jacobian).
    """

    side: str
    model: str
    channels: Optional[int]
    size: tuple

    @property
    def voxels(self) -> int:
        return int(np.prod(self.size))


def static_grid(level_size, level_spacing, voxel_size) -> tuple:
    """Size of the grid resampled at ``ImpactVoxelSize`` over the fixed image's extent, as the Static mode
    makes it (:class:`~elastix_bridge.engine.metrics.impact.ImpactMetric`)."""
    extent = np.asarray(level_size) * np.asarray(level_spacing)
    return tuple(int(n) for n in np.maximum(1, np.floor(extent / np.asarray(voxel_size, dtype=float) + 0.5)))


def _level_parts(cfg, dim: int, level_size, level_spacing, samples: int, probes, derivative_bytes: int) -> tuple:
    """``(parts, feature_maps, lower_bound)`` of one Impact level (see :class:`ImpactMemory`)."""
    parts = {"feature maps": 0, "patches": 0, "model outputs": 0, "model activations": 0}
    maps, lower = [], False
    for side, configs in (("fixed", cfg.fixed_models), ("moving", cfg.moving_models)):
        for model in configs:
            probe = probes(model, cfg.mode)
            lower |= probe is None or (cfg.mode == "Jacobian" and probe.activation_bytes is None)
            channels = probe.channels if probe else (None,) * model.n_selected
            if cfg.mode == "Static":
                grid = static_grid(level_size, level_spacing, model.voxel_size)
                g = int(np.prod(grid))
                if side == "fixed" and tuple(grid) == tuple(level_size):  # the fixed image is read as it is
                    parts["feature maps"] += g * F32
                else:
                    coordinates = (2 if side == "moving" else 1) * g * dim * F64  # voxel centres (+ displaced)
                    parts["feature maps"] += coordinates + g * (F64 + F32)  # values read, float32 image
                for j, f in enumerate(channels):
                    scale = probe.scale[j] if probe else (1.0,) * len(grid)
                    size = tuple(max(1, int(n * s)) for n, s in zip(grid, tuple(scale) + (1.0,) * len(grid)))
                    maps.append(FeatureMapPlan(side, model.path, f, size))
                    parts["feature maps"] += (f or 1) * int(np.prod(size)) * 2 * F32  # output, coefficients
            else:
                q = int(np.prod(model.patch_size))
                points = (3 if side == "moving" else 1) * samples * q * dim * F64  # patch, moved, moved copy
                parts["patches"] += points + samples * q * (F64 + model.channels * F32)
                if side == "moving":
                    parts["patches"] += samples * q * derivative_bytes
                    if probe and probe.activation_bytes is not None:
                        parts["model activations"] += samples * probe.activation_bytes
                for j, f in enumerate(channels):
                    scale = probe.scale[j] if probe else (1.0,) * model.dimension
                    size = tuple(max(1, int(n * s)) for n, s in zip(model.patch_size, scale))
                    maps.append(FeatureMapPlan(side, model.path, f, size))
                    parts["model outputs"] += samples * (f or 1) * int(np.prod(size)) * F32
    return {k: v for k, v in parts.items() if v}, maps, lower


class ImpactMemory:
    """The Impact metric's memory per resolution level (the ``memory`` hook of ``(Metric "Impact")``).

    Args:
        pmap: the stage's map; metric_index: the Impact metric's position in ``(Metric ...)``.
        levels: ``NumberOfResolutions``; dimension: of the images.

    Raises:
        elastix_bridge.core.impact_parameters.ImpactParameterError: an invalid ``Impact*`` option.
    """

    def __init__(self, pmap: ParameterMap, metric_index: int, levels: int, dimension: int) -> None:
        self.dimension = dimension
        self.configs: list[ImpactLevelConfig] = impact_levels(pmap, levels, dimension, metric_index=metric_index)

    @property
    def mode(self) -> str:
        """``"Static"`` or ``"Jacobian"`` (of the first level)."""
        return self.configs[0].mode

    def level(self, level: int, fixed_size: tuple, level_spacing: np.ndarray, samples: int,
              probes: Callable[[ModelConfig, str], Optional[ModelProbe]],
              derivative_bytes: int) -> tuple[dict, list, bool]:
        """``(parts, feature_maps, lower_bound)`` of ``level``: bytes per part, the :class:`FeatureMapPlan`
        of each selected layer, and whether a model was not probed (the estimate is then a lower bound).

        Args:
            fixed_size: the level's fixed image size (voxels, ITK order); level_spacing: its spacing (mm).
            samples: the sampler's points per evaluation; probes: ``probes(model config, mode)``.
            derivative_bytes: bytes autograd keeps per moving patch point (Jacobian mode).
        """
        return _level_parts(self.configs[level], self.dimension, fixed_size, level_spacing, samples, probes,
                            derivative_bytes)
