"""TorchScript feature models that the project writes itself (no download needed)."""
