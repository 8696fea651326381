"""``sppo_hard_loss`` against TRL's ``DPOTrainer(loss_type="sppo_hard")``."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")

from trl_harness import assert_matches_dpo_trainer  # noqa: E402

from prefpool.losses import sppo_hard_loss  # noqa: E402


def _ours(beta):
    return lambda s: sppo_hard_loss(
        s["policy_chosen"], s["policy_rejected"], s["ref_chosen"], s["ref_rejected"], beta=beta
    )


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_sppo_matches_trl(dtype, beta):
    assert_matches_dpo_trainer(_ours(beta), dtype, loss_type="sppo_hard", beta=beta)


def test_sppo_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(5, dtype=torch.float64, generator=g).requires_grad_(True) for _ in range(2)]
    ref = [torch.randn(5, dtype=torch.float64, generator=g) for _ in range(2)]
    assert torch.autograd.gradcheck(lambda c, r: sppo_hard_loss(c, r, *ref, beta=0.7).loss, x)


def test_sppo_minimum_at_its_targets():
    """h_w = 1/(2 beta), h_l = −1/(2 beta) gives 0; beta = 0.25 ⇒ targets ±2."""
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    out = sppo_hard_loss(t(-1.0), t(-5.0), t(-3.0), t(-3.0), beta=0.25)
    torch.testing.assert_close(out.loss, t(0.0))
