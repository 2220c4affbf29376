"""What the validation and the memory plan ask of a component, read from the parameter map without torch.

The hooks that :mod:`elastix_bridge.engine.component_list` names as the ``samples`` trait of each
sampler and as the target of each interpolator: how many points a sampler evaluates per level, and the
B-spline order the moving image is interpolated with. They read the map only, so a plan or a check of
a map elastix runs imports neither torch nor the component modules. Sources: elastix
``Common/ImageSamplers/itkImage*Sampler.hxx``, ``Components/Interpolators/*``.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from elastix_bridge.core.parameters import ParameterMap


def every_voxel(pmap: ParameterMap, level: int, fixed_size: Sequence[int]) -> int:
    """``Full``: every voxel of the level's fixed image (an upper bound with a mask)."""
    return int(np.prod(fixed_size))


def grid_points(pmap: ParameterMap, level: int, fixed_size: Sequence[int]) -> int:
    """``Grid``: the points of a grid with ``SampleGridSpacing`` (voxels, per level and axis; default 2)."""
    spacing = [pmap.get("SampleGridSpacing", level=level * len(fixed_size) + a, default=2, type=int)
               for a in range(len(fixed_size))]
    return int(np.prod([math.ceil(n / max(1, s)) for n, s in zip(fixed_size, spacing)]))


def spatial_samples(pmap: ParameterMap, level: int, fixed_size: Sequence[int]) -> int:
    """The random samplers: ``NumberOfSpatialSamples`` (default 5000), drawn with replacement."""
    return pmap.get("NumberOfSpatialSamples", level=level, default=5000, type=int)


def bspline_interpolation_order(pmap: ParameterMap, level: int) -> int:
    """``BSplineInterpolator``: ``BSplineInterpolationOrder`` of the level (default 1)."""
    return pmap.get("BSplineInterpolationOrder", level=level, default=1, type=int, prefix="Interpolator0")


def linear_interpolation_order(pmap: ParameterMap, level: int) -> int:
    """``LinearInterpolator``: order 1."""
    return 1
