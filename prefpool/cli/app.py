"""The ``prefpool`` command group: commands loaded on first use, one error path, ``--version``, ``--debug``.

Every command is a thin layer over one plain Python function (see
``commands``). A ``UserError`` raised inside it (a bad file, row, column,
config key, model, path) is printed as one message with exit code 2 and no
traceback; ``--debug`` shows the traceback too. Any other exception is a bug
and keeps its traceback (exit code 1).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

import click

from prefpool import __version__
from prefpool.core.errors import UserError

# name -> "module:function" returning the click.Command; imported only when the command is used,
# so `prefpool ingest` does not pay for torch.
COMMANDS: dict[str, str] = {}


def register(name: str, factory: str) -> None:
    COMMANDS[name] = factory


class LazyGroup(click.Group):
    """A group whose commands are built from ``COMMANDS`` when first asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        if name not in self.commands:
            module, _, attr = COMMANDS[name].partition(":")
            self.commands[name] = getattr(importlib.import_module(module), attr)()
        return self.commands[name]


def call(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn``; a ``UserError`` becomes ``error: <message>`` on stderr and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except UserError as exc:
        ctx = click.get_current_context(silent=True)
        if ctx is not None and ctx.find_root().params.get("debug"):
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="prefpool")
@click.option("--debug", is_flag=True, help="Show the traceback of user errors too (they exit 2 either way).")
def app(debug: bool) -> None:
    """prefpool: offline preference optimization of language models.

    Candidate pools, cached reference log-probs, MC-PO / MPO / DPO training without a reference model.
    """


def main() -> None:
    app(prog_name="prefpool")
