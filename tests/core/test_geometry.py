"""ITK-order grid geometry: vnl's inverse (core/geometry.py) and the B-spline grid domain under an initial transform
(engine/transforms/bspline.py)."""
import numpy as np
import pytest

from elastix_bridge.core.geometry import ImageGeometry, vnl_inverse
from elastix_bridge.engine.transforms.bspline import grid_domain_under_initial
from helpers.geometry import GEO2, GEO3  # noqa: E402


@pytest.mark.parametrize("matrix", [GEO2.direction, GEO3.direction, np.array([[2.0, 0.5], [-1.0, 3.0]]),
                                    np.array([[1.0, 2.0, 0.5], [0.0, 1.5, -1.0], [0.3, 0.0, 2.0]])])
def test_vnl_inverse_is_the_inverse(matrix):
    np.testing.assert_allclose(vnl_inverse(matrix) @ matrix, np.eye(len(matrix)), atol=1e-14)


def test_vnl_inverse_is_one_over_det_times_the_adjugate():
    m = np.array([[0.3, 0.7], [0.1, 0.9]])
    det = 1.0 / (0.3 * 0.9 - 0.7 * 0.1)
    assert vnl_inverse(m).tolist() == [[0.9 * det, -0.7 * det], [-0.1 * det, 0.3 * det]]


@pytest.mark.parametrize("geometry", [GEO2, GEO3])
def test_grid_domain_under_a_translation_moves_only_the_origin(geometry):
    torch = pytest.importorskip("torch")
    shift = np.arange(1.0, geometry.dimension + 1)
    domain, final = grid_domain_under_initial(geometry, np.full(geometry.dimension, 8.0),
                                              lambda p: p + torch.from_numpy(shift))
    np.testing.assert_allclose(domain.origin, geometry.origin + shift, atol=1e-9)
    np.testing.assert_allclose(domain.spacing, geometry.spacing, rtol=1e-12)
    np.testing.assert_allclose(final, 8.0, rtol=1e-12)
    assert domain.size == geometry.size and np.array_equal(domain.direction, geometry.direction)


def test_grid_domain_under_a_scaling_scales_spacing_and_final_grid_spacing():
    pytest.importorskip("torch")
    geometry = ImageGeometry((10, 6), (1.0, 2.0), (5.0, -4.0), np.eye(2))
    domain, final = grid_domain_under_initial(geometry, np.array([8.0, 6.0]), lambda p: p * 2.0)
    np.testing.assert_allclose(domain.origin, [10.0, -8.0])
    np.testing.assert_allclose(domain.spacing, [2.0, 4.0])
    np.testing.assert_allclose(final, [16.0, 12.0])
