"""Turn a network into an IMPACT feature model: ``elastix-bridge model export``.

The result follows the calling convention that the plugin and upstream elastix use
(docs/design.md §I3.2–§I3.3): ``forward(x, n_layers, stats, direction)`` returning a list with one
feature map ``[B, F, *spatial]`` per chosen layer. The input is normalised inside the model from the
level image's statistics ``stats = [min, max, mean, σ]`` (upstream passes them since PR #1394), so
the same file serves any image:

* ``"none"``: the intensities as they are;
* ``"zscore"``: ``(x − mean) / σ``;
* ``"minmax"``: ``(x − min) / (max − min)``;
* ``"ct"`` with ``window=(low, high)`` in HU: clipped to the window, then scaled to ``[0, 1]``.

With ``reorient=True`` the network sees every image in the identity orientation (its axes flipped and
permuted by the rounded direction cosines, the fourth argument) and the features are put back on the
image's grid: for networks trained on images of one orientation.

Layers are the outputs of the model's top-level sub-modules, by name or by their position in the
order ``forward`` calls them. Two formats, chosen by the file name:

* ``.pt`` (TorchScript, the default: upstream elastix reads only this): the model is traced (a
  ``torch.nn.Module``) or taken as it is (a TorchScript module or file, e.g. a traced network whose
  blocks take extra arguments); for each layer a copy of its graph returns that block's output, with
  everything after it removed;
* ``.pt2`` (``torch.export``, from a ``torch.nn.Module`` only): the layers' outputs are taken by
  forward hooks and the program is exported with dynamic batch and spatial sizes.

The written file is checked by :func:`elastix_bridge.models.inspection.inspect_model` before it is
returned (layers, strides, receptive field, gradients, size consistency).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from elastix_bridge.runtime.loader import require_torch
from elastix_bridge.models.inspection import inspect_model

NORMALISATIONS = ("none", "zscore", "minmax", "ct")


class ExportError(ValueError):
    """The model cannot be exported as asked; the message says why and what to change."""



def _calls(script) -> list:
    """Top-level sub-modules in the order the TorchScript ``forward`` calls them: ``[(name, node)]``."""
    calls = []
    for node in script.forward.graph.nodes():
        if node.kind() == "prim::CallMethod" and node.inputsAt(0).node().kind() == "prim::GetAttr":
            calls.append((node.inputsAt(0).node().s("name"), node))
    return calls


def _layer_names(layers: Sequence[Any], order: Sequence[str]) -> list:
    names = []
    for layer in layers:
        if isinstance(layer, int) or (isinstance(layer, str) and layer.isdigit()):
            k = int(layer)
            if not 0 <= k < len(order):
                raise ExportError(f"layer {k}: the model's forward calls {len(order)} blocks ({', '.join(order)})")
            names.append(order[k])
        elif layer in order:
            names.append(layer)
        else:
            raise ExportError(f"layer {layer!r} is not a block the model's forward calls; its blocks, in order: "
                              f"{', '.join(order)} (a name or its position)")
    return names


def _truncated(load, name: str):
    """A fresh TorchScript copy whose forward returns block ``name``'s output, the rest removed."""
    torch = require_torch()
    copy = load()
    node = dict(_calls(copy))[name]
    graph = copy.forward.graph
    graph.return_node().replaceInput(0, node.output())
    torch._C._jit_pass_inline(graph)
    torch._C._jit_pass_dce(graph)
    return copy


def export(model: Any, layers: Sequence[Any], dimension: int, path: str | Path, in_channels: int = 1,
           normalisation: str = "none", window: Optional[Sequence[float]] = None, reorient: bool = False,
           example_size: int = 32):
    """Write ``model``'s chosen layers as an IMPACT feature model and check it.

    Args:
        model: a ``torch.nn.Module`` (traced for ``.pt``), a TorchScript module, or a TorchScript file.
        layers: top-level sub-module names, or positions in the order ``forward`` calls them (``.pt2``:
            the order of ``named_children()``).
        dimension: 2 or 3 (``ImpactDimension``).
        path: output file; ``.pt`` (TorchScript) or ``.pt2`` (``torch.export``).
        in_channels: input channels (``ImpactNumberOfChannels``).
        normalisation: one of :data:`NORMALISATIONS` (see the module docstring).
        window: ``(low, high)`` for ``"ct"`` (HU).
        reorient: show the network every image in the identity orientation (axes flipped and permuted
            by the rounded direction cosines, the features put back), for networks trained on one
            orientation; TorchScript (``.pt``) only.
        example_size: voxels per axis of the example input used to trace or export.

    Returns:
        The :class:`~elastix_bridge.models.inspection.ModelReport` of the written file.

    Raises:
        ExportError: an unknown layer (the blocks are listed), normalisation or format; a window
            without ``"ct"``, or ``"ct"`` without a window of low < high; ``.pt2`` from
            a TorchScript model; a model that cannot be traced or exported (torch's reason).
    """
    torch = require_torch()
    path = Path(path)
    if path.suffix not in (".pt", ".pt2"):
        raise ExportError(f"{path}: the file name must end in .pt (TorchScript) or .pt2 (torch.export)")
    if normalisation not in NORMALISATIONS:
        raise ExportError(f"normalisation {normalisation!r}: use one of {', '.join(NORMALISATIONS)}")
    if window is not None and normalisation != "ct":  # only the CT normaliser reads it: it would be ignored
        raise ExportError(f"window (--window) {tuple(window)} is used by normalisation 'ct' only, not "
                          f"{normalisation!r}; add normalisation='ct' (--normalisation ct) or drop the window")
    if normalisation == "ct" and (window is None or len(window) != 2 or window[0] >= window[1]):
        got = "none given" if window is None else f"got {tuple(window)}"
        raise ExportError(f"normalisation 'ct' needs window=(low, high) (--window LOW HIGH) in HU with low < high, "
                          f"e.g. (-1000, 1000); {got}")
    low, high = window if window is not None else (0.0, 1.0)
    from elastix_bridge.models import export_modules  # deferred: imports torch, after the LibTorch check

    normalise = export_modules.Normalise(normalisation, low, high)
    orient = export_modules.Orient(bool(reorient))
    source = Path(model) if isinstance(model, (str, Path)) else None
    if source is not None and not source.is_file():
        raise ExportError(f"model file {source} does not exist")
    if source is not None and path.resolve() == source.resolve():
        raise ExportError(f"{path} is the model being exported; write the feature model to another file")
    # Written under a temporary name beside `path` and renamed once it has been inspected.
    partial = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    example = torch.randn((2, in_channels) + (example_size,) * dimension)
    args = (example, torch.tensor(len(layers), dtype=torch.int16), torch.tensor([-1.0, 1.0, 0.0, 1.0]),
            torch.eye(dimension, dtype=torch.int16))
    if path.suffix == ".pt2":
        if source is not None or isinstance(model, torch.jit.ScriptModule):
            raise ExportError(".pt2 (torch.export) needs the Python torch.nn.Module; a TorchScript model can be "
                              "written as .pt only")
        if reorient:  # the axes depend on the direction's values: data-dependent for torch.export
            raise ExportError("reorient needs TorchScript (.pt): a torch.export program cannot choose its axes "
                              "from the direction argument at run time")
        model.eval()
        names = _layer_names(layers, [n for n, _ in model.named_children()])
        wrapper = export_modules.HookedFeatures(normalise, orient, model, names).eval()
        # Batch and spatial sizes dynamic (patches of any count and size); AUTO lets torch.export find the
        # ranges the network allows (inspect below then proves other sizes run).
        spatial = {a: torch.export.Dim.AUTO for a in [0] + [2 + a for a in range(dimension)]}
        try:
            program = torch.export.export(wrapper, args, dynamic_shapes=(spatial, None, None, None))
        except Exception as error:
            raise ExportError(f"torch.export could not export the model with dynamic sizes: "
                              f"{str(error).splitlines()[0]}") from None
        torch.export.save(program, str(partial))
    else:
        if source is not None:
            data = source.read_bytes()
        else:
            script = model
            if not isinstance(model, torch.jit.ScriptModule):
                try:
                    script = torch.jit.trace(model.eval(), example, check_trace=False)
                except Exception as error:
                    raise ExportError(f"the model could not be traced: {str(error).splitlines()[0]}") from None
            buffer = io.BytesIO()
            torch.jit.save(script, buffer)
            data = buffer.getvalue()

        def load():  # a fresh copy per layer: each copy's graph is cut after its block
            return torch.jit.load(io.BytesIO(data), map_location="cpu")

        names = _layer_names(layers, [n for n, _ in _calls(load())])
        wrapper = torch.jit.script(export_modules.Features(normalise, orient, [_truncated(load, n) for n in names]))
        wrapper.save(str(partial))
    try:
        # Inspected under the user's name: a failure names `path`, never the temporary `.partial-NNNN` file.
        report = inspect_model(partial, dimension=dimension, input_channels=in_channels, layers=len(layers),
                               shown_as=str(path))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    report.path = str(path)
    return report
