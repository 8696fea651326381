"""The exceptions a stage raises for problems the user can fix.

The CLI turns any ``PipelineError`` into a one-paragraph message and exit code 2,
so the message itself must say where the problem is: file, row, column.
"""

from __future__ import annotations

from pathlib import Path

from prefpool.core.errors import UserError
from prefpool.core.secrets import redact_text


class PipelineError(UserError):
    """Base of the pipeline's user errors (the CLI reports them without a traceback, exit 2)."""


class PipelineInputError(PipelineError):
    """Bad input data: names the file, the row (0-based within that file) and the column.

    ``line`` is given for line-oriented text files (1-based, as editors count).
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        row: int | None = None,
        column: str | None = None,
        line: int | None = None,
    ) -> None:
        self.reason = message
        self.file = None if file is None else str(file)
        self.row = row
        self.column = column
        self.line = line
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.file is not None:
            where.append(self.file)
        if self.row is not None:
            where.append(f"row {self.row} (0-based)")
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        # a file may be a URL with a password or a signed query: the message never carries them
        return redact_text(f"{', '.join(where)}: {self.reason}" if where else self.reason)


class OutputConflictError(PipelineError):
    """The output folder holds something this run must not silently replace."""


class PipelineConfigError(PipelineError, ValueError):
    """A stage argument is invalid (bad ``--shard``, unknown format, ...)."""
