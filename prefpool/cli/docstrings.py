"""The ``Args:`` section of a Google-style docstring: the help text of each parameter.

A function's docstring is where its parameters are described once; the CLI
reads the same text for its ``--help`` (see ``commands``), so a stage is
documented in one place for Python callers and for the command line.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable

_ENTRY = re.compile(r"^(\*{0,2}\w+)(?:\s*\([^)]*\))?:\s*(.*)$")


def summary(fn: Callable) -> str:
    """The docstring's first paragraph, joined into one line."""
    doc = inspect.getdoc(fn) or ""
    return " ".join(doc.split("\n\n", 1)[0].split())


def argument_help(fn: Callable) -> dict[str, str]:
    """``{parameter name: help text}`` from the docstring's ``Args:`` section (continuation lines joined)."""
    lines = (inspect.getdoc(fn) or "").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Args:")
    except StopIteration:
        return {}
    helps: dict[str, str] = {}
    name = None
    indent = None
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if indent is None:
            indent = depth
        if depth < indent:  # the next section (Returns:, Raises:, ...) or the end of Args
            break
        match = _ENTRY.match(line.strip())
        if depth == indent and match:
            name = match.group(1).lstrip("*")
            helps[name] = match.group(2).strip()
        elif name is not None:
            helps[name] = f"{helps[name]} {line.strip()}".strip()
    return helps
