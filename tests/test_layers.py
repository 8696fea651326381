"""The layers import one way: losses <- pipeline <- train, with prefpool.core beneath them all.

Read from the source (``ast``), not by importing, so a lazy import inside a
function counts as much as one at the top of a file.

- ``prefpool.losses`` imports nothing of prefpool.
- ``prefpool.core`` (config, user errors) imports nothing of prefpool but itself.
- ``prefpool.pipeline`` imports losses, core and itself (and ``prefpool.__version__``).
- ``prefpool.train`` imports losses, core, pipeline and itself.
- Nothing imports ``prefpool.cli`` but ``prefpool/__main__.py``.
- No module takes a private name (``_x``) from another layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# folder -> the package it is installed as (pyproject's package-dir)
FOLDERS = {
    "losses": "prefpool.losses",
    "pipeline": "prefpool.pipeline",
    "train": "prefpool.train",
    "prefpool": "prefpool",
}
ALLOWED = {
    "prefpool.losses": set(),
    "prefpool.core": {"prefpool.core"},
    "prefpool.testing": set(),
    "prefpool.pipeline": {"prefpool.pipeline", "prefpool.losses", "prefpool.core", "prefpool"},
    "prefpool.train": {"prefpool.train", "prefpool.pipeline", "prefpool.losses", "prefpool.core"},
}


def layer_of(module: str) -> str:
    """The layer a dotted prefpool module belongs to (``prefpool`` alone for the root package)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO)
    base = FOLDERS[rel.parts[0]]
    rest = [p for p in rel.with_suffix("").parts[1:] if p != "__init__"]
    return ".".join([base, *rest])


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[str, list[str], int]]:
    """``(imported module, names taken from it, line)`` for every import of ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                target = f"{package}.{node.module}" if node.module else package
            else:
                target = node.module or ""
            found.append((target, [alias.name for alias in node.names], node.lineno))
    return found


def violations(sources: dict[str, tuple[str, bool]]) -> list[str]:
    """Every upward, sideways or private import among ``{module: (source, is_package)}``."""
    problems = []
    for module, (source, is_package) in sorted(sources.items()):
        mine = layer_of(module)
        for target, names, line in imports_of(source, module, is_package):
            if target != "prefpool" and not target.startswith("prefpool."):
                continue
            theirs = layer_of(target)
            where = f"{module}:{line} imports {target}"
            if theirs == "prefpool.cli" and module not in ("prefpool.__main__",) and mine != "prefpool.cli":
                problems.append(f"{where}: nothing imports the CLI")
            if mine in ALLOWED and theirs != mine and theirs not in ALLOWED[mine]:
                problems.append(f"{where}: {mine} may import only {sorted(ALLOWED[mine]) or 'nothing of prefpool'}")
            if theirs != mine:
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                if private:
                    problems.append(f"{where}: private name(s) {private} from another layer")
    return problems


def repo_sources() -> dict[str, tuple[str, bool]]:
    sources = {}
    for folder in FOLDERS:
        for path in (REPO / folder).rglob("*.py"):
            sources[module_name(path)] = (path.read_text(), path.name == "__init__.py")
    return sources


def test_the_layers_import_one_way():
    sources = repo_sources()
    assert {"prefpool.losses.mcpo", "prefpool.pipeline.io.stage_run", "prefpool.train.trainer"} <= set(sources)
    assert violations(sources) == []


@pytest.mark.parametrize(
    "module, source, expected",
    [
        ("prefpool.losses.x", "from prefpool.pipeline.io import ids", "prefpool.losses may import only"),
        ("prefpool.pipeline.x", "from prefpool.train.trainer import train", "prefpool.pipeline may import only"),
        ("prefpool.pipeline.x", "import prefpool.train.config", "prefpool.pipeline may import only"),
        ("prefpool.train.x", "from prefpool.core.config import _coerce", "private name(s) ['_coerce']"),
        ("prefpool.train.x", "from prefpool.cli import app", "nothing imports the CLI"),
        ("prefpool.core.x", "from prefpool.pipeline.io.errors import PipelineError", "prefpool.core may import only"),
        (
            "prefpool.pipeline.io.x",
            "def f():\n    from prefpool.train import trainer",
            "prefpool.pipeline may import only",
        ),
    ],
)
def test_the_check_catches_each_kind_of_bad_import(module, source, expected):
    problems = violations({module: (source, False)})
    assert any(expected in p for p in problems), problems


def test_relative_imports_resolve_to_their_package():
    assert imports_of("from ..io import ids", "prefpool.pipeline.kinds.mcpo", False)[0][0] == "prefpool.pipeline.io"
    assert imports_of("from .spec import X", "prefpool.train.kinds", True)[0][0] == "prefpool.train.kinds.spec"
