"""Train with ``prefpool.train.Trainer`` and probe the policy every few steps.

The trainer runs exactly as ``prefpool train`` runs it (no reference model;
the cached log-probs only); between segments of ``every`` optimizer steps the
in-memory policy is handed to a ``Probe``. Probe time is not training time:
each record carries ``train_seconds``, the optimizer steps' wall time so far,
so methods can be compared at equal steps and at equal wall time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefpool.train.config import TrainConfig
from prefpool.train.metrics import read_metrics
from prefpool.train.trainer import Trainer

from .probe import Probe

PROBE_LOG = "probe.jsonl"


def train_with_probe(cfg: TrainConfig, probe: Probe, *, every: int, log=print, label: str | None = None) -> list[dict]:
    """Train ``cfg``; probe at step 0, every ``every`` steps and at the end. Writes
    ``output_dir/probe.jsonl`` (one record per probe) and returns the records."""
    if every < 1:
        raise ValueError(f"every: must be >= 1, got {every}")
    trainer = Trainer(cfg)
    model = trainer.accelerator.unwrap_model(trainer.model)
    name = label or Path(cfg.output_dir).name
    records: list[dict] = []
    train_seconds = 0.0
    path = Path(cfg.output_dir) / PROBE_LOG
    with open(path, "w") as out:
        while True:
            step = trainer.state.step
            record = {"step": step, "train_seconds": round(train_seconds, 3), **probe.measure(model)}
            records.append(record)
            out.write(json.dumps(record) + "\n")
            out.flush()
            if log:
                log(
                    f"  {name:<12} step {step:>4}  true reward {record['reward']:+.3f}  "
                    f"KL {record['kl']:6.3f}  ({train_seconds:.1f} s training)"
                )
            if step >= trainer.total_steps:
                break
            start = time.perf_counter()
            trainer.run(stop_after=min(step + every, trainer.total_steps))
            train_seconds += time.perf_counter() - start
    return records


def kernel_summary(output_dir: str | Path) -> dict:
    """What the MC-PO kernel did in a finished run, from its ``metrics.jsonl`` (means over the steps).

    ``kl_uniform``: KL of the kernel to uniform over its support (``mcpo/kernel_kl_uniform``; near 0:
    the kernel picks about as a uniform draw would), also at the first and last step;
    ``chosen_drawn``: the fraction of draws that were the preferred answer y0 (``mcpo/chosen_drawn``;
    such a draw contributes no gradient); ``chosen_prob``: the kernel's mean probability of y0.
    """
    steps = read_metrics(Path(output_dir) / "metrics.jsonl")
    mean = lambda name: sum(r[name] for r in steps) / len(steps)  # noqa: E731
    return {
        "kl_uniform": mean("mcpo/kernel_kl_uniform"),
        "kl_uniform_first": steps[0]["mcpo/kernel_kl_uniform"],
        "kl_uniform_last": steps[-1]["mcpo/kernel_kl_uniform"],
        "chosen_drawn": mean("mcpo/chosen_drawn"),
        "chosen_prob": mean("mcpo/kernel_chosen_prob"),
    }
