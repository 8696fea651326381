"""The ``prefpool`` command group: commands loaded on first use, one error path, ``--version``, ``--debug``.

Every command is a thin layer over one plain Python function (see
``commands``). A ``UserError`` raised inside it (a bad file, row, column,
config key, model, path) is printed as one message with exit code 2 and no
traceback; ``--debug`` prints the traceback first (exit code 2 still). Any
other exception is a bug and keeps its traceback (exit code 1).

Everything the CLI prints goes through ``prefpool.core.secrets.redact_text``:
result lines (``echo``), error messages, and the tracebacks of ``--debug`` and
of bugs (``main`` installs a redacting ``sys.excepthook``).
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from prefpool import __version__
from prefpool.core.errors import UserError
from prefpool.core.secrets import redact_text

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


def echo(text: str, *, err: bool = False) -> None:
    """``click.echo`` with secrets redacted: every line the CLI prints goes through here."""
    click.echo(redact_text(str(text)), err=err)


def call(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn``; a ``UserError`` becomes ``error: <message>`` on stderr and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except UserError as exc:
        ctx = click.get_current_context(silent=True)
        if ctx is not None and ctx.find_root().params.get("debug"):
            echo("".join(traceback.format_exception(exc)).rstrip(), err=True)
        echo(f"error: {exc}", err=True)
        sys.exit(2)


def _redacting_excepthook(kind, value, tb) -> None:
    """A bug's traceback (exit code 1), with secrets redacted like every other line the CLI prints."""
    sys.stderr.write(redact_text("".join(traceback.format_exception(kind, value, tb))))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="prefpool")
@click.option("--debug", is_flag=True, help="Show the traceback of user errors too (they exit 2 either way).")
def app(debug: bool) -> None:
    """prefpool: offline preference optimization of language models.

    Candidate pools, cached reference log-probs, MC-PO / MPO / DPO training without a reference model.
    """


def main() -> None:
    sys.excepthook = _redacting_excepthook
    app(prog_name="prefpool")
