"""YAML configs with ``key=value`` overrides, checked strictly.

A config is a frozen dataclass whose fields carry help text
(``field(metadata={"help": ...})``). ``load_config`` reads a YAML mapping,
applies command-line overrides (``train.lr=1e-5``, nested with dots; values
parsed as YAML, so ``true``, ``3``, ``[a, b]`` work), and builds the dataclass.
Unknown keys and wrongly typed values are errors that name the key and the
file, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from prefpool.core.errors import ConfigError

__all__ = [
    "ConfigError",
    "apply_overrides",
    "build_dataclass",
    "check_kwargs",
    "coerce",
    "config_help",
    "load_config",
    "read_yaml",
]

T = TypeVar("T")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file (an empty file is an empty mapping)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: a folder, not a config file; give the path of a YAML file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except PermissionError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror}); make it readable") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at line {line}); save the file as UTF-8"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``dotted.key=value`` override set."""
    result = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a mapping")
            node = child
        node[parts[-1]] = value
    return result


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def build_dataclass(cls: type[T], data: Mapping[str, Any], *, source: str, prefix: str = "") -> T:
    """Build ``cls`` from ``data``: unknown keys, missing required keys and bad types are errors."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'} must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key {prefix + unknown[0]!r}; known keys: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{source}: missing required key {prefix + name!r}")
            continue
        values[name] = coerce(hints[name], data[name], source=source, key=f"{prefix}{name}")
    return cls(**values)


def coerce(hint: Any, value: Any, *, source: str, key: str) -> Any:
    """Check ``value`` against a type hint, converting the few safe cases (int->float, list->tuple)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(option, value, source=source, key=key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{source}: {key}: {value!r} fits none of {hint}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{source}: {key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [coerce(inner, v, source=source, key=f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, source=source, prefix=f"{key}.")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        # PyYAML follows YAML 1.1, which reads 1e-6 (no dot) as a string; people write it that way.
        return float(value)
    if hint is Path and isinstance(value, str):
        return Path(value)
    if isinstance(hint, type) and not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: {key}: expected {getattr(hint, '__name__', hint)}, got {value!r}")
    return value


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Read ``path`` (optional), apply ``overrides``, and build ``cls`` strictly."""
    data = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "command line"
    return build_dataclass(cls, apply_overrides(data, overrides), source=source)


def check_kwargs(function: Callable[..., Any], data: Mapping[str, Any], *, source: str) -> None:
    """Refuse keys that are not keyword parameters of ``function`` (for stage sections of a YAML file)."""
    import inspect

    params = inspect.signature(function).parameters
    known = {n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {unknown[0]!r} for {function.__name__}; known keys: {', '.join(sorted(known))}"
        )


def config_help(cls: type) -> list[tuple[str, str, str]]:
    """``(name, default, help)`` for each field, for documentation and ``--help`` output."""
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        rows.append((f.name, default, f.metadata.get("help", "")))
    return rows
