"""Pairwise preference losses: DPO, IPO and SimPO.

Each takes per-sequence log-probs summed over completion tokens, shape ``(B,)``,
and returns the unreduced per-example loss with detached metrics. Rewards in
the metrics are the implicit rewards ``beta * (log pi(y|x) - log pi_ref(y|x))``
(for SimPO, ``beta * log pi(y|x) / |y|``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks import (
    check_counts,
    check_label_smoothing,
    check_nonnegative,
    check_pair,
    check_positive,
    upcast,
)
from .method import WITH_REFERENCE, Method, pair_step, setting
from .output import LossOutput

BETA_HELP = "KL strength: rewards are beta * (log pi - log pi_ref), > 0."
LABEL_SMOOTHING_HELP = "Assumed label-flip probability, [0, 0.5) (conservative DPO)."


def smoothed_logistic_loss(margin: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """``-(1 - eps) log σ(m) - eps log σ(-m)``: the Bradley-Terry log-loss with
    the label flipped with probability ``eps`` (conservative DPO, Mitchell 2023)."""
    loss = -F.logsigmoid(margin)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-margin)
    return loss


def log_ratios(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log pi(y_w) - log pi_ref(y_w), log pi(y_l) - log pi_ref(y_l))``, each ``(B,)``, checked, float32 at least."""
    check_pair(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    chosen = upcast(policy_chosen_logps) - upcast(ref_chosen_logps)
    rejected = upcast(policy_rejected_logps) - upcast(ref_rejected_logps)
    return chosen, rejected


def reward_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, torch.Tensor]:
    """The standard pairwise metrics, each ``(B,)`` and detached."""
    chosen_rewards = chosen_rewards.detach()
    rejected_rewards = rejected_rewards.detach()
    margins = chosen_rewards - rejected_rewards
    return {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/margins": margins,
        "rewards/accuracies": (margins > 0).float(),
    }


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """Direct Preference Optimization (Rafailov et al. 2023, arXiv 2305.18290, eq. 7).

    With ``r_w = beta * (log pi(y_w|x) - log pi_ref(y_w|x))`` and ``r_l`` likewise::

        loss = -log σ(r_w - r_l)

    and with ``label_smoothing = eps > 0`` the conservative variant (cDPO,
    Mitchell 2023, "A note on DPO with noisy preferences")::

        loss = -(1 - eps) log σ(r_w - r_l) - eps log σ(r_l - r_w)

    Args:
        policy_chosen_logps: ``(B,)`` log pi(y_w|x), summed over completion tokens.
        policy_rejected_logps: ``(B,)`` log pi(y_l|x).
        ref_chosen_logps: ``(B,)`` log pi_ref(y_w|x) (cached; no gradient needed).
        ref_rejected_logps: ``(B,)`` log pi_ref(y_l|x).
        beta: the KL strength, > 0.
        label_smoothing: the assumed label-flip probability, in [0, 0.5).

    Returns:
        ``LossOutput`` with loss ``(B,)`` and metrics ``rewards/chosen``,
        ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies`` (each ``(B,)``).
    """
    check_pair(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    check_positive("beta", beta)
    check_label_smoothing(label_smoothing)
    chosen_rewards = beta * (upcast(policy_chosen_logps) - upcast(ref_chosen_logps))  # (B,)
    rejected_rewards = beta * (upcast(policy_rejected_logps) - upcast(ref_rejected_logps))  # (B,)
    loss = smoothed_logistic_loss(chosen_rewards - rejected_rewards, label_smoothing)
    return LossOutput(loss, reward_metrics(chosen_rewards, rejected_rewards))


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
) -> LossOutput:
    """Identity Preference Optimization (Azar et al. 2023, arXiv 2310.12036, eq. 17).

    With ``h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))``
    and ``beta`` playing the paper's regularization strength tau::

        loss = (h - 1 / (2 beta))^2

    The paper's h uses sequence log-probs, which is what this function takes.
    TRL's ``loss_type="ipo"`` averages log-probs over tokens first; pass
    per-token means (``logps / counts``) to reproduce it.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
        ref_rejected_logps: ``(B,)`` each, as in :func:`dpo_loss`.
        beta: > 0; the target log-ratio margin is ``1 / (2 beta)``.

    Returns:
        ``LossOutput``; rewards in the metrics are ``beta * log-ratio`` as in DPO.
    """
    check_pair(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    check_positive("beta", beta)
    chosen_ratio = upcast(policy_chosen_logps) - upcast(ref_chosen_logps)  # (B,)
    rejected_ratio = upcast(policy_rejected_logps) - upcast(ref_rejected_logps)  # (B,)
    loss = (chosen_ratio - rejected_ratio - 1.0 / (2.0 * beta)) ** 2
    return LossOutput(loss, reward_metrics(beta * chosen_ratio, beta * rejected_ratio))


def simpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
    *,
    beta: float = 2.0,
    gamma: float = 1.0,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """Simple Preference Optimization (Meng, Xia, Chen 2024, arXiv 2405.14734, eq. 6).

    Reference-free and length-normalized::

        r_w = beta / |y_w| * log pi(y_w|x),   r_l = beta / |y_l| * log pi(y_l|x)
        loss = -log σ(r_w - r_l - gamma)

    (with ``label_smoothing`` applied as in :func:`dpo_loss`). The paper reports
    ``gamma / beta`` in [0.3, 1.6]; TRL's ``simpo_gamma`` is this ``gamma``.

    Args:
        policy_chosen_logps: ``(B,)`` summed log pi(y_w|x).
        policy_rejected_logps: ``(B,)`` summed log pi(y_l|x).
        chosen_tokens: ``(B,)`` completion token counts |y_w| (> 0).
        rejected_tokens: ``(B,)`` completion token counts |y_l| (> 0).
        beta: reward scale, > 0.
        gamma: target reward margin, >= 0.
        label_smoothing: in [0, 0.5).

    Returns:
        ``LossOutput``; rewards are the length-normalized ``r_w``, ``r_l``.
    """
    batch = check_pair(policy_chosen_logps, policy_rejected_logps)
    check_counts("chosen_tokens", chosen_tokens, batch)
    check_counts("rejected_tokens", rejected_tokens, batch)
    check_positive("beta", beta)
    check_nonnegative("gamma", gamma)
    check_label_smoothing(label_smoothing)
    chosen_rewards = beta * upcast(policy_chosen_logps) / chosen_tokens  # (B,)
    rejected_rewards = beta * upcast(policy_rejected_logps) / rejected_tokens  # (B,)
    loss = smoothed_logistic_loss(chosen_rewards - rejected_rewards - gamma, label_smoothing)
    return LossOutput(loss, reward_metrics(chosen_rewards, rejected_rewards))


@dataclass(frozen=True)
class DPOSettings:
    beta: float = setting(0.1, BETA_HELP)
    label_smoothing: float = setting(0.0, LABEL_SMOOTHING_HELP)


@dataclass(frozen=True)
class IPOSettings:
    beta: float = setting(
        0.1, "Regularization strength (the paper's tau); the target log-ratio margin is 1 / (2 beta)."
    )


@dataclass(frozen=True)
class SimPOSettings:
    beta: float = setting(2.0, "Reward scale of the length-normalized log-probs, > 0.")
    gamma: float = setting(1.0, "Target reward margin, >= 0 (the paper's gamma / beta is in [0.3, 1.6]).")
    label_smoothing: float = setting(0.0, LABEL_SMOOTHING_HELP)


METHODS = (
    Method(
        "dpo",
        dpo_loss,
        DPOSettings,
        kind="pairwise",
        needs_reference=True,
        summary="DPO (Rafailov et al. 2023); cDPO with label_smoothing",
        step=pair_step(dpo_loss, *WITH_REFERENCE),
        trl_loss_type=("sigmoid",),
    ),
    Method(
        "ipo",
        ipo_loss,
        IPOSettings,
        kind="pairwise",
        needs_reference=True,
        summary="IPO (Azar et al. 2023) on sequence log-probs",
        step=pair_step(ipo_loss, *WITH_REFERENCE),
        trl_loss_type=("ipo",),
    ),
    Method(
        "simpo",
        simpo_loss,
        SimPOSettings,
        kind="pairwise",
        needs_reference=False,
        summary="SimPO (Meng et al. 2024): reference-free, length-normalized, with a margin",
        step=pair_step(simpo_loss, "chosen", "rejected", "chosen_tokens", "rejected_tokens"),
    ),
)
