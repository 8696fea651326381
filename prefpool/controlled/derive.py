"""Training tables derived from an ``mcpo`` build output, for the experiments' baselines.

Some baselines need a table the ``build`` stage has no policy for: DPO with
the max-margin rejected answer (lowest *true* reward in the pool, which only
this task knows), a pool with a garbage answer added, and pairwise / MPO
tables whose pairs are the mcpo table's preferred answer against one fixed
random pool member. MPO's reference samples are not taken from the mcpo
table: its pool is the samples ranked *below* the annotator's pick, with
duplicates merged (filtered by reward, not i.i.d.), whereas MPO's tau term
(Jiang et al. 2023, eq. 33) needs ``y ~ pi_ref``; ``reference_samples`` reads
every sample the ``generate`` stage drew for each prompt, in draw order,
duplicates kept, preferred answer included. ``derive_table`` writes such a table as a stage output
(shards + manifest through ``StageRun``) whose manifest keeps the source's
logprobs inputs, so ``prefpool train`` checks its cache key as for any built
table, and its step-0 check compares the policy with every reference
log-prob it meets in the first batch, derived rows included.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import torch

from prefpool.core.errors import InputError
from prefpool.pipeline.io.ids import completion_id
from prefpool.pipeline.io.manifest import load_manifest
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.io.schemas import get_schema
from prefpool.pipeline.io.stage_run import StageRun, plan_units
from prefpool.pipeline.kinds.inputs import fingerprint
from prefpool.pipeline.model.scoring import completion_logps
from prefpool.pipeline.model.tokenize import encode_pair

from .task import true_reward

Row = dict
ROWS_PER_UNIT = 50_000


def derive_table(
    source: str | Path, out: str | Path, *, kind: str, name: str, transform: Callable[[Row], Row | None]
) -> Path:
    """Write ``transform(row)`` for every row of the ``mcpo`` table ``source`` (``None`` drops it)
    as a ``kind`` table in ``out``; ``name`` describes the transform in the manifest."""
    manifest = load_manifest(source)
    if manifest is None or manifest.identity.schema != "mcpo":
        raise InputError(f"{source}: not an mcpo build output")
    inputs = dict(manifest.identity.inputs)
    inputs["derived_from"] = fingerprint(source, "mcpo")
    rows = [r for r in (transform(row) for row in read_table(source).to_pylist()) if r is not None]
    run = StageRun(
        out,
        stage="build",
        schema=kind,
        config={**manifest.identity.config, "kind": kind, "derived": name},
        inputs=inputs,
        rows_per_unit=ROWS_PER_UNIT,
        overwrite=True,
    )
    schema = get_schema(kind)
    for unit in run.pending(plan_units(rows, key_of=lambda r: r["prompt_id"], rows_per_unit=ROWS_PER_UNIT)):
        run.write(unit, pa.Table.from_pylist(list(unit.items), schema=schema))
    run.finish()
    return Path(out)


def _pool_subset(row: Row, keep: list[int]) -> Row:
    keys = ("pool", "pool_ids", "ref_pool_logps", "pool_num_tokens")
    scores = row.get("pool_scores")
    return {
        **row,
        **{k: [row[k][i] for i in keep] for k in keys},
        "pool_scores": None if scores is None else [scores[i] for i in keep],
    }


def max_margin(row: Row) -> Row:
    """The pool cut to its lowest-true-reward member (the first of equals)."""
    rewards = [true_reward(t) for t in row["pool"]]
    return _pool_subset(row, [rewards.index(min(rewards))])


def random_pair_index(row: Row, seed: int) -> int:
    """One fixed pool member per prompt and seed."""
    return random.Random(f"{seed}:{row['prompt_id']}").randrange(len(row["pool"]))


def as_pair(row: Row, seed: int) -> Row:
    """A pairwise row: the preferred answer against one fixed random pool member."""
    j = random_pair_index(row, seed)
    return {
        "prompt_id": row["prompt_id"],
        "prompt": row["prompt"],
        "chosen": [{"role": "assistant", "content": row["preferred"]}],
        "rejected": [{"role": "assistant", "content": row["pool"][j]}],
        "ref_chosen_logps": row["ref_preferred_logp"],
        "ref_rejected_logps": row["ref_pool_logps"][j],
        "chosen_id": row["preferred_id"],
        "rejected_id": row["pool_ids"][j],
        "chosen_num_tokens": row["preferred_num_tokens"],
        "rejected_num_tokens": row["pool_num_tokens"][j],
    }


Sample = tuple[str, str, float]  # (text, completion_id, reference log-prob)


def reference_samples(generate: str | Path, logprobs: str | Path) -> dict[str, list[Sample]]:
    """``prompt_id`` -> every sample the ``generate`` stage drew from the reference for it, in draw
    order, as ``(text, completion_id, reference log-prob)``: i.i.d. draws from ``pi_ref``, so
    duplicates are kept and nothing is filtered by reward. The log-probs come from the ``logprobs``
    stage's output over that ``generate`` folder (joined by prompt_id and completion_id)."""
    cached = {
        (r["prompt_id"], r["completion_id"]): r["logp"]
        for r in read_table(logprobs, schema="logprobs").select(["prompt_id", "completion_id", "logp"]).to_pylist()
    }
    out: dict[str, list[Sample]] = {}
    for row in read_table(generate, schema="candidates").select(["prompt_id", "samples"]).to_pylist():
        samples = []
        for sample in row["samples"]:
            cid = completion_id(sample["text"])
            if (row["prompt_id"], cid) not in cached:
                raise InputError(f"{logprobs}: no reference log-prob for a sample of prompt_id {row['prompt_id']}")
            samples.append((sample["text"], cid, cached[(row["prompt_id"], cid)]))
        out[row["prompt_id"]] = samples
    return out


def as_mpo(row: Row, seed: int, samples: dict[str, list[Sample]]) -> Row:
    """An MPO row: ``as_pair``'s pair, label 1, and as the reference samples of the tau term the
    prompt's i.i.d. samples from the reference (``reference_samples``), not the mcpo pool."""
    drawn = samples.get(row["prompt_id"])
    if not drawn:
        raise InputError(f"prompt_id {row['prompt_id']}: no reference samples in the generate output")
    return {
        **as_pair(row, seed),
        "label": 1.0,
        "ref_samples": [text for text, _, _ in drawn],
        "ref_sample_ids": [cid for _, cid, _ in drawn],
        "ref_sample_logps": [logp for _, _, logp in drawn],
    }


class GarbageAdder:
    """Adds one garbage answer (a fixed string of the language's words in no grammar) to every pool,
    with its reference log-prob computed as the logprobs stage computes it (shared tokenization)."""

    TEXT = "the the and . very so the and ."

    def __init__(self, reference: str | Path, table: str | Path) -> None:
        """``table``: the mcpo table it will extend; its reference cache gives max_length and truncation."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from prefpool.pipeline.kinds.source import open_table
        from prefpool.train.cache_check import cache_parts

        cache = cache_parts(open_table(table))
        self.max_length, self.truncation = int(cache["max_length"]), str(cache["truncation"])
        self.tokenizer = AutoTokenizer.from_pretrained(reference)
        self.model = AutoModelForCausalLM.from_pretrained(reference, dtype=torch.float32).eval()

    @torch.inference_mode()
    def __call__(self, row: Row) -> Row:
        enc = encode_pair(
            self.tokenizer, row["prompt"], self.TEXT, max_length=self.max_length, truncation=self.truncation
        )
        logp, count = completion_logps(self.model, [(enc.prompt_ids, enc.completion_ids)], self.tokenizer.pad_token_id)
        return {
            **row,
            "pool": [*row["pool"], self.TEXT],
            "pool_ids": [*row["pool_ids"], completion_id(self.TEXT)],
            "ref_pool_logps": [*row["ref_pool_logps"], float(logp.double()[0])],
            "pool_num_tokens": [*row["pool_num_tokens"], int(count[0])],
            # the garbage answer has no score: the row's answers are no longer all scored
            "preferred_score": None,
            "pool_scores": None,
        }


def garbage_only(row: Row) -> Row:
    """After ``GarbageAdder``: the pool cut to the garbage answer (DPO using it as the rejected one)."""
    return _pool_subset(row, [len(row["pool"]) - 1])
