"""AOT: alignment by optimal transport, a stochastic-dominance loss on sorted log-ratios."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import check_label_smoothing, check_positive, upcast
from .method import WITH_REFERENCE, Method, pair_step, setting
from .output import LossOutput
from .pairwise import log_ratios, reward_metrics, smoothed_logistic_loss


def _sorted_logistic(better: torch.Tensor, worse: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """The smoothed logistic loss of each quantile of ``better`` over the same quantile of ``worse``."""
    check_positive("beta", beta)
    check_label_smoothing(label_smoothing)
    delta = torch.sort(better).values - torch.sort(worse).values
    return smoothed_logistic_loss(beta * delta, label_smoothing)


def aot_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """Paired AOT (Melnyk et al. 2024, arXiv 2406.05882, Sec. 3): the distribution of the policy's margins
    ``m_i = log pi(y_w) - log pi(y_l)`` should dominate, in the first order, the distribution of the
    reference's margins ``m_ref_i``. In one dimension the optimal-transport plan between two empirical
    distributions matches their sorted values, so the loss is a logistic loss on sorted differences::

        delta_k = sort(m)_k - sort(m_ref)_k
        loss_k  = -(1 - eps) log sigmoid(beta delta_k) - eps log sigmoid(-beta delta_k)

    Sorting couples the rows: entry ``k`` is the ``k``-th quantile, not row ``k``; only the batch mean
    is meaningful. The sort is over the tensors passed in (a trainer's micro-batch); accumulating
    gradients over micro-batches does not enlarge it. ``eps`` smooths the logistic loss (the paper's
    relaxation is the plain logistic, ``eps = 0``).

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: ``(B,)`` each.
        beta: > 0, the scale of the sorted differences.
        label_smoothing: eps in [0, 0.5).

    Returns:
        ``LossOutput`` with loss ``(B,)`` (one entry per quantile) and the rows' DPO reward metrics.
    """
    chosen, rejected = log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    margins = upcast(policy_chosen_logps) - upcast(policy_rejected_logps)
    ref_margins = upcast(ref_chosen_logps) - upcast(ref_rejected_logps)
    loss = _sorted_logistic(margins, ref_margins.to(margins.dtype), beta, label_smoothing)
    return LossOutput(loss, reward_metrics(beta * chosen, beta * rejected))


def aot_unpaired_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """Unpaired AOT (Melnyk et al. 2024, arXiv 2406.05882, Sec. 3): the distribution of the chosen
    log-ratios ``c_i = log pi(y_w) - log pi_ref(y_w)`` should dominate that of the rejected log-ratios
    ``r_i``, the pairing of rows ignored::

        delta_k = sort(c)_k - sort(r)_k
        loss_k  = -(1 - eps) log sigmoid(beta delta_k) - eps log sigmoid(-beta delta_k)

    As in ``aot_loss``, entry ``k`` is a quantile and the sort is over the micro-batch passed in.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: ``(B,)`` each.
        beta: > 0, the scale of the sorted differences.
        label_smoothing: eps in [0, 0.5).

    Returns:
        ``LossOutput`` with loss ``(B,)`` (one entry per quantile) and the rows' DPO reward metrics.
    """
    chosen, rejected = log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    loss = _sorted_logistic(chosen, rejected, beta, label_smoothing)
    return LossOutput(loss, reward_metrics(beta * chosen, beta * rejected))


@dataclass(frozen=True)
class AOTSettings:
    beta: float = setting(0.1, "Scale of the sorted log-ratio differences, > 0.")
    label_smoothing: float = setting(0.0, "Label smoothing of the logistic loss on each quantile, in [0, 0.5).")


METHODS = (
    Method(
        "aot",
        aot_loss,
        AOTSettings,
        kind="pairwise",
        needs_reference=True,
        summary="paired AOT: the policy's margins dominate the reference's (sorted over the micro-batch)",
        step=pair_step(aot_loss, *WITH_REFERENCE),
        trl_loss_type=("aot",),
    ),
    Method(
        "aot_unpaired",
        aot_unpaired_loss,
        AOTSettings,
        kind="pairwise",
        needs_reference=True,
        summary="unpaired AOT: chosen log-ratios dominate rejected ones (sorted over the micro-batch)",
        step=pair_step(aot_unpaired_loss, *WITH_REFERENCE),
        trl_loss_type=("aot_unpaired",),
    ),
)
