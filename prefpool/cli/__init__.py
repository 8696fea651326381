"""The ``prefpool`` command line: a thin layer over plain Python functions (see ``app`` and ``commands``)."""

from . import commands as _commands  # noqa: F401  (registers the commands)
from .app import app, main

__all__ = ["app", "main"]
