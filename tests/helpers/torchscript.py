"""TorchScript toy models: the source of ``class Model(nn.Module)`` saved as a scripted module."""
import textwrap
from pathlib import Path

import pytest


def scripted_model(tmp_path, name: str, source: str) -> Path:
    """Save the TorchScript of ``class Model(nn.Module)`` defined in ``source`` to ``tmp_path/name``."""
    torch = pytest.importorskip("torch")
    module_file = tmp_path / f"{Path(name).stem}_model.py"
    module_file.write_text("from typing import List\nimport torch\nfrom torch import nn\n\n" + textwrap.dedent(source))
    namespace = {}
    exec(compile(module_file.read_text(), str(module_file), "exec"), namespace)  # TorchScript needs the source file
    path = tmp_path / name
    torch.jit.script(namespace["Model"]()).save(str(path))
    return path
