"""Contrastive Preference Optimization: a reference-free preference term plus the chosen answer's NLL."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import check_counts, check_label_smoothing, check_nonnegative, check_pair, check_positive, upcast
from .method import Method, pair_step, setting
from .output import LossOutput
from .pairwise import reward_metrics, smoothed_logistic_loss


def cpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_tokens: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    cpo_alpha: float = 1.0,
) -> LossOutput:
    """CPO (Xu et al. 2024, arXiv 2401.08417, eqs. 3-5): DPO's logistic loss with the reference
    dropped, plus the negative log-likelihood of the chosen answer::

        loss = -log σ(beta (log pi(y_w|x) - log pi(y_l|x))) + cpo_alpha * (-log pi(y_w|x) / |y_w|)

    (with ``label_smoothing = eps``: ``-(1 - eps) log σ(m) - eps log σ(-m)``, as
    in cDPO). Choices where the paper is silent: the NLL term is the per-token
    mean of the chosen answer, per example (TRL's ``CPOTrainer`` takes the token
    mean over the whole batch's chosen answers: the same at batch size 1);
    ``cpo_alpha`` is TRL's name for its weight (1 in the paper).

    Args:
        policy_chosen_logps: ``(B,)`` summed log pi(y_w|x).
        policy_rejected_logps: ``(B,)`` summed log pi(y_l|x).
        chosen_tokens: ``(B,)`` completion token counts |y_w| (> 0).
        beta: > 0.
        label_smoothing: in [0, 0.5).
        cpo_alpha: weight of the NLL term, >= 0.

    Returns:
        ``LossOutput`` with loss ``(B,)``, rewards ``beta * log pi(y|x)`` and the metric ``nll``.
    """
    batch = check_pair(policy_chosen_logps, policy_rejected_logps)
    check_counts("chosen_tokens", chosen_tokens, batch)
    check_positive("beta", beta)
    check_label_smoothing(label_smoothing)
    check_nonnegative("cpo_alpha", cpo_alpha)
    chosen, rejected = upcast(policy_chosen_logps), upcast(policy_rejected_logps)  # (B,)
    nll = -chosen / chosen_tokens  # (B,)
    loss = smoothed_logistic_loss(beta * (chosen - rejected), label_smoothing) + cpo_alpha * nll
    metrics = reward_metrics(beta * chosen, beta * rejected)
    metrics["nll"] = nll.detach()
    return LossOutput(loss, metrics)


@dataclass(frozen=True)
class CPOSettings:
    beta: float = setting(0.1, "Scale of the log-prob margin log pi(y_w) - log pi(y_l), > 0.")
    label_smoothing: float = setting(0.0, "Assumed label-flip probability, [0, 0.5).")
    cpo_alpha: float = setting(1.0, "Weight of the per-token NLL of the chosen answer, >= 0.")


METHODS = (
    Method(
        "cpo",
        cpo_loss,
        CPOSettings,
        kind="pairwise",
        needs_reference=False,
        summary="CPO (Xu et al. 2024): reference-free logistic loss + the chosen answer's NLL",
        step=pair_step(cpo_loss, "chosen", "rejected", "chosen_tokens"),
    ),
)
