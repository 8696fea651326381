"""MC-PO's kernels: their names, the distributions they draw from, draws, diagnostics.

Chen et al. 2025, "Preference Optimization via Contrastive Divergence", arXiv
2502.04567, Sec. 3. ``r_0`` is the preferred answer's implicit reward, ``r_i``
(``i = 1..K``) the pool's. Every kernel's distribution is laid out as
``(B, 1 + K)``: column 0 is ``y_0``, columns ``1..K`` the pool slots, padding 0.
A loss with ``M`` negatives (``num_negatives``) makes ``M`` independent draws
from it, with replacement: ``M`` applications of the one-step chain started at
``y_0``. ``max`` and ``min`` are deterministic: their ``M`` picks are the ``M``
hardest / easiest distinct pool answers.

Supports:
    ``sample``, ``listwise``, ``rao_blackwell``: ``{y_0} ∪ valid pool`` with
        ``K_i = softmax(r_0, r_1..r_K)_i`` (the paper's kernel; CD's gradient is
        ``∇ log Σ_{i=0..K} exp(r_i)``, a sum that includes ``y_0``).
    ``sample_pool``: the valid pool with ``softmax(r_1..r_K)``. A departure from
        the paper: ``K`` conditioned on ``y' ≠ y_0``, which reweights each
        example's expected gradient by ``1 / (1 - K_0)``. Why one may want it:
        no draw is spent on ``y_0`` (whose row gives no gradient, yet costs a
        step's forward pass), so the gradient does not fade as the policy comes
        to prefer ``y_0``; and with one candidate it is DPO.
    ``max``, ``min``, ``uniform``: the valid pool; baselines that pick a rejected
        answer (DPO with the hardest / easiest / a random negative). ``y_0`` is left
        out on purpose: with it, ``max`` would stop learning exactly on the rows
        the policy already ranks right, ``min`` would pick ``y_0`` whenever it
        ranks last, and ``uniform`` would waste ``1 / (n + 1)`` of its draws.
"""

from __future__ import annotations

import math

import torch

# What `mcpo_select` (and `mcpo_loss`'s `selected`) hold for a draw of the preferred
# answer y0 itself; pool slots are 0..K-1.
CHOSEN_INDEX = -1

# Kernels that pick answers per row (mcpo_select accepts these).
SELECTION_KERNELS = ("sample", "sample_pool", "max", "min", "uniform")
# Kernels that average over every candidate: gradient through the whole pool, no pick,
# so a trainer runs them in one pass.
AVERAGING_KERNELS = ("listwise", "rao_blackwell")
MCPO_KERNELS = SELECTION_KERNELS + AVERAGING_KERNELS
# Kernels whose support includes y0: they need r0 to draw (or to weigh).
CHOSEN_SUPPORT_KERNELS = ("sample", "listwise", "rao_blackwell")

_RENAMED = {
    "expectation": "kernel: 'expectation' was renamed 'listwise' (-r0 + logsumexp over {y0} ∪ pool, "
    "the mean of the linear CD estimator); the mean of the sampled -log σ loss is "
    "'rao_blackwell'",
}

LOG_2 = math.log(2.0)

# rao_blackwell with M > 1 negatives enumerates the (1 + K)^M ordered draws of a row (K pool
# slots); past this many it refuses rather than allocate B x (1 + K)^M x M values.
RAO_BLACKWELL_MAX_DRAWS = 4096


def check_kernel(kernel: str, allowed: tuple[str, ...] = MCPO_KERNELS) -> None:
    """A ``ValueError`` naming ``kernel`` unless it is one of ``allowed``."""
    if isinstance(kernel, str) and kernel in _RENAMED:
        raise ValueError(_RENAMED[kernel])
    if kernel not in allowed:
        raise ValueError(f"kernel: unknown kernel {kernel!r}; expected one of {', '.join(allowed)}")


def kernel_probs(
    candidate_rewards: torch.Tensor, mask: torch.Tensor, kernel: str, chosen_rewards: torch.Tensor | None = None
) -> torch.Tensor:
    """The distribution a kernel draws from (or weighs by), ``(B, 1 + M)``, detached.

    Column 0 is the preferred answer ``y_0``, column ``1 + i`` pool slot ``i``.
    ``sample``/``listwise``/``rao_blackwell``: ``softmax(r_0, r_valid...)``;
    ``sample_pool``: softmax over the valid pool; ``uniform``: equal weight on the
    valid pool; ``max``/``min``: all mass on the arg-max/arg-min pool reward (first
    index on ties). Pool-only kernels put 0 on column 0; padding always gets 0.

    Args:
        candidate_rewards: ``(B, M)`` pool rewards ``r_i`` (padding: any finite value).
        mask: ``(B, M)`` bool, True on valid slots.
        kernel: one of ``MCPO_KERNELS``.
        chosen_rewards: ``(B,)`` ``r_0``; required by ``CHOSEN_SUPPORT_KERNELS``.
    """
    check_kernel(kernel)
    rewards = candidate_rewards.detach()
    batch, pool = rewards.shape
    if kernel in CHOSEN_SUPPORT_KERNELS:
        if chosen_rewards is None:
            raise ValueError(f"chosen_rewards: the {kernel} kernel's support includes y0; pass r0 (B,)")
        if tuple(chosen_rewards.shape) != (batch,):
            raise ValueError(f"chosen_rewards: expected shape ({batch},), got {tuple(chosen_rewards.shape)}")
        logits = torch.cat(
            [chosen_rewards.detach().to(rewards.dtype)[:, None], rewards.masked_fill(~mask, float("-inf"))], dim=-1
        )
        return torch.softmax(logits, dim=-1)
    if kernel == "sample_pool":
        probs = torch.softmax(rewards.masked_fill(~mask, float("-inf")), dim=-1)
    elif kernel == "uniform":
        probs = mask.to(rewards.dtype) / mask.sum(dim=-1, keepdim=True)
    else:
        if kernel == "max":
            index = rewards.masked_fill(~mask, float("-inf")).argmax(dim=-1)
        else:
            index = rewards.masked_fill(~mask, float("inf")).argmin(dim=-1)
        probs = torch.nn.functional.one_hot(index, pool).to(rewards.dtype)
    return torch.cat([probs.new_zeros(batch, 1), probs], dim=-1)


def check_num_negatives(num_negatives: int, kernel: str | None = None) -> None:
    """A ``ValueError`` unless ``num_negatives`` is an int >= 1 that ``kernel`` takes.

    ``listwise`` is the NLL over the whole pool and draws nothing, so it takes 1 only.
    """
    if isinstance(num_negatives, bool) or not isinstance(num_negatives, int) or num_negatives < 1:
        raise ValueError(f"num_negatives: expected an int >= 1, got {num_negatives!r}")
    if kernel == "listwise" and num_negatives != 1:
        raise ValueError(
            f"num_negatives: listwise is the NLL over the whole pool and draws no negatives; got {num_negatives}, "
            "expected 1 (rao_blackwell is the exact mean of sample at M negatives)"
        )


def draw(probs: torch.Tensor, kernel: str, generator: torch.Generator | None, num_negatives: int = 1) -> torch.Tensor:
    """``num_negatives`` independent draws per row from ``kernel_probs``'s output, with replacement.

    Returns ``(B, num_negatives)`` long: ``CHOSEN_INDEX`` or a pool slot. ``max``/``min``
    are not drawn (``extremes``). ``num_negatives = 1`` is ``torch.multinomial``'s
    single-sample call (for one sample, with or without replacement is the same
    distribution; this call keeps a seed's M = 1 picks those of the one-negative loss).
    """
    if kernel in ("max", "min"):
        raise ValueError(f"kernel: {kernel!r} is deterministic; its picks come from extremes()")
    if generator is not None and generator.device.type != probs.device.type:
        raise ValueError(
            f"generator: on {generator.device}, the log-probs on {probs.device}; "
            "create it with torch.Generator(device=...) on the tensors' device"
        )
    replacement = num_negatives > 1
    if kernel in CHOSEN_SUPPORT_KERNELS:
        # Column 0 is y0, so the column index minus one is CHOSEN_INDEX (-1) or the pool slot.
        return torch.multinomial(probs, num_negatives, replacement=replacement, generator=generator) + CHOSEN_INDEX
    # Pool-only kernels put no mass on y0: draw over the pool columns alone.
    return torch.multinomial(probs[:, 1:].contiguous(), num_negatives, replacement=replacement, generator=generator)


def extremes(rewards: torch.Tensor, mask: torch.Tensor, kernel: str, num_negatives: int = 1) -> torch.Tensor:
    """``max``/``min``'s picks: the ``num_negatives`` highest / lowest-reward distinct valid pool slots.

    Returns ``(B, num_negatives)`` long, hardest (``max``) or easiest (``min``) first;
    ties go to the lower slot, so the first pick is ``kernel_probs``'s point mass. A row
    with fewer valid candidates than ``num_negatives`` is a ``ValueError`` naming it.
    """
    n_valid = mask.sum(dim=-1)
    short = n_valid < num_negatives
    if bool(short.any()):
        row = int(short.nonzero()[0])
        raise ValueError(
            f"num_negatives: the {kernel} kernel takes {num_negatives} distinct pool answers per row; "
            f"row {row} has {int(n_valid[row])} (sample, sample_pool and uniform draw with replacement)"
        )
    if kernel == "max":
        keys = -rewards.detach().masked_fill(~mask, float("-inf"))
    else:
        keys = rewards.detach().masked_fill(~mask, float("inf"))
    return torch.sort(keys, dim=-1, stable=True).indices[:, :num_negatives]


def picked_slots(selected: torch.Tensor, pool: int) -> torch.Tensor:
    """``(B, K)`` bool: the pool slots among each row's ``(B, M)`` picks, a slot drawn twice once
    and a draw of y0 (``CHOSEN_INDEX``) none: the answers a two-pass step back-propagates through."""
    hits = torch.zeros(selected.shape[0], pool, dtype=torch.long, device=selected.device)
    # scatter_add, not scatter: a y0 draw also lands on slot 0 once clamped, and must not erase a pick.
    hits.scatter_add_(1, selected.clamp(min=0), (selected >= 0).long())
    return hits > 0


def kernel_diagnostics(
    probs: torch.Tensor, kernel: str, pool_rewards: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-example, detached descriptions of the kernel, each ``(B,)``.

    The support is the set the kernel chooses from: ``{y_0} ∪ valid pool`` (``n + 1``
    answers) for ``CHOSEN_SUPPORT_KERNELS``, the valid pool (``n``) otherwise,
    including ``max``/``min``, whose point mass has entropy 0 and so KL ``log n``.

    - ``mcpo/entropy``: ``H(K) = -Σ K_i log K_i`` in nats.
    - ``mcpo/kernel_kl_uniform``: ``KL(K ‖ uniform on the support) = log |support| - H(K)``.
    - ``mcpo/kernel_top_prob``: ``max_i K_i``.
    - ``mcpo/kernel_chosen_prob``: ``K_0``, the probability of drawing ``y_0`` (0 for pool-only kernels).
    - ``mcpo/pool_reward_std``: population std (divisor ``n``) of the valid pool's rewards,
      i.e. ``beta`` times the std of their log-ratios; 0 with one candidate. Kernel-free:
      it says how much the pool gives a reward-based kernel to work with.
    """
    probs = probs.detach()
    rewards = pool_rewards.detach()
    n_valid = mask.sum(dim=-1)
    support = n_valid + 1 if kernel in CHOSEN_SUPPORT_KERNELS else n_valid
    entropy = (-torch.special.xlogy(probs, probs).sum(dim=-1)).clamp(min=0.0)
    n = n_valid.to(rewards.dtype)
    valid = mask.to(rewards.dtype)
    mean = (rewards * valid).sum(dim=-1) / n
    var = (((rewards - mean[:, None]) * valid) ** 2).sum(dim=-1) / n
    return {
        "mcpo/entropy": entropy,
        # Clamped: H can exceed log|support| by a rounding error on a flat kernel.
        "mcpo/kernel_kl_uniform": (support.to(probs.dtype).log() - entropy).clamp(min=0.0),
        "mcpo/kernel_top_prob": probs.max(dim=-1).values,
        "mcpo/kernel_chosen_prob": probs[:, 0],
        "mcpo/pool_reward_std": var.sqrt(),
    }
