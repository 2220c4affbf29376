"""elastix's transform initializers: the centre of rotation and the initial translation.

elastix's ``InitializeTransform`` of the linear transforms (:func:`initialize_linear_transform`): the user's
centre (:func:`read_center_of_rotation`) or the initializer's (:func:`initializer_center_and_translation`:
geometric centres, image moments, origins, geometry top), moved by an initial transform under ``Compose``;
and the TranslationTransform's initializer (:func:`translation_initialization`). Points are physical (mm),
ITK ``(x, y[, z])`` order; image arrays ``(z, y, x)``.

Sources (docs/design.md §E6.2): ``Components/Transforms/EulerTransform/elxEulerTransform.hxx``,
``Components/Transforms/SimilarityTransform/elxSimilarityTransform.hxx``,
``Components/Transforms/AdvancedAffineTransform/elxAdvancedAffineTransform.hxx``,
``Components/Transforms/AdvancedAffineTransform/itkCenteredTransformInitializer2.hxx``,
elastix ``itkTranslationTransformInitializer.hxx``,
``Common/Transforms/itkAdvancedImageMomentsCalculator.hxx``, ITK ``itkCenteredTransformInitializer.hxx`` /
``itkImageMomentsCalculator.hxx``.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch

from elastix_bridge.core.geometry import ImageGeometry
from elastix_bridge.core.parameters import ParameterMap, as_parameter_map
from elastix_bridge.engine.images.level_images import LevelImage, Mask
from elastix_bridge.engine.samplers import GridSampler
from elastix_bridge.engine.transforms.linear import CenteredLinearTransform, linear_component

__all__ = [
    "INITIALIZATION_METHODS",
    "translation_initialization",
    "geometric_center",
    "initializer_center_and_translation",
    "read_center_of_rotation",
    "points_through",
    "uses_composition",
    "initialize_linear_transform",
]

#: ``AutomaticTransformInitializationMethod`` values elastix knows (Euler/Similarity only distinguish
#: ``CenterOfGravity``; every other value means ``GeometricalCenter`` there).
INITIALIZATION_METHODS = ("GeometricalCenter", "CenterOfGravity", "Origins", "GeometryTop")


def _image_array(image, geometry: ImageGeometry, which: str) -> np.ndarray:
    """Voxel values ``(z, y, x)`` as float64 after elastix's cast to the float internal pixel type."""
    if image is None:
        raise ValueError(f"the {which} image values are needed for AutomaticTransformInitializationMethod "
                         "CenterOfGravity; pass the full-resolution image array")
    arr = getattr(image, "array_zyx", image)
    if hasattr(arr, "detach"):
        arr = arr.detach().cpu().numpy()
    arr = np.asarray(arr)
    if tuple(arr.shape) != geometry.shape_zyx:
        raise ValueError(f"{which} image array has shape {tuple(arr.shape)}; its geometry needs "
                         f"{geometry.shape_zyx} (z, y, x)")
    return arr.astype(np.float32).astype(np.float64)


def translation_initialization(method: str, fixed_geometry: ImageGeometry, moving_geometry: ImageGeometry,
                               fixed_image: np.ndarray | LevelImage | None = None,
                               moving_image: np.ndarray | LevelImage | None = None,
                               fixed_mask: Mask | None = None,
                               moving_mask: Mask | None = None) -> np.ndarray:
    """Initial translation ``c_moving − c_fixed`` of elastix's TranslationTransform initializer (mm, ``(D,)``).

    ``GeometricalCenter`` (and any other name but ``CenterOfGravity``): centres at the continuous index
    ``start + size/2`` (not ``(size − 1)/2`` as for the other transforms) of each image, or of its mask's
    index bounding box. ``CenterOfGravity``: intensity centroids over all voxels, or over the voxels
    inside each image's mask (ITK ``ImageMomentsCalculator`` with a spatial-object mask).

    Raises:
        ValueError: missing image values, zero mass.

    Source: elastix ``itkTranslationTransformInitializer.hxx``; docs/design.md §E6.2.
    """
    if method == "CenterOfGravity":
        arrays = [getattr(a, "array_zyx", a) for a in (fixed_image, moving_image)]
        if any(a is None for a in arrays):
            raise ValueError("CenterOfGravity needs the full-resolution image values")
        return (_center_of_gravity_all_voxels(np.asarray(arrays[1], dtype=np.float32), moving_geometry, moving_mask)
                - _center_of_gravity_all_voxels(np.asarray(arrays[0], dtype=np.float32), fixed_geometry, fixed_mask))

    def centre(geometry: ImageGeometry, mask: Mask | None) -> np.ndarray:
        if mask is None:
            first, size = np.zeros(geometry.dimension), np.asarray(geometry.size, dtype=np.float64)
        else:
            lo, hi = mask.bounding_box_index()
            first, size = lo.astype(np.float64), (hi - lo + 1).astype(np.float64)
        return geometry.itk_continuous_index_to_point(first + size / 2.0)

    return centre(moving_geometry, moving_mask) - centre(fixed_geometry, fixed_mask)


def geometric_center(geometry: ImageGeometry, mask: Mask | None = None) -> np.ndarray:
    """Physical point (mm) of the continuous index ``start + (size − 1)/2`` of an image region.

    The region is the whole image, or the index bounding box of the mask's non-zero voxels (ITK
    ``ImageMaskSpatialObject::ComputeMyBoundingBoxInIndexSpace``), converted with ``geometry`` (elastix converts
    the mask's index box with the *image's* geometry).

    Raises:
        ValueError: empty mask.

    Source: ITK ``CenteredTransformInitializer`` / elastix ``itkCenteredTransformInitializer2.hxx`` (Geometry).
    """
    if mask is None:
        index = (np.asarray(geometry.size, dtype=np.float64) - 1.0) / 2.0
    else:
        first, last = mask.bounding_box_index()
        size = (last - first + 1).astype(np.float64)
        index = first.astype(np.float64) + (size - 1.0) / 2.0
    return geometry.itk_continuous_index_to_point(index)


def _sequential_sum(values: np.ndarray, start: float = 0.0) -> float:
    """``start + v_0 + v_1 + …`` added one by one (the rounding of a C loop; ``np.sum`` is pairwise)."""
    if values.size == 0:
        return start
    return float(np.cumsum(np.concatenate(([start], values)))[-1])


def _center_of_gravity_all_voxels(array: np.ndarray, geometry: ImageGeometry, mask: Mask | None = None,
                                  chunk: int = 1 << 20) -> np.ndarray:
    """Intensity-weighted centroid over all voxels, mm, as ITK ``ImageMomentsCalculator`` (one thread, voxels in
    memory order, positions from ``TransformIndexToPhysicalPoint``, ``Cg = Σ v·p / Σ v`` summed sequentially);
    with a mask (``SetSpatialObjectMask``) only the voxels whose physical point lies inside it count."""
    d = geometry.dimension
    flat = array.reshape(-1)
    size = np.asarray(geometry.size, dtype=np.int64)
    strides = np.concatenate([[1], np.cumprod(size)[:-1]])
    m0 = 0.0
    cg = [0.0] * d
    for a in range(0, flat.size, chunk):
        k = np.arange(a, min(a + chunk, flat.size), dtype=np.int64)
        idx = np.stack([(k // strides[c]) % size[c] for c in range(d)], axis=1)
        pts = geometry.itk_index_to_points(idx)
        v = flat[a:a + k.size]
        if mask is not None:
            inside = mask.contains(torch.from_numpy(np.ascontiguousarray(pts, dtype=np.float64))).numpy()
            pts, v = pts[inside], v[inside]
        m0 = _sequential_sum(v, m0)
        for r in range(d):
            cg[r] = _sequential_sum(pts[:, r] * v, cg[r])
    if m0 == 0.0:
        raise ValueError("Compute(): Total Mass of the image was zero. Aborting here to prevent division by zero "
                         "later on.")
    return np.array([c / m0 for c in cg])


def _center_of_gravity_grid(array: np.ndarray, geometry: ImageGeometry, mask, number_of_samples: int,
                            lower_threshold) -> np.ndarray:
    """elastix ``AdvancedImageMomentsCalculator``: centroid over a grid of ≈N samples, mask, threshold; mm."""
    if lower_threshold is not None:  # BinaryThresholdImageFilter: inside (1) iff lower <= value
        array = (array >= float(np.float32(lower_threshold))).astype(np.float64)
    sampler = GridSampler(geometry, mask=None, number_of_samples=max(1, int(number_of_samples)))
    idx = sampler.grid_indices().numpy()  # (K, D) integer indices, x fastest
    if idx.shape[0] == 0:
        raise ValueError(f"No valid voxels (0/{number_of_samples}) found to estimate the "
                         "AutomaticTransformInitialization parameters.")
    pts = geometry.itk_index_to_points(idx)
    lin = idx.astype(np.int64)
    values = array[tuple(lin[:, k] for k in reversed(range(geometry.dimension)))]
    if mask is not None:  # ImageMaskSpatialObject::IsInsideInWorldSpace (nearest mask voxel non-zero)
        inside = mask.contains(torch.as_tensor(pts)).numpy()
        pts, values = pts[inside], values[inside]
    m0 = float(values.sum())
    if m0 == 0.0:
        raise ValueError("Compute(): Total Mass of the image was zero. Aborting here to prevent division by zero "
                         "later on.")
    return (values[:, None] * pts).sum(axis=0) / m0


def _geometry_top(fixed_geometry, moving_geometry, fixed_mask, moving_mask):
    """elastix ``GeometryTop``: centre and translation aligning the top (max z) centres of the bounding boxes."""

    def box(geometry: ImageGeometry, mask: Mask | None) -> tuple[np.ndarray, np.ndarray]:
        if mask is None:
            start = np.zeros(3)
            size = np.asarray(geometry.size, dtype=np.float64)
        else:
            first, last = mask.bounding_box_index()
            start = first.astype(np.float64)
            size = (last - first + 1).astype(np.float64)
        world = np.array([geometry.itk_continuous_index_to_point([start[0] + x * size[0], start[1] + y * size[1],
                                                                   start[2] + z * size[2]])
                          for z in (0, 1) for y in (0, 1) for x in (0, 1)])
        return world.min(axis=0), world.max(axis=0)

    fmin, fmax = box(fixed_geometry, fixed_mask)
    mmin, mmax = box(moving_geometry, moving_mask)
    top_f = np.array([(fmax[0] + fmin[0]) / 2.0, (fmax[1] + fmin[1]) / 2.0, fmax[2]])
    top_m = np.array([(mmax[0] + mmin[0]) / 2.0, (mmax[1] + mmin[1]) / 2.0, mmax[2]])
    return (fmax + fmin) / 2.0, top_m - top_f


def initializer_center_and_translation(
    transform_name: str,
    method: str,
    fixed_geometry: ImageGeometry,
    moving_geometry: ImageGeometry,
    fixed_image: np.ndarray | LevelImage | None = None,
    moving_image: np.ndarray | LevelImage | None = None,
    fixed_mask: Mask | None = None,
    moving_mask: Mask | None = None,
    *,
    number_of_samples: int = 10000,
    lower_threshold: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Centre of rotation and translation computed by elastix's transform initializer.

    * Euler / Similarity (ITK ``CenteredTransformInitializer``, no masks): ``CenterOfGravity`` → intensity
      centroids over *all* voxels; any other method → ``GeometricalCenter``.
    * Affine (elastix ``CenteredTransformInitializer2``, masks honoured):
      ``GeometricalCenter`` (also for unknown names): centres of the images or of the masks' index bounding
      boxes (``start + (size−1)/2``); ``CenterOfGravity``: centroids over a grid of ≈``number_of_samples``
      points of each image, restricted to its mask, values thresholded to 0/1 at ``lower_threshold`` if given;
      ``Origins``: ``t = O_moving − O_fixed``, ``c = geometric centre(moving) − t``; ``GeometryTop`` (3-D):
      align the top (max z) centres of the physical bounding boxes of the index boxes ``[start, start+size]``
      (of the images or masks), ``c`` = centre of the fixed box.

    For all but Origins/GeometryTop: ``c = c_fixed``, ``t = c_moving − c_fixed``.

    Args:
        transform_name: elastix ``Transform`` name.
        method: ``AutomaticTransformInitializationMethod``.
        fixed_geometry, moving_geometry: full-resolution image geometries.
        fixed_image, moving_image: ``(z, y, x)`` voxel arrays (or objects with ``array_zyx``), needed only for
            ``CenterOfGravity``; cast to float32 like elastix's internal images.
        fixed_mask, moving_mask: the user's (not eroded) masks; used by the Affine transform only.
        number_of_samples: ``NumberOfSamplesForCenteredTransformInitialization`` (Affine CenterOfGravity).
        lower_threshold: ``LowerThresholdForCenterGravity`` when ``CenterOfGravityUsesLowerThreshold`` is true,
            else ``None`` (Affine CenterOfGravity).

    Returns:
        ``(center (D,), translation (D,))`` in mm, ``np.float64``.

    Raises:
        ValueError: missing image values, zero total mass, empty mask, GeometryTop in 2-D, unknown transform.

    Source: ITK ``Modules/Registration/Common/include/itkCenteredTransformInitializer.hxx``,
    ``itkImageMomentsCalculator.hxx``; elastix ``itkCenteredTransformInitializer2.hxx``,
    ``itkAdvancedImageMomentsCalculator.hxx``; docs/design.md §E6.2.
    """
    initializer = linear_component(transform_name).trait("initializer")
    if fixed_geometry.dimension != moving_geometry.dimension:
        raise ValueError("fixed and moving images have different dimensions")
    if initializer == "CenteredTransformInitializer":
        if method == "CenterOfGravity":
            cf = _center_of_gravity_all_voxels(_image_array(fixed_image, fixed_geometry, "fixed"), fixed_geometry)
            cm = _center_of_gravity_all_voxels(_image_array(moving_image, moving_geometry, "moving"),
                                               moving_geometry)
        else:
            cf, cm = geometric_center(fixed_geometry), geometric_center(moving_geometry)
        return cf, cm - cf
    # CenteredTransformInitializer2 (AffineTransform)
    if method == "CenterOfGravity":
        cf = _center_of_gravity_grid(_image_array(fixed_image, fixed_geometry, "fixed"), fixed_geometry,
                                     fixed_mask, number_of_samples, lower_threshold)
        cm = _center_of_gravity_grid(_image_array(moving_image, moving_geometry, "moving"), moving_geometry,
                                     moving_mask, number_of_samples, lower_threshold)
        return cf, cm - cf
    if method == "Origins":  # physical points of index 0 (= the origins)
        t = moving_geometry.itk_index_to_points(np.zeros(moving_geometry.dimension))[0] - \
            fixed_geometry.itk_index_to_points(np.zeros(fixed_geometry.dimension))[0]
        return geometric_center(moving_geometry) - t, t
    if method == "GeometryTop":
        if fixed_geometry.dimension < 3:
            raise ValueError("ERROR: The GeometryTop intialization method does not make sense for 2D images. "
                             "Use only for 3D or higher dimensional images.")
        if fixed_geometry.dimension > 3:
            raise ValueError("GeometryTop is implemented for 3-D images only")
        return _geometry_top(fixed_geometry, moving_geometry, fixed_mask, moving_mask)
    cf = geometric_center(fixed_geometry, fixed_mask)
    cm = geometric_center(moving_geometry, moving_mask)
    return cf, cm - cf


def read_center_of_rotation(pmap: ParameterMap | Mapping[str, Any], fixed_geometry: ImageGeometry) -> np.ndarray | None:
    """The user's centre of rotation (mm), or ``None`` when none is given.

    ``CenterOfRotation`` (integer voxel index, all D entries) → physical point of that index of the fixed image;
    else ``CenterOfRotationPoint`` (mm, all D entries).  The index wins when both are given.  Entries are read
    individually (entry ``i``, no fallback); a partial list counts as absent.

    Raises:
        ParameterError: a value that cannot be converted (non-integer index, non-number point).

    Source: ``InitializeTransform`` / ``ReadCenterOfRotationPoint`` of the elastix linear transforms.
    """
    pm = as_parameter_map(pmap)
    d = fixed_geometry.dimension
    index = [pm.get_entry("CenterOfRotation", i, type=int) for i in range(d)]
    if all(v is not None for v in index):
        return fixed_geometry.itk_index_to_points(np.asarray(index, dtype=np.float64))[0]
    point = [pm.get_entry("CenterOfRotationPoint", i, type=float) for i in range(d)]
    if all(v is not None for v in point):
        return np.asarray(point, dtype=np.float64)
    return None


def points_through(initial_transform: Callable, points: np.ndarray) -> np.ndarray:
    """``(N, D)`` float64 points (mm) mapped by ``initial_transform`` (a callable on torch tensors), as numpy."""
    out = initial_transform(torch.as_tensor(points, dtype=torch.float64))
    if hasattr(out, "detach"):
        out = out.detach().cpu().numpy()
    return np.asarray(out, dtype=np.float64).reshape(points.shape)


def uses_composition(how_to_combine: str) -> bool:
    """Whether ``HowToCombineTransforms`` composes with the initial transform (``Compose``; else Add)."""
    return how_to_combine == "Compose"


def initialize_linear_transform(
    transform: CenteredLinearTransform,
    pmap: ParameterMap | Mapping[str, Any],
    fixed_geometry: ImageGeometry,
    moving_geometry: ImageGeometry,
    fixed_image: np.ndarray | LevelImage | None = None,
    moving_image: np.ndarray | LevelImage | None = None,
    fixed_mask: Mask | None = None,
    moving_mask: Mask | None = None,
    *,
    initial_transform: Callable | None = None,
    how_to_combine: str = "Compose",
    component_label: str = "Transform0",
) -> torch.Tensor:
    """elastix ``InitializeTransform``: set ``transform.center`` and return the initial parameters.

    1. Parameters = identity.
    2. User centre: :func:`read_center_of_rotation`.
    3. ``AutomaticTransformInitialization`` (entry 0, default false) counts only without an initial transform.
    4. If no user centre or automatic initialisation: run :func:`initializer_center_and_translation` with
       ``AutomaticTransformInitializationMethod`` (entry 0, default ``GeometricalCenter``); for the Affine
       ``CenterOfGravity`` also ``CenterOfGravityUsesLowerThreshold`` (``<label>`` prefix, default false),
       ``LowerThresholdForCenterGravity`` (500), ``NumberOfSamplesForCenteredTransformInitialization`` (10000).
    5. Without automatic initialisation the translation is reset to 0.
    6. A user centre replaces the initializer's centre.
    7. With an initial transform and ``Compose``: ``c ← T_init(c)``.

    Args:
        transform: the transform; its ``center`` is set.
        pmap: the registration's :class:`ParameterMap` (or a dict).
        fixed_geometry, moving_geometry: full-resolution geometries.
        fixed_image, moving_image: ``(z, y, x)`` arrays, needed for ``CenterOfGravity`` only.
        fixed_mask, moving_mask: the user's masks (Affine only).
        initial_transform: the initial transform as a callable ``(N, D) float64 tensor → (N, D)`` (mm), or
            ``None``.
        how_to_combine: ``HowToCombineTransforms`` (``Compose``; anything else = Add).
        component_label: the transform's component label (prefix of ``CenterOfGravityUsesLowerThreshold``).

    Returns:
        ``Tensor[P]`` float64 initial parameters (identity with the initial translation).

    Raises:
        ParameterError: unconvertible parameter values.
        ValueError: see :func:`initializer_center_and_translation`.

    Source: ``InitializeTransform`` in ``elxEulerTransform.hxx``, ``elxSimilarityTransform.hxx``,
    ``elxAdvancedAffineTransform.hxx``; docs/design.md §E6.2.
    """
    pm = as_parameter_map(pmap)
    d = transform.dimension
    if fixed_geometry.dimension != d or moving_geometry.dimension != d:
        raise ValueError(f"transform dimension {d} does not match the images")
    user_center = read_center_of_rotation(pm, fixed_geometry)
    automatic = bool(pm.get_entry("AutomaticTransformInitialization", 0, type=bool, default=False))
    automatic = automatic and initial_transform is None
    center = np.zeros(d)
    translation = np.zeros(d)
    if user_center is None or automatic:
        method = pm.get_entry("AutomaticTransformInitializationMethod", 0, default="GeometricalCenter")
        kwargs = {}
        if linear_component(transform.name).trait("initializer") == "CenteredTransformInitializer2" and \
                method == "CenterOfGravity":
            if pm.get("CenterOfGravityUsesLowerThreshold", 0, default=False, type=bool, prefix=component_label):
                kwargs["lower_threshold"] = pm.get_entry("LowerThresholdForCenterGravity", 0, type=float,
                                                         default=500.0)
            kwargs["number_of_samples"] = int(pm.get_entry("NumberOfSamplesForCenteredTransformInitialization", 0,
                                                           type=float, default=10000.0))
        center, translation = initializer_center_and_translation(
            transform.name, method, fixed_geometry, moving_geometry, fixed_image, moving_image, fixed_mask,
            moving_mask, **kwargs)
    if not automatic:
        translation = np.zeros(d)
    if user_center is not None:
        center = user_center
    if initial_transform is not None and uses_composition(how_to_combine):
        center = points_through(initial_transform, np.asarray(center, dtype=np.float64).reshape(1, d))[0]
    transform.center = center
    return transform.with_translation(transform.parameters, translation)


