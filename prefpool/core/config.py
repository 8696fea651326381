"""YAML configs with ``key=value`` overrides, checked strictly.

A config is a frozen dataclass whose fields carry help text
(``field(metadata={"help": ...})``). ``load_config`` reads a YAML mapping,
applies command-line overrides (``train.lr=1e-5``, nested with dots; values
parsed as YAML, so ``true``, ``3``, ``[a, b]`` work), and builds the dataclass.
Unknown keys and wrongly typed values are errors that name the key and the
file, never silently ignored.

Another library's spellings of the same settings (TRL's ``learning_rate`` for
``lr``) are accepted where a config class lists them in its ``ALIASES`` class
attribute: ``{name: Alias}``. An alias renames a key, converts a value
(``bf16: true`` -> ``mixed_precision: bf16``), or refuses the key with a note
saying what the config does instead. Every unknown or refused key of a file is
reported in one error, each unknown one with its nearest known name.

Numbers: a float field takes finite values only, and a field whose metadata
holds ``bounds`` (a ``Bounds``, declared next to its help text) takes values
within them. ``build_dataclass`` checks both while loading, naming the key and
where it came from (the YAML file, or the command line for an override);
``check_bounds`` applies the same declarations to an instance built in Python.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from prefpool.core.bounded import BoundsError, load_yaml
from prefpool.core.errors import ConfigError

__all__ = [
    "Alias",
    "Bounds",
    "ConfigError",
    "apply_overrides",
    "build_dataclass",
    "check_bounds",
    "check_kwargs",
    "coerce",
    "config_help",
    "alias_help",
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
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except BoundsError as exc:
        raise ConfigError(f"{path}: the YAML is {exc}") from None
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
            value = load_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        except BoundsError as exc:
            raise ConfigError(f"override {key.strip()!r}: the YAML value is {exc}") from None
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


@dataclass(frozen=True)
class Alias:
    """Another library's name for a setting: a rename (``key``), a conversion (``convert``), or a refusal.

    ``convert(value, where)`` returns the canonical ``{key: value}`` items the
    alias sets (none: the value changes nothing here) and raises ``ConfigError``
    (its message prefixed with ``where``) for a value the config cannot honour.
    With neither ``key`` nor ``convert`` the alias is refused, whatever its value.
    ``note`` says what the name means here (``--help``) or, for a refusal, what
    to do instead. ``sets``: the keys a ``convert`` may set.
    """

    note: str
    key: str | None = None
    convert: Callable[[Any, str], Mapping[str, Any]] | None = None
    sets: tuple[str, ...] = ()

    def targets(self) -> tuple[str, ...]:
        return (self.key,) if self.key else self.sets

    def apply(self, value: Any, where: str) -> dict[str, Any]:
        if self.convert is not None:
            return dict(self.convert(value, where))
        if self.key is not None:
            return {self.key: value}
        raise ConfigError(f"{where}: not taken here: {self.note}")


@dataclass(frozen=True)
class Bounds:
    """The numbers a config field takes, declared in its metadata (``{"help": ..., "bounds": Bounds(...)}``).

    ``low``/``high``: the ends (None: unbounded); ``low_open``/``high_open``: the end itself is
    excluded. ``None`` values pass (the field's type says whether null is allowed, and ``note``
    can say what null means); ``note`` is added to the error message.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""

    def describe(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {low}" if self.low is not None else "any number"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {high}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"

    def holds(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))


def _number(x: float | None) -> str:
    return "" if x is None else str(x) if isinstance(x, int) else f"{x:g}"


def field_problem(f: dataclasses.Field, value: Any) -> str | None:
    """What is wrong with ``value`` for field ``f`` (a non-finite float, a number outside its ``bounds``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    bounds = f.metadata.get("bounds")
    if bounds is None or bounds.holds(value):
        return None
    note = f" ({bounds.note})" if bounds.note else ""
    return f"must be {bounds.describe()}{note}, got {value!r}"


def check_bounds(config: object) -> None:
    """Refuse a field of ``config`` (a dataclass instance) that breaks its declared bounds or is not finite."""
    for f in dataclasses.fields(config):
        problem = field_problem(f, getattr(config, f.name))
        if problem is not None:
            raise ConfigError(f"{f.name}: {problem}")


def _aliases(cls: type) -> Mapping[str, Alias]:
    return getattr(cls, "ALIASES", None) or {}


def _nested_class(hint: Any) -> type | None:
    """The dataclass a field holds (``X`` or ``X | None``), else None."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    found = [o for o in options if dataclasses.is_dataclass(o)]
    return found[0] if found else None


def _nearest(key: str, names: Sequence[str]) -> str | None:
    found = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    return found[0] if found else None


def _translate(
    cls: type, data: Mapping[str, Any], *, source: str, prefix: str
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """``data`` in ``cls``'s own keys: ``(values, label of each key, problems)``.

    A label is the name the user wrote (``learning_rate (lr)`` for an alias), for
    later error messages. Problems are the unknown keys (with the nearest known
    name), refused aliases and conflicts, for this level and every nested
    dataclass below it, so one error can list them all.
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    aliases = _aliases(cls)
    out: dict[str, Any] = {}
    labels: dict[str, str] = {}
    problems: list[str] = []
    unknown: list[str] = []
    for key, value in data.items():
        if key in aliases:
            where = f"{prefix}{key}"
            try:
                items = aliases[key].apply(value, where)
            except ConfigError as exc:
                problems.append(str(exc))
                continue
        elif key in fields:
            items = {key: value}
        else:
            unknown.append(key)
            continue
        for name, item in items.items():
            if name not in fields:
                raise TypeError(f"{cls.__name__}.ALIASES[{key!r}] sets {name!r}, which is not a field")
            label = key if key == name else f"{key} ({name})"
            if name in out and out[name] != item:
                problems.append(
                    f"{prefix}{labels[name]} and {prefix}{label} both set {prefix}{name}, to "
                    f"{out[name]!r} and {item!r}; give one"
                )
                continue
            out[name], labels[name] = item, label
    # suggest names that set something: a refused alias is no better a guess than the typo itself
    names = sorted(fields) + sorted(n for n, a in aliases.items() if a.targets())
    for key in unknown:
        near = _nearest(str(key), names)
        hint = ""
        if near is not None:
            target = aliases[near].targets() if near in aliases and near not in fields else ()
            hint = f" (did you mean {near!r}" + (f", which sets {' and '.join(target)}" if target else "") + "?)"
        problems.append(f"unknown key {prefix + str(key)!r}{hint}")
    if unknown:
        problems.append(f"known keys{' of ' + prefix.rstrip('.') if prefix else ''}: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    for name, value in out.items():
        nested = _nested_class(hints[name])
        if nested is not None and isinstance(value, Mapping):
            problems += _translate(nested, value, source=source, prefix=f"{prefix}{name}.")[2]
    return out, labels, problems


def build_dataclass(
    cls: type[T],
    data: Mapping[str, Any],
    *,
    source: str,
    prefix: str = "",
    overridden: frozenset[str] = frozenset(),
) -> T:
    """Build ``cls`` from ``data``: unknown keys, missing required keys, bad types and numbers out of
    their bounds are errors.

    Keys in ``cls.ALIASES`` are translated first (see ``Alias``); all unknown and
    refused keys, nested ones included, are reported in one ``ConfigError``.
    ``overridden``: the dotted keys set on the command line, whose errors name it as their source.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'} must be a mapping")
    values, labels, problems = _translate(cls, data, source=source, prefix=prefix)
    if len(problems) == 1 or (len(problems) == 2 and problems[1].startswith("known keys")):
        raise ConfigError(f"{source}: " + "; ".join(problems))
    if problems:
        count = sum(not p.startswith("known keys") for p in problems)
        raise ConfigError(f"{source}: {count} keys cannot be used:\n  " + "\n  ".join(problems))
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    out = {}
    for name, f in fields.items():
        if name not in values:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{source}: missing required key {prefix + name!r}")
            continue
        key = f"{prefix}{labels[name]}" if labels[name] != name else f"{prefix}{name}"
        written = prefix + labels[name].split(" ")[0]  # the key as the user wrote it (an alias's own name)
        where = "command line" if written in overridden else source
        if _nested_class(hints[name]) is not None and isinstance(values[name], Mapping):
            key = f"{prefix}{name}"  # a nested mapping's keys are reported under the field's own name
            out[name] = build_dataclass(
                _nested_class(hints[name]), values[name], source=source, prefix=f"{key}.", overridden=overridden
            )
            continue
        out[name] = coerce(hints[name], values[name], source=where, key=key)
        problem = field_problem(f, out[name])
        if problem is not None:
            raise ConfigError(f"{where}: {key}: {problem}")
    return cls(**out)


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
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: {key}: must be a finite number, got {value!r}")
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
    if not isinstance(data, Mapping) or not _translate(cls, data, source=source, prefix="")[2]:
        # the file's own keys are all usable: a problem now is the command line's alone (else every key,
        # the file's and the command line's, is reported in one error below)
        _check_overrides(cls, apply_overrides({}, overrides))
    overridden = frozenset(item.partition("=")[0].strip() for item in overrides)
    return build_dataclass(cls, apply_overrides(data, overrides), source=source, overridden=overridden)


def _check_overrides(cls: type, overrides: Mapping[str, Any]) -> None:
    """Refuse an unknown ``key=value`` key or a bad value as the command line's, not the file's."""
    source = "command line"
    values, labels, problems = _translate(cls, overrides, source=source, prefix="")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if _nested_class(hints[name]) is None:  # a nested section is checked whole, with the file's keys
            coerce(hints[name], value, source=source, key=labels[name])


def check_kwargs(function: Callable[..., Any], data: Mapping[str, Any], *, source: str) -> None:
    """Refuse keys that are not keyword parameters of ``function`` (for stage sections of a YAML file).

    All unknown keys are named at once, each with the nearest known one.
    """
    import inspect

    params = inspect.signature(function).parameters
    known = sorted(n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
    unknown = [k for k in data if k not in known]
    if unknown:
        named = []
        for key in unknown:
            near = _nearest(str(key), known)
            named.append(f"{key!r}" + (f" (did you mean {near!r}?)" if near else ""))
        noun = "key" if len(unknown) == 1 else "keys"
        raise ConfigError(
            f"{source}: unknown {noun} {', '.join(named)} for {function.__name__}; known keys: {', '.join(known)}"
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
        text = f.metadata.get("help", "")
        bounds = f.metadata.get("bounds")
        if bounds is not None:
            text += f" Allowed: {bounds.describe()}" + (f" ({bounds.note})." if bounds.note else ".")
        rows.append((f.name, default, text))
    return rows


def alias_help(cls: type) -> list[tuple[str, str]]:
    """``(alias, note)`` for each of ``cls.ALIASES``, for ``--help`` output."""
    return [(name, alias.note) for name, alias in _aliases(cls).items()]
