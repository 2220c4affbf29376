"""The torch-compatibility check: build the plugin against the installed torch, then register with it.

CI runs this file (with the plugin, loader and doctor tests) once in its main environment and once
more in a fresh venv with the newest torch that installs there (``ci/torch_compat.sh``), so every
commit proves the plugin compiles with each torch of :data:`elastix_bridge.runtime.loader.SUPPORTED_TORCH`'s
tested ends and that a Static and a Jacobian Impact registration recover a known shift with it.

The feature model is a toy written here: two layers with upstream's four-argument calling
convention ``forward(x, n_layers, stats, direction)`` (docs/design.md §I3.2 in the docs), normalising its
input with the statistics argument, so every argument the plugin passes crosses the torch boundary.
"""
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest

torch = pytest.importorskip("torch")
itk = pytest.importorskip("itk")

from elastix_bridge.runtime import loader  # noqa: E402
from elastix_bridge.api import elastix_registration_method  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.(script|load)` is deprecated:DeprecationWarning")

# A rotated, anisotropic grid (direction cosines not the identity) and a known shift in mm.
_ANGLE = np.deg2rad(15.0)
DIRECTION = np.array([[np.cos(_ANGLE), -np.sin(_ANGLE)], [np.sin(_ANGLE), np.cos(_ANGLE)]])
SPACING = (1.25, 1.0)  # x, y (mm)
SHIFT_MM = np.array([2.0, -1.5])  # x, y: the moving image is the fixed one moved by this


class ToyFeatures(torch.nn.Module):
    """Two feature layers (4 and 2 channels, at full and half resolution) of a 2D single-channel image."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(11)
        self.first = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.second = torch.nn.Conv2d(4, 2, 3, padding=1, stride=2)
        with torch.no_grad():
            for conv in (self.first, self.second):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.5)
                conv.bias.zero_()

    def forward(self, x: torch.Tensor, n_layers: torch.Tensor, stats: torch.Tensor,
                direction: torch.Tensor) -> List[torch.Tensor]:
        # stats = [min, max, mean, sigma] of the level image; direction = rounded cosines (int16).
        x = (x - stats[2]) / (stats[3] + 1e-6)
        first = torch.tanh(self.first(x))
        layers = [first]
        if int(n_layers.item()) > 1:
            layers.append(torch.tanh(self.second(first)) * (direction.abs().sum() > 0).to(x.dtype))
        return layers


def _image(shift_mm) -> "itk.Image":
    """56×48 pixels of smooth blobs on the rotated grid; values at physical points moved by ``-shift_mm``."""
    size = (56, 48)  # x, y
    origin = np.array([-30.0, -20.0])
    ij = np.stack(np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="xy"), axis=-1)  # [y, x, (i, j)]
    points = origin + (ij * np.asarray(SPACING)) @ DIRECTION.T - np.asarray(shift_mm)  # physical x, y (mm)
    centre = origin + (np.asarray(size) - 1) / 2 * np.asarray(SPACING) @ DIRECTION.T
    values = np.zeros(points.shape[:2])
    for offset, width, height in (((0, 0), 9.0, 1.0), ((12, -8), 5.0, 0.8), ((-11, 9), 6.0, -0.7), ((-8, -10), 4.0, 0.6)):
        values += height * np.exp(-((points - centre - np.asarray(offset)) ** 2).sum(-1) / (2 * width**2))
    image = itk.image_from_array(values.astype(np.float32))  # numpy [y, x]
    image.SetSpacing([float(s) for s in SPACING])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(DIRECTION)))
    return image


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy") / "toy_features.pt"
    torch.jit.script(ToyFeatures().eval()).save(str(path))
    return str(path)


def _map(mode: str, model: str) -> dict:
    jacobian = mode == "Jacobian"
    return {
        "Registration": ["MultiResolutionRegistration"],
        "FixedImagePyramid": ["FixedSmoothingImagePyramid"],
        "MovingImagePyramid": ["MovingSmoothingImagePyramid"],
        "NumberOfResolutions": ["1"],
        "Metric": ["Impact"],
        "Transform": ["TranslationTransform"],
        "AutomaticTransformInitialization": ["false"],
        "Optimizer": ["AdaptiveStochasticGradientDescent"],
        "MaximumNumberOfIterations": ["60" if jacobian else "100"],
        "MaximumStepLength": ["1.0"],
        "ImageSampler": ["RandomCoordinate"],
        "NumberOfSpatialSamples": ["150" if jacobian else "600"],
        "NewSamplesEveryIteration": ["true"],
        "Interpolator": ["BSplineInterpolator"],
        "BSplineInterpolationOrder": ["1"],
        "RandomSeed": ["5"],
        "WriteResultImage": ["false"],
        "ImpactMode": [mode],
        "ImpactGPU": ["-1"],
        "ImpactModelsPath0": [model],
        "ImpactDimension0": ["2"],
        "ImpactNumberOfChannels0": ["1"],
        "ImpactPatchSize0": ["9", "9"] if jacobian else ["0", "0"],
        "ImpactVoxelSize0": ["1", "1"],
        "ImpactLayersMask0": ["1", "1"],
        "ImpactSubsetFeatures0": ["4"],
        "ImpactLayersWeight0": ["1", "0.5"],
        "ImpactPCA0": ["0"],
        "ImpactDistance0": ["L2", "L1"],
    }


@pytest.mark.parametrize("mode", ["Static", "Jacobian"])
def test_impact_registration_recovers_a_known_shift(plugin, toy_model, mode, tmp_path):
    """With this torch: the plugin builds, hosts the toy model, and the registration finds the shift."""
    fixed, moving = _image((0.0, 0.0)), _image(SHIFT_MM)
    _, parameters = elastix_registration_method(fixed, moving, parameter_object=_map(mode, toy_model),
                                                output_directory=str(tmp_path))
    found = np.array([float(v) for v in parameters.GetParameterMap(0)["TransformParameters"]])
    # TranslationTransform maps fixed to moving points: the answer is +SHIFT_MM (physical x, y).
    error = np.linalg.norm(found - SHIFT_MM)
    assert error < 0.15, (mode, found)  # mm; the shift is 2.5 mm long
    assert (tmp_path / "TransformParameters.0.txt").is_file()


def test_build_record_names_this_torch(plugin):
    """The record holds the installed torch's facts; the plugin's headers say the same version and ABI."""
    so = loader.plugin_file(loader.cache_dir())
    record = json.loads(Path(str(so) + ".json").read_text())
    assert record["torch_version"] == torch.__version__
    assert record["cuda"] == torch.version.cuda  # None for CPU builds, e.g. "13.0" for a cu130 build
    assert record["cxx11_abi"] is bool(torch._C._GLIBCXX_USE_CXX11_ABI)
    assert re.fullmatch(r"c\+\+\d+", record["cxx_standard"])  # the standard cpp_extension chose, not ours
    info = plugin.build_info()
    assert info["torch_version"] == torch.__version__.split("+")[0]
    assert info["cxx11_abi"] is record["cxx11_abi"]


def test_installed_torch_is_in_the_declared_range():
    """CI's torches are the range's tested ends: each must be inside it."""
    assert loader.torch_supported(torch.__version__), (torch.__version__, loader.supported_torch_range())


def test_doctor_is_right_about_this_torch(plugin):
    proc = subprocess.run([sys.executable, "-m", "elastix_bridge.cli", "doctor", "--json"], capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["ok"], report["problems"]
    assert report["torch"]["version"] == torch.__version__
    assert report["torch"]["cuda"] == torch.version.cuda
    assert report["torch"]["supported"] is True
    assert report["torch"]["cuda_available"] is torch.cuda.is_available()
    assert report["plugin"]["state"] == "ready"
    assert report["plugin"]["record"]["cuda"] == torch.version.cuda
