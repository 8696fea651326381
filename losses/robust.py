"""Robust DPO: an unbiased DPO loss under labels flipped with a known probability."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks import check_label_smoothing, check_positive
from .method import WITH_REFERENCE, Method, pair_step, setting
from .output import LossOutput
from .pairwise import log_ratios, reward_metrics


def robust_dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """rDPO (Chowdhury et al. 2024, arXiv 2403.00409, Sec. 3: the de-biased loss)::

        m = beta ((log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)))
        loss = ((1 - eps) (-log σ(m)) - eps (-log σ(-m))) / (1 - 2 eps)

    Its expectation over a label flipped with probability ``eps`` is the DPO
    loss on the true label (unlike cDPO, ``dpo_loss``'s ``label_smoothing``,
    which averages the two losses). With ``eps = 0`` it is DPO. The per-example
    loss can be negative.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: ``(B,)`` each.
        beta: > 0.
        label_smoothing: the flip probability ``eps``, in [0, 0.5).

    Returns:
        ``LossOutput`` with loss ``(B,)`` and the DPO reward metrics.
    """
    chosen, rejected = log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    check_positive("beta", beta)
    check_label_smoothing(label_smoothing)
    margin = beta * (chosen - rejected)
    eps = label_smoothing
    loss = ((1.0 - eps) * -F.logsigmoid(margin) - eps * -F.logsigmoid(-margin)) / (1.0 - 2.0 * eps)
    return LossOutput(loss, reward_metrics(beta * chosen, beta * rejected))


@dataclass(frozen=True)
class RobustSettings:
    beta: float = setting(0.1, "KL strength, > 0.")
    label_smoothing: float = setting(0.0, "The label-flip probability eps the loss corrects for, [0, 0.5).")


METHODS = (
    Method(
        "robust",
        robust_dpo_loss,
        RobustSettings,
        kind="pairwise",
        needs_reference=True,
        summary="robust DPO (Chowdhury et al. 2024): unbiased under label flips with probability label_smoothing",
        step=pair_step(robust_dpo_loss, *WITH_REFERENCE),
        trl_loss_type=("robust",),
    ),
)
