"""Shared test fixtures: one plugin build per test session, and the optional ../shared folder."""
import os
import tempfile
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def pytest_configure(config):
    # Every test, and every subprocess a test starts, uses one plugin cache, so the plugin is
    # compiled at most once per session: $ELASTIX_BRIDGE_CACHE when the caller set it (CI does),
    # else a fresh temporary folder (so a developer's own cache is never touched).
    if not os.environ.get("ELASTIX_BRIDGE_CACHE"):
        os.environ["ELASTIX_BRIDGE_CACHE"] = tempfile.mkdtemp(prefix="elastix-bridge-test-cache-")
    os.environ.pop("ELASTIX_BRIDGE_PLUGIN", None)


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


def shared_path(*parts) -> Path:
    """Path inside ../shared; skips the calling test with a reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the ../shared folder beside the checkout is absent)")
    return path


@pytest.fixture(scope="session")
def plugin():
    """The compiled plugin module, built at most once per session."""
    pytest.importorskip("torch")
    from elastix_bridge.runtime import loader

    return loader.load_plugin()
