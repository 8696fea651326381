"""One micro-batch's per-example loss ``(B,)``, by table kind, and the step-0 log-probs.

Pairwise and MPO tables: one forward pass over chosen + rejected (+ the MPO
reference samples when ``tau > 0``) with ``scoring.completion_logps``, then the
loss from ``LOSSES``. MC-PO tables: ``mcpo_step.mcpo_step_loss`` (two passes).
The NLL term (``nll_alpha``, RPO) is added to any of them.
"""

from __future__ import annotations

import torch

from prefpool.losses import LossOutput, add_chosen_nll, get_loss
from prefpool.pipeline.model.scoring import completion_logps

from .config import TrainConfig
from .data import PairBatch
from .mcpo_step import PoolBatch, mcpo_step_loss


def _pair_loss(model, batch: PairBatch, cfg: TrainConfig, pad: int) -> tuple[LossOutput, torch.Tensor, torch.Tensor]:
    size = len(batch.chosen)
    flat_samples = [s for row in batch.samples for s in row]
    logps, counts = completion_logps(model, [*batch.chosen, *batch.rejected, *flat_samples], pad)  # (N,)
    chosen, rejected = logps[:size], logps[size : 2 * size]  # (B,)
    chosen_tokens, rejected_tokens = counts[:size], counts[size : 2 * size]
    device = logps.device
    ref_chosen = batch.ref_chosen_logps.to(device)
    ref_rejected = batch.ref_rejected_logps.to(device)
    loss = get_loss(cfg.loss)
    if cfg.loss == "dpo":
        out = loss(chosen, rejected, ref_chosen, ref_rejected, beta=cfg.beta, label_smoothing=cfg.label_smoothing)
    elif cfg.loss == "ipo":
        out = loss(chosen, rejected, ref_chosen, ref_rejected, beta=cfg.beta)
    elif cfg.loss == "simpo":
        out = loss(
            chosen,
            rejected,
            chosen_tokens,
            rejected_tokens,
            beta=cfg.beta,
            gamma=cfg.gamma,
            label_smoothing=cfg.label_smoothing,
        )
    else:  # mpo: the tau term takes the POLICY's log-probs of the reference samples, with gradient
        sample_logps = sample_mask = None
        if flat_samples:
            width = max(len(row) for row in batch.samples)
            sample_logps = torch.zeros(size, width, dtype=logps.dtype, device=device)  # (B, K)
            sample_mask = torch.zeros(size, width, dtype=torch.bool, device=device)
            rows = torch.tensor([b for b, row in enumerate(batch.samples) for _ in row], device=device)
            cols = torch.tensor([k for row in batch.samples for k in range(len(row))], device=device)
            sample_logps = sample_logps.index_put((rows, cols), logps[2 * size :])
            sample_mask[rows, cols] = True
        out = loss(
            chosen,
            rejected,
            ref_chosen,
            ref_rejected,
            preference=batch.label.to(device),
            ref_sample_logps=sample_logps,
            ref_sample_mask=sample_mask,
            beta=cfg.beta,
            tau=cfg.tau,
        )
    return out, chosen, chosen_tokens


def batch_loss(
    model,
    batch: PairBatch | PoolBatch,
    cfg: TrainConfig,
    *,
    pad_token_id: int,
    generator: torch.Generator | None,
    lockstep: bool = False,
) -> LossOutput:
    """Per-example loss ``(B,)`` with gradient, and the loss's detached metrics.

    ``lockstep``: MC-PO's pass 1 runs the same number of forwards in every process (``score_pairs``);
    needed when the model is sharded over the processes (FSDP, DeepSpeed ZeRO-3)."""
    if isinstance(batch, PoolBatch):
        out = mcpo_step_loss(
            model,
            batch,
            pad_token_id=pad_token_id,
            beta=cfg.beta,
            kernel=cfg.kernel,
            generator=generator,
            score_max_tokens=cfg.score_max_tokens,
            lockstep=lockstep,
        )
        if cfg.nll_alpha > 0:
            # The preferred answer's log-prob is not returned by the step; one more forward, with gradient.
            chosen, counts = completion_logps(model, list(batch.chosen), pad_token_id)
            out = add_chosen_nll(out, chosen, counts, alpha=cfg.nll_alpha)
        return out
    out, chosen, chosen_tokens = _pair_loss(model, batch, cfg, pad_token_id)
    if cfg.nll_alpha > 0:
        out = add_chosen_nll(out, chosen, chosen_tokens, alpha=cfg.nll_alpha)
    return out


@torch.no_grad()
def step0_difference(model, batch: PairBatch | PoolBatch, *, pad_token_id: int) -> float:
    """Largest ``|policy - cached reference|`` log-prob over every answer of ``batch``, in nats."""
    if isinstance(batch, PoolBatch):
        pairs = [*batch.chosen, *(p for pool in batch.pools for p in pool)]
        ref = torch.cat([batch.ref_chosen_logps, batch.ref_pool_logps[batch.pool_mask]])
    else:
        pairs = [*batch.chosen, *batch.rejected]
        ref = torch.cat([batch.ref_chosen_logps, batch.ref_rejected_logps])
    logps, _ = completion_logps(model, pairs, pad_token_id)
    return float((logps.double().cpu() - ref).abs().max())
