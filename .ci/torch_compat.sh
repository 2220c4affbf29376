#!/usr/bin/env bash
# The torch-compatibility check: a fresh virtual environment with torch==VERSION, the plugin built
# against it from nothing (its own empty cache), and the tests that touch torch: the plugin, its
# build and loader, doctor, native-plugin checks, and a Static and a Jacobian Impact registration
# with a toy TorchScript model (tests/test_torch_compat.py).
#   bash .ci/torch_compat.sh 2.14.1
set -euo pipefail
version="$1"
cd "$(dirname "$0")/.."
venv=".venv-torch-$version"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q "torch==$version" -e ".[impact,test]"
export ELASTIX_BRIDGE_CACHE="$PWD/.cache-ci-torch-$version"
rm -rf "$ELASTIX_BRIDGE_CACHE"
"$venv/bin/python" -m pytest -q -rs -p no:cacheprovider tests/test_torch_compat.py tests/test_plugin.py \
    tests/test_plugin_build.py tests/test_loader.py tests/test_doctor.py tests/test_native_plugins.py
rm -rf "$venv" "$ELASTIX_BRIDGE_CACHE"  # several GB; nothing is kept between CI runs
