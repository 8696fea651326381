"""SPPO with hard win probabilities."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import check_positive
from .method import WITH_REFERENCE, Method, pair_step, setting
from .output import LossOutput
from .pairwise import log_ratios, reward_metrics


def sppo_hard_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
) -> LossOutput:
    """SPPO (Wu et al. 2024, arXiv 2405.00675, eq. 4.7 of Algorithm 1) with ``P(y_w > pi) = 1`` and
    ``P(y_l > pi) = 0``, its ``eta`` written ``1 / beta``::

        loss = (h_w - 1 / (2 beta))^2 + (h_l + 1 / (2 beta))^2,   h = log pi(y|x) - log pi_ref(y|x)

    The paper estimates the win probabilities with a preference model (PairRM);
    the hard version takes them from the pair's labels. Here ``pi_ref`` is the
    previous iterate ``pi_t`` (the cached log-probs).

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: ``(B,)`` each.
        beta: > 0; the log-ratio targets are ``±1 / (2 beta)``.

    Returns:
        ``LossOutput`` with loss ``(B,)`` and the DPO reward metrics.
    """
    chosen, rejected = log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    check_positive("beta", beta)
    target = 0.5 / beta
    loss = (chosen - target) ** 2 + (rejected + target) ** 2
    return LossOutput(loss, reward_metrics(beta * chosen, beta * rejected))


@dataclass(frozen=True)
class SPPOSettings:
    beta: float = setting(0.1, "1 / eta of the paper; the log-ratio targets are +-1 / (2 beta), > 0.")


METHODS = (
    Method(
        "sppo",
        sppo_hard_loss,
        SPPOSettings,
        kind="pairwise",
        needs_reference=True,
        summary="SPPO with hard win probabilities (Wu et al. 2024)",
        step=pair_step(sppo_hard_loss, *WITH_REFERENCE),
        trl_loss_type=("sppo_hard",),
    ),
)
