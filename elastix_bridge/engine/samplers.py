"""Image samplers (docs/design.md §E5): physical sample points of the fixed level image.

Every sampler works on the *sampling region* = the level fixed region (docs/design.md §E3.6; default the whole
level image) cropped to the fixed mask's bounding box (``Common/ImageSamplers/itkImageSamplerBase.hxx``
``CropInputImageRegion``); the fixed mask (already eroded by the caller if ``ErodeMask``) restricts
the samples with the nearest-voxel rule of :meth:`Mask.contains`.

Randomness only comes from the stage's :class:`~elastix_bridge.engine.random.ElastixRandom` given to
a sampler (draws are made on the CPU and moved to ``device``), never from global state. It is
elastix's Mersenne Twister with elastix's variates and draw order (docs/design.md §E14), so with the same
``RandomSeed`` the samples are elastix's own (except the Random sampler with a mask, whose draws
elastix does not make reproducible).

All samplers return ``(N, D)`` physical points in mm, ITK ``(x, y, z)`` order, from ``sample()``.
"""
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from elastix_bridge.core.geometry import ImageGeometry
from elastix_bridge.core.parameters import ParameterMap
from elastix_bridge.engine.components import component
from elastix_bridge.engine.random import ElastixRandom, as_elastix_random

if TYPE_CHECKING:  # pragma: no cover
    from elastix_bridge.engine.images.level_images import Mask

NOT_ENOUGH_SAMPLES = ("Could not find enough image samples within reasonable time. "
                      "Probably the mask is too small")


def sampling_region(image_geometry: ImageGeometry, mask: "Mask | None" = None,
                    region: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sampling region: level region cropped to the mask bounding box (docs/design.md §E5).

    The mask's index bounding box ``[a, b]`` is widened to ``[a − 0.5, b + 0.5]``; its 2^D corners are
    mapped to physical space and their axis-aligned physical bounding box is taken (ITK
    ``ImageMaskSpatialObject::GetMyBoundingBoxInWorldSpace``); that box's 2^D corners are mapped to
    continuous indices of the level image, and ``floor(min) .. ceil(max)`` is intersected with the
    level region.

    Args:
        image_geometry: level fixed image geometry.
        mask: optional fixed mask (its own, full-resolution geometry).
        region: optional ``(start_xyz, size_xyz)`` level region (docs/design.md §E3.6); default: whole image.

    Returns:
        ``(start_xyz, size_xyz)`` as ``np.int64[D]`` arrays.

    Raises:
        ValueError: empty mask, or the mask bounding box lies entirely outside the region (elastix:
            "the bounding box of the mask lies entirely out of the InputImageRegion").
    """
    d = image_geometry.dimension
    if region is None:
        start = np.zeros(d, dtype=np.int64)
        size = np.asarray(image_geometry.size, dtype=np.int64)
    else:
        start = np.asarray(region[0], dtype=np.int64).reshape(d)
        size = np.asarray(region[1], dtype=np.int64).reshape(d)
    if mask is None:
        return start, size
    first, last = mask.bounding_box_index()
    lo, hi = first - 0.5, last + 0.5
    corners = np.array([[hi[k] if bit else lo[k] for k, bit in enumerate(bits)]
                        for bits in itertools.product((0, 1), repeat=d)], dtype=np.float64)
    phys = mask.geometry.index_to_physical(corners)
    pmin, pmax = phys.min(axis=0), phys.max(axis=0)
    box = np.array([[pmax[k] if bit else pmin[k] for k, bit in enumerate(bits)]
                    for bits in itertools.product((0, 1), repeat=d)], dtype=np.float64)
    cidx = image_geometry.physical_to_index(box)
    bb_start = np.floor(cidx.min(axis=0)).astype(np.int64)
    bb_end = np.ceil(cidx.max(axis=0)).astype(np.int64)
    new_start = np.maximum(start, bb_start)
    new_end = np.minimum(start + size - 1, bb_end)
    if np.any(new_end < new_start):
        raise ValueError("ERROR: the bounding box of the mask lies entirely out of the InputImageRegion!")
    return new_start, new_end - new_start + 1


def _region_indices(start, size) -> np.ndarray:
    """All integer indices of a region, ``(prod(size), D)`` float64, x fastest (ITK memory order)."""
    d = len(size)
    axes = [np.arange(s, s + n, dtype=np.float64) for s, n in zip(start, size)]
    grids = np.meshgrid(*axes[::-1], indexing="ij")  # zyx order -> x fastest when raveled
    return np.stack([g.reshape(-1) for g in grids[::-1]], axis=1).reshape(-1, d)


class ImageSampler:
    """Base class: geometry, mask, cropped region, output device/dtype.

    Args:
        image_geometry: level fixed image geometry.
        mask: optional fixed :class:`~elastix_bridge.engine.images.level_images.Mask`.
        region: optional level region ``(start_xyz, size_xyz)`` (docs/design.md §E3.6).
        device: torch device of the returned points (default CPU).
        dtype: torch dtype of the returned points (default float64).

    Attributes:
        region_start_xyz, region_size_xyz: the cropped sampling region (``np.int64[D]``).
    """

    name = "ImageSampler"

    def __init__(self, image_geometry: ImageGeometry, mask: Mask | None = None,
                 region: tuple[np.ndarray, np.ndarray] | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        self.geometry = image_geometry
        self.mask = mask
        self.region_start_xyz, self.region_size_xyz = sampling_region(image_geometry, mask, region)
        self.device = device
        self.dtype = dtype

    def to_points(self, index_xyz: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(N, D)`` continuous indices (ITK order) as the sampler's ``(N, D)`` physical points (mm, its device, dtype)."""
        t = torch.as_tensor(index_xyz, dtype=torch.float64)
        pts = self.geometry.index_to_physical(t)
        return pts.to(device=self.device, dtype=self.dtype or torch.float64)

    def _inside_mask(self, index_xyz: "torch.Tensor") -> "torch.Tensor":
        if self.mask is None:
            return torch.ones(index_xyz.shape[0], dtype=torch.bool)
        return self.mask.contains(self.geometry.index_to_physical(index_xyz))

    def region_indices(self) -> torch.Tensor:
        """The sampling region's voxels inside the mask, ``(M, D)`` float64 indices (ITK order), x fastest."""
        idx = torch.as_tensor(_region_indices(self.region_start_xyz, self.region_size_xyz))
        if self.mask is not None:
            idx = idx[self._inside_mask(idx)]
        return idx

    @classmethod
    def from_parameter_map(cls, image_geometry: ImageGeometry, mask: Mask | None = None, *,
                           parameter_map: ParameterMap | None = None, level: int = 0,
                           number_of_samples: int = 5000,
                           generator: ElastixRandom | int | torch.Generator | None = None,
                           region: tuple[np.ndarray, np.ndarray] | None = None,
                           device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                           **options: Any) -> "ImageSampler":
        """Build the sampler of a resolution level; the registry's factory (see :func:`make_sampler`).

        Every sampler takes the same arguments; each uses those it needs and reads its own keys of
        ``parameter_map`` for ``level`` unless ``options`` give them explicitly. This base version builds
        a sampler that draws nothing at random: ``cls(image_geometry, mask, region=, device=, dtype=, **options)``.
        """
        return cls(image_geometry, mask, region=region, device=device, dtype=dtype, **options)

    def sample(self) -> "torch.Tensor":  # pragma: no cover - abstract
        raise NotImplementedError


def _random_from_parameter_map(cls, image_geometry, mask=None, *, parameter_map=None, level=0,
                               number_of_samples=5000, generator=None, region=None, device=None, dtype=None,
                               **options):
    """:meth:`ImageSampler.from_parameter_map` of the random samplers: ``N`` samples from ``generator``."""
    return cls(image_geometry, mask, number_of_samples, generator, region=region, device=device, dtype=dtype,
               **options)


class FullSampler(ImageSampler):
    """Every voxel of the cropped region inside the mask, in memory order (x fastest).

    Source: ``Common/ImageSamplers/itkImageFullSampler.hxx``.
    """

    name = "Full"

    def sample(self) -> "torch.Tensor":
        """Returns ``(M, D)`` physical voxel centres (mm)."""
        return self.to_points(self.region_indices())


class GridSampler(ImageSampler):
    """Regular grid centred in the cropped region (``Common/ImageSamplers/itkImageGridSampler.hxx``).

    Per axis: ``m = 1 + floor((n − 1)/s)`` points, first at ``start + floor((n − ((m − 1)s + 1))/2)``;
    grid points outside the mask are dropped. From a number of samples N instead of a spacing:
    isotropic ``s = max(1, round((#voxels of the cropped region / N)^(1/D)))``.

    Args:
        image_geometry, mask, region, device, dtype: see :class:`ImageSampler`.
        spacing_xyz: grid spacing in voxels per axis (``SampleGridSpacing``), or one int; default 2.
        number_of_samples: alternative to ``spacing_xyz``.

    Raises:
        ValueError: non-positive spacing, or both ``spacing_xyz`` and ``number_of_samples`` given.
    """

    name = "Grid"

    def __init__(self, image_geometry: ImageGeometry, mask: Mask | None = None,
                 spacing_xyz: Sequence[int] | None = None, number_of_samples: int | None = None,
                 region: tuple[np.ndarray, np.ndarray] | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(image_geometry, mask, region, device, dtype)
        d = image_geometry.dimension
        if spacing_xyz is not None and number_of_samples is not None:
            raise ValueError("give either spacing_xyz or number_of_samples, not both")
        if number_of_samples is not None:
            if int(number_of_samples) < 1:
                raise ValueError(f"number_of_samples must be >= 1; got {number_of_samples}")
            voxels = float(np.prod(self.region_size_xyz))
            s = max(1, int(np.floor((voxels / int(number_of_samples)) ** (1.0 / d) + 0.5)))
            spacing = np.full(d, s, dtype=np.int64)
        else:
            raw = np.asarray(2 if spacing_xyz is None else spacing_xyz, dtype=np.float64).reshape(-1)
            if raw.size == 1:
                raw = np.repeat(raw, d)
            if raw.size != d or np.any(raw < 1) or np.any(raw != np.round(raw)):
                raise ValueError(f"spacing_xyz must be {d} integers >= 1; got {spacing_xyz!r}")
            spacing = raw.astype(np.int64)
        self.spacing_xyz = spacing

    @classmethod
    def from_parameter_map(cls, image_geometry: ImageGeometry, mask: Mask | None = None, *,
                           parameter_map: ParameterMap | None = None, level: int = 0,
                           spacing_xyz: Sequence[int] | None = None, **common: Any) -> "GridSampler":
        """``SampleGridSpacing`` entries ``level·D + d`` (default 2, no fallback to earlier levels)."""
        d = image_geometry.dimension
        if spacing_xyz is None and parameter_map is not None:
            spacing_xyz = [parameter_map.get_entry("SampleGridSpacing", level * d + k, type=int, default=2)
                           for k in range(d)]
        return super().from_parameter_map(image_geometry, mask, spacing_xyz=spacing_xyz, **common)

    def grid_indices(self) -> "torch.Tensor":
        """All grid indices before masking, ``(K, D)`` float64, x fastest."""
        n, s, st = self.region_size_xyz, self.spacing_xyz, self.region_start_xyz
        m = 1 + (n - 1) // s
        first = st + (n - ((m - 1) * s + 1)) // 2
        axes = [f + k * np.arange(mm, dtype=np.float64) for f, k, mm in zip(first, s, m)]
        grids = np.meshgrid(*axes[::-1], indexing="ij")
        return torch.as_tensor(np.stack([g.reshape(-1) for g in grids[::-1]], axis=1))

    def sample(self) -> "torch.Tensor":
        """Returns ``(K, D)`` physical grid points inside the mask (mm), x fastest."""
        idx = self.grid_indices()
        if self.mask is not None:
            idx = idx[self._inside_mask(idx)]
        return self.to_points(idx)


def _check_n(n) -> int:
    n = int(n)
    if n < 1:
        raise ValueError(f"number_of_samples must be >= 1; got {n}")
    return n


def _not_enough(n: int, found: int, tried: int) -> RuntimeError:
    return RuntimeError(f"{NOT_ENOUGH_SAMPLES} (found {found} of {n} samples inside the fixed mask in "
                        f"{tried} attempts). Fix: enlarge the fixed mask, lower NumberOfSpatialSamples, "
                        "set ErodeMask \"false\", or use ImageSampler \"RandomSparseMask\".")


class _RejectionSampler(ImageSampler):
    draws_per_candidate = 1  # raw random numbers one candidate consumes
    from_parameter_map = classmethod(_random_from_parameter_map)

    def __init__(self, image_geometry: ImageGeometry, mask: Mask | None, number_of_samples: int,
                 generator: ElastixRandom | int | torch.Generator, region: tuple[np.ndarray, np.ndarray] | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(image_geometry, mask, region, device, dtype)
        self.number_of_samples = _check_n(number_of_samples)
        self.random = as_elastix_random(generator)

    def _draw(self, random: ElastixRandom, count: int) -> "torch.Tensor":  # pragma: no cover - abstract
        raise NotImplementedError

    def sample(self) -> "torch.Tensor":
        """Draw ``N`` samples from the stage's generator; see :meth:`_sample_from`."""
        return self._sample_from(self.random)

    def _sample_from(self, random: ElastixRandom) -> "torch.Tensor":
        """Draw ``N`` samples; with a mask, reject candidates outside it (≤ 10·N candidates in total).

        Returns:
            ``(N, D)`` physical points (mm).

        Raises:
            RuntimeError: elastix's "Could not find enough image samples ..." when fewer than N of the
                10·N candidates are inside the mask.
        """
        n = self.number_of_samples
        if self.mask is None:
            return self.to_points(self._draw(random, n))
        budget = 10 * n
        accepted, found, tried = [], 0, 0
        while found < n and tried < budget:
            batch = min(budget - tried, max(2 * (n - found), 1024))
            cand = self._draw(random, batch)
            ok = self._inside_mask(cand)
            cum = torch.cumsum(ok.to(torch.int64), dim=0)
            need = n - found
            if int(cum[-1]) >= need:  # stop at the candidate that completes the set
                last = int(torch.searchsorted(cum, torch.tensor(need)))
                # elastix never drew the candidates after it: give their random numbers back.
                random.rewind((batch - last - 1) * self.draws_per_candidate)
                ok = ok[:last + 1]
                cand = cand[:last + 1]
                tried += last + 1
            else:
                tried += batch
            accepted.append(cand[ok])
            found += int(ok.sum())
        if found < n:
            raise _not_enough(n, found, tried)
        return self.to_points(torch.cat(accepted)[:n])


class RandomCoordinateSampler(_RejectionSampler):
    """Continuous random positions (``Common/ImageSamplers/itkImageRandomCoordinateSampler.hxx``).

    Continuous indices are uniform in ``[first, last]`` voxel index of the cropped region per axis
    (so never in the outer half-voxel band); with a mask, candidates outside it are rejected.
    With ``sample_region_size_mm`` (``UseRandomSampleRegion``): a random sub-box of
    ``size/S`` index units with lower corner uniform in ``[first, max(first, last − size)]`` is drawn
    first, then all samples inside it.

    Args:
        image_geometry, mask, region, device, dtype: see :class:`ImageSampler`.
        number_of_samples: N (``NumberOfSpatialSamples``).
        generator: the stage's :class:`~elastix_bridge.engine.random.ElastixRandom` (or a seed); each
            candidate draws its ``D`` coordinates in axis order with ``GetUniformVariate``, a random
            region first draws its ``D`` corner coordinates (docs/design.md §E14).
        sample_region_size_mm: optional ``D`` sizes in mm.
    """

    name = "RandomCoordinate"

    def __init__(self, image_geometry: ImageGeometry, mask: Mask | None, number_of_samples: int,
                 generator: ElastixRandom | int | torch.Generator, region: tuple[np.ndarray, np.ndarray] | None = None,
                 sample_region_size_mm: Sequence[float] | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(image_geometry, mask, number_of_samples, generator, region, device, dtype)
        self.draws_per_candidate = image_geometry.dimension
        self.sample_region_size_mm = None if sample_region_size_mm is None else \
            np.asarray(sample_region_size_mm, dtype=np.float64).reshape(image_geometry.dimension)
        self._lo = self.region_start_xyz.astype(np.float64)
        self._hi = (self.region_start_xyz + self.region_size_xyz - 1).astype(np.float64)

    @classmethod
    def from_parameter_map(cls, image_geometry: ImageGeometry, mask: Mask | None = None, *,
                           parameter_map: ParameterMap | None = None, level: int = 0,
                           sample_region_size_mm: Sequence[float] | None = None,
                           **common: Any) -> "RandomCoordinateSampler":
        """``UseRandomSampleRegion`` and ``SampleRegionSize`` (entries ``level·D + d``, mm; default
        ``min(ext_d, max(ext)/3)`` with ``ext_d = (n_d − 1)·S_d``).

        Raises:
            ValueError: a ``SampleRegionSize`` larger than the image extent.
        """
        d = image_geometry.dimension
        if sample_region_size_mm is None and parameter_map is not None and \
                parameter_map.get("UseRandomSampleRegion", level=level, default=False, type=bool):
            ext = (np.asarray(image_geometry.size, dtype=np.float64) - 1) * image_geometry.spacing
            default = np.minimum(ext, ext.max() / 3.0)
            size = np.array([parameter_map.get_entry("SampleRegionSize", level * d + k, type=float, default=default[k])
                             for k in range(d)])
            if np.any(size > ext + 1e-12):
                raise ValueError(f"SampleRegionSize {size.tolist()} mm is larger than the image extent "
                                 f"{ext.tolist()} mm")
            sample_region_size_mm = size
        return _random_from_parameter_map(cls, image_geometry, mask, sample_region_size_mm=sample_region_size_mm,
                                          **common)

    def _draw(self, random, count: int) -> "torch.Tensor":
        return torch.from_numpy(random.uniform(self._box_lo, self._box_hi, count))

    def sample(self) -> "torch.Tensor":
        self._box_lo, self._box_hi = self._lo, self._hi
        if self.sample_region_size_mm is not None:
            size = self.sample_region_size_mm / self.geometry.spacing
            upper = np.maximum(self._lo, self._hi - size)
            corner = self.random.uniform(self._lo, upper, 1)[0]
            self._box_lo, self._box_hi = corner, np.minimum(corner + size, self._hi)
        return super().sample()


class RandomSampler(_RejectionSampler):
    """Voxel centres drawn uniformly with replacement from the cropped region
    (``Common/ImageSamplers/itkImageRandomSampler.hxx``); mask by rejection (≤ 10·N candidates).

    The linear index (x fastest) is ``⌊OpenRange(N_vox − ½)⌋``. Without a mask, as elastix's
    multithreaded path, each sample set draws from a local generator seeded 121214, 121215, …
    (one draw discarded first), so ``RandomSeed`` does not change it; with a mask elastix's draws
    are not reproducible and the stage's generator is used (docs/design.md §E14).

    Args: as :class:`RandomCoordinateSampler` (without ``sample_region_size_mm``).
    """

    name = "Random"

    def sample(self) -> "torch.Tensor":
        if self.mask is not None:
            return self._sample_from(self.random)
        local = ElastixRandom(self.random.random_sampler_seed)
        self.random.random_sampler_seed += 1
        local.raw(1)
        return self._sample_from(local)

    def _draw(self, random, count: int) -> "torch.Tensor":
        total = int(np.prod(self.region_size_xyz))
        lin = torch.from_numpy(np.floor(random.open_range(total - 0.5, count)).astype(np.int64))
        cols = []
        for start, size in zip(self.region_start_xyz, self.region_size_xyz):
            cols.append(lin % int(size) + int(start))
            lin = lin // int(size)
        return torch.stack(cols, dim=1).to(torch.float64)


class RandomSparseMaskSampler(ImageSampler):
    """N voxels picked uniformly with replacement from the Full sample list
    (``Common/ImageSamplers/itkImageRandomSamplerSparseMask.hxx``).

    Raises:
        ValueError: without a mask (elastix requires one), or when no voxel lies inside it.
    """

    name = "RandomSparseMask"
    from_parameter_map = classmethod(_random_from_parameter_map)

    def __init__(self, image_geometry: ImageGeometry, mask: Mask | None, number_of_samples: int,
                 generator: ElastixRandom | int | torch.Generator, region: tuple[np.ndarray, np.ndarray] | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        if mask is None:
            raise ValueError("the RandomSparseMask sampler requires a fixed mask; "
                             "use ImageSampler \"Random\" or \"RandomCoordinate\" without a mask")
        super().__init__(image_geometry, mask, region, device, dtype)
        self.number_of_samples = _check_n(number_of_samples)
        self.random = as_elastix_random(generator)
        self._valid = None

    def sample(self) -> "torch.Tensor":
        """Returns ``(N, D)`` physical voxel centres (mm)."""
        if self._valid is None:
            self._valid = self.region_indices()
        m = self._valid.shape[0]
        if m == 0:
            raise ValueError("no voxel of the sampling region lies inside the fixed mask")
        pick = torch.from_numpy(self.random.integer(m - 1, self.number_of_samples))
        return self.to_points(self._valid[pick])


def make_sampler(name: str, image_geometry: ImageGeometry, mask: Mask | None = None, number_of_samples: int = 5000,
                 generator: ElastixRandom | int | torch.Generator | None = None,
                 grid_spacing_xyz: Sequence[int] | None = None, region: tuple[np.ndarray, np.ndarray] | None = None,
                 sample_region_size_mm: Sequence[float] | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, parameter_map: ParameterMap | None = None,
                 level: int = 0) -> ImageSampler:
    """Build a sampler from its elastix ``ImageSampler`` name (registered in :mod:`.components`).

    Args:
        name: a registered ``ImageSampler`` name.
        image_geometry: level fixed image geometry.
        mask: optional (eroded) fixed mask.
        number_of_samples: ``NumberOfSpatialSamples`` (random samplers).
        generator: the stage's :class:`~elastix_bridge.engine.random.ElastixRandom`, a seed, or a
            ``torch.Generator`` (its initial seed); required by the random samplers.
        grid_spacing_xyz: ``SampleGridSpacing`` of this level (Grid; default 2).
        region: optional level region ``(start_xyz, size_xyz)`` (docs/design.md §E3.6).
        sample_region_size_mm: ``SampleRegionSize`` when ``UseRandomSampleRegion`` (RandomCoordinate).
        device, dtype: of the returned points (default CPU, float64).
        parameter_map: optional :class:`elastix_bridge.core.parameters.ParameterMap`; when given, the
            sampler reads its own keys not passed explicitly for ``level`` (its ``from_parameter_map``).
        level: resolution level for ``parameter_map`` look-ups.

    Raises:
        UnsupportedComponentError: unknown name (lists the supported ones).
        ValueError: invalid arguments (e.g. a ``SampleRegionSize`` larger than the image extent).
    """
    options = {}
    if grid_spacing_xyz is not None:
        options["spacing_xyz"] = grid_spacing_xyz
    if sample_region_size_mm is not None:
        options["sample_region_size_mm"] = sample_region_size_mm
    return component("ImageSampler", name).factory.from_parameter_map(
        image_geometry, mask, parameter_map=parameter_map, level=int(level), number_of_samples=number_of_samples,
        generator=generator, region=region, device=device, dtype=dtype, **options)
