"""``nca_pair_loss`` against TRL's ``DPOTrainer(loss_type="nca_pair")``."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")

from trl_harness import assert_matches_dpo_trainer  # noqa: E402

from prefpool.losses import nca_pair_loss  # noqa: E402


def _ours(beta):
    return lambda s: nca_pair_loss(
        s["policy_chosen"], s["policy_rejected"], s["ref_chosen"], s["ref_rejected"], beta=beta
    )


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_nca_matches_trl(dtype, beta):
    assert_matches_dpo_trainer(_ours(beta), dtype, loss_type="nca_pair", beta=beta)


def test_nca_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(5, dtype=torch.float64, generator=g).requires_grad_(True) for _ in range(2)]
    ref = [torch.randn(5, dtype=torch.float64, generator=g) for _ in range(2)]
    assert torch.autograd.gradcheck(lambda c, r: nca_pair_loss(c, r, *ref, beta=0.7).loss, x)
