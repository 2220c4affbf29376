"""elastix-bridge: the IMPACT similarity metric for elastix parameter files and itk-elastix.

Importing this package imports neither torch nor the compiled plugin; both are loaded lazily, only
when a parameter map asks for ``(Metric "Impact")``.
"""
__version__ = "0.1.0"
