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

# Training tables written by `build` (see pipeline/build.py). Log-probs are the
# reference model's summed completion log-probs, joined from the `logprobs` table.
ASSISTANT_TURN = pa.list_(MESSAGE)  # TRL's conversational completion: one assistant message

# `build --kind pairwise`: one row per preference pair; prompt/chosen/rejected/
# ref_chosen_logps/ref_rejected_logps are the names TRL's DPOTrainer reads.
_PAIR_FIELDS = [
    pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("prompt", pa.list_(MESSAGE), nullable=False),
    pa.field("chosen", ASSISTANT_TURN, nullable=False),
    pa.field("rejected", ASSISTANT_TURN, nullable=False),
    pa.field("ref_chosen_logps", pa.float64(), nullable=False),
    pa.field("ref_rejected_logps", pa.float64(), nullable=False),
    pa.field("chosen_id", pa.string(), nullable=False),  # ids.completion_id(text)
    pa.field("rejected_id", pa.string(), nullable=False),
    pa.field("chosen_num_tokens", pa.int32(), nullable=False),
    pa.field("rejected_num_tokens", pa.int32(), nullable=False),
]
PAIRWISE = pa.schema(_PAIR_FIELDS)

# `build --kind mcpo`: one row per prompt, the preferred answer and its candidate pool
# (parallel lists, in pool order).
MCPO = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.list_(MESSAGE), nullable=False),
        pa.field("preferred", pa.string(), nullable=False),
        pa.field("preferred_id", pa.string(), nullable=False),
        pa.field("ref_preferred_logp", pa.float64(), nullable=False),
        pa.field("preferred_num_tokens", pa.int32(), nullable=False),
        pa.field("pool", pa.list_(pa.string()), nullable=False),
        pa.field("pool_ids", pa.list_(pa.string()), nullable=False),
        pa.field("ref_pool_logps", pa.list_(pa.float64()), nullable=False),
        pa.field("pool_num_tokens", pa.list_(pa.int32()), nullable=False),
    ]
)

# `build --kind mpo`: a pair, its preference label, and samples drawn from the reference
# (texts kept: the tau term needs the policy's log-prob of them at train time).
MPO = pa.schema(
    _PAIR_FIELDS
    + [
        pa.field("label", pa.float64(), nullable=False),
        pa.field("ref_samples", pa.list_(pa.string()), nullable=False),
        pa.field("ref_sample_ids", pa.list_(pa.string()), nullable=False),
        pa.field("ref_sample_logps", pa.list_(pa.float64()), nullable=False),  # diagnostics
    ]
)

# `build --kind kto`: the `pairwise` rows plus KTO's mismatched pair: another prompt's answer
# (pipeline/kinds/mismatched.py picks it) with its reference log-prob under this row's prompt.
KTO = pa.schema(
    _PAIR_FIELDS
    + [
        pa.field("kl_completion", pa.string(), nullable=False),
        pa.field("kl_completion_id", pa.string(), nullable=False),  # ids.completion_id(text)
        pa.field("ref_kl_logps", pa.float64(), nullable=False),
        pa.field("kl_num_tokens", pa.int32(), nullable=False),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "examples": EXAMPLES,
    "candidates": CANDIDATES,
    "logprobs": LOGPROBS,
    "scores": SCORES,
    "pairwise": PAIRWISE,
    "mcpo": MCPO,
    "mpo": MPO,
    "kto": KTO,
}


def get_schema(name: str) -> pa.Schema:
    try:
        return SCHEMAS[name]
    except KeyError:
        raise KeyError(f"unknown table schema {name!r}; known: {sorted(SCHEMAS)}") from None


def check_schema(actual: pa.Schema, expected: pa.Schema, *, file: str | Path, made_by: str = "") -> None:
    """Raise ``PipelineInputError`` naming the file and column for a missing or mistyped column
    (``made_by``: the commands that make such a table, said with a missing column).

    Extra columns are allowed: a later stage may pass input columns through.
    """
    for field in expected:
        index = actual.get_field_index(field.name)
        if index < 0:
            how = f" (a table with it is made by {made_by})" if made_by else ""
            raise PipelineInputError(f"missing column{how}", file=file, column=field.name)
        found = actual.field(index).type
        if not found.equals(field.type):
            raise PipelineInputError(f"column has type {found}, expected {field.type}", file=file, column=field.name)
