"""``bco_pair_loss``, its running reward mean and its training step.

TRL 1.16's ``DPOTrainer(loss_type="bco_pair")`` is BCO without the reward shift:
ours with ``reward_mean = 0`` is compared with it (values and gradients, float64 and
bfloat16). The shift and the running mean are checked against a slow reference
written here.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")

from trl_harness import assert_matches_dpo_trainer  # noqa: E402

from prefpool.losses import METHODS, PairLogps, bco_pair_loss, update_reward_mean  # noqa: E402
from prefpool.losses.bco import BCOSettings  # noqa: E402


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_bco_without_shift_matches_trl_bco_pair(dtype, beta):
    def ours(s):
        return bco_pair_loss(s["policy_chosen"], s["policy_rejected"], s["ref_chosen"], s["ref_rejected"], beta=beta)

    assert_matches_dpo_trainer(ours, dtype, loss_type="bco_pair", beta=beta)


def _slow_bco(c, r, rc, rr, beta, delta):
    """One example at a time: −log σ(r_w − δ) − log σ(−(r_l − δ)), with log σ(x) = −log(1 + e^−x)."""
    out = []
    for i in range(len(c)):
        r_w, r_l = beta * (float(c[i]) - float(rc[i])), beta * (float(r[i]) - float(rr[i]))
        out.append(
            torch.log1p(torch.exp(torch.tensor(-(r_w - delta), dtype=torch.float64))).item()
            + torch.log1p(torch.exp(torch.tensor(r_l - delta, dtype=torch.float64))).item()
        )
    return torch.tensor(out, dtype=torch.float64)


def _batch(seed, n=6):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dtype=torch.float64, generator=g) * 3 for _ in range(4)]


@pytest.mark.parametrize("delta", [-0.7, 0.0, 1.3])
def test_bco_shift_matches_slow_reference(delta):
    c, r, rc, rr = _batch(0)
    out = bco_pair_loss(c, r, rc, rr, beta=0.5, reward_mean=delta)
    torch.testing.assert_close(out.loss, _slow_bco(c, r, rc, rr, 0.5, delta))
    assert torch.all(out.metrics["bco/reward_mean"] == delta)


def test_bco_gradcheck_float64():
    c, r, rc, rr = _batch(1)
    x = [c.requires_grad_(True), r.requires_grad_(True)]
    assert torch.autograd.gradcheck(lambda a, b: bco_pair_loss(a, b, rc, rr, beta=0.3, reward_mean=0.4).loss, x)


def test_running_mean_is_the_mean_of_every_reward_seen():
    g = torch.Generator().manual_seed(2)
    batches = [torch.randn(k, dtype=torch.float64, generator=g) for k in (4, 1, 7)]
    state = {}
    for i, batch in enumerate(batches):
        state = update_reward_mean(state, batch)
        seen = torch.cat(batches[: i + 1])
        assert state["reward_count"] == len(seen)
        assert state["reward_mean"] == pytest.approx(float(seen.mean()), abs=1e-12)


def test_bco_step_updates_then_shifts():
    """The step folds the batch's 2B rewards into the mean, then uses the updated mean; the state
    passed in is not changed (the loss stays pure)."""
    step = METHODS["bco"].step
    settings = BCOSettings(beta=0.5)
    state0 = dict(METHODS["bco"].initial_state)
    frozen = dict(state0)
    total = []
    for seed in (3, 4):
        c, r, rc, rr = _batch(seed)
        pair = PairLogps(c, r, rc, rr, torch.ones(6), torch.ones(6))
        out, state1 = step(pair, settings, state0)
        total.append(torch.cat([0.5 * (c - rc), 0.5 * (r - rr)]))
        mean = float(torch.cat(total).mean())
        assert state1["reward_mean"] == pytest.approx(mean, abs=1e-12)
        torch.testing.assert_close(out.loss, _slow_bco(c, r, rc, rr, 0.5, mean))
        assert state0 == frozen or seed != 3
        state0, frozen = state1, dict(state1)
