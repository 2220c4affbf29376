"""What a feature model gives IMPACT, measured: ``elastix-bridge model inspect FILE``.

The model is loaded as the bridge engine loads it (:func:`elastix_bridge.runtime.loader.load_feature_model`,
upstream's calling convention, docs/design.md §I3) and run on the CPU on random inputs; nothing is
read from the file but the model. A model that breaks the engine's feature-model contract
(:mod:`elastix_bridge.runtime.model_contract`) is refused with the engine's message, so a snippet is
printed only for a model the engine accepts. Measured per output layer:

* channels and output stride per axis (input size / output size, ITK (x, y, z) order);
* receptive field: the input voxels on which the centre feature of the layer depends (the
  bounding box of the non-zero gradient of that feature, summed over channels, with respect to the
  input), per axis;
* differentiability: a finite, non-zero gradient with respect to the input (Jacobian mode needs it);
* size consistency: the features of an input one voxel larger per axis (a size that is no longer
  a multiple of the stride) equal the first input's inside the shared region, away from the
  borders by the receptive field;
* time and peak memory of one forward at a few input sizes (no gradient, as Static mode runs it).

From these, a parameter-map snippet: ``ImpactDimension``, ``ImpactNumberOfChannels``,
``ImpactLayersMask``, ``ImpactPatchSize`` (the receptive field, made odd), ``ImpactSubsetFeatures``;
``ImpactVoxelSize`` is the spacing the model was trained at, which the file does not say.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from elastix_bridge.core.reserved_models import RESERVED_MODELS
from elastix_bridge.runtime import loader
from elastix_bridge.runtime.loader import ImpactModelError
from elastix_bridge.runtime.memory import PeakRSS, available_memory, format_bytes

#: Share of the available memory a timed forward's estimated outputs may take: the model's intermediates
#: (and, in a registration, autograd's copy) come on top, so 2x the outputs is kept under this share.
PROBE_MEMORY_SHARE = 0.5


@dataclass
class LayerReport:
    """One output layer. Sizes and strides in ITK (x, y, z) order, voxels."""

    channels: int
    stride: tuple
    receptive_field: tuple
    whole_input: bool  # the centre feature depends on every probe voxel: the field is at least the probe
    differentiable: bool
    size_consistent: Optional[bool]
    largest_difference: float
    flat_axis: str = ""  # an axis along which the map has 1 voxel for the whole probe: Static mode cannot use it


@dataclass
class ModelReport:
    """What :func:`inspect_model` measured; ``text()`` is what the command prints."""

    path: str
    arguments: int
    dimension: int
    input_channels: int
    layers_asked: int
    parameter_dtypes: tuple
    layers: list = field(default_factory=list)
    timings: list = field(default_factory=list)  # (input size (x, y, z), seconds, peak MB above the start)
    skipped: list = field(default_factory=list)  # (input size (x, y, z), estimated bytes, bytes allowed, source)

    def snippet(self, level: int = 0) -> str:
        """A parameter-map block for resolution ``level`` that uses every layer of this model."""
        rf = [max(layer.receptive_field[a] for layer in self.layers) for a in range(self.dimension)]
        patch = " ".join(str(r + (1 - r % 2)) for r in rf)  # odd, so that the patch has a centre voxel
        if any(layer.whole_input for layer in self.layers):
            patch_note = ("the model's field covers the whole probe input (a normalisation over its input, or a "
                          "larger field): choose the context; larger = more context, slower")
        else:
            patch_note = "Jacobian mode: the receptive field, made odd; Static mode: 0 (whole image)"
        subset = [min(layer.channels, 32) for layer in self.layers]
        distances = " ".join('"L2"' for _ in self.layers)
        lines = [f'(ImpactModelsPath{level} "{self.path}")',
                 f"(ImpactDimension{level} {self.dimension})",
                 f"(ImpactNumberOfChannels{level} {self.input_channels})",
                 f'(ImpactLayersMask{level} "{"1" * len(self.layers)}")',
                 f"(ImpactPatchSize{level} {patch})   // {patch_note}",
                 f"(ImpactVoxelSize{level} {' '.join(['1.5'] * self.dimension)})   // mm: the spacing the model was "
                 "trained at (not in the file; 1.5 is a placeholder)",
                 f"(ImpactSubsetFeatures{level} {' '.join(map(str, subset))})   // of "
                 f"{', '.join(str(layer.channels) for layer in self.layers)} channels; fewer: faster, noisier",
                 f"(ImpactLayersWeight{level} {' '.join(['1'] * len(self.layers))})",
                 f"(ImpactPCA{level} {' '.join(['0'] * len(self.layers))})",
                 f"(ImpactDistance{level} {distances})"]
        return "\n".join(lines)

    def text(self) -> str:
        out = [f"model {self.path}",
               f"  forward arguments  {self.arguments} (x{', n_layers' if self.arguments >= 2 else ''}"
               f"{', stats, direction' if self.arguments >= 4 else ''})",
               f"  input              {self.dimension}D, {self.input_channels} channel(s); weights "
               f"{', '.join(self.parameter_dtypes) or 'none'}; outputs float32 (as the bridge passes them on)",
               f"  layers             {len(self.layers)} for n_layers = {self.layers_asked}"]
        for i, layer in enumerate(self.layers):
            consistent = ("not checked" if layer.size_consistent is None else
                          "yes" if layer.size_consistent else f"NO (differs by {layer.largest_difference:.3g})")
            field_ = "x".join(map(str, layer.receptive_field)) + (" or more (all of the probe input)"
                                                                  if layer.whole_input else "")
            out.append(f"  layer {i}: {layer.channels} channels, stride {'x'.join(map(str, layer.stride))}, "
                       f"receptive field {field_} voxels, differentiable "
                       f"{'yes' if layer.differentiable else 'NO (Jacobian mode cannot use it)'}, same features "
                       f"for sizes off the stride: {consistent}"
                       + (f", Static mode NO (1 voxel along {layer.flat_axis} for the whole probe: constant features; "
                          "use ImpactMode Jacobian)" if layer.flat_axis else ""))
        for size, seconds, megabytes in self.timings:
            out.append(f"  forward at {'x'.join(map(str, size))}: {1000 * seconds:.0f} ms, peak +{megabytes:.0f} MB")
        for size, need, allowed, source in self.skipped:
            out.append(f"  forward at {'x'.join(map(str, size))}: skipped, it would take about {format_bytes(need)} "
                       f"(twice its outputs), over the {format_bytes(allowed)} the probes may use "
                       f"({PROBE_MEMORY_SHARE:.0%} of the memory available, {source})")
        out += ["", "Parameter-map snippet (level 0):", self.snippet()]
        return "\n".join(out)


def _probe_input(dimension: int, channels: int, size: int, seed: int = 0):
    torch = loader.require_torch()
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((1, channels) + (size,) * dimension, generator=generator)


def _stats(x):
    v = x.detach()
    return loader.require_torch().tensor([float(v.min()), float(v.max()), float(v.mean()), float(v.std())])


def _call(model, x, layers: int, stats=None):
    """One forward; ``stats`` default to the input's own (a level image's, in a registration).

    Raises:
        elastix_bridge.runtime.loader.ImpactModelError: the forward raised; the model's own message is kept
            (:func:`elastix_bridge.runtime.model_contract.first_model_message`).
    """
    torch = loader.require_torch()
    from elastix_bridge.runtime.model_contract import model_failure, model_name  # deferred: imports torch, as _torch

    stats = _stats(x) if stats is None else stats
    direction = torch.eye(x.dim() - 2, dtype=torch.int16)
    try:
        return model.forward(x, layers, stats, direction)
    except (RuntimeError, ValueError) as error:
        raise model_failure(model_name(None, "", model.path), error) from None


def _timing_sizes(report: "ModelReport", sizes: Sequence[int], outputs, n: int) -> list:
    """The timing sizes whose outputs fit in memory; the others go to ``report.skipped``.

    The output bytes per input voxel are measured on the contract probe (``outputs``, batch 1, ``n`` voxels
    per axis) and scaled: a model that repeats its input to 20000 channels needs 21 GB at 512 x 512.
    """
    per_voxel = sum(o.numel() * o.element_size() for o in outputs) / n ** report.dimension
    budget = available_memory()
    kept = []
    for size in sizes:
        need = 2 * per_voxel * size ** report.dimension
        if budget is not None and need > PROBE_MEMORY_SHARE * budget.bytes:
            report.skipped.append(((size,) * report.dimension, need, PROBE_MEMORY_SHARE * budget.bytes, budget.source))
        else:
            kept.append(size)
    return kept


def _flat_axis(out, n: int) -> str:
    """The first axis (x, y, z) along which a map of a probe of ``n`` voxels per axis has 1 voxel, or ''."""
    spatial = list(reversed(out.shape[2:]))
    return next(("xyz"[a] for a, h in enumerate(spatial) if h == 1 and n >= 2), "")


def _contract_probe(model, dimension: int, channels: int, layers: int, size: int) -> list:
    """The engine's contract on a batch-2 probe: a list of ``layers`` finite ``[B, C >= 1, *spatial]`` maps."""
    torch = loader.require_torch()
    from elastix_bridge.runtime.model_contract import (  # deferred: imports torch, as _torch
        PROBE_BATCH, ModelUse, check_finite, check_outputs, model_name, raw_output_dtypes)

    use = ModelUse(model_name(None, "", model.path), layers, tuple(range(layers)), dimension)
    first = _probe_input(dimension, channels, size)  # the probe input of the other measurements, then another
    x = torch.cat([first] + [_probe_input(dimension, channels, size, seed=100 + k) for k in range(1, PROBE_BATCH)])
    outputs = _call(model, x, layers, _stats(first))
    check_outputs(outputs, use, PROBE_BATCH)
    for j in range(layers):
        check_finite(outputs[j], use, j)
    # The plugin casts every map to float32: the model's own dtypes show integer maps, which the engine refuses.
    direction = torch.eye(dimension, dtype=torch.int16)
    for j, dtype in enumerate(raw_output_dtypes(model, model.path, x, layers, _stats(first), direction)):
        if not dtype.is_floating_point:
            raise ImpactModelError(f"{use.name}, layer {j}: the model returned {str(dtype).replace('torch.', '')} "
                                   "features; feature maps must be floating point (float32, float16 or float64)")
    return [o[:1] for o in outputs]


def _receptive_field(model, dimension: int, channels: int, layers: int, size: int, probes: int = 4) -> list:
    """Per layer: (receptive field (x, y, z), whole input, differentiable) from the gradient of its centre
    feature, over a few random inputs (a ReLU may be off at the centre for one of them)."""
    torch = loader.require_torch()
    supports, finite = [None] * layers, [True] * layers
    for seed in range(1, probes + 1):  # one forward per probe serves every layer
        x = _probe_input(dimension, channels, size, seed=seed).requires_grad_(True)
        outputs = _call(model, x, layers)
        for i, out in enumerate(outputs):
            if not out.requires_grad:  # detached or integer: reported as not differentiable
                continue
            centre = tuple(s // 2 for s in out.shape[2:])
            (grad,) = torch.autograd.grad(out[(0, slice(None)) + centre].sum(), x, allow_unused=True,
                                          retain_graph=i + 1 < len(outputs))
            if grad is None:
                continue
            finite[i] = finite[i] and bool(torch.isfinite(grad).all())
            hit = grad.abs().sum(dim=(0, 1)) > 0  # spatial (z, y, x)
            supports[i] = hit if supports[i] is None else supports[i] | hit
    result = []
    for support, ok in zip(supports, finite):
        if support is None or not ok or not bool(support.any()):
            result.append(((0,) * dimension, False, False))
            continue
        extent = []
        for axis in range(dimension):
            others = tuple(a for a in range(dimension) if a != axis)
            where = torch.nonzero(support.any(dim=others) if others else support).flatten()
            extent.append(int(where.max() - where.min() + 1))
        result.append((tuple(reversed(extent)), all(e >= size for e in extent), True))
    return result


def inspect_model(path: str | Path, dimension: Optional[int] = None, input_channels: int = 1, layers: int = 1,
                  size: Optional[int] = None, timing_sizes: Optional[Sequence[int]] = None,
                  shown_as: Optional[str] = None) -> ModelReport:
    """Load a feature model as the bridge does and measure what IMPACT needs to know of it.

    Args:
        path: a TorchScript file, a ``torch.export`` program (``.pt2``) or a built-in name
            (``mind-ssc-2d``, ``mind-ssc-3d``).
        dimension: 2 or 3; None tries 3D, then 2D.
        input_channels: the model's input channels (``ImpactNumberOfChannels``).
        layers: ``n_layers`` passed to the model (the layers-mask length it is asked for).
        size: voxels per axis of the probe input (default 48 in 3D, 128 in 2D); the receptive field
            is measured up to this size.
        timing_sizes: voxels per axis of the timed forwards (default 32, 64, 96 in 3D; 128, 256, 512
            in 2D).
        shown_as: the name messages and the report give the model (``model export`` inspects a temporary
            file under the user's name); default ``path``.

    Returns:
        :class:`ModelReport`.

    Raises:
        elastix_bridge.runtime.loader.ImpactModelError: no file at ``path`` (missing, a folder, a device, empty:
            :func:`~elastix_bridge.runtime.loader.model_file_problem`), not a usable model, a forward that raises (the
            model's own message), an output that breaks the feature-model contract
            (:mod:`elastix_bridge.runtime.model_contract`: batch, channels, spatial axes, finite values,
            channels that change with the input size), or no dimension works (the error of each attempt
            is named), or a probe runs out of memory (timed sizes whose outputs would not fit are skipped
            and listed in the report instead).
    """
    shown = str(shown_as or path)
    try:
        try:
            return _inspect(path, dimension, input_channels, layers, size, timing_sizes, shown)
        except (MemoryError, RuntimeError, loader.ImpactModelError) as error:  # the last: a forward's own
            if not isinstance(error, MemoryError) and "allocate memory" not in str(error):
                raise
            raise _out_of_memory(shown, error) from None
    except loader.ImpactError as error:
        if shown_as is None:
            raise
        # Name the user's file, never the temporary one that was inspected.
        text = str(error).replace(str(loader.model_file(str(path))), shown).replace(str(path), shown)
        raise type(error)(text) from None


def _out_of_memory(shown: str, error: BaseException):
    """One line for a probe that ran out of memory (torch's "can't allocate memory", or Python's MemoryError)."""
    cause = str(error).splitlines()[0] if str(error) else type(error).__name__
    cause = cause.split("DefaultCPUAllocator: ")[-1].split(" Error code")[0].rstrip(". ")
    budget = available_memory()
    room = f" ({format_bytes(budget.bytes)} available, {budget.source})" if budget else ""
    return ImpactModelError(f"model '{shown}': a probe forward ran out of memory{room}: {cause}; the model's outputs "
                            "are too large for this machine at the probe size: free memory, inspect it where there "
                            "is more, or check its channel count (--dimension, --channels and --layers as meant)")


def _inspect(path, dimension, input_channels, layers, size, timing_sizes, shown) -> ModelReport:
    torch = loader.require_torch()
    if str(path) not in RESERVED_MODELS:  # named as the given file; model_file("") is the working folder
        problem = loader.model_file_problem(path)
        if problem:
            raise loader.ImpactModelError(f"model {str(path)!r}: {problem}")
    file = loader.model_file(str(path))
    model = loader.load_feature_model(str(file), "cpu")
    source = (torch.export.load(str(file)).module() if file.suffix == ".pt2"
              else torch.jit.load(str(file), map_location="cpu"))
    dtypes = tuple(sorted({str(p.dtype).replace("torch.", "") for p in source.parameters()}))
    errors, outputs = [], None
    dimensions = [dimension] if dimension else [3, 2]
    with loader.jit_optimization_disabled(), torch.no_grad():
        for dim in dimensions:
            n = size or (48 if dim == 3 else 128)
            try:
                outputs = _contract_probe(model, dim, input_channels, layers, n)
                dimension = dim
                break
            except loader.ImpactModelError as error:
                if len(dimensions) == 1:
                    raise
                errors.append(f"{dim}D input of {n} voxels per axis: {error}")
    if outputs is None:
        raise loader.ImpactModelError(f"model '{path}' ran on no input tried: " + "; ".join(errors)
                                      + " (give --dimension, --channels or --layers if they differ)")
    n = size or (48 if dimension == 3 else 128)
    # An input one voxel larger per axis that holds the probe input at the origin: the features that see
    # only the shared voxels must not change (a model whose output depends on the size modulo its stride
    # would shift its features).
    embedded = _probe_input(dimension, input_channels, n + 1)
    embedded[(slice(None), slice(None)) + (slice(0, n),) * dimension] = _probe_input(dimension, input_channels, n)
    with loader.jit_optimization_disabled():
        fields_ = _receptive_field(model, dimension, input_channels, layers, n)
        with torch.no_grad():  # the same statistics: a model may normalise with them
            bigger = _call(model, embedded, layers, _stats(_probe_input(dimension, input_channels, n)))
    _check_same_channels(shown, outputs, bigger, n)
    report = ModelReport(shown, model.num_arguments, dimension, input_channels, layers, dtypes)
    for out, big, (rf, whole, differentiable) in zip(outputs, bigger, fields_):
        stride = tuple(reversed([max(1, round(n / s)) for s in out.shape[2:]]))
        # Away from the far border by the receptive field (in output voxels).
        keep = tuple(slice(0, max(0, s - (r // st + 1))) for s, r, st in
                     zip(out.shape[2:], reversed(rf), reversed(stride)))
        a, b = out[(0, slice(None)) + keep], big[(0, slice(None)) + keep]
        consistent, difference = None, 0.0
        if a.numel() and a.shape == b.shape:
            difference = float((a - b).abs().max())
            consistent = difference <= 1e-4 * max(1.0, float(a.abs().max()))
        report.layers.append(LayerReport(int(out.shape[1]), stride, rf, whole, differentiable, consistent, difference,
                                         _flat_axis(out, n)))
    sizes = timing_sizes or ((32, 64, 96) if dimension == 3 else (128, 256, 512))
    for n_time in _timing_sizes(report, sizes, outputs, n):
        x = _probe_input(dimension, input_channels, n_time)
        with torch.no_grad(), loader.jit_optimization_disabled():
            _call(model, x, layers)  # warm-up
            with PeakRSS() as memory:
                tic = time.perf_counter()
                _call(model, x, layers)
                seconds = time.perf_counter() - tic
        report.timings.append(((n_time,) * dimension, seconds, max(0, memory.peak - memory.start) / 2**20))
    return report


def _check_same_channels(shown: str, outputs, bigger, n: int) -> None:
    """The channels of a layer must not change with the input size (Static mode runs whole images)."""
    for j, (a, b) in enumerate(zip(outputs, bigger)):
        if a.shape[1] != b.shape[1] or a.dim() != b.dim():
            raise ImpactModelError(f"model '{shown}', layer {j}: the model returned shape {list(a.shape)} for a "
                                   f"{n}-voxel input but {list(b.shape)} for {n + 1} voxels per axis; the channel "
                                   "count and the axes must not depend on the input size")

