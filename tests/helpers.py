"""Helpers shared by test modules (imported as ``helpers``; pytest puts ``tests/`` on the path for conftest.py).

Sections: the ../shared folder; oblique geometries; parameter maps and files; the command line;
itk images; TorchScript toys and the IMPACT metric's building blocks; C stand-ins for native plugins.
Nothing here imports torch or itk at import time (test modules that need neither can import it).
"""
import math
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from elastix_bridge.core.geometry import ImageGeometry

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_path(*parts) -> Path:
    """Path inside ../shared; skips the calling test with a reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the ../shared folder beside the checkout is absent)")
    return path


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


# ------------------------------------------------------------------------------------------------
# Parameter maps, parameter files and the command line
# ------------------------------------------------------------------------------------------------

# The Impact keys of a one-level, one-model Static map with the built-in 2D MIND-SSC model.
MIND_SSC_2D_STATIC = {
    "ImpactMode": ["Static"],
    "ImpactGPU": ["-1"],
    "ImpactModelsPath0": ["mind-ssc-2d"],
    "ImpactDimension0": ["2"],
    "ImpactNumberOfChannels0": ["1"],
    "ImpactPatchSize0": ["0", "0"],
    "ImpactVoxelSize0": ["1", "1"],
    "ImpactLayersMask0": ["1"],
    "ImpactSubsetFeatures0": ["4"],
    "ImpactLayersWeight0": ["1"],
    "ImpactPCA0": ["0"],
    "ImpactDistance0": ["L2"],
}



def impact_parameters(**changes) -> dict:
    """A small valid Impact map (Static, MIND-SSC 2D, 1 level); ``changes`` override keys, None removes."""
    pmap = {
        "Registration": ["MultiResolutionRegistration"],
        "NumberOfResolutions": ["1"],
        "Metric": ["Impact"],
        "Optimizer": ["AdaptiveStochasticGradientDescent"],
        "MaximumNumberOfIterations": ["5"],
        "Transform": ["BSplineTransform"],
        "FinalGridSpacingInPhysicalUnits": ["10"],
        "ImageSampler": ["RandomCoordinate"],
        "NumberOfSpatialSamples": ["300"],
        "NewSamplesEveryIteration": ["true"],
        "Interpolator": ["BSplineInterpolator"],
        "ErodeMask": ["false"],
        "RandomSeed": ["11"],
        "ResultImageFormat": ["mha"],
        **MIND_SSC_2D_STATIC,
    }
    for key, value in changes.items():
        if value is None:
            pmap.pop(key, None)
        else:
            pmap[key] = [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    return pmap

def elastix_map(iterations: int = 5) -> dict:
    """A small translation / AdvancedMeanSquares map that runs on elastix (no Impact)."""
    return {
        "Registration": ["MultiResolutionRegistration"],
        "Metric": ["AdvancedMeanSquares"],
        "Transform": ["TranslationTransform"],
        "Optimizer": ["AdaptiveStochasticGradientDescent"],
        "MaximumNumberOfIterations": [str(iterations)],
        "NumberOfResolutions": ["1"],
        "ImageSampler": ["Full"],
        "AutomaticTransformInitialization": ["false"],
        "RandomSeed": ["3"],
        "ResultImageFormat": ["mha"],
    }

def impact_map(transform: str = "BSplineTransform", iterations: int = 10, fmt: str = "mha") -> dict:
    """A one-level Static-mode Impact map with the built-in MIND-SSC 2D model."""
    pmap = {
        "Registration": ["MultiResolutionRegistration"],
        "FixedImagePyramid": ["FixedSmoothingImagePyramid"],
        "MovingImagePyramid": ["MovingSmoothingImagePyramid"],
        "NumberOfResolutions": ["1"],
        "Metric": ["Impact"],
        "Optimizer": ["AdaptiveStochasticGradientDescent"],
        "MaximumNumberOfIterations": [str(iterations)],
        "Transform": [transform],
        "ImageSampler": ["RandomCoordinate"],
        "NumberOfSpatialSamples": ["500"],
        "NewSamplesEveryIteration": ["true"],
        "Interpolator": ["BSplineInterpolator"],
        "BSplineInterpolationOrder": ["1"],
        "RandomSeed": ["7"],
        "ResultImageFormat": [fmt],
        **MIND_SSC_2D_STATIC,
    }
    if transform == "BSplineTransform":
        pmap["FinalGridSpacingInPhysicalUnits"] = ["12"]
    return pmap

def write_parameter_file(path: Path, pmap: dict) -> Path:
    """Write ``pmap`` as an elastix parameter file (numbers unquoted, other values quoted)."""
    def show(v):
        try:
            float(v)
            return v
        except ValueError:
            return f'"{v}"'

    path.write_text("".join(f"({k} {' '.join(show(v) for v in vs)})\n" for k, vs in pmap.items()))
    return path

def transform_parameters(parameter_object, index: int = 0) -> list:
    """The ``TransformParameters`` strings of map ``index`` of an ``itk.ParameterObject``."""
    return [str(v) for v in parameter_object.GetParameterMap(index)["TransformParameters"]]

def run(capsys, *argv):
    """``elastix-bridge argv`` in-process: (exit code, stdout, stderr)."""
    from elastix_bridge import cli

    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err

def registration_args(inputs, out, params=None, **replace):
    """The elastix flags for ``inputs``; ``replace`` maps a flag (without '-') to another value."""
    flags = {"f": inputs["fixed"], "m": inputs["moving"], "fMask": inputs["mask"], "mMask": inputs["mask"],
             "p": params or inputs["params"], "out": out, "loglevel": "off"}
    flags.update(replace)
    return [part for flag, value in flags.items() for part in (f"-{flag}", value)]

def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    """Exit 1, a single ``elastix-bridge: error:`` line without traceback, containing every needle."""
    assert code == 1, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert lines[0].startswith("elastix-bridge: error: ")
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


# ------------------------------------------------------------------------------------------------
# itk images on a rotated, anisotropic, off-origin grid (transformix must honour all three)
# ------------------------------------------------------------------------------------------------

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


# ------------------------------------------------------------------------------------------------
# TorchScript toys and the IMPACT metric's building blocks (torch imported inside)
# ------------------------------------------------------------------------------------------------

def scripted_model(tmp_path, name: str, source: str) -> Path:
    """Save the TorchScript of ``class Model(nn.Module)`` defined in ``source`` to ``tmp_path/name``."""
    torch = pytest.importorskip("torch")
    module_file = tmp_path / f"{Path(name).stem}_model.py"
    module_file.write_text("from typing import List\nimport torch\nfrom torch import nn\n\n" + textwrap.dedent(source))
    namespace = {}
    exec(compile(module_file.read_text(), str(module_file), "exec"), namespace)  # TorchScript needs the source file
    path = tmp_path / name
    torch.jit.script(namespace["Model"]()).save(str(path))
    return path

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


# ------------------------------------------------------------------------------------------------
# C stand-ins for native upstream plugins
# ------------------------------------------------------------------------------------------------

STANDIN_C = r"""
#include <stdio.h>
#include <stdlib.h>

/* elastix: extern "C" int ImpactMetricInstallComponent(elastix::ComponentDatabase *) */
__attribute__((visibility("default"))) int ImpactMetricInstallComponent(void *component_database) {
  const char *marker = getenv("STANDIN_MARKER");
  const char *ret = getenv("STANDIN_RETURN");
  if (marker) {
    FILE *f = fopen(marker, "a");
    if (f) { fprintf(f, "called with %p\n", component_database); fclose(f); }
  }
  return ret ? atoi(ret) : 7;
}
"""

def compile_library(cc, folder: Path, file_name: str, soname=None, needed=(), source=STANDIN_C) -> Path:
    """Compile `source` into folder/file_name with an optional SONAME and extra DT_NEEDED entries.

    Each name in `needed` is satisfied at link time by an empty library of that SONAME, deleted
    afterwards, so the result needs a library that does not exist.
    """
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / f"{file_name}.c"
    src.write_text(source)
    cmd = [cc, "-shared", "-fPIC", "-o", str(folder / file_name), str(src)]
    if soname:
        cmd.append(f"-Wl,-soname,{soname}")
    fakes = folder / f".fakes-{file_name}"
    if needed:
        fakes.mkdir()
        (fakes / "empty.c").write_text("int fake_dependency_marker;\n")
        cmd += ["-Wl,--no-as-needed", f"-L{fakes}"]
        for name in needed:
            subprocess.run([cc, "-shared", "-fPIC", f"-Wl,-soname,{name}", "-o", str(fakes / name),
                            str(fakes / "empty.c")], check=True, capture_output=True)
            cmd.append(f"-l:{name}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    shutil.rmtree(fakes, ignore_errors=True)
    if proc.returncode != 0:
        pytest.skip(f"the C compiler {cc} could not build a shared library: {proc.stderr.strip()[-300:]}")
    return folder / file_name
