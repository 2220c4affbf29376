"""Tests of the MIND-SSC TorchScript feature model (elastix_bridge.runtime.mind, elastix_bridge.core.reserved_models)."""
from __future__ import annotations

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from elastix_bridge.core.reserved_models import RESERVED_MODELS, mind_pairs  # noqa: E402
from elastix_bridge.runtime import mind  # noqa: E402


def _stats(x):
    return torch.stack([x.min(), x.max(), x.mean(), x.std()]).float()


def _blobs(shape, seed=0):
    """A smooth random image with structure, [1, 1, *shape]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((1, 1) + tuple(s // 4 for s in shape), generator=g)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return torch.nn.functional.interpolate(x, size=shape, mode=mode, align_corners=False)


@pytest.mark.parametrize("dimension,shape,channels", [(2, (24, 20), 4), (3, (12, 16, 20), 12)])
def test_output_shape_and_channels(dimension, shape, channels):
    model = mind.MINDSSC(dimension).eval()
    x = _blobs(shape).repeat(2, 3, *([1] * dimension))  # channel-replicated input, batch 2
    out = model(x)
    assert isinstance(out, list) and len(out) == 1
    assert out[0].shape == (2, channels) + shape
    assert len(mind_pairs(dimension)) == channels
    assert torch.isfinite(out[0]).all()
    assert out[0].max() <= 1.0 + 1e-6 and out[0].min() > 0
    # per-voxel maximum over channels is 1 (MedIA 2012 normalisation)
    torch.testing.assert_close(out[0].amax(dim=1), torch.ones(2, *shape))


def test_pairs_are_at_distance_sqrt2():
    for d in (2, 3):
        for a, b in mind_pairs(d):
            assert sum((p - q) ** 2 for p, q in zip(a, b)) == 2
    with pytest.raises(ValueError):
        mind_pairs(4)
    with pytest.raises(ValueError):
        mind.MINDSSC(4)


@pytest.mark.parametrize("dimension,shape", [(2, (32, 28)), (3, (12, 14, 16))])
def test_script_round_trip(tmp_path, dimension, shape):
    path = mind.write_mind_ssc(tmp_path / "sub" / f"m{dimension}.pt", dimension)
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    loaded = torch.jit.load(str(path), map_location="cpu").eval()
    # IMPACT counts forward arguments minus self (docs/design.md §I3.2): 4
    assert len(loaded.forward.schema.arguments) - 1 == 4
    x = _blobs(shape)
    stats = _stats(x)
    nl = torch.tensor(1, dtype=torch.int16)
    direction = torch.eye(dimension, dtype=torch.int16)
    ref = mind.MINDSSC(dimension)(x, nl, stats, direction)[0]
    got = loaded(x, nl, stats, direction)
    assert isinstance(got, list) and len(got) == 1
    torch.testing.assert_close(got[0], ref)
    torch.testing.assert_close(loaded(x)[0], mind.MINDSSC(dimension)(x)[0])  # defaults


@pytest.mark.parametrize("dimension,shape", [(2, (40, 36)), (3, (14, 16, 18))])
def test_affine_intensity_invariance(dimension, shape):
    model = mind.MINDSSC(dimension)
    x = _blobs(shape, seed=3) * 100.0
    y = 3.7 * x - 250.0
    fx = model(x, torch.tensor(1, dtype=torch.int16), _stats(x))[0]
    fy = model(y, torch.tensor(1, dtype=torch.int16), _stats(y))[0]
    torch.testing.assert_close(fx, fy, atol=1e-4, rtol=1e-4)


def test_batch_independence():
    model = mind.MINDSSC(2)
    a, b = _blobs((24, 24), 1), _blobs((24, 24), 2) * 50
    both = model(torch.cat([a, b]))[0]
    torch.testing.assert_close(both[:1], model(a)[0])
    torch.testing.assert_close(both[1:], model(b)[0])


@pytest.mark.parametrize("dimension", [2, 3])
def test_constant_image_is_uniform(dimension):
    shape = (10,) * dimension
    x = torch.full((1, 1) + shape, 42.0)
    out = mind.MINDSSC(dimension)(x, torch.tensor(1, dtype=torch.int16), _stats(x))[0]
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.ones_like(out))


def test_responds_to_edges():
    # vertical step edge in a 2D image: columns < 16 dark, >= 16 bright
    x = torch.zeros(1, 1, 32, 32)
    x[..., 16:] = 1.0
    x = x + 0.01 * torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    out = mind.MINDSSC(2)(x)[0][0]  # [4, H, W]
    near = out[:, :, 14:18]
    far = out[:, :, 2:8]
    # far from the edge the descriptor is close to uniform; near the edge the channels differ
    spread_far = (far.amax(0) - far.amin(0)).mean()
    spread_near = (near.amax(0) - near.amin(0)).mean()
    assert spread_near > 0.5
    assert spread_near > 3 * spread_far


@pytest.mark.parametrize("dimension,shape", [(2, (20, 20)), (3, (8, 9, 10))])
def test_gradient_flows_to_input(dimension, shape):
    model = torch.jit.script(mind.MINDSSC(dimension))
    x = _blobs(shape, seed=5).requires_grad_(True)
    out = model(x, torch.tensor(1, dtype=torch.int16), _stats(x.detach()))[0]
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (g,) = torch.autograd.grad((out * w).sum(), x)
    assert g.shape == x.shape
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_reserved_name_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ELASTIX_BRIDGE_CACHE", str(tmp_path / "cache"))
    assert set(RESERVED_MODELS) == {"mind-ssc-2d", "mind-ssc-3d"}
    for name, (dim, desc) in RESERVED_MODELS.items():
        p = mind.mind_model_path(name)
        assert p.parent == tmp_path / "cache" / "models" / torch.__version__
        assert p.name.startswith(f"{name}-") and p.suffix == ".pt"  # <name>-<source hash>.pt
        assert p.is_file() and isinstance(desc, str)
        mtime = p.stat().st_mtime_ns
        assert mind.mind_model_path(name) == p and p.stat().st_mtime_ns == mtime  # cached
        m = torch.jit.load(str(p))
        out = m(torch.rand((1, 1) + (12,) * dim))[0]
        assert out.shape[1] == (4 if dim == 2 else 12)
    with pytest.raises(KeyError, match="mind-ssc-3d"):
        mind.mind_model_path("mind-ssc-4d")


def test_import_does_not_import_torch():
    code = ("import sys, elastix_bridge.core.reserved_models as m; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'itk' not in sys.modules; print(sorted(m.RESERVED_MODELS))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("dimension,radius", [(2, 1), (3, 1), (3, 2)])
def test_box_mean_equals_average_pool_with_replicate_padding(dimension, radius):
    """The separable box mean equals a (2r+1)^D average pool over the replicate-padded input."""
    import torch.nn.functional as F

    model = mind.MINDSSC(dimension, radius=radius)
    t = torch.randn((2, 3) + (9, 10, 11)[:dimension], generator=torch.Generator().manual_seed(0))
    padded = F.pad(t, [radius] * (2 * dimension), mode="replicate")
    pool = F.avg_pool3d if dimension == 3 else F.avg_pool2d
    expected = pool(padded, kernel_size=2 * radius + 1, stride=1)
    torch.testing.assert_close(model.box_mean(padded), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dimension,shape,radius,dilation", [
    (3, (1, 1, 9, 200, 700), 1, 2),   # one row per slab: every slab reads rows on both sides
    (3, (2, 1, 7, 9, 11), 2, 1),      # one slab, box wider than the dilation
    (2, (2, 1, 50, 3000), 1, 2),      # two slabs, the last one short
    (2, (1, 1, 40, 4000), 0, 3),      # no box
])
def test_slabs_without_autograd_equal_the_whole_volume(dimension, shape, radius, dilation):
    """The no-gradient path (slab by slab) gives the autograd path's numbers exactly."""
    model = torch.jit.script(mind.MINDSSC(dimension, radius=radius, dilation=dilation))
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    stats = torch.tensor([0.0, 1.0, 0.5, 0.2])
    n = torch.tensor(1, dtype=torch.int16)
    with torch.no_grad():
        slabs = model(x, n, stats)[0]
    whole = model(x.clone().requires_grad_(True), n, stats)[0]
    assert torch.equal(slabs, whole.detach())
