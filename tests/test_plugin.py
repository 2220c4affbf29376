"""Tests of the compiled IMPACT plugin (plugin/impact_plugin.cpp): distances, FeatureModel, JIT.

The plugin is compiled once per test session (the ``plugin`` fixture of conftest.py; set
ELASTIX_BRIDGE_CACHE to reuse a build across runs while developing).
"""
from typing import List, Tuple

import numpy as np
import pytest

from elastix_bridge.core.impact_parameters import DISTANCES

torch = pytest.importorskip("torch")
nn = torch.nn



# ---------------------------------------------------------------------------------------------
# Distances (docs/design.md §I7): independent numpy references
# ---------------------------------------------------------------------------------------------


def _ref_value(name: str, f: np.ndarray, m: np.ndarray) -> float:
    if name == "L1":
        return float(np.mean([np.abs(fs - ms).sum() / f.shape[1] for fs, ms in zip(f, m)]))
    if name == "L2":
        return float(np.mean([((fs - ms) ** 2).sum() / f.shape[1] for fs, ms in zip(f, m)]))
    if name == "DotProduct":
        return float(-np.mean([fs @ ms for fs, ms in zip(f, m)]))
    if name == "Dice":
        dice = [1.0 if (fs + ms).sum() == 0 else 2 * (fs @ ms) / (fs + ms).sum() for fs, ms in zip(f, m)]
        return float(-np.mean(dice))
    if name == "NCC":  # -mean over channels of the Pearson correlation over all samples
        return float(-np.mean([np.corrcoef(f[:, k], m[:, k])[0, 1] for k in range(f.shape[1])]))
    cos = np.array([fs @ ms / (np.linalg.norm(fs) * np.linalg.norm(ms)) for fs, ms in zip(f, m)])
    if name == "Cosine":
        return float(-cos.mean())
    if name == "L1Cosine":
        return float(np.mean([-(c * np.exp(-0.1 * np.abs(fs - ms))).mean() for c, fs, ms in zip(cos, f, m)]))
    raise AssertionError(name)


def _features(seed: int, n: int = 9, k: int = 5, positive: bool = False):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, k, generator=g, dtype=torch.float64)
    m = 0.6 * f + torch.randn(n, k, generator=g, dtype=torch.float64)
    if positive:  # Dice is meant for non-negative activations; keeps U_s far from 0
        f, m = f.abs() + 0.1, m.abs() + 0.1
    return f, m


def test_the_plugin_lists_the_distances_of_core(plugin):
    """The plugin's own list (plugin/impact_plugin.cpp) is the one the parameter reader accepts, in its order."""
    assert tuple(plugin.distances()) == DISTANCES


@pytest.mark.parametrize("name", DISTANCES)
def test_distance_value_matches_reference(plugin, name):
    f, m = _features(1, positive=name == "Dice")
    value = plugin.layer_value(name, f, m)
    assert value.dim() == 0 and value.dtype == torch.float64
    assert value.item() == pytest.approx(_ref_value(name, f.numpy(), m.numpy()), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("name", DISTANCES)
def test_distance_gradcheck(plugin, name):
    f, m = _features(2, n=6, k=4, positive=name == "Dice")
    f.requires_grad_(True)
    m.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: plugin.layer_value(name, a, b), (f, m))


@pytest.mark.parametrize("name", DISTANCES)
def test_distance_float32_in_float32_out(plugin, name):
    f, m = _features(3, positive=name == "Dice")
    value = plugin.layer_value(name, f.float(), m.float())
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(_ref_value(name, f.numpy(), m.numpy()), rel=1e-4, abs=1e-5)


def test_dice_empty_empty_is_one_without_gradient(plugin):
    f, m = _features(4, n=4, k=3, positive=True)
    f[1] = 0.0
    m[1] = 0.0  # empty/empty
    f[2] = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    m[2] = torch.tensor([-0.5, 0.0, 0.0], dtype=torch.float64)  # signed cancellation: U == 0 too
    f.requires_grad_(True)
    m.requires_grad_(True)
    value = plugin.layer_value("Dice", f, m)
    assert value.item() == pytest.approx(_ref_value("Dice", f.detach().numpy(), m.detach().numpy()), rel=1e-12)
    gf, gm = torch.autograd.grad(value, (f, m))
    assert torch.isfinite(gf).all() and torch.isfinite(gm).all()
    assert (gm[1] == 0).all() and (gm[2] == 0).all() and (gf[1] == 0).all()
    # Non-empty rows: analytic modulator of §I7.4 divided by N (value is a mean over samples).
    for s in (0, 3):
        fs, ms = f[s].detach(), m[s].detach()
        inter, uni = (fs * ms).sum(), (fs + ms).sum()
        expected = -2 * (fs * uni - inter) / uni**2 / f.shape[0]
        torch.testing.assert_close(gm[s], expected)
    # All rows empty: value -1, zero gradient, no NaN.
    z = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)
    value = plugin.layer_value("Dice", z, z)
    assert value.item() == -1.0
    assert (torch.autograd.grad(value, z)[0] == 0).all()


def test_ncc_is_global_over_samples(plugin):
    """The value uses the statistics of all N samples, so it is not the mean of chunk values."""
    f, m = _features(5, n=12, k=3)
    whole = plugin.layer_value("NCC", f, m).item()
    halves = 0.5 * (plugin.layer_value("NCC", f[:6], m[:6]) + plugin.layer_value("NCC", f[6:], m[6:])).item()
    assert whole == pytest.approx(_ref_value("NCC", f.numpy(), m.numpy()), rel=1e-12)
    assert whole != pytest.approx(halves, rel=1e-6)
    assert plugin.layer_value("NCC", f[:0], m[:0]).item() == 0.0  # N <= 0 -> 0 (§I7.8)


def test_cosine_gradient_is_exact_not_upstream_quirk(plugin):
    f, m = _features(6, n=3, k=4)
    m.requires_grad_(True)
    (g,) = torch.autograd.grad(plugin.layer_value("Cosine", f, m), m)
    a, b = f.norm(dim=1, keepdim=True), m.detach().norm(dim=1, keepdim=True)
    dot = (f * m.detach()).sum(1, keepdim=True)
    exact = -(f / (a * b) - dot * m.detach() / (a * b**3)) / f.shape[0]
    torch.testing.assert_close(g, exact)


def test_layer_value_errors(plugin):
    f, m = _features(7)
    with pytest.raises(ValueError, match=f"unknown Impact distance 'l1'.*{', '.join(DISTANCES)}"):
        plugin.layer_value("l1", f, m)
    with pytest.raises(ValueError, match=r"same shape \[N, K\]"):
        plugin.layer_value("L1", f, m[:, :2])
    with pytest.raises(ValueError, match="same shape"):
        plugin.layer_value("L1", f.reshape(-1), m.reshape(-1))



def test_static_layer_errors_name_the_mismatch(plugin):
    size, n = [5, 4], 6
    coef = torch.rand(20, 3, dtype=torch.float32)
    index = torch.rand(n, 2, dtype=torch.float64) * 3
    empty = torch.empty(0, dtype=torch.int64)
    with pytest.raises(ValueError, match="unknown Impact distance 'L3'"):
        plugin.static_layer("L3", coef, size, index, coef, size, index, 3, empty)
    with pytest.raises(ValueError, match="same dtype and channels"):
        plugin.static_layer("L2", coef, size, index, coef[:, :2].contiguous(), size, index, 3, empty)
    with pytest.raises(ValueError, match="same dtype and channels"):
        plugin.static_layer("L2", coef, size, index.float(), coef, size, index.float(), 3, empty)
    with pytest.raises(ValueError, match=r"bspline_read_pair \(moving\).*the grid 16"):
        plugin.static_layer("L2", coef, size, index, coef, [4, 4], index, 3, empty)

# ---------------------------------------------------------------------------------------------
# FeatureModel (docs/design.md §I3)
# ---------------------------------------------------------------------------------------------


class OneArg(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, x):
        return [x * 2, self.conv(x)]


class TwoArgs(nn.Module):
    def forward(self, x, n_layers: torch.Tensor) -> List[torch.Tensor]:
        # Encodes what was received: value, number of dims, bytes per element, device.
        return [
            x * 0 + n_layers.to(torch.float32),
            x * 0 + float(n_layers.dim()),
            x * 0 + float(n_layers.element_size()),
        ]


class ThreeArgsWithDefault(nn.Module):
    def forward(self, x, n_layers: torch.Tensor, flag: int = 7) -> List[torch.Tensor]:
        return [x * 0 + float(flag), x * 0 + n_layers.to(torch.float32)]


class FourArgs(nn.Module):
    def forward(
        self, x, n_layers: torch.Tensor, stats: torch.Tensor, direction: torch.Tensor
    ) -> List[torch.Tensor]:
        return [
            x * 0 + stats[2],
            x * 0 + float(stats.element_size() * 10 + stats.dim()),
            x * 0 + direction[0, 1].to(torch.float32),
            x * 0 + float(direction.element_size() * 10 + direction.dim()),
            x * 0 + n_layers.to(torch.float32),
        ]


class ReturnsTuple(nn.Module):
    def forward(self, x) -> Tuple[torch.Tensor, torch.Tensor]:
        return x, x


class ReturnsTensor(nn.Module):
    def forward(self, x):
        return x


class ReturnsInts(nn.Module):
    def forward(self, x) -> List[int]:
        return [1, 2]


class NoArgs(nn.Module):
    def forward(self) -> List[torch.Tensor]:
        return [torch.zeros(1, 1, 1)]


class Breaks(nn.Module):
    def forward(self, x) -> List[torch.Tensor]:
        return [x.view(-1, 7)]


class Scaled(nn.Module):
    """Float parameter (cast by `half`) and an integer buffer (must stay integral)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0 / 3.0))
        self.register_buffer("count", torch.tensor(3))

    def forward(self, x) -> List[torch.Tensor]:
        return [x * self.w, x * 0 + float(self.count.element_size()), x * 0 + float(x.element_size())]


def save(module: nn.Module, path) -> str:
    torch.jit.script(module).save(str(path))
    return str(path)


STATS = torch.tensor([-1.0, 5.0, 2.5, 0.75])
DIRECTION = torch.tensor([[1.0, -0.5], [0.4, 1.0]])  # half away from zero -> int16 [[1, -1], [0, 1]]


def test_one_argument_model_and_autograd(plugin, tmp_path):
    path = save(OneArg(), tmp_path / "one.pt")
    model = plugin.FeatureModel(path, "cpu", False)
    assert model.num_arguments == 1
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    out = model.forward(x, 2, STATS, DIRECTION)
    assert isinstance(out, list) and len(out) == 2
    assert all(o.dtype == torch.float32 for o in out)
    assert out[1].shape == (2, 3, 5, 6)
    # Autograd flows back to x (cast float64 -> float32 inside is differentiable).
    ref = torch.jit.load(path)
    xr = x.detach().float().requires_grad_(True)
    (gx,) = torch.autograd.grad(out[0].sum() + (out[1] ** 2).sum(), x)
    r = ref(xr)
    (gr,) = torch.autograd.grad(r[0].sum() + (r[1] ** 2).sum(), xr)
    assert gx.dtype == torch.float64
    torch.testing.assert_close(gx.float(), gr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1], r[1].detach())
    # The caller decides about grad mode.
    with torch.no_grad():
        assert not model.forward(x, 2, STATS, DIRECTION)[0].requires_grad


def test_two_argument_model_gets_int16_scalar(plugin, tmp_path):
    model = plugin.FeatureModel(save(TwoArgs(), tmp_path / "two.pt"), "cpu", False)
    assert model.num_arguments == 2
    value, dims, size = model.forward(torch.ones(1, 1, 3, 3), 5, STATS, DIRECTION)
    assert value.unique().tolist() == [5.0]
    assert dims.unique().tolist() == [0.0]  # 0-d
    assert size.unique().tolist() == [2.0]  # int16


def test_three_argument_model_uses_its_default(plugin, tmp_path):
    model = plugin.FeatureModel(save(ThreeArgsWithDefault(), tmp_path / "three.pt"), "cpu", False)
    assert model.num_arguments == 3
    flag, n = model.forward(torch.ones(1, 1, 2, 2), 4, STATS, DIRECTION)
    assert flag.unique().tolist() == [7.0] and n.unique().tolist() == [4.0]


def test_four_argument_model_gets_stats_and_direction(plugin, tmp_path):
    model = plugin.FeatureModel(save(FourArgs(), tmp_path / "four.pt"), "cpu", False)
    assert model.num_arguments == 4
    mean, stats_kind, d01, dir_kind, n = model.forward(torch.ones(1, 1, 2, 2), 3, STATS.double(), DIRECTION)
    assert mean.unique().tolist() == [2.5]
    assert stats_kind.unique().tolist() == [41.0]  # float32, 1-d
    assert d01.unique().tolist() == [-1.0]  # -0.5 rounds away from zero
    assert dir_kind.unique().tolist() == [22.0]  # int16, 2-d
    assert n.unique().tolist() == [3.0]
    with pytest.raises(ValueError, match="stats must hold 4 values"):
        model.forward(torch.ones(1, 1, 2, 2), 3, torch.zeros(3), DIRECTION)
    with pytest.raises(ValueError, match=r"direction must be a square"):
        model.forward(torch.ones(1, 1, 2, 2), 3, STATS, torch.zeros(2, 3))


@pytest.mark.parametrize(
    "module, match",
    [
        (ReturnsTuple(), r"returned a tuple of 2 elements; the model must return a list of feature maps \[B, C, \*spatial\]"),
        (ReturnsTensor(), r"returned a single tensor .*must return a list of feature maps"),
        (ReturnsInts(), r"element 0 is a int.*must return a list of feature maps"),
    ],
)
def test_output_must_be_a_list_of_tensors(plugin, tmp_path, module, match):
    model = plugin.FeatureModel(save(module, tmp_path / "bad.pt"), "cpu", False)
    with pytest.raises(RuntimeError, match=match):
        model.forward(torch.ones(1, 1, 2, 2), 1, STATS, DIRECTION)


def test_forward_failure_names_shape_and_torch_message(plugin, tmp_path):
    path = save(Breaks(), tmp_path / "breaks.pt")
    model = plugin.FeatureModel(path, "cpu", False)
    with pytest.raises(RuntimeError) as info:
        model.forward(torch.ones(1, 1, 2, 2), 1, STATS, DIRECTION)
    msg = str(info.value)
    assert path in msg and "[1, 1, 2, 2]" in msg and "shape" in msg


def test_load_errors(plugin, tmp_path):
    missing = str(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="missing.pt' does not exist"):
        plugin.FeatureModel(missing, "cpu", False)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a zip archive")
    with pytest.raises(ValueError, match=r"cannot load '.*junk.pt' as a TorchScript model: .+torch.jit.script"):
        plugin.FeatureModel(str(junk), "cpu", False)
    with pytest.raises(ValueError, match="must take the image patch as its first argument"):
        plugin.FeatureModel(save(NoArgs(), tmp_path / "noargs.pt"), "cpu", False)
    with pytest.raises(ValueError, match="invalid device 'gpu'"):
        plugin.FeatureModel(save(OneArg(), tmp_path / "one.pt"), "gpu", False)


def test_half_casts_float_weights_and_inputs_only(plugin, tmp_path):
    path = save(Scaled(), tmp_path / "scaled.pt")
    x = torch.full((1, 1, 2, 2), 3.0)
    full = plugin.FeatureModel(path, "cpu", False)
    half = plugin.FeatureModel(path, "cpu", True)
    assert half.half and not full.half
    y32, count32, xsize32 = full.forward(x, 3, STATS, DIRECTION)
    y16, count16, xsize16 = half.forward(x, 3, STATS, DIRECTION)
    assert y16.dtype == torch.float32  # outputs always cast back (§I3.5)
    assert y32.unique().item() == pytest.approx(1.0, abs=1e-7)
    assert y16.unique().item() == (torch.tensor(3.0, dtype=torch.float16) * torch.tensor(1 / 3, dtype=torch.float16)).item()
    assert count32.unique().tolist() == count16.unique().tolist() == [8.0]  # int64 buffer kept
    assert xsize32.unique().tolist() == [4.0] and xsize16.unique().tolist() == [2.0]


# ---------------------------------------------------------------------------------------------
# build info
# ---------------------------------------------------------------------------------------------


def test_build_info(plugin):
    info = plugin.build_info()
    assert info["torch_version"] == torch.__version__.split("+")[0]
    assert info["cxx11_abi"] is bool(torch._C._GLIBCXX_USE_CXX11_ABI)
    # CUDA is a fact of the installed torch (torch.version.cuda, kept in the build record), not of
    # its headers: header macros for it changed between torch releases.
    assert set(info) == {"torch_version", "cxx11_abi"}
