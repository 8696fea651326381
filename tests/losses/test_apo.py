"""``apo_zero_loss`` and ``apo_down_loss`` against TRL's ``DPOTrainer(loss_type="apo_zero" / "apo_down")``."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")

from trl_harness import assert_matches_dpo_trainer  # noqa: E402

from prefpool.losses import apo_down_loss, apo_zero_loss  # noqa: E402

LOSSES = {"apo_zero": apo_zero_loss, "apo_down": apo_down_loss}


def _ours(fn, beta):
    return lambda s: fn(s["policy_chosen"], s["policy_rejected"], s["ref_chosen"], s["ref_rejected"], beta=beta)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_apo_matches_trl(dtype, beta, name):
    assert_matches_dpo_trainer(_ours(LOSSES[name], beta), dtype, loss_type=name, beta=beta)


@pytest.mark.parametrize("name", list(LOSSES))
def test_apo_gradcheck_float64(name):
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(5, dtype=torch.float64, generator=g).requires_grad_(True) for _ in range(2)]
    ref = [torch.randn(5, dtype=torch.float64, generator=g) for _ in range(2)]
    assert torch.autograd.gradcheck(lambda c, r: LOSSES[name](c, r, *ref, beta=0.7).loss, x)


def test_apo_at_the_reference():
    """Policy = reference: every log-ratio 0, σ(0) = 1/2, so both losses are 1/2 + 1/2 = 1."""
    x = torch.tensor([-3.0, -7.0], dtype=torch.float64)
    for fn in LOSSES.values():
        torch.testing.assert_close(fn(x, x, x, x).loss, torch.ones(2, dtype=torch.float64))
