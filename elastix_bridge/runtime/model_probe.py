"""What a feature model returns, learnt without a registration: for the memory plan and ``plan --probe-models``.

:func:`probe_model` runs a model once on zero inputs (CPU) under the feature-model contract
(:mod:`elastix_bridge.runtime.model_contract`); :func:`known_model` knows the built-in MIND-SSC models
without running them. Importing this module imports no torch: :func:`probe_model` imports it after
the LibTorch check.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from elastix_bridge.core.impact_parameters import ModelConfig
from elastix_bridge.core.reserved_models import RESERVED_MODELS, mind_pairs
from elastix_bridge.runtime import loader


@dataclass(frozen=True)
class ModelProbe:
    """What one model returns for one patch or tile (from :func:`probe_model` or known for MIND-SSC).

    Attributes:
        channels: F per selected layer.
        scale: per selected layer, output voxels per input voxel along each axis (ITK order;
            1 = same size, 0.5 = stride 2).
        activation_bytes: bytes autograd keeps per patch (Jacobian mode), None when not measured.
    """

    channels: tuple
    scale: tuple
    activation_bytes: Optional[int] = None


def known_model(cfg: ModelConfig, mode: str = "Static") -> Optional[ModelProbe]:
    """The built-in MIND-SSC models: one layer, channels = neighbour pairs, same spatial size."""
    if cfg.path not in RESERVED_MODELS:
        return None
    dimension = RESERVED_MODELS[cfg.path][0]
    return ModelProbe((len(mind_pairs(dimension)),) * cfg.n_selected, ((1.0,) * dimension,) * cfg.n_selected)


def probe_model(cfg: ModelConfig, mode: str, image_dimension: int) -> ModelProbe:
    """Run one model on zero inputs (batch 1 and 2) on the CPU to learn its outputs and autograd cost.

    The patch is ``ImpactPatchSize`` (a 16-voxel tile per axis where it is 0, Static whole-image).
    In Jacobian mode the input requires grad, as the moving patches do, and the bytes of the
    tensors autograd saves (``saved_tensors_hooks``, each storage once) for batch 2 minus batch 1
    give the activations per patch.

    Raises:
        elastix_bridge.runtime.loader.ImpactUnavailableError, elastix_bridge.runtime.loader.ImpactModelError:
            torch or the plugin cannot load, the model cannot be loaded, fails (its own message) or breaks
            the feature-model contract (:func:`elastix_bridge.runtime.model_contract.probe_model`).
    """
    torch = loader.require_torch()
    from elastix_bridge.runtime import model_contract  # deferred: imports torch, after the LibTorch check

    model = loader.load_feature_model(str(loader.model_file(cfg.path)), torch.device("cpu"))
    use = model_contract.ModelUse(model_contract.model_name(None, "", cfg.path), len(cfg.layers_mask),
                                  cfg.selected_layers, cfg.dimension)
    with loader.jit_optimization_disabled():  # the registration's whole contract, so that plan refuses what it refuses
        model_contract.probe_model(model, use, str(loader.model_file(cfg.path)), cfg.channels,
                                   tuple(reversed(cfg.patch_size)), jacobian=mode == "Jacobian",
                                   image_dimension=image_dimension)
    patch = tuple(p if p else 16 for p in reversed(cfg.patch_size))  # (z, y, x)
    stats = torch.tensor([0.0, 1.0, 0.5, 0.25])
    direction = torch.eye(image_dimension, dtype=torch.int16)

    def run(batch: int) -> tuple[list[torch.Tensor], int]:
        saved = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        x = torch.zeros((batch, cfg.channels) + patch, requires_grad=mode == "Jacobian")
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), loader.jit_optimization_disabled():
            try:
                out = model.forward(x, len(cfg.layers_mask), stats, direction)
            except (RuntimeError, ValueError) as error:
                raise model_contract.model_failure(use.name, error) from None
        model_contract.check_outputs(out, use, batch)  # the shape rules of the contract (the engine probes the rest)
        return out, sum(saved.values())

    out, one = run(1)
    _, two = run(2) if mode == "Jacobian" else (None, None)
    layers = [out[j] for j in cfg.selected_layers]
    channels = tuple(int(o.shape[1]) for o in layers)
    scale = tuple(tuple(min(1.0, h / p) for h, p in zip(reversed(o.shape[2:]), reversed(patch))) for o in layers)
    return ModelProbe(channels, scale, None if two is None else max(0, two - one))
