"""Training on an ``mcpo`` table: MC-PO's step without a reference model, in two passes.

Pass 1 scores the candidates under the current policy without gradient and
with dropout off (``eval_mode``: the kernel must sample from the policy, not
from a dropout-perturbed copy of it), and draws ``M`` negatives per prompt
(``num_negatives``) with ``mcpo_select``. The paper's ``sample`` kernel (Chen et
al. 2025, arXiv 2502.04567, Sec. 3) draws from the preferred answer *and* the
pool, so pass 1 scores the preferred answers too. Pass 2 runs forward/backward
on the preferred answers and the distinct picked pool answers only; a draw of
the preferred answer itself adds a constant to the loss, so it costs no pool
forward. The loss and its gradient equal the one-pass computation that
back-propagates through all ``1 + K`` answers, because the selection kernels
send gradient through the picked answers alone; pass 2 costs about what a DPO
step with ``M`` rejected answers costs, pass 1 ``K`` (+1) inference forwards.

``mcpo_step`` is that step, written once: ``prefpool train`` (``mcpo_step_loss``
here, with ``pipeline.model.scoring``) and the TRL plug-in
(``train.trl_plugin.MCPODPOTrainer``, with TRL's fused LM head) call it with
their own ways of scoring sequences.

In ``prefpool train`` a row's answers share its prompt, which pass 1 runs once
and scores every answer against (``share_prompts``: its keys and values are
cached, ``pipeline.model.prompt_cache``), so pass 1 costs about the answers'
lengths, not ``K`` times prompt + answer.

The averaging kernels (``listwise``, ``rao_blackwell``) need gradient through
every candidate, so they run as one pass.

The other method on this table, InfoNCA (``infonca_step_loss``), is one pass
too: the soft targets weigh every answer, so each takes gradient. It reads the
answers' scores (``preferred_score``, ``pool_scores``), which ``collate`` puts
in the batch when every row has them. ``STEPS`` maps each method of the
``mcpo`` kind (``prefpool.losses``: ``kind="mcpo"``) to its step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from prefpool.core.errors import ConfigError
from prefpool.losses import (
    AVERAGING_KERNELS,
    CHOSEN_SUPPORT_KERNELS,
    RAO_BLACKWELL_MAX_DRAWS,
    LossOutput,
    infonca_loss,
    mcpo_loss,
    mcpo_select,
    picked_slots,
)
from prefpool.pipeline.kinds import get_kind
from prefpool.pipeline.model.scoring import TokenPair, completion_logps, eval_mode, score_pairs

from ..eval_ranking import pool_metrics
from .spec import Example, KindLoss, StepOptions, TrainKind

TABLE = get_kind("mcpo")


@dataclass(frozen=True)
class PoolBatch:
    """``B`` prompts, each with its preferred answer and a (ragged) candidate pool.

    Attributes:
        chosen: ``B`` tokenized preferred answers.
        pools: ``B`` lists of tokenized candidates (at least one each).
        ref_chosen_logps: ``(B,)`` cached reference log-probs of ``chosen``.
        ref_pool_logps: ``(B, K)`` cached reference log-probs, padded to ``K``.
        pool_mask: ``(B, K)`` bool, True where ``pools[b]`` has an answer.
        chosen_scores: ``(B,)`` float64 scores of ``chosen``; None unless every row has scores.
        pool_scores: ``(B, K)`` float64 scores of the pool (0 on padding); None as ``chosen_scores``.
    """

    chosen: Sequence[TokenPair]
    pools: Sequence[Sequence[TokenPair]]
    ref_chosen_logps: torch.Tensor
    ref_pool_logps: torch.Tensor
    pool_mask: torch.Tensor
    chosen_scores: torch.Tensor | None = None
    pool_scores: torch.Tensor | None = None
    kind: ClassVar[str] = TABLE.name


def collate(examples: Sequence[Example]) -> PoolBatch:
    width = max(len(e.answers) - 1 for e in examples)
    ref_pool = torch.zeros(len(examples), width, dtype=torch.float64)
    mask = torch.zeros(len(examples), width, dtype=torch.bool)
    scores = [e.scores for e in examples]
    chosen_scores = pool_scores = None
    if all(s is not None for s in scores):
        chosen_scores = torch.tensor([s[0] for s in scores], dtype=torch.float64)  # type: ignore[index]
        pool_scores = torch.zeros(len(examples), width, dtype=torch.float64)
    for b, e in enumerate(examples):
        m = len(e.answers) - 1
        ref_pool[b, :m] = torch.tensor(e.ref_logps[1:], dtype=torch.float64)
        mask[b, :m] = True
        if pool_scores is not None:
            pool_scores[b, :m] = torch.tensor(scores[b][1:], dtype=torch.float64)  # type: ignore[index]
    return PoolBatch(
        chosen=[e.answers[0] for e in examples],
        pools=[list(e.answers[1:]) for e in examples],
        ref_chosen_logps=torch.tensor([e.ref_logps[0] for e in examples], dtype=torch.float64),
        ref_pool_logps=ref_pool,
        pool_mask=mask,
        chosen_scores=chosen_scores,
        pool_scores=pool_scores,
    )


def mcpo_step(
    model: torch.nn.Module,
    *,
    score: Callable[[bool], tuple[torch.Tensor, torch.Tensor | None]],
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ref_chosen: torch.Tensor,
    ref_pool: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    kernel: str,
    num_negatives: int = 1,
    generator: torch.Generator | None = None,
) -> LossOutput:
    """MC-PO's training step for ``B`` prompts, ready for ``.loss.sum().backward()``.

    Selection kernels: pass 1 calls ``score`` under ``torch.no_grad()`` and
    ``eval_mode(model)``, ``mcpo_select`` draws ``M`` negatives per row, and pass 2
    calls ``forward`` on the distinct picks only. Averaging kernels: one
    ``forward`` through every valid candidate. Metrics are ``mcpo_loss``'s over the
    whole pool (pass-1 scores where no gradient was taken).

    Args:
        model: the policy (put in eval mode for pass 1).
        score: ``score(with_chosen) -> (pool (B, K), chosen (B,) or None)``: the policy's
            log-probs of every pool slot (any finite value on padding) and, when
            ``with_chosen``, of the preferred answers.
        forward: ``forward(rows, slots) -> (B + P,)``: log-probs with gradient of the
            ``B`` preferred answers, then of the ``P`` pool answers at
            ``(rows[p], slots[p])``, in that order.
        ref_chosen: ``(B,)`` cached reference log-probs of the preferred answers.
        ref_pool: ``(B, K)`` cached reference log-probs of the pool (0 on padding).
        mask: ``(B, K)`` bool, True on real candidates.
        beta, kernel, num_negatives, generator: as ``mcpo_loss``.
    """
    size = mask.shape[0]
    common = {"candidate_mask": mask, "beta": beta, "kernel": kernel, "num_negatives": num_negatives}
    if kernel in AVERAGING_KERNELS:
        rows, slots = mask.nonzero(as_tuple=True)
        logps = forward(rows, slots)
        policy_pool = torch.zeros(mask.shape, dtype=logps.dtype, device=logps.device)
        policy_pool = policy_pool.index_put((rows, slots), logps[size:])
        return mcpo_loss(logps[:size], policy_pool, ref_chosen, ref_pool, **common)

    # Pass 1: score without gradient or dropout (the kernel samples from the policy itself), draw.
    with_chosen = kernel in CHOSEN_SUPPORT_KERNELS  # the paper's kernel can draw the preferred answer
    with torch.no_grad(), eval_mode(model):
        pool_scores, chosen_scores = score(with_chosen)
    selected = mcpo_select(
        pool_scores,
        ref_pool,
        policy_chosen_logps=chosen_scores,
        ref_chosen_logps=ref_chosen if with_chosen else None,
        generator=generator,
        **common,
    )  # (B, M), -1 where the preferred answer was drawn

    # Pass 2: forward/backward through the preferred answers and the distinct picked pool answers.
    rows, slots = picked_slots(selected, mask.shape[1]).nonzero(as_tuple=True)
    logps = forward(rows, slots)
    # The picked entries carry gradient; the rest are pass-1 scores (values for the metrics).
    policy_pool = pool_scores.to(logps.dtype).index_put((rows, slots), logps[size:])
    return mcpo_loss(logps[:size], policy_pool, ref_chosen, ref_pool, selected=selected, **common)


def mcpo_step_loss(
    model: torch.nn.Module,
    batch: PoolBatch,
    *,
    pad_token_id: int,
    beta: float,
    kernel: str = "sample",
    num_negatives: int = 1,
    generator: torch.Generator | None = None,
    score_max_tokens: int = 16384,
    lockstep: bool = False,
    share_prompts: bool = True,
    packing: bool | None = None,
    method: str | None = None,
) -> LossOutput:
    """``mcpo_step`` on a ``PoolBatch``, scored with ``pipeline.model.scoring``.

    ``lockstep``: see ``score_pairs`` (all processes run pass 1 in as many
    forwards; for sharded models). ``share_prompts``: pass 1 runs each prompt once
    (False: every answer as a full sequence; the same scores up to float
    rounding). ``packing``, ``method``: how the gradient pass scores
    (``scoring.completion_logps``).
    """
    device = next(model.parameters()).device
    mask = batch.pool_mask.to(device)
    slots = mask.nonzero().tolist()  # (b, i) of every real candidate, row-major

    def score(with_chosen: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        pairs = [batch.pools[b][i] for b, i in slots] + (list(batch.chosen) if with_chosen else [])
        scores = score_pairs(
            model,
            pairs,
            pad_token_id,
            max_tokens=score_max_tokens,
            lockstep=lockstep,
            share_prompts=share_prompts,
            method=method,
        ).to(device)
        pool = torch.zeros(mask.shape, dtype=torch.float32, device=device)
        pool[mask] = scores[: len(slots)].to(pool.dtype)
        return pool, (scores[len(slots) :] if with_chosen else None)

    def forward(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        pairs = [*batch.chosen, *(batch.pools[b][i] for b, i in zip(rows.tolist(), cols.tolist(), strict=True))]
        return completion_logps(model, pairs, pad_token_id, packing=packing, method=method)[0]

    return mcpo_step(
        model,
        score=score,
        forward=forward,
        ref_chosen=batch.ref_chosen_logps.to(device),
        ref_pool=batch.ref_pool_logps.to(device),
        mask=mask,
        beta=beta,
        kernel=kernel,
        num_negatives=num_negatives,
        generator=generator,
    )


def check_pool_sizes(mask: torch.Tensor, kernel: str, num_negatives: int) -> None:
    """A ``ConfigError`` where ``num_negatives`` does not fit this batch's pools: ``max``/``min`` take
    ``M`` distinct answers, ``rao_blackwell`` enumerates ``(1 + K)^M`` ordered draws."""
    if num_negatives == 1:
        return
    smallest = int(mask.sum(dim=-1).min())
    if kernel in ("max", "min") and smallest < num_negatives:
        raise ConfigError(
            f"num_negatives: {num_negatives} with kernel {kernel} takes {num_negatives} distinct pool answers per "
            f"prompt, and a prompt of the table has {smallest}; lower num_negatives, or use sample / uniform "
            "(draws with replacement)"
        )
    draws = (1 + mask.shape[1]) ** num_negatives
    if kernel == "rao_blackwell" and draws > RAO_BLACKWELL_MAX_DRAWS:
        raise ConfigError(
            f"num_negatives: rao_blackwell at {num_negatives} negatives averages over (1 + {mask.shape[1]})^"
            f"{num_negatives} = {draws} ordered draws per prompt, more than {RAO_BLACKWELL_MAX_DRAWS}; use the "
            "sample kernel (an unbiased draw of the same loss) or fewer negatives"
        )


def mcpo_batch_loss(model, batch: PoolBatch, cfg, options: StepOptions) -> KindLoss:
    """MC-PO's step (``mcpo_step_loss``) with the config's kernel and negatives."""
    check_pool_sizes(batch.pool_mask, cfg.kernel, cfg.num_negatives)
    out = mcpo_step_loss(
        model,
        batch,
        pad_token_id=options.pad_token_id,
        beta=cfg.beta,
        kernel=cfg.kernel,
        num_negatives=cfg.num_negatives,
        generator=options.generator,
        score_max_tokens=cfg.score_max_tokens,
        lockstep=options.lockstep,
        packing=options.packing,
        method=options.method,
    )
    return out, None, None  # the preferred answers' log-probs stay inside the step


def infonca_step_loss(model, batch: PoolBatch, cfg, options: StepOptions) -> KindLoss:
    """InfoNCA (``prefpool.losses.infonca_loss``) over each row's answers, the preferred one first: one
    forward with gradient through every answer, targets ``softmax(score / alpha)`` from the batch's scores."""
    if batch.chosen_scores is None or batch.pool_scores is None:
        # prefpool train refuses such a table before training (Method.columns); a direct caller lands here
        raise ConfigError(f"loss: {cfg.loss!r} needs the answers' scores (preferred_score, pool_scores) in the batch")
    size = len(batch.chosen)
    device = next(model.parameters()).device
    mask = batch.pool_mask.to(device)
    rows, slots = mask.nonzero(as_tuple=True)
    pairs = [*batch.chosen, *(batch.pools[b][i] for b, i in zip(rows.tolist(), slots.tolist(), strict=True))]
    logps, counts = completion_logps(model, pairs, options.pad_token_id, packing=options.packing, method=options.method)
    pool = torch.zeros(mask.shape, dtype=logps.dtype, device=device).index_put((rows, slots), logps[size:])
    answers_mask = torch.cat([torch.ones(size, 1, dtype=torch.bool, device=device), mask], dim=1)  # (B, 1 + K)
    policy = torch.cat([logps[:size, None], pool], dim=1)  # (B, 1 + K)
    ref = torch.cat([batch.ref_chosen_logps[:, None], batch.ref_pool_logps], dim=1).to(device)
    scores = torch.cat([batch.chosen_scores[:, None], batch.pool_scores], dim=1).to(device)
    settings = cfg.settings
    out = infonca_loss(policy, ref, scores, candidate_mask=answers_mask, beta=settings.beta, alpha=settings.alpha)
    return out, logps[:size], counts[:size]


# The step of each method that trains on an mcpo table, by the method's name (``prefpool.losses``).
STEPS = {"mcpo": mcpo_batch_loss, "infonca": infonca_step_loss}
assert set(STEPS) == set(TABLE.losses), "every method of the mcpo kind has its step here"


def loss(model, batch: PoolBatch, cfg, options: StepOptions) -> KindLoss:
    return STEPS[cfg.loss](model, batch, cfg, options)


def cached(batch: PoolBatch) -> tuple[list[TokenPair], torch.Tensor]:
    pairs = [*batch.chosen, *(p for pool in batch.pools for p in pool)]
    return pairs, torch.cat([batch.ref_chosen_logps, batch.ref_pool_logps[batch.pool_mask]])


def scored(batch: PoolBatch) -> list[TokenPair]:
    return [*batch.chosen, *(p for pool in batch.pools for p in pool)]


def ranking(ratios: Sequence[torch.Tensor], *, beta: float, tie_atol: float) -> dict:
    return pool_metrics(torch.stack([r[0] for r in ratios]), [r[1:] for r in ratios], beta=beta, tie_atol=tie_atol)


KIND = TrainKind(table=TABLE, collate=collate, loss=loss, cached=cached, scored=scored, ranking=ranking)
