"""Implicit-reward ranking metrics, from per-sequence log-probs only (no model, no I/O).

The implicit reward of a completion is ``r = beta * (log pi(y|x) - log pi_ref(y|x))``.
Every metric here except the margins compares rewards of completions of the
same prompt, so it depends only on the sign of log-ratio differences: ``beta``
(> 0) scales rewards but never changes a ranking. Margins are reported both
beta-free (``*_logratio_margin``, nats) and scaled (``mean_margin``).

Tie rule: two completions tie when their log-ratios differ by at most
``tie_atol`` nats (default 1e-4: the policy's log-probs are float32 sums over
hundreds of tokens, and batch composition alone moves them by ~1e-6). A tie
is never a win: accuracy counts strict wins only, so a policy equal to the
reference scores accuracy 0 with tie rate 1 (TRL's ``rewards/accuracies``
also uses a strict ``>``). Ranks use the mid-rank convention: the preferred
answer's rank is ``1 + (#pool members strictly above it) + (#tied) / 2``, so a
policy equal to the reference gives rank ``1 + M / 2`` for a pool of ``M``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _check_tol(tie_atol: float) -> None:
    if not tie_atol >= 0:
        raise ValueError(f"tie_atol: must be >= 0, got {tie_atol}")


def pairwise_metrics(
    chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, *, beta: float, tie_atol: float = 1e-4
) -> dict[str, float]:
    """Metrics of ``N`` pairs from their log-ratios ``log pi - log pi_ref``, each ``(N,)``.

    Returns ``num_pairs``, ``accuracy`` (strict wins / N), ``tie_rate``,
    ``mean_margin`` (``beta *`` mean log-ratio difference) and
    ``mean_logratio_margin``.
    """
    _check_tol(tie_atol)
    if chosen_logratios.shape != rejected_logratios.shape or chosen_logratios.dim() != 1:
        raise ValueError("chosen_logratios, rejected_logratios: expected two (N,) tensors")
    n = chosen_logratios.numel()
    if n == 0:
        raise ValueError("no pairs to evaluate")
    diff = chosen_logratios.double() - rejected_logratios.double()  # (N,)
    return {
        "num_pairs": n,
        "accuracy": float((diff > tie_atol).double().mean()),
        "tie_rate": float((diff.abs() <= tie_atol).double().mean()),
        "mean_margin": float(beta * diff.mean()),
        "mean_logratio_margin": float(diff.mean()),
    }


def pool_metrics(
    preferred_logratios: torch.Tensor, pool_logratios: Sequence[torch.Tensor], *, beta: float, tie_atol: float = 1e-4
) -> dict[str, float]:
    """Metrics of ``N`` prompts: the preferred answer ranked among itself + its pool.

    Args:
        preferred_logratios: ``(N,)`` log-ratios of the preferred answers.
        pool_logratios: ``N`` tensors ``(M_n,)``, each prompt's pool (ragged, ``M_n >= 1``).

    Returns ``num_prompts``, ``num_pool_pairs`` (sum of ``M_n``), ``top1_accuracy``
    (preferred strictly above every pool member), ``mean_rank`` (mid-rank, 1 =
    best; see the module docstring), ``mean_pool_size``, ``pairwise_accuracy``
    (strict wins over all (prompt, pool member) pairs, micro-averaged),
    ``pairwise_tie_rate``, ``mean_margin`` / ``mean_logratio_margin`` (over
    the same pairs).
    """
    _check_tol(tie_atol)
    n = preferred_logratios.numel()
    if n == 0:
        raise ValueError("no prompts to evaluate")
    if len(pool_logratios) != n:
        raise ValueError(f"pool_logratios: expected {n} pools, got {len(pool_logratios)}")
    top1, ranks, wins, ties, pairs, margin_sum = 0, 0.0, 0, 0, 0, 0.0
    for r0, pool in zip(preferred_logratios.double().tolist(), pool_logratios, strict=True):
        if pool.numel() == 0:
            raise ValueError("pool_logratios: a prompt has an empty pool")
        diff = r0 - pool.double()  # (M,) > 0 where the preferred answer is above
        above = int((diff < -tie_atol).sum())
        tied = int((diff.abs() <= tie_atol).sum())
        top1 += above == 0 and tied == 0
        ranks += 1 + above + tied / 2
        wins += int((diff > tie_atol).sum())
        ties += tied
        pairs += pool.numel()
        margin_sum += float(diff.sum())
    return {
        "num_prompts": n,
        "num_pool_pairs": pairs,
        "top1_accuracy": top1 / n,
        "mean_rank": ranks / n,
        "mean_pool_size": pairs / n,
        "pairwise_accuracy": wins / pairs,
        "pairwise_tie_rate": ties / pairs,
        "mean_margin": beta * margin_sum / pairs,
        "mean_logratio_margin": margin_sum / pairs,
    }
