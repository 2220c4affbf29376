"""Feature models saved with ``torch.export`` (``.pt2``): the same calling convention as TorchScript ones.

TorchScript is deprecated from torch 2.13 on (``torch.jit.load`` warns "Please switch to
``torch.export``"). A ``.pt2`` file holds an ``ExportedProgram``; :class:`ExportedFeatureModel` runs
it with the interface of the plugin's TorchScript ``FeatureModel`` (docs/design.md §I3.1–§I3.5):
``num_arguments`` (the program's user inputs), ``forward(x, n_layers, stats, direction)`` passing
the first ``num_arguments`` of (input, 0-d int16 ``n_layers``, float32 ``[4]`` statistics, int16
``[D, D]`` direction rounded half away from zero), a list of feature maps back, in float32. The
bridge engine runs it from Python (upstream elastix reads only TorchScript): autograd flows back to
the input as for TorchScript models (Jacobian mode).

The program must have been exported with dynamic spatial dimensions (``torch.export.Dim``) to run
on patches and images of any size; a static one runs only at its example size, and the error says
so.

torch is imported at the top: the loader imports this module only when it loads a model, after its
LibTorch check (:func:`elastix_bridge.runtime.loader.load_feature_model`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

EXPORTED_SUFFIX = ".pt2"


class ExportedFeatureModel:
    """A ``torch.export`` program as an IMPACT feature model (see the module docstring).

    Args:
        path: the ``.pt2`` file.
        device: ``"cpu"`` or ``"cuda:<index>"``.
        half: float16 weights and inputs (``ImpactUseMixedPrecision``).

    Raises:
        ValueError: the file is not a torch.export program, or its forward takes no input.
        RuntimeError: the program cannot be moved to ``device``.
    """

    def __init__(self, path: str | Path, device: str, half: bool = False) -> None:
        self.path, self.device, self.half = str(path), str(device), bool(half)
        try:
            program = torch.export.load(str(path))
        except Exception as error:  # torch raises several types for a file that is not a program
            raise ValueError(f"cannot load '{path}' as a torch.export program (.pt2): {error} (save models with "
                             "torch.export.save(torch.export.export(model, args, dynamic_shapes=...), path))") from None
        self.num_arguments = len(program.graph_signature.user_inputs)
        if self.num_arguments <= 0:
            raise ValueError(f"torch.export program '{path}' takes no input; it must take the image patch first")
        self._dtype = torch.float16 if self.half else torch.float32
        self.output_dtypes: list | None = None  # dtypes of the last forward's maps, before the float32 cast
        module = program.module()
        with torch.no_grad():
            for tensor in list(module.parameters()) + list(module.buffers()):
                if tensor.is_floating_point():
                    tensor.data = tensor.data.to(self._dtype)
                tensor.requires_grad_(False)
        try:
            self._module = module.to(torch.device(self.device))
        except Exception as error:
            raise RuntimeError(f"cannot move torch.export program '{path}' to device {self.device}: {error}") from None

    def forward(self, x: Any, n_layers: int, stats: Any, direction: Any) -> list:
        """Run the program with upstream's positional convention; float32 feature maps ``[B, F, *spatial]``.

        Raises:
            ValueError: bad statistics or direction.
            RuntimeError: the program failed (e.g. a size it was not exported for) or returned no list.
        """
        args = [x.to(self.device, self._dtype)]
        if self.num_arguments >= 2:
            args.append(torch.tensor(int(n_layers), dtype=torch.int16))
        if self.num_arguments >= 4:
            if stats is None or stats.numel() != 4:
                raise ValueError(f"stats must hold 4 values [min, max, mean, sigma], got {stats}")
            direction = direction.detach().cpu()
            if direction.is_floating_point():  # rounded half away from zero (docs/design.md §I3.2)
                direction = direction.sign() * (direction.abs() + 0.5).floor()
            args += [stats.detach().reshape(4).to("cpu", torch.float32), direction.to(torch.int16)]
        try:
            out = self._module(*args)
        except Exception as error:
            raise RuntimeError(f"forward of torch.export program '{self.path}' failed for input "
                               f"{tuple(x.shape)}: {str(error).splitlines()[0]} (a program runs on other sizes "
                               "only when exported with dynamic spatial dimensions, torch.export.Dim)") from None
        if not isinstance(out, list) or not all(torch.is_tensor(o) for o in out):
            raise RuntimeError(f"torch.export program '{self.path}' returned {type(out).__name__}; the model must "
                               "return a list of feature maps [B, C, *spatial] (List[Tensor])")
        # Kept for the feature-model contract, which refuses integer maps (runtime.model_contract).
        self.output_dtypes = [o.dtype for o in out]
        return [o.to(torch.float32) for o in out]
