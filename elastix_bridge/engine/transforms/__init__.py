"""The transforms: base and translation, linear (Euler, similarity, affine), B-spline, initial transforms."""
