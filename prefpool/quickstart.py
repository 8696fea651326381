"""`prefpool quickstart`: MC-PO against a random-negative baseline on a tiny local model.

Everything is made here, offline, on the CPU: a tiny Llama with a locally
trained tokenizer, the toy task of ``prefpool.toy_task`` (repeat a word; four
rule-breaking answers per prompt), reference log-probs cached once from the
initial weights. Then, from the same initial weights, one run per kernel:
``sample`` (MC-PO's hard negatives) and ``uniform`` (DPO with a random rejected
answer). No reference model is held during training.

Writes ``OUT/metrics-<kernel>.jsonl`` (one line per step) and ``OUT/summary.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefpool.tiny_model import build_tiny_llama
from prefpool.toy_task import (
    cache_reference_logps,
    collate,
    encode_example,
    make_examples,
    mcpo_batch_loss,
)


@dataclass(frozen=True)
class QuickstartConfig:
    out_dir: str = "runs/quickstart"
    steps: int = 40
    seed: int = 0
    batch_size: int = 4
    lr: float = 1e-3
    beta: float = 0.3
    kernels: tuple[str, ...] = ("sample", "uniform")


@torch.no_grad()
def pool_accuracy(model, features: list[dict], pad: int, beta: float) -> float:
    """Fraction of prompts whose preferred answer out-scores every pool answer (implicit reward)."""
    model.eval()
    batch = collate(features, pad)
    out = mcpo_batch_loss(model, batch, beta=beta, generator=None, kernel="max")
    model.train()
    return out.metrics["mcpo/pool_accuracy"].mean().item()


def _train_one(model_dir: Path, features: list[dict], pad: int, kernel: str,
               cfg: QuickstartConfig, log_path: Path) -> dict:
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)  # the same initial weights every run
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    order_rng = torch.Generator().manual_seed(cfg.seed)
    kernel_rng = torch.Generator().manual_seed(cfg.seed + 1)
    order: list[int] = []
    start = time.perf_counter()
    with open(log_path, "w") as log:
        for step in range(cfg.steps):
            if len(order) < cfg.batch_size:
                order = torch.randperm(len(features), generator=order_rng).tolist()
            picked, order = order[: cfg.batch_size], order[cfg.batch_size:]
            out = mcpo_batch_loss(model, collate([features[i] for i in picked], pad),
                                  beta=cfg.beta, generator=kernel_rng, kernel=kernel)
            loss = out.loss.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            record = {"step": step, "loss": loss.item(),
                      **{k: v.float().mean().item() for k, v in out.metrics.items()}}
            log.write(json.dumps(record) + "\n")
    return {
        "kernel": kernel,
        "final_loss": record["loss"],
        "pool_accuracy": pool_accuracy(model, features, pad, cfg.beta),
        "seconds": round(time.perf_counter() - start, 1),
    }


def run_quickstart(cfg: QuickstartConfig = QuickstartConfig()) -> dict:
    """Run the demo; return the summary that is also written to ``summary.json``."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    transformers.utils.logging.disable_progress_bar()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = build_tiny_llama(out / "tiny-llama", seed=cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad = tokenizer.pad_token_id
    features = [encode_example(tokenizer, ex) for ex in make_examples(seed=cfg.seed)]

    reference = AutoModelForCausalLM.from_pretrained(model_dir)
    features = cache_reference_logps(reference, features, pad)  # the reference is numbers from here on
    before = pool_accuracy(reference, features, pad, cfg.beta)
    del reference

    runs = []
    for kernel in cfg.kernels:
        runs.append(_train_one(model_dir, features, pad, kernel, cfg,
                               out / f"metrics-{kernel}.jsonl"))
        print(f"  kernel={kernel:<8} final loss {runs[-1]['final_loss']:.4f}  "
              f"pool accuracy {runs[-1]['pool_accuracy']:.2f}  ({runs[-1]['seconds']} s)", flush=True)
    summary = {"config": asdict(cfg), "pool_accuracy_before": before, "runs": runs}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"pool accuracy (all {len(features)} toy prompts) before training: {before:.2f}; "
          f"metrics and summary in {out}/")
    return summary
