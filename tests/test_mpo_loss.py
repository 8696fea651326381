"""MPO (Jiang, Huang, Wei 2023, arXiv 2312.16430, eq. 33) against the formula.

With p = σ(log πθ(y_w) − log πθ(y_l)) and p_ref the same under the reference::

    loss = −[I p + (1 − I)(1 − p)] + β KL(Bern(p) ‖ Bern(p_ref)) − τ E_{y∼πref}[log πθ(y|x)]

where the last term is the mean, over each row's valid reference samples, of
−(the policy's log-prob of the sample).
"""

from __future__ import annotations

import math

import pytest
import torch

from prefpool.losses import mpo_loss

torch.set_num_threads(1)

NAN = float("nan")
METRICS = {"mpo/p", "mpo/p_ref", "mpo/preference_reward", "mpo/kl", "rewards/accuracies"}


def t(*values, dtype=torch.float64, grad=False):
    return torch.tensor(values, dtype=dtype, requires_grad=grad)


# --------------------------------------------------------------------------- reference


def naive_mpo(pw, pl, rw, rl, *, preference=None, samples=None, mask=None, beta=0.1, tau=0.0, nw=None, nl=None):
    """Eq. 33 written out directly, one row at a time, in float64 torch scalars (autograd-able).

    KL(Bern(p) ‖ Bern(q)) = p log(p/q) + (1 − p) log((1 − p)/(1 − q)), with plain log and
    division (fine for the moderate log-ratios used here).
    """
    losses = []
    for b in range(pw.shape[0]):
        if nw is not None:
            h, h_ref = pw[b] / nw[b] - pl[b] / nl[b], rw[b] / nw[b] - rl[b] / nl[b]
        else:
            h, h_ref = pw[b] - pl[b], rw[b] - rl[b]
        p = 1.0 / (1.0 + torch.exp(-h))
        q = 1.0 / (1.0 + torch.exp(-h_ref))
        i = 1.0 if preference is None else preference[b]
        loss = -(i * p + (1.0 - i) * (1.0 - p))
        loss = loss + beta * (p * torch.log(p / q) + (1.0 - p) * torch.log((1.0 - p) / (1.0 - q)))
        if tau:
            valid = [samples[b, k] for k in range(samples.shape[1]) if mask is None or bool(mask[b, k])]
            loss = loss + tau * (-sum(valid) / len(valid))
        losses.append(loss)
    return torch.stack(losses)


def random_case(batch, k, seed, dtype=torch.float64):
    """Log-probs whose differences stay within a few nats; soft labels; a ragged mask
    with at least one valid sample per row and NaN in every padded slot."""
    gen = torch.Generator().manual_seed(seed)

    def logps(*shape):
        return (-(torch.rand(*shape, generator=gen, dtype=torch.float64) * 6 + 0.1)).to(dtype)

    mask = torch.rand(batch, k, generator=gen) < 0.6
    mask[:, 0] |= ~mask.any(dim=1)
    samples = logps(batch, k).masked_fill(~mask, NAN)
    return {
        "pw": logps(batch),
        "pl": logps(batch),
        "rw": logps(batch),
        "rl": logps(batch),
        "preference": torch.rand(batch, generator=gen, dtype=torch.float64).to(dtype),
        "samples": samples,
        "mask": mask,
        "nw": torch.randint(1, 9, (batch,), generator=gen),
        "nl": torch.randint(1, 9, (batch,), generator=gen),
    }


def impl(case, **kwargs):
    norm = kwargs.pop("length_normalize", False)
    return mpo_loss(
        case["pw"],
        case["pl"],
        case["rw"],
        case["rl"],
        preference=case["preference"],
        ref_sample_logps=case["samples"],
        ref_sample_mask=case["mask"],
        chosen_tokens=case["nw"],
        rejected_tokens=case["nl"],
        length_normalize=norm,
        **kwargs,
    )


def reference(case, **kwargs):
    norm = kwargs.pop("length_normalize", False)
    return naive_mpo(
        case["pw"],
        case["pl"],
        case["rw"],
        case["rl"],
        preference=case["preference"],
        samples=case["samples"],
        mask=case["mask"],
        nw=case["nw"] if norm else None,
        nl=case["nl"] if norm else None,
        **kwargs,
    )


# --------------------------------------------------------------------------- hand values


def test_hand_value_h0_with_kl():
    """Policy: chosen = rejected = -5 ⇒ h = 0 ⇒ p = 0.5. Reference: -4 vs -5 ⇒ h_ref = 1
    ⇒ p_ref = σ(1) = 0.7310586. I = 1 ⇒ preference term −p = −0.5.
    KL = 0.5 log(0.5/0.7310586) + 0.5 log(0.5/0.2689414)
       = 0.5 (−0.6931472 + 0.3132617) + 0.5 (−0.6931472 + 1.3132617)
       = −0.1899428 + 0.3100573 = 0.1201145.
    β = 0.5 ⇒ loss = −0.5 + 0.0600573 = −0.4399427."""
    out = mpo_loss(t(-5.0), t(-5.0), t(-4.0), t(-5.0), beta=0.5)
    torch.testing.assert_close(out.metrics["mpo/p"], t(0.5))
    torch.testing.assert_close(out.metrics["mpo/p_ref"], t(0.7310586), rtol=0, atol=1e-7)
    torch.testing.assert_close(out.metrics["mpo/kl"], t(0.1201145), rtol=0, atol=1e-7)
    torch.testing.assert_close(out.metrics["mpo/preference_reward"], t(0.5))
    torch.testing.assert_close(out.loss, t(-0.4399427), rtol=0, atol=1e-7)


def test_hand_value_with_tau_and_ragged_samples():
    """Same pair, plus reference samples with policy log-probs (-3, -5, pad=NaN), τ = 0.2:
    mean NLL = (3 + 5)/2 = 4 ⇒ τ term 0.8 ⇒ loss = −0.4399427 + 0.8 = 0.3600573."""
    out = mpo_loss(
        t(-5.0),
        t(-5.0),
        t(-4.0),
        t(-5.0),
        beta=0.5,
        tau=0.2,
        ref_sample_logps=t([-3.0, -5.0, NAN]),
        ref_sample_mask=torch.tensor([[True, True, False]]),
    )
    torch.testing.assert_close(out.loss, t(0.3600573), rtol=0, atol=1e-7)
    torch.testing.assert_close(out.metrics["mpo/ref_sample_nll"], t(4.0))


def test_hand_value_soft_label():
    """I = 0.25, h = ln 3 ⇒ p = 3/4. Preference reward 0.25 * 0.75 + 0.75 * 0.25 = 0.375;
    β = 0 ⇒ loss = −0.375. Reference equal to policy ⇒ KL 0 anyway."""
    h = math.log(3.0)
    out = mpo_loss(t(h - 2.0), t(-2.0), t(h - 7.0), t(-7.0), preference=t(0.25), beta=0.0)
    torch.testing.assert_close(out.metrics["mpo/p"], t(0.75))
    torch.testing.assert_close(out.loss, t(-0.375))


def test_hand_value_length_normalize():
    """Policy: chosen -6 over 3 tokens (-2/token), rejected -10 over 5 (-2/token) ⇒ h = 0, p = 0.5
    (unnormalized h would be 4). Reference: chosen -9 over 3 (-3), rejected -10 over 5 (-2)
    ⇒ h_ref = −1, p_ref = 0.2689414. KL(0.5 ‖ 0.2689414) = 0.1201145 (the h_ref = +1 case mirrored).
    β = 1, I = 1 ⇒ loss = −0.5 + 0.1201145 = −0.3798855."""
    counts = dict(chosen_tokens=torch.tensor([3]), rejected_tokens=torch.tensor([5]))
    out = mpo_loss(t(-6.0), t(-10.0), t(-9.0), t(-10.0), beta=1.0, length_normalize=True, **counts)
    torch.testing.assert_close(out.metrics["mpo/p"], t(0.5))
    torch.testing.assert_close(out.metrics["mpo/p_ref"], t(0.2689414), rtol=0, atol=1e-7)
    torch.testing.assert_close(out.loss, t(-0.3798855), rtol=0, atol=1e-7)
    # Without the flag the counts are ignored: p = σ(4), p_ref = σ(1).
    raw = mpo_loss(t(-6.0), t(-10.0), t(-9.0), t(-10.0), beta=1.0, **counts)
    torch.testing.assert_close(raw.metrics["mpo/p"], torch.sigmoid(t(4.0)))
    torch.testing.assert_close(raw.metrics["mpo/p_ref"], torch.sigmoid(t(1.0)))


# --------------------------------------------------------------------------- reference comparison


@pytest.mark.parametrize("batch,k", [(1, 1), (3, 4), (7, 5)])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(beta=0.0, tau=0.0),
        dict(beta=0.1, tau=0.0),
        dict(beta=0.7, tau=0.3),
        dict(beta=2.0, tau=1.0, length_normalize=True),
    ],
)
def test_matches_naive_formula_values_and_gradients(batch, k, kwargs):
    """float64: implementation vs. the naive formula, loss and the gradients w.r.t.
    all four log-probs, the soft labels and the sample log-probs (tol 1e-10)."""
    case = random_case(batch, k, seed=batch * 10 + k)
    diff = ["pw", "pl", "rw", "rl", "preference", "samples"]
    ours = {n: case[n].clone().requires_grad_() for n in diff}
    theirs = {n: case[n].clone().requires_grad_() for n in diff}
    got = impl(case | ours, **dict(kwargs))
    want = reference(case | theirs, **dict(kwargs))
    assert got.loss.shape == (batch,) and got.loss.dtype == torch.float64
    torch.testing.assert_close(got.loss, want, rtol=1e-10, atol=1e-12)

    g_ours = torch.autograd.grad(got.loss.sum(), [ours[n] for n in diff], allow_unused=True)
    g_want = torch.autograd.grad(want.sum(), [theirs[n] for n in diff], allow_unused=True)
    for name, a, b in zip(diff, g_ours, g_want, strict=True):
        a = torch.zeros_like(case[name]) if a is None else a
        b = torch.zeros_like(case[name]) if b is None else b
        # The naive reference never touches padded slots, so its gradient there is 0.
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_float32_and_bf16_inputs_match_float64_reference(batch):
    """Low-precision inputs are computed in float32. The reference runs in float64 on the
    same (rounded) inputs. Loss: rtol 1e-5, atol 1e-6 (float32 sigmoid/log of differences
    of numbers up to |6|). Gradients: float32 rtol 1e-4 / atol 1e-6; bf16 grads are rounded
    to 8 bits, rtol 8e-3 / atol 1e-5."""
    for dtype, grad_tol in ((torch.float32, dict(rtol=1e-4, atol=1e-6)), (torch.bfloat16, dict(rtol=8e-3, atol=1e-5))):
        case = random_case(batch, 3, seed=batch, dtype=dtype)
        pw, pl = case["pw"].clone().requires_grad_(), case["pl"].clone().requires_grad_()
        got = impl(case | {"pw": pw, "pl": pl}, beta=0.5, tau=0.25)
        assert got.loss.dtype == torch.float32
        case64 = {n: (v.double() if v.is_floating_point() else v) for n, v in case.items()}
        pw64, pl64 = case64["pw"].clone().requires_grad_(), case64["pl"].clone().requires_grad_()
        want = reference(case64 | {"pw": pw64, "pl": pl64}, beta=0.5, tau=0.25)
        torch.testing.assert_close(got.loss.double(), want, rtol=1e-5, atol=1e-6)
        g = torch.autograd.grad(got.loss.sum(), [pw, pl])
        g64 = torch.autograd.grad(want.sum(), [pw64, pl64])
        for a, b in zip(g, g64, strict=True):
            assert a.dtype == dtype
            torch.testing.assert_close(a.double(), b, **grad_tol)


def test_gradcheck_float64():
    case = random_case(3, 4, seed=5)
    case["samples"] = case["samples"].nan_to_num(-1.0)  # finite padding: gradcheck perturbs every slot
    names = ["pw", "pl", "rw", "rl", "preference", "samples"]

    for norm in (False, True):

        def fn(*xs, norm=norm):
            return impl(case | dict(zip(names, xs, strict=True)), beta=0.8, tau=0.3, length_normalize=norm).loss

        inputs = tuple(case[n].clone().requires_grad_() for n in names)
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def test_analytic_gradient_in_h():
    """dL/dh = p(1 − p) [−(2I − 1) + β (h − h_ref)], since dKL/dp = logit(p) − logit(q) = h − h_ref.
    And dL/d(log π(y_w)) = dL/dh, dL/d(log π(y_l)) = −dL/dh."""
    case = random_case(7, 2, seed=9)
    pw, pl = case["pw"].clone().requires_grad_(), case["pl"].clone().requires_grad_()
    beta = 0.6
    out = mpo_loss(pw, pl, case["rw"], case["rl"], preference=case["preference"], beta=beta)
    gw, gl = torch.autograd.grad(out.loss.sum(), [pw, pl])
    h, h_ref = case["pw"] - case["pl"], case["rw"] - case["rl"]
    p = torch.sigmoid(h)
    want = p * (1 - p) * (-(2 * case["preference"] - 1) + beta * (h - h_ref))
    torch.testing.assert_close(gw, want)
    torch.testing.assert_close(gl, -want)


# --------------------------------------------------------------------------- invariants


def test_beta_tau_zero_is_preference_term_alone():
    """β = τ = 0 ⇒ loss = −[I p + (1 − I)(1 − p)], even when reference samples are passed."""
    case = random_case(7, 3, seed=1)
    out = impl(case, beta=0.0, tau=0.0)
    p = torch.sigmoid(case["pw"] - case["pl"])
    i = case["preference"]
    torch.testing.assert_close(out.loss, -(i * p + (1 - i) * (1 - p)))
    # Default preference is I = 1 ⇒ loss = −p.
    out = mpo_loss(case["pw"], case["pl"], case["rw"], case["rl"], beta=0.0)
    torch.testing.assert_close(out.loss, -p)


@pytest.mark.parametrize("beta", [0.0, 0.5])
@pytest.mark.parametrize("label", [0.0, 1.0])
def test_gradient_step_moves_p_toward_label(beta, label):
    """One SGD step (lr 0.1) on the policy log-probs. Starting points have |h − h_ref| ≤ 1.5,
    so β |h − h_ref| ≤ 0.75 < 1: the preference term dominates the KL's pull and p must move
    toward I (up for I = 1, down for I = 0), in every row."""
    h_ref = t(-1.0, 0.0, 0.5, 2.0, -2.0)
    h = h_ref + t(-1.5, 0.0, 1.0, 1.5, 0.7)
    pw = (h - 3.0).requires_grad_()
    pl = torch.full_like(h, -3.0, requires_grad=True)
    rw, rl = h_ref - 4.0, torch.full_like(h, -4.0)
    pref = torch.full_like(h, label)
    out = mpo_loss(pw, pl, rw, rl, preference=pref, beta=beta)
    gw, gl = torch.autograd.grad(out.loss.sum(), [pw, pl])
    with torch.no_grad():
        after = mpo_loss(pw - 0.1 * gw, pl - 0.1 * gl, rw, rl, preference=pref, beta=beta)
    delta = after.metrics["mpo/p"] - out.metrics["mpo/p"]
    if label == 1.0:
        assert (delta > 0).all(), delta
    else:
        assert (delta < 0).all(), delta


def test_half_label_and_no_kl_gives_zero_gradient():
    """I = 0.5 ⇒ I p + (1 − I)(1 − p) = 0.5 for every p: with β = 0 nothing is learned."""
    pw, pl = t(-1.0, -7.0, grad=True), t(-3.0, -2.0, grad=True)
    out = mpo_loss(pw, pl, t(-2.0, -2.0), t(-2.0, -2.0), preference=t(0.5, 0.5), beta=0.0)
    torch.testing.assert_close(out.loss, t(-0.5, -0.5))
    gw, gl = torch.autograd.grad(out.loss.sum(), [pw, pl])
    assert torch.equal(gw, torch.zeros(2, dtype=torch.float64)) and torch.equal(gl, gw)


def test_kl_zero_iff_p_equals_p_ref():
    """Same log-prob difference under policy and reference (2 = -3 - (-5) = -10 - (-12)) ⇒ p = p_ref
    ⇒ KL = 0 and the loss does not depend on β; any other difference ⇒ KL > 0."""
    same = mpo_loss(t(-3.0, -1.0), t(-5.0, -1.5), t(-10.0, -4.0), t(-12.0, -4.5), beta=3.0)
    torch.testing.assert_close(same.metrics["mpo/kl"], t(0.0, 0.0), rtol=0, atol=1e-15)
    no_kl = mpo_loss(t(-3.0, -1.0), t(-5.0, -1.5), t(-10.0, -4.0), t(-12.0, -4.5), beta=0.0)
    torch.testing.assert_close(same.loss, no_kl.loss)
    other = mpo_loss(t(-3.0, -3.0, -8.0), t(-5.0, -3.0, -1.0), t(-10.0, -3.0, -1.0), t(-12.1, -1.0, -8.0), beta=1.0)
    assert (other.metrics["mpo/kl"] > 0).all(), other.metrics["mpo/kl"]


def test_tau_term_is_tau_times_mean_valid_sample_nll():
    """loss(τ) − loss(0) = τ · mean over valid samples of −log π(y_k). Rows:
    (-1, -3, pad) ⇒ 2; (-4, pad, pad) ⇒ 4; (-2, -2, -8) ⇒ 4. Padding holds NaN (and -inf),
    which must not reach the loss or the gradient; the sample gradient is −τ/n_valid on
    valid slots and exactly 0 on padding."""
    samples = t([-1.0, -3.0, NAN], [-4.0, float("-inf"), NAN], [-2.0, -2.0, -8.0], grad=True)
    mask = torch.tensor([[True, True, False], [True, False, False], [True, True, True]])
    args = (t(-2.0, -3.0, -1.0), t(-2.5, -1.0, -4.0), t(-2.1, -3.0, -1.5), t(-2.0, -1.2, -4.0))
    tau = 0.3
    with_tau = mpo_loss(*args, beta=0.4, tau=tau, ref_sample_logps=samples, ref_sample_mask=mask)
    without = mpo_loss(*args, beta=0.4, tau=0.0, ref_sample_logps=samples, ref_sample_mask=mask)
    assert torch.isfinite(with_tau.loss).all()
    torch.testing.assert_close(with_tau.loss - without.loss, tau * t(2.0, 4.0, 4.0))
    torch.testing.assert_close(with_tau.metrics["mpo/ref_sample_nll"], t(2.0, 4.0, 4.0))
    (g,) = torch.autograd.grad(with_tau.loss.sum(), samples)
    want = torch.where(mask, -tau / mask.sum(1, keepdim=True).double(), 0.0)
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g, want)


def test_tau_term_without_mask_uses_all_samples():
    """No mask ⇒ every sample is valid: (-1, -3) ⇒ mean NLL 2; τ = 1 adds 2."""
    args = (t(-2.0), t(-2.0), t(-2.0), t(-2.0))
    base = mpo_loss(*args, beta=0.1)
    out = mpo_loss(*args, beta=0.1, tau=1.0, ref_sample_logps=t([-1.0, -3.0]))
    torch.testing.assert_close(out.loss - base.loss, t(2.0))


def test_tau_zero_allows_row_without_samples():
    """τ = 0 with an all-padding row: no error, and the reported NLL is 0, not NaN."""
    out = mpo_loss(
        t(-1.0, -2.0),
        t(-2.0, -1.0),
        t(-1.0, -2.0),
        t(-2.0, -1.0),
        tau=0.0,
        ref_sample_logps=t([-1.0, NAN], [NAN, NAN]),
        ref_sample_mask=torch.tensor([[True, False], [False, False]]),
    )
    assert torch.isfinite(out.loss).all()
    torch.testing.assert_close(out.metrics["mpo/ref_sample_nll"], t(1.0, 0.0))


def test_length_normalize_uses_per_token_means():
    """p = σ(pw/nw − pl/nl) and p_ref = σ(rw/nw − rl/nl); the τ term is unchanged by the flag."""
    case = random_case(7, 3, seed=21)
    out = impl(case, beta=0.3, tau=0.5, length_normalize=True)
    nw, nl = case["nw"], case["nl"]
    torch.testing.assert_close(out.metrics["mpo/p"], torch.sigmoid(case["pw"] / nw - case["pl"] / nl))
    torch.testing.assert_close(out.metrics["mpo/p_ref"], torch.sigmoid(case["rw"] / nw - case["rl"] / nl))
    raw = impl(case, beta=0.3, tau=0.5)
    torch.testing.assert_close(out.metrics["mpo/ref_sample_nll"], raw.metrics["mpo/ref_sample_nll"])
    assert not torch.allclose(out.metrics["mpo/p"], raw.metrics["mpo/p"])
    # Same loss as the raw version when counts are all 1.
    ones = torch.ones(7, dtype=torch.long)
    unit = impl(case | {"nw": ones, "nl": ones}, beta=0.3, tau=0.5, length_normalize=True)
    torch.testing.assert_close(unit.loss, raw.loss)


def test_metrics_names_shapes_detached_and_accuracy():
    """Accuracy: p > 1/2 agrees with I > 1/2. Rows: h = 1, I = 1 ⇒ 1; h = 1, I = 0 ⇒ 0;
    h = −1, I = 0.2 ⇒ 1; h = −1, I = 0.9 ⇒ 0."""
    pw = t(0.0, 0.0, -2.0, -2.0, grad=True)
    pl = t(-1.0, -1.0, -1.0, -1.0, grad=True)
    out = mpo_loss(
        pw,
        pl,
        t(0.0, 0.0, 0.0, 0.0),
        t(0.0, 0.0, 0.0, 0.0),
        preference=t(1.0, 0.0, 0.2, 0.9),
        beta=0.1,
        tau=0.1,
        ref_sample_logps=t([-1.0], [-1.0], [-1.0], [-1.0]),
    )
    assert set(out.metrics) == METRICS | {"mpo/ref_sample_nll"}
    for key, value in out.metrics.items():
        assert value.shape == (4,), key
        assert not value.requires_grad and value.grad_fn is None, key
    torch.testing.assert_close(out.metrics["rewards/accuracies"], t(1.0, 0.0, 1.0, 0.0).float())
    assert out.loss.shape == (4,) and out.loss.requires_grad
    no_samples = mpo_loss(pw, pl, t(0.0, 0.0, 0.0, 0.0), t(0.0, 0.0, 0.0, 0.0))
    assert set(no_samples.metrics) == METRICS


# --------------------------------------------------------------------------- bad input


def raises_for(name):
    """A ValueError whose message starts with the argument's name (the documented contract)."""
    return pytest.raises(ValueError, match=rf"^{name}\b")


def pair():
    return t(-1.0, -2.0), t(-2.0, -1.0), t(-1.5, -2.0), t(-2.0, -1.5)


@pytest.mark.parametrize("pref", [[1.2, 0.5], [-0.1, 0.5], [NAN, 1.0], [float("inf"), 1.0]])
def test_bad_preference_values(pref):
    with raises_for("preference"):
        mpo_loss(*pair(), preference=t(*pref))


def test_bad_preference_shape():
    with raises_for("preference"):
        mpo_loss(*pair(), preference=t(1.0, 1.0, 1.0))


@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize("bad", [NAN, float("inf"), float("-inf")])
def test_non_finite_logps(index, bad):
    names = ["policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps"]
    args = list(pair())
    args[index] = args[index].clone()
    args[index][1] = bad
    with raises_for(names[index]):
        mpo_loss(*args)


def test_wrong_logps_shapes():
    pw, pl, rw, rl = pair()
    with raises_for("policy_chosen_logps"):
        mpo_loss(pw[:, None], pl[:, None], rw[:, None], rl[:, None])
    with raises_for("ref_rejected_logps"):
        mpo_loss(pw, pl, rw, t(-1.0, -1.0, -1.0))


def test_tau_needs_ref_samples():
    with raises_for("ref_sample_logps"):
        mpo_loss(*pair(), tau=0.1)


def test_tau_with_empty_row():
    mask = torch.tensor([[True, False], [False, False]])
    with pytest.raises(ValueError, match=r"^(ref_sample_logps|ref_sample_mask)\b"):
        mpo_loss(*pair(), tau=0.1, ref_sample_logps=t([-1.0, NAN], [NAN, NAN]), ref_sample_mask=mask)


@pytest.mark.parametrize("name", ["beta", "tau"])
@pytest.mark.parametrize("value", [-0.1, NAN, float("inf")])
def test_bad_weights(name, value):
    with raises_for(name):
        mpo_loss(*pair(), ref_sample_logps=t([-1.0], [-1.0]), **{name: value})


def test_length_normalize_needs_chosen_tokens():
    with raises_for("chosen_tokens"):
        mpo_loss(*pair(), length_normalize=True)
    with raises_for("chosen_tokens"):
        mpo_loss(*pair(), length_normalize=True, rejected_tokens=torch.tensor([1, 2]))


def test_length_normalize_missing_rejected_tokens_names_rejected_tokens():
    """The contract: the message *starts with* the name of the wrong argument. Here
    chosen_tokens is fine and rejected_tokens is missing."""
    with raises_for("rejected_tokens"):
        mpo_loss(*pair(), length_normalize=True, chosen_tokens=torch.tensor([1, 2]))


@pytest.mark.parametrize("name", ["chosen_tokens", "rejected_tokens"])
@pytest.mark.parametrize("counts", [[0, 2], [3, -1], [1, 2, 3]])
def test_length_normalize_bad_counts(name, counts):
    kwargs = {"chosen_tokens": torch.tensor([1, 2]), "rejected_tokens": torch.tensor([2, 2])}
    kwargs[name] = torch.tensor(counts)
    with raises_for(name):
        mpo_loss(*pair(), length_normalize=True, **kwargs)


@pytest.mark.parametrize(
    "samples",
    [
        t(-1.0, -1.0),  # (B,) instead of (B, K)
        t([-1.0], [-1.0], [-1.0]),  # wrong B
        torch.full((2, 2, 1), -1.0, dtype=torch.float64),  # 3-D
    ],
)
def test_wrong_ref_sample_shape(samples):
    with raises_for("ref_sample_logps"):
        mpo_loss(*pair(), tau=0.1, ref_sample_logps=samples)


def test_nan_in_valid_ref_sample():
    with raises_for("ref_sample_logps"):
        mpo_loss(
            *pair(),
            tau=0.1,
            ref_sample_logps=t([-1.0, NAN], [-1.0, -2.0]),
            ref_sample_mask=torch.tensor([[True, True], [True, True]]),
        )
    with raises_for("ref_sample_logps"):
        mpo_loss(*pair(), tau=0.1, ref_sample_logps=t([-1.0, NAN], [-1.0, -2.0]))


def test_wrong_ref_sample_mask():
    samples = t([-1.0, -2.0], [-1.0, -2.0])
    with raises_for("ref_sample_mask"):
        mpo_loss(*pair(), tau=0.1, ref_sample_logps=samples, ref_sample_mask=torch.ones(2, 3, dtype=torch.bool))
    with raises_for("ref_sample_mask"):
        mpo_loss(*pair(), tau=0.1, ref_sample_logps=samples, ref_sample_mask=torch.ones(2, 2))
