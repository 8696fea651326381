"""KTO's mismatched pairs: each prompt with another prompt's answer, fixed by a rule without a seed.

KTO (Ethayarajh et al. 2024, arXiv 2402.01306) estimates its reference point
``z0 ~ KL(pi || pi_ref)`` from pairs ``(x, y')`` whose completion ``y'`` was
written for another prompt. Here each prompt's ``y'`` is fixed once, from the
``examples`` table alone, so ``logprobs --kl-pairs`` caches ``log pi_ref(y'|x)``
before ``build`` runs and ``build --kind kto`` joins it into each row::

    x_0 .. x_{n-1}: the prompts with a non-blank answer, sorted by prompt_id
    y'(x_k) = the first non-blank answer of x_{(k+1) mod n}

A cyclic shift by one: with ``n >= 2`` no prompt is paired with one of its own
rows' answers (a text both prompts have is the only way ``y'`` can equal an
answer of ``x``). The rule reads the whole examples table, so a ``--shard i/N``
run of either stage pairs a prompt with the same ``y'`` as an unsharded run.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from prefpool.pipeline.io.errors import PipelineConfigError, PipelineInputError
from prefpool.pipeline.io.ids import ShardSpec, completion_id

# (prompt_id, completion_id, prompt, text), as ``io.completions.distinct_completions`` lists them
Pair = tuple[str, str, list, str]


def mismatched_completions(examples: pl.LazyFrame) -> pl.LazyFrame:
    """``[prompt_id, kl_text]``: each prompt's mismatched completion (the rule above), sorted by prompt_id;
    no rows when fewer than two prompts have a non-blank answer."""
    text = pl.element().struct.field("text")
    first = (
        examples.select(
            "prompt_id",
            pl.col("answers").list.eval(text.filter(text.str.strip_chars() != "")).list.first().alias("text"),
        )
        .filter(pl.col("text").is_not_null())
        .unique("prompt_id", keep="first", maintain_order=True)
        .sort("prompt_id")
    )
    shifted = pl.col("text").shift(-1).fill_null(pl.col("text").first())
    return first.select("prompt_id", shifted.alias("kl_text")).filter(pl.len() >= 2)


def mismatched_pairs(table: pa.Table, spec: ShardSpec | None = None) -> list[Pair]:
    """The mismatched pairs of the prompts ``spec`` owns (None: all), sorted by prompt_id, from an examples
    table in memory (``prompt_id``, ``prompt``, ``answers``)."""
    frame = pl.from_arrow(table.select(["prompt_id", "answers"]))
    assert isinstance(frame, pl.DataFrame)
    kl = mismatched_completions(frame.lazy()).collect()
    prompts = dict(zip(table.column("prompt_id").to_pylist(), table.column("prompt").to_pylist(), strict=True))
    return [
        (pid, completion_id(text), prompts[pid], text) for pid, text in kl.iter_rows() if spec is None or spec.owns(pid)
    ]


def with_mismatched_pairs(pairs: list[Pair], table: pa.Table, schema: str, spec: ShardSpec, *, file) -> list[Pair]:
    """``pairs`` (``logprobs``' distinct pairs) and the mismatched pairs ``spec`` owns, distinct and sorted by
    the two ids. ``file``: the input folder, named when it cannot give mismatched pairs."""
    if schema != "examples":
        raise PipelineConfigError(
            f"kl_pairs (--kl-pairs) pairs each prompt of an examples table with another prompt's answer; "
            f"{file} holds a {schema!r} table: run it on the examples folder (from `prefpool ingest`)"
        )
    every = mismatched_pairs(table)
    if not every and table.num_rows:
        raise PipelineInputError(
            "kl_pairs (--kl-pairs): fewer than two prompts have a non-blank answer, so no prompt can be paired "
            "with another prompt's answer",
            file=file,
            column="answers",
        )
    found = {(pid, cid): (prompt, text) for pid, cid, prompt, text in pairs}
    for pid, cid, prompt, text in every:
        if spec.owns(pid):
            found.setdefault((pid, cid), (prompt, text))
    return [(pid, cid, *found[(pid, cid)]) for pid, cid in sorted(found)]
