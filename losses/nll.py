"""The NLL term on the preferred answer that any pairwise loss can add (RPO-style)."""

from __future__ import annotations

import torch

from .checks import check_batch, check_counts, check_nonnegative, upcast
from .output import LossOutput


def chosen_nll(policy_chosen_logps: torch.Tensor, chosen_tokens: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood of the preferred answer.

    ``nll = -log pi(y_w|x) / |y_w|``, the term that Pang et al. 2024 ("Iterative
    Reasoning Preference Optimization", arXiv 2404.19733) add to DPO. The paper
    divides by the length of prompt and answer; we divide by the answer's
    tokens only, since the prompt is not scored.

    Args:
        policy_chosen_logps: ``(B,)`` summed log pi(y_w|x).
        chosen_tokens: ``(B,)`` completion token counts (> 0).

    Returns:
        ``(B,)`` per-example NLL.
    """
    batch = check_batch("policy_chosen_logps", policy_chosen_logps)
    check_counts("chosen_tokens", chosen_tokens, batch)
    return -upcast(policy_chosen_logps) / chosen_tokens


def add_chosen_nll(
    output: LossOutput,
    policy_chosen_logps: torch.Tensor,
    chosen_tokens: torch.Tensor,
    *,
    alpha: float,
) -> LossOutput:
    """Return ``output`` with ``alpha * chosen_nll`` added to each example's loss.

    Works with any loss that returns a ``LossOutput`` for the same batch
    (DPO gives RPO; also IPO, SimPO, MC-PO, MPO). Adds the metric ``nll``.

    Args:
        output: a loss's ``LossOutput`` with loss shape ``(B,)``.
        policy_chosen_logps: ``(B,)`` summed log pi(y_w|x), with gradient.
        chosen_tokens: ``(B,)`` completion token counts.
        alpha: weight of the NLL term, >= 0.
    """
    check_nonnegative("alpha", alpha)
    nll = chosen_nll(policy_chosen_logps, chosen_tokens)  # (B,)
    if nll.shape != output.loss.shape:
        raise ValueError(
            f"policy_chosen_logps: batch {tuple(nll.shape)} does not match the loss's {tuple(output.loss.shape)}"
        )
    metrics = dict(output.metrics, nll=nll.detach())
    return LossOutput(output.loss + alpha * nll, metrics)
