"""DiscoPOP: the log-ratio modulated loss found by LLM-driven objective discovery."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks import check_positive
from .method import WITH_REFERENCE, Method, pair_step, setting
from .output import LossOutput
from .pairwise import log_ratios, reward_metrics


def discopop_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    tau: float = 0.05,
) -> LossOutput:
    """DiscoPOP / LRML (Chris Lu et al. 2024, arXiv 2406.08414, eq. 5): a blend of the logistic (DPO)
    and exponential losses, weighted by the margin itself::

        m = beta ((log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)))
        w = σ(m / tau)
        loss = (1 - w) (-log σ(m)) + w exp(-m)

    ``tau`` is the modulation's temperature (the paper's 0.05, TRL's ``discopop_tau``). The weight
    ``w`` carries gradient, as in the paper's code.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: ``(B,)`` each.
        beta: > 0.
        tau: > 0.

    Returns:
        ``LossOutput`` with loss ``(B,)`` and the DPO reward metrics.
    """
    chosen, rejected = log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    check_positive("beta", beta)
    check_positive("tau", tau)
    margin = beta * (chosen - rejected)  # (B,)
    weight = torch.sigmoid(margin / tau)
    loss = (1.0 - weight) * -F.logsigmoid(margin) + weight * torch.exp(-margin)
    return LossOutput(loss, reward_metrics(beta * chosen, beta * rejected))


@dataclass(frozen=True)
class DiscoPOPSettings:
    beta: float = setting(0.1, "KL strength, > 0.")
    tau: float = setting(0.05, "Temperature of the logistic/exponential blend sigma(m / tau), > 0.")


METHODS = (
    Method(
        "discopop",
        discopop_loss,
        DiscoPOPSettings,
        kind="pairwise",
        needs_reference=True,
        summary="DiscoPOP (Lu et al. 2024): logistic and exponential losses blended by the margin",
        step=pair_step(discopop_loss, *WITH_REFERENCE),
        trl_loss_type=("discopop",),
    ),
)
