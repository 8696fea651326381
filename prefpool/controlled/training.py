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
