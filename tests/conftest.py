"""Shared test fixtures: one plugin build per test session, and the optional ../shared folder."""
import os
import shutil
import tempfile

import numpy as np
import pytest

from helpers.maps import impact_parameters, write_parameter_file  # noqa: E402


def pytest_configure(config):
    # Every test, and every subprocess a test starts, uses one plugin cache, so the plugin is
    # compiled at most once per session: $ELASTIX_BRIDGE_CACHE when the caller set it (CI does),
    # else a fresh temporary folder (so a developer's own cache is never touched).
    if not os.environ.get("ELASTIX_BRIDGE_CACHE"):
        os.environ["ELASTIX_BRIDGE_CACHE"] = tempfile.mkdtemp(prefix="elastix-bridge-test-cache-")
    os.environ.pop("ELASTIX_BRIDGE_PLUGIN", None)


@pytest.fixture(scope="session")
def plugin():
    """The compiled plugin module, built at most once per session."""
    pytest.importorskip("torch")
    from elastix_bridge.runtime import loader

    return loader.load_plugin()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Synthetic 2D pair and MET_CHAR masks on disk, like the real data: dict of paths."""
    itk = pytest.importorskip("itk")
    folder = tmp_path_factory.mktemp("cli-inputs")
    y, x = np.mgrid[:36, :36].astype(np.float32)
    arrays = {"fixed.mha": np.exp(-((x - 18) ** 2 + (y - 18) ** 2) / 60.0),
              "moving.mha": np.exp(-((x - 20) ** 2 + (y - 17) ** 2) / 60.0)}
    paths = {}
    for name, array in arrays.items():
        image = itk.image_from_array(array.astype(np.float32))
        image.SetSpacing([1.2, 1.0])
        itk.imwrite(image, str(folder / name))
        paths[name.split(".")[0]] = folder / name
    # itk-python cannot write signed char; write the MetaImage by hand.
    ((x - 18) ** 2 + (y - 18) ** 2 < 15 ** 2).astype(np.int8).tofile(folder / "mask.raw")
    (folder / "mask.mhd").write_text(
        "ObjectType = Image\nNDims = 2\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        "ElementSpacing = 1.2 1\nDimSize = 36 36\nElementType = MET_CHAR\nElementDataFile = mask.raw\n")
    paths["mask"] = folder / "mask.mhd"
    paths["params"] = write_parameter_file(folder / "params.txt", impact_parameters())
    return paths


@pytest.fixture(scope="module")
def cc():
    """The system C compiler ($CC, cc, gcc or clang); skips when there is none."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    pytest.skip("no C compiler (cc/gcc/clang) to build the stand-in plugin libraries")


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread: the metric's tensors are tiny, and on a busy 2-core machine every multi-threaded
    small matmul waits for a descheduled worker (~20 ms each); restored after the module."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(session, config, items):
    # tests/hostile/ last: its registrations through the command can leave elastix's process-wide random
    # state changed (measured: a later multi-metric elastix run's metric values differ while its transform
    # agrees), and tests/test_engine_fidelity.py compares elastix's draws with the bridge engine's.
    # tests/test_engine_fidelity.py first: then the history before it is the same on every machine (whether
    # optional benchmark peers such as antspyx are installed or not changes which tests run before it).
    items.sort(key=lambda item: 0 if item.path.name == "test_engine_fidelity.py" else 2 if "hostile" in item.path.parts
               else 1)
