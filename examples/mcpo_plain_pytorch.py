"""MC-PO in a plain PyTorch loop, with reference log-probs cached once.

    python examples/mcpo_plain_pytorch.py --steps 60

Builds a tiny random Llama locally, caches the reference log-probs of the
toy task (see toy_task.py) from the initial weights, then trains that same
model with ``prefpool.losses.mcpo_loss``. Only one model exists at any time:
the reference is a column of numbers, not a second network.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from toy_task import (
    cache_reference_logps,
    collate,
    encode_example,
    make_examples,
    mcpo_batch_loss,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefpool.testing import build_tiny_llama


def train(model_dir: Path, *, steps: int, seed: int, batch_size: int, lr: float, beta: float) -> list[dict]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    pad = tokenizer.pad_token_id

    features = [encode_example(tokenizer, ex) for ex in make_examples(seed=seed)]
    # The initial weights are the reference: score the data once, keep the numbers.
    features = cache_reference_logps(model, features, pad)

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    order_rng = torch.Generator().manual_seed(seed)
    kernel_rng = torch.Generator().manual_seed(seed)  # the sample kernel's draws
    order: list[int] = []
    history = []
    for step in range(steps):
        if len(order) < batch_size:  # a new epoch: reshuffle
            order = torch.randperm(len(features), generator=order_rng).tolist()
        picked, order = order[:batch_size], order[batch_size:]
        batch = collate([features[i] for i in picked], pad)

        out = mcpo_batch_loss(model, batch, beta=beta, generator=kernel_rng)
        loss = out.loss.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Clip at 1.0 like transformers.Trainer, so the two examples train alike.
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

        acc = out.metrics["rewards/accuracies"].mean().item()
        # The paper's kernel also draws the preferred answer (a constant log 2, no gradient), ever more often
        # as it wins, so the sampled loss stays near log 2; pool_acc (preferred above every candidate) shows
        # the learning.
        pool_acc = out.metrics["mcpo/pool_accuracy"].mean().item()
        history.append({"loss": loss.item(), "pool_accuracy": pool_acc})
        print(f"step {step:3d}  loss {loss.item():.4f}  reward_acc {acc:.2f}  pool_acc {pool_acc:.2f}", flush=True)
    return history


# beta 0.3 rather than the usual 0.1: a random tiny model must move its log-probs
# by fewer nats to separate the answers, so it visibly learns within 60 steps.
def main(
    steps: int = 60,
    out_dir: str | Path | None = None,
    seed: int = 0,
    *,
    batch_size: int = 4,
    lr: float = 1e-3,
    beta: float = 0.3,
) -> list[dict]:
    """Build the tiny model under ``out_dir`` (a temp dir if None), train; per step: loss, pool accuracy."""
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_llama(Path(out_dir or tmp) / "tiny-llama", seed=seed)
        return train(model_dir, steps=steps, seed=seed, batch_size=batch_size, lr=lr, beta=beta)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out-dir", default=None, help="where to write the tiny model (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beta", type=float, default=0.3)
    args = parser.parse_args()
    main(args.steps, args.out_dir, args.seed, batch_size=args.batch_size, lr=args.lr, beta=args.beta)
