"""The IMPACT metric's building blocks (configs, metric, oblique image pairs) and independent references to check
it against (interpolation, Static grid, Jacobian patch offsets, distances); torch imported inside."""
import numpy as np

from elastix_bridge.core.geometry import ImageGeometry
from helpers.geometry import centred_geometry, rotation


def level_image(geometry, fn):
    """A :class:`LevelImage` with voxel values ``fn(voxel centres)``."""
    from elastix_bridge.engine.images.level_images import LevelImage

    values = fn(geometry.voxel_centres())
    return LevelImage(geometry, values.reshape(geometry.shape_zyx))


def smooth_blobs(points, dim, shift=None):
    """Smooth positive test function of physical points ``(N, D)`` (mm), optionally shifted: ``f(p − shift)``."""
    p = np.asarray(points, dtype=float)
    if shift is not None:
        p = p - np.asarray(shift, dtype=float)
    rng = np.random.default_rng(11 + dim)
    value = np.full(len(p), 0.2)
    for _ in range(6):
        c = rng.uniform(-7.0, 7.0, size=dim)
        sigma = rng.uniform(3.0, 4.5)
        value += rng.uniform(0.4, 1.0) * np.exp(-np.sum((p - c) ** 2, axis=1) / (2 * sigma ** 2))
    return value


def oblique_pair(dim, shift=None, size=None):
    """Fixed blob image and the moving image ``f(p − shift)`` on a different oblique anisotropic grid."""
    if dim == 2:
        fixed_geo = centred_geometry(size or (30, 26), (0.9, 1.2), rotation(2, 0.35), (2.0, -1.0))
        moving_geo = centred_geometry(size or (32, 27), (1.1, 0.95), rotation(2, -0.2), (2.5, -0.5))
    else:
        fixed_geo = centred_geometry(size or (20, 18, 16), (1.0, 1.2, 1.3), rotation(3, (0.3, -0.2, 0.4)),
                                     (1.0, 0.5, -1.0))
        moving_geo = centred_geometry(size or (21, 19, 17), (1.1, 1.15, 1.25), rotation(3, (-0.1, 0.25, -0.3)),
                                      (1.5, 0.0, -0.5))
    fixed = level_image(fixed_geo, lambda p: smooth_blobs(p, dim))
    moving = level_image(moving_geo, lambda p: smooth_blobs(p, dim, shift))
    return fixed, moving


def model_config(path, dim, patch, voxel, channels=1, mask=(True,)):
    """A :class:`ModelConfig` (patch and voxel sizes in ITK x, y, z order)."""
    from elastix_bridge.core.impact_parameters import ModelConfig

    return ModelConfig(str(path), dim, channels, tuple(patch), tuple(voxel), tuple(mask))


def level_config(mode, fixed_models, moving_models=None, distances=("L2",), weights=None, subset=None, pca=None,
            interval=-1):
    """An :class:`ImpactLevelConfig`; per-layer options default to all channels, no PCA, weight 1."""
    from elastix_bridge.core.impact_parameters import ImpactLevelConfig

    n = sum(m.n_selected for m in fixed_models)
    return ImpactLevelConfig(
        level=0, mode=mode, fixed_models=tuple(fixed_models),
        moving_models=tuple(moving_models if moving_models is not None else fixed_models),
        subset_features=tuple(subset or (1000,) * n), pca=tuple(pca or (0,) * n),
        layers_weight=tuple(weights or (1.0,) * n), distances=tuple(distances), gpu=-1, mixed_precision=False,
        features_map_update_interval=interval, feature_map_directory=None, random_seed=0)


def impact_metric(plugin, cfg, fixed, moving, fixed_models, moving_models=None, transform=None, parameters=None,
                  mask=None, seed=0, order=1, ratio=0.25, initialize=True, device="cpu"):
    """Build (and by default initialise) an :class:`ImpactMetric` whose models run on ``device``."""
    import torch

    from elastix_bridge.engine.metrics.impact import ImpactMetric
    from elastix_bridge.engine.transforms.base import TranslationTransform

    transform = transform or TranslationTransform(fixed.geometry.dimension)
    metric = ImpactMetric(cfg, fixed, moving, mask, transform, plugin,
                          (list(fixed_models), list(moving_models if moving_models is not None else fixed_models)),
                          torch.device(device), torch.Generator().manual_seed(seed),
                          moving_interpolation_order=order, required_ratio_of_valid_samples=ratio)
    if initialize:
        metric.initialize(transform.parameters.to(torch.float64) if parameters is None else parameters)
    return metric


def reference_interpolation(image_or_array, geometry, points, order):
    """Independent reference: scipy ``map_coordinates`` (mirror) at physical points ``(N, D)``."""
    from scipy import ndimage

    from elastix_bridge.engine.images.level_images import LevelImage

    array = image_or_array.array_zyx if isinstance(image_or_array, LevelImage) else image_or_array
    idx = geometry.physical_to_index(np.asarray(points, dtype=float))
    return ndimage.map_coordinates(np.asarray(array, dtype=float), idx[:, ::-1].T, order=order, mode="mirror")


def ball_points(geometry, n, radius, seed=0):
    """``n`` random physical points within ``radius`` mm of the centre of ``geometry``'s grid."""
    import torch

    rng = np.random.default_rng(seed)
    d = geometry.dimension
    centre = geometry.index_to_physical((np.asarray(geometry.size, dtype=float) - 1)[None] / 2)[0]
    u = rng.normal(size=(n, d))
    u *= (radius * rng.uniform(0, 1, size=(n, 1)) ** (1.0 / d)) / np.linalg.norm(u, axis=1, keepdims=True)
    return torch.from_numpy(centre + u)


def static_grid(geometry, voxel):
    """Independent Static resampling grid: ``ImpactVoxelSize`` cells covering the image's extent."""
    extent = np.asarray(geometry.size) * geometry.spacing
    size = np.floor(extent / np.asarray(voxel) + 0.5).astype(int)
    spacing = extent / size
    origin = geometry.origin + geometry.direction @ ((spacing - geometry.spacing) / 2)
    return ImageGeometry(tuple(size), spacing, origin, geometry.direction)


def jacobian_patch_offsets(geometry, patch, voxel):
    """Independent patch offsets (mm) along the fixed image axes, (z, y, x) order with x fastest."""
    axes = [(np.arange(p) - p // 2) * v for p, v in zip(patch, voxel)]
    grid = np.meshgrid(*axes[::-1], indexing="ij")  # z, y, x
    local = np.stack([g.reshape(-1) for g in grid[::-1]], axis=1)  # x, y, z columns
    return local @ geometry.direction.T


def numpy_distance(name, f, m):
    """Direct formulas of docs/design.md §I7 (L1/L2 before the α normalisation)."""
    f, m = np.asarray(f, dtype=np.float64), np.asarray(m, dtype=np.float64)
    cos = (f * m).sum(1) / (np.linalg.norm(f, axis=1) * np.linalg.norm(m, axis=1))
    if name == "L1":
        return np.mean(np.abs(f - m))
    if name == "L2":
        return np.mean((f - m) ** 2)
    if name == "Cosine":
        return -np.mean(cos)
    if name == "L1Cosine":
        return -np.mean(cos[:, None] * np.exp(-0.1 * np.abs(f - m)))
    if name == "DotProduct":
        return -np.mean((f * m).sum(1))
    if name == "Dice":
        return -np.mean(2 * (f * m).sum(1) / (f + m).sum(1))
    fc, mc = f - f.mean(0), m - m.mean(0)
    return -np.mean((fc * mc).sum(0) / np.sqrt((fc ** 2).sum(0) * (mc ** 2).sum(0)))
