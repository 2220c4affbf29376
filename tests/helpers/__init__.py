"""Helpers shared by test modules, by topic, imported as ``helpers.<topic>`` (pytest puts ``tests/`` on the
path for tests/conftest.py; benchmarks/impact_devices.py puts it there itself).

- ``paths``: the repository and the optional ../shared folder.
- ``geometry``: rotations and oblique, anisotropic image grids.
- ``maps``: small parameter maps, parameter files, ``TransformParameters`` of an itk ParameterObject.
- ``command``: the command line in-process, its flags, its one-line errors.
- ``images``: itk images on a rotated, anisotropic, off-origin grid.
- ``torchscript``: TorchScript toy models saved from source.
- ``impact``: the IMPACT metric's building blocks and independent references to check it against.
- ``native``: C stand-ins for native upstream plugins.

Nothing here imports torch or itk at import time (test modules that need neither can import it).
"""
