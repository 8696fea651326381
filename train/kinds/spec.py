"""What the trainer, ``eval`` and the TRL plug-ins need from a table kind: one ``TrainKind`` each.

A ``TrainKind`` pairs the pipeline's ``TableKind`` (schema, row decoder, the
losses that fit) with the training side: how tokenized rows (``Example``)
become a batch, the batch's per-example loss, which of its sequences carry a
cached reference value (the step-0 check) and the ranking metrics ``eval``
reports. Nothing outside ``train/kinds/`` branches on a kind's name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from prefpool.losses import LossOutput
from prefpool.pipeline.kinds import TableKind
from prefpool.pipeline.model.scoring import TokenPair


@dataclass(frozen=True)
class Example:
    """One row, tokenized: ``answers[0]`` is the preferred answer (see ``TableRow``)."""

    answers: tuple[TokenPair, ...]
    ref_logps: tuple[float, ...]  # the cached reference log-prob of each answer
    label: float = 1.0  # mpo: preference label
    samples: tuple[TokenPair, ...] = ()  # mpo: reference samples (tokenized only when tau > 0)
    scores: tuple[float, ...] | None = None  # each answer's score, when the table carries them (``TableRow``)
    mismatched: TokenPair | None = None  # kto: the row's prompt with another prompt's answer
    ref_mismatched_logp: float = 0.0  # kto: its cached reference log-prob


@dataclass(frozen=True)
class StepOptions:
    """How one micro-batch is run, beside the config: the pad id, the kernel's generator, lockstep,
    and how sequences are scored (``pipeline.model.scoring``)."""

    pad_token_id: int
    generator: torch.Generator | None = None
    # MC-PO's pass 1 runs the same number of forwards in every process (``score_pairs``); needed when
    # the model is sharded over the processes (FSDP, DeepSpeed ZeRO-3).
    lockstep: bool = False
    packing: bool | None = None  # the gradient pass's rows packed end to end (None: where attention is varlen)
    method: str | None = None  # log-probs from "hidden" states or full "logits" (None: hidden where possible)
    # the loss method's running statistics (BCO's reward mean), updated in place; None: the method's initial state
    method_state: dict[str, float] | None = None


# (per-example LossOutput, the chosen answers' log-probs with gradient (B,) or None, their token counts)
KindLoss = tuple[LossOutput, torch.Tensor | None, torch.Tensor | None]


@dataclass(frozen=True)
class TrainKind:
    table: TableKind
    collate: Callable[[Sequence[Example]], Any]
    loss: Callable[[torch.nn.Module, Any, Any, StepOptions], KindLoss]  # (model, batch, TrainConfig, options)
    # every sequence with a cached reference value, and those values (N,) float64: the step-0 check
    cached: Callable[[Any], tuple[list[TokenPair], torch.Tensor]]
    # every sequence one step scores (throughput metric)
    scored: Callable[[Any], list[TokenPair]]
    # eval: ranking metrics from per-row log-ratios (1 + M,), preferred first
    ranking: Callable[..., dict]
    # does training tokenize the reference samples (mpo with tau > 0)?
    needs_samples: Callable[[Any], bool] = lambda cfg: False

    @property
    def name(self) -> str:
        return self.table.name
