"""Training tables for the trainer tests, made by the real stages: ingest -> logprobs -> build.

Task (learnable by a tiny model): "Repeat the word X." The best answer is X;
worse answers are X in capitals, X reversed, another word (ranks 2..4). The
MPO reference samples are written as a `candidates` table (hand-made texts, so
no generation run is needed) and scored by the real `logprobs` stage.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pytest
from safetensors.torch import load_file

from prefpool.pipeline.build import build
from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.io.schemas import CANDIDATES
from prefpool.pipeline.io.stage_run import StageRun, plan_units
from prefpool.pipeline.logprobs import logprobs
from prefpool.pipeline.score import score
from prefpool.train.metrics import read_metrics

WORDS = ("apple", "river", "stone", "cloud", "green", "house", "light", "music")
MAX_LENGTH = 64


def write_examples(root: Path) -> Path:
    rng = random.Random(0)
    lines = []
    for word in WORDS:
        other = rng.choice([w for w in WORDS if w != word])
        answers = [(word, 1), (word.upper(), 2), (word[::-1], 3), (other, 4)]
        lines.append({"prompt": f"Repeat the word {word}.", "answers": [{"text": t, "rank": r} for t, r in answers]})
    src = root / "toy.jsonl"
    src.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = root / "examples"
    ingest(src, format="ranked", out=out)
    return out


def write_candidates(root: Path, examples: Path) -> Path:
    rows = []
    for row in read_table(examples).to_pylist():
        word = row["answers"][0]["text"]
        texts = [f"{word} {word}", word.capitalize()]
        rows.append(
            {
                "prompt_id": row["prompt_id"],
                "prompt": row["prompt"],
                "samples": [
                    {"text": t, "seed": i, "finish_reason": "stop", "num_tokens": 2} for i, t in enumerate(texts)
                ],
            }
        )
    out = root / "candidates"
    run = StageRun(
        out, stage="generate", schema="candidates", config={"test": True}, inputs={"hand_made": True}, rows_per_unit=64
    )
    for unit in run.pending(plan_units(rows, key_of=lambda r: r["prompt_id"], rows_per_unit=64)):
        run.write(unit, pa.Table.from_pylist(list(unit.items), schema=CANDIDATES))
    run.finish()
    return out


def word_reward(prompt: list[dict], text: str) -> float:
    """The task's reward, for `prefpool score`: 3 for the word, 2 in capitals, 1 reversed, 0 else."""
    word = prompt[0]["content"].split()[-1].rstrip(".")
    return {word: 3.0, word.upper(): 2.0, word[::-1]: 1.0}.get(text, 0.0)


def make_tables(root: Path, model: Path) -> dict[str, Path]:
    """``{"pairwise", "mcpo", "mpo", "mcpo_scored"}`` build outputs whose reference log-probs come from
    ``model``; ``mcpo_scored`` is ranked by `prefpool score`'s ``word_reward`` and carries the scores."""
    root.mkdir(parents=True, exist_ok=True)
    examples = write_examples(root)
    candidates = write_candidates(root, examples)
    lp = [root / "lp-examples", root / "lp-candidates"]
    logprobs(examples, model=model, out=lp[0], max_length=MAX_LENGTH, show_progress=False)
    logprobs(candidates, model=model, out=lp[1], max_length=MAX_LENGTH, show_progress=False)
    scores = score(examples, out=root / "scores", reward_fn=f"{__file__}:word_reward").out
    return {
        "pairwise": build("pairwise", examples=examples, logprobs=lp[0], out=root / "pairwise").out,
        "mcpo": build("mcpo", examples=examples, logprobs=lp[0], out=root / "mcpo").out,
        "mpo": build("mpo", examples=examples, logprobs=lp, candidates=candidates, out=root / "mpo").out,
        "mcpo_scored": build("mcpo", examples=examples, logprobs=lp[0], scores=scores, out=root / "mcpo-scored").out,
    }


def distributed_settings(world: dict, kind: str, loss: str, out, **kw) -> dict:
    """TrainConfig fields of the multi-process tests (DDP, FSDP): AdamW with clipping and warmup, so
    the clip (global norm after all-reduce) and the schedule must agree too; 8 rows at global batch 4,
    so step 3 starts the second epoch."""
    base = dict(
        model=str(world["model"]),
        data=str(world[kind]),
        output_dir=str(out),
        loss=loss,
        max_length=MAX_LENGTH,
        lr=1e-3,
        beta=0.5,
        max_steps=3,
        warmup_steps=1,
        max_grad_norm=0.5,
        progress=False,
    )
    return {**base, **kw}


def assert_same_training(one_dir: Path, two_dir: Path, steps: tuple[int, ...] = (1, 2, 3)) -> None:
    """The runs in ``one_dir`` and ``two_dir`` logged the same ``steps`` (``two_dir`` exactly those)
    with equal metrics up to float32 all-reduce rounding, and saved the same final weights."""
    one = [r for r in read_metrics(one_dir / "metrics.jsonl") if r["step"] in steps]
    two = read_metrics(two_dir / "metrics.jsonl")
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(steps)
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["rewards/accuracies"] == pytest.approx(a["rewards/accuracies"], abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert b["lr"] == a["lr"]
    w1, w2 = load_file(one_dir / "model.safetensors"), load_file(two_dir / "model.safetensors")
    assert w1.keys() == w2.keys()
    worst = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert worst < 1e-5, worst
