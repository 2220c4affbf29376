"""Every kind of upstream IMPACT parameter map runs end to end through ``elastix_registration_method``.

The maps are written here, in our own words, after the structures described in docs/design.md §I11.1
(upstream elastix's three IMPACT test files: 3D Jacobian and 3D Static with ``M730_1_Layers.pt``,
2D Static with ``R1D2_2D.pt``) and §I2 (per-level modes, several models per level, fixed- and
moving-specific model sets, 2D models on 3D images, the reserved ``mind-ssc-*`` models). Iteration
counts, sample counts and images are tiny so that every run takes a few seconds on a CPU.

Images are smooth blobs defined in physical space; the moving image is the fixed one shifted by a
known translation ``t`` (``moving(x) = fixed(x − t)``), so the ideal transform is ``T(x) = x + t``.
Every run checks that

* a TransformParameters map comes back whose B-spline grid (``GridSize``, hence the number of
  parameters) is the one real elastix builds for the same map and image (elastix is run with the
  same map and a classic metric as the reference), with every parameter finite;
* each level ran its iterations (``IterationInfo.0.R<L>.txt``) and the metric reported, per level,
  the mode, the selected layers, their channel counts, the clamped subsets and the distances that
  the map asks for;
* the registration did something sensible: the mean displacement of transformix's deformation
  field in the image interior recovers at least 30 % of ``t``, and the result image is closer to the
  fixed image than the moving image was.

Toy TorchScript models (scripted here) stand in for the real models; when ../shared/models exists,
the three upstream maps also run with the real ``M730_1_Layers.pt`` and ``R1D2_2D.pt``.
"""
import math
import re
from pathlib import Path
from typing import List

import numpy as np
import pytest

from helpers.paths import shared_path

itk = pytest.importorskip("itk")
torch = pytest.importorskip("torch")

from elastix_bridge.api import elastix_registration_method  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True:UserWarning"),
]

# Known translations (mm, x y [z]): moving(x) = fixed(x − t).
SHIFT_3D = (4.0, -3.0, 3.0)
SHIFT_2D = (3.0, -2.5)


# ------------------------------------------------------------------------------------------------
# Toy TorchScript models (fixed random weights; scripted and saved by the `toy` fixture)
# ------------------------------------------------------------------------------------------------


def _conv(dimension: int, cin: int, cout: int, seed: int):
    conv = (torch.nn.Conv2d if dimension == 2 else torch.nn.Conv3d)(cin, cout, 3, padding=1)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / math.sqrt(cin * 3 ** dimension) * 2.0)
        conv.bias.copy_(torch.randn(cout, generator=g) * 0.1)
    return conv


class OneLayer(torch.nn.Module):
    """``forward(x) -> [tanh(conv(x))]``: one layer, like the upstream test models (no metadata)."""

    def __init__(self, dimension: int, channels_in: int, channels_out: int, seed: int):
        super().__init__()
        self.conv = _conv(dimension, channels_in, channels_out, seed)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [torch.tanh(self.conv(x))]


class TwoLayers(torch.nn.Module):
    """``forward(x, nLayers)``: returns the first ``nLayers`` of (4 channels, 8 channels) (early exit)."""

    def __init__(self, dimension: int, seed: int):
        super().__init__()
        self.first = _conv(dimension, 1, 4, seed)
        self.second = _conv(dimension, 4, 8, seed + 1)

    def forward(self, x: torch.Tensor, n_layers: torch.Tensor) -> List[torch.Tensor]:
        out: List[torch.Tensor] = []
        y = torch.tanh(self.first(x[:, :1]))
        out.append(y)
        if int(n_layers.item()) > 1:
            out.append(torch.tanh(self.second(y)))
        return out


class Normalising(torch.nn.Module):
    """``forward(x, nLayers, stats, direction)``: normalises by the image statistics like the
    TotalSegmentator-MRI exports ((x − mean) / sigma), then one 4-channel layer.

    ``channels_in`` > 1 spreads the weights of the 1-channel model (same seed) evenly over the
    channels, so the model computes the same features from the channel-replicated input
    (``ImpactNumberOfChannels``).
    """

    def __init__(self, dimension: int, channels_in: int, seed: int):
        super().__init__()
        single = _conv(dimension, 1, 4, seed)
        self.conv = _conv(dimension, channels_in, 4, seed)
        with torch.no_grad():
            self.conv.weight.copy_(single.weight.repeat_interleave(channels_in, dim=1) / channels_in)
            self.conv.bias.copy_(single.bias)

    def forward(self, x: torch.Tensor, n_layers: torch.Tensor, stats: torch.Tensor,
                direction: torch.Tensor) -> List[torch.Tensor]:
        x = (x - stats[2].to(x.dtype)) / (stats[3].to(x.dtype) + 1e-6)
        return [torch.tanh(0.5 * self.conv(x))]


class Both(torch.nn.Module):
    """``forward(x, nLayers)``: the layers of two one-layer models as one two-layer model."""

    def __init__(self, first: torch.nn.Module, second: torch.nn.Module):
        super().__init__()
        self.first = first
        self.second = second

    def forward(self, x: torch.Tensor, n_layers: torch.Tensor) -> List[torch.Tensor]:
        out = self.first(x)
        if int(n_layers.item()) > 1:
            out = out + self.second(x)
        return out


TOY_MODELS = {
    "seg3d": lambda: OneLayer(3, 1, 8, seed=1),        # stands in for M730_1_Layers.pt (32 channels)
    "mind2d": lambda: OneLayer(2, 1, 4, seed=2),       # stands in for R1D2_2D.pt (4 channels)
    "small3d": lambda: OneLayer(3, 1, 4, seed=4),
    "seg3d+small3d": lambda: Both(OneLayer(3, 1, 8, seed=1), OneLayer(3, 1, 4, seed=4)),
    "two3d": lambda: TwoLayers(3, seed=5),             # layers of 4 and 8 channels
    "norm3d": lambda: Normalising(3, 1, seed=7),
    "norm3d_rgb": lambda: Normalising(3, 3, seed=7),   # the same model for ImpactNumberOfChannels 3
    "plane": lambda: OneLayer(2, 1, 4, seed=9),        # a 2D model used on 3D images
}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """``name -> path`` of the scripted toy models."""
    folder = tmp_path_factory.mktemp("toy_models")
    paths = {}
    for name, make in TOY_MODELS.items():
        path = folder / f"{name}.pt"
        torch.jit.script(make().eval()).save(str(path))
        paths[name] = str(path)
    return paths


@pytest.fixture(autouse=True, scope="module")
def _few_threads():
    """Tiny tensors: one intra-op thread avoids waiting on descheduled workers on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------


def _blob_function(points, dim):
    """Smooth, structured test function of physical points ``(N, D)`` in mm (blobs of several sizes)."""
    centres = [(0.0, 0.0, 0.0), (14.0, -10.0, 8.0), (-12.0, 12.0, -6.0), (-6.0, -14.0, 12.0)]
    widths = [12.0, 7.0, 8.0, 6.0]
    heights = [1.0, 0.8, -0.6, 0.7]
    out = np.zeros(points.shape[0])
    for c, w, h in zip(centres, widths, heights):
        d2 = ((points - np.asarray(c[:dim])) ** 2).sum(axis=1)
        out += h * np.exp(-d2 / (2 * w * w))
    return out


def make_image(size, spacing, shift=None):
    """``itk.Image[F, D]`` of the blob function (grid centred on 0), optionally shifted by ``shift`` mm."""
    dim = len(size)
    size, spacing = np.asarray(size), np.asarray(spacing, dtype=float)
    origin = -spacing * (size - 1) / 2
    axes = [origin[k] + spacing[k] * np.arange(size[k]) for k in range(dim)]
    mesh = np.meshgrid(*reversed(axes), indexing="ij")  # (z,) y, x
    points = np.stack([m.reshape(-1) for m in reversed(mesh)], axis=1)  # x, y[, z]
    if shift is not None:
        points = points - np.asarray(shift)
    array = _blob_function(points, dim).reshape(tuple(reversed(size))).astype(np.float32)
    image = itk.image_from_array(array)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    return image


@pytest.fixture(scope="module")
def pair3d():
    """24³ voxels at 3 mm, moving shifted by SHIFT_3D."""
    return make_image((24, 24, 24), (3, 3, 3)), make_image((24, 24, 24), (3, 3, 3), SHIFT_3D)


@pytest.fixture(scope="module")
def pair2d():
    """40² pixels at 2 mm, moving shifted by SHIFT_2D."""
    return make_image((40, 40), (2, 2)), make_image((40, 40), (2, 2), SHIFT_2D)


# ------------------------------------------------------------------------------------------------
# Parameter maps
# ------------------------------------------------------------------------------------------------


def upstream_map(dim: int, levels: int = 2, iterations: int = 4, samples: int = 200, **impact) -> dict:
    """The common part of upstream's three IMPACT test files (docs/design.md §I11.1), made small.

    ``impact`` holds the Impact keys (values as lists of strings or a single string).
    """
    pmap = {
        "FixedInternalImagePixelType": ["float"], "MovingInternalImagePixelType": ["float"],
        "FixedImageDimension": [str(dim)], "MovingImageDimension": [str(dim)],
        "UseDirectionCosines": ["true"],
        "Registration": ["MultiResolutionRegistration"],
        "FixedImagePyramid": ["FixedGenericImagePyramid"],
        "MovingImagePyramid": ["MovingGenericImagePyramid"],
        "NumberOfResolutions": [str(levels)],
        "ImagePyramidSchedule": ["2"] * (dim * levels),  # overridden by the two lines below (§I11.1)
        "ImagePyramidRescaleSchedule": ["1"] * (dim * levels),
        "ImagePyramidSmoothingSchedule": ["1"] * (dim * levels),
        "Metric": ["Impact"],
        "Transform": ["BSplineTransform"],
        "FinalGridSpacingInPhysicalUnits": ["10" if dim == 3 else "16"],
        "GridSpacingSchedule": ["3.0", "1.0"][-levels:],
        "HowToCombineTransforms": ["Compose"],
        "Optimizer": ["AdaptiveStochasticGradientDescent"],
        "MaximumNumberOfIterations": [str(iterations)],
        "AutomaticParameterEstimation": ["true"],
        "UseAdaptiveStepSizes": ["true"],
        "NumberOfSamplesForExactGradient": ["400"],  # these two keep the parameter estimation cheap
        "NumberOfJacobianMeasurements": ["400"],
        "ImageSampler": ["RandomCoordinate"],
        "NumberOfSpatialSamples": [str(samples)],
        "NewSamplesEveryIteration": ["true"],
        "MaximumNumberOfSamplingAttempts": ["8"],
        "Interpolator": ["BSplineInterpolator"],
        "BSplineInterpolationOrder": ["1"],
        "ResampleInterpolator": ["FinalBSplineInterpolator"],
        "FinalBSplineInterpolationOrder": ["3"],
        "Resampler": ["DefaultResampler"],
        "RandomSeed": ["42"],
        "ImpactGPU": ["-1"],
        "ImpactFeaturesMapUpdateInterval": ["-1"],
        "WriteResultImage": ["false"],
        "ResultImageFormat": ["mha"],
    }
    for key, value in impact.items():
        pmap[key] = [value] if isinstance(value, str) else [str(v) for v in value]
    return pmap


def level_keys(level: int, models, dimension, channels, patch, voxel, mask, subset, weight, distance,
               pca=None, prefix: str = "Impact") -> dict:
    """The level-indexed Impact keys of one level (per-model lists with ``prefix``; per-layer lists)."""
    keys = {
        f"{prefix}ModelsPath{level}": models, f"{prefix}Dimension{level}": dimension,
        f"{prefix}NumberOfChannels{level}": channels, f"{prefix}PatchSize{level}": patch,
        f"{prefix}VoxelSize{level}": voxel, f"{prefix}LayersMask{level}": mask,
    }
    if subset is not None:
        n = len(subset)
        keys.update({f"ImpactSubsetFeatures{level}": subset, f"ImpactLayersWeight{level}": weight,
                     f"ImpactDistance{level}": distance, f"ImpactPCA{level}": pca or ["0"] * n})
    return {k: [str(x) for x in v] for k, v in keys.items()}


def elastix_test_map(dim: int, mode: str, model: str, channels_subset: int, samples: int,
                     voxel_levels, patch, write_feature_maps: str = "false", iterations: int = 4) -> dict:
    """One of upstream's three test maps (§I11.1) with ``model`` at both levels."""
    keys = {"ImpactMode": mode, "ImpactWriteFeatureMaps": write_feature_maps,
            "ImpactUseMixedPrecision": "false"}
    for level, vox in enumerate(voxel_levels):
        keys.update(level_keys(level, [model], [dim], [1], patch, vox, ["1"], [channels_subset], [1], ["L2"]))
    return upstream_map(dim, samples=samples, iterations=iterations, **keys)


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------


def elastix_reference_grid(fixed, pmap) -> list:
    """``GridSize`` that real elastix (itk-elastix) builds for ``pmap`` on ``fixed`` (1 iteration, a
    classic metric instead of Impact): the independent reference for the number of parameters."""
    ref = {k: v for k, v in pmap.items() if not k.startswith("Impact")}
    ref.update(Metric=["AdvancedMeanSquares"], MaximumNumberOfIterations=["1"],
               NumberOfSpatialSamples=["200"])
    po = itk.ParameterObject.New()
    po.AddParameterMap(ref)
    _, tp = itk.elastix_registration_method(fixed, fixed, parameter_object=po, log_to_console=False)
    return [int(float(v)) for v in tp.GetParameterMap(0)["GridSize"]]


_INIT = re.compile(r"Initialization of Impact metric took: \d+ ms \(mode (\w+), device (\S+), layers (\d+), "
                   r"channels \[([\d, ]*)\], subset \[([\d, ]*)\], distances \[([^\]]*)\]\)")


def _ints(text: str) -> list:
    return [int(v) for v in text.split(",") if v.strip()]


def register(fixed, moving, pmap, folder: Path):
    """Run the map with an output directory and a log file; check the TransformParameters map
    (grid = elastix's, all parameters present and finite) and the per-level iteration files.

    Returns:
        ``(result, tp, levels)`` with ``levels`` one dict per resolution level, read from the log
        line the metric writes at initialisation: mode, layers, channels, subset, distances.
    """
    folder.mkdir()
    result, tp = elastix_registration_method(fixed, moving, parameter_object=pmap,
                                             output_directory=str(folder), log_to_file=True)
    assert tp.GetNumberOfParameterMaps() == 1
    tmap = tp.GetParameterMap(0)
    assert list(tmap["Transform"]) == ["BSplineTransform"]
    dim = fixed.GetImageDimension()
    grid = [int(float(v)) for v in tmap["GridSize"]]
    assert grid == elastix_reference_grid(fixed, pmap)
    params = np.array([float(v) for v in tmap["TransformParameters"]])
    assert params.size == int(tmap["NumberOfParameters"][0]) == dim * int(np.prod(grid))
    assert np.all(np.isfinite(params)) and np.abs(params).max() > 0  # it moved

    n_levels, iterations = int(pmap["NumberOfResolutions"][0]), int(pmap["MaximumNumberOfIterations"][0])
    for level in range(n_levels):
        rows = (folder / f"IterationInfo.0.R{level}.txt").read_text().splitlines()
        assert len(rows) == 1 + iterations
    levels = [dict(mode=m[0], device=m[1], layers=int(m[2]), channels=_ints(m[3]), subset=_ints(m[4]),
                   distances=[d.strip(" '") for d in m[5].split(",")])
              for m in _INIT.findall((folder / "elastix.log").read_text())]
    assert len(levels) == n_levels, "one 'Initialization of Impact metric' log line per level expected"
    return result, tp, levels


def recovered_fraction(tp, moving, shift, tmp_path) -> float:
    """Mean displacement of transformix's field over the central half of the image, projected on
    ``shift`` and divided by |shift|²: 1 = translation fully recovered, 0 = identity."""
    field = itk.array_from_image(itk.transformix_deformation_field(moving, tp, output_directory=str(tmp_path)))
    dim = field.shape[-1]
    inner = tuple(slice(n // 4, n - n // 4) for n in field.shape[:dim])
    mean = field[inner].reshape(-1, dim).mean(axis=0)
    shift = np.asarray(shift)
    return float(mean @ shift / (shift @ shift))


def image_error(a, b) -> float:
    """Mean squared difference of two images on the central half (avoids border effects)."""
    x, y = (itk.array_from_image(i).astype(np.float64) for i in (a, b))
    inner = tuple(slice(n // 4, n - n // 4) for n in x.shape)
    return float(np.mean((x[inner] - y[inner]) ** 2))


def check_registered(fixed, moving, result, tp, shift, tmp_path) -> float:
    """The known translation is partly recovered and the result is closer to the fixed image."""
    fraction = recovered_fraction(tp, moving, shift, tmp_path)
    assert 0.3 < fraction < 1.6, f"recovered {fraction:.2f} of the translation"
    ratio = image_error(fixed, result) / image_error(fixed, moving)
    # 0.5-0.7 with the toy models, depending on the drawn samples and feature subsets
    assert ratio < 0.75, f"result/moving mean squared error ratio {ratio:.2f}"
    return fraction


def check_level(info: dict, mode: str, channels, subset, distances) -> None:
    """What the metric reported at a level's initialisation."""
    assert info["mode"] == mode and info["device"] == "cpu"
    assert info["layers"] == len(channels) and info["channels"] == list(channels)
    assert info["subset"] == list(subset) and info["distances"] == list(distances)


# ------------------------------------------------------------------------------------------------
# Upstream's three elastix test maps (docs/design.md §I11.1): toy models, and the real ones if present
# ------------------------------------------------------------------------------------------------

#: real upstream test model and its channel count, per toy stand-in (docs/design.md §I11.1)
REAL = {"seg3d": ("M730_1_Layers.pt", 32), "mind2d": ("R1D2_2D.pt", 4)}
TOY_CHANNELS = {"seg3d": 8, "mind2d": 4}


def model_for(kind: str, toy, name: str):
    """``(path, channels)`` of the toy model ``name`` or of the real upstream test model it stands
    in for (skips when ../shared/models is absent)."""
    if kind == "toy":
        return toy[name], TOY_CHANNELS[name]
    file, channels = REAL[name]
    return str(shared_path("models", file)), channels


KINDS = ["toy", pytest.param("real", marks=pytest.mark.shared)]


@pytest.mark.parametrize("kind", KINDS)
def test_3d_jacobian_map(kind, toy, pair3d, tmp_path):
    """parameters.3D.IMPACT.bspline.ASGD.001 structure: Jacobian, patch 5 5 5, voxel 3 then 1 mm,
    SubsetFeatures 32."""
    model, channels = model_for(kind, toy, "seg3d")
    samples = 200 if kind == "toy" else 60  # the real model is a 32-channel double convolution
    pmap = elastix_test_map(3, "Jacobian", model, 32, samples, [[3, 3, 3], [1, 1, 1]], [5, 5, 5])
    fixed, moving = pair3d
    result, tp, levels = register(fixed, moving, pmap, tmp_path / "out")
    for info in levels:
        check_level(info, "Jacobian", [channels], [min(32, channels)], ["L2"])
    check_registered(fixed, moving, result, tp, SHIFT_3D, tmp_path)


@pytest.mark.parametrize("kind", KINDS)
def test_3d_static_map(kind, toy, pair3d, tmp_path):
    """parameters.3D.IMPACT.bspline.ASGD.002 structure: Static, patch 0 0 0 (one forward of the
    whole volume), voxel 3 then 1.5 mm."""
    model, channels = model_for(kind, toy, "seg3d")
    pmap = elastix_test_map(3, "Static", model, 32, 200, [[3, 3, 3], [1.5, 1.5, 1.5]], [0, 0, 0])
    fixed, moving = pair3d
    result, tp, levels = register(fixed, moving, pmap, tmp_path / "out")
    for info in levels:
        check_level(info, "Static", [channels], [min(32, channels)], ["L2"])
    check_registered(fixed, moving, result, tp, SHIFT_3D, tmp_path)


def check_feature_maps(folder: Path, voxel_levels, channels: int, fixed) -> None:
    """docs/design.md §I6.7 file names; the maps cover the fixed image's physical extent."""
    extent = np.asarray(fixed.GetLargestPossibleRegion().GetSize()) * np.asarray(fixed.GetSpacing())
    for level, vox in enumerate(voxel_levels):
        sizes = "_".join(f"{v:.2f}" for v in vox)
        for which in ("Fixed", "Moving"):
            inputs = folder / f"{which}_{level}_{sizes}mm.mha"
            features = folder / f"{which}_{level}_0.mha"
            assert inputs.is_file() and features.is_file(), sorted(p.name for p in folder.iterdir())
            image = itk.imread(str(features))
            assert image.GetNumberOfComponentsPerPixel() == channels
            covered = np.asarray(image.GetLargestPossibleRegion().GetSize()) * np.asarray(image.GetSpacing())
            np.testing.assert_allclose(covered, extent, rtol=1e-6)
            grid = itk.imread(str(inputs))
            np.testing.assert_allclose(np.asarray(grid.GetSpacing()), vox, rtol=0.05)


@pytest.mark.parametrize("kind", KINDS)
def test_2d_static_map_writes_feature_maps(kind, toy, pair2d, tmp_path):
    """parameters.2D.IMPACT.bspline.ASGD.002 structure: Static, patch 0 0, voxel 3 then 1.5 mm,
    SubsetFeatures 4, ``ImpactWriteFeatureMaps`` a folder (files named as in docs/design.md §I6.7)."""
    features = tmp_path / "Features"
    voxels = [[3, 3], [1.5, 1.5]]
    model, channels = model_for(kind, toy, "mind2d")
    pmap = elastix_test_map(2, "Static", model, 4, 300, voxels, [0, 0], write_feature_maps=str(features) + "/")
    fixed, moving = pair2d
    result, tp, levels = register(fixed, moving, pmap, tmp_path / "out")
    for info in levels:
        check_level(info, "Static", [channels], [min(4, channels)], ["L2"])
    check_registered(fixed, moving, result, tp, SHIFT_2D, tmp_path)
    check_feature_maps(features, voxels, channels, fixed)


# ------------------------------------------------------------------------------------------------
# The other kinds of maps (docs/design.md §I2; ImpactLoss's example maps, written for elastix)
# ------------------------------------------------------------------------------------------------


def test_mode_models_and_voxel_sizes_per_level(toy, pair3d, tmp_path):
    """``(ImpactMode "Static" "Jacobian")`` with a different model, patch, voxel size, layers mask
    and distance per level."""
    keys = {"ImpactMode": ["Static", "Jacobian"]}
    keys.update(level_keys(0, [toy["seg3d"]], [3], [1], [0, 0, 0], [6, 6, 6], ["1"], [8], [1], ["L2"]))
    keys.update(level_keys(1, [toy["two3d"]], [3], [1], [5, 5, 5], [2, 2, 2], ["01"], [6], [1], ["L1"]))
    fixed, moving = pair3d
    result, tp, levels = register(fixed, moving, upstream_map(3, **keys), tmp_path / "out")
    check_level(levels[0], "Static", [8], [8], ["L2"])
    check_level(levels[1], "Jacobian", [8], [6], ["L1"])  # two3d's second layer: 8 channels
    check_registered(fixed, moving, result, tp, SHIFT_3D, tmp_path)


@pytest.mark.parametrize("mode", ["Jacobian", "Static"])
def test_two_models_one_level(mode, toy, pair3d, tmp_path):
    """Two models at one level, layer masks "01" and "1": Λ = 2 entries in every per-layer list
    (SubsetFeatures, PCA, LayersWeight, Distance), different distances and weights; in Static mode
    the second model is tiled (PatchSize 12) and its layer reduced by PCA to 3 components."""
    patch = [5, 5, 5] * 2 if mode == "Jacobian" else [0, 0, 0, 12, 12, 12]
    keys = {"ImpactMode": mode}
    keys.update(level_keys(0, [toy["two3d"], toy["seg3d"]], [3, 3], [1, 1], patch, [3, 3, 3, 4, 4, 4],
                           ["01", "1"], [5, 8], [1, 0.5], ["NCC", "L1"],
                           pca=["0", "3"] if mode == "Static" else ["0", "0"]))
    fixed, moving = pair3d
    result, tp, levels = register(fixed, moving, upstream_map(3, levels=1, iterations=5, **keys), tmp_path / "out")
    channels = [8, 8] if mode == "Jacobian" else [8, 3]
    check_level(levels[0], mode, channels, [5, min(8, channels[1])], ["NCC", "L1"])
    check_registered(fixed, moving, result, tp, SHIFT_3D, tmp_path)


def test_fixed_and_moving_specific_models_jacobian(toy, pair3d, tmp_path):
    """``ImpactFixedModelsPath0`` / ``ImpactMovingModelsPath0`` with their own Dimension,
    NumberOfChannels (1 vs 3), PatchSize (5 vs 7) and VoxelSize (3 vs 2.5 mm); the same number of
    models, as Jacobian mode requires. Both models take the image statistics (4 arguments)."""
    keys = {"ImpactMode": "Jacobian"}
    keys.update(level_keys(0, [toy["norm3d"]], [3], [1], [5, 5, 5], [3, 3, 3], ["1"], None, None, None,
                           prefix="ImpactFixed"))
    keys.update(level_keys(0, [toy["norm3d_rgb"]], [3], [3], [7, 7, 7], [2.5, 2.5, 2.5], ["1"], [4], [1],
                           ["L2"], prefix="ImpactMoving"))
    fixed, moving = pair3d
    result, tp, levels = register(fixed, moving, upstream_map(3, levels=1, iterations=5, **keys), tmp_path / "out")
    check_level(levels[0], "Jacobian", [4], [4], ["L2"])
    check_registered(fixed, moving, result, tp, SHIFT_3D, tmp_path)


def test_fixed_and_moving_specific_models_static_different_counts(toy, pair3d, tmp_path):
    """Static mode: two fixed models (masks "1", "1") against one moving model that selects two
    layers ("11"): different model counts are allowed when the selected layer counts match."""
    keys = {"ImpactMode": "Static"}
    keys.update(level_keys(0, [toy["seg3d"], toy["small3d"]], [3, 3], [1, 1], [0] * 6, [3] * 6, ["1", "1"],
                           None, None, None, prefix="ImpactFixed"))
    keys.update(level_keys(0, [toy["seg3d+small3d"]], [3], [1], [0, 0, 0], [3, 3, 3], ["11"], [8, 4],
                           [1, 1], ["L2", "Cosine"], prefix="ImpactMoving"))
    fixed, moving = pair3d
    result, tp, levels = register(fixed, moving, upstream_map(3, levels=1, iterations=5, **keys), tmp_path / "out")
    check_level(levels[0], "Static", [8, 4], [8, 4], ["L2", "Cosine"])
    check_registered(fixed, moving, result, tp, SHIFT_3D, tmp_path)


@pytest.mark.parametrize("mode", ["Jacobian", "Static"])
def test_2d_model_on_3d_image(mode, toy, pair3d, tmp_path):
    """A 2D model on a 3D image: random in-plane patch rotations (Jacobian; VoxelSize has d_m = 2
    values) or slice by slice (Static; VoxelSize has D = 3 values)."""
    patch, voxel = ([7, 7], [3, 3]) if mode == "Jacobian" else ([0, 0], [3, 3, 3])
    keys = {"ImpactMode": mode}
    keys.update(level_keys(0, [toy["plane"]], [2], [1], patch, voxel, ["1"], [4], [1], ["L2"]))
    fixed, moving = pair3d
    result, tp, levels = register(fixed, moving, upstream_map(3, levels=1, iterations=5, **keys), tmp_path / "out")
    check_level(levels[0], mode, [4], [4], ["L2"])
    check_registered(fixed, moving, result, tp, SHIFT_3D, tmp_path)


def test_reserved_mind_ssc_models(pair3d, tmp_path):
    """The built-in ``mind-ssc-3d`` (Static, level 0) and ``mind-ssc-3d`` + ``mind-ssc-2d`` side by
    side (Jacobian, level 1) named in ``ImpactModelsPath``."""
    keys = {"ImpactMode": ["Static", "Jacobian"]}
    keys.update(level_keys(0, ["mind-ssc-3d"], [3], [1], [0, 0, 0], [3, 3, 3], ["1"], [12], [1], ["L2"]))
    keys.update(level_keys(1, ["mind-ssc-3d", "mind-ssc-2d"], [3, 2], [1, 1], [5, 5, 5, 5, 5], [3, 3, 3, 3, 3],
                           ["1", "1"], [6, 4], [1, 1], ["L2", "L1"]))
    fixed, moving = pair3d
    result, tp, levels = register(fixed, moving, upstream_map(3, **keys), tmp_path / "out")
    check_level(levels[0], "Static", [12], [12], ["L2"])  # MIND-SSC: 12 channels in 3D, 4 in 2D
    check_level(levels[1], "Jacobian", [12, 4], [6, 4], ["L2", "L1"])
    check_registered(fixed, moving, result, tp, SHIFT_3D, tmp_path)


# ------------------------------------------------------------------------------------------------
# ImpactLoss's recommended map, rewritten with level-numbered keys, with its own elastix settings
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings", ["MultiResolutionRegistration", "ImpactLoss"])
def test_impactloss_recommended_map(settings, toy, pair3d, tmp_path):
    """ParameterMap_Recommended's structure (4 levels, one 2-layer model with mask "01", a voxel size
    per level, RecursiveBSplineTransform, BSplineInterpolationOrder 3, FinalGridSpacing 8) written
    with level-numbered keys; ``settings="ImpactLoss"`` also keeps its MultiMetricMultiResolutionRegistration
    (one metric) and ASGDParameterEstimationMethod "DisplacementDistribution"."""
    keys = {"ImpactMode": "Jacobian"}
    for level, vox in enumerate([3, 2, 1.5, 1]):
        keys.update(level_keys(level, [toy["two3d"]], [3], [1], [5, 5, 5], [vox] * 3, ["01"], [64], [1], ["L2"]))
    pmap = upstream_map(3, levels=4, iterations=2, samples=150, **keys)
    pmap.update(NumberOfSamplesForExactGradient=["200"], NumberOfJacobianMeasurements=["150"])  # speed
    pmap.update({"Transform": ["RecursiveBSplineTransform"], "FinalGridSpacingInPhysicalUnits": ["8"],
                 "GridSpacingSchedule": ["8", "4", "2", "1"], "BSplineInterpolationOrder": ["3"],
                 "BSplineTransformSplineOrder": ["3"], "CheckNumberOfSamples": ["true"],
                 "ErodeFixedMask": ["false"], "ErodeMovingMask": ["false"], "SigmoidInitialTime": ["0.0"],
                 "AutomaticTransformInitialization": ["false"]})
    if settings == "ImpactLoss":
        pmap["Registration"] = ["MultiMetricMultiResolutionRegistration"]
        pmap["ASGDParameterEstimationMethod"] = ["DisplacementDistribution"]
    fixed, moving = pair3d
    result, tp = elastix_registration_method(fixed, moving, parameter_object=pmap)
    tmap = tp.GetParameterMap(0)
    assert list(tmap["Transform"]) == ["RecursiveBSplineTransform"]
    grid = [int(float(v)) for v in tmap["GridSize"]]
    assert grid == elastix_reference_grid(fixed, pmap)
    assert len(tmap["TransformParameters"]) == 3 * int(np.prod(grid))
    assert np.isfinite(np.array(tmap["TransformParameters"], dtype=float)).all()
    if settings != "ImpactLoss":
        # DisplacementDistribution's steps move points by about MaximumStepLength (3 mm here) per
        # iteration, which overshoots this small shift; elastix does the same with this map.
        check_registered(fixed, moving, result, tp, SHIFT_3D, tmp_path)


def test_recursive_bspline_transform_name_matches_elastix(pair2d):
    """The ``Transform`` name in the returned map is the one elastix writes for the same map."""
    keys = {"ImpactMode": "Static"}
    keys.update(level_keys(0, ["mind-ssc-2d"], [2], [1], [0, 0], [2, 2], ["1"], [4], [1], ["L2"]))
    pmap = upstream_map(2, levels=1, iterations=1, **keys)
    pmap["Transform"] = ["RecursiveBSplineTransform"]
    fixed, moving = pair2d
    _, tp = elastix_registration_method(fixed, moving, parameter_object=pmap)
    reference = {k: v for k, v in pmap.items() if not k.startswith("Impact")}
    reference["Metric"] = ["AdvancedMeanSquares"]
    po = itk.ParameterObject.New()
    po.AddParameterMap(reference)
    _, elastix_tp = itk.elastix_registration_method(fixed, moving, parameter_object=po)
    assert list(tp.GetParameterMap(0)["Transform"]) == list(elastix_tp.GetParameterMap(0)["Transform"])
