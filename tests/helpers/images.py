"""itk images on a rotated, anisotropic, off-origin grid (transformix must honour all three); itk imported inside."""
import numpy as np

# A rotated, anisotropic, off-origin grid: transformix must honour direction, spacing and origin.
_ANGLE = np.deg2rad(20.0)

DIRECTION = np.array([[np.cos(_ANGLE), -np.sin(_ANGLE)], [np.sin(_ANGLE), np.cos(_ANGLE)]])

SPACING = (1.5, 1.0)

ORIGIN = (-10.0, 5.0)


def blobs(shape, centre) -> np.ndarray:
    """Two Gaussian blobs (float32, numpy ``[y, x]``) around ``centre`` (x, y in voxels)."""
    y, x = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    cx, cy = centre
    big = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 6.0**2))
    small = 0.5 * np.exp(-((x - cx - 8) ** 2 + (y - cy + 5) ** 2) / (2 * 3.0**2))
    return (big + small).astype(np.float32)


def make_image(array, direction=DIRECTION, spacing=SPACING, origin=ORIGIN):
    """``itk.Image[F, 2]`` of ``array`` with the given geometry."""
    import itk

    image = itk.image_from_array(np.ascontiguousarray(array, dtype=np.float32))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction, dtype=np.float64)))
    return image
