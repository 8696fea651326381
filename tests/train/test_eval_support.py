"""Helpers (no tests): hand-made build tables whose reference log-probs are a model's own.

A table is written through the pipeline's real writer (``StageRun``) with the
training-table schema, and its manifest's inputs carry a ``logprobs`` fingerprint
with the cache key parts (``cache_components``: tokenizer and chat-template hash,
``max_length``, truncation, dtype, weights hash), as ``build`` records them. The
weights hash is a made-up one (the values are shifted: they are no model's own)
unless a test passes the model's, to claim the model is the reference. The reference values
are the model's own log-probs (``score_pairs`` on ``encode_pair`` tokens) plus a
chosen shift per completion, so every log-ratio ``log pi - log pi_ref`` is
exactly minus that shift (up to float32 batching noise, ~1e-6).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from prefpool.pipeline.io.ids import completion_id, normalize_messages, prompt_id
from prefpool.pipeline.io.schemas import get_schema
from prefpool.pipeline.io.stage_run import StageRun, plan_units
from prefpool.pipeline.model.cache_key import cache_components, cache_key_of, weights_hash
from prefpool.pipeline.model.scoring import score_pairs
from prefpool.pipeline.model.tokenize import encode_pair

MAX_LENGTH = 48


def own_logps(model, tokenizer, prompt: list[dict], texts: list[str], max_length: int = MAX_LENGTH):
    encs = [encode_pair(tokenizer, prompt, t, max_length=max_length) for t in texts]
    logps = score_pairs(model, [(e.prompt_ids, e.completion_ids) for e in encs], tokenizer.pad_token_id)
    return logps.double().tolist(), [len(e.completion_ids) for e in encs]


OTHER_WEIGHTS = "0" * 64  # no model's weights: the cache is "another reference's"


def full_cache(model_dir: Path, tokenizer, max_length: int = MAX_LENGTH) -> dict:
    """The cache-key parts the ``logprobs`` stage records for ``model_dir`` scored in float32."""
    return cache_components(
        weights_hash(model_dir), tokenizer, max_length=max_length, truncation="completion", dtype="float32"
    )


def write_table(
    folder: Path,
    schema: str,
    rows: list[dict],
    *,
    tokenizer=None,
    max_length: int = MAX_LENGTH,
    weights: str = OTHER_WEIGHTS,
    cache: dict | None = None,
) -> Path:
    """``cache``: the cache-key parts to record (``full_cache``: the model's own weights); default: ``tokenizer``'s
    parts with ``weights`` (another reference's)."""
    if cache is None:
        cache = cache_components(weights, tokenizer, max_length=max_length, truncation="completion", dtype="float32")
    inputs = {"logprobs": [{"identity": {"config": {"cache": cache, "cache_key": cache_key_of(cache)}}}]}
    run = StageRun(folder, stage="build", schema=schema, config={"kind": schema}, inputs=inputs, rows_per_unit=2)
    units = plan_units(rows, key_of=lambda r: r["prompt_id"] + repr(r.get("rejected")), rows_per_unit=2)
    for unit in run.pending(units):
        run.write(unit, pa.Table.from_pylist(list(unit.items), schema=get_schema(schema)))
    run.finish()
    return folder


def pairwise_row(
    model, tokenizer, text: str, chosen: str, rejected: str, shifts=(0.0, 0.0), max_length: int = MAX_LENGTH
) -> dict:
    """A pairwise row; ``shifts`` are added to the reference values (log-ratio = -shift)."""
    prompt = normalize_messages(text)
    (lc, lr), (nc, nr) = own_logps(model, tokenizer, prompt, [chosen, rejected], max_length)
    return {
        "prompt_id": prompt_id(prompt),
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "ref_chosen_logps": lc + shifts[0],
        "ref_rejected_logps": lr + shifts[1],
        "chosen_id": completion_id(chosen),
        "rejected_id": completion_id(rejected),
        "chosen_num_tokens": nc,
        "rejected_num_tokens": nr,
    }


def mcpo_row(
    model,
    tokenizer,
    text: str,
    preferred: str,
    pool: list[str],
    shifts: list[float] | None = None,
    max_length: int = MAX_LENGTH,
) -> dict:
    """An mcpo row; ``shifts[0]`` for the preferred answer, then one per pool member."""
    prompt = normalize_messages(text)
    shifts = shifts or [0.0] * (1 + len(pool))
    logps, counts = own_logps(model, tokenizer, prompt, [preferred, *pool], max_length)
    refs = [lp + s for lp, s in zip(logps, shifts, strict=True)]
    return {
        "prompt_id": prompt_id(prompt),
        "prompt": prompt,
        "preferred": preferred,
        "preferred_id": completion_id(preferred),
        "ref_preferred_logp": refs[0],
        "preferred_num_tokens": counts[0],
        "pool": pool,
        "pool_ids": [completion_id(t) for t in pool],
        "ref_pool_logps": refs[1:],
        "pool_num_tokens": counts[1:],
    }
