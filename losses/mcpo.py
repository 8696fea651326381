"""MC-PO: preference optimization with Monte-Carlo-kernel negatives.

Chen et al. 2025, "Preference Optimization via Contrastive Divergence: Your
Reward Model is Secretly an NLL Estimator", arXiv 2502.04567, Sec. 3.

Preference optimization is read as the NLL of ``p(y|x) ∝ exp(r(x, y))`` with
the implicit reward ``r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x))``, the
normalizer taken over the preferred answer ``y_0`` and the pool ``y_1..y_M``.
Its gradient, ``∇ log Σ_{i=0..M} exp(r_i)``, is estimated by contrastive
divergence: a Monte-Carlo kernel draws ``y'`` from ``{y_0} ∪ pool`` with
probability ``K_i = softmax(r_0, r_1..r_M)_i`` under the current policy, and
the loss for that draw is the DPO loss against it::

    loss = -log σ(r_0 - r(y'))

A draw of ``y_0`` itself gives ``-log σ(0) = log 2``, a constant with no
gradient. The kernels (``losses/mcpo_kernels.py`` has their supports):

- ``sample``: the paper's kernel, above.
- ``rao_blackwell``: the same loss averaged over the kernel exactly,
  ``Σ_i K_i · (-log σ(r_0 - r_i))`` with ``K`` detached: the mean of ``sample``'s
  value and of its gradient, without sampling variance.
- ``listwise``: ``-r_0 + log Σ_{i ∈ {0} ∪ pool} exp(r_i)``, the NLL itself. Its
  gradient ``-∇r_0 + Σ_i K_i ∇r_i`` is the mean of the *linear* CD estimator
  ``∇(r(y') - r_0)``, not of the sampled ``-log σ`` loss: the two differ in value
  (1.464 vs 1.052 for ``r_0 = 0``, pool rewards ``(1, -0.5)``) and in gradient.
- ``sample_pool``: draws from the pool alone (softmax over it), which reweights
  each example's expected gradient by ``1 / (1 - K_0)``; a departure from the paper.
- ``max``, ``min``, ``uniform``: baselines, DPO against the hardest, the easiest or
  a random pool answer.

With one candidate the pool-only kernels and ``listwise`` are DPO; ``sample``
and ``rao_blackwell`` are not, since ``y_0`` can be drawn.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_batch, check_logps, check_mask, check_positive, upcast
from .mcpo_kernels import (
    AVERAGING_KERNELS,
    CHOSEN_INDEX,
    CHOSEN_SUPPORT_KERNELS,
    LOG_2,
    MCPO_KERNELS,
    SELECTION_KERNELS,
    check_kernel,
    draw,
    kernel_diagnostics,
    kernel_probs,
)
from .output import LossOutput


def _check_pool(
    name: str, logps: torch.Tensor, expected: tuple[int | None, int | None], candidate_mask: torch.Tensor | None
) -> tuple[int, int, torch.Tensor]:
    """Check a ``(B, M)`` pool tensor and its mask; return B, M and a full mask.

    ``expected`` is ``(B, M)`` as known from the other arguments, None where unknown.
    """
    if not isinstance(logps, torch.Tensor) or logps.dim() != 2:
        shape = tuple(logps.shape) if isinstance(logps, torch.Tensor) else type(logps).__name__
        raise ValueError(f"{name}: expected shape (B, M), got {shape}")
    b, m = logps.shape
    if any(want is not None and got != want for got, want in zip((b, m), expected, strict=True)):
        want = ("B" if expected[0] is None else expected[0], "M" if expected[1] is None else expected[1])
        raise ValueError(f"{name}: expected shape {want}, got {(b, m)}")
    if m == 0:
        raise ValueError(f"{name}: the candidate pool is empty (M = 0)")
    mask = check_mask("candidate_mask", candidate_mask, (b, m))
    if mask is None:
        mask = torch.ones(b, m, dtype=torch.bool, device=logps.device)
    empty = ~mask.any(dim=1)
    if bool(empty.any()):
        row = int(empty.nonzero()[0])
        raise ValueError(f"candidate_mask: row {row} has no valid candidate")
    check_logps(name, logps, (b, m), mask)
    return b, m, mask


def _pool_rewards(
    policy_candidate_logps: torch.Tensor, ref_candidate_logps: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """``beta * (policy - ref)`` on valid slots, 0 on padding, ``(B, M)``.

    Padding may hold NaN or inf; ``where`` keeps it out of values and gradients.
    """
    policy = torch.where(mask, upcast(policy_candidate_logps), 0.0)
    ref = torch.where(mask, upcast(ref_candidate_logps), 0.0)
    return beta * (policy - ref)


def _check_selected(selected: torch.Tensor, mask: torch.Tensor, kernel: str) -> None:
    batch, pool = mask.shape
    if not isinstance(selected, torch.Tensor) or selected.dtype != torch.long:
        raise ValueError("selected: expected a long tensor of pool indices")
    if tuple(selected.shape) != (batch,):
        raise ValueError(f"selected: expected shape ({batch},), got {tuple(selected.shape)}")
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
    if not bool(mask.gather(1, selected.clamp(min=0)[:, None]).squeeze(1)[in_pool].all()):
        raise ValueError("selected: points at a padded (masked-out) candidate")


def mcpo_select(
    policy_candidate_logps: torch.Tensor,
    ref_candidate_logps: torch.Tensor,
    *,
    policy_chosen_logps: torch.Tensor | None = None,
    ref_chosen_logps: torch.Tensor | None = None,
    candidate_mask: torch.Tensor | None = None,
    beta: float = 0.1,
    kernel: str = "sample",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one answer per row, without gradient: a pool slot, or ``CHOSEN_INDEX`` for ``y_0``.

    This is the kernel step of MC-PO on its own (Chen et al. 2025, arXiv
    2502.04567, Sec. 3): a trainer scores the pool (and, for ``sample``, the
    preferred answers) under the current policy in inference mode, calls this,
    then runs forward/backward on the preferred answer and the picked negative
    only, and passes the result to ``mcpo_loss(..., selected=...)``.

    Kernels (``r_i = beta * (log pi(y_i|x) - log pi_ref(y_i|x))``, ``i = 0`` the
    preferred answer):
        ``sample``: ``P(i) ∝ exp(r_i)`` over ``{y_0} ∪ valid pool`` (the paper's
        kernel); returns ``CHOSEN_INDEX`` (-1) where ``y_0`` was drawn, and needs
        ``policy_chosen_logps`` and ``ref_chosen_logps``.
        ``sample_pool``: ``P(i) ∝ exp(r_i)`` over the valid pool only.
        ``max``: arg-max pool ``r_i`` (hardest negative). ``min``: arg-min (easiest).
        ``uniform``: a uniformly random valid candidate (DPO with a random rejected answer).
    ``listwise`` and ``rao_blackwell`` make no pick (ValueError).

    Args:
        policy_candidate_logps: ``(B, M)`` log pi(y_i|x), summed over tokens.
        ref_candidate_logps: ``(B, M)`` log pi_ref(y_i|x).
        policy_chosen_logps: ``(B,)`` log pi(y_0|x); required by ``sample``,
            checked but unused by the pool-only kernels.
        ref_chosen_logps: ``(B,)`` log pi_ref(y_0|x); as ``policy_chosen_logps``.
        candidate_mask: ``(B, M)`` bool, True for real candidates (ragged pools);
            every row needs at least one. Padded slots are never picked.
        beta: > 0.
        kernel: one of ``SELECTION_KERNELS``.
        generator: a ``torch.Generator`` on the tensors' device, for
            reproducible draws (``sample``/``sample_pool``/``uniform``).

    Returns:
        ``(B,)`` long: pool indices in ``[0, M)``, or ``CHOSEN_INDEX`` (``sample`` only).
    """
    if kernel in AVERAGING_KERNELS:
        raise ValueError(
            f"kernel: {kernel!r} averages over every candidate and makes no single "
            f"pick; mcpo_select takes one of {', '.join(SELECTION_KERNELS)}"
        )
    check_kernel(kernel, SELECTION_KERNELS)
    check_positive("beta", beta)
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
        return draw(kernel_probs(rewards, mask, kernel, chosen), kernel, generator)


def mcpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_candidate_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_candidate_logps: torch.Tensor,
    *,
    candidate_mask: torch.Tensor | None = None,
    beta: float = 0.1,
    kernel: str = "sample",
    generator: torch.Generator | None = None,
    selected: torch.Tensor | None = None,
) -> LossOutput:
    """MC-PO loss (Chen et al. 2025, arXiv 2502.04567, Sec. 3).

    ``r_0 = beta * (log pi(y_0|x) - log pi_ref(y_0|x))`` for the preferred
    answer, ``r_i`` likewise for the pool ``y_1..y_M``, and ``K`` the kernel's
    distribution (``kernel_probs``; for ``sample``, ``listwise`` and
    ``rao_blackwell`` ``K = softmax(r_0, r_valid...)`` over ``{y_0} ∪ valid pool``).

    Selection kernels (``sample``, ``sample_pool``, ``max``, ``min``, ``uniform``;
    see :func:`mcpo_select`) pick ``y'`` without gradient through the choice::

        loss = -log σ(r_0 - r(y'))     # y' = y_0 (``sample`` only): log 2, zero gradient

    ``rao_blackwell``: that loss averaged over ``K`` exactly, ``K`` detached, so
    value and gradient are the means of ``sample``'s (no sampling variance)::

        loss = Σ_{i ∈ {0} ∪ valid} K_i · (-log σ(r_0 - r_i))
        ∇loss = Σ_i K_i ∇(-log σ(r_0 - r_i))      # not the derivative of the value

    ``listwise``: the NLL over ``{y_0} ∪ valid pool``, gradient through every
    candidate; the mean of the linear CD estimator, not of the sampled loss::

        loss = -r_0 + logsumexp(r_0, r_valid...)
        ∇loss = -∇r_0 + Σ_{i ∈ {0} ∪ valid} K_i ∇r_i

    With ``M = 1``, ``sample_pool``, ``max``, ``min``, ``uniform`` and
    ``listwise`` equal :func:`dpo_loss`; ``sample`` and ``rao_blackwell`` do not.

    Args:
        policy_chosen_logps: ``(B,)`` log pi(y_0|x), summed over completion tokens.
        policy_candidate_logps: ``(B, M)`` log pi(y_i|x).
        ref_chosen_logps: ``(B,)`` log pi_ref(y_0|x) (cached).
        ref_candidate_logps: ``(B, M)`` log pi_ref(y_i|x) (cached).
        candidate_mask: ``(B, M)`` bool, True for real candidates; a row with
            none is an error naming the row. Padded slots may hold any value, NaN included.
        beta: > 0.
        kernel: one of ``MCPO_KERNELS`` (``expectation`` is now ``listwise``).
        generator: ``torch.Generator`` for ``sample``/``sample_pool``/``uniform`` draws.
        selected: ``(B,)`` long, picks already made by :func:`mcpo_select` with
            the same ``kernel``: pool indices, or ``CHOSEN_INDEX`` (-1, ``sample``
            only) where ``y_0`` was drawn. Two-pass training: score without
            gradient, pick, then forward/backward the picked answers only,
            passing their log-probs at ``selected`` and the no-gradient scores
            elsewhere. No draw is made; ``generator`` is unused. A ``-1`` row's
            loss is ``log 2`` with zero gradient to every input.

    Returns:
        ``LossOutput`` with loss ``(B,)`` and metrics (each ``(B,)``):
        ``rewards/chosen`` (r_0); ``rewards/rejected`` (reward of the drawn
        answer: r_0 itself where ``y_0`` was drawn, so margin 0 and accuracy 0;
        for ``listwise``/``rao_blackwell`` the highest-reward pool candidate);
        ``rewards/margins``; ``rewards/accuracies``; ``mcpo/selected`` (long:
        the pick, ``CHOSEN_INDEX`` for ``y_0``; for the averaging kernels the
        highest-reward pool candidate); ``mcpo/chosen_drawn`` (1.0 where ``y_0``
        was drawn; 0 for every kernel but ``sample``); ``mcpo/pool_accuracy``
        (r_0 above every valid candidate); ``mcpo/num_candidates``; and the
        kernel diagnostics ``mcpo/entropy``, ``mcpo/kernel_kl_uniform``,
        ``mcpo/kernel_top_prob``, ``mcpo/kernel_chosen_prob``,
        ``mcpo/pool_reward_std`` (see ``kernel_diagnostics``: entropy, KL to
        uniform and top probability of ``K`` over its support, ``K_0``, and the
        std of the valid pool's rewards).
    """
    check_kernel(kernel, MCPO_KERNELS)
    if selected is not None and kernel in AVERAGING_KERNELS:
        raise ValueError(f"selected: the {kernel} kernel averages over the pool; it takes no selection")
    check_positive("beta", beta)
    batch = check_batch("policy_chosen_logps", policy_chosen_logps)
    check_logps("ref_chosen_logps", ref_chosen_logps, (batch,))
    _, pool, mask = _check_pool("policy_candidate_logps", policy_candidate_logps, (batch, None), candidate_mask)
    _check_pool("ref_candidate_logps", ref_candidate_logps, (batch, pool), mask)

    chosen_rewards = beta * (upcast(policy_chosen_logps) - upcast(ref_chosen_logps))  # (B,)
    pool_rewards = _pool_rewards(policy_candidate_logps, ref_candidate_logps, mask, beta)  # (B, M)
    probs = kernel_probs(pool_rewards, mask, kernel, chosen_rewards)  # (B, 1 + M), detached
    best_candidate = pool_rewards.detach().masked_fill(~mask, float("-inf")).max(dim=-1)

    if kernel == "listwise":
        logits = torch.cat(  # (B, 1 + M): y_0 first, padding excluded
            [chosen_rewards[:, None], pool_rewards.masked_fill(~mask, float("-inf"))], dim=-1
        )
        loss = torch.logsumexp(logits, dim=-1) - chosen_rewards
        selected = best_candidate.indices
    elif kernel == "rao_blackwell":
        # Padding: reward 0 (finite) and weight exactly 0, so it adds 0 and gets 0 gradient.
        pair_losses = -F.logsigmoid(chosen_rewards[:, None] - pool_rewards)  # (B, M)
        # y_0's own term is the constant log 2: the draw y' = y_0 carries no gradient.
        loss = probs[:, 0] * LOG_2 + (probs[:, 1:] * pair_losses).sum(dim=-1)
        selected = best_candidate.indices
    else:
        if selected is None:
            selected = draw(probs, kernel, generator)  # (B,)
        else:
            _check_selected(selected, mask, kernel)
    drawn_chosen = selected == CHOSEN_INDEX  # (B,) bool; only `sample` produces it
    slot = selected.clamp(min=0)[:, None]  # a stand-in slot on y_0 rows, masked out below

    if kernel in SELECTION_KERNELS:
        rejected = pool_rewards.gather(1, slot).squeeze(1)  # (B,), with gradient
        # `where`, not arithmetic: a y_0 row gets exactly log 2 and exactly zero gradient.
        loss = torch.where(drawn_chosen, LOG_2, -F.logsigmoid(chosen_rewards - rejected))

    rejected_rewards = torch.where(
        drawn_chosen, chosen_rewards.detach(), pool_rewards.detach().gather(1, slot).squeeze(1)
    )
    margins = chosen_rewards.detach() - rejected_rewards
    metrics: dict[str, torch.Tensor] = {
        "rewards/chosen": chosen_rewards.detach(),
        "rewards/rejected": rejected_rewards,
        "rewards/margins": margins,
        "rewards/accuracies": (margins > 0).float(),
        "mcpo/selected": selected,
        "mcpo/chosen_drawn": drawn_chosen.float(),
        "mcpo/pool_accuracy": (chosen_rewards.detach() > best_candidate.values).float(),
        "mcpo/num_candidates": mask.sum(dim=-1),
    }
    metrics.update(kernel_diagnostics(probs, kernel, pool_rewards, mask))
    return LossOutput(loss, metrics)
