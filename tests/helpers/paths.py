"""The repository and the optional ../shared folder (real data and models) beside the checkout."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"


def shared_path(*parts) -> Path:
    """Path inside ../shared; skips the calling test with a reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the ../shared folder beside the checkout is absent)")
    return path
