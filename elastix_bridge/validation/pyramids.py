"""Pyramid schedules against the images: one entry per level and axis, and images large enough for the
map's pyramids (from their headers; elastix's pyramids fail inside ITK on images that are too small)."""
from __future__ import annotations

import logging
import re

from elastix_bridge.core.parameters import ParameterError, UInt
from elastix_bridge.engine.images.pyramids import pyramid_class
from elastix_bridge.engine.stage_settings import map_pyramid_schedule
from elastix_bridge.validation.names import _unlabelled

log = logging.getLogger("elastix_bridge")


def _check_against_dimension(pmap, where: str, levels: int, dimension: int, warn: bool = True) -> None:
    """``Fixed/MovingImageDimension`` equal the images' dimension; pyramid schedules have levels × dimension entries.

    Fewer: an error (elastix would silently use its default schedule instead). More: a warning; elastix
    reads the first levels × dimension entries (upstream's own 2D IMPACT test file has six for 2 × 2).
    """
    for key in ("FixedImageDimension", "MovingImageDimension"):
        if pmap.has(key) and pmap.get(key, type=UInt) != dimension:
            raise ParameterError(f"({key} {pmap.get(key)}) but the images are {dimension}D; the map was written for "
                                 f"other images: change {key} to {dimension} (or remove it)")
    n = levels * dimension
    for key in pmap.keys():
        if re.fullmatch(r"((Fixed|Moving)?ImagePyramid(Rescale|Smoothing)?)?Schedule", _unlabelled(key)):
            count = len(pmap.values(key))
            if count < n:
                raise ParameterError(
                    f"({key} ...) has {count} values; it needs one per resolution level and image axis: "
                    f"NumberOfResolutions {levels} × dimension {dimension} = {n} (elastix would silently replace a "
                    f"schedule of the wrong length by its default one)")
            if count > n and warn:
                log.warning("%s: (%s ...) has %d values; only the first %d (NumberOfResolutions %d × dimension %d) "
                            "are used, as in elastix", where, key, count, n, levels, dimension)


#: ITK ``RecursiveSeparableImageFilter`` (under the recursive Gaussian filters of the Smoothing and Generic
#: pyramids) refuses "fewer than 4 pixels along the dimension to be processed".
RECURSIVE_GAUSSIAN_MINIMUM = 4


def check_pyramid_sizes(pmap, levels: int, geometries) -> None:
    """Both images are large enough for the map's pyramids, from their headers (no pixel is read).

    Found by running elastix 5's pyramids on images of 1-16 voxels per axis: an axis of 1 voxel fails in
    every pyramid ("too many samples map outside"); the Smoothing pyramid
    (``itkMultiResolutionGaussianSmoothingPyramidImageFilter``, recursive Gaussian per axis, every level,
    the finest too) and the Generic pyramid (``itk::SmoothingRecursiveGaussianImageFilter`` on the full
    image, all axes, at every level with a σ > 0) fail inside ITK's ``RecursiveSeparableImageFilter`` on
    an axis of fewer than 4 voxels. The Recursive and Shrinking pyramids (``itk::DiscreteGaussian``,
    ``itk::ShrinkImageFilter``) have no such limit.

    Args:
        pmap: the stage's parameter map.
        levels: ``NumberOfResolutions``.
        geometries: ``(fixed, moving)`` :class:`~elastix_bridge.core.geometry.ImageGeometry` (ITK order).

    Raises:
        ParameterError: naming the image, its size, the axis, the pyramid, the level and the fix.
    """
    for which, geometry in zip(("Fixed", "Moving"), geometries):
        size = tuple(geometry.size)
        image = f"the {which.lower()} image ({' × '.join(map(str, size))} voxels in {', '.join('xyzt'[:len(size)])})"
        for a, n in enumerate(size):
            if n < 2:
                raise ParameterError(f"{image} has 1 voxel along {'xyzt'[a]}: elastix cannot sample or pyramid it "
                                     f"(\"too many samples map outside\"); give images of at least 2 voxels per "
                                     f"axis ({RECURSIVE_GAUSSIAN_MINIMUM} for the Smoothing and Generic pyramids)")
        kind = pmap.get(f"{which}ImagePyramid", default=f"{which}SmoothingImagePyramid")
        try:
            pyramid = pyramid_class(kind)
            schedule = map_pyramid_schedule(pmap, which, kind, levels, geometry)
        except ValueError:
            continue  # a pyramid the bridge does not model (OpenCL: elastix checks it), or a schedule the
            # pyramid does not read (elastix ignores it) or one the stage's check names
        for level in range(levels):
            smoothed = pyramid.recursive_gaussian_axes(size, schedule, level)
            small = [a for a in smoothed if size[a] < RECURSIVE_GAUSSIAN_MINIMUM]
            if small:
                a = small[0]
                raise ParameterError(
                    f"{image} has {size[a]} voxels along {'xyzt'[a]}, but the {kind} smooths it at level {level} "
                    f"with ITK's recursive Gaussian, which needs at least {RECURSIVE_GAUSSIAN_MINIMUM} voxels per "
                    f"axis; use ({which}ImagePyramid \"{which}ShrinkingImagePyramid\") or "
                    f"\"{which}RecursiveImagePyramid\", or a larger image")
