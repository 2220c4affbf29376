"""Registration engine for Impact stages: one module per elastix component family."""
