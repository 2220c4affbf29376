"""The feature-model tools of the command line: `model export`, `model inspect` and `model check`."""
