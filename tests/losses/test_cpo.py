"""``cpo_loss`` against TRL's ``CPOTrainer.cpo_loss`` (``trl.experimental.cpo``, TRL 1.16).

TRL's ``cpo_loss`` returns the per-example preference term; ``CPOTrainer`` adds
``cpo_alpha`` times the NLL of the chosen answers, a token mean over the whole
batch. Ours adds the per-example token mean, so: the preference term (``cpo_alpha = 0``)
is compared per example, with gradients, at any batch size; the NLL term is the
chosen answer's ``-log pi / |y_w|``, checked by value.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("trl")

with warnings.catch_warnings():  # TRL warns that trl.experimental may change: the tests pin TRL 1.16
    warnings.simplefilter("ignore")
    from trl.experimental.cpo import CPOTrainer
from trl_harness import TRL_TOL  # noqa: E402

from prefpool.losses import cpo_loss  # noqa: E402


def _trl(beta: float, label_smoothing: float) -> CPOTrainer:
    """A CPOTrainer without __init__: the attributes ``cpo_loss`` reads (TRL 1.16), AlphaPO off."""
    trainer = object.__new__(CPOTrainer)
    trainer.alpha = 0.0
    trainer.loss_type = "sigmoid"
    trainer.beta = beta
    trainer.label_smoothing = label_smoothing
    trainer.simpo_gamma = 0.0
    trainer.accelerator = SimpleNamespace(device=torch.device("cpu"))
    return trainer


def _inputs(dtype):
    g = torch.Generator().manual_seed(3)
    chosen = -torch.rand(7, generator=g, dtype=torch.float64) * 40
    rejected = -torch.rand(7, generator=g, dtype=torch.float64) * 40
    tokens = torch.randint(1, 30, (7,), generator=g)
    return chosen.to(dtype), rejected.to(dtype), tokens


@pytest.mark.parametrize(("beta", "eps"), [(0.1, 0.0), (0.5, 0.1), (2.0, 0.3)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_cpo_preference_term_matches_trl(dtype, beta, eps):
    chosen, rejected, tokens = _inputs(dtype)
    ours_in = [chosen.clone().requires_grad_(True), rejected.clone().requires_grad_(True)]
    trl_in = [chosen.clone().requires_grad_(True), rejected.clone().requires_grad_(True)]
    ours = cpo_loss(*ours_in, tokens, beta=beta, label_smoothing=eps, cpo_alpha=0.0)
    trl_losses, trl_chosen, trl_rejected = _trl(beta, eps).cpo_loss(*trl_in)
    tol = TRL_TOL[dtype]
    torch.testing.assert_close(ours.loss.double(), trl_losses.double(), **tol)
    torch.testing.assert_close(ours.metrics["rewards/chosen"].double(), trl_chosen.double(), **tol)
    torch.testing.assert_close(ours.metrics["rewards/rejected"].double(), trl_rejected.double(), **tol)
    ours.loss.mean().backward()
    trl_losses.mean().backward()
    for a, b in zip(ours_in, trl_in, strict=True):
        torch.testing.assert_close(a.grad.double(), b.grad.double(), **tol)


def test_cpo_adds_the_chosen_per_token_nll():
    """cpo_alpha = 0.5, chosen −12 over 4 tokens: NLL 3, so the loss grows by 1.5."""
    c, r, n = torch.tensor([-12.0], dtype=torch.float64), torch.tensor([-20.0], dtype=torch.float64), torch.tensor([4])
    plain = cpo_loss(c, r, n, beta=0.5, cpo_alpha=0.0)
    with_nll = cpo_loss(c, r, n, beta=0.5, cpo_alpha=0.5)
    torch.testing.assert_close(with_nll.loss - plain.loss, torch.tensor([1.5], dtype=torch.float64))
    torch.testing.assert_close(with_nll.metrics["nll"], torch.tensor([3.0], dtype=torch.float64))


def test_cpo_gradcheck_float64():
    chosen, rejected, tokens = _inputs(torch.float64)
    x = [chosen.requires_grad_(True), rejected.requires_grad_(True)]
    assert torch.autograd.gradcheck(lambda c, r: cpo_loss(c, r, tokens, beta=0.3, label_smoothing=0.1).loss, x)
