"""docs/architecture.md names only what exists: every repo path, every ``prefpool.`` module or name,
and every relative link it gives resolves in this tree."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
TEXT = DOC.read_text(encoding="utf-8")
SPANS = re.findall(r"`([^`\n]+)`", TEXT)


def _paths() -> list[str]:
    """Backticked repo paths: a ``/`` and no placeholder (``<kind>``), cut at ``:`` (``file.py: name``).
    Not paths: command-line options (``--shard i/N``) and an output folder's hidden ``.prefpool/``."""
    found = set()
    for span in SPANS:
        if span.startswith("-"):
            continue
        for token in span.split():
            token = token.split(":")[0].rstrip(",;)")
            if "/" in token and "<" not in token and not token.startswith(("http", "-", "$", ".")):
                found.add(token)
    return sorted(found)


def _dotted() -> list[str]:
    """Backticked ``prefpool.x.y`` names, and ``losses.x`` / ``pipeline.x`` / ``train.x`` as short
    for ``prefpool.losses.x`` ... (a call's parentheses dropped)."""
    found = set()
    for span in SPANS:
        for match in re.finditer(r"(?<![\w./])(prefpool|losses|pipeline|train)((?:\.[A-Za-z_]\w*)+)", span):
            head = match.group(1)
            found.add(("prefpool" if head == "prefpool" else f"prefpool.{head}") + match.group(2))
    return sorted(found)


def test_the_doc_names_paths_and_modules():
    """The checks below have something to check (a doc rewritten without backticks would pass them)."""
    assert len(_paths()) > 10 and len(_dotted()) > 3


@pytest.mark.parametrize("path", _paths())
def test_every_named_path_exists(path):
    assert (REPO / path.rstrip("/")).exists(), f"docs/architecture.md names {path}, which is not in the tree"


@pytest.mark.parametrize("name", _dotted())
def test_every_named_module_or_attribute_exists(name):
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            assert hasattr(obj, attr), f"docs/architecture.md names {name}: {'.'.join(parts[:cut])} has no {attr}"
            obj = getattr(obj, attr)
        return
    raise AssertionError(f"docs/architecture.md names {name}, which is no module")


@pytest.mark.parametrize("link", sorted(set(re.findall(r"\]\(([^)#\s]+)\)", TEXT))))
def test_every_relative_link_resolves(link):
    if link.startswith("http"):
        pytest.skip("not a file")
    assert (DOC.parent / link).exists(), link
