"""The transforms: base and translation, B-spline, linear (Euler, similarity, affine) with their initializers,
optimizer scales and one-call setup, and initial transforms (composition with earlier stages)."""
