"""The registration engine for Impact stages, by elastix component family.

``registration`` (a stage: setup, per-level context, the loop, outputs), ``components`` (the registry
of elastix components), ``geometry`` (ITK-order grid geometry), ``random`` (elastix's Mersenne
Twister), ``samplers``, ``errors``; and one package per family: ``images`` (level images, pyramids,
interpolators), ``transforms``, ``metrics``, ``optimizers``.
"""
