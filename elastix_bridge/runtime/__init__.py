"""The runtime floor: what the installed software and the machine provide, checked before use.

``loader`` (torch, the compiled IMPACT plugin, its build record, TorchScript models and JIT switches),
``build_checks`` (why a plugin build failed), ``native_plugins`` (upstream's own ``libImpactMetric*.so``),
``itk_elastix`` (the adapter to itk-elastix's elastix and transformix) and ``memory`` (how much memory
this process may use). Front ends and the engine call these; nothing here parses a parameter map.
"""
