"""DPO, IPO, SimPO and the chosen-answer NLL: hand values, a plain reference, gradients, bad input.

The reference below is deliberately naive: python floats, one example at a
time, ``math.log1p``/``math.exp``, with gradients derived by hand. The
implementation is compared with it for loss *and* gradients over odd batch
sizes in float32 and bfloat16.
"""

from __future__ import annotations

import math

import pytest
import torch

from prefpool.losses import (
    LossOutput,
    add_chosen_nll,
    chosen_nll,
    dpo_loss,
    ipo_loss,
    simpo_loss,
)

torch.set_num_threads(1)

LN2 = math.log(2.0)
METRIC_NAMES = {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"}


def t(*values, dtype=torch.float32, grad=False):
    return torch.tensor(values, dtype=dtype, requires_grad=grad)


# --------------------------------------------------------------------------- reference


def softplus(x: float) -> float:
    """log(1 + e^x), written for python floats (stable for either sign)."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def ref_dpo(pw, pl, rw, rl, beta, eps):
    """One example. m = beta((pw - rw) - (pl - rl));
    loss = (1-eps) softplus(-m) + eps softplus(m);
    dloss/dm = -(1-eps) σ(-m) + eps σ(m); dm/d(pw, pl, rw, rl) = beta (1, -1, -1, 1)."""
    m = beta * ((pw - rw) - (pl - rl))
    loss = (1 - eps) * softplus(-m) + eps * softplus(m)
    dm = -(1 - eps) * sigmoid(-m) + eps * sigmoid(m)
    return loss, (beta * dm, -beta * dm, -beta * dm, beta * dm)


def ref_ipo(pw, pl, rw, rl, beta, _eps=None):
    """One example. h = (pw - rw) - (pl - rl); loss = (h - 1/(2 beta))^2;
    dloss/dh = 2 (h - 1/(2 beta)); dh/d(pw, pl, rw, rl) = (1, -1, -1, 1)."""
    h = (pw - rw) - (pl - rl)
    d = h - 1.0 / (2.0 * beta)
    return d * d, (2 * d, -2 * d, -2 * d, 2 * d)


def ref_simpo(pw, pl, nw, nl, beta, gamma, eps):
    """One example. m = beta pw / nw - beta pl / nl - gamma;
    loss = (1-eps) softplus(-m) + eps softplus(m); dm/d(pw, pl) = (beta/nw, -beta/nl)."""
    m = beta * pw / nw - beta * pl / nl - gamma
    loss = (1 - eps) * softplus(-m) + eps * softplus(m)
    dm = -(1 - eps) * sigmoid(-m) + eps * sigmoid(m)
    return loss, (dm * beta / nw, -dm * beta / nl)


def ref_nll(pw, nw):
    """One example. nll = -pw / nw; dnll/dpw = -1/nw."""
    return -pw / nw, (-1.0 / nw,)


def run_reference(fn, tensors, *args):
    """Apply a per-example python-float reference over the batch; return (loss, grads) in float64."""
    cols = [x.detach().double().tolist() for x in tensors]
    losses, grads = [], [[] for _ in tensors]
    for row in zip(*cols, strict=True):
        loss, g = fn(*row, *args)
        losses.append(loss)
        for acc, gi in zip(grads, g, strict=False):
            acc.append(gi)
    as64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    # Count columns (token counts) get no gradient: only the first len(g) columns do.
    return as64(losses), [as64(g) for g in grads if g]


def random_logps(batch, gen, scale=20.0):
    """Four (B,) sequence log-probs in [-scale, -0.05], float32."""
    return [-(torch.rand(batch, generator=gen) * scale + 0.05) for _ in range(4)]


def random_counts(batch, gen):
    return torch.randint(1, 40, (batch,), generator=gen), torch.randint(1, 40, (batch,), generator=gen)


# --------------------------------------------------------------------------- hand values


def test_dpo_policy_equals_reference_is_ln2():
    """Policy == reference ⇒ every log-ratio is 0 ⇒ margin 0 ⇒ loss = -log σ(0) = ln 2 = 0.693147,
    for any beta; all rewards are 0, so accuracy (margin > 0) is 0."""
    logps = t(-12.5, -3.0, -40.25)
    rej = t(-7.0, -9.5, -41.0)
    for beta in (0.05, 0.1, 1.0, 7.0):
        out = dpo_loss(logps, rej, logps.clone(), rej.clone(), beta=beta)
        torch.testing.assert_close(out.loss, torch.full((3,), LN2), rtol=0, atol=1e-7)
        torch.testing.assert_close(out.metrics["rewards/margins"], torch.zeros(3))
        torch.testing.assert_close(out.metrics["rewards/accuracies"], torch.zeros(3))


def test_dpo_explicit_value():
    """beta = 0.5; log-ratios: chosen (-10) - (-11) = 1, rejected (-14) - (-13) = -1.
    Rewards 0.5 and -0.5, margin 0.5 * (1 - (-1)) = 1 ⇒ loss = log(1 + e^-1) = 0.313262.
    Swapping chosen and rejected gives margin -1 ⇒ log(1 + e^1) = 1.313262."""
    out = dpo_loss(t(-10.0), t(-14.0), t(-11.0), t(-13.0), beta=0.5)
    torch.testing.assert_close(out.loss, t(0.3132617), rtol=0, atol=1e-6)
    torch.testing.assert_close(out.metrics["rewards/chosen"], t(0.5))
    torch.testing.assert_close(out.metrics["rewards/rejected"], t(-0.5))
    torch.testing.assert_close(out.metrics["rewards/margins"], t(1.0))
    swapped = dpo_loss(t(-14.0), t(-10.0), t(-13.0), t(-11.0), beta=0.5)
    torch.testing.assert_close(swapped.loss, t(1.3132617), rtol=0, atol=1e-6)


def test_cdpo_label_smoothing_value():
    """Same pair (margin 1), eps = 0.2:
    loss = 0.8 * log(1 + e^-1) + 0.2 * log(1 + e^1)
         = 0.8 * 0.3132617 + 0.2 * 1.3132617 = 0.2506093 + 0.2626523 = 0.5132617.
    (It is softplus(-m) + eps * m = 0.3132617 + 0.2 * 1.)"""
    out = dpo_loss(t(-10.0), t(-14.0), t(-11.0), t(-13.0), beta=0.5, label_smoothing=0.2)
    torch.testing.assert_close(out.loss, t(0.5132617), rtol=0, atol=1e-6)


def test_ipo_zero_at_target_margin():
    """beta = 0.25 ⇒ target 1/(2 * 0.25) = 2. Log-ratios: chosen (-5) - (-6) = 1,
    rejected (-8) - (-7) = -1 ⇒ h = 2 ⇒ loss (2 - 2)^2 = 0 and zero gradient."""
    pw, pl = t(-5.0, grad=True), t(-8.0, grad=True)
    out = ipo_loss(pw, pl, t(-6.0), t(-7.0), beta=0.25)
    assert out.loss.item() == 0.0
    out.loss.sum().backward()
    assert pw.grad.item() == 0.0 and pl.grad.item() == 0.0


def test_ipo_explicit_value():
    """beta = 0.1 ⇒ target 5. Chosen ratio (-20) - (-22) = 2, rejected (-30) - (-29) = -1
    ⇒ h = 3 ⇒ loss (3 - 5)^2 = 4; dloss/dpw = 2 (3 - 5) = -4, dloss/dpl = +4.
    Rewards are beta * ratio: 0.2 and -0.1."""
    pw, pl = t(-20.0, grad=True), t(-30.0, grad=True)
    out = ipo_loss(pw, pl, t(-22.0), t(-29.0), beta=0.1)
    torch.testing.assert_close(out.loss, t(4.0), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.metrics["rewards/chosen"], t(0.2))
    torch.testing.assert_close(out.metrics["rewards/rejected"], t(-0.1))
    out.loss.sum().backward()
    torch.testing.assert_close(pw.grad, t(-4.0), rtol=0, atol=1e-5)
    torch.testing.assert_close(pl.grad, t(4.0), rtol=0, atol=1e-5)


def test_simpo_explicit_value():
    """beta = 2, gamma = 0.5. Chosen: -6 over 4 tokens ⇒ r_w = 2 * -1.5 = -3;
    rejected: -20 over 5 tokens ⇒ r_l = 2 * -4 = -8. Margin -3 - (-8) - 0.5 = 4.5
    ⇒ loss = log(1 + e^-4.5) = 0.0110477. Token counts matter: with the rejected
    over 10 tokens r_l = -4 ⇒ margin 0.5 ⇒ log(1 + e^-0.5) = 0.4740770."""
    out = simpo_loss(t(-6.0), t(-20.0), torch.tensor([4]), torch.tensor([5]), beta=2.0, gamma=0.5)
    torch.testing.assert_close(out.loss, t(0.0110477), rtol=0, atol=1e-6)
    torch.testing.assert_close(out.metrics["rewards/chosen"], t(-3.0))
    torch.testing.assert_close(out.metrics["rewards/rejected"], t(-8.0))
    out = simpo_loss(t(-6.0), t(-20.0), torch.tensor([4]), torch.tensor([10]), beta=2.0, gamma=0.5)
    torch.testing.assert_close(out.loss, t(0.4740770), rtol=0, atol=1e-6)


def test_simpo_label_smoothing_value():
    """beta = 1, gamma = 1: r_w = -2/2 = -1, r_l = -9/3 = -3 ⇒ margin -1 + 3 - 1 = 1;
    eps = 0.1 ⇒ 0.9 * 0.3132617 + 0.1 * 1.3132617 = 0.4132617."""
    out = simpo_loss(t(-2.0), t(-9.0), torch.tensor([2]), torch.tensor([3]), beta=1.0, gamma=1.0, label_smoothing=0.1)
    torch.testing.assert_close(out.loss, t(0.4132617), rtol=0, atol=1e-6)


def test_chosen_nll_value():
    """nll = -logp / len: -(-12) / 4 = 3; -(-1.5) / 3 = 0.5; -(-7) / 1 = 7."""
    nll = chosen_nll(t(-12.0, -1.5, -7.0), torch.tensor([4, 3, 1]))
    torch.testing.assert_close(nll, t(3.0, 0.5, 7.0))


# --------------------------------------------------------------------------- reference comparison


# float32: the reference runs in float64 on the very same float32 inputs, so the
# only difference is float32 rounding inside the loss (log-probs up to |20|, so
# a few ulp of 20 ≈ 1e-6 in the log-ratio): rtol 1e-6, atol 2e-6.
F32_TOL = {"rtol": 1e-6, "atol": 2e-6}
# bfloat16: the reference runs on the bf16-rounded inputs; the loss is computed in
# float32 (returned float32) so the same float32 tolerance applies to the loss.
# Gradients come back in bf16 (8-bit mantissa): half an ulp is 2^-9 ≈ 2e-3 relative.
BF16_GRAD_TOL = {"rtol": 4e-3, "atol": 1e-5}

PAIR_CASES = [
    ("dpo", dict(beta=0.1)),
    ("dpo", dict(beta=0.7, label_smoothing=0.3)),
    ("ipo", dict(beta=0.1)),
    ("ipo", dict(beta=2.5)),
]


def _pair_fns(name):
    return {"dpo": (dpo_loss, ref_dpo), "ipo": (ipo_loss, ref_ipo)}[name]


@pytest.mark.parametrize("batch", [1, 3, 7])
@pytest.mark.parametrize("name,kwargs", PAIR_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pair_losses_match_reference(name, kwargs, batch, dtype):
    fn, ref = _pair_fns(name)
    gen = torch.Generator().manual_seed(batch * 31 + len(name))
    inputs = [x.to(dtype).requires_grad_() for x in random_logps(batch, gen)]
    out = fn(*inputs, **kwargs)
    assert out.loss.shape == (batch,)
    assert out.loss.dtype == torch.float32
    out.loss.sum().backward()

    want_loss, want_grads = run_reference(ref, inputs, kwargs["beta"], kwargs.get("label_smoothing", 0.0))
    torch.testing.assert_close(out.loss.double(), want_loss, **F32_TOL)
    for x, g in zip(inputs, want_grads, strict=True):
        assert x.grad.dtype == dtype
        tol = F32_TOL if dtype == torch.float32 else BF16_GRAD_TOL
        torch.testing.assert_close(x.grad.double(), g, **tol)


@pytest.mark.parametrize("batch", [1, 3, 7])
@pytest.mark.parametrize("kwargs", [dict(beta=2.0, gamma=1.0), dict(beta=2.5, gamma=0.0, label_smoothing=0.25)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_simpo_matches_reference(kwargs, batch, dtype):
    gen = torch.Generator().manual_seed(batch)
    pw, pl = (x.to(dtype).requires_grad_() for x in random_logps(batch, gen)[:2])
    nw, nl = random_counts(batch, gen)
    out = simpo_loss(pw, pl, nw, nl, **kwargs)
    assert out.loss.shape == (batch,) and out.loss.dtype == torch.float32
    out.loss.sum().backward()

    want_loss, (gw, gl) = run_reference(
        ref_simpo, [pw, pl, nw, nl], kwargs["beta"], kwargs["gamma"], kwargs.get("label_smoothing", 0.0)
    )
    torch.testing.assert_close(out.loss.double(), want_loss, **F32_TOL)
    tol = F32_TOL if dtype == torch.float32 else BF16_GRAD_TOL
    for x, g in ((pw, gw), (pl, gl)):
        assert x.grad.dtype == dtype
        torch.testing.assert_close(x.grad.double(), g, **tol)


@pytest.mark.parametrize("batch", [1, 3, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chosen_nll_matches_reference(batch, dtype):
    gen = torch.Generator().manual_seed(100 + batch)
    pw = random_logps(batch, gen)[0].to(dtype).requires_grad_()
    nw, _ = random_counts(batch, gen)
    nll = chosen_nll(pw, nw)
    assert nll.shape == (batch,) and nll.dtype == torch.float32
    nll.sum().backward()
    want, (g,) = run_reference(ref_nll, [pw, nw])
    torch.testing.assert_close(nll.double(), want, **F32_TOL)
    assert pw.grad.dtype == dtype
    torch.testing.assert_close(pw.grad.double(), g, **(F32_TOL if dtype == torch.float32 else BF16_GRAD_TOL))


def test_bf16_inputs_are_computed_in_float32():
    """Rewards that differ by less than a bf16 ulp of the loss must still be resolved:
    margin 0.5 * ((-100) - (-100.5) - 0) = 0.25 ⇒ log(1 + e^-0.25) = 0.5759394, float32."""
    out = dpo_loss(
        t(-100.0, dtype=torch.bfloat16),
        t(-3.0, dtype=torch.bfloat16),
        t(-100.5, dtype=torch.bfloat16),
        t(-3.0, dtype=torch.bfloat16),
        beta=0.5,
    )
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, t(0.5759394), rtol=0, atol=1e-6)


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(7)
    four = [x.double().requires_grad_() for x in random_logps(3, gen, scale=5.0)]
    nw, nl = random_counts(3, gen)
    checks = [
        (lambda *a: dpo_loss(*a, beta=0.3).loss, four),
        (lambda *a: dpo_loss(*a, beta=0.3, label_smoothing=0.1).loss, four),
        (lambda *a: ipo_loss(*a, beta=0.4).loss, four),
        (lambda a, b: simpo_loss(a, b, nw, nl, beta=2.0, gamma=0.5, label_smoothing=0.2).loss, four[:2]),
        (lambda a: chosen_nll(a, nw), four[:1]),
        (lambda *a: add_chosen_nll(dpo_loss(*a, beta=0.3), a[0], nw, alpha=0.7).loss, four),
    ]
    for fn, args in checks:
        assert fn(*args).dtype == torch.float64
        assert torch.autograd.gradcheck(fn, tuple(args), eps=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("name", ["dpo", "ipo", "simpo"])
def test_metrics_names_shapes_detached(name):
    gen = torch.Generator().manual_seed(3)
    four = [x.requires_grad_() for x in random_logps(5, gen)]
    nw, nl = random_counts(5, gen)
    out = {
        "dpo": lambda: dpo_loss(*four),
        "ipo": lambda: ipo_loss(*four),
        "simpo": lambda: simpo_loss(four[0], four[1], nw, nl),
    }[name]()
    assert isinstance(out, LossOutput)
    assert out.loss.shape == (5,) and out.loss.requires_grad
    assert set(out.metrics) == METRIC_NAMES
    for key, value in out.metrics.items():
        assert value.shape == (5,), key
        assert not value.requires_grad and value.grad_fn is None, key


def test_accuracies_hand_case():
    """beta = 1, references all 0, so rewards are the policy log-probs:
    (-1 vs -2) margin +1 ⇒ 1; (-3 vs -2) margin -1 ⇒ 0; (-2 vs -2) margin 0 ⇒ 0 (strict >)."""
    zeros = torch.zeros(3)
    out = dpo_loss(t(-1.0, -3.0, -2.0), t(-2.0, -2.0, -2.0), zeros, zeros, beta=1.0)
    torch.testing.assert_close(out.metrics["rewards/margins"], t(1.0, -1.0, 0.0))
    torch.testing.assert_close(out.metrics["rewards/accuracies"], t(1.0, 0.0, 0.0))
    # IPO reports the same beta-scaled rewards.
    out = ipo_loss(t(-1.0, -3.0, -2.0), t(-2.0, -2.0, -2.0), zeros, zeros, beta=0.5)
    torch.testing.assert_close(out.metrics["rewards/margins"], t(0.5, -0.5, 0.0))
    torch.testing.assert_close(out.metrics["rewards/accuracies"], t(1.0, 0.0, 0.0))


# --------------------------------------------------------------------------- add_chosen_nll


def test_add_chosen_nll_adds_alpha_times_nll():
    """RPO on DPO: loss_i + alpha * (-pw_i / n_i), with the gradient of both terms.
    For example 0: pw = -12, n = 4 ⇒ nll 3; alpha 0.5 adds 1.5."""
    pw = t(-12.0, -1.5, -7.0, grad=True)
    pl, rw, rl = t(-13.0, -2.0, -6.0), t(-11.0, -1.0, -7.5), t(-12.0, -2.5, -6.5)
    counts = torch.tensor([4, 3, 1])
    base = dpo_loss(pw, pl, rw, rl, beta=0.2)
    rpo = add_chosen_nll(base, pw, counts, alpha=0.5)
    torch.testing.assert_close(rpo.loss, base.loss + 0.5 * t(3.0, 0.5, 7.0))
    torch.testing.assert_close(rpo.metrics["nll"], t(3.0, 0.5, 7.0))
    assert not rpo.metrics["nll"].requires_grad
    assert METRIC_NAMES <= set(rpo.metrics)
    # The gradient of the NLL term is alpha * (-1/n) on top of DPO's.
    (g_base,) = torch.autograd.grad(base.loss.sum(), pw, retain_graph=True)
    (g_rpo,) = torch.autograd.grad(rpo.loss.sum(), pw)
    torch.testing.assert_close(g_rpo - g_base, -0.5 / counts.float())
    # The base output is not mutated.
    assert "nll" not in base.metrics


def test_add_chosen_nll_alpha_zero_changes_nothing():
    gen = torch.Generator().manual_seed(11)
    four = [x.requires_grad_() for x in random_logps(3, gen)]
    nw, nl = random_counts(3, gen)
    for base in (dpo_loss(*four), ipo_loss(*four), simpo_loss(four[0], four[1], nw, nl)):
        out = add_chosen_nll(base, four[0], nw, alpha=0.0)
        assert torch.equal(out.loss, base.loss)
        (g0,) = torch.autograd.grad(base.loss.sum(), four[0], retain_graph=True)
        (g1,) = torch.autograd.grad(out.loss.sum(), four[0])
        assert torch.equal(g0, g1)


def test_add_chosen_nll_batch_mismatch():
    base = dpo_loss(t(-1.0, -2.0), t(-2.0, -3.0), t(-1.0, -2.0), t(-2.0, -3.0))
    with pytest.raises(ValueError, match=r"^policy_chosen_logps"):
        add_chosen_nll(base, t(-1.0, -2.0, -3.0), torch.tensor([1, 2, 3]), alpha=1.0)


# --------------------------------------------------------------------------- bad input


def good_pair():
    return {
        name: t(-1.0, -2.0, -3.0)
        for name in ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
    }


def good_simpo():
    d = good_pair()
    del d["ref_chosen_logps"], d["ref_rejected_logps"]
    return d | {"chosen_tokens": torch.tensor([1, 2, 3]), "rejected_tokens": torch.tensor([2, 2, 2])}


def call(fn, args, **kwargs):
    return fn(*args.values(), **kwargs)


def raises_for(name):
    """A ValueError whose message starts with the argument's name (the documented contract)."""
    return pytest.raises(ValueError, match=rf"^{name}\b")


PAIR_ARGS = ["policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps"]
SIMPO_ARGS = ["policy_chosen_logps", "policy_rejected_logps"]


@pytest.mark.parametrize("fn", [dpo_loss, ipo_loss], ids=["dpo", "ipo"])
@pytest.mark.parametrize("arg", PAIR_ARGS)
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "short", "2d"])
def test_pair_bad_tensor(fn, arg, bad):
    args = good_pair()
    args[arg] = _corrupt(args[arg], bad)
    with raises_for(_blamed(arg, bad, "policy_rejected_logps")):
        call(fn, args)


@pytest.mark.parametrize("arg", SIMPO_ARGS)
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "short", "2d"])
def test_simpo_bad_tensor(arg, bad):
    args = good_simpo()
    args[arg] = _corrupt(args[arg], bad)
    with raises_for(_blamed(arg, bad, "policy_rejected_logps")):
        call(simpo_loss, args)


def _blamed(arg, bad, next_arg):
    """The argument an error must name. B is read from policy_chosen_logps, so a
    batch mismatch there is reported against the next argument, whose length differs."""
    return next_arg if (bad == "short" and arg == "policy_chosen_logps") else arg


def _corrupt(x, bad):
    if bad == "short":
        return x[:2].clone()
    if bad == "2d":
        return x[:, None].clone()
    x = x.clone()
    x[1] = float(bad)
    return x


def test_policy_chosen_2d_is_rejected_even_when_all_agree():
    """(B, 1) everywhere must not be accepted as a batch of B: the losses take (B,)."""
    args = {k: v[:, None] for k, v in good_pair().items()}
    for fn in (dpo_loss, ipo_loss):
        with raises_for("policy_chosen_logps"):
            call(fn, args)
    with raises_for("policy_chosen_logps"):
        chosen_nll(t(-1.0, -2.0)[:, None], torch.tensor([1, 2]))


@pytest.mark.parametrize("fn", [dpo_loss, ipo_loss], ids=["dpo", "ipo"])
@pytest.mark.parametrize("beta", [0.0, -0.1, float("nan"), float("inf")])
def test_pair_bad_beta(fn, beta):
    with raises_for("beta"):
        call(fn, good_pair(), beta=beta)


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan"), float("inf")])
def test_simpo_bad_beta(beta):
    with raises_for("beta"):
        call(simpo_loss, good_simpo(), beta=beta)


@pytest.mark.parametrize("eps", [-0.1, 0.5, 0.7, float("nan")])
def test_bad_label_smoothing(eps):
    with raises_for("label_smoothing"):
        call(dpo_loss, good_pair(), label_smoothing=eps)
    with raises_for("label_smoothing"):
        call(simpo_loss, good_simpo(), label_smoothing=eps)


@pytest.mark.parametrize("gamma", [-0.5, float("nan")])
def test_simpo_bad_gamma(gamma):
    with raises_for("gamma"):
        call(simpo_loss, good_simpo(), gamma=gamma)


@pytest.mark.parametrize("arg", ["chosen_tokens", "rejected_tokens"])
@pytest.mark.parametrize("counts", [[1, 0, 2], [1, -3, 2], [1, 2]])
def test_simpo_bad_token_counts(arg, counts):
    args = good_simpo()
    args[arg] = torch.tensor(counts)
    with raises_for(arg):
        call(simpo_loss, args)


@pytest.mark.parametrize("counts", [[1, 0, 2], [-1, 2, 2]])
def test_chosen_nll_bad_counts(counts):
    with raises_for("chosen_tokens"):
        chosen_nll(t(-1.0, -2.0, -3.0), torch.tensor(counts))
    with raises_for("chosen_tokens"):
        add_chosen_nll(call(dpo_loss, good_pair()), t(-1.0, -2.0, -3.0), torch.tensor(counts), alpha=1.0)


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_chosen_nll_bad_logps(bad):
    with raises_for("policy_chosen_logps"):
        chosen_nll(_corrupt(t(-1.0, -2.0, -3.0), bad), torch.tensor([1, 2, 3]))


@pytest.mark.parametrize("alpha", [-0.1, float("nan"), float("inf")])
def test_add_chosen_nll_bad_alpha(alpha):
    with raises_for("alpha"):
        add_chosen_nll(call(dpo_loss, good_pair()), t(-1.0, -2.0, -3.0), torch.tensor([1, 2, 3]), alpha=alpha)
