"""One micro-batch's per-example loss ``(B,)`` and its step-0 log-probs, for any table kind.

The kind's spec (``train.kinds``) computes the loss; the NLL term on the
preferred answer (``nll_alpha``, RPO) is added here for every kind.
"""

from __future__ import annotations

import torch

from prefpool.losses import LossOutput, add_chosen_nll
from prefpool.pipeline.model.scoring import completion_logps

from .config import TrainConfig
from .kinds import PairBatch, PoolBatch, StepOptions, train_kind


def batch_loss(
    model,
    batch: PairBatch | PoolBatch,
    cfg: TrainConfig,
    *,
    pad_token_id: int,
    generator: torch.Generator | None,
    lockstep: bool = False,
    method_state: dict[str, float] | None = None,
) -> LossOutput:
    """Per-example loss ``(B,)`` with gradient, and the loss's detached metrics.

    ``lockstep``: MC-PO's pass 1 runs the same number of forwards in every process (``score_pairs``);
    needed when the model is sharded over the processes (FSDP, DeepSpeed ZeRO-3). ``method_state``:
    the method's running statistics, updated in place (None: start from the method's initial state)."""
    options = step_options(
        cfg, pad_token_id=pad_token_id, generator=generator, lockstep=lockstep, method_state=method_state
    )
    out, chosen, chosen_tokens = train_kind(batch.kind).loss(model, batch, cfg, options)
    if cfg.nll_alpha > 0:
        if chosen is None:  # the step keeps its chosen log-probs inside: one more forward, with gradient
            chosen, chosen_tokens = completion_logps(
                model, list(batch.chosen), pad_token_id, packing=options.packing, method=options.method
            )
        out = add_chosen_nll(out, chosen, chosen_tokens, alpha=cfg.nll_alpha)
    return out


PACKING = {"auto": None, "on": True, "off": False}


def step_options(cfg: TrainConfig, **fields) -> StepOptions:
    """``StepOptions`` with the config's scoring choices (``packing``, ``logprobs_from``)."""
    method = None if cfg.logprobs_from == "auto" else cfg.logprobs_from
    return StepOptions(packing=PACKING[cfg.packing], method=method, **fields)


@torch.no_grad()
def step0_difference(model, batch: PairBatch | PoolBatch, cfg: TrainConfig, *, pad_token_id: int) -> float:
    """Largest ``|policy - cached reference|`` log-prob over every answer of ``batch``, in nats, scored
    by the gradient pass's own function (``completion_logps``, the config's packing and head)."""
    options = step_options(cfg, pad_token_id=pad_token_id)
    pairs, ref = train_kind(batch.kind).cached(batch)
    logps, _ = completion_logps(model, pairs, pad_token_id, packing=options.packing, method=options.method)
    return float((logps.double().cpu() - ref).abs().max())
