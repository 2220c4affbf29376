"""docs/design.md §2's map of the code names every module of the package, and only modules that exist.

Each room of §2 ("### 2.x Name (`elastix_bridge/folder/`, ...)") has a table whose first column names
its modules relative to that folder (`images/pyramids.py`; several in one cell separated by commas);
the package's ``__init__.py`` files are not listed.
"""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DESIGN = REPO / "docs" / "design.md"


def listed_modules() -> set[str]:
    text = DESIGN.read_text()
    section = text[text.index("## 2. Rooms of the code"):text.index("## 3. ")]
    listed = set()
    for room in re.split(r"\n### ", section)[1:]:
        heading, _, body = room.partition("\n")
        folder = re.search(r"`(elastix_bridge/[^`]*)`", heading)
        if folder is None:
            continue
        for row in body.splitlines():
            if row.startswith("| `"):
                first = row.strip("|").split("|")[0]
                listed |= {folder.group(1) + name for name in re.findall(r"`([^`]+\.py)`", first)}
    return listed


def test_the_design_map_lists_every_module_and_no_other():
    actual = {str(p.relative_to(REPO)) for p in (REPO / "elastix_bridge").rglob("*.py") if p.name != "__init__.py"}
    listed = listed_modules()
    assert sorted(actual - listed) == [], "modules missing from docs/design.md §2"
    assert sorted(listed - actual) == [], "modules in docs/design.md §2 that do not exist"
