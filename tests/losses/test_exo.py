"""``exo_pair_loss`` against TRL's ``DPOTrainer(loss_type="exo_pair")`` and by its definition as a KL."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")

from trl_harness import TRL_TOL, assert_matches_dpo_trainer  # noqa: E402

from prefpool.losses import exo_pair_loss  # noqa: E402


def _ours(beta, eps):
    return lambda s: exo_pair_loss(
        s["policy_chosen"], s["policy_rejected"], s["ref_chosen"], s["ref_rejected"], beta=beta, label_smoothing=eps
    )


# TRL takes log(eps) and log(1 - eps) of a float32 tensor (a relative error up to 6e-8 of each,
# times q <= 1); ours of the Python float. Hence 1e-7 in float64.
EXO_TOL = {**TRL_TOL, torch.float64: {"atol": 1e-7, "rtol": 1e-7}}


@pytest.mark.parametrize(("beta", "eps"), [(0.1, 1e-3), (0.5, 0.1), (2.0, 0.3)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_exo_matches_trl(dtype, beta, eps):
    assert_matches_dpo_trainer(
        _ours(beta, eps), dtype, loss_type="exo_pair", beta=beta, label_smoothing=eps, tol=EXO_TOL[dtype]
    )


def test_exo_is_the_kl_to_the_smoothed_labels():
    """q = softmax(beta h_w, beta h_l), p = (1 - eps, eps): loss = Σ q log(q / p); zero when q = p.
    h_w - h_l = log((1 - eps) / eps) / beta puts q exactly at p."""
    eps, beta = 0.2, 0.5
    margin = torch.log(torch.tensor((1 - eps) / eps, dtype=torch.float64)) / beta
    zero = torch.zeros(1, dtype=torch.float64)
    out = exo_pair_loss(margin.reshape(1), zero, zero, zero, beta=beta, label_smoothing=eps)
    torch.testing.assert_close(out.loss, zero, atol=1e-12, rtol=0)
    h = torch.tensor([1.5, -2.0], dtype=torch.float64)
    out = exo_pair_loss(h, zero.expand(2), zero.expand(2), zero.expand(2), beta=beta, label_smoothing=eps)
    q = torch.sigmoid(beta * h)
    p = torch.tensor([1 - eps, eps], dtype=torch.float64)
    expected = q * torch.log(q / p[0]) + (1 - q) * torch.log((1 - q) / p[1])
    torch.testing.assert_close(out.loss, expected)


def test_exo_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(5, dtype=torch.float64, generator=g).requires_grad_(True) for _ in range(2)]
    ref = [torch.randn(5, dtype=torch.float64, generator=g) for _ in range(2)]
    assert torch.autograd.gradcheck(lambda c, r: exo_pair_loss(c, r, *ref, beta=0.7, label_smoothing=0.1).loss, x)


@pytest.mark.parametrize("eps", [0.0, 0.5, -0.1])
def test_exo_refuses_eps_outside_the_open_interval(eps):
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="label_smoothing"):
        exo_pair_loss(x, x, x, x, label_smoothing=eps)
