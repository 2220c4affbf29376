"""Rotations and oblique image grids with anisotropic spacing, to catch index-order and direction mistakes."""
import math

import numpy as np

from elastix_bridge.core.geometry import ImageGeometry


def rotation_2d(a: float) -> np.ndarray:
    """2D rotation matrix by ``a`` radians."""
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


def rotation_3d(a: float, b: float, c: float) -> np.ndarray:
    """3D rotation ``Rz(c) @ Rx(a) @ Ry(b)`` (elastix's Euler order, radians)."""
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ rx @ ry


#: Oblique image grids with anisotropic spacing, to catch index-order and direction mistakes.
GEO2 = ImageGeometry((37, 29), (0.8, 1.3), (3.0, -2.0), rotation_2d(0.4))
GEO3 = ImageGeometry((21, 17, 13), (0.9, 1.3, 2.1), (3.0, -2.0, 5.0), rotation_3d(0.2, -0.3, 0.5))


def rotation(dim, angles):
    """Proper rotation: 2D by ``angles`` (radians), 3D ``Rz(c)·Ry(b)·Rx(a)`` for ``angles = (a, b, c)``."""
    if dim == 2:
        c, s = math.cos(angles), math.sin(angles)
        return np.array([[c, -s], [s, c]])
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def centred_geometry(size, spacing, direction, centre):
    """Geometry whose voxel grid is centred on the physical point ``centre``."""
    size, spacing = np.asarray(size), np.asarray(spacing, dtype=float)
    origin = np.asarray(centre, dtype=float) - direction @ (spacing * (size - 1) / 2)
    return ImageGeometry(tuple(size), spacing, origin, direction)
