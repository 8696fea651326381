"""``prefpool train CONFIG --estimate-memory``: a run's memory floor per step, before any weight is loaded.

The table is read and tokenized by ``train``'s own set-up
(``run_data.open_run_data``: the cache's ``max_length`` and truncation), the
micro-batches are planned as ``train`` plans them (seed, ``group_by_length``),
and each micro-batch's gradient pass gets its ``memory_floor.step_floor``. The model is built on the meta device
from its config: no weights are read. Printed: the floor of the first
micro-batch and of the largest one, by part.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefpool.core.errors import ConfigError

from .config import TrainConfig
from .data import Example
from .lora import with_lora
from .memory_floor import MIB, Shapes, StepFloor, step_floor
from .run_data import open_run_data


@dataclass(frozen=True)
class MemoryEstimate:
    model: str
    parameters: int
    first: StepFloor
    largest: StepFloor
    micro_batches: int

    def report(self) -> str:
        rows = [
            f"train --estimate-memory: {self.model}, {self.parameters / 1e6:,.1f} M parameters; "
            f"the floor of one step by part (memory a step must hold, not a measurement):",
            f"first micro-batch ({self.first.sequences} sequences, {self.first.tokens:,} tokens; "
            f"{self.first.padded_tokens:,} when padded):",
            *self.first.lines(),
            f"largest of {self.micro_batches} micro-batches ({self.largest.sequences} sequences, "
            f"{self.largest.tokens:,} tokens; {self.largest.padded_tokens:,} when padded):",
            *self.largest.lines(),
            f"  (padding the largest to its longest sequence adds "
            f"{_padding_cost(self.largest) / MIB:,.0f} MiB of activations to this floor)",
        ]
        return "\n".join(rows)


# Parts that do not grow with padding: the model's, the checkpointed layer inputs (kept without their padding,
# ``unpadded_checkpoints``) and the log-prob head (it runs on completion positions only).
UNPADDED_PARTS = ("weights", "gradients", "optimizer state", "checkpointed activations", "log-prob head")


def _padding_cost(floor: StepFloor) -> float:
    """What right-padding ``floor``'s sequences to the longest adds: the padding positions' share of the
    parts a padded batch holds for every position (a layer's working set, the token ids)."""
    per_token = sum(v for k, v in floor.parts.items() if k not in UNPADDED_PARTS)
    return per_token / floor.tokens * (floor.padded_tokens - floor.tokens)


def gradient_lengths(kind: str, example: Example, negatives: int) -> list[int]:
    """Token counts of the sequences one row sends through the gradient pass: every answer of a pair
    (and its reference samples); for a pool, y0 and the ``negatives`` longest candidates (the largest
    pass the kernel can pick)."""
    lengths = [len(p) + len(c) for p, c in example.answers]
    samples = [len(p) + len(c) for p, c in (example.samples or ())]
    if kind == "mcpo":
        return [lengths[0], *sorted(lengths[1:], reverse=True)[:negatives]]
    return lengths + samples


def estimate_memory(cfg: TrainConfig) -> MemoryEstimate:
    cfg.check()
    run_data = open_run_data(cfg)
    source, kind = run_data.source, run_data.kind
    table = run_data.table(cfg)
    shapes, trainable = _parameters(source.config(), cfg)
    negatives = getattr(cfg, "num_negatives", 1)
    step_rows = cfg.batch_size * cfg.gradient_accumulation_steps
    micro = table.batches_per_epoch(cfg.batch_size)
    floors = []
    for index in range(micro):
        rows = table.micro_batch(
            cfg.seed, 0, index, batch_size=cfg.batch_size, group_rows=step_rows if cfg.group_by_length else None
        )
        lengths = [n for example in rows for n in gradient_lengths(kind, example, negatives)]
        floors.append(
            step_floor(
                shapes,
                lengths,
                dtype=cfg.dtype,
                trainable=trainable,
                optimizer=cfg.optimizer,
                gradient_checkpointing=cfg.gradient_checkpointing,
            )
        )
    if not floors:
        raise ConfigError(f"{cfg.data}: {len(table)} rows make no micro-batch of {cfg.batch_size} examples")
    return MemoryEstimate(
        model=str(source),
        parameters=shapes.parameters,
        first=floors[0],
        largest=max(floors, key=lambda f: f.total),
        micro_batches=micro,
    )


def _parameters(config, cfg: TrainConfig) -> tuple[Shapes, int]:
    """The model's ``Shapes`` and its trainable parameter count, from the model built on the meta device
    (exact, no memory; tied weights once; LoRA adapters as ``train`` adds them)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
        if cfg.lora_r:
            model = with_lora(model, cfg)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Shapes.of(config, total), trainable
