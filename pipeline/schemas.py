"""The pyarrow schema of every table the pipeline writes, defined once.

Stages refer to a schema by name (``"examples"``); the name is stored in each
file's metadata and in ``manifest.json`` so a reader knows what to check.
Data cards are generated from these objects too, so edit them here only.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from prefpool.pipeline.errors import PipelineInputError

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

ANSWER = pa.struct(
    [
        pa.field("text", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=True),
        pa.field("rank", pa.int32(), nullable=True),
        # e.g. the name of the model that wrote the answer
        pa.field("source", pa.string(), nullable=True),
    ]
)

# Indices into the row's `answers` list.
PAIR = pa.struct(
    [pa.field("chosen", pa.int32(), nullable=False), pa.field("rejected", pa.int32(), nullable=False)]
)

EXAMPLES = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.list_(MESSAGE), nullable=False),
        pa.field("answers", pa.list_(ANSWER), nullable=False),
        # Explicit pairwise preferences only; ranked data leaves this empty and
        # the build stage derives pairs from ranks/scores with a stated tie policy.
        pa.field("pairs", pa.list_(PAIR), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {"examples": EXAMPLES}


def get_schema(name: str) -> pa.Schema:
    try:
        return SCHEMAS[name]
    except KeyError:
        raise KeyError(f"unknown table schema {name!r}; known: {sorted(SCHEMAS)}") from None


def check_schema(actual: pa.Schema, expected: pa.Schema, *, file: str | Path) -> None:
    """Raise ``PipelineInputError`` naming the file and column for a missing or mistyped column.

    Extra columns are allowed: a later stage may pass input columns through.
    """
    for field in expected:
        index = actual.get_field_index(field.name)
        if index < 0:
            raise PipelineInputError("missing column", file=file, column=field.name)
        found = actual.field(index).type
        if not found.equals(field.type):
            raise PipelineInputError(
                f"column has type {found}, expected {field.type}", file=file, column=field.name
            )
