"""The pyarrow schema of every table the pipeline writes, defined once.

Stages refer to a schema by name (``"examples"``); the name is stored in each
file's metadata and in ``manifest.json`` so a reader knows what to check.
Data cards are generated from these objects too, so edit them here only.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from prefpool.pipeline.io.errors import PipelineInputError

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
PAIR = pa.struct([pa.field("chosen", pa.int32(), nullable=False), pa.field("rejected", pa.int32(), nullable=False)])

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

# `generate` output: one row per prompt, its N sampled completions in sample order.
SAMPLE = pa.struct(
    [
        pa.field("text", pa.string(), nullable=False),
        # derived from (global seed, prompt_id, sample index): a resumed or re-sharded
        # run draws the same sample
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("finish_reason", pa.string(), nullable=False),  # "stop" | "length"
        pa.field("num_tokens", pa.int32(), nullable=False),
    ]
)

CANDIDATES = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.list_(MESSAGE), nullable=False),
        pa.field("samples", pa.list_(SAMPLE), nullable=False),
    ]
)

# `logprobs` output: one row per distinct (prompt, completion) pair.
LOGPROBS = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        # content hash of the completion text (see ids.completion_id)
        pa.field("completion_id", pa.string(), nullable=False),
        # sum over completion tokens of log pi_ref(token | prefix)
        pa.field("logp", pa.float64(), nullable=False),
        pa.field("num_tokens", pa.int32(), nullable=False),
        # the completion was cut to fit max_length (policy in the manifest's config)
        pa.field("truncated", pa.bool_(), nullable=False),
        # per-token values, only when asked for
        pa.field("token_logps", pa.list_(pa.float32()), nullable=True),
        # hash of what the values depend on: model weights, tokenizer, chat template,
        # max length, truncation policy, dtype; rows under another key are recomputed
        pa.field("cache_key", pa.string(), nullable=False),
    ]
)

# `score` output: one row per distinct (prompt, completion) pair; the scorer (reward
# function or reward model) is named in the manifest's config. Higher is better.
SCORES = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("completion_id", pa.string(), nullable=False),  # ids.completion_id(text)
        pa.field("score", pa.float64(), nullable=False),
    ]
)

# Training tables written by `build`: each kind's schema is in its module of pipeline/kinds/
# (``get_schema`` finds it there). Log-probs are the reference model's summed completion
# log-probs, joined from the `logprobs` table.
ASSISTANT_TURN = pa.list_(MESSAGE)  # TRL's conversational completion: one assistant message

# A column a table may lack (one written before the column existed): readers fill it with nulls.
OPTIONAL = b"prefpool.optional"


def optional_field(name: str, type_: pa.DataType) -> pa.Field:
    """A nullable column that readers accept absent (``conform`` adds it as nulls)."""
    return pa.field(name, type_, nullable=True, metadata={OPTIONAL: b"true"})


def is_optional(field: pa.Field) -> bool:
    return bool(field.metadata) and field.metadata.get(OPTIONAL) == b"true"


# The stages' own tables; the training tables' schemas are their kinds' (``get_schema``).
SCHEMAS: dict[str, pa.Schema] = {
    "examples": EXAMPLES,
    "candidates": CANDIDATES,
    "logprobs": LOGPROBS,
    "scores": SCORES,
}


def get_schema(name: str) -> pa.Schema:
    """The schema of a stage's table, or of a training-table kind (``pipeline.kinds.KINDS``)."""
    if name in SCHEMAS:
        return SCHEMAS[name]
    from prefpool.pipeline.kinds import KINDS  # the kinds read this module: looked up at call time

    if name in KINDS:
        return KINDS[name].schema
    raise KeyError(f"unknown table schema {name!r}; known: {sorted([*SCHEMAS, *KINDS])}")


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` in ``schema``'s columns and types, an absent optional column added as nulls."""
    for field in schema:
        if field.name not in table.column_names and is_optional(field):
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(schema.names).cast(schema)


def check_schema(actual: pa.Schema, expected: pa.Schema, *, file: str | Path, made_by: str = "") -> None:
    """Raise ``PipelineInputError`` naming the file and column for a missing or mistyped column
    (``made_by``: the commands that make such a table, said with a missing column).

    Extra columns are allowed: a later stage may pass input columns through; so is the absence
    of an optional column (``optional_field``).
    """
    for field in expected:
        index = actual.get_field_index(field.name)
        if index < 0 and is_optional(field):
            continue
        if index < 0:
            how = f" (a table with it is made by {made_by})" if made_by else ""
            raise PipelineInputError(f"missing column{how}", file=file, column=field.name)
        found = actual.field(index).type
        if not found.equals(field.type):
            raise PipelineInputError(f"column has type {found}, expected {field.type}", file=file, column=field.name)
