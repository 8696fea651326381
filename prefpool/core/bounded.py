"""JSON and YAML read with bounds: a nesting depth and an expanded size, checked before any work.

A JSON line nested 100,000 arrays deep makes ``json.loads`` (and every
recursive walk after it) raise ``RecursionError``; 21 lines of YAML whose
anchors alias each other ("billion laughs") load as a small graph of shared
nodes that any copy, ``json.dumps`` or redaction then expands to gigabytes.
``loads_json`` and ``load_yaml`` refuse both with a ``BoundsError`` (a
``ValueError``, so callers wrap it in their own ``UserError`` with the file,
row and line); the limits are far above anything a dataset row, a card or a
config holds.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

__all__ = ["MAX_DEPTH", "MAX_YAML_NODES", "BoundsError", "load_yaml", "loads_json"]

MAX_DEPTH = 100  # nesting levels of lists and mappings
MAX_YAML_NODES = 1_000_000  # nodes after every alias is expanded


class BoundsError(ValueError):
    """Input past a bound (nesting depth, expanded size); the message says which and the limit."""


def _too_deep(depth: int) -> BoundsError:
    return BoundsError(f"nested more than {MAX_DEPTH} levels deep (got {depth}+); flatten the data")


def check_depth(obj: Any, limit: int = MAX_DEPTH) -> None:
    """Refuse ``obj`` (a JSON-like value) nested deeper than ``limit``; a walk without recursion."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            raise _too_deep(depth)
        stack.extend((child, depth + 1) for child in children)


def loads_json(text: str | bytes) -> Any:
    """``json.loads(text)``, refusing a value nested deeper than ``MAX_DEPTH`` (``BoundsError``)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    opened = text.count("[") + text.count("{")
    try:
        value = json.loads(text)
    except RecursionError:
        raise _too_deep(MAX_DEPTH) from None
    if opened > MAX_DEPTH:  # cheap test first: most rows cannot be that deep
        check_depth(value)
    return value


def load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)``, refusing YAML nested deeper than ``MAX_DEPTH`` or whose aliases expand to
    more than ``MAX_YAML_NODES`` nodes (``BoundsError``); a syntax error stays a ``yaml.YAMLError``."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise _too_deep(MAX_DEPTH) from None
        if node is None:
            return None
        _check_node(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_node(root: yaml.Node) -> None:
    """Depth and expanded size of a composed YAML graph (aliases are shared nodes), without recursion."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        children = _children(node)
        if done:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[id(node)] > MAX_YAML_NODES:
                raise BoundsError(
                    f"its aliases (*name) expand to more than {MAX_YAML_NODES:,} values; write the values out, "
                    "or use fewer aliases"
                )
            continue
        if id(node) in sizes:
            continue
        if depth > MAX_DEPTH:
            raise _too_deep(depth)
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in children if id(child) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []
