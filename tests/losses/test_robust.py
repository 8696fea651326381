"""``robust_dpo_loss`` against TRL's ``DPOTrainer(loss_type="robust")`` and its unbiasedness under label flips."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")

from trl_harness import assert_matches_dpo_trainer  # noqa: E402

from prefpool.losses import robust_dpo_loss  # noqa: E402


def _ours(beta, eps):
    return lambda s: robust_dpo_loss(
        s["policy_chosen"], s["policy_rejected"], s["ref_chosen"], s["ref_rejected"], beta=beta, label_smoothing=eps
    )


@pytest.mark.parametrize(("beta", "eps"), [(0.1, 0.0), (0.5, 0.1), (2.0, 0.3)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_robust_matches_trl(dtype, beta, eps):
    assert_matches_dpo_trainer(_ours(beta, eps), dtype, loss_type="robust", beta=beta, label_smoothing=eps)


def test_robust_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(5, dtype=torch.float64, generator=g).requires_grad_(True) for _ in range(2)]
    ref = [torch.randn(5, dtype=torch.float64, generator=g) for _ in range(2)]
    assert torch.autograd.gradcheck(lambda c, r: robust_dpo_loss(c, r, *ref, beta=0.7, label_smoothing=0.2).loss, x)


def test_robust_is_unbiased_under_flips():
    """E over a label flipped with probability eps of rDPO equals DPO on the true label:
    (1 − eps) L(m) + eps L(−m) = −log σ(m), with L the rDPO loss of margin m."""
    from prefpool.losses import dpo_loss

    eps, beta = 0.2, 0.5
    g = torch.Generator().manual_seed(1)
    c, r, rc, rr = (torch.randn(6, dtype=torch.float64, generator=g) for _ in range(4))
    kept = robust_dpo_loss(c, r, rc, rr, beta=beta, label_smoothing=eps).loss
    flipped = robust_dpo_loss(r, c, rr, rc, beta=beta, label_smoothing=eps).loss
    torch.testing.assert_close((1 - eps) * kept + eps * flipped, dpo_loss(c, r, rc, rr, beta=beta).loss)
