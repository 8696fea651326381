"""MPO: Maximum Preference Optimization with importance sampling.

Jiang, Huang, Wei 2023, "Preference as Reward, Maximum Preference Optimization
with Importance Sampling", arXiv 2312.16430, eq. 33. Not TRL's "mixed
preference optimization", which shares the acronym.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks import (
    check_batch,
    check_counts,
    check_logps,
    check_mask,
    check_nonnegative,
    upcast,
)
from .method import Method, setting
from .output import LossOutput


def _preference_logit(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    chosen_tokens: torch.Tensor | None,
    rejected_tokens: torch.Tensor | None,
) -> torch.Tensor:
    if chosen_tokens is not None:
        return upcast(chosen) / chosen_tokens - upcast(rejected) / rejected_tokens
    return upcast(chosen) - upcast(rejected)


def _check_preference(preference: torch.Tensor | None, batch: int) -> None:
    if preference is None:
        return
    check_logps("preference", preference, (batch,))
    if not bool(((preference >= 0) & (preference <= 1)).all()):
        raise ValueError("preference: values must lie in [0, 1]")


def mean_sample_nll(ref_sample_logps: torch.Tensor, ref_sample_mask: torch.Tensor | None) -> torch.Tensor:
    """``-mean_k log pi(y_k|x)`` over the valid reference samples of each row, ``(B,)``."""
    mask = ref_sample_mask if ref_sample_mask is not None else torch.ones_like(ref_sample_logps, dtype=torch.bool)
    logps = torch.where(mask, upcast(ref_sample_logps), 0.0)
    # A row with no sample (allowed only when tau = 0) reports 0, not NaN.
    return -logps.sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)


def mpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    preference: torch.Tensor | None = None,
    ref_sample_logps: torch.Tensor | None = None,
    ref_sample_mask: torch.Tensor | None = None,
    beta: float = 0.1,
    tau: float = 0.0,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
    length_normalize: bool = False,
) -> LossOutput:
    """MPO loss (Jiang, Huang, Wei 2023, arXiv 2312.16430, eq. 33).

    The policy "chooses" between the two answers of a pair with probability
    ``p = σ(log pi(y_w|x) - log pi(y_l|x))`` (and ``p_ref`` likewise under the
    reference, from cached log-probs). The preference label ``I`` is the
    reward of choosing ``y_w``, ``1 - I`` that of choosing ``y_l``::

        loss = -[I p + (1 - I)(1 - p)]
               + beta * KL(Bern(p) ‖ Bern(p_ref))
               - tau  * E_{y ~ pi_ref}[log pi(y|x)]

    The last expectation is over answers pre-generated from the reference
    (``ref_sample_logps`` are the *policy's* log-probs of those answers).
    No reward model and no reference model are needed during training.

    Choices made where the paper is silent:
        - Per-example loss, unreduced; the caller averages over the batch.
        - Both actions of each pair enter (the ``(1 - I)(1 - p)`` term), so soft
          labels ``I ∈ [0, 1]`` work; ``I = 0.5`` rewards nothing but the KL.
        - The KL is computed in log space with ``logsigmoid`` for stability;
          gradient flows through ``p`` in both terms, ``p_ref`` is a constant.
        - The tau term averages over each row's valid samples (a mean, not a
          sum, so tau does not scale with K); a row with none is an error when
          ``tau > 0``. Exactly: ``tau * (-1/K_b) Σ_k log pi(y_k|x_b)`` per row
          ``b``, with ``K_b`` its valid samples. Relation to eq. 33's τ: read
          literally, eq. 33 takes the reference term over records of *two*
          actions ``(y, y') ~ pi_ref`` and adds both log-probs, i.e. twice a
          per-sample mean; so this ``tau`` is the paper's ``2τ`` (pass
          ``tau = 2 * τ_paper`` to reproduce eq. 33 as written).
        - The samples must be i.i.d. draws from the reference (the KL the tau
          term estimates is to ``pi_ref``): e.g. every sample ``generate`` drew
          for the prompt, not a subset filtered by reward such as the
          rejected answers of a pool.
        - ``p`` uses raw summed log-prob differences, as in the paper. With
          ``length_normalize=True``, ``p`` and ``p_ref`` use per-token means
          (``log pi(y)/|y|``) instead; the tau term always uses what it is given.

    Args:
        policy_chosen_logps: ``(B,)`` log pi(y_w|x), summed over completion tokens.
        policy_rejected_logps: ``(B,)`` log pi(y_l|x).
        ref_chosen_logps: ``(B,)`` log pi_ref(y_w|x) (cached).
        ref_rejected_logps: ``(B,)`` log pi_ref(y_l|x) (cached).
        preference: ``(B,)`` in [0, 1], the probability that y_w is preferred;
            default 1 (y_w is the chosen answer).
        ref_sample_logps: ``(B, K)`` policy log-probs of K answers sampled from
            the reference; needed when ``tau > 0``.
        ref_sample_mask: ``(B, K)`` bool, True for real samples.
        beta: weight of the KL term, >= 0.
        tau: weight of the reference-sample NLL term, >= 0.
        chosen_tokens, rejected_tokens: ``(B,)`` token counts, needed with
            ``length_normalize``.
        length_normalize: compute ``p`` and ``p_ref`` from per-token log-probs.

    Returns:
        ``LossOutput`` with loss ``(B,)`` and metrics ``mpo/p``, ``mpo/p_ref``,
        ``mpo/preference_reward`` (``I p + (1 - I)(1 - p)``), ``mpo/kl``,
        ``mpo/ref_sample_nll`` (when samples are given), ``rewards/accuracies``
        (``p > 1/2`` agrees with ``I > 1/2``).
    """
    batch = check_batch("policy_chosen_logps", policy_chosen_logps)
    check_logps("policy_rejected_logps", policy_rejected_logps, (batch,))
    check_logps("ref_chosen_logps", ref_chosen_logps, (batch,))
    check_logps("ref_rejected_logps", ref_rejected_logps, (batch,))
    check_nonnegative("beta", beta)
    check_nonnegative("tau", tau)
    _check_preference(preference, batch)
    if length_normalize:
        for name, counts in (("chosen_tokens", chosen_tokens), ("rejected_tokens", rejected_tokens)):
            if counts is None:
                raise ValueError(f"{name}: length_normalize=True needs chosen_tokens and rejected_tokens")
        check_counts("chosen_tokens", chosen_tokens, batch)
        check_counts("rejected_tokens", rejected_tokens, batch)
    else:
        chosen_tokens = rejected_tokens = None
    if ref_sample_logps is not None:
        if ref_sample_logps.dim() != 2 or ref_sample_logps.shape[0] != batch:
            raise ValueError(f"ref_sample_logps: expected shape ({batch}, K), got {tuple(ref_sample_logps.shape)}")
        check_mask("ref_sample_mask", ref_sample_mask, tuple(ref_sample_logps.shape))
        check_logps("ref_sample_logps", ref_sample_logps, None, ref_sample_mask)
        counts = (
            ref_sample_mask.sum(dim=-1)
            if ref_sample_mask is not None
            else torch.full((batch,), ref_sample_logps.shape[1])
        )
        if tau > 0 and bool((counts == 0).any()):
            raise ValueError(f"ref_sample_logps: row {int((counts == 0).nonzero()[0])} has no reference sample")
    elif tau > 0:
        raise ValueError("ref_sample_logps: tau > 0 needs the policy's log-probs of reference samples")

    logit = _preference_logit(policy_chosen_logps, policy_rejected_logps, chosen_tokens, rejected_tokens)
    ref_logit = _preference_logit(ref_chosen_logps, ref_rejected_logps, chosen_tokens, rejected_tokens)
    p = torch.sigmoid(logit)  # (B,)
    label = torch.ones_like(p) if preference is None else upcast(preference).to(p.dtype)
    preference_reward = label * p + (1.0 - label) * (1.0 - p)  # (B,)

    # KL(Bern(p) ‖ Bern(q)) = p log(p/q) + (1-p) log((1-p)/(1-q)), in log space.
    kl = p * (F.logsigmoid(logit) - F.logsigmoid(ref_logit)) + (1.0 - p) * (
        F.logsigmoid(-logit) - F.logsigmoid(-ref_logit)
    )
    loss = -preference_reward + beta * kl

    metrics = {
        "mpo/p": p.detach(),
        "mpo/p_ref": torch.sigmoid(ref_logit).detach(),
        "mpo/preference_reward": preference_reward.detach(),
        "mpo/kl": kl.detach(),
        "rewards/accuracies": ((logit.detach() > 0) == (label > 0.5)).float(),
    }
    if ref_sample_logps is not None:
        nll = mean_sample_nll(ref_sample_logps, ref_sample_mask)  # (B,)
        if tau > 0:
            loss = loss + tau * nll
        metrics["mpo/ref_sample_nll"] = nll.detach()
    return LossOutput(loss, metrics)


@dataclass(frozen=True)
class MPOSettings:
    beta: float = setting(0.1, "Weight of KL(Bern(p) || Bern(p_ref)), > 0.")
    tau: float = setting(
        0.0,
        "Weight of the mean NLL of the reference samples (0 skips them); eq. 33 read literally: 2 x its tau.",
    )
    length_normalize: bool = setting(False, "p and p_ref from per-token mean log-probs instead of sums.")


METHODS = (
    Method(
        "mpo",
        mpo_loss,
        MPOSettings,
        kind="mpo",
        needs_reference=True,
        summary="MPO (Jiang, Huang, Wei 2023, eq. 33) with its reference samples",
    ),
)
