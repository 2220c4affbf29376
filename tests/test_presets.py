"""The presets in ``parameter_files/`` parse, validate and register.

Every preset is read with elastix's own parser (``read_parameter_file``) and run, with fewer
iterations and samples (changed in the parsed map here, never in the files), through
``elastix_registration_method`` on a small synthetic pair with a known misalignment:

* images are analytic "anatomy" (a body outline holding soft-edged balls) defined in physical space
  (mm), so the moving image is exact:
  ``moving(y) = g(fixed(S(y)))`` with ``S`` a known map (translation plus a smooth local bump, or an
  affine plus a bump for the chain) and ``g`` a contrast change (an inverted, non-linear contrast for
  the multimodal MIND presets; a linear HU-like change for the CT preset);
* the ideal transform ``T`` (fixed → moving) satisfies ``S(T(x)) = x``; the error of a result is the
  mean of ``|S(x + u(x)) − x|`` over the central part of the fixed grid, ``u`` being transformix's
  deformation field, and must drop well below the identity's;
* the TransformParameters maps carry the expected transforms.

The CT/CBCT preset names a placeholder model: as shipped it must stop with the "model file not
found" message; with a toy TorchScript model of M730_1_Layers' architecture (and with the real
``M730_1_Layers.pt`` when ../shared is beside the checkout) it must register.
"""
import math
from pathlib import Path
from typing import List

import numpy as np
import pytest

from helpers.paths import shared_path

itk = pytest.importorskip("itk")
torch = pytest.importorskip("torch")

from elastix_bridge import cli  # noqa: E402
from elastix_bridge.api import elastix_registration_method  # noqa: E402
from elastix_bridge.core.engines import stage_engines  # noqa: E402
from elastix_bridge.demo import PARAMETER_FILES, demo_parameter_map, parameter_file_text  # noqa: E402
from elastix_bridge.core.impact_parameters import impact_levels  # noqa: E402
from elastix_bridge.core.parameters import read_parameter_file  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True:UserWarning"),
]

PRESETS = Path(__file__).resolve().parents[1] / "parameter_files"
CT_PRESET = "impact_totalseg_jacobian_ct_3d.txt"
PLACEHOLDER = "/path/to/M730_1_Layers.pt"

#: every preset: (image dimension, Metric, Transform, ImpactMode or None)
EXPECTED = {
    "affine_mi.txt": (None, "AdvancedMattesMutualInformation", "AffineTransform", None),
    "impact_mind_static_3d.txt": (3, "Impact", "BSplineTransform", "Static"),
    "impact_mind_jacobian_3d.txt": (3, "Impact", "BSplineTransform", "Jacobian"),
    "impact_mind_static_2d.txt": (2, "Impact", "BSplineTransform", "Static"),
    "impact_mind_mattes_3d.txt": (3, "Impact AdvancedMattesMutualInformation", "BSplineTransform", "Static"),
    "impact_mind_mattes_2d.txt": (2, "Impact AdvancedMattesMutualInformation", "BSplineTransform", "Static"),
    CT_PRESET: (3, "Impact", "BSplineTransform", "Jacobian"),
}


def preset(name: str):
    """The parsed preset (one map), as a mutable ParameterMap."""
    maps = read_parameter_file(PRESETS / name)
    assert len(maps) == 1
    return maps[0]


def smaller(pmap, iterations: int, samples: int, exact: int = 1000):
    """``pmap`` with fewer iterations (per level), samples and step-size-estimation samples."""
    pm = pmap.copy()
    pm.set("MaximumNumberOfIterations", [str(iterations)])
    pm.set("NumberOfSpatialSamples", [str(samples)])
    pm.set("NumberOfSamplesForExactGradient", [str(exact)])
    pm.set("NumberOfJacobianMeasurements", ["500"])
    return pm


# ------------------------------------------------------------------------------------------------
# Synthetic pairs with a known misalignment
# ------------------------------------------------------------------------------------------------


def blob_function(points: np.ndarray) -> np.ndarray:
    """Anatomy-like intensities at physical points ``(N, D)`` (mm): a body outline (radius 34 mm) holding
    "organs", balls of radius 5-12 mm with 1 mm soft edges and their own intensities."""
    dim = points.shape[1]
    rng = np.random.default_rng(7)

    def ball(centre, radius, height):
        distance = np.sqrt(((points - centre) ** 2).sum(axis=1))
        return height / (1.0 + np.exp((distance - radius) / 1.0))

    out = ball(np.zeros(dim), 34.0, 0.3)
    for _ in range(12):
        centre = rng.uniform(-22, 22, size=dim)
        out += ball(centre, rng.uniform(5, 12), rng.uniform(0.3, 0.8) * rng.choice([-1, 1]))
    return out


def grid_points(size, spacing) -> tuple:
    """Physical points ``(N, D)`` (x first) of a grid centred on 0, and its origin."""
    size, spacing = np.asarray(size), np.asarray(spacing, dtype=float)
    origin = -spacing * (size - 1) / 2
    axes = [origin[k] + spacing[k] * np.arange(size[k]) for k in range(len(size))]
    mesh = np.meshgrid(*reversed(axes), indexing="ij")  # (z,) y, x
    return np.stack([m.reshape(-1) for m in reversed(mesh)], axis=1), origin


def to_image(values, size, spacing, origin):
    image = itk.image_from_array(values.reshape(tuple(reversed(size))).astype(np.float32))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    return image


class Pair:
    """``fixed(x) = F(x)``, ``moving(y) = g(F(S(y)))`` on the same grid; ``S`` maps moving to fixed."""

    def __init__(self, size, spacing, S, contrast, body_mask: bool = False):
        self.size, self.spacing, self.S = size, spacing, S
        points, origin = grid_points(size, spacing)
        self.points = points
        self.fixed = to_image(blob_function(points), size, spacing, origin)
        # fixed mask: the body (radius 34 mm), as a CT body mask restricts the samples
        body = (np.linalg.norm(points, axis=1) <= 34.0).astype(np.float32)
        self.fixed_mask = to_image(body, size, spacing, origin) if body_mask else None
        self.moving = to_image(contrast(blob_function(S(points))), size, spacing, origin)
        self.expected = to_image(contrast(blob_function(points)), size, spacing, origin)  # the ideal result
        lo = np.asarray(spacing) * (np.asarray(size) - 1) / 2
        self.inner = np.all(np.abs(points) <= 0.5 * lo, axis=1)  # the central half of each axis

    def error(self, tp=None, folder=None) -> float:
        """Mean ``|S(x + u(x)) − x|`` (mm) over the central part; identity when ``tp`` is None."""
        x = self.points[self.inner]
        if tp is None:
            u = np.zeros_like(x)
        else:
            field = itk.transformix_deformation_field(self.moving, tp, output_directory=str(folder))
            u = itk.array_from_image(field).reshape(-1, len(self.size))[self.inner]
        return float(np.linalg.norm(self.S(x + u) - x, axis=1).mean())

    def image_error(self, result) -> float:
        """Mean squared difference of ``result`` (or the moving image) and the ideal result, centre only."""
        a = itk.array_from_image(result).reshape(-1).astype(np.float64)[self.inner]
        b = itk.array_from_image(self.expected).reshape(-1).astype(np.float64)[self.inner]
        return float(np.mean((a - b) ** 2))


def bump(points, amplitude, centre, width):
    """A smooth local displacement (mm): ``amplitude`` at ``centre``, Gaussian fall-off of ``width``."""
    d2 = ((points - np.asarray(centre)) ** 2).sum(axis=1, keepdims=True)
    return np.asarray(amplitude) * np.exp(-d2 / (2 * width ** 2))


def inverted_contrast(v):
    """A different modality: inverted and non-linear (T1 → T2-like)."""
    return 1.5 * np.exp(-1.2 * v)


def translation_and_bump(shift, amplitude, centre):
    return lambda p: p - np.asarray(shift) - bump(p, amplitude, centre, 14.0)


@pytest.fixture(scope="module")
def pair3d():
    """32³ voxels at 2.5 mm, multimodal; misaligned by a 4 mm translation plus a 3 mm local bump."""
    S = translation_and_bump((3.0, -2.0, 2.0), (2.0, 1.5, -1.0), (8.0, -6.0, 4.0))
    return Pair((32, 32, 32), (2.5, 2.5, 2.5), S, inverted_contrast)


@pytest.fixture(scope="module")
def pair2d():
    """64² pixels at 2 mm, multimodal; misaligned by 4 mm translation plus a 3 mm local bump."""
    S = translation_and_bump((3.0, -2.5), (2.0, 2.0), (8.0, -6.0))
    return Pair((64, 64), (2.0, 2.0), S, inverted_contrast)


@pytest.fixture(scope="module")
def pair_ct():
    """40³ voxels at 3 mm, CBCT-like linear intensity change; samples inside the body (fixed mask), so the
    30 mm patches of the 6 mm level stay inside the moving image."""
    S = translation_and_bump((4.0, -3.0, 2.5), (2.0, -1.5, 1.5), (-8.0, 6.0, 4.0))
    return Pair((40, 40, 40), (3.0, 3.0, 3.0), S, lambda v: 0.9 * v + 0.05, body_mask=True)


def register(pair, parameter_object, folder: Path):
    """Run through the API with an output directory; returns ``(result, tp, error, image_ratio)``."""
    folder.mkdir()
    result, tp = elastix_registration_method(pair.fixed, pair.moving, parameter_object=parameter_object,
                                             fixed_mask=pair.fixed_mask, output_directory=str(folder),
                                             log_to_file=True)
    n = tp.GetNumberOfParameterMaps()
    for k in range(n):
        assert (folder / f"TransformParameters.{k}.txt").is_file()
    error = pair.error(tp, folder)
    ratio = pair.image_error(result) / pair.image_error(pair.moving)
    return result, tp, error, ratio


def transforms(tp) -> list:
    return [tp.GetParameterMap(k)["Transform"][0] for k in range(tp.GetNumberOfParameterMaps())]


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------


def test_the_presets_are_the_expected_files_and_the_readme_lists_them():
    assert sorted(p.name for p in PRESETS.glob("*.txt")) == sorted(EXPECTED)
    readme = (PRESETS / "README.md").read_text()
    for name in EXPECTED:
        assert name in readme, f"parameter_files/README.md does not describe {name}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_parses_and_validates(name):
    dim, metric, transform, mode = EXPECTED[name]
    pm = preset(name)
    assert pm["Metric"] == metric.split() and pm["Transform"] == [transform]
    levels = int(pm["NumberOfResolutions"][0])
    if "Impact" in metric:
        # every Impact option of every level is complete and consistent (models are not loaded here)
        configs = impact_levels(pm, levels, dim)
        assert [c.mode for c in configs] == [mode] * levels
        assert len(pm["FinalGridSpacingInPhysicalUnits"]) == dim
    else:
        assert not any(key.startswith("Impact") for key in pm)  # runs on elastix under engine="auto"


@pytest.mark.parametrize("name", sorted(PARAMETER_FILES))
def test_mind_presets_are_the_demo_maps(name):
    """``elastix-bridge demo`` registers with exactly these files (rendered from demo.py)."""
    dimension, mode, recipe = PARAMETER_FILES[name]
    assert (PRESETS / name).read_text() == parameter_file_text(dimension, mode, recipe), (
        "regenerate with: python -m elastix_bridge.demo --write-parameter-files parameter_files")
    assert preset(name).to_dict() == demo_parameter_map(dimension, mode, recipe)


def test_ct_preset_follows_upstream_recommendation_for_totalsegmentator_models():
    pm = preset(CT_PRESET)
    assert pm["NumberOfResolutions"] == ["4"]
    assert [pm[f"ImpactVoxelSize{L}"][0] for L in range(4)] == ["6", "3", "1.5", "1"]  # mm
    assert all(pm[f"ImpactPatchSize{L}"] == ["5"] * 3 for L in range(4))  # M730_1_Layers' field of view
    assert all(pm[f"ImpactModelsPath{L}"] == [PLACEHOLDER] for L in range(4))
    assert pm["ImagePyramidRescaleSchedule"] == ["1"] * 12
    assert pm["FinalGridSpacingInPhysicalUnits"] == ["8"] * 3 and pm["NumberOfSpatialSamples"] == ["2000"]


# ------------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------------


def assert_bspline_registers(pair, pm, folder, name):
    """A B-spline result with < 0.3× the identity's mean error and < 0.1× its squared image difference."""
    result, tp, error, ratio = register(pair, pm, folder)
    assert transforms(tp) == ["BSplineTransform"]
    before = pair.error()
    assert error < 0.3 * before, f"{name}: mean error {error:.2f} mm, identity {before:.2f} mm"
    assert ratio < 0.1, f"{name}: result/moving squared-difference ratio {ratio:.3f}"


@pytest.mark.parametrize("name, iterations, samples", [
    ("impact_mind_static_3d.txt", 15, 300),
    ("impact_mind_jacobian_3d.txt", 8, 100),
])
def test_mind_3d_presets_register_a_multimodal_pair(plugin, pair3d, tmp_path, name, iterations, samples):
    assert_bspline_registers(pair3d, smaller(preset(name), iterations, samples), tmp_path / "out", name)


def test_mind_2d_preset_registers_a_multimodal_pair(plugin, pair2d, tmp_path):
    name = "impact_mind_static_2d.txt"
    assert_bspline_registers(pair2d, smaller(preset(name), 30, 500), tmp_path / "out", name)


def test_ct_preset_as_shipped_stops_with_model_file_not_found(plugin, tmp_path, capsys):
    small = itk.image_from_array(np.zeros((12, 12, 12), np.float32))
    for name in ("f.mha", "m.mha"):
        itk.imwrite(small, str(tmp_path / name))
    code = cli.main(["-f", str(tmp_path / "f.mha"), "-m", str(tmp_path / "m.mha"), "-p", str(PRESETS / CT_PRESET),
                     "-out", str(tmp_path / "out"), "-loglevel", "off"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"elastix-bridge: error: parameter map 0 (-p {PRESETS / CT_PRESET}): ImpactModelsPath0 '{PLACEHOLDER}': model "
        "file not found; give an existing "
        "TorchScript file (an absolute path avoids working-directory surprises) or a built-in model name "
        "(mind-ssc-2d, mind-ssc-3d)"]


class M730Like(torch.nn.Module):
    """The architecture of M730_1_Layers.pt (TotalSegmentator's first encoder stage: twice conv 3×3×3,
    instance norm, leaky ReLU; ``forward(x) -> [features]``), with 8 channels and fixed random weights."""

    def __init__(self, channels: int = 8):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.conv1 = torch.nn.Conv3d(1, channels, 3, padding=1)
        self.conv2 = torch.nn.Conv3d(channels, channels, 3, padding=1)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / math.sqrt(conv.weight[0].numel()))
                conv.bias.zero_()
        self.norm1 = torch.nn.InstanceNorm3d(channels, affine=False)
        self.norm2 = torch.nn.InstanceNorm3d(channels, affine=False)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        y = torch.nn.functional.leaky_relu(self.norm1(self.conv1(x)), 0.01)
        return [torch.nn.functional.leaky_relu(self.norm2(self.conv2(y)), 0.01)]


@pytest.mark.parametrize("kind", ["toy", pytest.param("real", marks=pytest.mark.shared)])
def test_ct_preset_registers_with_a_totalsegmentator_style_model(plugin, pair_ct, tmp_path, kind):
    if kind == "toy":
        model = tmp_path / "m730_like.pt"
        torch.jit.script(M730Like().eval()).save(str(model))
        channels = 8
    else:
        model = shared_path("models", "M730_1_Layers.pt")
        channels = 32
    pm = preset(CT_PRESET)
    for level in range(4):
        assert pm[f"ImpactModelsPath{level}"] == [PLACEHOLDER]
        pm.set(f"ImpactModelsPath{level}", [str(model)])
    pm = smaller(pm, 6, 300, exact=300)
    result, tp, error, ratio = register(pair_ct, pm, tmp_path / "out")
    assert transforms(tp) == ["BSplineTransform"]
    log = (tmp_path / "out" / "elastix.log").read_text()
    assert log.count(f"mode Jacobian, device cpu, layers 1, channels [{channels}]") == 4  # one per level
    before = pair_ct.error()
    assert error < 0.3 * before, f"{kind}: mean error {error:.2f} mm, identity {before:.2f} mm"
    assert ratio < 0.1, f"{kind}: result/moving squared-difference ratio {ratio:.3f}"


def _affine_and_bump():
    """Moving = fixed rotated by 8°, scaled by 1.08 and shifted 5 mm, plus a local bump; inverted contrast."""
    angle, scale = math.radians(8.0), 1.08
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    inverse = rotation.T / scale  # S maps moving points to fixed points: the inverse of the fixed → moving affine

    def S(p):
        q = p - np.array([4.0, -3.0])
        return q @ inverse.T - bump(q, (2.0, -2.0), (-8.0, 6.0), 12.0)

    return Pair((64, 64), (2.0, 2.0), S, inverted_contrast)


def test_the_recommended_recipe_registers_a_multimodal_pair(plugin, tmp_path):
    """``-p affine_mi.txt -p impact_mind_mattes_2d.txt`` (demo.RECOMMENDED): the affine on elastix, then
    IMPACT + Mattes MI in one multi-metric B-spline map on the bridge engine."""
    from elastix_bridge.demo import RECOMMENDED

    files = RECOMMENDED["parameter_files"][2]
    assert files[0] == "affine_mi.txt" and PARAMETER_FILES[files[1]] == (2, "Static", "impact+mattes")
    pair = _affine_and_bump()
    maps = [smaller(preset(files[0]), 150, 1000), smaller(preset(files[1]), 40, 1000)]
    assert stage_engines(maps) == ["elastix", "bridge"]
    result, tp, error, ratio = register(pair, maps, tmp_path / "out")
    assert transforms(tp) == ["AffineTransform", "BSplineTransform"]
    assert error < 0.2 * pair.error(), f"mean error {error:.2f} mm, identity {pair.error():.2f} mm"


def test_affine_mi_then_impact_bspline_chain(plugin, tmp_path):
    """``-p affine_mi.txt -p impact_mind_static_2d.txt``: elastix's affine MI stage first, then the
    Impact B-spline stage on the bridge engine, started from the affine (engine="auto")."""
    pair = _affine_and_bump()
    affine = smaller(preset("affine_mi.txt"), 150, 1000)
    bspline = smaller(preset("impact_mind_static_2d.txt"), 40, 1000)
    assert stage_engines([affine, bspline]) == ["elastix", "bridge"]
    out = tmp_path / "out"
    result, tp, error, ratio = register(pair, [affine, bspline], out)
    assert transforms(tp) == ["AffineTransform", "BSplineTransform"]
    assert tp.GetParameterMap(1)["HowToCombineTransforms"] == ("Compose",)
    on_disk = read_parameter_file(out / "TransformParameters.1.txt")[0]
    assert Path(on_disk["InitialTransformParameterFileName"][0]).name == "TransformParameters.0.txt"
    assert (out / "result.1.mha").is_file()  # the chain's last stage writes the registered image
    before = pair.error()
    # the affine stage alone
    affine_only = itk.ParameterObject.New()
    affine_only.AddParameterMap(tp.GetParameterMap(0))
    after_affine = pair.error(affine_only, tmp_path)
    assert error < 0.2 * before, f"mean error {error:.2f} mm, identity {before:.2f} mm"
    assert error < 0.8 * after_affine, f"B-spline stage: {error:.2f} mm, after the affine {after_affine:.2f} mm"
    assert ratio < 0.05, f"result/moving squared-difference ratio {ratio:.3f}"
