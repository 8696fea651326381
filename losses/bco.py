"""Binary Classifier Optimization on pairs, with its running reward mean as explicit state."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks import check_positive
from .method import Method, PairLogps, State, setting
from .output import LossOutput
from .pairwise import log_ratios, reward_metrics


def bco_pair_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    reward_mean: float = 0.0,
) -> LossOutput:
    """BCO (Jung et al. 2024, arXiv 2404.04656, Sec. 3: the BCE loss with the reward shift) on a pair.

    The chosen answer is a positive, the rejected one a negative example of a
    binary classifier whose logit is the implicit reward shifted by ``delta``::

        r = beta (log pi(y|x) - log pi_ref(y|x))
        loss = -log σ(r_w - delta) - log σ(-(r_l - delta))

    ``delta`` (``reward_mean``) is the running mean of the rewards seen so far
    (Sec. 3.2, "reward shift"); the loss does not keep it: the caller passes it
    in, and :func:`update_reward_mean` gives the next one. The paper's density
    ratio for unpaired data is not needed on pairs. With ``reward_mean = 0`` this
    is TRL's ``loss_type="bco_pair"``.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: ``(B,)`` each.
        beta: > 0.
        reward_mean: ``delta``, a float.

    Returns:
        ``LossOutput`` with loss ``(B,)``, the DPO reward metrics, and ``bco/reward_mean``
        (``delta``, repeated to ``(B,)``).
    """
    chosen, rejected = log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    check_positive("beta", beta)
    delta = float(reward_mean)
    if delta != delta or abs(delta) == float("inf"):
        raise ValueError(f"reward_mean: must be finite, got {reward_mean!r}")
    chosen_rewards, rejected_rewards = beta * chosen, beta * rejected  # (B,)
    loss = -F.logsigmoid(chosen_rewards - delta) - F.logsigmoid(-(rejected_rewards - delta))
    metrics = reward_metrics(chosen_rewards, rejected_rewards)
    metrics["bco/reward_mean"] = torch.full_like(loss, delta).detach()
    return LossOutput(loss, metrics)


def update_reward_mean(state: State, rewards: torch.Tensor) -> dict[str, float]:
    """The running mean of every reward seen, after ``rewards`` (any shape): ``{"reward_mean", "reward_count"}``.

    ``state`` holds the same keys (an empty state is no rewards seen). The mean of
    all rewards so far, not a moving average: equal weight for every reward.
    """
    count = float(state.get("reward_count", 0.0))
    mean = float(state.get("reward_mean", 0.0))
    values = rewards.detach().double().flatten()
    total = count + values.numel()
    if values.numel() == 0:
        return {"reward_mean": mean, "reward_count": count}
    return {"reward_mean": mean + (float(values.sum()) - values.numel() * mean) / total, "reward_count": total}


def bco_step(logps: PairLogps, settings: BCOSettings, state: State) -> tuple[LossOutput, State]:
    """Update the reward mean with this batch's rewards, then the loss with the updated mean.

    The trainer keeps the state per process (each process's mean is of the rewards it saw; TRL's
    BCO gathers them across processes) and saves it in its checkpoints."""
    chosen, rejected = log_ratios(logps.chosen, logps.rejected, logps.ref_chosen, logps.ref_rejected)
    state = update_reward_mean(state, settings.beta * torch.cat([chosen, rejected]))
    out = bco_pair_loss(
        logps.chosen,
        logps.rejected,
        logps.ref_chosen,
        logps.ref_rejected,
        beta=settings.beta,
        reward_mean=state["reward_mean"],
    )
    return out, state


@dataclass(frozen=True)
class BCOSettings:
    beta: float = setting(0.1, "KL strength: rewards are beta * (log pi - log pi_ref), > 0.")


METHODS = (
    Method(
        "bco",
        bco_pair_loss,
        BCOSettings,
        kind="pairwise",
        needs_reference=True,
        summary="BCO on pairs (Jung et al. 2024): a binary classifier on rewards shifted by their running mean",
        step=bco_step,
        initial_state={"reward_mean": 0.0, "reward_count": 0.0},
    ),
)
