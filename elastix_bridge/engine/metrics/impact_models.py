"""The IMPACT feature models as the metric calls them: argument convention, checked results, contract probes.

A model runs in the compiled plugin (:mod:`elastix_bridge.runtime.loader`) with upstream's arguments
(the patch or tile, the number of layers, the image statistics and the rounded direction cosines,
docs/design.md §I3.2); every call's outputs are checked against the feature-model contract
(:mod:`elastix_bridge.runtime.model_contract`), and before any registration work every model of a
level is probed once (:func:`check_level_models`, docs/design.md §I5.1). Paired fixed and moving
layers must have equal channel counts (§I5.1, §I6.8; Q9 fixed).

The metric that uses them: :class:`elastix_bridge.engine.metrics.impact.ImpactMetric`.

Source: docs/design.md §I3, §I5.1, §I6.8.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from elastix_bridge.core.geometry import ImageGeometry
from elastix_bridge.runtime.loader import ImpactModelError, model_file
from elastix_bridge.runtime.model_contract import (ModelUse, check_channel_options, check_finite, check_outputs,
                                                   model_failure, model_name, probe_model)

if TYPE_CHECKING:  # pragma: no cover
    from elastix_bridge.core.impact_parameters import ImpactLevelConfig

__all__ = ["direction_tensor", "call_model", "dummy_channels", "check_paired", "check_level_models"]


def direction_tensor(geometry: ImageGeometry):
    """int16 [D, D] direction cosines rounded half away from zero (docs/design.md §I3.2)."""
    d = geometry.direction
    return torch.from_numpy((np.sign(d) * np.floor(np.abs(d) + 0.5)).astype(np.int16))



def _use(cfg, which: str, level: int):
    """The model of ``cfg`` as the contract names and checks it (:mod:`elastix_bridge.runtime.model_contract`)."""
    return ModelUse(model_name(level, which, cfg.path), len(cfg.layers_mask), cfg.selected_layers, cfg.dimension)


def call_model(model, cfg, x, stats, direction, which: str, level: int, finite: bool = True):
    """One model call with upstream's argument convention (docs/design.md §I3.2); checks the result's structure.

    Every call is checked against the contract's shape rules (list length, ``[B, C >= 1, *spatial]``);
    with ``finite`` (every call on image data; not the dry runs on zero input, where a model that
    normalises its patch may divide by zero), a selected layer holding NaN or Inf is refused by name.
    """
    use = _use(cfg, which, level)
    try:
        out = model.forward(x, len(cfg.layers_mask), stats, direction)
    except RuntimeError as exc:
        # The plugin names the file and the torch error; say which level and model set it came from.
        raise model_failure(use.name, exc) from exc
    check_outputs(out, use, int(x.shape[0]))
    if finite:
        for layer in cfg.selected_layers:
            check_finite(out[layer], use, layer, half=bool(getattr(model, "half", False)))
    return out


def dummy_channels(models, configs, stats, direction, device, which: str, level: int) -> list:
    """Channel counts of the selected layers of a model set, from one zero patch/tile per model."""
    found = []
    for model, cfg in zip(models, configs):
        x = torch.zeros((1, cfg.channels) + tuple(reversed(cfg.patch_size)), device=device)
        with torch.no_grad():
            out = call_model(model, cfg, x, stats, direction, which, level, finite=False)
        found += [out[j].shape[1] for j, on in enumerate(cfg.layers_mask) if on]
    return found


def check_paired(level: int, fixed: list, moving: list) -> None:
    """Paired fixed/moving layers must have equal channel counts (docs/design.md §I5.1, §I6.8; Q9 fixed)."""
    if fixed != moving:
        raise ImpactModelError(
            f"level {level}: the selected layers of the fixed models have {fixed} channels but those of the moving "
            f"models have {moving}; paired layers must have equal channel counts")


#: Contract probes passed in this process: ``(id(model), ModelConfig, level, mode, D, device) -> (model, channels)``.
#: The command and the API probe before they take the output folder (:func:`elastix_bridge.engine.registration.
#: check_stage_models`), the stage again when it starts; the loader's model cache makes the second a lookup.
#: The model is kept in the value so that its id is not reused.
_PROBED: dict = {}


def _probe_set(models, configs, which: str, config: ImpactLevelConfig, image_dimension: int, device, done: dict):
    """Contract probe of one model set; a model already probed with the same settings is not run again."""
    found = []
    for model, cfg in zip(models, configs):
        key = (id(model), cfg, config.level, config.mode, image_dimension, str(device))
        if key not in done:
            if len(done) >= 64:  # a batch worker probing many models: forget the oldest
                done.pop(next(iter(done)))
            done[key] = model, probe_model(
                model, _use(cfg, which, config.level), str(getattr(model, "path", model_file(cfg.path))),
                cfg.channels,
                tuple(reversed(cfg.patch_size)), jacobian=config.mode == "Jacobian", image_dimension=image_dimension,
                device=device, half=bool(getattr(model, "half", False)))
        found += done[key][1]
    return found


def check_level_models(config: ImpactLevelConfig, models: tuple[Sequence[Any], Sequence[Any]], image_dimension: int,
                       device: torch.device) -> None:
    """Check every model of one level against the feature-model contract, before any registration work.

    Each model runs once on a small random input of the level's patch (Jacobian mode, as upstream's
    ``Initialize`` runs a dummy patch, docs/design.md §I5.1) or tile (Static mode; a whole-image
    model, ``ImpactPatchSize 0``, at two small sizes), batch 2, and in Jacobian mode also backwards
    (:func:`elastix_bridge.runtime.model_contract.probe_model`). Then paired fixed and moving layers
    must have equal channel counts, ``ImpactPCA`` (Static mode) may not exceed a layer's channels,
    and an ``ImpactSubsetFeatures`` entry above them is a warning (all channels are used).

    Args:
        config: the level's :class:`~elastix_bridge.core.impact_parameters.ImpactLevelConfig`.
        models: ``(fixed_models, moving_models)`` plugin ``FeatureModel`` lists.
        image_dimension: D (the direction tensor passed to 4-argument models is ``D × D``).
        device: ``torch.device`` of the models.

    Raises:
        elastix_bridge.runtime.loader.ImpactModelError: a model fails (its own message) or breaks the
            contract (the model file, level, layer, what was found and what is expected), or paired
            layers differ in channel count.
        elastix_bridge.core.impact_parameters.ImpactParameterError: ``ImpactPCA<L>`` exceeds a layer's
            channels.
    """
    fixed = _probe_set(models[0], config.fixed_models, "fixed", config, image_dimension, device, _PROBED)
    moving = _probe_set(models[1], config.moving_models, "moving", config, image_dimension, device, _PROBED)
    check_paired(config.level, fixed, moving)
    check_channel_options(config.level, fixed, config.subset_features, config.pca, static=config.mode == "Static")
