"""Image pyramids exactly as elastix computes them (docs/design.md §E3), built from ITK filters.

Kinds (either prefix, ``Fixed`` or ``Moving``):

* ``SmoothingImagePyramid`` (elastix default): recursive Gaussian per axis, σ_d = 0.5·f_d·S_d (mm),
  no down-sampling, the finest level is smoothed too (§E3.1,
  ``Common/itkMultiResolutionGaussianSmoothingPyramidImageFilter.hxx``).
* ``RecursiveImagePyramid``: ITK ``RecursiveMultiResolutionPyramidImageFilter`` (§E3.2).
* ``ShrinkingImagePyramid``: ``ShrinkImageFilter`` only (§E3.3,
  ``Common/itkMultiResolutionShrinkPyramidImageFilter.hxx``).
* ``GenericImagePyramid``: ``SmoothingRecursiveGaussianImageFilter`` (physical σ) then linear
  resampling (or shrinking) (§E3.5, ``Common/itkGenericMultiResolutionPyramidImageFilter.hxx``).

Each kind is a class registered for both prefixes in :mod:`elastix_bridge.engine.component_list`;
:func:`pyramid_class` finds it through the registry, so a pyramid registered by anyone else is used
the same way. Schedules are ``(R, D)`` arrays, level 0 = coarsest, columns in ITK ``(x, y, z)`` order.
This module imports itk only inside the functions that filter images (itk takes seconds to import,
and the validation reads schedules and level sizes without it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from elastix_bridge.core.geometry import ImageGeometry
from elastix_bridge.engine.components import UnsupportedComponentError, component, names

if TYPE_CHECKING:  # pragma: no cover
    import itk


@dataclass
class PyramidSchedule:
    """Per-level factors of one pyramid.

    Attributes:
        rescale: ``(R, D)`` int64 schedule factors (ITK order). For the smoothing pyramid these are
            the (verbatim) schedule factors that set σ and the mask erosion radius, not a
            down-sampling; for the others the effective down-sampling factors.
        smoothing: ``(R, D)`` float64 Gaussian σ in mm (physical units) actually applied per level;
            0 = no smoothing along that axis. (Recursive pyramid: the equivalent σ = 0.5·f·S of its
            discrete Gaussian of variance (0.5·f)² voxels, informational.)
    """

    rescale: np.ndarray
    smoothing: np.ndarray

    @property
    def number_of_resolutions(self) -> int:
        return int(self.rescale.shape[0])


def pyramid_class(kind: str) -> type[ImagePyramid]:
    """The registered pyramid class of ``kind``: ``"FixedGenericImagePyramid"`` -> :class:`GenericImagePyramid`.

    Raises:
        ValueError: unknown kind (the message lists the supported ones).
    """
    name = str(kind).strip()
    family = next((f"{side}ImagePyramid" for side in ("Fixed", "Moving") if name.startswith(side)), None)
    try:
        if family is None:
            raise UnsupportedComponentError(name)
        return component(family, name).factory
    except UnsupportedComponentError:
        supported = ", ".join(n for f in ("FixedImagePyramid", "MovingImagePyramid") for n in names(f))
        raise ValueError(f"unsupported image pyramid {kind!r}; supported: {supported}") from None


def _matrix(values, r: int, d: int, name: str, dtype) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.size != r * d:
        raise ValueError(f"{name} needs {r}x{d} = {r * d} values (levels x dimensions); got {a.size}")
    return a.reshape(r, d).astype(dtype)


def _itk_schedule_rules(f: np.ndarray) -> np.ndarray:
    """ITK ``MultiResolutionPyramidImageFilter::SetSchedule``: f[r] = max(1, min(f[r], f[r−1]))."""
    out = f.copy()
    for r in range(out.shape[0]):
        if r > 0:
            out[r] = np.minimum(out[r], out[r - 1])
        out[r] = np.maximum(out[r], 1)
    return out


def pyramid_schedule(kind: str, number_of_resolutions: int, image_geometry: ImageGeometry,
                     rescale: Sequence[int] | None = None, smoothing: Sequence[float] | None = None) -> PyramidSchedule:
    """Schedule of a pyramid with elastix's defaults and rules (docs/design.md §E3).

    Args:
        kind: e.g. ``"FixedSmoothingImagePyramid"`` or ``"MovingGenericImagePyramid"`` (:func:`pyramid_class`).
        number_of_resolutions: R >= 1.
        image_geometry: geometry of the full-resolution input image (spacing sets σ).
        rescale: optional R·D non-negative integer factors (``ImagePyramidSchedule`` or, for the generic
            pyramid, ``ImagePyramidRescaleSchedule``), level-major, ITK order. Default
            ``2^(R−1−r)``.
        smoothing: optional R·D σ values in mm (``ImagePyramidSmoothingSchedule``); generic pyramid only.

    Returns:
        :class:`PyramidSchedule`.

    Raises:
        ValueError: unknown kind, R < 1, wrong number of values, negative/non-integer factors, or a
            smoothing schedule for a pyramid that does not read one.
    """
    cls = pyramid_class(kind)
    r_count = int(number_of_resolutions)
    if r_count < 1:
        raise ValueError(f"number_of_resolutions must be >= 1; got {number_of_resolutions}")
    d = image_geometry.dimension
    if rescale is None:
        factors = np.repeat((2 ** np.arange(r_count - 1, -1, -1, dtype=np.int64))[:, None], d, axis=1)
    else:
        raw = _matrix(rescale, r_count, d, "the pyramid (rescale) schedule", np.float64)
        if np.any(raw < 0) or np.any(raw != np.round(raw)):
            raise ValueError(f"pyramid schedule factors must be non-negative integers; got {raw.tolist()}")
        factors = raw.astype(np.int64)
    if smoothing is not None and not cls.reads_smoothing_schedule:
        raise ValueError(f"a smoothing schedule is only read by the Generic pyramid, not by {kind!r}")
    return cls.schedule(factors, image_geometry.spacing, smoothing)


def downsampled_geometry(geometry: ImageGeometry, factors: np.ndarray | Sequence[int],
                         use_shrink_image_filter: bool = False) -> ImageGeometry:
    """Geometry of a down-sampled level (docs/design.md §E3.4), start index 0.

    Args:
        geometry: input geometry.
        factors: ``D`` integer factors >= 1 (ITK order).
        use_shrink_image_filter: ShrinkImageFilter geometry (centres coincide) instead of the
            resampler geometry of ``MultiResolutionPyramidImageFilter`` (``O' = O + Dir·(S'−S)/2``).

    Returns:
        the level :class:`ImageGeometry` (same direction).
    """
    f = np.asarray(factors, dtype=np.float64).reshape(-1)
    n = np.asarray(geometry.size, dtype=np.float64)
    size = np.maximum(1, np.floor(n / f)).astype(np.int64)
    spacing = geometry.spacing * f
    if use_shrink_image_filter:
        offset = geometry.spacing * (n - 1) / 2 - spacing * (size - 1) / 2
    else:
        offset = (spacing - geometry.spacing) / 2
    origin = geometry.origin + geometry.direction @ offset
    return ImageGeometry(tuple(int(s) for s in size), spacing, origin, geometry.direction)


def fixed_level_region(full_geometry: ImageGeometry, level_geometry: ImageGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Fixed region of a level (docs/design.md §E3.6, ``MultiResolutionImageRegistrationMethod2::PreparePyramids``).

    The first and last voxel of the full-resolution image are mapped into the level image's
    continuous index; ``start = ceil(c_first)``, ``size = max(1, floor(c_last) − start + 1)``.

    Returns:
        ``(start_xyz, size_xyz)``: two ``np.int64[D]`` arrays (ITK order).
    """
    first = full_geometry.index_to_physical(np.zeros((1, full_geometry.dimension)))
    last = full_geometry.index_to_physical(np.asarray(full_geometry.size, dtype=np.float64)[None] - 1)
    c_first = level_geometry.physical_to_index(first)[0]
    c_last = level_geometry.physical_to_index(last)[0]
    eps = 1e-9
    start = np.ceil(c_first - eps).astype(np.int64)
    size = np.maximum(1, np.floor(c_last + eps).astype(np.int64) - start + 1)
    return start, size


def _itk():
    import itk  # deferred: itk takes seconds to import (module docstring)

    return itk


def _to_float(image_itk):
    itk = _itk()

    d = image_itk.GetImageDimension()
    float_type = itk.Image[itk.F, d]
    if isinstance(image_itk, float_type):
        return image_itk
    return itk.cast_image_filter(image_itk, ttype=(type(image_itk), float_type))


def _copy(image_itk):
    itk = _itk()

    out = itk.image_duplicator(image_itk)
    return out


def _resample(image_itk, geometry: ImageGeometry):
    itk = _itk()

    d = image_itk.GetImageDimension()
    image_type = type(image_itk)
    resampler = itk.ResampleImageFilter[image_type, image_type].New()
    resampler.SetInput(image_itk)
    resampler.SetTransform(itk.IdentityTransform[itk.D, d].New())
    resampler.SetInterpolator(itk.LinearInterpolateImageFunction[image_type, itk.D].New())
    resampler.SetDefaultPixelValue(0)
    resampler.SetSize([int(s) for s in geometry.size])
    resampler.SetOutputSpacing([float(s) for s in geometry.spacing])
    resampler.SetOutputOrigin([float(s) for s in geometry.origin])
    resampler.SetOutputDirection(itk.matrix_from_array(np.ascontiguousarray(geometry.direction)))
    resampler.Update()
    return resampler.GetOutput()


def _shrink(image_itk, factors):
    itk = _itk()

    image_type = type(image_itk)
    shrinker = itk.ShrinkImageFilter[image_type, image_type].New()
    shrinker.SetInput(image_itk)
    shrinker.SetShrinkFactors([int(f) for f in factors])
    shrinker.Update()
    return shrinker.GetOutput()


def pyramid_level(image_itk: itk.Image, kind: str, schedule: PyramidSchedule, level: int,
                  use_shrink_image_filter: bool = False) -> itk.Image:
    """One pyramid level as elastix computes it.

    Args:
        image_itk: full-resolution ``itk.Image`` (any scalar pixel type; cast to float), start index 0.
        kind: pyramid kind (``Fixed``/``Moving`` prefix, :func:`pyramid_class`).
        schedule: from :func:`pyramid_schedule` for the same kind and image.
        level: 0 (coarsest) .. R−1.
        use_shrink_image_filter: ``ImagePyramidUseShrinkImageFilter`` (Generic pyramid only; the
            Recursive pyramid always shrinks, as elastix does).

    Returns:
        ``itk.Image[itk.F, D]``; geometry per docs/design.md §E3.4.

    Raises:
        ValueError: bad level / kind; ITK errors (e.g. fewer than 4 voxels along a smoothed axis,
        or a zero σ along one axis of a Generic level whose other σ are not zero) pass through.
    """
    cls = pyramid_class(kind)
    r_count = schedule.number_of_resolutions
    if not 0 <= int(level) < r_count:
        raise ValueError(f"level must be in 0..{r_count - 1}; got {level}")
    return cls.level(_to_float(image_itk), schedule, int(level), use_shrink_image_filter)


class ImagePyramid:
    """One kind of elastix image pyramid: its schedule rules, its level images and their sizes.

    Subclasses set :meth:`schedule` and :meth:`level`; the registry names them for both prefixes.
    """

    #: whether ``ImagePyramidSmoothingSchedule`` is read (elastix's Generic pyramid only)
    reads_smoothing_schedule = False

    @classmethod
    def schedule(cls, factors: np.ndarray, spacing: np.ndarray, smoothing: Sequence[float] | None) -> PyramidSchedule:
        """The schedule from ``(R, D)`` non-negative integer factors and the image spacing (mm, ITK order)."""
        raise NotImplementedError

    @classmethod
    def level(cls, image: itk.Image, schedule: PyramidSchedule, level: int,
              use_shrink_image_filter: bool) -> itk.Image:
        """Level ``level`` of the float image ``image`` (checked by :func:`pyramid_level`)."""
        raise NotImplementedError

    @classmethod
    def level_size(cls, geometry: ImageGeometry, schedule: PyramidSchedule, level: int) -> tuple[int, ...]:
        """The level image's size (voxels, ITK order): down-sampled by the schedule's factors."""
        return downsampled_geometry(geometry, schedule.rescale[level]).size

    @classmethod
    def recursive_gaussian_axes(cls, size: Sequence[int], schedule: PyramidSchedule, level: int) -> list[int]:
        """The axes (ITK order) that ITK's recursive Gaussian smooths at ``level`` (it needs 4 voxels on each)."""
        return []


class SmoothingImagePyramid(ImagePyramid):
    """Recursive Gaussian per axis, σ_d = 0.5·f_d·S_d (mm), no down-sampling, the finest level smoothed too
    (docs/design.md §E3.1; ``Common/itkMultiResolutionGaussianSmoothingPyramidImageFilter.hxx``)."""

    @classmethod
    def schedule(cls, factors, spacing, smoothing):
        sigma = 0.5 * factors.astype(np.float32).astype(np.float64) * spacing[None, :]
        return PyramidSchedule(factors, sigma)

    @classmethod
    def level(cls, image, schedule, level, use_shrink_image_filter):
        itk = _itk()

        image_type = type(image)
        size = tuple(image.GetLargestPossibleRegion().GetSize())
        factors, sigma = schedule.rescale[level], schedule.smoothing[level]
        out = image
        for axis in range(image.GetImageDimension()):
            if factors[axis] == 0 or size[axis] == 1:
                continue
            f = itk.RecursiveGaussianImageFilter[image_type, image_type].New()
            f.SetInput(out)
            f.SetDirection(axis)
            f.SetZeroOrder()
            f.SetNormalizeAcrossScale(False)
            f.SetSigma(float(sigma[axis]))
            f.Update()
            out = f.GetOutput()
        return _copy(out) if out is image else out

    @classmethod
    def level_size(cls, geometry, schedule, level):
        return tuple(geometry.size)  # smooths, never down-samples

    @classmethod
    def recursive_gaussian_axes(cls, size, schedule, level):
        return [a for a in range(len(size)) if schedule.rescale[level, a] != 0 and size[a] > 1]


class ShrinkingImagePyramid(ImagePyramid):
    """``ShrinkImageFilter`` only (docs/design.md §E3.3; ``Common/itkMultiResolutionShrinkPyramidImageFilter.hxx``)."""

    @classmethod
    def schedule(cls, factors, spacing, smoothing):
        factors = _itk_schedule_rules(factors)
        return PyramidSchedule(factors, np.zeros(factors.shape))

    @classmethod
    def level(cls, image, schedule, level, use_shrink_image_filter):
        factors = schedule.rescale[level]
        return _shrink(image, factors) if np.any(factors != 1) else _copy(image)


class RecursiveImagePyramid(ImagePyramid):
    """ITK's ``RecursiveMultiResolutionPyramidImageFilter``, shrinking geometry (docs/design.md §E3.2)."""

    @classmethod
    def schedule(cls, factors, spacing, smoothing):
        factors = _itk_schedule_rules(factors)
        sigma = np.where(factors > 1, 0.5 * factors * spacing[None, :], 0.0)
        return PyramidSchedule(factors, sigma)

    @classmethod
    def level(cls, image, schedule, level, use_shrink_image_filter):
        itk = _itk()

        image_type = type(image)
        r_count, d = schedule.rescale.shape
        pyr = itk.RecursiveMultiResolutionPyramidImageFilter[image_type, image_type].New()
        pyr.SetInput(image)
        pyr.SetNumberOfLevels(r_count)
        sched = itk.Array2D[itk.UI](r_count, d)
        for r in range(r_count):
            for k in range(d):
                sched.put(r, k, int(schedule.rescale[r, k]))
        pyr.SetSchedule(sched)
        pyr.SetUseShrinkImageFilter(True)  # elastix: shrink geometry (docs/design.md §E3.2) [verified]
        pyr.Update()
        return pyr.GetOutput(level)


class GenericImagePyramid(ImagePyramid):
    """``SmoothingRecursiveGaussianImageFilter`` (physical σ) then linear resampling, or shrinking
    (docs/design.md §E3.5; ``Common/itkGenericMultiResolutionPyramidImageFilter.hxx``)."""

    reads_smoothing_schedule = True

    @classmethod
    def recursive_gaussian_axes(cls, size, schedule, level):
        return list(range(len(size))) if (schedule.smoothing[level] != 0).any() else []

    @classmethod
    def schedule(cls, factors, spacing, smoothing):
        factors = _itk_schedule_rules(factors)
        r_count, d = factors.shape
        if smoothing is None:
            sigma = 0.5 * factors * spacing[None, :]
            sigma[-1][factors[-1] == 1] = 0.0
        else:
            sigma = _matrix(smoothing, r_count, d, "the pyramid smoothing schedule", np.float64)
            for r in range(r_count):
                if r > 0:
                    sigma[r] = np.minimum(sigma[r], sigma[r - 1])
                sigma[r] = np.maximum(sigma[r], 0.0)
        return PyramidSchedule(factors, sigma)

    @classmethod
    def level(cls, image, schedule, level, use_shrink_image_filter):
        itk = _itk()

        image_type = type(image)
        factors, sigma = schedule.rescale[level], schedule.smoothing[level]
        smoothed = image
        any_rescale = bool(np.any(schedule.rescale != 1))
        any_smoothing = bool(np.any(schedule.smoothing != 0))
        if not any_rescale and not any_smoothing:
            return _copy(image)
        if np.any(sigma != 0):
            f = itk.SmoothingRecursiveGaussianImageFilter[image_type, image_type].New()
            f.SetInput(image)
            f.SetSigmaArray([float(s) for s in sigma])
            f.Update()
            smoothed = f.GetOutput()
        if np.any(factors != 1):
            if use_shrink_image_filter:
                return _shrink(smoothed, factors)
            geometry = downsampled_geometry(ImageGeometry.from_itk(image), factors, False)
            return _resample(smoothed, geometry)
        return _copy(smoothed) if smoothed is image else smoothed
