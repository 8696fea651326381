"""MC-PO inside ``transformers.Trainer``, with reference log-probs cached once.

    python examples/mcpo_hf_trainer.py --steps 60

The same toy task as mcpo_plain_pytorch.py. The Trainer needs three things:
a ``compute_loss`` override that calls ``prefpool.losses.mcpo_loss``, a data
collator that pads the chosen and candidate sequences and carries the cached
reference log-probs, and ``remove_unused_columns=False`` so those columns
reach the collator. There is no reference model: the initial weights score the
data once, before the Trainer is built, and training reads the numbers.
"""

from __future__ import annotations

import argparse
import functools
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
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from prefpool.testing import build_tiny_llama


class MCPOTrainer(Trainer):
    """A ``Trainer`` whose loss is MC-PO against cached reference log-probs."""

    def __init__(self, *args, beta: float, kernel_seed: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.beta = beta
        # The sample kernel's draws; on a GPU run, create it on the model's device.
        self.kernel_rng = torch.Generator().manual_seed(kernel_seed)
        # Our loss is already a per-batch mean: let the Trainer divide it by the
        # gradient-accumulation steps as it does for losses that take no item count.
        self.model_accepts_loss_kwargs = False
        self._reward_acc: list[float] = []
        self._pool_acc: list[float] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = mcpo_batch_loss(model, inputs, beta=self.beta, generator=self.kernel_rng)
        loss = out.loss.mean()
        self._reward_acc.append(out.metrics["rewards/accuracies"].mean().item())
        self._pool_acc.append(out.metrics["mcpo/pool_accuracy"].mean().item())
        return (loss, out.metrics) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        # Add the reward accuracy of the steps since the last log to the training logs.
        if "loss" in logs and self._reward_acc:
            logs["rewards/accuracies"] = sum(self._reward_acc) / len(self._reward_acc)
            logs["pool_accuracy"] = sum(self._pool_acc) / len(self._pool_acc)
            self._reward_acc.clear()
            self._pool_acc.clear()
        super().log(logs, *args, **kwargs)


def train(
    model_dir: Path, output_dir: Path, *, steps: int, seed: int, batch_size: int, lr: float, beta: float
) -> list[dict]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    pad = tokenizer.pad_token_id

    features = [encode_example(tokenizer, ex) for ex in make_examples(seed=seed)]
    # The initial weights are the reference: score the data once, keep the numbers.
    features = cache_reference_logps(model, features, pad)

    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        remove_unused_columns=False,  # the collator needs the cached reference columns
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=seed,
    )
    trainer = MCPOTrainer(
        model=model,
        args=args,
        train_dataset=features,
        data_collator=functools.partial(collate, pad_token_id=pad),
        beta=beta,
        kernel_seed=seed,
    )
    trainer.train()
    keys = ("loss", "pool_accuracy")
    return [{k: entry[k] for k in keys} for entry in trainer.state.log_history if "loss" in entry]


def main(
    steps: int = 60,
    out_dir: str | Path | None = None,
    seed: int = 0,
    *,
    batch_size: int = 4,
    lr: float = 1e-3,
    beta: float = 0.3,
) -> list[dict]:
    """Build the tiny model under ``out_dir`` (a temp dir if None), train; per logged step: loss, pool accuracy."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(out_dir or tmp)
        model_dir = build_tiny_llama(root / "tiny-llama", seed=seed)
        return train(model_dir, root / "trainer", steps=steps, seed=seed, batch_size=batch_size, lr=lr, beta=beta)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument(
        "--out-dir", default=None, help="where to write the model and trainer output (default: a temp dir)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beta", type=float, default=0.3)
    args = parser.parse_args()
    main(args.steps, args.out_dir, args.seed, batch_size=args.batch_size, lr=args.lr, beta=args.beta)
