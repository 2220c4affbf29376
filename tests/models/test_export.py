"""elastix_bridge.models.export: any network's blocks as an IMPACT feature model, in both formats."""
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from helpers.maps import impact_parameters, transform_parameters

torch = pytest.importorskip("torch")
from elastix_bridge.models.export import ExportError, export  # noqa: E402
from elastix_bridge.runtime import loader  # noqa: E402

STATS = torch.tensor([0.0, 2.0, 0.5, 0.25])


class Net(torch.nn.Module):
    """A small encoder: stem (stride 1), down (stride 2), head (never used as a feature)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Tanh())
        self.down = torch.nn.Sequential(torch.nn.Conv2d(4, 6, 3, stride=2, padding=1), torch.nn.Tanh())
        self.head = torch.nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(self.down(self.stem(x)))


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 3, padding=1)

    def forward(self, act: torch.nn.Module, x):
        return act(self.conv(x))


class ActFirst(torch.nn.Module):
    """Blocks that take the activation module first, as deepbet's traced LinkNet3D does."""

    def __init__(self):
        super().__init__()
        self.block = Block()
        self.act = torch.nn.ReLU()
        self.tail = torch.nn.Conv2d(3, 1, 1)

    def forward(self, x):
        return self.tail(self.block(self.act, x))


def _features(path, x):
    return loader.load_feature_model(path, "cpu").forward(x, 2, STATS, torch.eye(2))


def test_python_module_in_both_formats(plugin, tmp_path):
    net = Net().eval()
    x = torch.randn(3, 1, 21, 18)
    expected = [net.stem((x - 0.5) / 0.25), net.down(net.stem((x - 0.5) / 0.25))]
    for name in ("net.pt", "net.pt2"):
        report = export(net, ["stem", "down"], 2, tmp_path / name, normalisation="zscore")
        assert [(layer.channels, layer.stride) for layer in report.layers] == [(4, (1, 1)), (6, (2, 2))]
        assert all(layer.differentiable and layer.size_consistent for layer in report.layers)
        out = _features(tmp_path / name, x)
        for a, b in zip(out, expected):
            torch.testing.assert_close(a, b)
    assert zipfile.is_zipfile(tmp_path / "net.pt") and zipfile.is_zipfile(tmp_path / "net.pt2")


def test_layers_by_position_and_normalisations(plugin, tmp_path):
    net = Net().eval()
    x = torch.rand(1, 1, 16, 16) * 2000 - 1000
    export(net, [0], 2, tmp_path / "ct.pt", normalisation="ct", window=(-200, 300))
    (out,) = _features(tmp_path / "ct.pt", x)
    torch.testing.assert_close(out, net.stem((x.clamp(-200, 300) + 200) / 500))
    export(net, ["stem"], 2, tmp_path / "minmax.pt", normalisation="minmax")
    (out,) = _features(tmp_path / "minmax.pt", x)
    torch.testing.assert_close(out, net.stem(x / 2.0))


def test_reorientation_shows_the_network_the_identity_orientation(plugin, tmp_path):
    net = Net().eval()
    export(net, ["stem", "down"], 2, tmp_path / "net.pt", reorient=True)
    with pytest.raises(ExportError, match="reorient needs TorchScript"):
        export(net, ["stem"], 2, tmp_path / "net.pt2", reorient=True)
    model = loader.load_feature_model(tmp_path / "net.pt", "cpu")
    x = torch.randn(1, 1, 12, 10)
    flipped_x = torch.tensor([[-1, 0], [0, 1]], dtype=torch.int16)  # image x axis along physical -x
    (stem, _) = model.forward(x, 2, STATS, flipped_x)
    torch.testing.assert_close(stem, net.stem(x.flip(3)).flip(3))
    swapped = torch.tensor([[0, 1], [1, 0]], dtype=torch.int16)  # image x along physical y and y along x
    (stem, down) = model.forward(x, 2, STATS, swapped)
    torch.testing.assert_close(stem, net.stem(x.transpose(2, 3)).transpose(2, 3))
    torch.testing.assert_close(down, net.down(net.stem(x.transpose(2, 3))).transpose(2, 3))
    (stem, _) = model.forward(x, 2, STATS, torch.eye(2, dtype=torch.int16))
    torch.testing.assert_close(stem, net.stem(x))


def test_scripted_network(plugin, tmp_path):
    net = Net().eval()
    torch.jit.script(net).save(str(tmp_path / "scripted.pt"))
    report = export(tmp_path / "scripted.pt", ["down"], 2, tmp_path / "down.pt", normalisation="zscore")
    assert (report.layers[0].channels, report.layers[0].stride) == (6, (2, 2))
    x = torch.randn(2, 1, 14, 14)
    torch.testing.assert_close(_features(tmp_path / "down.pt", x)[0], net.down(net.stem((x - 0.5) / 0.25)))


def test_torchscript_file_whose_blocks_take_the_activation_first(plugin, tmp_path):
    net = ActFirst().eval()
    torch.jit.trace(net, torch.randn(1, 1, 12, 12)).save(str(tmp_path / "traced.pt"))
    report = export(tmp_path / "traced.pt", ["block"], 2, tmp_path / "block.pt")
    assert report.layers[0].channels == 3 and report.layers[0].receptive_field == (3, 3)
    x = torch.randn(2, 1, 15, 11)
    (out,) = _features(tmp_path / "block.pt", x)
    torch.testing.assert_close(out, torch.relu(net.block.conv(x)))


def test_refusals_say_what_to_change(plugin, tmp_path):
    net = Net().eval()
    with pytest.raises(ExportError, match="blocks, in order: stem, down, head"):
        export(net, ["encoder"], 2, tmp_path / "x.pt")
    with pytest.raises(ExportError, match="calls 3 blocks"):
        export(net, [5], 2, tmp_path / "x.pt")
    with pytest.raises(ExportError, match="window=\\(low, high\\)"):
        export(net, ["stem"], 2, tmp_path / "x.pt", normalisation="ct")
    torch.jit.script(net).save(str(tmp_path / "net_script.pt"))
    with pytest.raises(ExportError, match="needs the Python torch.nn.Module"):
        export(tmp_path / "net_script.pt", ["stem"], 2, tmp_path / "x.pt2")
    with pytest.raises(ExportError, match="must end in .pt"):
        export(net, ["stem"], 2, tmp_path / "x.onnx")
    with pytest.raises(ExportError, match="is the model being exported"):
        export(tmp_path / "net_script.pt", ["stem"], 2, tmp_path / "net_script.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net_script.pt"]  # nothing half-written left behind


def test_exported_snippet_runs_a_registration_in_both_formats(plugin, tmp_path, inputs):
    """The inspect snippet's keys in a map; the .pt2 file registers exactly as its TorchScript twin."""
    import itk

    from elastix_bridge.api import elastix_registration_method

    fixed, moving = itk.imread(str(inputs["fixed"]), itk.F), itk.imread(str(inputs["moving"]), itk.F)
    results = []
    for name in ("enc.pt", "enc.pt2"):
        report = export(Net().eval(), ["stem"], 2, tmp_path / name, normalisation="zscore")
        snippet = {line.split()[0][1:]: line.split(")")[0].split()[1:] for line in report.snippet().splitlines()}
        pmap = impact_parameters(**{k: [v.strip('"') for v in vals] for k, vals in snippet.items()
                                    if k not in ("ImpactPatchSize0", "ImpactVoxelSize0")})
        _, tp = elastix_registration_method(fixed, moving, parameter_object=[pmap], engine="bridge")
        results.append(transform_parameters(tp))
    assert results[0] == results[1] and any(float(v) != 0 for v in results[0])


def test_deepbet_first_block(plugin, tmp_path):
    """deepbet's traced LinkNet3D (MIT, a PyPI wheel): its `init` block is 16 channels at 1/4 resolution."""
    wheel_dir = tmp_path / "wheel"
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "deepbet==1.0.2", "--no-deps", "-q", "-d",
                        str(wheel_dir)], check=True, timeout=180, capture_output=True)
        wheel = next(wheel_dir.glob("deepbet-*.whl"))
    except (subprocess.SubprocessError, StopIteration, OSError) as error:
        pytest.skip(f"the deepbet wheel could not be fetched from PyPI ({type(error).__name__})")
    with zipfile.ZipFile(wheel) as archive:
        model = tmp_path / "model.pt"
        model.write_bytes(archive.read("data/models/model.pt"))
    report = export(model, ["init"], 3, tmp_path / "deepbet_init.pt", normalisation="zscore")
    layer = report.layers[0]
    assert (layer.channels, layer.stride, layer.differentiable) == (16, (4, 4, 4), True)
    assert np.all(np.array(layer.receptive_field) > 8)
    # its snippet's keys in a map: a 3D registration runs end to end on the features
    import itk
    from scipy import ndimage

    from elastix_bridge.api import elastix_registration_method

    rng = np.random.default_rng(0)
    volume = ndimage.gaussian_filter(rng.normal(size=(40, 40, 40)), 3).astype(np.float32)
    fixed, moving = itk.image_from_array(volume), itk.image_from_array(np.roll(volume, 2, axis=2))
    for image in (fixed, moving):
        image.SetSpacing([2.0, 2.0, 2.0])
    snippet = {line.split()[0][1:]: [v.strip('"') for v in line.split(")")[0].split()[1:]]
               for line in report.snippet().splitlines()}
    snippet.update(ImpactPatchSize0=["0", "0", "0"], ImpactVoxelSize0=["2", "2", "2"])
    pmap = impact_parameters(Transform="TranslationTransform", FinalGridSpacingInPhysicalUnits=None, **snippet)
    _, tp = elastix_registration_method(fixed, moving, parameter_object=[pmap], engine="bridge")
    assert all(np.isfinite(float(v)) for v in transform_parameters(tp))


def test_export_command(plugin, tmp_path, capsys):
    from helpers.command import run

    net = ActFirst().eval()
    torch.jit.trace(net, torch.randn(1, 1, 12, 12)).save(str(tmp_path / "traced.pt"))
    code, out, _ = run(capsys, "model", "export", tmp_path / "traced.pt", "-o", tmp_path / "f.pt", "--layers", "0",
                       "--dimension", "2", "--normalisation", "zscore")
    assert code == 0 and "layer 0: 3 channels, stride 1x1" in out and "(ImpactLayersMask0 \"1\")" in out
    code, _, err = run(capsys, "model", "export", tmp_path / "traced.pt", "-o", tmp_path / "g.pt", "--layers", "tail2",
                       "--dimension", "2")
    assert code == 1 and "blocks, in order: block, tail" in err
