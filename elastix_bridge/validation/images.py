"""The images and masks of a call: ``itk.Image`` arguments, equal dimensions, a dimension the stage
runs, masks of their image's dimension with a non-zero region inside it, and finite pixels."""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from elastix_bridge.core.geometry import ImageGeometry

if TYPE_CHECKING:  # pragma: no cover
    import itk  # deferred: itk's import takes seconds; only a check of an image needs it


class InputImageError(ValueError):
    """An input image or mask cannot be registered as given (dimension, empty mask, NaN/Inf pixels)."""


def check_image_argument(value: Any, what: str) -> None:
    """Raise a TypeError saying what to pass when ``value`` is not an ``itk.Image`` (None is a mask left out).

    Numpy arrays are refused rather than guessed: an array has no spacing, origin or direction, and
    numpy's axis order is (z, y, x) where ITK's is (x, y, z).
    """
    if hasattr(value, "GetImageDimension") or (value is None and "mask" in what):
        return
    if isinstance(value, (str, bytes, os.PathLike)):
        path = os.fsdecode(value)
        raise TypeError(f"{what} is a path ({path!r}), not an image; read it first: itk.imread({path!r}, itk.F)"
                        + (" (a mask: itk.imread(path, itk.UC))" if "mask" in what else ""))
    if hasattr(value, "__array__") and hasattr(value, "shape"):
        raise TypeError(
            f"{what} is an array of shape {tuple(value.shape)}, not an itk.Image: elastix needs the image's spacing, "
            f"origin and direction. Use itk.image_from_array(array) (numpy axis order (z, y, x) becomes ITK's "
            f"(x, y, z)) and set its geometry with SetSpacing / SetOrigin / SetDirection, or read the file with "
            f"itk.imread(path, itk.F)")
    raise TypeError(f"{what} is a {type(value).__name__}, not an itk.Image; pass an image read with "
                    f"itk.imread(path, itk.F) or made with itk.image_from_array(array)")


def check_finite(image, what: str) -> None:
    """Raise naming the first NaN/Inf voxel (ITK index order x, y, z, and its physical point in mm)."""
    import itk  # deferred: itk's import takes seconds; only a check of an image needs it

    array = itk.array_view_from_image(image)
    if array.dtype.kind not in "fc" or math.isfinite(float(np.sum(array, dtype=np.float64))):
        return  # a float32 sum in float64 cannot overflow: it is finite exactly when every pixel is
    flat = array.reshape(-1)
    position = int(np.argmax(~np.isfinite(flat)))
    count = int(np.count_nonzero(~np.isfinite(flat)))
    index = tuple(int(i) for i in reversed(np.unravel_index(position, array.shape)))
    point = tuple(float(x) for x in image.TransformIndexToPhysicalPoint(index))
    value = flat[position]
    raise InputImageError(
        f"{what} has {count} non-finite pixel(s) ({'NaN' if np.isnan(value) else 'Inf'} first at index "
        f"{list(index)} (x, y, z), physical point {[round(p, 4) for p in point]} mm); elastix cannot register "
        f"NaN or Inf: replace them (e.g. numpy.nan_to_num on itk.array_view_from_image(image)) or mask them out "
        f"and set them to a finite value")


def check_equal_dimensions(fixed: int, moving: int) -> None:
    """The fixed and moving images have one dimension (itk-elastix's filter is typed by the fixed image's and
    would read a moving image of another dimension as garbage).

    Raises:
        InputImageError: naming both dimensions.
    """
    if fixed != moving:
        raise InputImageError(f"the fixed image is {fixed}D but the moving image is {moving}D; elastix registers "
                              f"images of equal dimension: give a {fixed}D moving image (or a {moving}D fixed image)")


#: Image dimensions a stage runs: the bridge engine and IMPACT's feature models (``ImpactDimension``) 2 and 3;
#: itk-elastix's ElastixRegistrationMethod is wrapped for 2, 3 and 4 (``itk.ElastixRegistrationMethod.keys()``).
BRIDGE_DIMENSIONS = (2, 3)
ELASTIX_DIMENSIONS = (2, 3, 4)


def check_supported_dimension(dimension: int, impact: bool, bridge: bool) -> None:
    """The images' dimension is one the stage runs (:data:`BRIDGE_DIMENSIONS`, :data:`ELASTIX_DIMENSIONS`);
    else the first check that indexes an axis fails on an internal error (a 4D image's fourth axis).

    Args:
        dimension: the images' dimension.
        impact: the stage uses the Impact metric; bridge: it runs on the bridge engine.

    Raises:
        InputImageError: naming the dimension, what the stage runs and the fix.
    """
    supported = BRIDGE_DIMENSIONS if impact or bridge else ELASTIX_DIMENSIONS
    if dimension in supported:
        return
    runner = "an Impact stage" if impact else "the bridge engine" if bridge else "itk-elastix"
    fix = ("register each 3D volume of the series on its own (itk.extract_image_filter), or use a map without Impact "
           "on the elastix engine (4D)" if dimension == 4 and supported == BRIDGE_DIMENSIONS else
           "give 2D or 3D images")
    names = [f"{d}D" for d in supported]
    raise InputImageError(f"the images are {dimension}D, but {runner} runs {', '.join(names[:-1])} and {names[-1]} "
                          f"images only; {fix}")


def check_mask_dimension(mask: itk.Image, dimension: int, which: str) -> None:
    """A mask has its image's dimension (itk-elastix's own check is a SWIG type error).

    Raises:
        InputImageError: naming the mask (``which`` is ``"fixed"`` or ``"moving"``) and both dimensions.
    """
    if mask is not None and mask.GetImageDimension() != dimension:
        raise InputImageError(f"the {which} mask is {mask.GetImageDimension()}D but the {which} image is "
                              f"{dimension}D; give a mask of the image's dimension")


def validate_images(fixed_image: itk.Image, moving_image: itk.Image, fixed_mask: Optional[itk.Image] = None,
                    moving_mask: Optional[itk.Image] = None) -> int:
    """Check the images and masks of a registration; returns the image dimension.

    Raises:
        TypeError: an argument is not an ``itk.Image`` (see :func:`check_image_argument`).
        InputImageError: fixed and moving dimensions differ, a mask's dimension differs from its image's,
            a mask has no non-zero pixel or none inside its image's extent, or an image has NaN/Inf pixels
            (first offending voxel named).
    """
    import itk  # deferred: itk's import takes seconds; only a check of an image needs it

    for value, what in ((fixed_image, "fixed_image"), (moving_image, "moving_image"), (fixed_mask, "fixed_mask"),
                        (moving_mask, "moving_mask")):
        check_image_argument(value, what)
    dimension = fixed_image.GetImageDimension()
    check_equal_dimensions(dimension, moving_image.GetImageDimension())
    for mask, which in ((fixed_mask, "fixed"), (moving_mask, "moving")):
        if mask is None:
            continue
        check_mask_dimension(mask, dimension, which)
        if not np.any(itk.array_view_from_image(mask)):
            raise InputImageError(f"the {which} mask is empty (no non-zero pixel): no sample could be drawn "
                                  f"{'in the fixed image' if which == 'fixed' else 'inside the moving image'}; "
                                  f"check the mask file, or leave the mask out")
        image = fixed_image if which == "fixed" else moving_image
        inside, box = _physical_box(mask, itk.array_view_from_image(mask) != 0), _physical_box(image)
        if np.any(inside[1] < box[0]) or np.any(inside[0] > box[1]):
            raise InputImageError(
                f"the {which} mask's non-zero region (physical {', '.join('xyz'[:dimension])} from {np.round(inside[0], 2).tolist()} to "
                f"{np.round(inside[1], 2).tolist()} mm) lies entirely outside the {which} image ({np.round(box[0], 2).tolist()}"
                f" to {np.round(box[1], 2).tolist()} mm): check the mask's origin, spacing and direction against the "
                f"image's, or that the right mask was given")
    check_finite(fixed_image, "the fixed image")
    check_finite(moving_image, "the moving image")
    return dimension


def _physical_box(image, zyx_selected=None):
    """Axis-aligned physical bounding box ``(low, high)``, ITK (x, y, z) order in mm, of the selected voxels
    (a numpy (z, y, x) boolean array, not all False) or of the whole image; voxels count with their
    half-voxel extent."""
    import itk  # deferred: itk's import takes seconds; only a check of an image needs it

    size = np.array(image.GetLargestPossibleRegion().GetSize())
    low_index, high_index = np.zeros(len(size)), size - 1.0
    if zyx_selected is not None:
        for axis in range(len(size)):  # x is the last numpy axis
            hits = np.flatnonzero(zyx_selected.any(axis=tuple(a for a in range(len(size)) if a != len(size) - 1 - axis)))
            low_index[axis], high_index[axis] = hits[0], hits[-1]
    corners = np.array(np.meshgrid(*[(lo - 0.5, hi + 0.5) for lo, hi in zip(low_index, high_index)],
                                   indexing="ij")).reshape(len(size), -1).T
    matrix = itk.array_from_matrix(image.GetDirection()) * np.array(image.GetSpacing())  # columns scaled by spacing
    points = np.array(image.GetOrigin()) + corners @ matrix.T
    return points.min(axis=0), points.max(axis=0)


def _header_geometry(image):
    """:class:`~elastix_bridge.core.geometry.ImageGeometry` of an ``itk.Image``'s largest region (any start index)."""
    import itk  # deferred: itk's import takes seconds; only a check of an image needs it


    return ImageGeometry(tuple(image.GetLargestPossibleRegion().GetSize()), tuple(image.GetSpacing()),
                         tuple(image.GetOrigin()), itk.array_from_matrix(image.GetDirection()))
