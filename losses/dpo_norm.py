"""DPO on per-token log-ratios: the reference-anchored margin divided by each answer's length."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import check_counts, check_label_smoothing, check_positive
from .method import WITH_REFERENCE, Method, pair_step, setting
from .output import LossOutput
from .pairwise import log_ratios, reward_metrics, smoothed_logistic_loss


def dpo_norm_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """DPO (Rafailov et al. 2023, arXiv 2305.18290, eq. 7) with each log-ratio divided by its answer's
    token count, SimPO's length normalization (Meng, Xia, Chen 2024, arXiv 2405.14734, eq. 4) kept
    together with DPO's reference (TRL's ``loss_type="sigmoid_norm"``)::

        r_w = beta (log pi(y_w) - log pi_ref(y_w)) / |y_w|,   r_l likewise
        loss = -(1 - eps) log σ(r_w - r_l) - eps log σ(r_l - r_w)

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: ``(B,)`` each,
            summed over completion tokens.
        chosen_tokens, rejected_tokens: ``(B,)`` completion token counts (> 0).
        beta: > 0, the scale of the per-token log-ratios.
        label_smoothing: eps in [0, 0.5).

    Returns:
        ``LossOutput`` with loss ``(B,)``; the reward metrics are the per-token ``r_w``, ``r_l``.
    """
    chosen, rejected = log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    check_counts("chosen_tokens", chosen_tokens, chosen.shape[0])
    check_counts("rejected_tokens", rejected_tokens, chosen.shape[0])
    check_positive("beta", beta)
    check_label_smoothing(label_smoothing)
    chosen_rewards = beta * chosen / chosen_tokens
    rejected_rewards = beta * rejected / rejected_tokens
    loss = smoothed_logistic_loss(chosen_rewards - rejected_rewards, label_smoothing)
    return LossOutput(loss, reward_metrics(chosen_rewards, rejected_rewards))


@dataclass(frozen=True)
class DPONormSettings:
    beta: float = setting(0.1, "Scale of the per-token log-ratios, > 0.")
    label_smoothing: float = setting(0.0, "Probability that a preference label is flipped (cDPO), in [0, 0.5).")


METHODS = (
    Method(
        "dpo_norm",
        dpo_norm_loss,
        DPONormSettings,
        kind="pairwise",
        needs_reference=True,
        summary="DPO on log-ratios divided by each answer's length",
        step=pair_step(dpo_norm_loss, *WITH_REFERENCE, "chosen_tokens", "rejected_tokens"),
        trl_loss_type=("sigmoid_norm",),
    ),
)
