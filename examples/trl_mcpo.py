"""MC-PO inside TRL's DPOTrainer, from a prefpool ``build --kind mcpo`` table.

    python examples/trl_mcpo.py --model MODEL_DIR --data BUILD_MCPO_DIR --max-steps 100

Without ``--model``/``--data`` it builds a tiny model and a small demo table
(reference values = the tiny model's own log-probs) under ``--work-dir``, so it
runs anywhere in a few seconds. Use ``--max-length`` equal to the logprobs
stage's ``max_length``: the cached reference values were computed on tokens cut there.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pyarrow as pa
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefpool.pipeline.io.ids import completion_id, normalize_messages, prompt_id
from prefpool.pipeline.io.schemas import get_schema
from prefpool.pipeline.io.stage_run import StageRun, plan_units
from prefpool.pipeline.model.cache_key import cache_components, cache_key_of, weights_hash
from prefpool.pipeline.model.scoring import score_pairs
from prefpool.pipeline.model.tokenize import encode_pair
from prefpool.testing import build_tiny_llama
from prefpool.train.trl_plugin import MCPOConfig, MCPODPOTrainer, mcpo_dataset

DEMO = [
    ("what does the cat do", "the cat likes the river", ["a dog sees", "the model writes a bird"]),
    ("tell me about a dog", "a dog hears our team", ["the robot", "my friend reads"]),
    ("say something", "the child counts", ["our team moves", "the teacher finds"]),
]


def demo_table(model_dir: Path, out: Path, max_length: int) -> Path:
    """A small mcpo table in the build stage's schema, scored by the model in ``model_dir``."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).float().eval()
    rows = []
    for text, preferred, pool in DEMO:
        prompt = normalize_messages(text)
        encs = [encode_pair(tok, prompt, t, max_length=max_length) for t in [preferred, *pool]]
        logps = score_pairs(model, [(e.prompt_ids, e.completion_ids) for e in encs], tok.pad_token_id).tolist()
        rows.append(
            {
                "prompt_id": prompt_id(prompt),
                "prompt": prompt,
                "preferred": preferred,
                "preferred_id": completion_id(preferred),
                "ref_preferred_logp": logps[0],
                "preferred_num_tokens": len(encs[0].completion_ids),
                "pool": pool,
                "pool_ids": [completion_id(t) for t in pool],
                "ref_pool_logps": logps[1:],
                "pool_num_tokens": [len(e.completion_ids) for e in encs[1:]],
            }
        )
    # What the logprobs stage records, so the trainer's cache check has every part to compare.
    cache = cache_components(
        weights_hash(model_dir), tok, max_length=max_length, truncation="completion", dtype="float32"
    )
    inputs = {"logprobs": [{"identity": {"config": {"cache": cache, "cache_key": cache_key_of(cache)}}}]}
    run = StageRun(
        out,
        stage="build",
        schema="mcpo",
        config={"kind": "mcpo", "demo": True},
        inputs=inputs,
        rows_per_unit=len(rows),
        overwrite=True,
    )
    for unit in run.pending(plan_units(rows, key_of=lambda r: r["prompt_id"], rows_per_unit=len(rows))):
        run.write(unit, pa.Table.from_pylist(list(unit.items), schema=get_schema("mcpo")))
    run.finish()
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="policy (= reference) model folder; default: a tiny demo model")
    parser.add_argument("--data", help="build --kind mcpo output folder; default: a demo table")
    parser.add_argument("--work-dir", default="runs/trl_mcpo")
    parser.add_argument("--kernel", default="sample")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--max-steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work_dir)
    model_dir = Path(args.model) if args.model else build_tiny_llama(work / "model", seed=0)
    data = Path(args.data) if args.data else demo_table(model_dir, work / "build_mcpo", args.max_length)

    config = MCPOConfig(
        output_dir=str(work / "out"),
        mcpo_kernel=args.kernel,
        beta=args.beta,
        max_length=args.max_length,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.max_steps,
        learning_rate=args.lr,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = MCPODPOTrainer(
        AutoModelForCausalLM.from_pretrained(model_dir),
        args=config,
        train_dataset=mcpo_dataset(data),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )
    result = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    summary = {
        "global_step": result.global_step,
        "loss": result.training_loss,
        "first_loss": losses[0] if losses else math.nan,
        "last_loss": losses[-1] if losses else math.nan,
    }
    print(summary)
    return summary


if __name__ == "__main__":
    main()
