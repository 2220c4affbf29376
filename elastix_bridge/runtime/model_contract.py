"""The feature-model contract: what a model must return, checked once per model and level before any work.

Upstream elastix runs each model once on a zero patch in ``ImpactImageToImageMetric::Initialize``
(elastix ``Components/Metrics/Impact/itkImpactImageToImageMetric.hxx``) to learn the channel counts, and
trusts the rest: a model that breaks the convention fails later inside a reshape, or silently (a batch
of 1 for any batch makes one sample stand for all; 0 channels divide by zero). Here a *probe* forward
(and, for Jacobian mode, a backward) on a small random input of the level's patch or tile size, with a
batch of :data:`PROBE_BATCH`, checks that the model returns (docs/design.md §I3.3):

* a list with one entry per ``ImpactLayersMask`` entry (the plugin refuses tensors, tuples, dicts);
* for every selected layer a real floating-point tensor (not bool, integer or complex, which the plugin
  would cast to float32) ``[B, C, *spatial]`` with B the input batch,
  ``C >= 1``, exactly ``ImpactDimension`` non-empty spatial axes, finite values;
* for Jacobian mode, an output that depends on the input through autograd and a finite input gradient;
* for Static whole-image models (``ImpactPatchSize 0``), the same channel count at two input sizes, and
  more than 1 voxel along every axis (Static mode interpolates the maps in space).

The same checks serve the engine (:func:`elastix_bridge.engine.metrics.impact_models.check_level_models`; the
command and the API run it before they take the output folder, :func:`elastix_bridge.api.check_bridge_models`),
``plan --probe-models`` and ``model inspect``. Each violation names the model file, the level, the
layer, what was found and what is expected. torch is imported at the top: every caller imports this
module when it holds a loaded model, after the loader's LibTorch check (``import elastix_bridge``
never imports it).
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from elastix_bridge.core.impact_parameters import ImpactParameterError
from elastix_bridge.runtime.loader import ImpactModelError

log = logging.getLogger("elastix_bridge")

#: Batch of the probe input: 2, so that a model returning batch 1 for any batch is caught.
PROBE_BATCH = 2
#: Voxels per axis of the probes of a Static whole-image model (``ImpactPatchSize 0``): the second size is tried
#: when the model's forward refuses the first (a network with many poolings needs a larger input); each
#: probe is followed by one at a voxel more per axis.
WHOLE_IMAGE_PROBES = (16, 64)
#: Static tiles up to this many voxels are probed with autograd on (to see integer outputs, which the plugin casts).
GRAD_PROBE_VOXELS = 32 ** 3

_AXES = {1: "x", 2: "y, x", 3: "z, y, x"}
#: Raw output dtypes of TorchScript files, by (file, mtime, size, layers, input channels): see raw_output_dtypes.
_raw_dtypes: dict = {}


@dataclass(frozen=True)
class ModelUse:
    """How a model is used: what its output is checked against.

    Attributes:
        name: the model in messages, e.g. ``"level 1, fixed model 'm.pt'"``.
        n_layers: the layers-mask length (the list length the model must return).
        selected: indices of the selected layers (the ones checked; the others are never read).
        dimension: ``ImpactDimension`` (spatial axes of the input and of every feature map).
    """

    name: str
    n_layers: int
    selected: tuple
    dimension: int


_INTERPRETER = re.compile(r"^forward of TorchScript model '.*' failed for input (?P<input>.*?): "
                          r"The following operation failed in the TorchScript interpreter\.")


def first_model_message(text: str) -> str:
    """One line of a model failure: the model's own error first, without TorchScript's traceback.

    ``"forward of TorchScript model 'm.pt' failed for input [2, 1, 5, 5] (...): The following operation
    failed in the TorchScript interpreter. <traceback> builtins.ValueError: bad"`` becomes
    ``"ValueError: bad (raised by the model's forward for input [2, 1, 5, 5] (...))"``; other texts keep
    their first line.
    """
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not lines:
        return str(text)
    match = _INTERPRETER.match(lines[0])
    if match is None or len(lines) < 2:
        return lines[0]
    cause = re.sub(r"^builtins\.", "", lines[-1])  # the model's own exception is the traceback's last line
    return f"{cause} (raised by the model's forward for input {match.group('input')})"


class ModelForwardError(ImpactModelError):
    """A model's forward raised; the message keeps the model's own error (:func:`first_model_message`)."""


def model_failure(name: str, error: Exception) -> ImpactModelError:
    """A :class:`ModelForwardError` for a model whose forward raised, keeping the model's own message."""
    return ModelForwardError(f"{name}: {first_model_message(str(error))}")


def _layer(use: ModelUse, layer: int, found: str, expected: str) -> ImpactModelError:
    return ImpactModelError(f"{use.name}, layer {layer}: {found}; {expected}")


def check_outputs(outputs: Any, use: ModelUse, batch: int) -> list:
    """Check the structure of one model result; cheap enough for every call.

    Args:
        outputs: what ``FeatureModel.forward`` returned.
        use: :class:`ModelUse`.
        batch: B of the input.

    Returns:
        Channel count C per selected layer.

    Raises:
        ImpactModelError: not a list, wrong length, or a selected layer that is not a floating tensor
            ``[B, C >= 1, *spatial]`` with ``use.dimension`` non-empty spatial axes.
    """
    form = f"[B, C, {_AXES.get(use.dimension, '*spatial')}]"
    if not isinstance(outputs, list):
        raise ImpactModelError(f"{use.name}: the model returned {type(outputs).__name__}; it must return a list "
                               f"of {use.n_layers} feature map(s) {form} (List[Tensor])")
    if len(outputs) != use.n_layers:
        raise ImpactModelError(f"{use.name}: the model returned {len(outputs)} feature map(s) but ImpactLayersMask "
                               f"has {use.n_layers} entries; the mask needs one entry per returned layer")
    channels = []
    for j in use.selected:
        out = outputs[j]
        if not isinstance(out, torch.Tensor):
            raise _layer(use, j, f"the model returned a {type(out).__name__}", f"a feature map is a tensor {form}")
        shape = list(out.shape)
        if out.dim() != 2 + use.dimension:
            raise _layer(use, j, f"the model returned shape {shape} ({max(0, out.dim() - 2)} spatial axes)",
                         f"ImpactDimension is {use.dimension}, so a feature map is {form} with {use.dimension} "
                         "spatial axes")
        if shape[0] != batch:
            raise _layer(use, j, f"the model returned batch {shape[0]} (shape {shape}) for an input batch of {batch}",
                         f"each input sample needs its own features: {form} with B = the input batch")
        if shape[1] < 1:
            raise _layer(use, j, "the model returned 0 channels", f"a feature map needs at least 1 channel {form}")
        if 0 in shape[2:]:
            raise _layer(use, j, f"the model returned an empty spatial axis (shape {shape})",
                         "every spatial axis needs at least 1 voxel; give a larger ImpactPatchSize")
        if not out.is_floating_point():
            raise _layer(use, j, f"the model returned {str(out.dtype).replace('torch.', '')} features",
                         "feature maps must be floating point (float32, float16 or float64)")
        channels.append(int(shape[1]))
    return channels


def check_finite(features: Any, use: ModelUse, layer: int, half: bool = False) -> None:
    """Refuse a layer holding NaN or Inf for a finite input, naming the first such element."""
    values = features.detach()
    if bool(torch.isfinite(values.sum())):  # one pass; a NaN or Inf anywhere makes the sum non-finite
        return
    finite = torch.isfinite(values)
    if bool(finite.all()):  # finite values whose sum overflowed
        return
    first = [int(i) for i in (~finite).nonzero()[0]]
    kind = "NaN" if bool(torch.isnan(values[tuple(first)])) else "Inf"
    raise _layer(use, layer, f"the output contains {kind} (first at element {first} of shape {list(values.shape)}, "
                             f"axes (batch, channel, z, y, x)) although its input was finite",
                 "check the model (e.g. a division by zero in a normalisation)"
                 + (", or turn off ImpactUseMixedPrecision (float16 overflows above 65504)" if half else ""))


def _probe_input(batch: int, channels: int, shape_zyx: Sequence[int], device: Any):
    """A smooth-enough random input in [0, 1) (zeros would make a normalising model divide by zero)."""
    generator = torch.Generator().manual_seed(7)
    return torch.rand((batch, channels) + tuple(shape_zyx), generator=generator).to(device)


def _stats(x):
    v = x.detach().float().cpu()
    return torch.tensor([float(v.min()), float(v.max()), float(v.mean()), float(v.std())])


def raw_output_dtypes(model: Any, path: str, x: Any, n_layers: int, stats: Any, direction: Any) -> list:
    """The dtypes a model returns before the bridge casts them to float32 (to name integer outputs).

    A ``torch.export`` model records them (``output_dtypes``); a TorchScript file is run once more from
    Python, on the CPU, with the plugin's positional convention (docs/design.md §I3.2).
    """
    recorded = getattr(model, "output_dtypes", None)
    if recorded is not None:
        return list(recorded)
    # Once per model file: each level probes again, and loading a large network from disk costs seconds.
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_mtime_ns, stat.st_size, int(n_layers), int(x.shape[1]))
    if key in _raw_dtypes:
        return _raw_dtypes[key]
    args = [x.detach().cpu().float(), torch.tensor(int(n_layers), dtype=torch.int16), stats.float().cpu(),
            direction.to(torch.int16).cpu()][:model.num_arguments]
    try:
        with torch.no_grad():
            out = torch.jit.load(path, map_location="cpu")(*args)
    except Exception as error:  # e.g. a model that runs only on CUDA: the dtypes stay unknown
        log.debug("could not rerun %s on the CPU to read its output dtypes: %s", path, error)
        return []
    _raw_dtypes[key] = [o.dtype for o in out] if isinstance(out, list) else []
    return _raw_dtypes[key]


def _forward(model, use: ModelUse, x, stats, direction):
    try:
        return model.forward(x, use.n_layers, stats, direction)
    except (RuntimeError, ValueError) as error:
        raise model_failure(use.name, error) from None


def _check_differentiable(model, use: ModelUse, path: str, x, outputs, stats, direction, required: bool) -> None:
    """Jacobian mode: every selected layer depends on the input through autograd, with a finite gradient.

    An output that does not require grad (and is floating point, :func:`_check_dtypes`) is detached: refused
    where ``required``.
    """
    detached = [j for j in use.selected if not outputs[j].requires_grad]
    if detached:
        if required:
            raise _layer(use, detached[0], "the output does not depend on the input through autograd (a detach(), "
                         "torch.no_grad() or a non-differentiable operation such as argmax or round)",
                         "ImpactMode Jacobian differentiates the features; make the model differentiable or use "
                         "ImpactMode Static")
    if not required:
        return
    for j in use.selected:
        centre = (slice(None), slice(None)) + tuple(s // 2 for s in outputs[j].shape[2:])
        (grad,) = torch.autograd.grad(outputs[j][centre].sum(), x, allow_unused=True, retain_graph=True)
        if grad is None:
            raise _layer(use, j, "the output's gradient with respect to the input is None (it does not depend on "
                         "the input)", "ImpactMode Jacobian needs features that depend on the patch; use ImpactMode "
                         "Static or another layer")
        if not bool(torch.isfinite(grad).all()):
            raise _layer(use, j, "the gradient of the output with respect to the input holds NaN or Inf",
                         "ImpactMode Jacobian needs a finite gradient; check the model (e.g. sqrt or division at 0)")


def probe_model(model: Any, use: ModelUse, path: str, channels: int, tile_zyx: Sequence[int], *, jacobian: bool,
                image_dimension: int, device: Any = "cpu", half: bool = False) -> list:
    """Probe one model once for one level: forward (and backward in Jacobian mode) on a random input.

    Args:
        model: the plugin's ``FeatureModel`` or an ``ExportedFeatureModel``.
        use: :class:`ModelUse`.
        path: the model file (for the dtype of outputs the plugin casts).
        channels: ``ImpactNumberOfChannels``.
        tile_zyx: the patch (Jacobian) or tile (Static) in voxels, (z, y, x); a 0 means the whole image,
            probed at the first size of :data:`WHOLE_IMAGE_PROBES` the forward accepts and one voxel more.
        jacobian: ImpactMode Jacobian (differentiability is required).
        image_dimension: D (the direction argument is ``D x D``).
        device: ``torch.device`` of the model.
        half: float16 model (``ImpactUseMixedPrecision``), for the advice on Inf.

    Returns:
        Channel count per selected layer.

    Raises:
        ImpactModelError: the forward raises (the model's own message), or the result breaks the contract
            (see the module docstring).
    """
    if 0 not in tile_zyx:
        return _probe_at(model, use, path, channels, tuple(tile_zyx), jacobian, image_dimension, device, half)
    for k, size in enumerate(WHOLE_IMAGE_PROBES):
        shape = tuple(t if t else size for t in tile_zyx)
        try:
            found = _probe_at(model, use, path, channels, shape, jacobian, image_dimension, device, half)
        except ModelForwardError:
            if k + 1 == len(WHOLE_IMAGE_PROBES):
                raise
            continue
        probed = _check_same_channels_at(model, use, channels, shape, image_dimension, device, found)
        if not jacobian:
            _check_static_extent(model, use, channels, tile_zyx, probed, image_dimension, device)
        return found


def _check_dtypes(model, use: ModelUse, path: str, x, stats, direction) -> None:
    """Refuse a selected layer whose raw output is not real floating point (bool, integer, complex).

    The plugin casts every output to float32 (plugin/impact_plugin.cpp, ``FeatureModel::forward``): an integer or bool map would pass
    as coarse features, and a complex one loses its imaginary part with only torch's C++ warning.
    """
    dtypes = raw_output_dtypes(model, path, x, use.n_layers, stats, direction)
    for j in use.selected:
        if j < len(dtypes) and not dtypes[j].is_floating_point:
            found = str(dtypes[j]).replace("torch.", "")
            fix = " (return x.real, x.abs() or both as channels)" if dtypes[j].is_complex else ""
            raise _layer(use, j, f"the model returned {found} features",
                         f"feature maps must be real floating point (float32, float16 or float64){fix}")


def _probe_at(model, use: ModelUse, path: str, channels: int, shape: tuple, jacobian: bool, image_dimension: int,
              device, half: bool) -> list:
    """One contract probe at one input shape (z, y, x); see :func:`probe_model`."""
    direction = torch.eye(image_dimension, dtype=torch.int16)
    with_grad = jacobian or torch.Size(shape).numel() <= GRAD_PROBE_VOXELS
    x = _probe_input(PROBE_BATCH, channels, shape, device).requires_grad_(with_grad)
    stats = _stats(x)
    with torch.enable_grad() if with_grad else torch.no_grad():
        outputs = _forward(model, use, x, stats, direction)
        found = check_outputs(outputs, use, PROBE_BATCH)
        _check_dtypes(model, use, path, x, stats, direction)
        for j in use.selected:
            check_finite(outputs[j], use, j, half)
        if with_grad:
            _check_differentiable(model, use, path, x, outputs, stats, direction, required=jacobian)
    return found


def _check_same_channels_at(model, use: ModelUse, channels: int, shape, image_dimension: int, device,
                            found: list) -> tuple:
    """A whole-image model runs on images of any size: its channel counts must not depend on the size.

    Returns:
        ``(input (z, y, x), [spatial shape of each selected layer])`` of this larger probe.
    """
    larger = tuple(s + 1 for s in shape)
    x = _probe_input(PROBE_BATCH, channels, larger, device)
    direction = torch.eye(image_dimension, dtype=torch.int16)
    with torch.no_grad():
        outputs = _forward(model, use, x, _stats(x), direction)
        other = check_outputs(outputs, use, PROBE_BATCH)
    for j, a, b in zip(use.selected, found, other):
        if a != b:
            raise _layer(use, j, f"the model returned {a} channels for a {shape[-1]}-voxel input but {b} for "
                         f"{larger[-1]} voxels per axis", "the channel count must not depend on the input "
                         "size (ImpactPatchSize 0 runs the model on the whole image)")
    return larger, _spatial_shapes(use, outputs)


def _spatial_shapes(use: ModelUse, outputs) -> list:
    return [tuple(int(s) for s in outputs[j].shape[2:]) for j in use.selected]


def _flat_axis(use: ModelUse, tile_zyx, input_zyx, shapes) -> Optional[tuple]:
    """The first (layer, axis) whose map has 1 voxel along a whole-image axis (tile 0) probed with 2 or more."""
    for j, spatial in zip(use.selected, shapes):
        for a, (t, n, h) in enumerate(zip(tile_zyx, input_zyx, spatial)):
            if t == 0 and n >= 2 and h == 1:
                return j, a
    return None


def _check_static_extent(model, use: ModelUse, channels: int, tile_zyx, probed: tuple, image_dimension: int,
                         device) -> None:
    """Static whole-image models: every selected map keeps more than 1 voxel along every axis.

    Static mode interpolates the feature maps in space (docs/design.md §I6.5, the IMPACT paper's "static"
    features): a map of 1 voxel along an axis whatever the input (a global pooling) is constant, and the
    metric, its derivative and the transform stay at their start. Jacobian mode reads the patch centre
    (§I5.1) and may return 1 voxel. A map flat at a small probe is probed again at the largest
    :data:`WHOLE_IMAGE_PROBES` size (a deep encoder shrinks a 17-voxel input to 1 voxel).

    Raises:
        ImpactModelError: naming the layer, the input and output sizes and the fix.
    """
    input_zyx, shapes = probed
    flat = _flat_axis(use, tile_zyx, input_zyx, shapes)
    if flat and max(input_zyx) < WHOLE_IMAGE_PROBES[-1]:
        input_zyx = tuple(t if t else WHOLE_IMAGE_PROBES[-1] for t in tile_zyx)
        x = _probe_input(PROBE_BATCH, channels, input_zyx, device)
        with torch.no_grad():
            outputs = _forward(model, use, x, _stats(x), torch.eye(image_dimension, dtype=torch.int16))
        check_outputs(outputs, use, PROBE_BATCH)
        shapes = _spatial_shapes(use, outputs)
        flat = _flat_axis(use, tile_zyx, input_zyx, shapes)
    if flat:
        j, a = flat
        axis = "zyx"[3 - len(input_zyx):][a]
        found = " x ".join(map(str, shapes[use.selected.index(j)]))
        raise _layer(use, j, f"the model returned a feature map of {found} voxels for an input of "
                     f"{' x '.join(map(str, input_zyx))} ({_AXES[len(input_zyx)]}), 1 voxel along {axis}",
                     "ImpactMode Static interpolates the maps in space, so the features would be constant and the "
                     "metric too; use a model that keeps spatial resolution (no global pooling) or ImpactMode Jacobian")


def check_channel_options(level: int, channels: Sequence[int], subset: Sequence[int], pca: Sequence[int],
                          static: bool) -> None:
    """``ImpactPCA`` against the channels (error, Static mode); ``ImpactSubsetFeatures`` above them (warning).

    Raises:
        elastix_bridge.core.impact_parameters.ImpactParameterError: an ``ImpactPCA<L>`` entry asks for more
            components than its layer has channels.
    """
    for l, c in enumerate(channels):
        check_pca(level, l, int(pca[l]) if static and l < len(pca) else 0, c)
        s = int(subset[l]) if l < len(subset) else 0
        if s > c:
            log.warning("ImpactSubsetFeatures%d (level %d): entry %d asks for %d channels but the layer has %d; all %d "
                        "are compared (as upstream elastix does); write %d to say so", level, level, l, s, c, c, c)


def check_pca(level: int, layer: int, components: int, channels: int) -> None:
    """``ImpactPCA<level>`` may not ask for more components than its layer has channels.

    Raises:
        elastix_bridge.core.impact_parameters.ImpactParameterError: naming the entry, both counts and the fix.
    """
    if components > channels:
        raise ImpactParameterError(
            f"ImpactPCA{level} (level {level}): entry {layer} asks for {components} principal components but layer "
            f"{layer} has only {channels} channels; use 0 (off) or a number <= {channels}")


def model_name(level: Optional[int], which: str, path: str) -> str:
    """The model as messages name it: ``"level 1, fixed model 'm.pt'"``."""
    return (f"level {level}, " if level is not None else "") + (f"{which} model" if which else "model") + f" '{path}'"
