"""The registration engine for Impact stages: one stage, and one package per elastix component family.

Components are registered once in ``component_list`` (lazy targets, read through ``components``); the
component modules import torch at their top, the registry and the settings readers do not. Its
modules and what each owns: docs/design.md §2.4; adding a component: docs/engine.md.
"""
