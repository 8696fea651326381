"""``orpo_loss`` against TRL's ``ORPOTrainer.odds_ratio_loss`` (``trl.experimental.orpo``, TRL 1.16).

``ORPOTrainer`` feeds ``odds_ratio_loss`` the per-token mean log-probs
(``average_log_prob=True``) and takes ``nll - mean(beta * log σ(log odds ratio))``;
ours takes summed log-probs and token counts. The odds-ratio term is compared per
example with gradients (ours minus its NLL term); TRL computes it in float32
(``.float()`` on its inputs), hence 1e-6 for float64 inputs.
"""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("trl")

with warnings.catch_warnings():  # TRL warns that trl.experimental may change: the tests pin TRL 1.16
    warnings.simplefilter("ignore")
    from trl.experimental.orpo import ORPOTrainer
from trl_harness import TRL_TOL  # noqa: E402

from prefpool.losses import orpo_loss  # noqa: E402

TOL = {torch.float64: {"atol": 1e-6, "rtol": 1e-6}, torch.bfloat16: TRL_TOL[torch.bfloat16]}


def _trl(beta: float) -> ORPOTrainer:
    trainer = object.__new__(ORPOTrainer)
    trainer.beta = beta
    trainer.accelerator = type("Acc", (), {"device": torch.device("cpu")})()
    return trainer


def _inputs(dtype):
    g = torch.Generator().manual_seed(5)
    tokens_c = torch.randint(1, 30, (7,), generator=g)
    tokens_r = torch.randint(1, 30, (7,), generator=g)
    mean_c = -(0.02 + torch.rand(7, generator=g, dtype=torch.float64) * 3)  # per-token means, both sides of -log 2
    mean_r = -(0.02 + torch.rand(7, generator=g, dtype=torch.float64) * 3)
    return (mean_c * tokens_c).to(dtype), (mean_r * tokens_r).to(dtype), tokens_c, tokens_r


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_orpo_odds_ratio_term_matches_trl(dtype, beta):
    chosen, rejected, n_c, n_r = _inputs(dtype)
    ours_in = [chosen.clone().requires_grad_(True), rejected.clone().requires_grad_(True)]
    trl_in = [chosen.clone().requires_grad_(True), rejected.clone().requires_grad_(True)]
    ours = orpo_loss(*ours_in, n_c, n_r, beta=beta)
    ours_term = ours.loss + ours_in[0].float() / n_c if dtype == torch.bfloat16 else ours.loss + ours_in[0] / n_c
    trl_losses, trl_chosen, trl_rejected, _, _ = _trl(beta).odds_ratio_loss(trl_in[0] / n_c, trl_in[1] / n_r)
    tol = TOL[dtype]
    torch.testing.assert_close(ours_term.double(), -trl_losses.double(), **tol)
    torch.testing.assert_close(ours.metrics["rewards/chosen"].double(), trl_chosen.double(), **tol)
    torch.testing.assert_close(ours.metrics["rewards/rejected"].double(), trl_rejected.double(), **tol)
    ours_term.mean().backward()
    (-trl_losses).mean().backward()
    for a, b in zip(ours_in, trl_in, strict=True):
        torch.testing.assert_close(a.grad.double(), b.grad.double(), **tol)


def test_orpo_value():
    """One pair, per-token means l_w = log 0.5, l_l = log 0.25 (one token each): odds 1 and 1/3,
    log odds ratio log 3; loss = −l_w − beta log σ(log 3) = log 2 − beta log 0.75."""
    c = torch.tensor([0.5], dtype=torch.float64).log()
    r = torch.tensor([0.25], dtype=torch.float64).log()
    one = torch.tensor([1])
    out = orpo_loss(c, r, one, one, beta=0.2)
    expected = torch.log(torch.tensor(2.0, dtype=torch.float64)) - 0.2 * torch.log(
        torch.tensor(0.75, dtype=torch.float64)
    )
    torch.testing.assert_close(out.loss, expected.reshape(1))
    torch.testing.assert_close(out.metrics["orpo/log_odds_ratio"], torch.log(torch.tensor([3.0], dtype=torch.float64)))


def test_orpo_gradcheck_float64():
    chosen, rejected, n_c, n_r = _inputs(torch.float64)
    x = [chosen.requires_grad_(True), rejected.requires_grad_(True)]
    assert torch.autograd.gradcheck(lambda c, r: orpo_loss(c, r, n_c, n_r, beta=0.4).loss, x)
