"""Thread pools of the bridge: OpenMP threads sleep while they wait (no spinning pool) unless the user says otherwise.

A fresh interpreter per case: libgomp reads ``OMP_WAIT_POLICY`` once, when torch loads it.
"""
import json
import os
import subprocess
import sys

import pytest

CODE = ("import json, os\nimport elastix_bridge\nbefore = os.environ.get('OMP_WAIT_POLICY')\n"
        "import torch\nprint(json.dumps({'policy': before}))\n")
TORCH_FIRST = "import torch\n" + CODE


def _run(code, **env):
    environment = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    environment.update(env)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_the_bridge_first_makes_waiting_openmp_threads_sleep():
    pytest.importorskip("torch")
    assert _run(CODE)["policy"] == "PASSIVE"


def test_a_policy_the_user_set_wins():
    pytest.importorskip("torch")
    assert _run(CODE, OMP_WAIT_POLICY="ACTIVE")["policy"] == "ACTIVE"


def test_torch_imported_first_is_left_alone():
    """libgomp has already read its settings; changing the variable then would only mislead."""
    pytest.importorskip("torch")
    assert _run(TORCH_FIRST)["policy"] is None


def test_number_of_threads_bounds_every_pool_and_is_restored():
    """``number_of_threads`` also bounds numpy's BLAS pool (threadpoolctl) and torch's, for the call only."""
    pytest.importorskip("torch")
    code = ("import json, numpy, torch, threadpoolctl\nfrom elastix_bridge.api import limited_threads\n"
            "def blas():\n    info = threadpoolctl.threadpool_info()\n"
            "    return [p['num_threads'] for p in info if p['user_api'] == 'blas']\n"
            "before = (torch.get_num_threads(), blas())\n"
            "with limited_threads(1):\n    inside = (torch.get_num_threads(), blas())\n"
            "print(json.dumps({'before': before, 'inside': inside, 'after': (torch.get_num_threads(), blas())}))\n")
    out = _run(code, OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2")
    assert out["inside"][0] == 1 and out["inside"][1] and set(out["inside"][1]) == {1}
    assert out["after"] == out["before"] and out["before"][0] == 2
