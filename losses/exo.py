"""EXO on pairs: the reverse KL from the policy's preference distribution to the labels'."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks import check_positive
from .method import WITH_REFERENCE, Method, pair_step, setting
from .output import LossOutput
from .pairwise import log_ratios, reward_metrics


def _check_epsilon(label_smoothing: float) -> None:
    if not (isinstance(label_smoothing, (int, float)) and 0.0 < label_smoothing < 0.5):
        raise ValueError(f"label_smoothing: EXO needs it in (0, 0.5) (log eps is taken), got {label_smoothing!r}")


def exo_pair_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 1e-3,
) -> LossOutput:
    """EXO-pref for K = 2 (Ji et al. 2024, arXiv 2402.00856, eq. 16).

    The policy's distribution over the pair is ``q = softmax(beta h_w, beta h_l)``
    with ``h = log pi - log pi_ref``; the label distribution is
    ``p = (1 - eps, eps)``. The loss is ``KL(q || p)``::

        q_w = σ(beta (h_w - h_l)),  q_l = 1 - q_w
        loss = q_w (log q_w - log(1 - eps)) + q_l (log q_l - log eps)

    Choices where the paper is silent: ``eps`` is the label smoothing that keeps
    ``log eps`` finite (TRL's ``label_smoothing`` for ``exo_pair``, default
    here 1e-3 as TRL's warning suggests); the policy's temperature ``beta_pi``
    and the reward temperature are one ``beta``.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps:
            ``(B,)`` each, summed over completion tokens.
        beta: > 0.
        label_smoothing: ``eps`` in (0, 0.5).

    Returns:
        ``LossOutput`` with loss ``(B,)`` (>= 0, zero when ``q = p``) and the DPO reward metrics.
    """
    chosen, rejected = log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    check_positive("beta", beta)
    _check_epsilon(label_smoothing)
    margin = beta * (chosen - rejected)  # (B,)
    log_qw, log_ql = F.logsigmoid(margin), F.logsigmoid(-margin)
    log_pw, log_pl = math.log1p(-label_smoothing), math.log(label_smoothing)
    loss = log_qw.exp() * (log_qw - log_pw) + log_ql.exp() * (log_ql - log_pl)
    return LossOutput(loss, reward_metrics(beta * chosen, beta * rejected))


@dataclass(frozen=True)
class EXOSettings:
    beta: float = setting(0.1, "Temperature of the policy's preference distribution softmax(beta h), > 0.")
    label_smoothing: float = setting(1e-3, "eps of the label distribution (1 - eps, eps), in (0, 0.5).")


METHODS = (
    Method(
        "exo",
        exo_pair_loss,
        EXOSettings,
        kind="pairwise",
        needs_reference=True,
        summary="EXO-pref on pairs (Ji et al. 2024): KL(policy's pair distribution || smoothed labels)",
        step=pair_step(exo_pair_loss, *WITH_REFERENCE),
        trl_loss_type=("exo_pair",),
    ),
)
