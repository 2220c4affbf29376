"""elastix's random numbers: one Mersenne Twister per registration, seeded with ``RandomSeed``.

ITK's ``MersenneTwisterRandomVariateGenerator`` is the standard MT19937 with ``init_genrand(seed)``
seeding; elastix keeps one per run, seeded with ``RandomSeed`` (default 121212) before the
registration, and its random samplers and ASGD's perturbations draw from it in a fixed order
(docs/design.md §E14). Reproducing the stream and the variate formulas makes the bridge draw the same
samples and perturbations as elastix, so the first iterations of a run can be compared digit by
digit. numpy's ``MT19937`` supplies the raw 32-bit stream (its state is set through its public
``state`` property); the variates are computed here, vectorised.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch  # annotations only: never imported at run time

_TWO32 = 4294967296.0
DEFAULT_SEED = 121212
# ITK's multithreaded ImageRandomSampler seeds a local generator per sample set with 121214, 121215, ...
RANDOM_SAMPLER_FIRST_SEED = 121214


def _init_genrand(seed: int) -> np.ndarray:
    """MT19937's ``init_genrand`` key (624 words) for a 32-bit seed (Matsumoto & Nishimura 2002)."""
    key = np.empty(624, dtype=np.uint64)
    key[0] = seed & 0xFFFFFFFF
    for i in range(1, 624):
        prev = int(key[i - 1])
        key[i] = (1812433253 * (prev ^ (prev >> 30)) + i) & 0xFFFFFFFF
    return key.astype(np.uint32)


class ElastixRandom:
    """The raw MT19937 stream of one elastix run and ITK's variates on it.

    Draws are taken from a buffer, so a caller that drew ahead (a vectorised rejection sampler) can
    give back what it did not use with :meth:`rewind`, keeping the stream in elastix's order.

    Args:
        seed: ``RandomSeed`` (unsigned 32-bit).

    Attributes:
        random_sampler_seed: the seed of the next ``Random`` sampler sample set (docs/design.md §E14).
    """

    def __init__(self, seed: int = DEFAULT_SEED) -> None:
        self.seed = int(seed)
        self._bits = np.random.MT19937()
        self._bits.state = {"bit_generator": "MT19937", "state": {"key": _init_genrand(self.seed), "pos": 624}}
        self._buffer = np.empty(0, dtype=np.uint64)
        self._pos = 0
        self.random_sampler_seed = RANDOM_SAMPLER_FIRST_SEED

    def raw(self, count: int) -> np.ndarray:
        """The next ``count`` raw 32-bit outputs (uint64 array, values < 2^32)."""
        count = int(count)
        if self._pos + count > self._buffer.size:
            fresh = self._bits.random_raw(max(count, 1 << 16)).astype(np.uint64)
            self._buffer = np.concatenate([self._buffer[self._pos:], fresh])
            self._pos = 0
        out = self._buffer[self._pos:self._pos + count]
        self._pos += count
        return out

    def rewind(self, count: int) -> None:
        """Give back the last ``count`` raw outputs (they were drawn ahead but not used)."""
        if not 0 <= count <= self._pos:
            raise ValueError(f"cannot rewind {count} draws (only {self._pos} in the buffer)")
        self._pos -= int(count)

    def uniform(self, low: np.ndarray | Sequence[float], high: np.ndarray | Sequence[float], count: int) -> np.ndarray:
        """``count`` rows of ITK ``GetUniformVariate(low_d, high_d)`` = ``(1 − u)·low + u·high``, ``u = r/2^32``.

        Args:
            low, high: ``(D,)`` bounds; each row draws its ``D`` values in axis order.

        Returns:
            ``(count, D)`` float64.
        """
        low = np.asarray(low, dtype=np.float64)
        high = np.asarray(high, dtype=np.float64)
        u = self.raw(count * low.size).reshape(count, low.size) / _TWO32
        return (1.0 - u) * low + u * high

    def normal(self, count: int) -> np.ndarray:
        """``count`` ITK ``GetNormalVariate(0, 1)``: ``√(−2 ln(1 − (r1+½)/2^32))·cos(2π r2/2^32)``, two draws each."""
        r = self.raw(2 * count).reshape(count, 2).astype(np.float64)
        radius = np.sqrt(-2.0 * np.log(1.0 - (r[:, 0] + 0.5) / _TWO32))
        return radius * np.cos(2.0 * np.pi * (r[:, 1] / _TWO32))

    def integer(self, maximum: int, count: int) -> np.ndarray:
        """``count`` ITK ``GetIntegerVariate(maximum)``: uniform in ``[0, maximum]`` by masked rejection."""
        maximum = int(maximum)
        mask = (1 << maximum.bit_length()) - 1
        out = np.empty(0, dtype=np.int64)
        while out.size < count:
            need = count - out.size
            draws = self.raw(2 * need + 16) & mask
            ok = np.flatnonzero(draws <= maximum)
            if ok.size > need:  # the rest of the draws were not consumed by elastix
                self.rewind(draws.size - (int(ok[need - 1]) + 1))
                ok = ok[:need]
            out = np.concatenate([out, draws[ok].astype(np.int64)])
        return out

    def open_range(self, n: float, count: int) -> np.ndarray:
        """``count`` ITK ``GetVariateWithOpenRange(n)`` = ``n·(r + ½)/2^32``."""
        return n * (self.raw(count).astype(np.float64) + 0.5) / _TWO32


def as_elastix_random(generator: ElastixRandom | int | torch.Generator) -> ElastixRandom:
    """An :class:`ElastixRandom` from itself, a seed, or a ``torch.Generator`` (its initial seed).

    Raises:
        ValueError: ``generator`` is None (randomness is never global).
    """
    if generator is None:
        raise ValueError("a random generator is required (randomness is never global)")
    if isinstance(generator, ElastixRandom):
        return generator
    if isinstance(generator, (int, np.integer)):
        return ElastixRandom(int(generator))
    return ElastixRandom(int(generator.initial_seed()) & 0xFFFFFFFF)
