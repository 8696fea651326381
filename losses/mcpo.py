"""MC-PO: preference optimization with Monte-Carlo-kernel hard negatives.

Chen et al. 2025, "Preference Optimization via Contrastive Divergence: Your
Reward Model is Secretly an NLL Estimator", arXiv 2502.04567, Sec. 3.

Preference optimization is read as the NLL of ``p(y|x) ∝ exp(r(x, y))`` with
the implicit reward ``r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x))``. The
normalizer's gradient is estimated by contrastive divergence: a Monte-Carlo
kernel draws a negative ``y'`` from the candidate pool with probability
``∝ exp(r(x, y'))`` under the current policy, and the loss for that draw is the
DPO loss against it::

    loss = -log σ(r(x, y_0) - r(x, y'))

With one candidate this is DPO. Averaging over a kernel that may also pick the
preferred answer ``y_0`` gives, exactly, the listwise (ranking-NCE) form::

    loss = -r_0 + log Σ_{i ∈ {0} ∪ pool} exp(r_i)

whose gradient ``-∇r_0 + Σ_i softmax(r)_i ∇r_i`` is the mean CD gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_batch, check_logps, check_mask, check_positive, upcast
from .output import LossOutput

# The kernels that pick one negative, and the one that averages over all.
SELECTION_KERNELS = ("sample", "max", "min", "uniform")
MCPO_KERNELS = SELECTION_KERNELS + ("expectation",)


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


def _check_kernel(kernel: str, allowed: tuple[str, ...]) -> None:
    if kernel not in allowed:
        raise ValueError(f"kernel: unknown kernel {kernel!r}; expected one of {', '.join(allowed)}")


def _pool_rewards(
    policy_candidate_logps: torch.Tensor, ref_candidate_logps: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """``beta * (policy - ref)`` on valid slots, 0 on padding, ``(B, M)``.

    Padding may hold NaN or inf; ``where`` keeps it out of values and gradients.
    """
    policy = torch.where(mask, upcast(policy_candidate_logps), 0.0)
    ref = torch.where(mask, upcast(ref_candidate_logps), 0.0)
    return beta * (policy - ref)


def kernel_probs(candidate_rewards: torch.Tensor, mask: torch.Tensor, kernel: str) -> torch.Tensor:
    """The distribution a selection kernel draws the negative from, ``(B, M)``.

    ``sample``: softmax of the rewards over valid candidates; ``uniform``: equal
    weight on valid candidates; ``max``/``min``: all mass on the arg-max/arg-min
    reward (first index on ties). Padding gets probability 0.
    """
    rewards = candidate_rewards.detach()
    if kernel == "sample":
        return torch.softmax(rewards.masked_fill(~mask, float("-inf")), dim=-1)
    if kernel == "uniform":
        return mask.to(rewards.dtype) / mask.sum(dim=-1, keepdim=True)
    if kernel == "max":
        index = rewards.masked_fill(~mask, float("-inf")).argmax(dim=-1)
    elif kernel == "min":
        index = rewards.masked_fill(~mask, float("inf")).argmin(dim=-1)
    else:
        _check_kernel(kernel, SELECTION_KERNELS)
    return F.one_hot(index, rewards.shape[-1]).to(rewards.dtype)


def _check_selected(selected: torch.Tensor, mask: torch.Tensor) -> None:
    batch, pool = mask.shape
    if not isinstance(selected, torch.Tensor) or selected.dtype != torch.long:
        raise ValueError("selected: expected a long tensor of pool indices")
    if tuple(selected.shape) != (batch,):
        raise ValueError(f"selected: expected shape ({batch},), got {tuple(selected.shape)}")
    if bool(((selected < 0) | (selected >= pool)).any()):
        raise ValueError(f"selected: indices must lie in [0, {pool})")
    if not bool(mask.gather(1, selected[:, None]).all()):
        raise ValueError("selected: points at a padded (masked-out) candidate")


def _draw(probs: torch.Tensor, kernel: str, generator: torch.Generator | None) -> torch.Tensor:
    if kernel in ("max", "min"):
        return probs.argmax(dim=-1)
    if generator is not None and generator.device.type != probs.device.type:
        raise ValueError(
            f"generator: on {generator.device}, the log-probs on {probs.device}; "
            "create it with torch.Generator(device=...) on the tensors' device"
        )
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    return (-torch.special.xlogy(probs, probs).sum(dim=-1)).clamp(min=0.0)


def mcpo_select(
    policy_candidate_logps: torch.Tensor,
    ref_candidate_logps: torch.Tensor,
    *,
    candidate_mask: torch.Tensor | None = None,
    beta: float = 0.1,
    kernel: str = "sample",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one negative per row of the candidate pool, without gradient.

    This is the kernel step of MC-PO on its own: a trainer scores the pool
    under the current policy in inference mode, calls this, then runs
    forward/backward on the preferred answer and the picked negative only.

    Kernels (``r_i = beta * (log pi(y_i|x) - log pi_ref(y_i|x))``):
        ``sample``: ``P(i) ∝ exp(r_i)`` over valid candidates (the paper's kernel).
        ``max``: arg-max ``r_i`` (hardest negative). ``min``: arg-min (easiest).
        ``uniform``: a uniformly random valid candidate (DPO with a random rejected answer).

    Args:
        policy_candidate_logps: ``(B, M)`` log pi(y_i|x), summed over tokens.
        ref_candidate_logps: ``(B, M)`` log pi_ref(y_i|x).
        candidate_mask: ``(B, M)`` bool, True for real candidates (ragged pools);
            every row needs at least one. Padded slots are never picked.
        beta: > 0.
        kernel: one of ``sample``, ``max``, ``min``, ``uniform``.
        generator: a ``torch.Generator`` on the tensors' device, for
            reproducible draws (``sample``/``uniform``).

    Returns:
        ``(B,)`` long tensor of indices into the pool.
    """
    _check_kernel(kernel, SELECTION_KERNELS)
    check_positive("beta", beta)
    batch, pool, mask = _check_pool("policy_candidate_logps", policy_candidate_logps, (None, None), candidate_mask)
    _check_pool("ref_candidate_logps", ref_candidate_logps, (batch, pool), mask)
    with torch.no_grad():
        rewards = _pool_rewards(policy_candidate_logps, ref_candidate_logps, mask, beta)
        return _draw(kernel_probs(rewards, mask, kernel), kernel, generator)


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
    answer and ``r_i`` likewise for the pool ``y_1..y_M``.

    Selection kernels (``sample``, ``max``, ``min``, ``uniform``; see
    :func:`mcpo_select`) pick ``y'`` without gradient through the choice::

        loss = -log σ(r_0 - r(y'))

    The ``expectation`` kernel is the exact average over a kernel that may also
    pick ``y_0``, in listwise form, with gradient through every candidate::

        loss = -r_0 + logsumexp(r_0, r_valid...)
        ∇loss = -∇r_0 + Σ_{i ∈ {0} ∪ valid} softmax(r)_i ∇r_i

    With ``M = 1`` every kernel equals :func:`dpo_loss`.

    Args:
        policy_chosen_logps: ``(B,)`` log pi(y_0|x), summed over completion tokens.
        policy_candidate_logps: ``(B, M)`` log pi(y_i|x).
        ref_chosen_logps: ``(B,)`` log pi_ref(y_0|x) (cached).
        ref_candidate_logps: ``(B, M)`` log pi_ref(y_i|x) (cached).
        candidate_mask: ``(B, M)`` bool, True for real candidates; a row with
            none is an error. Padded slots may hold any value, NaN included.
        beta: > 0.
        kernel: one of ``MCPO_KERNELS``.
        generator: ``torch.Generator`` for ``sample``/``uniform`` draws.
        selected: ``(B,)`` long, pool indices already picked by
            :func:`mcpo_select` with the same ``kernel`` (two-pass training:
            score the pool without gradient, pick, then forward/backward the
            picked answers only, passing their log-probs at ``selected`` and the
            no-gradient scores elsewhere). No draw is made; ``generator`` is unused.

    Returns:
        ``LossOutput`` with loss ``(B,)`` and metrics (each ``(B,)``):
        ``rewards/chosen`` (r_0), ``rewards/rejected`` (reward of the picked
        negative; for ``expectation``, of the highest-reward candidate),
        ``rewards/margins``, ``rewards/accuracies``, ``mcpo/selected`` (long
        pool index; for ``expectation``, the highest-reward candidate),
        ``mcpo/entropy`` (entropy in nats of the kernel's distribution),
        ``mcpo/pool_accuracy`` (r_0 above every valid candidate),
        ``mcpo/num_candidates``; for ``expectation`` also ``mcpo/chosen_weight``
        (softmax weight of y_0).
    """
    _check_kernel(kernel, MCPO_KERNELS)
    if selected is not None and kernel == "expectation":
        raise ValueError("selected: the expectation kernel averages over the pool; it takes no selection")
    check_positive("beta", beta)
    batch = check_batch("policy_chosen_logps", policy_chosen_logps)
    check_logps("ref_chosen_logps", ref_chosen_logps, (batch,))
    _, pool, mask = _check_pool("policy_candidate_logps", policy_candidate_logps, (batch, None), candidate_mask)
    _check_pool("ref_candidate_logps", ref_candidate_logps, (batch, pool), mask)

    chosen_rewards = beta * (upcast(policy_chosen_logps) - upcast(ref_chosen_logps))  # (B,)
    pool_rewards = _pool_rewards(policy_candidate_logps, ref_candidate_logps, mask, beta)  # (B, M)
    best_candidate = pool_rewards.detach().masked_fill(~mask, float("-inf")).max(dim=-1).values  # (B,)

    metrics: dict[str, torch.Tensor] = {}
    if kernel == "expectation":
        logits = torch.cat(  # (B, 1 + M): y_0 first, padding excluded
            [chosen_rewards[:, None], pool_rewards.masked_fill(~mask, float("-inf"))], dim=-1
        )
        loss = torch.logsumexp(logits, dim=-1) - chosen_rewards
        weights = torch.softmax(logits.detach(), dim=-1)
        selected = pool_rewards.detach().masked_fill(~mask, float("-inf")).argmax(dim=-1)
        metrics["mcpo/chosen_weight"] = weights[:, 0]
    else:
        weights = kernel_probs(pool_rewards, mask, kernel)  # (B, M)
        if selected is None:
            selected = _draw(weights, kernel, generator)  # (B,)
        else:
            _check_selected(selected, mask)
        rejected = pool_rewards.gather(1, selected[:, None]).squeeze(1)  # (B,), with gradient
        loss = -F.logsigmoid(chosen_rewards - rejected)

    rejected_rewards = pool_rewards.detach().gather(1, selected[:, None]).squeeze(1)
    margins = chosen_rewards.detach() - rejected_rewards
    metrics.update(
        {
            "rewards/chosen": chosen_rewards.detach(),
            "rewards/rejected": rejected_rewards,
            "rewards/margins": margins,
            "rewards/accuracies": (margins > 0).float(),
            "mcpo/selected": selected,
            "mcpo/entropy": _entropy(weights),
            "mcpo/pool_accuracy": (chosen_rewards.detach() > best_candidate).float(),
            "mcpo/num_candidates": mask.sum(dim=-1),
        }
    )
    return LossOutput(loss, metrics)
