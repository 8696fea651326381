"""MC-PO's kernels: their names, the distributions they draw from, draws, diagnostics.

Chen et al. 2025, "Preference Optimization via Contrastive Divergence", arXiv
2502.04567, Sec. 3. ``r_0`` is the preferred answer's implicit reward, ``r_i``
(``i = 1..M``) the pool's. Every kernel's distribution is laid out as
``(B, 1 + M)``: column 0 is ``y_0``, columns ``1..M`` the pool slots, padding 0.

Supports:
    ``sample``, ``listwise``, ``rao_blackwell``: ``{y_0} ∪ valid pool`` with
        ``K_i = softmax(r_0, r_1..r_M)_i`` (the paper's kernel; CD's gradient is
        ``∇ log Σ_{i=0..M} exp(r_i)``, a sum that includes ``y_0``).
    ``sample_pool``: the valid pool with ``softmax(r_1..r_M)``. A departure from
        the paper: ``K`` conditioned on ``y' ≠ y_0``, which reweights each
        example's expected gradient by ``1 / (1 - K_0)``. Why one may want it:
        no draw is spent on ``y_0`` (whose row gives no gradient, yet costs a
        step's forward pass), so the gradient does not fade as the policy comes
        to prefer ``y_0``; with ``M = 1`` it is DPO; and a seed reproduces the
        picks of runs made when ``sample`` meant this kernel.
    ``max``, ``min``, ``uniform``: the valid pool; baselines that pick a rejected
        answer (DPO with the hardest / easiest / a random negative). ``y_0`` is left
        out on purpose: with it, ``max`` would stop learning exactly on the rows
        the policy already ranks right, ``min`` would pick ``y_0`` whenever it
        ranks last, and ``uniform`` would waste ``1 / (n + 1)`` of its draws.
"""

from __future__ import annotations

import math

import torch

# What `mcpo_select` (and `mcpo_loss`'s `selected`) return for a row whose draw is the
# preferred answer y0 itself; pool slots are 0..M-1.
CHOSEN_INDEX = -1

# Kernels that pick one answer per row (mcpo_select accepts these).
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


def draw(probs: torch.Tensor, kernel: str, generator: torch.Generator | None) -> torch.Tensor:
    """One pick per row from ``kernel_probs``'s output: ``(B,)`` long, ``CHOSEN_INDEX`` or a pool slot."""
    pool = probs[:, 1:]
    if kernel in ("max", "min"):
        return pool.argmax(dim=-1)
    if generator is not None and generator.device.type != probs.device.type:
        raise ValueError(
            f"generator: on {generator.device}, the log-probs on {probs.device}; "
            "create it with torch.Generator(device=...) on the tensors' device"
        )
    if kernel in CHOSEN_SUPPORT_KERNELS:
        # Column 0 is y0, so the column index minus one is CHOSEN_INDEX (-1) or the pool slot.
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1) + CHOSEN_INDEX
    # Pool-only kernels draw over the M pool columns alone, the very call (same tensor, same
    # random stream) that the pool-only `sample` and `uniform` made before y0 joined the
    # support, so a seed reproduces those runs' picks.
    return torch.multinomial(pool.contiguous(), 1, generator=generator).squeeze(-1)


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
