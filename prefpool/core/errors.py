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


class OutputPathError(UserError, ValueError):
    """An output path of the wrong kind: a file where a folder is wanted, or a folder where a file is."""


class OutputError(UserError, OSError):
    """The machine refused a write (no space, read-only, no permission); the ``OSError`` is chained."""


class UserCodeError(UserError):
    """The user's own code (a reward function) raised or did not import; its exception is chained.

    The message names the function and the input it was called on (prompt id, file, row), so the
    user can reproduce the call; ``--debug`` shows the function's own traceback.
    """
