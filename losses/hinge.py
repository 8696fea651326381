"""The hinge loss on the DPO margin (SLiC's calibration loss on log-ratios)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import check_positive
from .method import WITH_REFERENCE, Method, pair_step, setting
from .output import LossOutput
from .pairwise import log_ratios, reward_metrics


def hinge_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
) -> LossOutput:
    """SLiC's rank-calibration hinge (Zhao et al. 2023, arXiv 2305.10425, Sec. 3.2) on reference
    log-ratios, as RSO writes it (Liu et al. 2023, arXiv 2309.06657, its hinge loss)::

        loss = max(0, 1 - beta ((log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))))

    SLiC's margin delta is ``1 / beta`` here (the loss is ``beta max(0, delta - h)``
    scaled by ``1 / beta``); SLiC's regularizer on the SFT answer is not part of
    this loss (add it with ``nll_alpha``).

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: ``(B,)`` each.
        beta: > 0; the log-ratio margin is ``1 / beta``.

    Returns:
        ``LossOutput`` with loss ``(B,)`` and the DPO reward metrics.
    """
    chosen, rejected = log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    check_positive("beta", beta)
    loss = torch.relu(1.0 - beta * (chosen - rejected))
    return LossOutput(loss, reward_metrics(beta * chosen, beta * rejected))


@dataclass(frozen=True)
class HingeSettings:
    beta: float = setting(0.1, "Scale of the log-ratio margin; the hinge is at a margin of 1 / beta, > 0.")


METHODS = (
    Method(
        "hinge",
        hinge_loss,
        HingeSettings,
        kind="pairwise",
        needs_reference=True,
        summary="hinge on the DPO margin (SLiC / RSO)",
        step=pair_step(hinge_loss, *WITH_REFERENCE),
        trl_loss_type=("hinge",),
    ),
)
