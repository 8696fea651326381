"""README's loss table and the method registry name the same methods: a method added to
``prefpool.losses`` without its row, or a row left after a method is gone, fails here."""

from __future__ import annotations

import re
from pathlib import Path

from prefpool.losses import METHODS

README = Path(__file__).resolve().parents[1] / "README.md"


def _table_names() -> set[str]:
    """The first column's backticked names of the table headed ``| name | function | ...``."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| name | function |"))
    names = set()
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        found = re.match(r"\| `([a-z0-9_]+)` \|", line)
        if found:
            names.add(found.group(1))
    return names


def test_every_registered_method_has_a_row_and_every_row_a_method():
    assert _table_names() == set(METHODS)
