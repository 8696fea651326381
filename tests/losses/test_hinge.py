"""``hinge_loss`` against TRL's ``DPOTrainer(loss_type="hinge")``."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")

from trl_harness import assert_matches_dpo_trainer  # noqa: E402

from prefpool.losses import hinge_loss  # noqa: E402


def _ours(beta):
    return lambda s: hinge_loss(s["policy_chosen"], s["policy_rejected"], s["ref_chosen"], s["ref_rejected"], beta=beta)


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_hinge_matches_trl(dtype, beta):
    assert_matches_dpo_trainer(_ours(beta), dtype, loss_type="hinge", beta=beta)


def test_hinge_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(5, dtype=torch.float64, generator=g).requires_grad_(True) for _ in range(2)]
    ref = [torch.randn(5, dtype=torch.float64, generator=g) for _ in range(2)]
    assert torch.autograd.gradcheck(lambda c, r: hinge_loss(c, r, *ref, beta=0.7).loss, x)


def test_hinge_value():
    """beta = 0.5. Row 0: h = (−1 − −2) − (−3 − −1) = 1 + 2 = 3, 1 − 1.5 < 0 ⇒ 0.
    Row 1: h = (−1 − −2) − (−2 − −2) = 1 ⇒ 1 − 0.5 = 0.5."""
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    out = hinge_loss(t(-1.0, -1.0), t(-3.0, -2.0), t(-2.0, -2.0), t(-1.0, -2.0), beta=0.5)
    torch.testing.assert_close(out.loss, t(0.0, 0.5))
