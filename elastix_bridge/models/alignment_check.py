"""Does a feature model see alignment for this pair of modalities? ``elastix-bridge model check MODEL FIXED MOVING``.

A pretrained feature model can fail without a word: features of a network trained on T1 and CT may not
vary with alignment when one image is T1 and the other T2-like, and IMPACT then registers the wrong
structures while its value falls. Given an ALIGNED pair of the two modalities (e.g. a T1 and a T2 of one
subject, already registered), :func:`check_alignment` measures the IMPACT distance between the fixed
image's features and the features of the moving image translated by known amounts, and judges the
profile (:func:`judge_profiles`).

How the distance ``D(s)`` of a shift ``s`` (mm, along one physical axis) is measured, as Static mode
computes feature maps (docs/design.md §I6):

* the model grid: the fixed image's physical extent at ``voxel_size`` mm (Static mode's resampling
  grid, same direction cosines), cropped to the mask's bounding box plus a margin of the largest shift
  plus :data:`CONTEXT_VOXELS` grid voxels (memory and time stay bounded for large images);
* the fixed image is read on that grid (cubic B-spline, as the engine reads it), the moving image at
  the grid's points ``x + s`` (linear interpolation, physical space: the translation ``T(x) = x + s``
  of elastix's TranslationTransform), each passed whole to the model with its own whole-image
  statistics ``[min, max, mean, σ]`` and rounded direction cosines (the engine's calling convention);
* ``D(s)``: the sum over the selected layers of the engine's distance (the plugin's ``layer_value``,
  the same function a registration uses) between the fixed and moving features on the feature voxels
  whose centre lies in the mask and whose point ``x ± largest shift`` lies inside the moving image
  along every axis (one set of voxels for every shift, so the profile is comparable).

The distances are the engine's: L1 and L2 are 0 for equal features; Cosine, L1Cosine, DotProduct,
Dice and NCC are negative similarities (−1 for equal features with Cosine and NCC). Lower is more alike
for every one of them.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from elastix_bridge.core.geometry import ImageGeometry
from elastix_bridge.core.image_io import read_image, read_mask
from elastix_bridge.core.impact_parameters import DISTANCES, parse_layers_mask, read_impact_level
from elastix_bridge.core.parameters import read_parameter_file
from elastix_bridge.core.reserved_models import RESERVED_MODELS
from elastix_bridge.runtime import loader

#: Shift magnitudes in mm, each applied + and − along every axis.
DEFAULT_SHIFTS = (1.0, 2.0, 4.0, 8.0)
#: The rise that the distance must reach at the largest shift on each side of each axis, as a share of
#: ``|D(0)|``: ``D(±largest) − D(0) >= MIN_RISE[distance] · |D(0)|`` (with ``D(0) = 0``: ``D(±largest) > 0``).
#: L1 and L2 are 0 for equal features, so this is ``D(±largest) / D(0) >= 1.5``; the other distances are
#: negative similarities near −1 for matching features (Cosine, NCC), where 5 % of ``|D(0)|`` is a clear rise.
MIN_RISE = {"L1": 0.5, "L2": 0.5, "NCC": 0.05, "Cosine": 0.05, "L1Cosine": 0.05, "DotProduct": 0.05, "Dice": 0.05}
#: Tolerance of the minimum and monotone rules, as a share of the side's rise ``R = D(±largest) − D(0)``.
MONOTONE_TOLERANCE = 0.1
#: Grid voxels of context kept around the mask's bounding box (plus the largest shift).
CONTEXT_VOXELS = 16
#: The default mask: fixed voxels above ``lowest + MASK_THRESHOLD · (99th percentile − lowest)``.
MASK_THRESHOLD = 0.05
AXES = "xyz"

ADVICE = ("this model cannot compare these two modalities: do not use it for this pair; try mind-ssc-2d / "
          "mind-ssc-3d (contrast-invariant), another layer (--layers-mask), another distance, or elastix's "
          "AdvancedMattesMutualInformation")


@dataclass
class AlignmentReport:
    """What :func:`check_alignment` measured; ``text()`` is what the command prints, ``as_dict()`` its --json.

    Attributes:
        model, fixed, moving: as given.
        distance: the engine's distance name; layers_mask: as given.
        voxel_size: the model grid's spacing, mm, (x, y[, z]).
        grid_size: voxels of the cropped model grid, (x, y[, z]); voxels: feature voxels compared (layer 0).
        mask: what the mask was (a file, or the default threshold).
        shifts: magnitudes in mm; d0: ``D(0)``.
        profiles: per axis name a list of ``(shift mm, D)`` from −largest to +largest, 0 included.
        sees_alignment: the verdict; problems: one sentence per failed rule (empty when it sees alignment).
        seconds: wall time of the measurement.
    """

    model: str
    fixed: str
    moving: str
    distance: str
    layers_mask: str
    voxel_size: tuple
    grid_size: tuple
    voxels: int
    mask: str
    shifts: tuple
    d0: float
    profiles: dict = field(default_factory=dict)
    sees_alignment: bool = False
    problems: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        if self.sees_alignment:
            rho = MIN_RISE.get(self.distance, 0.05)
            return (f"sees alignment: the distance is smallest at shift 0 along every axis and rises monotonically, "
                    f"by at least {100 * rho:.0f} % of |D(0)| at ±{max(self.shifts):g} mm")
        return "does NOT see alignment: " + "; ".join(self.problems) + "; " + ADVICE

    def text(self) -> str:
        shifts = [s for s, _ in next(iter(self.profiles.values()))]
        width = max(9, max(len(f"{s:+g}") for s in shifts) + 1)
        out = [f"model {self.model}, distance {self.distance}, layers mask \"{self.layers_mask}\", model grid "
               f"{' x '.join(f'{v:g}' for v in self.voxel_size)} mm, {'x'.join(map(str, self.grid_size))} voxels",
               f"  fixed  {self.fixed}", f"  moving {self.moving} (translated; aligned pair expected)",
               f"  compared on {self.voxels} feature voxels ({self.mask}); {self.seconds:.1f} s",
               "  D(shift) = distance between the fixed features and the features of the moving image moved by "
               "shift mm (lower = more alike)",
               "  shift mm " + "".join(f"{s:>{width}g}" for s in shifts)]
        for axis, profile in self.profiles.items():
            out.append(f"  {axis:<8} " + "".join(f"{_fmt(v):>{width}}" for _, v in profile))
        if self.sees_alignment:
            out.append("verdict: " + self.verdict + " (exit 0)")
        else:
            out += ["verdict: does NOT see alignment (exit 1)"] + [f"  - {p}" for p in self.problems]
            out.append("  " + ADVICE[0].upper() + ADVICE[1:])
        return "\n".join(out)

    def as_dict(self) -> dict:
        return {"model": self.model, "fixed": self.fixed, "moving": self.moving, "distance": self.distance,
                "layers_mask": self.layers_mask, "voxel_size_mm": list(self.voxel_size),
                "grid_size": list(self.grid_size), "voxels": self.voxels, "mask": self.mask,
                "shifts_mm": list(self.shifts), "d0": self.d0,
                "profiles": {a: [[s, v] for s, v in p] for a, p in self.profiles.items()},
                "sees_alignment": self.sees_alignment, "problems": list(self.problems), "verdict": self.verdict,
                "rule": {"min_rise": MIN_RISE.get(self.distance, 0.05), "tolerance": MONOTONE_TOLERANCE},
                "seconds": self.seconds}


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def judge_profiles(d0: float, profiles: dict, distance: str = "L2", tolerance: float = MONOTONE_TOLERANCE) -> list:
    """The rule: which problems a set of distance profiles has (an empty list: the model sees alignment).

    For every axis, with the shift magnitudes ``0 < s_1 < ... < s_K`` on each side σ ∈ {−, +}, the side's
    rise ``R_σ = D(σ s_K) − D(0)`` and ``ρ = MIN_RISE[distance]``:

    1. minimum at 0: every ``D(s) >= D(0) − tolerance · min(R_−, R_+)`` (and both ``R > 0``); else
       "minimum at shift s mm along a", s the lowest;
    2. a clear rise: ``R_σ >= ρ · |D(0)|`` (with ``D(0) = 0``: ``R_σ > 0``); else "too flat along a";
    3. monotone: ``D(σ s_{k+1}) >= D(σ s_k) − tolerance · R_σ`` for every k (``s_0 = 0``); else
       "not monotone along a" (a second minimum).

    A non-finite D (Cosine of all-zero features) fails the axis.

    Args:
        d0: ``D(0)``.
        profiles: per axis name, ``[(shift mm, D), ...]`` (0 may be included; it is ignored).
        distance: the distance name (picks ``ρ``); tolerance: the share of rules 1 and 3.

    Returns:
        One sentence per broken rule, at most one per axis for rule 1 (which then skips 2 and 3).
    """
    problems = []
    rho = MIN_RISE.get(distance, 0.05)
    for axis, profile in profiles.items():
        values = {float(s): float(v) for s, v in profile if s != 0}
        if not np.isfinite(d0) or not all(np.isfinite(v) for v in values.values()):
            problems.append(f"along {axis} the distance is not finite (NaN or Inf: e.g. Cosine of all-zero features)")
            continue
        sides = []
        for sign in (-1, 1):
            side = sorted(((s, v) for s, v in values.items() if s * sign > 0), key=lambda sv: abs(sv[0]))
            if side:
                sides.append((side, side[-1][1] - d0))
        rise = min(r for _, r in sides)
        lowest_s = min(values, key=lambda s: values[s])
        if rise <= 0 or values[lowest_s] < d0 - tolerance * rise:
            worst = d0 >= max(values.values())
            problems.append(f"minimum at shift {lowest_s:+g} mm along {axis} (D = {_fmt(values[lowest_s])}, "
                            f"D(0) = {_fmt(d0)}): the features match better misaligned"
                            + (", and worst of all when aligned (D(0) is the largest)" if worst else ""))
            continue
        for side, r in sides:
            s_last = side[-1][0]
            if d0 != 0 and r < rho * abs(d0):
                problems.append(f"too flat along {axis}: D({s_last:+g} mm) is only {100 * r / abs(d0):.1f} % above "
                                f"|D(0)| (needs {100 * rho:.0f} % for {distance})")
                continue
            chain = [(0.0, d0)] + side
            for (sa, va), (sb, vb) in zip(chain, chain[1:]):
                if vb < va - tolerance * r:
                    problems.append(f"not monotone along {axis}: D falls from {_fmt(va)} at {sa:+g} mm to "
                                    f"{_fmt(vb)} at {sb:+g} mm (a second minimum)")
                    break
    return problems


def _read(path, what: str):
    """An image as a float64 ``(*zyx)`` array and its geometry (``read_image``'s errors)."""
    image = read_image(path, what)
    array = np.asarray(_itk().array_view_from_image(image), dtype=np.float64).copy()
    return array, ImageGeometry.from_itk(image)


def _statistics(array: np.ndarray):
    """``[min, max, mean, σ]`` float32 as the engine passes them (LevelImage.statistics)."""
    torch = loader.require_torch()
    a = array.astype(np.float64).ravel()
    n = a.size
    mean = a.mean()
    sigma = math.sqrt(max(float(np.square(a - mean).sum() / (n - 1)), 0.0)) if n > 1 else 0.0
    return torch.tensor([a.min(), a.max(), mean, sigma], dtype=torch.float32)


def _static_grid(geometry, voxel_size):
    """Static mode's grid (ImpactMetric._static_grid): the image's extent at ``voxel_size`` mm."""
    v = np.asarray(voxel_size, dtype=np.float64)
    extent = np.asarray(geometry.size) * geometry.spacing
    size = np.maximum(1, np.floor(extent / v + 0.5)).astype(int)
    spacing = extent / size
    origin = geometry.origin + geometry.direction @ ((spacing - geometry.spacing) / 2)
    return ImageGeometry(tuple(size), spacing, origin, geometry.direction)


def _box_on_grid(index_low, index_high, source, grid, margin: int):
    """The grid's index box (x, y, z; low inclusive, high exclusive) covering ``source``'s voxel box
    ``[index_low, index_high]`` (inclusive, ITK order), widened by ``margin`` grid voxels, clipped."""
    d = grid.dimension
    corners = np.array([[index_low[a] - 0.5 if (k >> a) & 1 == 0 else index_high[a] + 0.5 for a in range(d)]
                        for k in range(2 ** d)])
    points = source.index_to_physical(corners)
    idx = grid.physical_to_index(points)
    low = np.maximum(0, np.floor(idx.min(axis=0)).astype(int) - margin)
    high = np.minimum(np.asarray(grid.size), np.ceil(idx.max(axis=0)).astype(int) + 1 + margin)
    return low, high


def _crop(grid, low, high):
    origin = grid.origin + grid.direction @ (np.asarray(low) * grid.spacing)
    return ImageGeometry(tuple(int(h - l) for l, h in zip(low, high)), grid.spacing, origin, grid.direction)


def check_alignment(model: str | Path, fixed: str | Path, moving: str | Path, *, voxel_size: Optional[Sequence[float]]
                    = None, layers_mask: str = "1", distance: str = "L2", mask: Optional[str | Path] = None,
                    shifts: Sequence[float] = DEFAULT_SHIFTS, channels: int = 1) -> AlignmentReport:
    """Measure the distance profile of an aligned pair under known translations and judge it.

    Args:
        model: a TorchScript file, a ``torch.export`` program (``.pt2``) or a built-in name (``mind-ssc-2d``,
            ``mind-ssc-3d``); its dimension must be the images'.
        fixed, moving: image files of the same dimension, ALIGNED (same anatomy at the same physical points);
            the moving one is the other modality.
        voxel_size: the model grid's spacing in mm, one value (isotropic) or one per axis (x, y[, z]);
            default the fixed image's spacing (``ImpactVoxelSize``).
        layers_mask: ``ImpactLayersMask``: "1"/"0" per output layer; its length is ``n_layers`` for the model.
        distance: one of the engine's distances (:data:`elastix_bridge.core.impact_parameters.DISTANCES`).
        mask: a fixed mask file (non-zero = in); default the fixed voxels above ``lowest + 5 % of (99th
            percentile − lowest)`` (the background of an MR or the air of a CT left out), or the whole image
            when that leaves under 1 % of it.
        shifts: magnitudes in mm (> 0), each applied + and − along every physical axis.
        channels: the model's input channels (``ImpactNumberOfChannels``: the image repeated).

    Returns:
        :class:`AlignmentReport` (``sees_alignment``, the profiles, the problems by :func:`judge_profiles`).

    Raises:
        FileNotFoundError, IsADirectoryError, ValueError: an image or the mask cannot be read
            (:func:`elastix_bridge.core.image_io.read_image`'s messages); images of different dimensions; a bad
            distance name, layers mask, voxel size or shift; an empty mask; too few voxels left to compare.
        elastix_bridge.runtime.loader.ImpactModelError: no model at ``model``, not a model, or a model that breaks
            the feature-model contract (:mod:`elastix_bridge.runtime.model_contract`, the registration's
            messages; a forward that raises keeps the model's own message).
        elastix_bridge.runtime.loader.ImpactUnavailableError: torch or the plugin cannot be loaded.
    """
    itk, torch = _itk(), loader.require_torch()
    from elastix_bridge.engine.images.interpolators import ImageInterpolator  # deferred: imports torch, as _torch
    from elastix_bridge.engine.metrics.impact_models import direction_tensor  # deferred: imports torch, as _torch
    from elastix_bridge.runtime.model_contract import (  # deferred: imports torch, as _torch
        ModelUse, check_finite, check_outputs, model_failure, model_name, probe_model)

    tic = time.perf_counter()
    if distance not in DISTANCES:
        close = [d for d in DISTANCES if d.lower() == str(distance).lower()]
        raise ValueError(f"unknown distance {distance!r}" + (f" (did you mean {close[0]}?)" if close else "")
                         + f"; accepted (case-sensitive): {' '.join(DISTANCES)}")
    mask_bits = parse_layers_mask(str(layers_mask))  # the engine's reading: one layer per character, '1' = selected
    if not any(mask_bits):
        raise ValueError(f"layers mask {layers_mask!r} selects no layer; give one character per output layer of the "
                         "model with at least one 1, e.g. \"1\" (the first layer) or \"01\" (the second of two)")
    magnitudes = sorted({float(s) for s in shifts})
    if not magnitudes or any(not (math.isfinite(s) and s > 0) for s in magnitudes):
        raise ValueError(f"shifts {list(shifts)}: give shift magnitudes in mm, each > 0 (e.g. 1 2 4 8); each is "
                         "applied + and - along every axis")
    f_array, f_geo = _read(fixed, "fixed image")
    m_array, m_geo = _read(moving, "moving image")
    d = f_geo.dimension
    if m_geo.dimension != d:
        raise ValueError(f"the fixed image {fixed} is {d}D but the moving image {moving} is {m_geo.dimension}D; "
                         "give two images of the same dimension (an aligned pair of the two modalities)")
    if voxel_size is None:
        voxel = np.asarray(f_geo.spacing, dtype=np.float64)
    else:
        voxel = np.asarray([float(v) for v in voxel_size], dtype=np.float64)
        if voxel.size == 1:
            voxel = np.full(d, voxel[0])
        if voxel.size != d or not np.all(np.isfinite(voxel) & (voxel > 0)):
            raise ValueError(f"voxel size {list(voxel_size)}: give 1 or {d} values in mm, each > 0")
    selected = tuple(j for j, on in enumerate(mask_bits) if on)

    # The model, as the engine loads and probes it.
    shown = str(model)
    if shown not in RESERVED_MODELS:
        problem = loader.model_file_problem(model)
        if problem:
            raise loader.ImpactModelError(f"model {shown!r}: {problem}")
    file = loader.model_file(shown)
    net = loader.load_feature_model(str(file), "cpu")
    use = ModelUse(model_name(None, "", shown), len(mask_bits), selected, d)
    with loader.jit_optimization_disabled():
        try:
            probe_model(net, use, str(file), channels, (0,) * d, jacobian=False, image_dimension=d)
        except loader.ImpactModelError as error:
            if "spatial" not in str(error):
                raise
            raise type(error)(f"{error}; the images are {d}D, so the model is run on {d}D input: give a {d}D model "
                              f"(e.g. mind-ssc-{d}d)") from None

    # The model grid, cropped to the mask's box.
    grid = _static_grid(f_geo, voxel)
    largest = magnitudes[-1]
    margin = int(math.ceil(largest / float(np.min(grid.spacing)))) + CONTEXT_VOXELS
    threshold = None  # the default mask's threshold; None: a mask file, or the whole image
    if mask is not None:
        m_img = read_mask(mask, "fixed mask")
        mask_array = np.asarray(itk.array_view_from_image(m_img)) != 0
        mask_geo = ImageGeometry.from_itk(m_img)
        if mask_geo.dimension != d:
            raise ValueError(f"the fixed mask {mask} is {mask_geo.dimension}D but the images are {d}D")
        if not mask_array.any():
            raise ValueError(f"the fixed mask {mask} is empty (no non-zero voxel); give a mask of the anatomy")
        mask_text = f"mask {mask}"
        box_source, box_geo = mask_array, mask_geo
    else:
        lowest, high = float(f_array.min()), float(np.percentile(f_array, 99))
        threshold = lowest + MASK_THRESHOLD * (high - lowest)
        box_source = f_array > threshold
        mask_text = f"fixed > {threshold:.4g}, i.e. lowest + {100 * MASK_THRESHOLD:.0f} % of (99th percentile - lowest)"
        if box_source.sum() < 0.01 * box_source.size:
            box_source, threshold = np.ones_like(box_source), None
            mask_text = "the whole fixed image"
        box_geo = f_geo
    where = np.nonzero(box_source)  # zyx
    low_xyz = [int(where[d - 1 - a].min()) for a in range(d)]
    high_xyz = [int(where[d - 1 - a].max()) for a in range(d)]
    low, high = _box_on_grid(low_xyz, high_xyz, box_geo, grid, margin)
    crop = _crop(grid, low, high)
    points = torch.from_numpy(crop.voxel_centres())  # (N, D) mm, x fastest

    fixed_interp = ImageInterpolator(f_array, order=3, geometry=f_geo, dtype=torch.float64)
    moving_interp = ImageInterpolator(m_array, order=1, geometry=m_geo, dtype=torch.float64)
    f_stats, m_stats = _statistics(f_array), _statistics(m_array)
    f_dir, m_dir = direction_tensor(f_geo), direction_tensor(m_geo)
    with torch.no_grad():
        f_img = fixed_interp(points)[:, 0].reshape(crop.shape_zyx).to(torch.float32)
        if mask is None:
            in_mask = torch.ones_like(f_img, dtype=torch.bool) if threshold is None else f_img > threshold
        else:
            idx = torch.from_numpy(np.floor(mask_geo.physical_to_index(points.numpy()) + 0.5).astype(np.int64))
            inside = ((idx >= 0) & (idx < torch.tensor(mask_geo.size))).all(dim=1)
            flat = torch.zeros(points.shape[0], dtype=torch.bool)
            ii = idx[inside]
            lin = torch.zeros(ii.shape[0], dtype=torch.int64)
            for a in reversed(range(d)):  # zyx array, x fastest
                lin = lin * mask_geo.size[a] + ii[:, a]
            flat[inside] = torch.from_numpy(mask_array.ravel())[lin]
            in_mask = flat.reshape(crop.shape_zyx)
        valid = torch.ones(points.shape[0], dtype=torch.bool)
        for a in range(d):
            for sign in (-1, 1):
                step = torch.zeros(d, dtype=torch.float64)
                step[a] = sign * largest
                valid &= moving_interp.inside_buffer(points + step)
        keep = in_mask & valid.reshape(crop.shape_zyx)

        def features(img, stats, direction):
            x = img[None, None].expand(1, channels, *img.shape).contiguous()
            with loader.jit_optimization_disabled():
                try:
                    out = net.forward(x, len(mask_bits), stats, direction)
                except RuntimeError as error:
                    raise model_failure(use.name, error) from None
            check_outputs(out, use, 1)
            maps = []
            for j in selected:
                check_finite(out[j], use, j)
                maps.append(out[j][0].float())
            return maps

        fixed_maps = features(f_img, f_stats, f_dir)
        # Feature voxels compared per layer: the centre grid voxel of each feature voxel is kept.
        picks, fixed_rows = [], []
        for fmap in fixed_maps:
            index = []
            for g, h in zip(crop.shape_zyx, fmap.shape[1:]):
                s = g / h
                index.append(torch.clamp((s * (torch.arange(h) + 0.5)).long(), max=g - 1))
            sub = keep[tuple(torch.meshgrid(*index, indexing="ij"))]
            picks.append(sub)
            fixed_rows.append(fmap[:, sub].T.contiguous())
        voxels = int(picks[0].sum())
        if voxels < 10:
            raise ValueError(f"only {voxels} feature voxels to compare ({mask_text}, inside the moving image at "
                             f"±{largest:g} mm): give a larger mask, smaller shifts or a finer --voxel-size")
        plugin = loader.load_plugin()

        def distance_at(step):
            img = moving_interp(points + step)[:, 0].reshape(crop.shape_zyx).to(torch.float32)
            total = 0.0
            for fmap, sub, rows in zip(features(img, m_stats, m_dir), picks, fixed_rows):
                total += float(plugin.layer_value(distance, rows, fmap[:, sub].T.contiguous()))
            return total

        d0 = distance_at(torch.zeros(d, dtype=torch.float64))
        profiles = {}
        for a in range(d):
            profile = []
            for s in [-m for m in reversed(magnitudes)] + [0.0] + magnitudes:
                if s == 0:
                    profile.append((0.0, d0))
                    continue
                step = torch.zeros(d, dtype=torch.float64)
                step[a] = s
                profile.append((s, distance_at(step)))
            profiles[AXES[a]] = profile
    problems = judge_profiles(d0, profiles, distance)
    return AlignmentReport(shown, str(fixed), str(moving), distance, layers_mask, tuple(float(v) for v in grid.spacing),
                           crop.size, voxels, mask_text, tuple(magnitudes), d0, profiles, not problems, problems,
                           time.perf_counter() - tic)


def parameter_map_options(parameter_file: str | Path, level: int, image_dimension: int) -> dict:
    """The check's options from level ``level`` of the first ``(Metric "Impact")`` map of an elastix parameter file.

    Read as a registration reads them (:func:`elastix_bridge.core.impact_parameters.read_impact_level`):
    ``ImpactModelsPath`` (relative paths: to the working folder, as the engine takes them),
    ``ImpactVoxelSize`` (mm), ``ImpactLayersMask``, ``ImpactNumberOfChannels`` and ``ImpactDistance``.

    Returns:
        ``{"model", "voxel_size", "layers_mask", "channels", "distance"}`` for :func:`check_alignment`.

    Raises:
        FileNotFoundError, elastix_bridge.core.parameters.ParameterError: the file cannot be read.
        elastix_bridge.core.impact_parameters.ImpactParameterError: an Impact option of that level is missing or
            malformed (the registration's message).
        ValueError: no map with ``(Metric "Impact")``; the level has several models, or fixed and moving models
            that differ, or different distances for its layers (check each model on the command line).
    """
    for parameter_map in read_parameter_file(parameter_file):
        metrics = list(parameter_map["Metric"]) if "Metric" in parameter_map else []
        if "Impact" in metrics:
            break
    else:
        raise ValueError(f"parameter file {parameter_file} has no (Metric \"Impact\") map; give an Impact map, or "
                         "the model and its options on the command line")
    config = read_impact_level(parameter_map, level, image_dimension, metrics.index("Impact"))
    if len(config.fixed_models) != 1 or config.fixed_models != config.moving_models:
        raise ValueError(f"parameter file {parameter_file}, level {level}: the check runs one model on both images, "
                         "but this level has several models or different fixed and moving models; check each model "
                         "with MODEL and --voxel-size, --layers-mask, --distance on the command line")
    if len(set(config.distances)) != 1:
        raise ValueError(f"parameter file {parameter_file}, level {level}: the layers use different distances "
                         f"({' '.join(config.distances)}); check each with --layers-mask and --distance")
    model = config.fixed_models[0]
    return {"model": model.path, "voxel_size": list(model.voxel_size),
            "layers_mask": "".join("1" if on else "0" for on in model.layers_mask), "channels": model.channels,
            "distance": config.distances[0]}


def _itk():
    """The ``itk`` module, imported on first use."""
    import itk  # deferred: itk takes seconds to import; the command line imports this module for every command

    return itk

