"""elastix-bridge: the IMPACT similarity metric for elastix parameter files and itk-elastix.

Importing this package imports neither torch nor the compiled plugin; both are loaded lazily, only
when a parameter map asks for ``(Metric "Impact")``. It makes itk-elastix's
``itk.elastix_registration_method`` and ``itk.ElastixRegistrationMethod`` handle Impact maps
(:mod:`elastix_bridge.dropin`); ``elastix_bridge.uninstall_dropin()`` restores plain itk-elastix.
"""
import os as _os
import sys as _sys

# OpenMP threads that wait for work sleep instead of spinning. libgomp reads this once, when torch
# loads it, so it only takes effect when the bridge is imported before torch; a value the user set
# wins. A spinning pool made Impact stages 2-4x slower whenever another process shared the cores
# (docs/performance.md, "Threads").
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from elastix_bridge.api import elastix_registration_method  # noqa: E402
from elastix_bridge.dropin import install as install_dropin  # noqa: E402
from elastix_bridge.dropin import uninstall as uninstall_dropin  # noqa: E402

__version__ = "0.1.0"
__all__ = ["elastix_registration_method", "install_dropin", "uninstall_dropin"]

install_dropin()
