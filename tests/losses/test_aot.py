"""``aot_loss`` and ``aot_unpaired_loss`` against TRL's ``DPOTrainer(loss_type="aot" / "aot_unpaired")``
(batch mean and gradients: the sort couples the rows, so there is no per-row comparison), against a
brute-force optimal transport, and on hand values."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("trl")

from trl_harness import PAIRS, TRL_TOL, dpo_trainer_loss, gradients, leaves, seq_logps, sequence_sums  # noqa: E402

from prefpool.losses import METHODS, dpo_loss  # noqa: E402
from prefpool.losses.aot import aot_loss, aot_unpaired_loss  # noqa: E402

LOSSES = {"aot": aot_loss, "aot_unpaired": aot_unpaired_loss}


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize(("beta", "eps"), [(0.1, 0.0), (0.5, 0.1), (2.0, 0.3)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_aot_matches_trl(name, dtype, beta, eps):
    trl_loss, trl_tokens = dpo_trainer_loss(PAIRS, dtype, loss_type=name, beta=beta, label_smoothing=eps)
    trl_loss.backward()
    tokens = leaves(PAIRS, dtype)
    seq = {**sequence_sums(tokens), **{k: v for k, v in seq_logps(PAIRS, dtype).items() if k.startswith("ref_")}}
    ours = LOSSES[name](
        seq["policy_chosen"], seq["policy_rejected"], seq["ref_chosen"], seq["ref_rejected"],
        beta=beta, label_smoothing=eps,
    ).loss.mean()  # fmt: skip
    ours.backward()
    tol = TRL_TOL[dtype]
    torch.testing.assert_close(ours.double(), trl_loss.double(), **tol)
    torch.testing.assert_close(gradients(tokens), gradients(trl_tokens), **tol)


def _logistic(delta, beta, eps):
    return -(1 - eps) * F.logsigmoid(beta * delta) - eps * F.logsigmoid(-beta * delta)


@pytest.mark.parametrize("name", list(LOSSES))
def test_sorted_matching_is_the_cheapest_transport_plan(name):
    """The loss sums a convex cost of differences, so of all B! matchings of the two samples the sorted
    one is the cheapest (the one-dimensional optimal transport plan): the loss's sum equals the minimum
    over every permutation, found by brute force."""
    g = torch.Generator().manual_seed(3)
    c, r, rc, rr = (torch.randn(6, dtype=torch.float64, generator=g) * 3 for _ in range(4))
    beta, eps = 0.7, 0.1
    better, worse = (c - r, rc - rr) if name == "aot" else (c - rc, r - rr)
    cheapest = min(_logistic(better - worse[list(p)], beta, eps).sum().item() for p in itertools.permutations(range(6)))
    ours = LOSSES[name](c, r, rc, rr, beta=beta, label_smoothing=eps).loss.sum().item()
    assert ours == pytest.approx(cheapest, rel=1e-12)


@pytest.mark.parametrize("name", list(LOSSES))
def test_one_pair_is_dpo_and_row_order_does_not_matter(name):
    """B = 1: sorting does nothing and both margins reduce to DPO's h = (c − rc) − (r − rr), so the loss
    is −log σ(β h). For B > 1, permuting the rows leaves the batch mean unchanged."""
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E732,E731
    one = LOSSES[name](t(-1.0), t(-3.0), t(-2.0), t(-2.5), beta=0.5)
    torch.testing.assert_close(one.loss, dpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.5), beta=0.5).loss)
    g = torch.Generator().manual_seed(4)
    x = [torch.randn(5, dtype=torch.float64, generator=g) for _ in range(4)]
    perm = torch.randperm(5, generator=g)
    whole = LOSSES[name](*x, beta=0.3).loss.mean()
    permuted = LOSSES[name](*(v[perm] for v in x), beta=0.3).loss.mean()
    torch.testing.assert_close(whole, permuted)


@pytest.mark.parametrize("name", list(LOSSES))
def test_aot_gradcheck_float64(name):
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(5, dtype=torch.float64, generator=g).requires_grad_(True) for _ in range(2)]
    ref = [torch.randn(5, dtype=torch.float64, generator=g) for _ in range(2)]
    assert torch.autograd.gradcheck(lambda c, r: LOSSES[name](c, r, *ref, beta=0.7, label_smoothing=0.2).loss, x)


def test_aot_methods_are_registered_with_trl_names():
    assert METHODS["aot"].trl_loss_type == ("aot",)
    assert METHODS["aot_unpaired"].trl_loss_type == ("aot_unpaired",)
