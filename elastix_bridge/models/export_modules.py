"""The torch modules an exported feature model is made of (``elastix-bridge model export``).

:mod:`elastix_bridge.models.export` builds them after the LibTorch check; this module imports torch at its
top, so the command line, which imports the export module for every command, imports it only then.
The input normalisation, the orientation to the identity and back, and the IMPACT calling convention
(docs/design.md §I3.2) around the network: TorchScript copies truncated at each chosen block
(:class:`Features`) or forward hooks on a Python network (:class:`HookedFeatures`).
"""
from __future__ import annotations

from typing import List

import torch


class Normalise(torch.nn.Module):
    """The input normalisation, from the level statistics ``[min, max, mean, σ]``."""

    def __init__(self, kind: str, low: float, high: float) -> None:
        super().__init__()
        self.kind, self.low, self.high = kind, float(low), float(high)

    def forward(self, x: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        if self.kind == "zscore":
            return (x - stats[2]) / stats[3]
        if self.kind == "minmax":
            return (x - stats[0]) / (stats[1] - stats[0])
        if self.kind == "ct":
            return (x.clamp(self.low, self.high) - self.low) / (self.high - self.low)
        return x


class Orient(torch.nn.Module):
    """With ``enabled``: show the network the image in the identity orientation, and put the features back.

    From the rounded direction cosines ``[D, D]`` (column ``j`` = image axis ``j`` in physical
    ``(x, y, z)``): each image axis is flipped when it points along a negative physical axis, and the
    axes are permuted into physical order; ``back`` undoes both on a feature map (exact for
    stride 1; a strided layer's features are flipped as a whole).
    """

    def __init__(self, enabled: bool) -> None:
        super().__init__()
        self.enabled = enabled

    def _plan(self, direction: torch.Tensor):
        d = direction.size(0)
        flips: List[int] = []
        perm: List[int] = [0, 1]
        for j in range(d):
            if int(direction[:, j].sum()) < 0:
                flips.append(2 + d - 1 - j)
        for k in range(d):  # tensor axis 2 + k shows physical axis d - 1 - k
            row = direction[d - 1 - k].abs()
            j = int(torch.argmax(row))
            perm.append(2 + d - 1 - j)
        return flips, perm

    def forward(self, x: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        flips, perm = self._plan(direction)
        if len(flips) > 0:
            x = torch.flip(x, flips)
        return x.permute(perm)

    def back(self, y: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return y
        flips, perm = self._plan(direction)
        inverse: List[int] = [0] * len(perm)
        for k in range(len(perm)):
            inverse[perm[k]] = k
        y = y.permute(inverse)
        if len(flips) > 0:
            y = torch.flip(y, flips)
        return y


class Features(torch.nn.Module):
    """IMPACT convention around truncated TorchScript copies of the network, one per layer."""

    def __init__(self, normalise: torch.nn.Module, orient: torch.nn.Module, parts: List[torch.nn.Module]) -> None:
        super().__init__()
        self.normalise, self.orient = normalise, orient
        self.parts = torch.nn.ModuleList(parts)

    def forward(self, x: torch.Tensor, n_layers: torch.Tensor, stats: torch.Tensor,
                direction: torch.Tensor) -> List[torch.Tensor]:
        y = self.orient(self.normalise(x, stats), direction)
        out: List[torch.Tensor] = []
        for part in self.parts:
            out.append(self.orient.back(part(y), direction))
        return out


class HookedFeatures(torch.nn.Module):
    """IMPACT convention around a Python network; forward hooks keep the chosen blocks' outputs."""

    def __init__(self, normalise: torch.nn.Module, orient: torch.nn.Module, network: torch.nn.Module,
                 names: List[str]) -> None:
        super().__init__()
        self.normalise, self.orient, self.network, self.names = normalise, orient, network, names

    def forward(self, x, n_layers, stats, direction):
        kept = {}
        handles = [dict(self.network.named_children())[name].register_forward_hook(
            lambda module, args, output, name=name: kept.__setitem__(name, output)) for name in self.names]
        try:
            self.network(self.orient(self.normalise(x, stats), direction))
        finally:
            for handle in handles:
                handle.remove()
        return [self.orient.back(kept[name], direction) for name in self.names]
