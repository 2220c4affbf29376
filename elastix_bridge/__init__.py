"""elastix-bridge: the IMPACT similarity metric for elastix parameter files and itk-elastix.

Importing this package imports neither torch nor the compiled plugin; both are loaded lazily, only
when a parameter map asks for ``(Metric "Impact")``. It makes itk-elastix's
``itk.elastix_registration_method`` and ``itk.ElastixRegistrationMethod`` handle Impact maps
(:mod:`elastix_bridge.dropin`); ``elastix_bridge.uninstall_dropin()`` restores plain itk-elastix.
"""
from elastix_bridge.api import elastix_registration_method
from elastix_bridge.dropin import install as install_dropin
from elastix_bridge.dropin import uninstall as uninstall_dropin

__version__ = "0.1.0"
__all__ = ["elastix_registration_method", "install_dropin", "uninstall_dropin"]

install_dropin()
