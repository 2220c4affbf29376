"""The IMPACT metric for one resolution level: Static and Jacobian modes.

Feature models run in the compiled plugin (:mod:`elastix_bridge.runtime.loader`); this module builds
their inputs (patches, resampled images), reads their outputs at the sample points and reduces
them with the plugin's distances. Derivatives with respect to the transform parameters come from
autograd through the whole chain (distance → features → model → moving-image interpolation →
transform), which is the exact derivative; upstream elastix assembles an approximation by hand
(docs/design.md §I5.5 Q8, §I7.5 Q13, §I7.8 Q14).

Deliberate differences from upstream elastix (docs/design.md §I13), each the "fixed" alternative:
  * patch offsets (Jacobian mode) and Static resampling grids follow the fixed image's direction
    cosines and cover the image's physical extent exactly (Q10); feature maps of strided layers are
    spaced by their stride (tile / output size) and centred on the voxels each feature summarises;
  * non-cubic patches/tiles are laid out (z, y, x) with x fastest, not scrambled by a reshape (Q6);
  * the Static moving feature map ``Φ(M∘T₀)`` is sampled at ``x + T(x) − T₀(x)`` instead of
    ``T(x)`` (Q12), where ``T₀`` is the transform when the map was (re)computed;
  * all samples of an evaluation form one batch (upstream splits them over threads), so NCC
    statistics are global (Q14, Q15) and the result does not depend on the thread count;
  * PCA counts and bases are indexed by the global layer index (Q11).

The feature models' calls (upstream's argument convention), result checks and contract probes are
:mod:`.impact_models`'s; the metric's memory, as the plan asks it, :mod:`.impact_memory`'s.

Why this module is longer than ~600 lines: the two modes share the metric's state and its set-up per
level (feature maps or patches, PCA bases, feature subsets, the valid-sample check, the refresh after
each iteration), and the patch geometry beside them is what both the modes and the tests read; the
parts that stand alone are in the two modules above.

Source: docs/design.md §I4–§I8; Boussot et al., "IMPACT: A Generic Semantic Loss for Multimodal
Medical Image Registration", arXiv:2503.24121, §2.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

from elastix_bridge.core.geometry import ImageGeometry
from elastix_bridge.core.image_io import write_image
from elastix_bridge.engine.errors import SamplingError
from elastix_bridge.engine.images.interpolators import ImageInterpolator
from elastix_bridge.engine.metrics.impact_models import call_model, check_paired, direction_tensor, dummy_channels
from elastix_bridge.runtime.model_contract import check_pca

if TYPE_CHECKING:  # pragma: no cover
    from types import ModuleType

    from elastix_bridge.core.impact_parameters import ImpactLevelConfig
    from elastix_bridge.engine.images.level_images import LevelImage, Mask
    from elastix_bridge.engine.transforms.base import Transform

log = logging.getLogger("elastix_bridge")


#: Jacobian mode: an evaluation of up to ONE_CALL_PATCH_VOXELS patch voxels (samples × patch size; an
#: iteration of the presets, 1000 samples × 7^3, is 343k) runs through each model at once; a larger one
#: (ASGD's exact gradients at 10,000 samples) in chunks of CHUNK_PATCH_VOXELS
#: (:meth:`ImpactMetric.patch_features`).
ONE_CALL_PATCH_VOXELS = 1 << 20
CHUNK_PATCH_VOXELS = 1 << 18


def centre_features(output):
    """Centre feature of each sample: ``[N, F, *spatial] -> [N, F]`` at floor(s/2) per spatial axis.

    A Jacobian-mode model sees one patch per sample; the feature at the patch centre describes the sample
    (docs/design.md §I5.1; an even, strided output takes index ``s // 2``).
    """
    idx = (slice(None), slice(None)) + tuple(s // 2 for s in output.shape[2:])
    return output[idx]


def patch_grid_offsets(model, geometry: ImageGeometry, image_dimension: int):
    """Patch offsets in mm, ``(Q, D)``, ordered (z, y, x) with x fastest, along the fixed image axes.

    For a model of the image's dimension the offsets of patch index ``i`` are
    ``(i_a − ⌊P_a/2⌋)·v_a`` along image axis ``a``, rotated by the fixed direction (docs/design.md §I5.2,
    fixed variant of Q6/Q10); a model of lower dimension (2D on a 3D image) gets in-plane offsets,
    zero along the remaining axes and not rotated (the random patch rotations turn them).

    Args:
        model: the model's configuration (``patch_size``, ``voxel_size`` in ITK order x, y[, z];
            ``dimension``).
        geometry: the fixed image's geometry (its direction cosines).
        image_dimension: ``D``.

    Returns:
        ``(offsets, shape)``: ``(Q, D)`` float64 mm with ``Q = ∏P``, and the patch tensor shape
        ``(P_z, P_y, P_x)``.
    """
    p = list(model.patch_size)
    v = list(model.voxel_size)
    axes = [(np.arange(n) - n // 2) * vs for n, vs in zip(p, v)]  # ITK order x, y[, z]
    mesh = np.meshgrid(*reversed(axes), indexing="ij")  # (z, y, x) order, x fastest when flattened
    local = np.stack([m.reshape(-1) for m in reversed(mesh)], axis=1)  # (Q, d) in x, y, z order
    if model.dimension < image_dimension:
        local = np.concatenate([local, np.zeros((local.shape[0], image_dimension - model.dimension))], axis=1)
        return local, tuple(reversed(p))
    return local @ geometry.direction.T, tuple(reversed(p))


def crop_padding(feature, tile):
    """Centre-crop a layer ``[F, *spatial]`` that came out larger than its input ``tile`` (its spatial shape,
    same axis order); each larger axis keeps ``tile`` voxels from ``(h − t) // 2``.

    Models that pad more than they cut (e.g. a MIND descriptor returning 87 voxels for 85) describe
    the tile's voxels plus a margin; keeping the margin and stretching the map over the tile's extent
    (upstream) would misplace features by up to a voxel per side. Smaller outputs are strided
    layers and are kept whole.
    """
    keep = tuple(slice((h - t) // 2, (h - t) // 2 + t) if h > t else slice(None)
                 for h, t in zip(feature.shape[1:], tile))
    return feature[(slice(None),) + keep]


def _feature_interpolator(fmap, geometry: ImageGeometry):
    """Cubic B-spline interpolator of a Static feature map ``(F, *zyx)``, float32 coefficients on the CPU.

    float32 as upstream's feature-map interpolators (docs/design.md §I6.5): half the memory of
    float64 and less memory traffic per sample; points, weights and sums stay float64.
    """
    return ImageInterpolator(fmap, order=3, geometry=geometry, dtype=torch.float32)


class _StaticLayer(torch.autograd.Function):
    """One Static layer on the plugin's ``static_layer``: value at ``(x, q)``; its derivative w.r.t. ``q`` comes
    out of the same plugin call."""

    @staticmethod
    def forward(ctx: Any, moving_points, fixed_points, fixed, moving, channels, distance: str, plugin):
        fixed_pc, fixed_size = fixed.table
        moving_pc, moving_size = moving.table
        value, grad_index = plugin.static_layer(
            distance, fixed_pc, list(fixed_size), fixed.index(fixed_points).contiguous(), moving_pc,
            list(moving_size), moving.index(moving_points.detach()).contiguous(), moving.order,
            torch.empty(0, dtype=torch.int64) if channels is None else channels)
        index_per_mm = torch.as_tensor(moving.geometry.physical_to_index_matrix, dtype=torch.float64)
        ctx.save_for_backward(grad_index @ index_per_mm)
        return value

    @staticmethod
    def backward(ctx: Any, grad_out):
        (grad_points,) = ctx.saved_tensors
        return (grad_out.to(grad_points.dtype) * grad_points,) + (None,) * 6


def random_rotations(n: int, generator, dtype):
    """Random rotations R = Rz(γ)·Ry(β)·Rx(α), angles uniform in [0, 2π), ``(n, 3, 3)`` (docs/design.md §I5.2).

    The angles are drawn in float64 from ``generator`` (``3 × n`` numbers: all α, then β, then γ) and the
    matrices are built in ``dtype``.
    """
    a, b, c = (2 * math.pi * torch.rand(3, n, generator=generator, dtype=torch.float64)).to(dtype)
    ca, sa, cb, sb, cc, sc = a.cos(), a.sin(), b.cos(), b.sin(), c.cos(), c.sin()
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    rx = torch.stack([one, zero, zero, zero, ca, -sa, zero, sa, ca], -1).view(n, 3, 3)
    ry = torch.stack([cb, zero, sb, zero, one, zero, -sb, zero, cb], -1).view(n, 3, 3)
    rz = torch.stack([cc, -sc, zero, sc, cc, zero, zero, zero, one], -1).view(n, 3, 3)
    return rz @ ry @ rx


class ImpactMetric:
    """IMPACT for one resolution level.

    Args:
        config: the level's :class:`elastix_bridge.core.impact_parameters.ImpactLevelConfig`.
        fixed, moving: level images (:class:`elastix_bridge.engine.images.level_images.LevelImage`).
        moving_mask: :class:`elastix_bridge.engine.images.level_images.Mask` or None.
        transform: the stage transform (:mod:`elastix_bridge.engine.transforms.bspline`).
        plugin: the loaded plugin module.
        models: ``(fixed_models, moving_models)`` — plugin ``FeatureModel`` objects per config entry.
        device: ``torch.device`` for model inputs and features (``ImpactGPU``).
        generator: ``torch.Generator`` for subsets and random patch rotations.
        moving_interpolation_order: elastix ``BSplineInterpolationOrder`` of the moving image.
        required_ratio_of_valid_samples: elastix ``RequiredRatioOfValidSamples`` (0 disables).

    Attributes (besides the arguments):
        fixed_interp, moving_interp: float64 :class:`ImageInterpolator` of the level images (cubic for the
            fixed image, ``moving_interpolation_order`` for the moving one), read by the models' inputs.
        fixed_feature_interp, moving_feature_interp: Static mode, after :meth:`initialize`: per selected
            layer a cubic float32 :class:`ImageInterpolator` of the feature map ``Φ(F)``, resp. ``Φ(M∘T₀)``
            (``(F_l, *zyx)`` coefficients on the map's own geometry, docs/design.md §I6.5).
        reference_parameters: Static mode: ``T₀``'s parameters, ``Tensor[P]``, those at the last moving-map
            refresh (docs/design.md §I6.6).

    Source: docs/design.md §I5 (Jacobian), §I6 (Static), §I7 (distances), §I8 (aggregation).
    """

    #: Static mode on the CPU reads both maps and takes each layer's distance and derivative in one
    #: plugin call (``static_layer``); False runs the torch reference the tests compare it with.
    fused_static = True

    def __init__(self, config: ImpactLevelConfig, fixed: LevelImage, moving: LevelImage, moving_mask: "Mask | None",
                 transform: Transform, plugin: ModuleType, models: tuple[Sequence[Any], Sequence[Any]],
                 device: torch.device, generator: torch.Generator,
                 moving_interpolation_order: int = 1, required_ratio_of_valid_samples: float = 0.25) -> None:
        self.config = config
        self.fixed, self.moving, self.moving_mask = fixed, moving, moving_mask
        self.transform = transform
        self.plugin = plugin
        self.fixed_models, self.moving_models = models
        self.device = device
        self.generator = generator
        self.required_ratio = required_ratio_of_valid_samples
        self.dim = fixed.geometry.dimension
        n_layers = sum(sum(m.layers_mask) for m in config.fixed_models)
        # Images are interpolated on the CPU in float64 (sample coordinates are float64);
        # only the model inputs move to the device.
        self.fixed_interp = ImageInterpolator(fixed, order=3, dtype=torch.float64)
        self.moving_interp = ImageInterpolator(moving, order=moving_interpolation_order, dtype=torch.float64)
        self.fixed_stats = torch.from_numpy(fixed.statistics().astype(np.float32))
        self.moving_stats = torch.from_numpy(moving.statistics().astype(np.float32))
        self.fixed_direction = direction_tensor(fixed.geometry)
        self.moving_direction = direction_tensor(moving.geometry)
        self.alpha: list = [None] * n_layers
        self.iteration = 0
        self.channels: list = []
        self.pca_bases: list = [None] * n_layers
        self._fixed_cache = None  # Jacobian mode: (points, valid, fixed features) of the last evaluation

    @classmethod
    def for_level(cls, inputs: Any) -> "ImpactMetric":
        """The metric of one resolution level, from the stage's
        :class:`~elastix_bridge.engine.registration.MetricInputs`: the level's Impact configuration, models and
        device, the plugin and the Impact generator are the stage's (loaded once, docs/design.md §I1)."""
        stage, level = inputs.stage, inputs.level
        return cls(stage.impact_levels[level], inputs.fixed, inputs.moving, inputs.moving_mask, inputs.transform,
                   stage.plugin, stage.models[level], stage.devices[level], stage.impact_generator,
                   moving_interpolation_order=inputs.moving_interpolation_order,
                   required_ratio_of_valid_samples=inputs.required_ratio_of_valid_samples)

    # -- initialisation -------------------------------------------------------------------------
    def initialize(self, parameters: torch.Tensor) -> None:
        """Per-level initialisation (docs/design.md §I5.1 / §I6): feature maps or output shapes."""
        tic = time.perf_counter()
        if self.config.mode == "Static":
            fixed_maps, geometries = self._static_maps(self.fixed_models, self.config.fixed_models,
                                                       self.fixed_interp, None, self.fixed_stats,
                                                       self.fixed_direction, "Fixed")
            self.fixed_feature_interp = [_feature_interpolator(m, g) for m, g in zip(fixed_maps, geometries)]
            self.channels = [m.shape[0] for m in fixed_maps]
            self._refresh_moving_maps(parameters)
        else:
            self.channels = self._jacobian_dummy_forward()
        self.subset_sizes = [max(1, min(int(k), c)) for k, c in zip(self.config.subset_features, self.channels)]
        log.info("Initialization of Impact metric took: %d ms (mode %s, device %s, layers %d, channels %s, "
                 "subset %s, distances %s)", int(1000 * (time.perf_counter() - tic)), self.config.mode,
                 self.device, len(self.channels), self.channels, self.subset_sizes, list(self.config.distances))

    def _jacobian_dummy_forward(self) -> list:
        """Run every model once on a zero patch to learn the selected layers' channel counts (§I5.1)."""
        level = self.config.level
        fixed = dummy_channels(self.fixed_models, self.config.fixed_models, self.fixed_stats, self.fixed_direction,
                                self.device, "fixed", level)
        moving = dummy_channels(self.moving_models, self.config.moving_models, self.moving_stats,
                                 self.moving_direction, self.device, "moving", level)
        check_paired(level, fixed, moving)
        return fixed

    def _forward(self, model, cfg, x, stats, direction, which: str):
        return call_model(model, cfg, x, stats, direction, which, self.config.level)

    # -- Static mode ----------------------------------------------------------------------------
    def _static_grid(self, cfg) -> ImageGeometry:
        """Resampling grid at ``ImpactVoxelSize`` covering the fixed image's physical extent."""
        g = self.fixed.geometry
        v = np.asarray(cfg.voxel_size, dtype=np.float64)
        extent = np.asarray(g.size) * g.spacing
        size = np.maximum(1, np.floor(extent / v + 0.5)).astype(int)
        spacing = extent / size
        origin = g.origin + g.direction @ ((spacing - g.spacing) / 2)
        return ImageGeometry(tuple(size), spacing, origin, g.direction)

    def _static_maps(self, models, configs, interp, mapping, stats, direction, which: str):
        """Feature maps of all selected layers: lists of ``(F_l, *zyx)`` tensors and their geometries.

        ``mapping(grid)`` gives the points ``(∏size, D)`` where the image is read for every voxel of a
        model grid (None = the grid's own voxel centres; a grid equal to the image's then reads the
        fixed image itself, which is what its interpolation there returns).
        With ``ImpactFeatureMapOutputDirectory`` (or ``ImpactWriteFeatureMaps``) the resampled model
        inputs and the final maps are written there (docs/design.md §I6.7). ``which`` is ``"Fixed"`` (PCA
        bases are fitted) or ``"Moving"`` (the fixed bases are reused).
        """
        maps, geometries = [], []
        l = 0
        for model, cfg in zip(models, configs):
            grid = self._static_grid(cfg)
            with torch.no_grad():
                # A Static grid spans the fixed image's extent: with the image's size it has its voxels.
                if mapping is None and grid.size == self.fixed.geometry.size:
                    img = torch.as_tensor(np.asarray(self.fixed.array_zyx), dtype=torch.float32)
                else:
                    pts = torch.from_numpy(grid.voxel_centres()) if mapping is None else mapping(grid)
                    img = interp(pts)[:, 0].reshape(grid.shape_zyx).to(torch.float32)
                outputs, strides = self._tiled_forward(model, cfg, img, stats, direction, which.lower())
            sizes = "_".join(f"{v:.2f}" for v in cfg.voxel_size)
            self._write_map(img[None], grid, f"{which}_{self.config.level}_{sizes}mm.mha")
            for j, on in enumerate(cfg.layers_mask):
                if not on:
                    continue
                fmap = outputs[j]
                if self.config.pca[l] > 0:
                    fmap = self._pca(l, fmap, fit=which == "Fixed")
                maps.append(fmap)
                geometries.append(self._feature_geometry(grid, fmap.shape[1:], strides[j]))
                self._write_map(fmap, geometries[-1], f"{which}_{self.config.level}_{l}.mha")
                l += 1
        return maps, geometries

    def _write_map(self, volume, geometry: ImageGeometry, name: str) -> None:
        """Write a ``(C, *zyx)`` volume as a C-component float image, if feature maps are asked for."""
        directory = self.config.feature_map_directory
        if not directory:
            return
        import itk  # deferred: itk loads in seconds, and only written feature maps need it

        Path(directory).mkdir(parents=True, exist_ok=True)
        array = np.ascontiguousarray(np.moveaxis(volume.detach().cpu().float().numpy(), 0, -1))
        image = itk.image_from_array(array, is_vector=True)
        geometry.apply_to_itk(image)
        write_image(image, Path(directory) / name)

    def _tiled_forward(self, model, cfg, img, stats, direction, which: str = "fixed"):
        """Model outputs for the whole resampled image (docs/design.md §I6.2), batch axis removed.

        Tiles of ``ImpactPatchSize`` (0 = whole axis) along the model axes, zero-padded at the high
        end, written side by side and cropped; a 2D model on a 3D image runs slice by slice.

        Returns:
            ``(outputs, strides)``: per model output a ``[F, *zyx]`` tensor, and per output the
            number of resampled voxels per feature voxel along each tensor axis (``tile / h`` with
            ``h`` the tile's output size after :func:`crop_padding`; 1 along the slice axis of a
            2D model on a 3D image).
        """
        if cfg.dimension < img.dim():
            slices = [self._tiled_forward(model, cfg, img[z], stats, direction, which) for z in range(img.shape[0])]
            outputs = [torch.stack([s[0][j] for s in slices], dim=1) for j in range(len(slices[0][0]))]
            return outputs, [(1.0,) + tuple(st) for st in slices[0][1]]
        extent = img.shape
        tile = [e if p == 0 else p for e, p in zip(extent, reversed(cfg.patch_size))]
        counts = [math.ceil(e / t) for e, t in zip(extent, tile)]
        canvases = None
        for tidx in np.ndindex(*counts):
            sl = tuple(slice(i * t, min((i + 1) * t, e)) for i, t, e in zip(tidx, tile, extent))
            piece = img[sl]
            pad = []
            for t, s in zip(reversed(tile), reversed(piece.shape)):
                pad += [0, t - s]
            piece = torch.nn.functional.pad(piece, pad)
            x = piece[None, None].expand(1, cfg.channels, *piece.shape).to(self.device)
            out = self._forward(model, cfg, x.contiguous(), stats, direction, which)
            out = [crop_padding(o[0], tile) for o in out]
            if all(c == 1 for c in counts):  # one tile: its outputs are the maps (no canvas, no copy)
                return out, [tuple(t / h for t, h in zip(tile, o.shape[1:])) for o in out]
            if canvases is None:
                sizes = [o.shape[1:] for o in out]
                canvases = [o.new_zeros((o.shape[0],) + tuple(c * h for c, h in zip(counts, s)))
                            for o, s in zip(out, sizes)]
            for c, o, s in zip(canvases, out, sizes):
                c[(slice(None),) + tuple(slice(i * h, (i + 1) * h) for i, h in zip(tidx, s))] = o
        cropped = []
        for c, s in zip(canvases, sizes):
            keep = tuple(slice(0, int(h * e / t)) for h, e, t in zip(s, extent, tile))
            cropped.append(c[(slice(None),) + keep])
        strides = [tuple(t / h for t, h in zip(tile, s)) for s in sizes]
        return cropped, strides

    @staticmethod
    def _feature_geometry(grid: ImageGeometry, shape_zyx, strides_zyx) -> ImageGeometry:
        """Geometry of a feature map of ``shape_zyx`` on the resampled ``grid`` (strided layers too).

        A feature voxel spans ``strides_zyx`` grid voxels (``tile / h`` from :meth:`_tiled_forward`)
        and the first one starts at the grid's low edge, so feature ``i`` is centred on grid
        voxels ``[s·i, s·(i+1))``. When the tiles divide the extent (or the whole image is one tile)
        the map covers the grid's extent exactly; with a partial last tile, whose features are
        cropped (§I6.2), it covers ``size·s`` grid voxels instead of being stretched over the whole
        extent (which would misplace the features progressively).
        """
        size = np.asarray(tuple(reversed(tuple(shape_zyx))), dtype=np.float64)
        spacing = grid.spacing * np.asarray(tuple(reversed(tuple(strides_zyx))), dtype=np.float64)
        origin = grid.origin + grid.direction @ ((spacing - grid.spacing) / 2)
        return ImageGeometry(tuple(int(s) for s in size), spacing, origin, grid.direction)

    def _pca(self, layer: int, fmap, fit: bool):
        """PCA of a feature map (docs/design.md §I6.4): basis fitted on the fixed map, reused for the moving."""
        f = fmap.shape[0]
        k = int(self.config.pca[layer])
        if fit:
            check_pca(self.config.level, layer, k, f)
        if not fit and self.pca_bases[layer].shape[0] != f:
            check_paired(self.config.level, [self.pca_bases[layer].shape[0]], [f])
        x = fmap.reshape(f, -1).to(torch.float64)
        xc = x - x.mean(dim=1, keepdim=True)
        if fit:
            cov = xc @ xc.T / max(1, x.shape[1] - 1)
            _, vecs = torch.linalg.eigh(cov)
            self.pca_bases[layer] = vecs[:, -k:]
        basis = self.pca_bases[layer]
        return (basis.T @ xc).to(fmap.dtype).reshape((basis.shape[1],) + tuple(fmap.shape[1:]))

    def _refresh_moving_maps(self, parameters) -> None:
        """(Re)compute ``Φ(M∘T)`` on the fixed grids with the current transform (docs/design.md §I6.6)."""
        params = parameters.detach()
        self.reference_parameters = params.clone()
        maps, geometries = self._static_maps(self.moving_models, self.config.moving_models, self.moving_interp,
                                             lambda grid: self.transform.transform_grid(params, grid),
                                             self.moving_stats, self.moving_direction, "Moving")
        check_paired(self.config.level, self.channels, [m.shape[0] for m in maps])
        self.moving_feature_interp = [_feature_interpolator(m, g) for m, g in zip(maps, geometries)]

    # -- evaluation ----------------------------------------------------------------------------
    def _subsets(self):
        """One channel subset per layer for this evaluation (docs/design.md §I4.5)."""
        subsets = []
        for c, k in zip(self.channels, self.subset_sizes):
            if k >= c:
                subsets.append(None)
            else:
                subsets.append(torch.randperm(c, generator=self.generator)[:k])
        return subsets

    def _check_samples(self, n_valid: int, n_total: int) -> None:
        if n_valid == 0 or n_valid < self.required_ratio * n_total:
            raise SamplingError(f"Too many samples map outside moving image buffer: {n_valid} / {n_total}")

    def _inside_moving(self, points):
        """Validity of moving points ``(..., D)``: inside the moving buffer and mask (docs/design.md §E7.1)."""
        flat = points.reshape(-1, self.dim)
        ok = self.moving.geometry.inside_buffer(self.moving.geometry.physical_to_index(flat))
        if self.moving_mask is not None:
            ok = ok & self.moving_mask.contains(flat)
        return ok.reshape(points.shape[:-1])

    def value(self, parameters: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Metric value at the fixed sample points; differentiable w.r.t. ``parameters``.

        Args:
            parameters: transform parameters, ``Tensor[P]`` (float64), may require grad.
            points: fixed sample points, physical mm, ``Tensor[N, D]`` (float64, CPU).

        Returns:
            ``(value, n_valid)``: 0-d tensor (weighted sum over layers, docs/design.md §I8) and the
            number of valid samples.

        Raises:
            SamplingError: fewer valid samples than ``RequiredRatioOfValidSamples × N``, or none at
                all (also when the ratio is 0).
        """
        if self.config.mode == "Static":
            per_layer, n_valid = self._static_values(parameters, points)
        else:
            per_layer, n_valid = self._jacobian_values(parameters, points)
        total = 0.0
        for l, v in enumerate(per_layer):
            if self.config.distances[l] in ("L1", "L2"):
                # Upstream normalises L1/L2 by the first value of the level (docs/design.md §I7.9).
                if self.alpha[l] is None:
                    first = float(v.detach())
                    self.alpha[l] = 1.0 / first if first != 0 else 1.0
                v = v * self.alpha[l]
            total = total + float(self.config.layers_weight[l]) * v
        return total, n_valid

    def _static_values(self, parameters, points):
        moved = self.transform.transform_points(parameters, points)
        valid = self._inside_moving(moved.detach())
        n_valid = int(valid.sum())
        self._check_samples(n_valid, points.shape[0])
        x, y = points[valid], moved[valid]
        with torch.no_grad():
            reference = self.transform.transform_points(self.reference_parameters, x)
        q = x + (y - reference)
        subsets = self._subsets()
        values = []
        for l, (fi, mi) in enumerate(zip(self.fixed_feature_interp, self.moving_feature_interp)):
            if self.fused_static and self.device.type == "cpu":
                values.append(_StaticLayer.apply(q, x, fi, mi, subsets[l], self.config.distances[l],
                                                              self.plugin))
                continue
            with torch.no_grad():
                f = fi(x)
            m = mi(q)
            if subsets[l] is not None:
                f, m = f[:, subsets[l]], m[:, subsets[l]]
            values.append(self.plugin.layer_value(self.config.distances[l], f.to(torch.float32).to(self.device),
                                                  m.to(torch.float32).to(self.device)))
        return values, n_valid

    def patch_points(self, configs, points, rotations):
        """Jacobian mode: the points where each model's patches read the image (docs/design.md §I5.2).

        Args:
            configs: the models' configurations (``config.fixed_models`` or ``config.moving_models``).
            points: fixed sample points, physical mm, ``Tensor[N, D]``.
            rotations: per model ``(N, 3, 3)`` rotations (:func:`random_rotations`) for a 2D model on a
                3D image, else None.

        Returns:
            ``(points, shapes)``: per model ``Tensor[N, Q, D]`` mm (:func:`patch_grid_offsets` around each
            sample) and its patch tensor shape ``(P_z, P_y, P_x)``.
        """
        pts, shapes = [], []
        for i, cfg in enumerate(configs):
            offsets, shape = patch_grid_offsets(cfg, self.fixed.geometry, self.dim)
            off = torch.from_numpy(offsets).to(points.dtype)
            if cfg.dimension < self.dim:
                pts.append(points[:, None, :] + torch.einsum("nij,qj->nqi", rotations[i], off))
            else:
                pts.append(points[:, None, :] + off[None])
            shapes.append(shape)
        return pts, shapes

    def patch_features(self, models, configs, interp, pts_list, shapes, stats, direction, which, mapping=None):
        """Centre features ``[n, F_l]`` of every selected layer for patches read at ``pts_list``.

        ``models``, ``configs``, ``interp``, ``stats``, ``direction`` and ``which`` (``"fixed"`` or
        ``"moving"``) are one side's; ``pts_list`` and ``shapes`` are :meth:`patch_points`'s for them
        (``[n, Q, D]`` mm per model). Returns one tensor per selected layer, models in order, on the
        metric's device.

        ``mapping`` (the transform at the current parameters, or None) maps the patch points
        ``(m, D)`` before the image is read. An evaluation larger than :data:`ONE_CALL_PATCH_VOXELS`
        patch voxels (the exact gradients of ASGD's parameter estimation, 10 times an iteration's
        samples) runs in chunks of :data:`CHUNK_PATCH_VOXELS`, and with autograd each chunk is
        checkpointed (its transform, interpolation and model activations recomputed in the backward
        instead of kept), so its memory is that of one chunk. Samples are independent of one another
        in the batch (docs/design.md §I4.2), so chunks give the same features.
        """
        feats = []
        for model, cfg, pts, shape in zip(models, configs, pts_list, shapes):
            def centres(p, model=model, cfg=cfg, shape=shape):
                n = p.shape[0]
                q = p.reshape(-1, self.dim)
                vals = interp(q if mapping is None else mapping(q))[:, 0].reshape((n,) + shape)
                x = vals.to(torch.float32)[:, None].expand(n, cfg.channels, *shape).to(self.device)
                out = self._forward(model, cfg, x, stats, direction, which)
                return tuple(centre_features(out[j]) for j, on in enumerate(cfg.layers_mask) if on)

            if pts.shape[0] * math.prod(shape) <= ONE_CALL_PATCH_VOXELS:
                feats += list(centres(pts))
                continue
            step = max(1, CHUNK_PATCH_VOXELS // math.prod(shape))
            chunks = [pts[s:s + step] for s in range(0, pts.shape[0], step)]
            if torch.is_grad_enabled() and mapping is not None:
                # No early stop: it ends the recomputation by raising through the TorchScript
                # interpreter, which reports it as a model failure.
                with set_checkpoint_early_stop(False):
                    parts = [checkpoint(centres, c, use_reentrant=False) for c in chunks]
            else:
                parts = [centres(c) for c in chunks]
            feats += [torch.cat(layer) for layer in zip(*parts)]
        return feats

    def _moved_patches(self, parameters, moving_pts):
        """The moving patch points' inputs to :meth:`patch_features` and the samples whose patches all map
        inside the moving image (buffer and mask).

        Returns:
            ``(inputs, valid, mapping)``: for an evaluation of at most :data:`ONE_CALL_PATCH_VOXELS`
            patch voxels the transformed points (differentiable) and ``mapping=None``; for a larger one
            the untransformed points and the transform as ``mapping``, applied chunk by chunk (its
            validity check too, without gradient), so that the transformed points of all the patches
            are never held at once.
        """
        n = moving_pts[0].shape[0]
        valid = torch.ones(n, dtype=torch.bool)
        if n * max(p.shape[1] for p in moving_pts) <= ONE_CALL_PATCH_VOXELS:
            moved = [self.transform.transform_points(parameters, p.reshape(-1, self.dim)).reshape(p.shape)
                     for p in moving_pts]
            for mp in moved:
                valid &= self._inside_moving(mp.detach()).all(dim=1)
            return moved, valid, None
        with torch.no_grad():
            for p in moving_pts:
                step = max(1, CHUNK_PATCH_VOXELS // p.shape[1])
                for s in range(0, n, step):
                    moved = self.transform.transform_points(parameters, p[s:s + step].reshape(-1, self.dim))
                    valid[s:s + step] &= self._inside_moving(moved.reshape(p[s:s + step].shape)).all(dim=1)
        return moving_pts, valid, lambda q: self.transform.transform_points(parameters, q)

    def _jacobian_values(self, parameters, points):
        """Jacobian mode (docs/design.md §I5): patches around each sample through the models, centre features."""
        n = points.shape[0]
        # One random in-plane rotation per (model, sample) for 2D models on 3D images, shared by the
        # fixed and moving model of a pair so that both see the same plane (drawn when either model
        # of the pair is 2D).
        rotations = [random_rotations(n, self.generator, points.dtype)
                     if min(f.dimension, m.dimension) < self.dim else None
                     for f, m in zip(self.config.fixed_models, self.config.moving_models)]
        fixed_pts, fixed_shapes = self.patch_points(self.config.fixed_models, points, rotations)
        moving_pts, moving_shapes = self.patch_points(self.config.moving_models, points, rotations)
        moving_inputs, valid, mapping = self._moved_patches(parameters, moving_pts)
        n_valid = int(valid.sum())
        self._check_samples(n_valid, n)
        all_valid = n_valid == n  # then the patch points are used as they are, not copied
        subsets = self._subsets()
        # Fixed features depend only on the samples that count: reuse them while the sample set and
        # its valid subset stay the same (samplers without new samples per iteration, the exact
        # gradients of ASGD's parameter estimation). Random patch rotations always recompute.
        cached = self._fixed_cache
        if (cached is not None and cached[0] is points and all(r is None for r in rotations)
                and torch.equal(cached[1], valid)):
            fixed_feats = cached[2]
        else:
            with torch.no_grad():
                fixed_feats = self.patch_features(self.fixed_models, self.config.fixed_models, self.fixed_interp,
                                                   [p if all_valid else p[valid] for p in fixed_pts], fixed_shapes,
                                                   self.fixed_stats, self.fixed_direction, "fixed")
            self._fixed_cache = (points, valid, fixed_feats)
        moving_feats = self.patch_features(self.moving_models, self.config.moving_models, self.moving_interp,
                                            [p if all_valid else p[valid] for p in moving_inputs], moving_shapes,
                                            self.moving_stats, self.moving_direction, "moving", mapping=mapping)
        values = []
        for l, (f, m) in enumerate(zip(fixed_feats, moving_feats)):
            if subsets[l] is not None:
                f, m = f[:, subsets[l].to(f.device)], m[:, subsets[l].to(m.device)]
            values.append(self.plugin.layer_value(self.config.distances[l], f, m))
        return values, n_valid

    def after_iteration(self, parameters: torch.Tensor) -> None:
        """Refresh the Static moving feature maps every ``ImpactFeaturesMapUpdateInterval`` iterations."""
        self.iteration += 1
        interval = self.config.features_map_update_interval
        if self.config.mode == "Static" and interval and interval > 0 and self.iteration % interval == 0:
            self._refresh_moving_maps(parameters)
