"""``discopop_loss`` against TRL's ``DPOTrainer(loss_type="discopop")``: values and gradients, float64 and bfloat16."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")

from trl_harness import assert_matches_dpo_trainer  # noqa: E402

from prefpool.losses.discopop import discopop_loss  # noqa: E402


@pytest.mark.parametrize(("beta", "tau"), [(0.1, 0.05), (0.5, 0.05), (2.0, 0.5)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_discopop_matches_trl(dtype, beta, tau):
    def ours(s):
        return discopop_loss(
            s["policy_chosen"], s["policy_rejected"], s["ref_chosen"], s["ref_rejected"], beta=beta, tau=tau
        )

    assert_matches_dpo_trainer(ours, dtype, loss_type="discopop", beta=beta, args={"discopop_tau": tau})


def test_discopop_at_the_reference():
    """Policy = reference: m = 0, w = σ(0) = 1/2, loss = ½ log 2 + ½ e⁰ = (log 2 + 1) / 2."""
    x = torch.tensor([-4.0, -9.0], dtype=torch.float64)
    expected = (torch.log(torch.tensor(2.0, dtype=torch.float64)) + 1) / 2
    torch.testing.assert_close(discopop_loss(x, x, x, x).loss, expected.expand(2))


def test_discopop_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(5, dtype=torch.float64, generator=g).requires_grad_(True) for _ in range(2)]
    ref = [torch.randn(5, dtype=torch.float64, generator=g) for _ in range(2)]
    assert torch.autograd.gradcheck(lambda c, r: discopop_loss(c, r, *ref, beta=0.7, tau=0.3).loss, x)
