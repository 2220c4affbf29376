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
