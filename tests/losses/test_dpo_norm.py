"""``dpo_norm_loss`` against TRL's ``DPOTrainer(loss_type="sigmoid_norm")`` and on hand values."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")

from trl_harness import assert_matches_dpo_trainer  # noqa: E402

from prefpool.losses.dpo_norm import dpo_norm_loss  # noqa: E402


def _ours(beta):
    return lambda s: dpo_norm_loss(
        s["policy_chosen"], s["policy_rejected"], s["ref_chosen"], s["ref_rejected"],
        s["n_chosen"], s["n_rejected"], beta=beta,
    )  # fmt: skip


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_dpo_norm_matches_trl(dtype, beta):
    assert_matches_dpo_trainer(_ours(beta), dtype, loss_type="sigmoid_norm", beta=beta)


def test_dpo_norm_value():
    """beta = 1. Chosen: h = −2 − −4 = 2 over 4 tokens = 0.5; rejected: h = −6 − −5 = −1 over 2 tokens
    = −0.5; loss = −log σ(1) = 0.31326."""
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    out = dpo_norm_loss(t(-2.0), t(-6.0), t(-4.0), t(-5.0), t(4.0), t(2.0), beta=1.0)
    torch.testing.assert_close(out.loss, t(0.31326168751822286))


def test_dpo_norm_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(5, dtype=torch.float64, generator=g).requires_grad_(True) for _ in range(2)]
    ref = [torch.randn(5, dtype=torch.float64, generator=g) for _ in range(2)]
    counts = [torch.tensor([1.0, 3.0, 7.0, 2.0, 5.0], dtype=torch.float64)] * 2
    assert torch.autograd.gradcheck(
        lambda c, r: dpo_norm_loss(c, r, *ref, *counts, beta=0.7, label_smoothing=0.2).loss, x
    )
