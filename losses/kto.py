"""KTO on paired tables: each pair is one desirable and one undesirable example.

Its reference point needs the log-probs of mismatched pairs (a prompt with
another prompt's answer). ``prefpool train`` trains it on a ``kto`` table, whose
rows carry one mismatched completion each with its cached reference log-prob
(``build --kind kto``); the trainer scores the same pair with the policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import check_batch, check_logps, check_nonnegative, check_positive, upcast
from .method import Method, setting
from .output import LossOutput
from .pairwise import BETA_HELP, log_ratios, reward_metrics


def mismatched_index(batch: int) -> torch.Tensor:
    """``(B,)`` the row whose completion goes with each row's prompt in a mismatched pair:
    ``(i + 1) mod B``, so no prompt keeps its own answer when ``B > 1`` (as KTO's code
    cycles completions within a batch)."""
    if batch < 2:
        raise ValueError(f"batch: mismatched pairs need at least 2 rows, got {batch}")
    return (torch.arange(batch) + 1) % batch


def kto_pair_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    policy_mismatched_logps: torch.Tensor,
    ref_mismatched_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> LossOutput:
    """KTO (Ethayarajh et al. 2024, arXiv 2402.01306, eq. 7) with each pair's
    chosen answer desirable and its rejected answer undesirable::

        h = log pi(y|x) - log pi_ref(y|x)
        z0 = max(0, mean_j (log pi(y'_j|x_j) - log pi_ref(y'_j|x_j)))    (no gradient)
        loss = (lambda_D (1 - σ(beta (h_w - z0))) + lambda_U (1 - σ(beta (z0 - h_l)))) / 2

    ``z0``, KTO's reference point, estimates ``KL(pi || pi_ref)`` from mismatched
    pairs ``(x_j, y'_j)``: a prompt with another row's answer (``mismatched_index``).
    Choices where the paper is silent: the mean is over this micro-batch's
    mismatched pairs (KTO's code: over the batch, gathered across processes); the
    per-example loss is half the sum of the two terms, so the batch mean equals
    KTO's mean over its ``2B`` examples.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: ``(B,)`` each.
        policy_mismatched_logps: ``(K,)`` log pi(y'|x) of the mismatched pairs.
        ref_mismatched_logps: ``(K,)`` log pi_ref(y'|x) of the same pairs.
        beta: > 0.
        desirable_weight, undesirable_weight: ``lambda_D``, ``lambda_U`` >= 0.

    Returns:
        ``LossOutput`` with loss ``(B,)``, the DPO reward metrics and ``kto/kl`` (``z0``, repeated to ``(B,)``).
    """
    chosen, rejected = log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    mismatched = check_batch("policy_mismatched_logps", policy_mismatched_logps)
    check_logps("ref_mismatched_logps", ref_mismatched_logps, (mismatched,))
    check_positive("beta", beta)
    check_nonnegative("desirable_weight", desirable_weight)
    check_nonnegative("undesirable_weight", undesirable_weight)
    kl = (upcast(policy_mismatched_logps) - upcast(ref_mismatched_logps)).mean().clamp(min=0).detach()
    loss = 0.5 * (
        desirable_weight * (1.0 - torch.sigmoid(beta * (chosen - kl)))
        + undesirable_weight * (1.0 - torch.sigmoid(beta * (kl - rejected)))
    )
    metrics = reward_metrics(beta * chosen, beta * rejected)
    metrics["kto/kl"] = kl.expand_as(loss).clone()
    return LossOutput(loss, metrics)


@dataclass(frozen=True)
class KTOSettings:
    beta: float = setting(0.1, BETA_HELP)
    desirable_weight: float = setting(1.0, "lambda_D: weight of the chosen (desirable) answers' term, >= 0.")
    undesirable_weight: float = setting(1.0, "lambda_U: weight of the rejected (undesirable) answers' term, >= 0.")


METHODS = (
    Method(
        "kto_pair",
        kto_pair_loss,
        KTOSettings,
        kind="kto",
        needs_reference=True,
        summary="KTO on pairs (Ethayarajh et al. 2024): its reference point z0 from each row's mismatched pair",
    ),
)
