"""Command-line parameters made from a function's signature or a config dataclass's fields.

Each option is declared once: its name, type and default come from the
signature (or the dataclass field), its help from the docstring's ``Args:``
section (or the field's ``metadata["help"]``). ``Literal`` types become
choices, ``list[...]`` repeatable options, ``bool`` a ``--x/--no-x`` flag,
``Path`` a path. A parameter whose type the command line cannot express
needs a parser (``str`` in) or must be skipped; a parameter without help text
is an error when the command is built, so nothing reaches ``--help`` undocumented.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from .docstrings import argument_help

_SCALARS = {int: click.INT, float: click.FLOAT, str: click.STRING, bool: click.BOOL}


@dataclass(frozen=True)
class Param:
    """One parameter of a command: ``name`` as the Python callee spells it."""

    name: str
    hint: Any
    default: Any  # inspect.Parameter.empty: required
    help: str


def function_params(fn: Callable, skip: tuple[str, ...] = ()) -> list[Param]:
    """The keyword-capable parameters of ``fn`` with their help from its docstring."""
    hints = typing.get_type_hints(fn)
    helps = argument_help(fn)
    params = []
    for p in inspect.signature(fn).parameters.values():
        if p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            continue
        params.append(Param(p.name, hints.get(p.name, str), p.default, helps.get(p.name, "")))
    return params


def dataclass_params(cls: type, skip: tuple[str, ...] = ()) -> list[Param]:
    """The init fields of a config dataclass with their ``metadata["help"]``."""
    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = inspect.Parameter.empty
        params.append(Param(f.name, hints[f.name], default, f.metadata.get("help", "")))
    return params


class PathOrUrl(click.ParamType):
    """A parameter typed ``str | Path``: a ``Path``, except a URL (``scheme://...``), kept as typed, since
    ``Path`` would collapse its ``//``."""

    name = "path"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and "://" in value:
            return value
        return Path(value)


PATH_OR_URL = PathOrUrl()


@dataclass(frozen=True)
class _Shape:
    click_type: click.ParamType
    multiple: bool
    flag: bool


def _shape(hint: Any, where: str) -> _Shape:
    origin = typing.get_origin(hint)
    members = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    members = tuple(m for m in members if m is not type(None))
    lists = [m for m in members if typing.get_origin(m) in (list, tuple, abc.Sequence)]
    if lists:
        inner = typing.get_args(lists[0])[0] if typing.get_args(lists[0]) else str
        return _Shape(_shape(inner, where).click_type, True, False)
    literals = [m for m in members if typing.get_origin(m) is typing.Literal]
    if literals:
        return _Shape(click.Choice([str(v) for v in typing.get_args(literals[0])]), False, False)
    if Path in members and str in members:
        return _Shape(PATH_OR_URL, False, False)
    if Path in members:
        return _Shape(click.Path(path_type=Path), False, False)
    for scalar in (bool, int, float, str):
        if scalar in members:
            return _Shape(_SCALARS[scalar], False, scalar is bool)
    raise TypeError(f"{where}: the command line cannot express type {hint!r}; give a parser or skip it")


def click_params(
    params: list[Param],
    *,
    command: str,
    arguments: tuple[str, ...] = (),
    short: Mapping[str, str] | None = None,
    rename: Mapping[str, str] | None = None,
    parsers: Mapping[str, Callable[[str], Any]] | None = None,
) -> list[click.Parameter]:
    """click Arguments (``arguments``, in order) and Options (the rest) for ``params``."""
    short, rename, parsers = short or {}, rename or {}, parsers or {}
    by_name = {p.name: p for p in params}
    out: list[click.Parameter] = []
    for name in arguments:
        p = by_name[name]
        shape = _shape(p.hint, f"{command} {name}")
        required = p.default is inspect.Parameter.empty
        out.append(
            click.Argument(
                [name],
                type=shape.click_type,
                nargs=-1 if shape.multiple else 1,
                required=required,
                default=None if required else p.default,
            )
        )
    for p in params:
        if p.name in arguments:
            continue
        if not p.help:
            raise TypeError(f"{command}: parameter {p.name!r} has no help text (docstring Args: or field help)")
        flag = "--" + rename.get(p.name, p.name).replace("_", "-")
        names = [flag, *([short[p.name]] if p.name in short else [])]
        required = p.default is inspect.Parameter.empty
        if p.name in parsers:
            shape = _Shape(click.STRING, False, False)
        else:
            shape = _shape(p.hint, f"{command} {p.name}")
        if shape.flag:
            names[0] = f"{flag}/--no-{flag[2:]}"
        default = None if required or p.default is None else p.default
        if shape.multiple and default is not None:
            default = tuple(default)
        out.append(
            click.Option(
                [*names, p.name],
                type=shape.click_type,
                multiple=shape.multiple,
                required=required,
                default=default,
                show_default=default not in (None, (), False),
                help=p.help,
            )
        )
    return out


def argument_lines(params: list[Param], arguments: tuple[str, ...]) -> str:
    """Help text of the positional arguments, for the command's help (click Arguments take none)."""
    by_name = {p.name: p for p in params}
    lines = [f"{name.upper()}: {by_name[name].help}" for name in arguments if by_name[name].help]
    return "\n\n".join(lines)


def python_values(
    values: dict[str, Any], params: list[Param], parsers: Mapping[str, Callable[[str], Any]] | None = None
) -> dict[str, Any]:
    """click's values as the callee takes them: repeated options as lists (none given: the default)."""
    parsers = parsers or {}
    defaults = {p.name: p.default for p in params}
    out = {}
    for name, value in values.items():
        if isinstance(value, tuple):
            value = list(value) if value else defaults.get(name)
            if value is inspect.Parameter.empty:
                value = []
        if name in parsers and value is not None:
            value = parsers[name](value)
        out[name] = value
    return out
