"""elastix-bridge model inspect: layers, strides, receptive fields, gradients and a snippet that a map accepts."""
from pathlib import Path

import pytest

from helpers.command import run
from helpers.paths import shared_path

torch = pytest.importorskip("torch")
from elastix_bridge.models.inspection import inspect_model  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


class Strided(torch.nn.Module):
    """Two layers: a 3x3 convolution (stride 1, 5 channels), then a 3x3 stride-2 one (8 channels)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(1, 5, 3, padding=1)
        self.b = torch.nn.Conv2d(5, 8, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, n_layers: torch.Tensor):
        y = torch.tanh(self.a(x))
        return [y, torch.tanh(self.b(y))]


class Rounded(torch.nn.Module):
    """No usable gradient: Jacobian mode cannot use it."""

    def forward(self, x: torch.Tensor):
        return [torch.round(x * 4)]


class Global(torch.nn.Module):
    """Each feature depends on every input voxel (normalised by the input's own statistics)."""

    def forward(self, x: torch.Tensor):
        return [(x - x.mean()) / x.std()]


class OffStride(torch.nn.Module):
    """Drops the first row and column of an odd-sized input before a stride-2 pooling: its features move
    with the input size, which IMPACT cannot place."""

    def forward(self, x: torch.Tensor):
        o = x.shape[-1] % 2
        return [torch.nn.functional.avg_pool2d(x[:, :, o:, o:], 2)]


def _script(tmp_path, name, module):
    path = tmp_path / f"{name}.pt"
    torch.jit.script(module.eval()).save(str(path))
    return path


def test_builtin_mind_ssc(plugin):
    report = inspect_model("mind-ssc-2d", timing_sizes=[64])
    assert (report.dimension, report.arguments, len(report.layers)) == (2, 4, 1)
    layer = report.layers[0]
    # radius 1 box around pairs of neighbours at +-2 voxels: 2 + 1 on each side of the centre
    assert (layer.channels, layer.stride, layer.receptive_field) == (4, (1, 1), (7, 7))
    assert layer.differentiable and layer.size_consistent and not layer.whole_input
    assert report.timings[0][0] == (64, 64) and report.timings[0][1] > 0


def test_strided_layers_report_their_stride_and_field(plugin, tmp_path):
    report = inspect_model(_script(tmp_path, "strided", Strided()), layers=2, timing_sizes=[64])
    assert report.dimension == 2 and report.arguments == 2
    first, second = report.layers
    assert (first.channels, first.stride, first.receptive_field) == (5, (1, 1), (3, 3))
    assert (second.channels, second.stride, second.receptive_field) == (8, (2, 2), (5, 5))  # 3 + (3 - 1) * 1
    assert first.size_consistent and second.size_consistent
    assert "stride 2x2" in report.text() and 'ImpactLayersMask0 "11"' in report.snippet()
    assert "(ImpactPatchSize0 5 5)" in report.snippet()


def test_no_gradient_and_whole_input_fields_are_named(plugin, tmp_path):
    rounded = inspect_model(_script(tmp_path, "rounded", Rounded()), dimension=3, size=12, timing_sizes=[16])
    assert rounded.dimension == 3 and not rounded.layers[0].differentiable
    assert "differentiable NO (Jacobian mode cannot use it)" in rounded.text()
    whole = inspect_model(_script(tmp_path, "global", Global()), dimension=2, size=24, timing_sizes=[32])
    assert whole.layers[0].whole_input and whole.layers[0].receptive_field == (24, 24)
    assert "or more (all of the probe input)" in whole.text() and "choose the context" in whole.snippet()


def test_features_that_move_with_the_input_size_are_named(plugin, tmp_path):
    report = inspect_model(_script(tmp_path, "off", OffStride()), dimension=2, timing_sizes=[32])
    layer = report.layers[0]
    assert layer.stride == (2, 2) and layer.size_consistent is False and layer.largest_difference > 0.1
    assert "same features for sizes off the stride: NO" in report.text()


def test_snippet_is_accepted_by_the_map_checks(plugin, tmp_path):
    """The snippet replaces level 0 of the 2D preset; the map passes the checks a registration makes first."""
    from elastix_bridge.core.parameters import read_parameter_file
    from elastix_bridge.validation import validate_maps

    snippet = inspect_model(_script(tmp_path, "strided", Strided()), layers=2, timing_sizes=[32]).snippet()
    preset = (REPO / "parameter_files" / "impact_mind_static_2d.txt").read_text().splitlines()
    kept = [line for line in preset if not (line.startswith("(Impact") and line.split()[0].endswith("0"))]
    path = tmp_path / "map.txt"
    path.write_text("\n".join(kept + snippet.splitlines()) + "\n")
    (pmap,) = read_parameter_file(path)
    assert pmap.values("ImpactLayersMask0") == ["11"] and pmap.values("ImpactSubsetFeatures0") == ["5", "8"]
    validate_maps([pmap], dimension=2, warn=False)


def test_shared_models(plugin):
    report = inspect_model(shared_path("models", "R1D2_2D.pt"), timing_sizes=[64])
    assert (report.dimension, report.arguments, report.layers[0].channels) == (2, 1, 4)
    assert report.layers[0].differentiable and report.layers[0].stride == (1, 1)


def test_command_prints_report_and_snippet(plugin, capsys):
    code, out, _ = run(capsys, "model", "inspect", "mind-ssc-2d")
    assert code == 0
    assert "layer 0: 4 channels, stride 1x1, receptive field 7x7 voxels" in out
    assert '(ImpactModelsPath0 "mind-ssc-2d")' in out


def test_a_file_that_is_no_model_is_named(plugin, tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    code, _, err = run(capsys, "model", "inspect", junk)
    assert code == 1 and "junk.pt" in err and "Traceback" not in err
