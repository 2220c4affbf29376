"""The runtime floor: what the installed software and the machine provide, checked before use.

Its modules and what each owns: docs/design.md §2.2. Front ends and the engine call these; nothing
here parses a parameter map. Modules that import torch at their top (``mind``, ``exported_models``,
``model_contract``) are imported only after the loader's LibTorch check.
"""
