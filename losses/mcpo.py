"""MC-PO: preference optimization with Monte-Carlo-kernel negatives.

Chen et al. 2025, "Preference Optimization via Contrastive Divergence: Your
Reward Model is Secretly an NLL Estimator", arXiv 2502.04567, Sec. 3.

Preference optimization is read as the NLL of ``p(y|x) ∝ exp(r(x, y))`` with
the implicit reward ``r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x))``, the
normalizer taken over the preferred answer ``y_0`` and the pool ``y_1..y_K``.
Its gradient, ``∇ log Σ_{i=0..K} exp(r_i)``, is estimated by contrastive
divergence: a Monte-Carlo kernel draws ``M`` negatives ``s_1..s_M``
(``num_negatives``) independently, with replacement, from ``{y_0} ∪ pool`` with
probability ``K_i = softmax(r_0, r_1..r_K)_i`` under the current policy, and the
loss is the NLL with those ``M`` noise samples::

    loss = -r_0 + log(exp(r_0) + Σ_{j=1..M} exp(r(s_j)))

With ``M = 1`` this is the DPO loss against the draw, ``-log σ(r_0 - r(s_1))``;
a draw of ``y_0`` itself contributes the constant ``exp(r_0) / exp(r_0) = 1``
inside the log and no gradient, so at ``M = 1`` it gives ``log 2``. The kernels
(``losses/mcpo_kernels.py`` has their supports):

- ``sample``: the paper's kernel, above.
- ``rao_blackwell``: the same loss averaged over the ``M`` draws exactly (an
  enumeration of the ``(1 + K)^M`` ordered draws, ``K`` detached): the mean of
  ``sample``'s value and of its gradient, without sampling variance.
- ``listwise``: ``-r_0 + log Σ_{i ∈ {0} ∪ pool} exp(r_i)``, the NLL itself over the
  whole pool, so it takes no ``M`` (``num_negatives`` must be 1). Its gradient
  ``-∇r_0 + Σ_i K_i ∇r_i`` is the mean of the *linear* CD estimator
  ``∇(r(y') - r_0)``, not of the sampled loss: the two differ in value (1.464 vs
  1.052 for ``r_0 = 0``, pool rewards ``(1, -0.5)``) and in gradient.
- ``sample_pool``: draws from the pool alone (softmax over it), which reweights
  each example's expected gradient by ``1 / (1 - K_0)`` at ``M = 1``; a departure
  from the paper.
- ``uniform``: ``M`` i.i.d. uniform draws from the valid pool, the paper's
  "Random" baseline (DPO with a random rejected answer at ``M = 1``).
- ``max``, ``min``: the ``M`` hardest / easiest distinct pool answers (DPO against
  the hardest / easiest at ``M = 1``).

With one candidate and ``M = 1`` the pool-only kernels and ``listwise`` are DPO;
``sample`` and ``rao_blackwell`` are not, since ``y_0`` can be drawn.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_batch, check_logps, check_mask, check_positive, upcast
from .mcpo_kernels import (
    AVERAGING_KERNELS,
    CHOSEN_INDEX,
    CHOSEN_SUPPORT_KERNELS,
    MCPO_KERNELS,
    RAO_BLACKWELL_MAX_DRAWS,
    SELECTION_KERNELS,
    check_kernel,
    check_num_negatives,
    draw,
    extremes,
    kernel_diagnostics,
    kernel_probs,
    picked_slots,
)
from .output import LossOutput


def _check_pool(
    name: str, logps: torch.Tensor, expected: tuple[int | None, int | None], candidate_mask: torch.Tensor | None
) -> tuple[int, int, torch.Tensor]:
    """Check a ``(B, K)`` pool tensor and its mask; return B, K and a full mask.

    ``expected`` is ``(B, K)`` as known from the other arguments, None where unknown.
    """
    if not isinstance(logps, torch.Tensor) or logps.dim() != 2:
        shape = tuple(logps.shape) if isinstance(logps, torch.Tensor) else type(logps).__name__
        raise ValueError(f"{name}: expected shape (B, K), got {shape}")
    b, k = logps.shape
    if any(want is not None and got != want for got, want in zip((b, k), expected, strict=True)):
        want = ("B" if expected[0] is None else expected[0], "K" if expected[1] is None else expected[1])
        raise ValueError(f"{name}: expected shape {want}, got {(b, k)}")
    if k == 0:
        raise ValueError(f"{name}: the candidate pool is empty (K = 0)")
    mask = check_mask("candidate_mask", candidate_mask, (b, k))
    if mask is None:
        mask = torch.ones(b, k, dtype=torch.bool, device=logps.device)
    empty = ~mask.any(dim=1)
    if bool(empty.any()):
        row = int(empty.nonzero()[0])
        raise ValueError(f"candidate_mask: row {row} has no valid candidate")
    check_logps(name, logps, (b, k), mask)
    return b, k, mask


def _pool_rewards(
    policy_candidate_logps: torch.Tensor, ref_candidate_logps: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """``beta * (policy - ref)`` on valid slots, 0 on padding, ``(B, K)``.

    Padding may hold NaN or inf; ``where`` keeps it out of values and gradients.
    """
    policy = torch.where(mask, upcast(policy_candidate_logps), 0.0)
    ref = torch.where(mask, upcast(ref_candidate_logps), 0.0)
    return beta * (policy - ref)


def _check_selected(selected: torch.Tensor, mask: torch.Tensor, kernel: str, num_negatives: int) -> None:
    batch, pool = mask.shape
    if not isinstance(selected, torch.Tensor) or selected.dtype != torch.long:
        raise ValueError("selected: expected a long tensor of pool indices")
    if tuple(selected.shape) != (batch, num_negatives):
        raise ValueError(
            f"selected: expected shape (B, num_negatives) = ({batch}, {num_negatives}), got {tuple(selected.shape)}"
        )
    if kernel in CHOSEN_SUPPORT_KERNELS:
        if bool(((selected < CHOSEN_INDEX) | (selected >= pool)).any()):
            raise ValueError(
                f"selected: indices must lie in [{CHOSEN_INDEX}, {pool}) ({CHOSEN_INDEX} = the preferred answer)"
            )
    elif bool(((selected < 0) | (selected >= pool)).any()):
        raise ValueError(
            f"selected: indices must lie in [0, {pool}); the {kernel} kernel draws "
            f"from the pool only, so {CHOSEN_INDEX} (the preferred answer) is not a pick"
        )
    in_pool = selected >= 0
    if not bool(mask.gather(1, selected.clamp(min=0))[in_pool].all()):
        raise ValueError("selected: points at a padded (masked-out) candidate")


def _pick(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    probs: torch.Tensor,
    kernel: str,
    generator: torch.Generator | None,
    num_negatives: int,
) -> torch.Tensor:
    """A selection kernel's ``(B, M)`` picks: ``CHOSEN_INDEX`` or pool slots."""
    if kernel in ("max", "min"):
        return extremes(rewards, mask, kernel, num_negatives)
    return draw(probs, kernel, generator, num_negatives)


def mcpo_select(
    policy_candidate_logps: torch.Tensor,
    ref_candidate_logps: torch.Tensor,
    *,
    policy_chosen_logps: torch.Tensor | None = None,
    ref_chosen_logps: torch.Tensor | None = None,
    candidate_mask: torch.Tensor | None = None,
    beta: float = 0.1,
    kernel: str = "sample",
    num_negatives: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick ``M`` negatives per row, without gradient: pool slots, or ``CHOSEN_INDEX`` for ``y_0``.

    This is the kernel step of MC-PO on its own (Chen et al. 2025, arXiv
    2502.04567, Sec. 3): a trainer scores the pool (and, for ``sample``, the
    preferred answers) under the current policy in inference mode, calls this,
    then runs forward/backward on the preferred answer and the distinct picked
    negatives only, and passes the result to ``mcpo_loss(..., selected=...)``.

    Kernels (``r_i = beta * (log pi(y_i|x) - log pi_ref(y_i|x))``, ``i = 0`` the
    preferred answer); the random ones make ``M`` independent draws with replacement:
        ``sample``: ``P(i) ∝ exp(r_i)`` over ``{y_0} ∪ valid pool`` (the paper's
        kernel); ``CHOSEN_INDEX`` (-1) marks a draw of ``y_0``, and it needs
        ``policy_chosen_logps`` and ``ref_chosen_logps``.
        ``sample_pool``: ``P(i) ∝ exp(r_i)`` over the valid pool only.
        ``uniform``: uniform over the valid pool (the paper's "Random" baseline).
        ``max`` / ``min``: the ``M`` highest / lowest-reward distinct pool answers,
        hardest / easiest first (ties: lower slot first); a row with fewer than
        ``M`` valid candidates is a ValueError.
    ``listwise`` and ``rao_blackwell`` make no pick (ValueError).

    Args:
        policy_candidate_logps: ``(B, K)`` log pi(y_i|x), summed over tokens.
        ref_candidate_logps: ``(B, K)`` log pi_ref(y_i|x).
        policy_chosen_logps: ``(B,)`` log pi(y_0|x); required by ``sample``,
            checked but unused by the pool-only kernels.
        ref_chosen_logps: ``(B,)`` log pi_ref(y_0|x); as ``policy_chosen_logps``.
        candidate_mask: ``(B, K)`` bool, True for real candidates (ragged pools);
            every row needs at least one. Padded slots are never picked.
        beta: > 0.
        kernel: one of ``SELECTION_KERNELS``.
        num_negatives: ``M >= 1``, the negatives per row.
        generator: a ``torch.Generator`` on the tensors' device, for
            reproducible draws (``sample``/``sample_pool``/``uniform``).

    Returns:
        ``(B, M)`` long: pool indices in ``[0, K)``, or ``CHOSEN_INDEX`` (``sample`` only).
    """
    if kernel in AVERAGING_KERNELS:
        raise ValueError(
            f"kernel: {kernel!r} averages over every candidate and makes no "
            f"pick; mcpo_select takes one of {', '.join(SELECTION_KERNELS)}"
        )
    check_kernel(kernel, SELECTION_KERNELS)
    check_positive("beta", beta)
    check_num_negatives(num_negatives)
    batch, pool, mask = _check_pool("policy_candidate_logps", policy_candidate_logps, (None, None), candidate_mask)
    _check_pool("ref_candidate_logps", ref_candidate_logps, (batch, pool), mask)
    given = {"policy_chosen_logps": policy_chosen_logps, "ref_chosen_logps": ref_chosen_logps}
    for name, value in given.items():
        if value is not None:
            check_logps(name, value, (batch,))
        elif kernel in CHOSEN_SUPPORT_KERNELS:
            raise ValueError(
                f"{name}: the {kernel} kernel draws from {{y0}} ∪ pool and needs r0; pass "
                "policy_chosen_logps and ref_chosen_logps (sample_pool draws from the pool alone)"
            )
        elif any(v is not None for v in given.values()):
            raise ValueError(f"{name}: pass both chosen log-prob tensors or neither")
    with torch.no_grad():
        rewards = _pool_rewards(policy_candidate_logps, ref_candidate_logps, mask, beta)
        chosen = None
        if policy_chosen_logps is not None:
            chosen = beta * (upcast(policy_chosen_logps) - upcast(ref_chosen_logps))
        probs = kernel_probs(rewards, mask, kernel, chosen)
        return _pick(rewards, mask, probs, kernel, generator, num_negatives)


def _negatives_loss(gaps: torch.Tensor) -> torch.Tensor:
    """``log(1 + Σ_j exp(gaps_j))`` over the last dim: the NLL with noise samples, per row.

    ``gaps_j = r(s_j) - r_0``, and exactly 0 (no gradient) for a draw of ``y_0``, which is
    ``-r_0 + log(exp(r_0) + Σ_j exp(r(s_j)))`` with ``r_0`` cancelled. With one gap it is
    ``softplus(gap) = -log σ(r_0 - r(s_1))``, the DPO loss.
    """
    return torch.logsumexp(F.pad(gaps, (1, 0)), dim=-1)


def _rao_blackwell(
    chosen_rewards: torch.Tensor, pool_rewards: torch.Tensor, probs: torch.Tensor, num_negatives: int
) -> torch.Tensor:
    """``E[loss]`` over ``M`` i.i.d. draws from ``probs`` ``(B, 1 + K)``: a sum over the ``(1 + K)^M``
    ordered draws, each weighted by its (detached) probability. Padding has weight 0 and a finite
    loss, so it adds 0 and gets 0 gradient."""
    columns = probs.shape[1]
    count = columns**num_negatives
    if count > RAO_BLACKWELL_MAX_DRAWS:
        raise ValueError(
            f"num_negatives: rao_blackwell at M = {num_negatives} averages over (1 + K)^M = {columns}^"
            f"{num_negatives} = {count} ordered draws per row, more than {RAO_BLACKWELL_MAX_DRAWS}; use "
            "the sample kernel (an unbiased draw of the same loss) or fewer negatives"
        )
    # Column 0 is y0: its gap is the constant 0; column 1 + i is pool slot i.
    gaps = F.pad(pool_rewards - chosen_rewards[:, None], (1, 0))  # (B, 1 + K)
    grid = torch.arange(columns, device=probs.device)
    draws = torch.cartesian_prod(*[grid] * num_negatives).reshape(count, num_negatives)  # (T, M)
    weights = probs[:, draws].prod(dim=-1)  # (B, T)
    return (weights * _negatives_loss(gaps[:, draws])).sum(dim=-1)


def mcpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_candidate_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_candidate_logps: torch.Tensor,
    *,
    candidate_mask: torch.Tensor | None = None,
    beta: float = 0.1,
    kernel: str = "sample",
    num_negatives: int = 1,
    generator: torch.Generator | None = None,
    selected: torch.Tensor | None = None,
) -> LossOutput:
    """MC-PO loss with ``M`` sampled negatives (Chen et al. 2025, arXiv 2502.04567, Sec. 3).

    ``r_0 = beta * (log pi(y_0|x) - log pi_ref(y_0|x))`` for the preferred
    answer, ``r_i`` likewise for the pool ``y_1..y_K``, and ``K`` the kernel's
    distribution (``kernel_probs``; for ``sample``, ``listwise`` and
    ``rao_blackwell`` ``K = softmax(r_0, r_valid...)`` over ``{y_0} ∪ valid pool``).

    Selection kernels (``sample``, ``sample_pool``, ``max``, ``min``, ``uniform``;
    see :func:`mcpo_select`) pick ``s_1..s_M`` without gradient through the choice;
    the loss is the NLL with those ``M`` noise samples::

        loss = -r_0 + log(exp(r_0) + Σ_{j=1..M} exp(r(s_j)))
             = -log σ(r_0 - r(s_1))                  # M = 1
        # a draw s_j = y_0 adds exp(r_0): a constant 1 after r_0 cancels, no gradient;
        # at M = 1 such a row's loss is log 2 with zero gradient

    ``rao_blackwell``: that loss's expectation over the ``M`` i.i.d. draws from
    ``K``, exactly (``K`` detached), so value and gradient are the means of
    ``sample``'s at the same ``M`` (no sampling variance). It enumerates the
    ``(1 + K)^M`` ordered draws per row, at most ``RAO_BLACKWELL_MAX_DRAWS``::

        loss = Σ_{(s_1..s_M)} Π_j K_{s_j} · loss(s_1..s_M)
        ∇loss = Σ Π_j K_{s_j} ∇loss(s_1..s_M)        # not the derivative of the value

    ``listwise``: the NLL over ``{y_0} ∪ valid pool``, gradient through every
    candidate; the mean of the linear CD estimator, not of the sampled loss. It
    uses the whole pool, so ``num_negatives`` must be 1::

        loss = -r_0 + logsumexp(r_0, r_valid...)
        ∇loss = -∇r_0 + Σ_{i ∈ {0} ∪ valid} K_i ∇r_i

    With ``K = 1`` candidate and ``M = 1``, ``sample_pool``, ``max``, ``min``,
    ``uniform`` and ``listwise`` equal :func:`dpo_loss`; ``sample`` and
    ``rao_blackwell`` do not.

    Args:
        policy_chosen_logps: ``(B,)`` log pi(y_0|x), summed over completion tokens.
        policy_candidate_logps: ``(B, K)`` log pi(y_i|x).
        ref_chosen_logps: ``(B,)`` log pi_ref(y_0|x) (cached).
        ref_candidate_logps: ``(B, K)`` log pi_ref(y_i|x) (cached).
        candidate_mask: ``(B, K)`` bool, True for real candidates; a row with
            none is an error naming the row. Padded slots may hold any value, NaN included.
        beta: > 0.
        kernel: one of ``MCPO_KERNELS`` (the old name ``expectation`` is refused with
            a message naming ``listwise`` and ``rao_blackwell``).
        num_negatives: ``M >= 1``, the negatives per row (1 for ``listwise``).
        generator: ``torch.Generator`` for ``sample``/``sample_pool``/``uniform`` draws.
        selected: ``(B, M)`` long, picks already made by :func:`mcpo_select` with
            the same ``kernel`` and ``num_negatives``: pool indices, or
            ``CHOSEN_INDEX`` (-1, ``sample`` only) where ``y_0`` was drawn.
            Two-pass training: score without gradient, pick, then forward/backward
            the distinct picked answers only, passing their log-probs at their
            slots and the no-gradient scores elsewhere. No draw is made;
            ``generator`` is unused.

    Returns:
        ``LossOutput`` with loss ``(B,)`` and metrics (``(B,)`` unless said):
        ``rewards/chosen`` (r_0); ``rewards/rejected`` (mean reward of the ``M``
        picks, ``r_0`` for a draw of ``y_0``; for ``listwise``/``rao_blackwell``
        the highest-reward pool candidate); ``rewards/margins``;
        ``rewards/accuracies``; ``mcpo/selected`` (long ``(B, M)``: the picks,
        ``CHOSEN_INDEX`` for ``y_0``; ``(B, 1)`` for the averaging kernels: the
        highest-reward pool candidate); ``mcpo/chosen_drawn`` (the fraction of the
        ``M`` draws that were ``y_0``; 0 for every kernel but ``sample``);
        ``mcpo/distinct_negatives`` (the distinct pool answers the loss
        back-propagates through: the distinct picks, every valid candidate for
        the averaging kernels); ``mcpo/pool_accuracy`` (r_0 above every valid
        candidate); ``mcpo/num_candidates``; and the kernel diagnostics
        ``mcpo/entropy``, ``mcpo/kernel_kl_uniform``, ``mcpo/kernel_top_prob``,
        ``mcpo/kernel_chosen_prob``, ``mcpo/pool_reward_std`` (see
        ``kernel_diagnostics``: entropy, KL to uniform and top probability of
        ``K`` over its support, ``K_0``, and the std of the valid pool's rewards).
    """
    check_kernel(kernel, MCPO_KERNELS)
    check_num_negatives(num_negatives, kernel)
    if selected is not None and kernel in AVERAGING_KERNELS:
        raise ValueError(f"selected: the {kernel} kernel averages over the pool; it takes no selection")
    check_positive("beta", beta)
    batch = check_batch("policy_chosen_logps", policy_chosen_logps)
    check_logps("ref_chosen_logps", ref_chosen_logps, (batch,))
    _, pool, mask = _check_pool("policy_candidate_logps", policy_candidate_logps, (batch, None), candidate_mask)
    _check_pool("ref_candidate_logps", ref_candidate_logps, (batch, pool), mask)

    chosen_rewards = beta * (upcast(policy_chosen_logps) - upcast(ref_chosen_logps))  # (B,)
    pool_rewards = _pool_rewards(policy_candidate_logps, ref_candidate_logps, mask, beta)  # (B, K)
    probs = kernel_probs(pool_rewards, mask, kernel, chosen_rewards)  # (B, 1 + K), detached
    best_candidate = pool_rewards.detach().masked_fill(~mask, float("-inf")).max(dim=-1)

    if kernel in AVERAGING_KERNELS:
        if kernel == "listwise":
            logits = torch.cat(  # (B, 1 + K): y_0 first, padding excluded
                [chosen_rewards[:, None], pool_rewards.masked_fill(~mask, float("-inf"))], dim=-1
            )
            loss = torch.logsumexp(logits, dim=-1) - chosen_rewards
        else:
            loss = _rao_blackwell(chosen_rewards, pool_rewards, probs, num_negatives)
        selected = best_candidate.indices[:, None]  # (B, 1)
        distinct = mask.sum(dim=-1)
    else:
        if selected is None:
            selected = _pick(pool_rewards, mask, probs, kernel, generator, num_negatives)  # (B, M)
        else:
            _check_selected(selected, mask, kernel, num_negatives)
        drawn_chosen = selected == CHOSEN_INDEX  # (B, M); only `sample` draws y_0
        picked = pool_rewards.gather(1, selected.clamp(min=0))  # (B, M), with gradient
        # `where`, not arithmetic: a y_0 draw's gap is exactly 0 with exactly zero gradient.
        gaps = torch.where(drawn_chosen, 0.0, picked - chosen_rewards[:, None])
        loss = _negatives_loss(gaps)
        distinct = picked_slots(selected, pool).sum(dim=-1)
    drawn_chosen = selected == CHOSEN_INDEX  # (B, M) or (B, 1)
    slot = selected.clamp(min=0)
    rejected_rewards = torch.where(
        drawn_chosen, chosen_rewards.detach()[:, None], pool_rewards.detach().gather(1, slot)
    ).mean(dim=-1)
    margins = chosen_rewards.detach() - rejected_rewards
    metrics: dict[str, torch.Tensor] = {
        "rewards/chosen": chosen_rewards.detach(),
        "rewards/rejected": rejected_rewards,
        "rewards/margins": margins,
        "rewards/accuracies": (margins > 0).float(),
        "mcpo/selected": selected,
        "mcpo/chosen_drawn": drawn_chosen.float().mean(dim=-1),
        "mcpo/distinct_negatives": distinct,
        "mcpo/pool_accuracy": (chosen_rewards.detach() > best_candidate.values).float(),
        "mcpo/num_candidates": mask.sum(dim=-1),
    }
    metrics.update(kernel_diagnostics(probs, kernel, pool_rewards, mask))
    return LossOutput(loss, metrics)
