"""``kto_pair_loss`` against TRL's ``KTOTrainer`` loss code and a slow reference.

TRL's ``KTOTrainer._compute_loss`` (TRL 1.16, precomputed reference) on an unpaired
batch of the ``B`` chosen answers (label true) and ``B`` rejected answers (label
false), with the KL sequences' log-probs given: its mean over the ``2B`` examples
equals our batch mean. The per-token policy is a stub as in ``trl_harness``.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("trl")

from trl.trainer.kto_trainer import KTOTrainer  # noqa: E402

from prefpool.losses import kto_pair_loss, mismatched_index  # noqa: E402


def _slow_kto(c, r, rc, rr, kl_pol, kl_ref, beta, wd, wu):
    z0 = max(0.0, sum(float(a) - float(b) for a, b in zip(kl_pol, kl_ref, strict=True)) / len(kl_pol))
    sig = lambda x: 1.0 / (1.0 + torch.exp(torch.tensor(-x, dtype=torch.float64)).item())  # noqa: E731
    return torch.tensor(
        [
            0.5
            * (
                wd * (1 - sig(beta * ((c[i] - rc[i]).item() - z0)))
                + wu * (1 - sig(beta * (z0 - (r[i] - rr[i]).item())))
            )
            for i in range(len(c))
        ],
        dtype=torch.float64,
    )


def _batch(seed, n=5, kl_shift=0.0):
    g = torch.Generator().manual_seed(seed)
    c, r, rc, rr = (torch.randn(n, dtype=torch.float64, generator=g) * 3 - 10 for _ in range(4))
    kl_ref = torch.randn(n, dtype=torch.float64, generator=g) * 3 - 10
    kl_pol = kl_ref + kl_shift + torch.randn(n, dtype=torch.float64, generator=g) * 0.1
    return c, r, rc, rr, kl_pol, kl_ref


@pytest.mark.parametrize("kl_shift", [-2.0, 0.5])
@pytest.mark.parametrize(("beta", "wd", "wu"), [(0.1, 1.0, 1.0), (0.5, 1.0, 1.33)])
def test_kto_pair_matches_slow_reference(beta, wd, wu, kl_shift):
    """kl_shift < 0 puts the KL estimate below 0: z0 clamps to 0."""
    x = _batch(0, kl_shift=kl_shift)
    out = kto_pair_loss(*x, beta=beta, desirable_weight=wd, undesirable_weight=wu)
    torch.testing.assert_close(out.loss, _slow_kto(*x, beta, wd, wu))
    assert (out.metrics["kto/kl"] >= 0).all()


class _Policy:
    """Returns, for each batch row, fixed completion log-probs (summed by TRL over the completion)."""

    training = True

    def __init__(self, rows):
        self.rows = rows  # (N,) per-sequence log-probs, one per row, gradient to them

    def __call__(self, *, input_ids, labels=None, fused_lm_head=False, **kwargs):
        n, t = input_ids.shape
        log_probs = torch.zeros(n, t - 1, dtype=self.rows.dtype)
        log_probs = log_probs.index_put((torch.arange(n), torch.full((n,), t - 2)), self.rows)
        zeros = torch.zeros_like(log_probs)
        return SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros, aux_loss=None)


@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_kto_pair_matches_trl_kto_trainer(dtype, beta):
    c, r, rc, rr, kl_pol, kl_ref = (t.to(dtype) for t in _batch(1, kl_shift=0.3))
    n = len(c)
    trl_rows = torch.cat([c, r]).clone().requires_grad_(True)
    trainer = object.__new__(KTOTrainer)
    trainer.model = _Policy(trl_rows)
    trainer.accelerator = SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x)
    trainer.aux_loss_enabled = False
    trainer.precompute_ref_logps = True
    trainer.calculate_KL = True
    trainer.loss_type = "kto"
    trainer.beta = beta
    trainer.desirable_weight = 1.0
    trainer.undesirable_weight = 1.0
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer._total_train_tokens = 0
    trainer._tp_size = 1
    trainer._compute_kl_logps = lambda model, batch: torch.cat([kl_pol, kl_pol])
    batch = {
        "input_ids": torch.ones(2 * n, 3, dtype=torch.long),
        "attention_mask": torch.ones(2 * n, 3, dtype=torch.long),
        "completion_mask": torch.tensor([[0, 0, 1]] * (2 * n)),
        "label": torch.tensor([True] * n + [False] * n),
        "ref_logps": torch.cat([rc, rr]),
        "ref_KL_logps": torch.cat([kl_ref, kl_ref]),
    }
    trl_loss = trainer._compute_loss(trainer.model, batch, return_outputs=False)
    if isinstance(trl_loss, tuple):
        trl_loss = trl_loss[0]
    ours_in = [c.clone().requires_grad_(True), r.clone().requires_grad_(True)]
    ours = kto_pair_loss(*ours_in, rc, rr, kl_pol, kl_ref, beta=beta).loss.mean()
    tol = {"atol": 1e-9, "rtol": 1e-9} if dtype == torch.float64 else {"atol": 3e-2, "rtol": 3e-2}
    torch.testing.assert_close(ours.double(), trl_loss.double(), **tol)
    ours.backward()
    trl_loss.backward()
    torch.testing.assert_close(torch.cat([g.grad for g in ours_in]).double(), trl_rows.grad.double(), **tol)


def test_mismatched_index_pairs_each_prompt_with_another_answer():
    idx = mismatched_index(4)
    assert idx.tolist() == [1, 2, 3, 0]
    with pytest.raises(ValueError, match="at least 2"):
        mismatched_index(1)


def test_kto_gradcheck_float64():
    c, r, rc, rr, kp, kr = _batch(2, kl_shift=0.5)
    x = [c.requires_grad_(True), r.requires_grad_(True)]
    assert torch.autograd.gradcheck(lambda a, b: kto_pair_loss(a, b, rc, rr, kp, kr, beta=0.4).loss, x)
