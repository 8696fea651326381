"""MC-PO's kernels (Chen et al. 2025, arXiv 2502.04567, Sec. 3): the paper's {y0} ∪ pool
`sample` kernel, a draw of y0, `rao_blackwell`, `listwise`, the kernel diagnostics in the
metrics, and M > 1 negatives per row (num_negatives).

The hand case throughout: beta = 1 and reference log-probs 0, so the log-probs passed in are the
rewards: r0 = 0, pool (1, -0.5) and a padded slot. K = softmax(0, 1, -0.5)
= (0.231224, 0.628532, 0.140244); pool only: softmax(1, -0.5) = (0.817574, 0.182426).
Per-draw losses -log σ(r0 - r): ln 2 (y0), softplus(1) = 1.313262, softplus(-0.5) = 0.474077.
"""

from __future__ import annotations

import math

import pytest
import torch

import prefpool.losses as losses
from prefpool.losses import (
    AVERAGING_KERNELS,
    CHOSEN_INDEX,
    CHOSEN_SUPPORT_KERNELS,
    MCPO_KERNELS,
    SELECTION_KERNELS,
    kernel_probs,
    mcpo_loss,
    mcpo_select,
)

torch.set_num_threads(1)

LN2 = math.log(2.0)
N = 20000


def hand_case(n=1, dtype=torch.float64):
    """n copies of the hand row; slot 2 padded with NaN (must stay out of everything)."""
    return {
        "policy_chosen": torch.zeros(n, dtype=dtype),
        "policy_cands": torch.tensor([[1.0, -0.5, float("nan")]], dtype=dtype).expand(n, 3).clone(),
        "ref_chosen": torch.zeros(n, dtype=dtype),
        "ref_cands": torch.zeros(n, 3, dtype=dtype),
        "mask": torch.tensor([[True, True, False]]).expand(n, 3).clone(),
    }


def run(case, kernel, *, seed=0, selected=None, leaves=("policy_chosen", "policy_cands")):
    """mcpo_loss (beta = 1) with gradient leaves; backward of the summed loss. Returns
    (output, {name: grad})."""
    tensors = {k: (v.clone().requires_grad_(True) if k in leaves else v) for k, v in case.items()}
    out = mcpo_loss(
        tensors["policy_chosen"],
        tensors["policy_cands"],
        tensors["ref_chosen"],
        tensors["ref_cands"],
        candidate_mask=tensors["mask"],
        beta=1.0,
        kernel=kernel,
        generator=torch.Generator().manual_seed(seed),
        selected=selected,
    )
    out.loss.sum().backward()
    return out, {k: tensors[k].grad for k in leaves}


def grad_rows(grads):
    """(n, 1 + M): d/d policy_chosen, then d/d each pool slot."""
    return torch.cat([grads["policy_chosen"][:, None], grads["policy_cands"]], dim=1)


# ---------------------------------------------------------------------------------------------
# Names and exports
# ---------------------------------------------------------------------------------------------


def test_kernel_names_exported():
    assert SELECTION_KERNELS == ("sample", "sample_pool", "max", "min", "uniform")
    assert AVERAGING_KERNELS == ("listwise", "rao_blackwell")
    assert MCPO_KERNELS == SELECTION_KERNELS + AVERAGING_KERNELS
    assert set(CHOSEN_SUPPORT_KERNELS) == {"sample", "listwise", "rao_blackwell"}
    assert CHOSEN_INDEX == -1
    for name in ("MCPO_KERNELS", "SELECTION_KERNELS", "AVERAGING_KERNELS", "CHOSEN_SUPPORT_KERNELS", "CHOSEN_INDEX"):
        assert name in losses.__all__


@pytest.mark.parametrize("where", ["loss", "kernel_probs"])
def test_expectation_was_renamed(where):
    """The old name fails loudly and says where to go: listwise (same value) or rao_blackwell."""
    case = hand_case()
    with pytest.raises(ValueError, match=r"^kernel\b") as info:
        if where == "loss":
            run(case, "expectation")
        else:
            kernel_probs(case["ref_cands"], case["mask"], "expectation", case["ref_chosen"])
    assert "'listwise'" in str(info.value) and "'rao_blackwell'" in str(info.value)


# ---------------------------------------------------------------------------------------------
# The paper's kernel: draws over {y0} ∪ pool
# ---------------------------------------------------------------------------------------------


def chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's statistic and its upper tail Q(df/2, stat/2), df = categories - 1."""
    expected = probs * counts.sum()
    stat = ((counts - expected) ** 2 / expected).sum()
    df = torch.tensor((len(probs) - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(df, stat / 2))


def test_sample_frequencies_ragged_rows():
    """Three ragged rows, N draws each, with the rows interleaved in one batch. In each row the
    draws over [y0, valid slots] pass a chi-square test against softmax(r0, r_valid) at
    p > 0.001, padded slots are never drawn, and y0 is drawn (a pool-only kernel never would)."""
    r0 = torch.tensor([0.0, 1.0, -0.5], dtype=torch.float64)
    pool = torch.tensor([[1.0, -0.5, 9.0, 0.0], [9.0, 0.5, 9.0, 9.0], [0.2, 0.3, -1.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False, True], [False, True, False, False], [True, True, True, True]])
    rows = torch.arange(3).repeat(N)
    sel = mcpo_select(
        pool[rows],
        torch.zeros(3 * N, 4, dtype=torch.float64),
        policy_chosen_logps=r0[rows],
        ref_chosen_logps=torch.zeros(3 * N, dtype=torch.float64),
        candidate_mask=mask[rows],
        beta=1.0,
        kernel="sample",
        generator=torch.Generator().manual_seed(31),
    )
    for b in range(3):
        counts = torch.bincount(sel[rows == b, 0] - CHOSEN_INDEX, minlength=5).double()
        assert bool((counts[1:][~mask[b]] == 0).all()), f"row {b}: padded slot drawn"
        support = torch.cat([torch.tensor([True]), mask[b]])
        p = torch.softmax(torch.cat([r0[b : b + 1], pool[b][mask[b]]]), 0)
        assert chi2_pvalue(counts[support], p) > 1e-3, (b, counts, p)
        assert counts[0] > 0, f"row {b}: y0 never drawn"
        # Power: the same counts are far from uniform over the support.
        assert chi2_pvalue(counts[support], torch.full_like(p, 1 / len(p))) < 1e-6


def test_chosen_draw_gives_log2_and_zero_gradient():
    """A row whose pick is y0 (selected = -1) has loss exactly ln 2 (as float32) and exactly
    zero gradient to all four inputs; the other row is the ordinary DPO loss against slot 1."""
    case = hand_case(2, dtype=torch.float32)
    case["policy_chosen"] = torch.tensor([3.0, 0.0])  # a row that would otherwise have gradient
    leaves = ("policy_chosen", "policy_cands", "ref_chosen", "ref_cands")
    out, grads = run(case, "sample", selected=torch.tensor([[CHOSEN_INDEX], [1]]), leaves=leaves)
    assert out.loss[0].item() == torch.tensor(LN2, dtype=torch.float32).item()
    for name, grad in grads.items():
        assert bool((grad[0] == 0).all()), name
    torch.testing.assert_close(out.loss[1], torch.tensor(0.4740769841801067))
    assert grads["policy_cands"][1, 1].item() != 0
    m = out.metrics
    assert m["mcpo/selected"].tolist() == [[CHOSEN_INDEX], [1]]
    assert m["mcpo/chosen_drawn"].tolist() == [1.0, 0.0]
    assert m["rewards/rejected"][0].item() == 3.0 and m["rewards/margins"][0].item() == 0.0


def test_drawn_chosen_rows_have_zero_gradient():
    """The same when mcpo_loss draws by itself: every row with mcpo/chosen_drawn = 1 has loss
    ln 2 and zero gradient; the fraction of such rows is K0 = 0.231224 (5 standard errors)."""
    out, grads = run(hand_case(4000, dtype=torch.float32), "sample", seed=17)
    drawn = out.metrics["mcpo/chosen_drawn"].bool()
    assert torch.equal(drawn, out.metrics["mcpo/selected"][:, 0] == CHOSEN_INDEX)
    assert bool((out.loss[drawn] == torch.tensor(LN2, dtype=torch.float32)).all())
    assert bool((grad_rows(grads)[drawn] == 0).all())
    assert bool((grad_rows(grads)[~drawn] != 0).any(dim=1).all())
    k0 = 0.23122389762214907
    assert abs(drawn.double().mean().item() - k0) < 5 * math.sqrt(k0 * (1 - k0) / 4000)


# ---------------------------------------------------------------------------------------------
# rao_blackwell and listwise
# ---------------------------------------------------------------------------------------------


def test_rao_blackwell_by_hand():
    """Σ K_i ℓ_i = 0.231224 ln 2 + 0.628532 * 1.313262 + 0.140244 * 0.474077 = 1.052185.
    Gradient, K held fixed: d/d r_i = K_i σ(r_i - r0): 0.628532 σ(1) = 0.459494,
    0.140244 σ(-0.5) = 0.052948; d/d r0 = -(their sum) = -0.512441; padding 0."""
    out, grads = run(hand_case(), "rao_blackwell")
    torch.testing.assert_close(out.loss, torch.tensor([1.0521854531652215], dtype=torch.float64))
    k1, k2 = 0.6285317192117624, 0.14024438316608848
    g1, g2 = k1 / (1 + math.exp(-1.0)), k2 / (1 + math.exp(0.5))
    assert abs(g1 - 0.459494) < 1e-6 and abs(g2 - 0.052948) < 1e-6
    torch.testing.assert_close(grads["policy_cands"], torch.tensor([[g1, g2, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(grads["policy_chosen"], torch.tensor([-(g1 + g2)], dtype=torch.float64))


def test_listwise_by_hand():
    """-0 + log(e^0 + e^1 + e^-0.5) = log(4.324304) = 1.464369; gradient d/d r_i = K_i
    (0.628532, 0.140244), d/d r0 = K0 - 1 = -0.768776. Not rao_blackwell's value (1.052)."""
    out, grads = run(hand_case(), "listwise")
    torch.testing.assert_close(out.loss, torch.tensor([1.464368784107945], dtype=torch.float64))
    torch.testing.assert_close(
        grads["policy_cands"], torch.tensor([[0.6285317192117624, 0.14024438316608848, 0.0]], dtype=torch.float64)
    )
    torch.testing.assert_close(grads["policy_chosen"], torch.tensor([0.23122389762214907 - 1], dtype=torch.float64))


def test_sample_pool_by_hand_expected_gradient():
    """The pool-only kernel's expected gradient on the candidates is K'_i σ(r_i - r0):
    0.817574 σ(1) = 0.597695 and 0.182426 σ(-0.5) = 0.068873, i.e. rao_blackwell's scaled by
    1 / (1 - K0) = 1.300769, checked here against N draws (5 standard errors)."""
    _, grads = run(hand_case(N), "sample_pool", seed=5)
    g = grad_rows(grads)[:, 1:3]
    mean, se = g.mean(0), g.std(0) / math.sqrt(N)
    expected = torch.tensor([0.5976948344902959, 0.06887305426370377], dtype=torch.float64)
    assert bool(((mean - expected).abs() < 5 * se).all()), (mean, expected)
    rb = torch.tensor([0.4594935052708244, 0.05294795821570841], dtype=torch.float64)
    torch.testing.assert_close(rb / (1 - 0.23122389762214907), expected, atol=1e-12, rtol=0)


def ragged_case(copies):
    """Three different ragged rows (beta = 1, ref = 0), each repeated `copies` times."""
    r0 = torch.tensor([0.0, 0.8, -0.3], dtype=torch.float64)
    pool = torch.tensor([[1.0, -0.5, 7.0, 0.2], [0.1, 7.0, -1.0, 7.0], [0.5, 0.4, -0.2, 1.1]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False, True], [True, False, True, False], [True, True, True, True]])
    rows = torch.arange(3).repeat(copies)
    return {
        "policy_chosen": r0[rows],
        "policy_cands": pool[rows],
        "ref_chosen": torch.zeros(3 * copies, dtype=torch.float64),
        "ref_cands": torch.zeros(3 * copies, 4, dtype=torch.float64),
        "mask": mask[rows],
    }, rows


def test_rao_blackwell_is_the_mean_of_sample():
    """Per row, rao_blackwell's value and gradient equal the mean over N sampled draws of the
    `sample` kernel's value and gradient within 5 standard errors; padding gets no gradient."""
    case, rows = ragged_case(N)
    sampled, sgrads = run(case, "sample", seed=123)
    one, _ = ragged_case(1)
    rb, rbgrads = run(one, "rao_blackwell")
    g_sampled, g_rb = grad_rows(sgrads), grad_rows(rbgrads)
    for b in range(3):
        loss_b = sampled.loss[rows == b]
        assert abs(loss_b.mean() - rb.loss[b]) < 5 * loss_b.std() / math.sqrt(N), b
        g_b = g_sampled[rows == b]
        tol = 5 * g_b.std(0) / math.sqrt(N) + 1e-12
        assert bool(((g_b.mean(0) - g_rb[b]).abs() <= tol).all()), (b, g_b.mean(0), g_rb[b])
    assert bool((rbgrads["policy_cands"][~one["mask"]] == 0).all())


def test_rao_blackwell_has_no_sampling_noise():
    """No draw: the generator's seed does not change value or gradient."""
    case, _ = ragged_case(2)
    a, ga = run(case, "rao_blackwell", seed=1)
    b, gb = run(case, "rao_blackwell", seed=2)
    assert torch.equal(a.loss, b.loss) and torch.equal(grad_rows(ga), grad_rows(gb))


def test_rao_blackwell_gradcheck_float64():
    """float64 finite differences, with the kernel weights K held fixed as rao_blackwell holds
    them: each draw's loss (`sample` with `selected` fixed, y0 included) passes gradcheck in all
    four inputs, and rao_blackwell's gradient is Σ_j K_j times those per-draw gradients.
    A plain gradcheck of rao_blackwell fails, as it must: its gradient is the mean sampled
    gradient, not the derivative of its value (which would also move K)."""
    case, _ = ragged_case(1)
    leaves = tuple(
        case[k].clone().requires_grad_(True) for k in ("policy_chosen", "policy_cands", "ref_chosen", "ref_cands")
    )
    mask = case["mask"]
    draws = [(b, j) for b in range(3) for j in [CHOSEN_INDEX, *mask[b].nonzero().squeeze(1).tolist()]]

    def loss_at(kernel, selected=None):
        return lambda *x: mcpo_loss(*x, candidate_mask=mask, beta=0.7, kernel=kernel, selected=selected).loss

    rb = loss_at("rao_blackwell")(*leaves)
    rb_grads = torch.autograd.grad(rb.sum(), leaves)
    rewards = 0.7 * (case["policy_cands"] - case["ref_cands"])
    k = kernel_probs(rewards, mask, "sample", 0.7 * (case["policy_chosen"] - case["ref_chosen"]))
    total = [torch.zeros_like(x) for x in leaves]
    for b, j in draws:
        selected = torch.zeros(3, 1, dtype=torch.long)
        selected[b, 0] = j
        fn = loss_at("sample", selected)
        assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-8, rtol=1e-6)
        per_draw = torch.autograd.grad(fn(*leaves)[b], leaves)
        for t, g in zip(total, per_draw, strict=True):
            t += k[b, j - CHOSEN_INDEX] * g
    for t, g in zip(total, rb_grads, strict=True):
        torch.testing.assert_close(g, t, atol=1e-12, rtol=1e-12)
    assert not torch.autograd.gradcheck(
        loss_at("rao_blackwell"), leaves, eps=1e-6, atol=1e-8, rtol=1e-6, raise_exception=False
    )


@pytest.mark.parametrize("kernel", AVERAGING_KERNELS + ("sample",))
def test_bf16_inputs_upcast(kernel):
    """bf16 log-probs: the loss is computed (and returned) in float32 from the bf16 values, and
    agrees with the float64 computation on those same values; gradients come back in bf16."""
    case, _ = ragged_case(3)
    bf = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in case.items()}
    exact = {k: (v.double() if v.is_floating_point() else v) for k, v in bf.items()}
    out, grads = run(bf, kernel, seed=4)
    # The same picks for the float64 run (a float32-vs-float64 rounding must not move a draw).
    picks = out.metrics["mcpo/selected"] if kernel == "sample" else None
    ref, ref_grads = run(exact, kernel, selected=picks)
    assert out.loss.dtype == torch.float32 and grads["policy_cands"].dtype == torch.bfloat16
    assert torch.equal(out.metrics["mcpo/selected"], ref.metrics["mcpo/selected"])
    torch.testing.assert_close(out.loss.double(), ref.loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grad_rows(grads).double(), grad_rows(ref_grads), atol=1e-6, rtol=2.0**-8)


# ---------------------------------------------------------------------------------------------
# Diagnostics
# ---------------------------------------------------------------------------------------------

# Two rows: the hand row, and a row where r0 and three valid candidates all have reward 0.
# Row 0 (n = 2 valid, pool std = |1 - -0.5| / 2 = 0.75):
#   sample: K = (0.231224, 0.628532, 0.140244), H = 0.905959, KL = ln 3 - H = 0.192653.
#   sample_pool: K = (0.817574, 0.182426), H = 0.475052, KL = ln 2 - H = 0.218096.
#   uniform: (0.5, 0.5): H = ln 2, KL 0, top 0.5.  max: point mass: H = 0, KL = ln 2, top 1.
# Row 1 (n = 3, std 0): sample is uniform over 4 answers (KL 0, top 0.25, K0 0.25); the
#   pool-only kernels: uniform over 3 (KL 0, top 1/3) except max (KL ln 3, top 1).
DIAGNOSTICS = {
    "sample": {
        "entropy": [0.9059592564792267, math.log(4)],
        "kl": [0.19265303218888308, 0.0],
        "top": [0.6285317192117624, 0.25],
        "k0": [0.23122389762214907, 0.25],
    },
    "listwise": {
        "entropy": [0.9059592564792267, math.log(4)],
        "kl": [0.19265303218888308, 0.0],
        "top": [0.6285317192117624, 0.25],
        "k0": [0.23122389762214907, 0.25],
    },
    "rao_blackwell": {
        "entropy": [0.9059592564792267, math.log(4)],
        "kl": [0.19265303218888308, 0.0],
        "top": [0.6285317192117624, 0.25],
        "k0": [0.23122389762214907, 0.25],
    },
    "sample_pool": {
        "entropy": [0.47505156369228696, math.log(3)],
        "kl": [0.21809561686765833, 0.0],
        "top": [0.8175744761936437, 1 / 3],
        "k0": [0.0, 0.0],
    },
    "uniform": {"entropy": [LN2, math.log(3)], "kl": [0.0, 0.0], "top": [0.5, 1 / 3], "k0": [0.0, 0.0]},
    "max": {"entropy": [0.0, 0.0], "kl": [LN2, math.log(3)], "top": [1.0, 1.0], "k0": [0.0, 0.0]},
}


@pytest.mark.parametrize("kernel", list(DIAGNOSTICS))
def test_diagnostics_by_hand(kernel):
    case = {
        "policy_chosen": torch.zeros(2, dtype=torch.float64),
        "policy_cands": torch.tensor([[1.0, -0.5, float("nan"), 5.0], [0.0, 0.0, 0.0, 5.0]], dtype=torch.float64),
        "ref_chosen": torch.zeros(2, dtype=torch.float64),
        "ref_cands": torch.zeros(2, 4, dtype=torch.float64),
        "mask": torch.tensor([[True, True, False, False], [True, True, True, False]]),
    }
    out, _ = run(case, kernel, seed=3)
    m, want = out.metrics, DIAGNOSTICS[kernel]
    for key, name in (
        ("mcpo/entropy", "entropy"),
        ("mcpo/kernel_kl_uniform", "kl"),
        ("mcpo/kernel_top_prob", "top"),
        ("mcpo/kernel_chosen_prob", "k0"),
    ):
        torch.testing.assert_close(
            m[key], torch.tensor(want[name], dtype=torch.float64), atol=1e-12, rtol=1e-12, msg=key
        )
    torch.testing.assert_close(m["mcpo/pool_reward_std"], torch.tensor([0.75, 0.0], dtype=torch.float64))
    for key in (
        "mcpo/entropy",
        "mcpo/kernel_kl_uniform",
        "mcpo/kernel_top_prob",
        "mcpo/kernel_chosen_prob",
        "mcpo/pool_reward_std",
    ):
        assert m[key].shape == (2,) and not m[key].requires_grad, key


def test_pool_reward_std_scales_with_beta():
    """β times the (population) std of the valid log-ratios: log-ratios (2, -1, 0) have std
    sqrt(14/9) = 1.247219; with β = 0.5 the metric is 0.623610, for every kernel."""
    policy = torch.tensor([[-8.0, -11.0, -10.0, 50.0]])
    ref = torch.full((1, 4), -10.0)
    mask = torch.tensor([[True, True, True, False]])
    for kernel in MCPO_KERNELS:
        out = mcpo_loss(
            torch.tensor([-9.0]),
            policy,
            torch.tensor([-9.5]),
            ref,
            candidate_mask=mask,
            beta=0.5,
            kernel=kernel,
            generator=torch.Generator().manual_seed(0),
        )
        torch.testing.assert_close(
            out.metrics["mcpo/pool_reward_std"], torch.tensor([0.5 * math.sqrt(14 / 9)]), msg=kernel
        )
