"""Odds Ratio Preference Optimization: the chosen answer's NLL plus a log-odds-ratio term."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks import check_counts, check_pair, check_positive, upcast
from .method import Method, pair_step, setting
from .output import LossOutput
from .pairwise import reward_metrics


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate on both sides of ``-log 2`` (Mächler 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
    *,
    beta: float = 0.1,
) -> LossOutput:
    """ORPO (Hong, Lee, Thorne 2024, arXiv 2403.07691, eqs. 4, 6 and 7), reference-free::

        l(y) = log pi(y|x) / |y|                      (per-token mean)
        log odds(y) = l(y) - log(1 - exp(l(y)))
        loss = -l(y_w) - beta * log σ(log odds(y_w) - log odds(y_l))

    ``beta`` is the paper's lambda (TRL's ``ORPOConfig.beta``). The odds use the
    per-token mean log-probs, as the paper's ``P_θ(y|x)`` is the length-normalized
    likelihood (Sec. 4.2); the NLL term is the chosen answer's per-token mean.

    Args:
        policy_chosen_logps: ``(B,)`` summed log pi(y_w|x).
        policy_rejected_logps: ``(B,)`` summed log pi(y_l|x).
        chosen_tokens, rejected_tokens: ``(B,)`` completion token counts (> 0).
        beta: weight of the odds-ratio term, > 0.

    Returns:
        ``LossOutput`` with loss ``(B,)``, rewards ``beta * l(y)``, and the metrics
        ``nll``, ``orpo/log_odds_ratio`` (the log odds difference) and ``orpo/log_sigmoid_ratio``.
    """
    batch = check_pair(policy_chosen_logps, policy_rejected_logps)
    check_counts("chosen_tokens", chosen_tokens, batch)
    check_counts("rejected_tokens", rejected_tokens, batch)
    check_positive("beta", beta)
    chosen = upcast(policy_chosen_logps) / chosen_tokens  # (B,) per-token means, < 0
    rejected = upcast(policy_rejected_logps) / rejected_tokens
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))  # (B,)
    ratio = F.logsigmoid(log_odds)
    nll = -chosen
    metrics = reward_metrics(beta * chosen, beta * rejected)
    metrics.update(
        {"nll": nll.detach(), "orpo/log_odds_ratio": log_odds.detach(), "orpo/log_sigmoid_ratio": ratio.detach()}
    )
    return LossOutput(nll - beta * ratio, metrics)


@dataclass(frozen=True)
class ORPOSettings:
    beta: float = setting(0.1, "The paper's lambda: weight of the odds-ratio term beside the NLL, > 0.")


METHODS = (
    Method(
        "orpo",
        orpo_loss,
        ORPOSettings,
        kind="pairwise",
        needs_reference=False,
        summary="ORPO (Hong et al. 2024): reference-free NLL + log odds ratio",
        step=pair_step(orpo_loss, "chosen", "rejected", "chosen_tokens", "rejected_tokens"),
    ),
)
