"""The one base class of every error a user can fix.

The CLI turns a ``UserError`` into its message and exit code 2, without a
traceback; any other exception is a bug in prefpool (or in a library it
calls) and keeps its traceback. So raise a ``UserError`` subclass only for a
problem in what the user gave (a file, a row, a config key, a model folder)
and make its message say what is wrong, where, and what to do.

Subclasses that also derive from a builtin (``ConfigError`` is a
``ValueError``) do so for Python callers who catch the builtin; the CLI
never catches the builtin itself.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input, config, model or paths; the message says where and what to do."""


class ConfigError(UserError, ValueError):
    """A config file, option or override that cannot be used; the message names the key and its source."""


class InputError(UserError, ValueError):
    """A file, folder, model or tokenizer the user named holds something prefpool cannot use."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist (or lacks the file prefpool reads from it)."""


class OutputExistsError(UserError, FileExistsError):
    """An output path holds something that must not be replaced (pass the overwrite flag, or another path)."""
