"""MIND-SSC descriptors as an IMPACT TorchScript feature model (no download needed).

MIND (modality independent neighbourhood descriptor, Heinrich et al., "MIND: Modality independent
neighbourhood descriptor for multi-modal deformable registration", MedIA 16(7), 2012) describes
every voxel by how similar small patches around it are to each other; the self-similarity context
variant MIND-SSC (Heinrich et al., "Towards realtime multimodal fusion for image-guided
interventions using self-similarities", MICCAI 2013, §2) compares the patches centred at *pairs of
neighbours* of the six-neighbourhood instead of the centre with its neighbours, which is more
robust to noise and avoids the bias of the centre patch.

For an image ``I`` (tensor axes ``(z, y, x)`` / ``(y, x)``, dilation ``δ``, patch radius ``r``):

* neighbourhood: the ``2D`` voxels ``±δ·e_a`` (3D: 6, 2D: 4);
* pairs: the neighbour pairs at distance ``δ·√2`` (one offset on each of two different axes):
  3D → 12 pairs, 2D → 4 pairs; one output channel per pair;
* ``SSD_c(x) = box_r * (I(x + o_c) − I(x + o'_c))²`` — squared difference of the two shifted
  images, averaged over a ``(2r+1)^D`` box (replicate padding at the border for both steps);
* ``V(x) = mean_c SSD_c(x)`` clamped to ``[0.001·m, 1000·m]`` with ``m`` the mean of ``V`` over
  the image (robustness to flat regions and outliers);
* ``MIND_c(x) = exp(−SSD_c(x) / V(x)) / max_c' exp(−SSD_c'(x) / V(x))`` (MedIA 2012 eq. 3:
  normalised so the per-voxel maximum is 1).

The per-voxel max normalisation is computed as ``exp(−(SSD_c − min_c' SSD_c') / V)``, which is
algebraically identical and cannot underflow. Differences from Heinrich's public PyTorch snippet
(and from the upstream elastix test model ``R1D2_2D.pt``, docs/design.md §I11.1): there ``V`` is the
channel mean of the *min-subtracted* SSD and the clamp uses the mean over the whole tensor
including the batch axis; here ``V`` follows the papers (mean of the SSD itself) and ``m`` is taken
per batch element, so a sample's descriptor does not depend on what else is in the batch (IMPACT
Jacobian mode batches the patches of many samples, docs/design.md §I4.2). A tiny absolute floor on
``V`` keeps constant images finite (descriptor = 1 everywhere).

The module follows the IMPACT model calling convention (docs/design.md §I3.2/§I3.3): ``forward(x,
n_layers, stats, direction)`` returning a list with one feature tensor. Reserved model names
(:data:`elastix_bridge.core.reserved_models.RESERVED_MODELS`) can be written in a parameter file
instead of a path, e.g. ``(ImpactModelsPath0 "mind-ssc-3d")``; :func:`mind_model_path` writes the
TorchScript file into a per-torch-version cache on first use.
"""
# NOTE: deliberately no ``from __future__ import annotations`` here: TorchScript must see the real
# annotation objects of the MINDSSC methods.
import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import List

# torch at the top: this module is imported only when a built-in model is made
# (elastix_bridge.runtime.loader.model_file, after the LibTorch check), never by ``import elastix_bridge``.
import torch
import torch.nn.functional as F
from torch import Tensor

from elastix_bridge.core.reserved_models import RESERVED_MODELS, mind_pairs
from elastix_bridge.runtime.cache import cache_root

__all__ = [
    "MINDSSC",
    "mind_model_path",
    "write_mind_ssc",
]


class MINDSSC(torch.nn.Module):
    """MIND-SSC descriptor module (see the module docstring for the formula).

    Args:
        dimension: spatial dimension of the input, 2 or 3.
        radius: half-size ``r`` of the box filter (patch ``(2r+1)^D`` voxels), ``>= 0``.
        dilation: neighbour distance ``δ`` in voxels, ``>= 1``.

    Input ``x``: ``[B, C, *spatial]`` float (C ≥ 1, only channel 0 is used — IMPACT
    replicates the intensity over ``ImpactNumberOfChannels``). Output: a one-element list
    ``[features]`` with ``features`` of shape ``[B, n_channels, *spatial]`` (same spatial size;
    ``n_channels`` = 12 in 3D, 4 in 2D), values in ``(0, 1]``, per-voxel max 1.

    Raises:
        ValueError: bad dimension/radius/dilation (construction).
        RuntimeError: in forward, when ``x`` does not have ``dimension + 2`` axes.
    """

    def __init__(self, dimension: int = 3, radius: int = 1, dilation: int = 2) -> None:
        super().__init__()
        if dimension not in (2, 3):
            raise ValueError(f"MINDSSC: dimension must be 2 or 3, got {dimension!r}")
        if int(radius) != radius or radius < 0:
            raise ValueError(f"MINDSSC: radius must be an integer >= 0, got {radius!r}")
        if int(dilation) != dilation or dilation < 1:
            raise ValueError(f"MINDSSC: dilation must be an integer >= 1, got {dilation!r}")
        self.dimension = int(dimension)
        self.radius = int(radius)
        self.dilation = int(dilation)
        pairs = mind_pairs(dimension)
        self.n_channels = len(pairs)
        # Shifts in voxels of the two neighbours of each pair (plain ints: nothing for
        # module.to(float16) to cast; mixed precision, docs/design.md §I3.5).
        self.pair_shifts: List[List[List[int]]] = [
            [[o * self.dilation for o in a], [o * self.dilation for o in b]] for a, b in pairs]

    def _window(self, padded: Tensor, shift: List[int], shape: List[int], first: int) -> Tensor:
        """``img(x + shift)`` for ``shape`` voxels from row ``first`` of the first spatial axis, as a
        view of the image padded by the dilation on every side."""
        s = padded
        for axis in range(self.dimension):
            start = self.dilation + shift[axis] + (first if axis == 0 else 0)
            s = s.narrow(axis + 2, start, shape[axis])
        return s

    def _ssd(self, img: Tensor) -> Tensor:
        """``[B, 1, *S]`` → ``[B, n_channels, *S]``: the box-averaged squared difference of each pair.

        Without autograd, slab by slab along the first spatial axis (~128k voxels each) and one
        channel at a time: every temporary stays in the processor's cache and below the
        allocator's large-block size, several times faster on large volumes than whole-tensor
        passes, with the same numbers (a slab reads the rows the box needs around it).
        """
        pad: List[int] = [self.dilation] * (2 * self.dimension)
        padded = F.pad(img, pad, mode="replicate")
        shape: List[int] = list(img.shape[2:])
        if torch.is_grad_enabled() and img.requires_grad:  # autograd cannot follow writes into `out`
            return torch.cat([self._pair_ssd(padded, shifts, shape, 0, shape[0])
                              for shifts in self.pair_shifts], dim=1)
        out = img.new_empty([img.shape[0], self.n_channels] + shape)
        row = 1
        for n in shape[1:]:
            row *= n
        step = max(1, 131072 // max(1, row))
        for first in range(0, shape[0], step):
            last = min(shape[0], first + step)
            for c, shifts in enumerate(self.pair_shifts):
                out.narrow(1, c, 1).narrow(2, first, last - first).copy_(
                    self._pair_ssd(padded, shifts, shape, first, last))
        return out

    def _pair_ssd(self, padded: Tensor, shifts: List[List[int]], shape: List[int], first: int,
                  last: int) -> Tensor:
        """Rows ``first:last`` (first spatial axis) of one pair's box-averaged squared difference.

        The box needs ``r`` more rows on each side: real rows inside the volume, replicated rows
        (the box's padding) only beyond its faces.
        """
        r = self.radius
        lo = max(0, first - r)
        hi = min(shape[0], last + r)
        rows = list(shape)
        rows[0] = hi - lo
        diff = self._window(padded, shifts[0], rows, lo) - self._window(padded, shifts[1], rows, lo)
        if r == 0:
            return diff * diff
        pad: List[int] = [r] * (2 * self.dimension)
        pad[-2] = r - (first - lo)  # F.pad lists the last axis first: the first spatial axis is last
        pad[-1] = r - (hi - last)
        return self.box_mean(F.pad(diff * diff, pad, mode="replicate"))

    def box_mean(self, out: Tensor) -> Tensor:
        """Mean over a ``(2r+1)^D`` box of a tensor padded by ``r`` on every side (valid part):
        ``[B, C, *(S + 2r)]`` → ``[B, C, *S]``, ``r`` the model's ``radius``.

        A sum of shifted slices along one axis at a time (the box is separable), several times
        faster than a ``(2r+1)^D`` average pool.
        """
        r = self.radius
        k = 2 * r + 1
        for axis in range(2, 2 + self.dimension):
            length = out.shape[axis] - 2 * r
            acc = out.narrow(axis, 0, length) + out.narrow(axis, 1, length)
            for j in range(2, k):
                acc.add_(out.narrow(axis, j, length))  # in place: add's backward needs no values
            out = acc
        return out / float(k ** self.dimension)

    def forward(
        self,
        x: Tensor,
        n_layers: Tensor = torch.tensor(1, dtype=torch.int16),
        stats: Tensor = torch.zeros(4),
        direction: Tensor = torch.zeros(1, 1, dtype=torch.int16),
    ) -> List[Tensor]:
        """IMPACT 4-argument forward (docs/design.md §I3.2).

        Args:
            x: ``[B, C, *spatial]`` input patch/tile; only channel 0 is used.
            n_layers: 0-d int16, mask length requested by the metric; ignored (one layer).
            stats: float ``[4]`` = ``[min, max, mean, std]`` of the whole level image. When
                not all zero, ``x`` is rescaled as ``(x − min) / (max − min + 1e-6)`` so the
                variance clamps act on a known scale.
            direction: int16 ``[D, D]`` rounded direction cosines; ignored (MIND-SSC is
                symmetric under axis flips up to a channel permutation).

        Returns:
            ``[features]``, features ``[B, n_channels, *spatial]`` in the dtype of ``x``.
        """
        if x.dim() != self.dimension + 2:
            raise RuntimeError(
                "MINDSSC: expected a [B, C, *spatial] input with "
                + str(self.dimension) + " spatial axes, got shape " + str(x.shape))
        img = x[:, :1]
        if bool(torch.any(stats != 0)):
            lo = stats[0].to(img.device)
            hi = stats[1].to(img.device)
            img = (img - lo) / (hi - lo + 1e-6)
        ssd = self._ssd(img)
        var = ssd.mean(dim=1, keepdim=True)
        reduce_dims: List[int] = list(range(1, var.dim()))
        m = var.mean(dim=reduce_dims, keepdim=True)
        var = torch.maximum(torch.minimum(var, m * 1000.0), m * 0.001)
        var = torch.clamp(var, min=1e-12)
        ssd_min = ssd.min(dim=1, keepdim=True)[0]
        if torch.is_grad_enabled() and ssd.requires_grad:  # Jacobian mode: autograd needs the values
            return [torch.exp(-(ssd - ssd_min) / var)]
        return [ssd.sub_(ssd_min).div_(var).neg_().exp_()]  # the same numbers, in place


def write_mind_ssc(path: str | Path, dimension: int, radius: int = 1, dilation: int = 2) -> Path:
    """Script a :class:`MINDSSC` module and save it as a TorchScript archive.

    The archive is written to a temporary file in the target folder and renamed into place, so a
    concurrent reader never sees a partial file.

    Args:
        path: output file (``.pt``); parent folders are created.
        dimension: 2 or 3.
        radius: box-filter half-size (default 1).
        dilation: neighbour distance in voxels (default 2).

    Returns:
        The path written.

    Raises:
        ValueError: invalid dimension/radius/dilation.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = MINDSSC(dimension, radius, dilation).eval()
    with warnings.catch_warnings():  # torch >= 2.10 flags torch.jit as deprecated; it still works
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(module)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        scripted.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def mind_model_path(name: str) -> Path:
    """Resolve a reserved MIND-SSC model name to a cached TorchScript file, writing it if needed.

    The file is ``<cache root>/models/<torch.__version__>/<name>-<source hash>.pt``: per torch
    version, because a TorchScript archive written by a newer torch may not load in an older one,
    and per version of this module, so an upgrade never reuses a model written by older code.

    Args:
        name: ``"mind-ssc-2d"`` or ``"mind-ssc-3d"``
            (:data:`elastix_bridge.core.reserved_models.RESERVED_MODELS`).

    Returns:
        Path to an existing TorchScript file.

    Raises:
        KeyError: unknown name (the message lists the reserved names).
    """
    if name not in RESERVED_MODELS:
        raise KeyError(
            f"unknown reserved model name {name!r}; reserved names are {sorted(RESERVED_MODELS)}")
    dimension = RESERVED_MODELS[name][0]
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    path = cache_root() / "models" / str(torch.__version__) / f"{name}-{digest}.pt"
    if not path.is_file():
        write_mind_ssc(path, dimension)
    return path
