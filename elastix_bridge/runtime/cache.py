"""The bridge's cache folder, where the compiled plugin and the built-in models are written.

``$ELASTIX_BRIDGE_CACHE``, or ``~/.cache/elastix-bridge``: the plugin builds go to ``plugin/``
(:func:`elastix_bridge.runtime.loader.cache_dir`), the built-in TorchScript models to ``models/``
(:func:`elastix_bridge.runtime.mind.mind_model_path`).
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_root"]

CACHE_ENV = "ELASTIX_BRIDGE_CACHE"


def cache_root() -> Path:
    """The bridge's cache folder: ``$ELASTIX_BRIDGE_CACHE`` or ``~/.cache/elastix-bridge``."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "elastix-bridge"
