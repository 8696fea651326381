"""Noise Contrastive Alignment (Chen et al. 2024, arXiv 2402.05369): NCA on pairs and InfoNCA on pools.

Both take rewards from data, not a reward model at train time: NCA on a pair
uses the labels as hard targets; InfoNCA on a pool uses the answers' scores
as soft targets ``softmax(score / alpha)``. InfoNCA trains on an ``mcpo`` table that carries the
scores (``build`` ranking by a score); its step is in ``prefpool.train.kinds.mcpo``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks import check_logps, check_mask, check_positive, upcast
from .method import WITH_REFERENCE, Method, pair_step, setting
from .output import LossOutput
from .pairwise import log_ratios, reward_metrics


def nca_pair_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
) -> LossOutput:
    """NCA (Chen et al. 2024, arXiv 2402.05369, the NCA loss) for K = 2 answers with hard targets
    (the chosen answer's weight 1, the rejected answer's 0)::

        r = beta (log pi(y|x) - log pi_ref(y|x))
        loss = -log σ(r_w) - (log σ(-r_w) + log σ(-r_l)) / 2

    NCA's loss over K answers is ``-Σ_i w_i log σ(r_i) - (1/K) Σ_i log σ(-r_i)``
    with ``w = softmax(reward / alpha)``; hard targets put ``w = (1, 0)``. Unlike
    DPO it pushes each answer's own reward (not only their difference), so the
    chosen answer's likelihood does not fall with the rejected one's.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: ``(B,)`` each.
        beta: > 0.

    Returns:
        ``LossOutput`` with loss ``(B,)`` and the DPO reward metrics.
    """
    chosen, rejected = log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    check_positive("beta", beta)
    r_w, r_l = beta * chosen, beta * rejected
    loss = -F.logsigmoid(r_w) - 0.5 * (F.logsigmoid(-r_w) + F.logsigmoid(-r_l))
    return LossOutput(loss, reward_metrics(r_w, r_l))


def infonca_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    scores: torch.Tensor,
    *,
    candidate_mask: torch.Tensor | None = None,
    beta: float = 0.1,
    alpha: float = 1.0,
) -> LossOutput:
    """InfoNCA (Chen et al. 2024, arXiv 2402.05369, the InfoNCA loss) over a pool of K answers per
    prompt, with the answers' scores as soft targets; shapes ``(B,)`` out, ``(B, K)`` in::

        r_i = beta (log pi(y_i|x) - log pi_ref(y_i|x))
        w = softmax(score / alpha)            (over the row's answers)
        loss = -Σ_i w_i log softmax(r)_i      (cross-entropy from w to the policy's softmax)

    With two answers and hard targets it is DPO. Choices where the paper is
    silent: a row's padded answers (``candidate_mask`` False) take no part in
    either softmax; ``scores`` are constants (no gradient).

    Args:
        policy_logps: ``(B, K)`` summed log pi(y_i|x).
        ref_logps: ``(B, K)`` cached log pi_ref(y_i|x).
        scores: ``(B, K)`` the answers' rewards (a reward model's scores, ranks negated, ...).
        candidate_mask: ``(B, K)`` bool, True where a row has an answer; each row needs one.
        beta: > 0.
        alpha: temperature of the targets, > 0 (small: nearly the best answer alone).

    Returns:
        ``LossOutput`` with loss ``(B,)`` and ``infonca/target_entropy``,
        ``infonca/best_reward`` (the reward of the highest-scored answer) and
        ``infonca/accuracy`` (1 where that answer has the highest reward), each ``(B,)``.
    """
    check_logps("policy_logps", policy_logps, mask=candidate_mask)
    if policy_logps.dim() != 2 or 0 in policy_logps.shape:
        raise ValueError(f"policy_logps: expected shape (B, K), got {tuple(policy_logps.shape)}")
    shape = tuple(policy_logps.shape)
    check_logps("ref_logps", ref_logps, shape, mask=candidate_mask)
    check_logps("scores", scores, shape, mask=candidate_mask)
    mask = check_mask("candidate_mask", candidate_mask, shape)
    if mask is None:
        mask = torch.ones(shape, dtype=torch.bool, device=policy_logps.device)
    if not bool(mask.any(dim=1).all()):
        raise ValueError("candidate_mask: every row needs at least one answer")
    check_positive("beta", beta)
    check_positive("alpha", alpha)
    rewards = beta * (upcast(policy_logps) - upcast(ref_logps))  # (B, K)
    rewards = rewards.masked_fill(~mask, float("-inf"))
    targets = torch.softmax((upcast(scores).detach() / alpha).masked_fill(~mask, float("-inf")), dim=1)  # (B, K)
    log_probs = torch.log_softmax(rewards, dim=1).masked_fill(~mask, 0.0)
    loss = -(targets * log_probs).sum(dim=1)
    best = upcast(scores).masked_fill(~mask, float("-inf")).argmax(dim=1, keepdim=True)
    best_reward = rewards.gather(1, best).squeeze(1).detach()
    target_entropy = -(targets * torch.log(targets.clamp_min(torch.finfo(targets.dtype).tiny))).sum(dim=1)
    metrics = {
        "infonca/target_entropy": target_entropy.detach(),
        "infonca/best_reward": best_reward,
        "infonca/accuracy": (rewards.detach().argmax(dim=1) == best.squeeze(1)).float(),
    }
    return LossOutput(loss, metrics)


@dataclass(frozen=True)
class NCASettings:
    beta: float = setting(0.1, "KL strength: rewards are beta * (log pi - log pi_ref), > 0.")


@dataclass(frozen=True)
class InfoNCASettings:
    beta: float = setting(0.1, "KL strength: rewards are beta * (log pi - log pi_ref), > 0.")
    alpha: float = setting(
        1.0, "Temperature of the soft targets softmax(score / alpha), > 0 (small: the best-scored answer alone)."
    )


METHODS = (
    Method(
        "nca",
        nca_pair_loss,
        NCASettings,
        kind="pairwise",
        needs_reference=True,
        summary="NCA on pairs (Chen et al. 2024): each answer's own reward, hard targets",
        step=pair_step(nca_pair_loss, *WITH_REFERENCE),
        trl_loss_type=("nca_pair",),
    ),
    Method(
        "infonca",
        infonca_loss,
        InfoNCASettings,
        kind="mcpo",
        needs_reference=True,
        summary="InfoNCA (Chen et al. 2024): cross-entropy from the answers' score softmax to the reward softmax "
        "over the preferred answer and its pool; needs a table built ranking by a score",
        columns=("preferred_score", "pool_scores"),
    ),
)
