"""Anchored Preference Optimization: APO-zero and APO-down."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import check_positive
from .method import WITH_REFERENCE, Method, pair_step, setting
from .output import LossOutput
from .pairwise import log_ratios, reward_metrics


def apo_zero_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
) -> LossOutput:
    """APO-zero (D'Oosterlinck et al. 2024, arXiv 2408.06266, eq. 7): raise the chosen answer's
    likelihood and lower the rejected one's, each anchored at the reference::

        loss = (1 - σ(beta h_w)) + σ(beta h_l),   h = log pi(y|x) - log pi_ref(y|x)

    For answers better than the model's own (the chosen ones should rise).

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: ``(B,)`` each.
        beta: > 0.

    Returns:
        ``LossOutput`` with loss ``(B,)`` in (0, 2) and the DPO reward metrics.
    """
    chosen, rejected = log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    check_positive("beta", beta)
    loss = (1.0 - torch.sigmoid(beta * chosen)) + torch.sigmoid(beta * rejected)
    return LossOutput(loss, reward_metrics(beta * chosen, beta * rejected))


def apo_down_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
) -> LossOutput:
    """APO-down (D'Oosterlinck et al. 2024, arXiv 2408.06266, eq. 8): lower both likelihoods, the
    rejected one more::

        loss = σ(beta h_w) + (1 - σ(beta (h_w - h_l)))

    For answers worse than the model's own (even the chosen ones should fall).

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: ``(B,)`` each.
        beta: > 0.

    Returns:
        ``LossOutput`` with loss ``(B,)`` in (0, 2) and the DPO reward metrics.
    """
    chosen, rejected = log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    check_positive("beta", beta)
    loss = torch.sigmoid(beta * chosen) + (1.0 - torch.sigmoid(beta * (chosen - rejected)))
    return LossOutput(loss, reward_metrics(beta * chosen, beta * rejected))


@dataclass(frozen=True)
class APOSettings:
    beta: float = setting(0.1, "Scale of the log-ratios inside the sigmoids, > 0.")


METHODS = (
    Method(
        "apo_zero",
        apo_zero_loss,
        APOSettings,
        kind="pairwise",
        needs_reference=True,
        summary="APO-zero (D'Oosterlinck et al. 2024): chosen up, rejected down, anchored at the reference",
        step=pair_step(apo_zero_loss, *WITH_REFERENCE),
        trl_loss_type=("apo_zero",),
    ),
    Method(
        "apo_down",
        apo_down_loss,
        APOSettings,
        kind="pairwise",
        needs_reference=True,
        summary="APO-down (D'Oosterlinck et al. 2024): both down, rejected more",
        step=pair_step(apo_down_loss, *WITH_REFERENCE),
        trl_loss_type=("apo_down",),
    ),
)
