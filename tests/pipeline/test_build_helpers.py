"""Hand-made input tables for the build/push tests, written through the real stage writer.

The log-prob values are made up (the real `logprobs` stage needs a model): a
deterministic function of the text, so a test can predict them.
"""

from __future__ import annotations

import random
from pathlib import Path

from prefpool.pipeline.io.ids import completion_id, normalize_messages, prompt_id
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.io.stage_run import StageRun, plan_units

CACHE_KEY = "test-cache-key"


def fake_logp(text: str) -> float:
    """A made-up reference log-prob: -(number of characters) / 10."""
    return -len(text) / 10


def write_rows(
    folder: Path, schema: str, rows: list[dict], *, stage: str | None = None, rows_per_unit: int = 2
) -> Path:
    """Write ``rows`` in the given order (not sorted: build must not depend on it)."""
    run = StageRun(
        folder,
        stage=stage or schema,
        schema=schema,
        config={"test": True},
        inputs={"made_up": schema},
        rows_per_unit=rows_per_unit,
    )
    import pyarrow as pa

    from prefpool.pipeline.io.schemas import get_schema

    units = plan_units(rows, key_of=lambda r: repr(sorted(r.items())), rows_per_unit=rows_per_unit)
    for unit in run.pending(units):
        run.write(unit, pa.Table.from_pylist(list(unit.items), schema=get_schema(schema)))
    run.finish()
    return folder


def example(text: str, answers: list[tuple[str, float | None, int | None]], pairs=()) -> dict:
    messages = normalize_messages(text)
    return {
        "prompt_id": prompt_id(messages),
        "prompt": messages,
        "answers": [{"text": t, "score": s, "rank": r, "source": None} for t, s, r in answers],
        "pairs": [{"chosen": c, "rejected": r} for c, r in pairs],
        "source": "test",
    }


def candidates_row(ex: dict, samples: list[str]) -> dict:
    return {
        "prompt_id": ex["prompt_id"],
        "prompt": ex["prompt"],
        "samples": [
            {"text": t, "seed": i, "finish_reason": "stop", "num_tokens": len(t.split())} for i, t in enumerate(samples)
        ],
    }


def logprob_rows(examples: list[dict], candidates: list[dict] = (), *, skip: set[str] = frozenset()) -> list[dict]:
    """One made-up logprobs row per distinct (prompt_id, text), except texts in ``skip``."""
    seen, rows = set(), []
    for ex in examples:
        texts = [a["text"] for a in ex["answers"]]
        texts += [s["text"] for c in candidates if c["prompt_id"] == ex["prompt_id"] for s in c["samples"]]
        for text in texts:
            key = (ex["prompt_id"], completion_id(text))
            if text in skip or key in seen:
                continue
            seen.add(key)
            rows.append(
                {
                    "prompt_id": ex["prompt_id"],
                    "completion_id": key[1],
                    "logp": fake_logp(text),
                    "num_tokens": len(text.split()),
                    "truncated": False,
                    "token_logps": None,
                    "cache_key": CACHE_KEY,
                }
            )
    return rows


def shuffled(rows: list[dict], seed: int) -> list[dict]:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows


def rows_of(folder: Path) -> list[dict]:
    return read_table(folder).to_pylist()
