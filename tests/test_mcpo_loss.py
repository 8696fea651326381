"""MC-PO (Chen et al. 2025, arXiv 2502.04567): `mcpo_loss` and `mcpo_select`.

1. Against a plain float64 reference written here (Python loops, `math`), loss and gradients,
   over odd shapes, ragged masks, float32 and bfloat16; float64 `gradcheck`.
2. Hand-computed values (arithmetic in the docstrings).
3. Invariants: M = 1 is DPO for the pool-only kernels and listwise, max/min pick by implicit
   reward, padding is inert, seeding.
4. Statistics with fixed seeds: pool-only sample-kernel frequencies and mean gradients, the
   listwise kernel as the mean (linear) contrastive-divergence gradient.
5. Metrics. 6. Bad input -> ValueError naming the argument.

The paper's {y0} ∪ pool kernel (`sample`), `rao_blackwell` and the kernel diagnostics have
their own statistical and hand-value tests in test_mcpo_kernels.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from prefpool.losses import (
    AVERAGING_KERNELS,
    CHOSEN_INDEX,
    CHOSEN_SUPPORT_KERNELS,
    MCPO_KERNELS,
    SELECTION_KERNELS,
    dpo_loss,
    kernel_probs,
    mcpo_loss,
    mcpo_select,
)

torch.set_num_threads(1)

# The kernels that never draw y0: a rejected answer from the pool, DPO-style.
POOL_KERNELS = tuple(k for k in SELECTION_KERNELS if k not in CHOSEN_SUPPORT_KERNELS)

# ---------------------------------------------------------------------------------------------
# Plain reference: Python floats (float64), one row at a time, gradients written out by hand.
# ---------------------------------------------------------------------------------------------


def ref_softplus(x: float) -> float:
    """log(1 + e^x) without overflow."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def ref_sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def ref_logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def ref_rewards(policy_chosen, policy_cands, ref_chosen, ref_cands, mask, beta):
    """One row: r0 and the pool's rewards, None on padded slots (their values are never read)."""
    r0 = beta * (policy_chosen - ref_chosen)
    pool = []
    for p, r, valid in zip(policy_cands, ref_cands, mask, strict=True):
        pool.append(beta * (p - r) if valid else None)
    return r0, pool


def ref_kernel_probs(r0: float, pool: list, kernel: str) -> list[float]:
    """One row's kernel distribution over [y0, slot 0, .., slot M-1] (0 on padding).

    sample / listwise / rao_blackwell: softmax over {y0} ∪ valid; the others: pool only, y0 0.
    """
    valid = [i for i, r in enumerate(pool) if r is not None]
    if kernel in ("sample", "listwise", "rao_blackwell"):
        z = ref_logsumexp([r0] + [pool[i] for i in valid])
        return [math.exp(r0 - z)] + [math.exp(pool[i] - z) if i in valid else 0.0 for i in range(len(pool))]
    probs = [0.0] * len(pool)
    if kernel == "sample_pool":
        z = ref_logsumexp([pool[i] for i in valid])
        for i in valid:
            probs[i] = math.exp(pool[i] - z)
    elif kernel == "uniform":
        for i in valid:
            probs[i] = 1.0 / len(valid)
    elif kernel == "max":
        best = valid[0]
        for i in valid:
            if pool[i] > pool[best]:  # strict: first index on ties
                best = i
        probs[best] = 1.0
    elif kernel == "min":
        best = valid[0]
        for i in valid:
            if pool[i] < pool[best]:
                best = i
        probs[best] = 1.0
    else:
        raise AssertionError(kernel)
    return [0.0] + probs


def ref_entropy(probs: list[float]) -> float:
    return -sum(p * math.log(p) for p in probs if p > 0)


def ref_selection_loss(r0: float, pool: list, j: int, beta: float):
    """-log σ(r0 - r_j) and its gradient w.r.t. policy_chosen and each policy candidate.

    d/dm softplus(-m) = -σ(-m); dm/d policy_chosen = beta, dm/d policy_cand[j] = -beta.
    j = -1 is a draw of y0 itself: -log σ(0) = log 2, a constant, so every gradient is 0.
    """
    if j == -1:
        return math.log(2.0), 0.0, [0.0] * len(pool)
    m = r0 - pool[j]
    loss = ref_softplus(-m)
    grad_chosen = -beta * ref_sigmoid(-m)
    grad_cands = [0.0] * len(pool)
    grad_cands[j] = beta * ref_sigmoid(-m)
    return loss, grad_chosen, grad_cands


def ref_listwise_loss(r0: float, pool: list, beta: float):
    """-r0 + logsumexp({r0} ∪ valid) and its gradient; also the softmax weights (y0 first).

    d/d policy_chosen = beta * (w0 - 1); d/d policy_cand[i] = beta * w_i on valid slots.
    """
    valid = [i for i, r in enumerate(pool) if r is not None]
    z = ref_logsumexp([r0] + [pool[i] for i in valid])
    loss = z - r0
    w0 = math.exp(r0 - z)
    weights = [0.0] * len(pool)
    for i in valid:
        weights[i] = math.exp(pool[i] - z)
    grad_chosen = beta * (w0 - 1.0)
    grad_cands = [beta * w for w in weights]
    return loss, grad_chosen, grad_cands, w0, weights


def ref_rao_blackwell_loss(r0: float, pool: list, beta: float):
    """Σ_{j ∈ {y0} ∪ valid} K_j (-log σ(r0 - r_j)), K = softmax over {y0} ∪ valid held fixed,
    and its gradient: Σ_j K_j times each draw's gradient (ref_selection_loss; y0's is 0)."""
    probs = ref_kernel_probs(r0, pool, "rao_blackwell")
    loss, grad_chosen, grad_cands = 0.0, 0.0, [0.0] * len(pool)
    for j, k in zip(range(-1, len(pool)), probs, strict=True):
        if k == 0.0:
            continue
        lj, gcj, gpj = ref_selection_loss(r0, pool, j, beta)
        loss += k * lj
        grad_chosen += k * gcj
        grad_cands = [g + k * gj for g, gj in zip(grad_cands, gpj, strict=True)]
    return loss, grad_chosen, grad_cands


def ref_case_rows(case, beta):
    """Reference rewards for every row of a case, from the inputs exactly as stored (bf16 incl.)."""
    pc = case["policy_chosen"].double().tolist()
    pcand = case["policy_cands"].double().tolist()
    rc = case["ref_chosen"].double().tolist()
    rcand = case["ref_cands"].double().tolist()
    mask = case["mask"].tolist()
    return [ref_rewards(pc[b], pcand[b], rc[b], rcand[b], mask[b], beta) for b in range(len(pc))]


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def make_case(batch, pool, dtype=torch.float32, seed=0, pad="garbage"):
    """Random sequence log-probs, a ragged mask, padded slots filled with `pad`.

    Rewards are beta * N(0, 3^2) around log-probs in [-60, -5]. Row 0 keeps exactly one valid
    candidate when M > 1. "garbage" padding holds rewards of +-2000 / beta: if the mask leaked,
    `max` (even rows) or `min` (odd rows) and `sample` would pick it and the loss would be huge.
    """
    gen = torch.Generator().manual_seed(seed)
    ref_chosen = -torch.empty(batch).uniform_(5, 60, generator=gen)
    policy_chosen = ref_chosen + 3 * torch.randn(batch, generator=gen)
    ref_cands = -torch.empty(batch, pool).uniform_(5, 60, generator=gen)
    policy_cands = ref_cands + 3 * torch.randn(batch, pool, generator=gen)
    mask = torch.rand(batch, pool, generator=gen) < 0.6
    keep = torch.randint(0, pool, (batch,), generator=gen)
    if pool > 1:
        mask[0] = False
    mask[torch.arange(batch), keep] = True
    if pad == "garbage":
        sign = torch.where(torch.arange(batch) % 2 == 0, 1.0, -1.0)[:, None].expand(batch, pool)
        policy_cands = torch.where(mask, policy_cands, 1000.0 * sign)
        ref_cands = torch.where(mask, ref_cands, -1000.0 * sign)
    elif pad == "nan":
        policy_cands = policy_cands.masked_fill(~mask, float("nan"))
        ref_cands = ref_cands.masked_fill(~mask, float("nan"))
    elif pad == "zero":
        policy_cands = policy_cands.masked_fill(~mask, 0.0)
        ref_cands = ref_cands.masked_fill(~mask, 0.0)
    return {
        "policy_chosen": policy_chosen.to(dtype),
        "policy_cands": policy_cands.to(dtype),
        "ref_chosen": ref_chosen.to(dtype),
        "ref_cands": ref_cands.to(dtype),
        "mask": mask,
    }


def run_mcpo(case, *, kernel, beta, seed=0, upstream=None, mask=True):
    """mcpo_loss with gradient leaves on the two policy tensors; backward of sum(upstream * loss)."""
    policy_chosen = case["policy_chosen"].clone().requires_grad_(True)
    policy_cands = case["policy_cands"].clone().requires_grad_(True)
    out = mcpo_loss(
        policy_chosen,
        policy_cands,
        case["ref_chosen"],
        case["ref_cands"],
        candidate_mask=case["mask"] if mask else None,
        beta=beta,
        kernel=kernel,
        generator=torch.Generator().manual_seed(seed),
    )
    if upstream is None:
        upstream = torch.ones_like(out.loss)
    (out.loss * upstream).sum().backward()
    return out, policy_chosen.grad, policy_cands.grad


def one_row_pool():
    """A single row, 5 slots, slot 2 padded with values that would dominate if it leaked.

    beta = 0.5, r0 = 0.5 * (-20 - -21) = 0.5, policy - ref = [2, -1, pad, 0, -3], so the valid
    rewards are r = [1.0, -0.5, -, 0.0, -1.5] and softmax(r) ≈ [0.598, 0.133, 0, 0.220, 0.049].
    """
    ref_cands = torch.tensor([[-30.0, -30.0, -1e4, -30.0, -30.0]])
    return {
        "policy_chosen": torch.tensor([-20.0]),
        "ref_chosen": torch.tensor([-21.0]),
        "policy_cands": ref_cands + torch.tensor([[2.0, -1.0, 2e4, 0.0, -3.0]]),
        "ref_cands": ref_cands,
        "mask": torch.tensor([[True, True, False, True, True]]),
    }


def repeat_case(case, n):
    return {k: v.expand(n, *v.shape[1:]).contiguous() for k, v in case.items()}


# ---------------------------------------------------------------------------------------------
# 1. Against the reference
# ---------------------------------------------------------------------------------------------

# float32: the implementation works in float32 on float32 inputs; the only differences from the
# float64 reference are float32 roundings of O(60) log-probs (~4e-6 absolute before beta).
# bfloat16: inputs are rounded to bf16 by make_case, and the reference sees those same rounded
# values, so the loss (computed in float32 after upcasting) still agrees to float32 accuracy.
# Gradients come back in bf16: 8 significant bits, round-to-nearest error <= 2^-9 relative;
# we allow 2^-8 relative.
TOLERANCES = {
    torch.float32: {"loss": (1e-5, 1e-5), "grad": (1e-5, 1e-5)},
    torch.bfloat16: {"loss": (1e-5, 1e-5), "grad": (1e-7, 2.0**-8)},
}


def assert_close_ref(actual: torch.Tensor, expected: list, atol: float, rtol: float, what: str):
    expected_t = torch.tensor(expected, dtype=torch.float64)
    actual_t = actual.detach().double()
    assert actual_t.shape == expected_t.shape, what
    err = (actual_t - expected_t).abs()
    bound = atol + rtol * expected_t.abs()
    assert bool((err <= bound).all()), f"{what}: max err {err.max():.3g}\n{actual_t}\n{expected_t}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("pool", [1, 2, 7])
@pytest.mark.parametrize("batch", [1, 3, 5])
@pytest.mark.parametrize("kernel", MCPO_KERNELS)
def test_matches_reference(kernel, batch, pool, dtype):
    beta = 0.3
    case = make_case(batch, pool, dtype=dtype, seed=100 * batch + pool)
    upstream = torch.linspace(0.5, 2.0, batch)  # distinct per-row weights catch row mix-ups
    out, grad_chosen, grad_cands = run_mcpo(case, kernel=kernel, beta=beta, seed=7, upstream=upstream)
    assert out.loss.dtype == torch.float32 and out.loss.shape == (batch,)
    assert grad_chosen.dtype == dtype and grad_cands.dtype == dtype

    rows = ref_case_rows(case, beta)
    selected = out.metrics["mcpo/selected"][:, 0].tolist()
    loss_ref, gc_ref, gp_ref, entropy_ref = [], [], [], []
    for b, (r0, pool_r) in enumerate(rows):
        w = float(upstream[b])
        probs = ref_kernel_probs(r0, pool_r, kernel)
        entropy_ref.append(ref_entropy(probs))
        if kernel == "listwise":
            loss, gc, gp, _, _ = ref_listwise_loss(r0, pool_r, beta)
        elif kernel == "rao_blackwell":
            loss, gc, gp = ref_rao_blackwell_loss(r0, pool_r, beta)
        else:
            j = selected[b]
            if j == CHOSEN_INDEX:
                assert kernel == "sample", f"row {b}: {kernel} drew y0"
            else:
                assert case["mask"][b, j], f"row {b}: picked padded slot {j}"
            if kernel in ("max", "min"):
                # The picked reward is the extreme one (up to float32-vs-float64 near-ties).
                best = (
                    max(r for r in pool_r if r is not None)
                    if kernel == "max"
                    else min(r for r in pool_r if r is not None)
                )
                assert abs(pool_r[j] - best) < 1e-5, (b, j, pool_r)
            loss, gc, gp = ref_selection_loss(r0, pool_r, j, beta)
        loss_ref.append(loss)
        gc_ref.append(w * gc)
        gp_ref.append([w * g for g in gp])

    tol = TOLERANCES[dtype]
    assert_close_ref(out.loss, loss_ref, *tol["loss"], "loss")
    assert_close_ref(grad_chosen, gc_ref, *tol["grad"], "grad policy_chosen_logps")
    assert_close_ref(grad_cands, gp_ref, *tol["grad"], "grad policy_candidate_logps")
    assert bool((grad_cands[~case["mask"]] == 0).all()), "padded slots got gradient"
    assert_close_ref(out.metrics["mcpo/entropy"], entropy_ref, 1e-5, 1e-5, "mcpo/entropy")
    assert_close_ref(out.metrics["rewards/chosen"], [r0 for r0, _ in rows], 1e-5, 1e-5, "rewards/chosen")


@pytest.mark.parametrize("kernel", MCPO_KERNELS)
def test_kernel_probs_match_reference(kernel):
    """`kernel_probs` on given rewards equals the reference distribution (float64 in, out),
    laid out (B, 1 + M) with y0 in column 0 (0 for the pool-only kernels)."""
    case = make_case(5, 7, seed=3)
    rows = ref_case_rows(case, 0.3)
    rewards = torch.tensor([[0.0 if r is None else r for r in pool] for _, pool in rows], dtype=torch.float64)
    chosen = torch.tensor([r0 for r0, _ in rows], dtype=torch.float64)
    probs = kernel_probs(rewards, case["mask"], kernel, chosen)
    expected = [ref_kernel_probs(r0, pool, kernel) for r0, pool in rows]
    assert probs.shape == (5, 8)
    assert_close_ref(probs, expected, 1e-12, 1e-12, f"kernel_probs[{kernel}]")


@pytest.mark.parametrize("kernel", CHOSEN_SUPPORT_KERNELS)
def test_kernel_probs_needs_chosen_rewards(kernel):
    with pytest.raises(ValueError, match=r"^chosen_rewards\b"):
        kernel_probs(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), kernel)


def _gradcheck_inputs():
    gen = torch.Generator().manual_seed(11)
    batch, pool = 3, 4
    ref_chosen = -torch.empty(batch, dtype=torch.float64).uniform_(5, 30, generator=gen)
    ref_cands = -torch.empty(batch, pool, dtype=torch.float64).uniform_(5, 30, generator=gen)
    mask = torch.tensor([[True, False, True, True], [False, True, False, False], [True, True, True, True]])
    # Finite padding: gradcheck perturbs padded slots too, and NaN - NaN would not read as 0.
    policy_cands = torch.where(
        mask, ref_cands + 2 * torch.randn(batch, pool, generator=gen, dtype=torch.float64), 500.0
    )
    policy_chosen = ref_chosen + 2 * torch.randn(batch, generator=gen, dtype=torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in (policy_chosen, policy_cands, ref_chosen, ref_cands)]
    return leaves, mask


@pytest.mark.parametrize("kernel", [k for k in MCPO_KERNELS if k != "rao_blackwell"])
def test_gradcheck_float64(kernel):
    """Finite differences in float64 w.r.t. all four log-prob tensors.

    Random kernels re-seed their generator inside the function, so every evaluation draws the
    same negatives (the +-1e-6 perturbations are far too small to move a draw here).
    rao_blackwell's gradient is by design not the derivative of its value (the kernel weights
    are detached); test_mcpo_kernels.py checks it against per-draw gradcheck-ed gradients.
    """
    leaves, mask = _gradcheck_inputs()

    def fn(pc, pcand, rc, rcand):
        gen = torch.Generator().manual_seed(1234)
        return mcpo_loss(pc, pcand, rc, rcand, candidate_mask=mask, beta=0.7, kernel=kernel, generator=gen).loss

    assert torch.autograd.gradcheck(fn, tuple(leaves), eps=1e-6, atol=1e-7, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# 2. Hand-computed values
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", MCPO_KERNELS)
def test_policy_equals_reference(kernel):
    """policy == reference ⇒ every reward is 0.

    Selection kernels: -log σ(0 - 0) = ln 2 = 0.693147... (a draw of y0 gives ln 2 as well),
    and rao_blackwell averages ln 2 terms: ln 2.
    Listwise with n valid candidates: -0 + log((n + 1) e^0) = ln(n + 1):
    rows with n = 1, 2, 4 give ln 2 = 0.693147, ln 3 = 1.098612, ln 5 = 1.609438.
    sample_pool entropy is that of the uniform distribution over the n valid: ln 1, ln 2, ln 4;
    sample's (over {y0} ∪ pool) that of uniform over n + 1: ln 2, ln 3, ln 5.
    """
    logps = torch.tensor([-12.0, -7.5, -40.0])
    cands = torch.tensor([[-3.0, -9.0, -1.0, -2.0], [-3.0, -9.0, -1.0, -2.0], [-3.0, -9.0, -1.0, -2.0]])
    mask = torch.tensor([[False, True, False, False], [True, False, False, True], [True, True, True, True]])
    out = mcpo_loss(
        logps,
        cands,
        logps.clone(),
        cands.clone(),
        candidate_mask=mask,
        beta=0.1,
        kernel=kernel,
        generator=torch.Generator().manual_seed(0),
    )
    if kernel == "listwise":
        expected = torch.tensor([0.6931471805599453, 1.0986122886681098, 1.6094379124341003])
    else:
        expected = torch.full((3,), 0.6931471805599453)
    torch.testing.assert_close(out.loss, expected, atol=1e-6, rtol=0)
    if kernel == "sample_pool":
        torch.testing.assert_close(out.metrics["mcpo/entropy"], torch.tensor([0.0, math.log(2), math.log(4)]))
    if kernel == "sample":
        torch.testing.assert_close(out.metrics["mcpo/entropy"], torch.tensor([math.log(2), math.log(3), math.log(5)]))


def two_candidate_case():
    """beta = 0.5; r0 = 0.5 * (-10 - -12) = 1.0;
    r1 = 0.5 * (-11 - -12) = 0.5;  r2 = 0.5 * (-14 - -13) = -0.5."""
    return (
        torch.tensor([-10.0]),
        torch.tensor([[-11.0, -14.0]]),
        torch.tensor([-12.0]),
        torch.tensor([[-12.0, -13.0]]),
    )


@pytest.mark.parametrize(
    ("kernel", "loss", "grad_chosen", "grad_cands", "selected"),
    [
        # max picks y1 (r = 0.5): loss = -log σ(1.0 - 0.5) = log(1 + e^-0.5) = 0.474077;
        # σ(-0.5) = 0.377541, d/d policy_chosen = -0.5 * 0.377541 = -0.188770 = -d/d cand1.
        ("max", 0.4740769841801067, -0.18877033, [0.18877033, 0.0], 0),
        # min picks y2 (r = -0.5): loss = log(1 + e^-1.5) = 0.201413; σ(-1.5) = 0.182426,
        # d/d policy_chosen = -0.5 * 0.182426 = -0.091213 = -d/d cand2.
        ("min", 0.2014132779827524, -0.09121276, [0.0, 0.09121276], 1),
        # listwise: -1 + log(e^1 + e^0.5 + e^-0.5) = log(1 + e^-0.5 + e^-1.5)
        #   = log(1 + 0.606531 + 0.223130) = log(1.829661) = 0.604131.
        # weights softmax(1, 0.5, -0.5) = (0.546549, 0.331499, 0.121952):
        # d/d policy_chosen = 0.5 * (0.546549 - 1) = -0.226725; d/d cand = 0.5 * w.
        ("listwise", 0.6041306053367284, -0.22672531, [0.16574948, 0.06097583], 0),
        # rao_blackwell: the same weights K on the three draws' losses (ln 2, 0.474077, 0.201413):
        # 0.546549 * 0.693147 + 0.331499 * 0.474077 + 0.121952 * 0.201413 = 0.560558.
        # d/d cand_i = 0.5 K_i σ(r_i - r0): 0.5 * 0.331499 * 0.377541 = 0.062577,
        # 0.5 * 0.121952 * 0.182426 = 0.011124; d/d policy_chosen = -(sum) = -0.073701.
        ("rao_blackwell", 0.5605578762841275, -0.07370072, [0.06257717, 0.01112355], 0),
    ],
)
def test_two_candidates_by_hand(kernel, loss, grad_chosen, grad_cands, selected):
    pc, pcand, rc, rcand = two_candidate_case()
    pc.requires_grad_(True)
    pcand.requires_grad_(True)
    out = mcpo_loss(pc, pcand, rc, rcand, beta=0.5, kernel=kernel)
    out.loss.sum().backward()
    torch.testing.assert_close(out.loss, torch.tensor([loss]), atol=1e-6, rtol=0)
    torch.testing.assert_close(pc.grad, torch.tensor([grad_chosen]), atol=1e-6, rtol=0)
    torch.testing.assert_close(pcand.grad, torch.tensor([grad_cands]), atol=1e-6, rtol=0)
    assert out.metrics["mcpo/selected"].tolist() == [[selected]]
    assert out.metrics["rewards/chosen"].tolist() == [1.0]


def test_two_candidates_sample_pool_kernel_by_hand():
    """sample_pool: P(y1) = e^0.5 / (e^0.5 + e^-0.5) = 1 / (1 + e^-1) = 0.731059, P(y2) = 0.268941;
    entropy = -(0.731059 ln 0.731059 + 0.268941 ln 0.268941) = 0.582203 nats.
    Per draw the loss is 0.474077 (y1) or 0.201413 (y2), never anything else."""
    pc, pcand, rc, rcand = two_candidate_case()
    n = 4000
    out = mcpo_loss(
        pc.expand(n),
        pcand.expand(n, 2),
        rc.expand(n),
        rcand.expand(n, 2),
        beta=0.5,
        kernel="sample_pool",
        generator=torch.Generator().manual_seed(5),
    )
    sel = out.metrics["mcpo/selected"][:, 0]
    assert bool((sel >= 0).all()), "sample_pool drew y0"
    expected = torch.where(sel == 0, 0.4740769841801067, 0.2014132779827524)
    torch.testing.assert_close(out.loss, expected.float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.metrics["mcpo/entropy"], torch.full((n,), 0.5822031088882179))
    freq = (sel == 0).double().mean().item()
    p = 0.7310585786300049
    assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_two_candidates_sample_kernel_by_hand():
    """sample (the paper's kernel, over {y0} ∪ pool): P(y0, y1, y2) = softmax(1, 0.5, -0.5)
    = (0.546549, 0.331499, 0.121952); entropy 0.952808 nats. Per draw the loss is ln 2
    (y0, mcpo/selected = -1, mcpo/chosen_drawn = 1), 0.474077 (y1) or 0.201413 (y2)."""
    pc, pcand, rc, rcand = two_candidate_case()
    n = 4000
    out = mcpo_loss(
        pc.expand(n),
        pcand.expand(n, 2),
        rc.expand(n),
        rcand.expand(n, 2),
        beta=0.5,
        kernel="sample",
        generator=torch.Generator().manual_seed(5),
    )
    sel = out.metrics["mcpo/selected"][:, 0]
    expected = torch.tensor([0.6931471805599453, 0.4740769841801067, 0.2014132779827524])[sel + 1]
    torch.testing.assert_close(out.loss, expected, atol=1e-6, rtol=0)
    assert torch.equal(out.metrics["mcpo/chosen_drawn"], (sel == CHOSEN_INDEX).float())
    torch.testing.assert_close(out.metrics["mcpo/entropy"], torch.full((n,), 0.9528075640133673))
    for j, p in zip((-1, 0, 1), (0.5465493872661797, 0.33149896042409155, 0.12195165230972888), strict=True):
        freq = (sel == j).double().mean().item()
        assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / n), (j, freq, p)


def test_listwise_metrics_by_hand():
    """listwise: mcpo/selected and rewards/rejected report the highest-reward candidate
    (y1, r = 0.5, margin 0.5); mcpo/kernel_chosen_prob = e^1 / (e^1 + e^0.5 + e^-0.5) = 0.546549;
    entropy of (0.546549, 0.331499, 0.121952) = 0.952808 nats (computed below)."""
    out = mcpo_loss(*two_candidate_case(), beta=0.5, kernel="listwise")
    w = [0.5465493872661796, 0.3314989604240915, 0.12195165230972885]
    m = out.metrics
    assert m["mcpo/selected"].tolist() == [[0]]
    torch.testing.assert_close(m["rewards/rejected"], torch.tensor([0.5]))
    torch.testing.assert_close(m["rewards/margins"], torch.tensor([0.5]))
    torch.testing.assert_close(m["mcpo/kernel_chosen_prob"], torch.tensor([w[0]]))
    torch.testing.assert_close(m["mcpo/entropy"], torch.tensor([ref_entropy(w)]))


# ---------------------------------------------------------------------------------------------
# 3. Invariants
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_mask", [False, True], ids=["no_mask", "all_true_mask"])
@pytest.mark.parametrize("kernel", POOL_KERNELS + ("listwise",))
def test_one_candidate_is_dpo(kernel, use_mask):
    """M = 1: every pool-only kernel must pick the only candidate, and the listwise form
    -r0 + log(e^r0 + e^r1) = log(1 + e^(r1 - r0)) = -log σ(r0 - r1) is DPO as well.
    (sample and rao_blackwell are not: see test_one_candidate_chosen_support_kernels.)"""
    case = make_case(5, 1, seed=21)
    beta = 0.25
    out, gc, gp = run_mcpo(case, kernel=kernel, beta=beta, mask=use_mask)

    dpc = case["policy_chosen"].clone().requires_grad_(True)
    dpr = case["policy_cands"][:, 0].clone().requires_grad_(True)
    dpo = dpo_loss(dpc, dpr, case["ref_chosen"], case["ref_cands"][:, 0], beta=beta)
    dpo.loss.sum().backward()
    torch.testing.assert_close(out.loss, dpo.loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(gc, dpc.grad, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(gp[:, 0], dpr.grad, atol=1e-6, rtol=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        torch.testing.assert_close(out.metrics[key], dpo.metrics[key], atol=1e-6, rtol=1e-6)


def test_one_candidate_chosen_support_kernels():
    """M = 1 with y0 in the support: K = (σ(m), σ(-m)) over (y0, y1), m = r0 - r1.
    sample: each row is DPO's -log σ(m) (y1 drawn) or ln 2 (y0 drawn), and with 5 rows x 400
    copies both happen. rao_blackwell: σ(m) ln 2 + σ(-m) (-log σ(m)), which is not DPO."""
    case = {k: v.repeat(400, *([1] * (v.dim() - 1))) for k, v in make_case(5, 1, seed=21).items()}
    beta = 0.25
    dpo = dpo_loss(
        case["policy_chosen"], case["policy_cands"][:, 0], case["ref_chosen"], case["ref_cands"][:, 0], beta=beta
    ).loss
    out, _, _ = run_mcpo(case, kernel="sample", beta=beta, seed=8)
    drawn = out.metrics["mcpo/chosen_drawn"].bool()
    assert bool(drawn.any()) and not bool(drawn.all())
    torch.testing.assert_close(out.loss, torch.where(drawn, math.log(2), dpo), atol=1e-6, rtol=0)

    rb, _, _ = run_mcpo(case, kernel="rao_blackwell", beta=beta)
    m = out.metrics["rewards/chosen"] - beta * (case["policy_cands"][:, 0] - case["ref_cands"][:, 0])
    expected = torch.sigmoid(m) * math.log(2) + torch.sigmoid(-m) * dpo
    torch.testing.assert_close(rb.loss, expected, atol=1e-6, rtol=1e-6)
    assert bool(((rb.loss - dpo).abs() > 1e-3).all())


@pytest.mark.parametrize("kernel", ["max", "min"])
def test_max_min_pick_by_implicit_reward_not_policy_logp(kernel):
    """beta = 0.1; chosen logps are 0 (irrelevant here). Rewards / beta = policy - ref:
    row 0: policy [-5, -20, -12], ref [-1, -30, -12] -> [-4, 10, 0]. The policy's most likely
           candidate is slot 0 (-5) but the highest *reward* is slot 1; the least likely is
           slot 1 (-20) but the lowest reward is slot 0. max -> 1, min -> 0.
    row 1: [-6, 3, (pad +2e6), 3, (pad -2e6)]: a max tie at 1 and 3 (first wins). max -> 1, min -> 0.
    row 2: [1, -2, -2, (pad -2e6), 5]: a min tie at 1 and 2 (first wins). max -> 4, min -> 1."""
    big = 1e6
    policy = torch.tensor(
        [[-5.0, -20.0, -12.0, -9.0, -9.0], [-8.0, -3.0, big, -3.0, -big], [-9.0, -4.0, -4.0, -big, -5.0]]
    )
    ref = torch.tensor(
        [[-1.0, -30.0, -12.0, -9.0, -9.0], [-2.0, -6.0, -big, -6.0, big], [-10.0, -2.0, -2.0, big, -10.0]]
    )
    mask = torch.tensor(
        [[True, True, True, False, False], [True, True, False, True, False], [True, True, True, False, True]]
    )
    out = mcpo_loss(torch.zeros(3), policy, torch.zeros(3), ref, candidate_mask=mask, beta=0.1, kernel=kernel)
    expected = [1, 1, 4] if kernel == "max" else [0, 0, 1]
    assert out.metrics["mcpo/selected"][:, 0].tolist() == expected
    sel = mcpo_select(policy, ref, candidate_mask=mask, beta=0.1, kernel=kernel)
    assert sel[:, 0].tolist() == expected
    # The contrast the docstring warns about: the policy's own argmax/argmin differ.
    assert policy[0, :3].argmax().item() == 0 and policy[0, :3].argmin().item() == 1


@pytest.mark.parametrize("kernel", MCPO_KERNELS)
@pytest.mark.parametrize("pad_value", [1e30, -1e30, float("inf"), float("nan")])
def test_padding_is_inert(kernel, pad_value):
    """Padded slots holding huge, infinite or NaN values are never picked, and the loss,
    gradients and metrics are exactly those with zeros in the padding (same seed)."""
    n = 512  # repeat 4 ragged rows: with a leak, sample/uniform would hit padding many times
    base = make_case(4, 6, seed=31, pad="zero")
    base = {k: v.repeat(n // 4, *([1] * (v.dim() - 1))) for k, v in base.items()}
    dirty = dict(base)
    dirty["policy_cands"] = base["policy_cands"].masked_fill(~base["mask"], pad_value)
    dirty["ref_cands"] = base["ref_cands"].masked_fill(~base["mask"], -pad_value)
    out0, gc0, gp0 = run_mcpo(base, kernel=kernel, beta=0.5, seed=9)
    out1, gc1, gp1 = run_mcpo(dirty, kernel=kernel, beta=0.5, seed=9)
    sel = out1.metrics["mcpo/selected"]
    in_pool = sel != CHOSEN_INDEX  # sample may draw y0 itself
    assert bool(base["mask"].gather(1, sel.clamp(min=0))[in_pool].all()), "a padded slot was picked"
    assert bool(torch.isfinite(out1.loss).all())
    assert bool(torch.isfinite(gc1).all()) and bool(torch.isfinite(gp1).all())
    assert bool((gp1[~base["mask"]] == 0).all())
    torch.testing.assert_close(out1.loss, out0.loss, atol=0, rtol=0)
    torch.testing.assert_close(gc1, gc0, atol=0, rtol=0)
    torch.testing.assert_close(gp1, gp0, atol=0, rtol=0)
    for key, value in out0.metrics.items():
        torch.testing.assert_close(out1.metrics[key], value, atol=0, rtol=0, msg=key)


@pytest.mark.parametrize("kernel", ["sample", "sample_pool", "uniform"])
def test_seeding(kernel):
    """Same seed ⇒ same picks; another seed ⇒ different picks. With 64 rows of 7 candidates
    of near-equal reward, two independent draws agree on a row with probability
    Σ p_i^2 ≈ 1/7, so on all 64 rows with probability about 7^-64."""
    case = make_case(64, 7, seed=41, pad="zero")
    case["mask"] = torch.ones(64, 7, dtype=torch.bool)
    args = (case["policy_chosen"], case["policy_cands"], case["ref_chosen"], case["ref_cands"])

    def picks(seed):
        return mcpo_loss(*args, beta=0.05, kernel=kernel, generator=torch.Generator().manual_seed(seed)).metrics[
            "mcpo/selected"
        ]

    assert torch.equal(picks(123), picks(123))
    assert not torch.equal(picks(123), picks(124))


@pytest.mark.parametrize("kernel", SELECTION_KERNELS)
def test_select_agrees_with_loss(kernel):
    """Same seed, same picks; and `mcpo_loss(selected=...)` with those picks reproduces the
    one-call loss exactly (two-pass training), y0 draws (-1) included."""
    case = make_case(9, 7, seed=51)
    args = (case["policy_chosen"], case["policy_cands"], case["ref_chosen"], case["ref_cands"])
    out = mcpo_loss(
        *args, candidate_mask=case["mask"], beta=0.3, kernel=kernel, generator=torch.Generator().manual_seed(77)
    )
    sel = mcpo_select(
        case["policy_cands"],
        case["ref_cands"],
        candidate_mask=case["mask"],
        policy_chosen_logps=case["policy_chosen"],
        ref_chosen_logps=case["ref_chosen"],
        beta=0.3,
        kernel=kernel,
        generator=torch.Generator().manual_seed(77),
    )
    assert sel.dtype == torch.long and sel.shape == (9, 1)
    assert torch.equal(sel, out.metrics["mcpo/selected"])
    again = mcpo_loss(*args, candidate_mask=case["mask"], beta=0.3, kernel=kernel, selected=sel)
    assert torch.equal(again.loss, out.loss)
    for key, value in out.metrics.items():
        assert torch.equal(again.metrics[key], value), key


@pytest.mark.parametrize("kernel", POOL_KERNELS)
def test_select_pool_kernels_need_no_chosen(kernel):
    """Pool-only kernels ignore y0: the picks are the same with or without the chosen log-probs."""
    case = make_case(9, 7, seed=52)
    common = {"candidate_mask": case["mask"], "beta": 0.3, "kernel": kernel}
    without = mcpo_select(case["policy_cands"], case["ref_cands"], **common, generator=torch.Generator().manual_seed(5))
    with_chosen = mcpo_select(
        case["policy_cands"],
        case["ref_cands"],
        **common,
        policy_chosen_logps=case["policy_chosen"],
        ref_chosen_logps=case["ref_chosen"],
        generator=torch.Generator().manual_seed(5),
    )
    assert torch.equal(without, with_chosen)
    assert bool((without >= 0).all())


@pytest.mark.parametrize("kernel", AVERAGING_KERNELS + ("expectation",))
def test_select_rejects_averaging_kernels(kernel):
    case = make_case(2, 3)
    with pytest.raises(ValueError, match=r"^kernel") as info:
        mcpo_select(
            case["policy_cands"],
            case["ref_cands"],
            candidate_mask=case["mask"],
            policy_chosen_logps=case["policy_chosen"],
            ref_chosen_logps=case["ref_chosen"],
            kernel=kernel,
        )
    if kernel == "expectation":
        assert "listwise" in str(info.value) and "rao_blackwell" in str(info.value)


# ---------------------------------------------------------------------------------------------
# 4. Statistics (fixed seeds, N = 20000 draws as one batch)
# ---------------------------------------------------------------------------------------------

N_DRAWS = 20000
# Upper 0.001 quantile of chi-square with 3 degrees of freedom (4 valid candidates - 1):
# chi2.ppf(0.999, df=3) = 16.266. Checked in test_chi2_critical_value.
CHI2_CRIT_DF3_P001 = 16.266


# The same with 4 degrees of freedom (y0 and the 4 valid candidates - 1): 18.467.
CHI2_CRIT_DF4_P001 = 18.467


@pytest.mark.parametrize(("df", "crit"), [(3, CHI2_CRIT_DF3_P001), (4, CHI2_CRIT_DF4_P001)])
def test_chi2_critical_value(df, crit):
    """The hard-coded critical values: P(chi2_df > crit) = Q(df/2, crit/2) ≈ 0.001."""
    sf = torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), torch.tensor(crit / 2, dtype=torch.float64))
    assert abs(sf.item() - 0.001) < 1e-5


def chi2(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def draw_counts(kernel, seed):
    """Counts over [y0, slot 0, .., slot 4] of N draws from one_row_pool's row."""
    case = repeat_case(one_row_pool(), N_DRAWS)
    sel = mcpo_select(
        case["policy_cands"],
        case["ref_cands"],
        candidate_mask=case["mask"],
        policy_chosen_logps=case["policy_chosen"],
        ref_chosen_logps=case["ref_chosen"],
        beta=0.5,
        kernel=kernel,
        generator=torch.Generator().manual_seed(seed),
    )
    return torch.bincount(sel[:, 0] - CHOSEN_INDEX, minlength=6).double()


def test_sample_pool_kernel_frequencies_are_softmax():
    counts = draw_counts("sample_pool", seed=2024)
    assert counts[0] == 0, "y0 drawn by a pool-only kernel"
    assert counts[3] == 0, "padded slot drawn"
    valid = torch.tensor([1, 2, 4, 5])
    counts = counts[valid]
    p = torch.softmax(torch.tensor([1.0, -0.5, 0.0, -1.5], dtype=torch.float64), 0)
    assert chi2(counts, p) < CHI2_CRIT_DF3_P001
    freq = counts / N_DRAWS
    sigma = (p * (1 - p) / N_DRAWS).sqrt()
    assert bool(((freq - p).abs() < 5 * sigma).all()), (freq, p)
    # Power: the same counts are nowhere near uniform (statistic in the thousands).
    assert chi2(counts, torch.full((4,), 0.25, dtype=torch.float64)) > 10 * CHI2_CRIT_DF3_P001


def test_sample_kernel_frequencies_are_softmax_over_chosen_and_pool():
    """The paper's kernel: y0 (r0 = 0.5) and the valid slots (1, -0.5, 0, -1.5) are drawn with
    probability softmax(0.5, 1, -0.5, 0, -1.5) ≈ (0.266, 0.439, 0.098, 0.161, 0.036); the
    padded slot never."""
    counts = draw_counts("sample", seed=2024)
    assert counts[3] == 0, "padded slot drawn"
    counts = counts[torch.tensor([0, 1, 2, 4, 5])]
    p = torch.softmax(torch.tensor([0.5, 1.0, -0.5, 0.0, -1.5], dtype=torch.float64), 0)
    assert chi2(counts, p) < CHI2_CRIT_DF4_P001
    freq = counts / N_DRAWS
    sigma = (p * (1 - p) / N_DRAWS).sqrt()
    assert bool(((freq - p).abs() < 5 * sigma).all()), (freq, p)
    # Power: the pool-only softmax (y0 never drawn, the rest rescaled by 1 / (1 - K0)).
    p_pool = torch.cat([torch.zeros(1, dtype=torch.float64), p[1:] / p[1:].sum()])
    assert bool(((freq - p_pool).abs() > 5 * sigma).any())


@pytest.mark.parametrize("kernel", ["sample", "sample_pool", "uniform"])
def test_one_negative_is_one_multinomial_draw(kernel):
    """At num_negatives = 1 the picks are exactly one `torch.multinomial(probs, 1)` call on the
    kernel's distribution ({y0} ∪ pool for sample, y0 first and reported as -1; the pool alone
    otherwise), so a seed gives the same draws as the single-negative loss always made."""
    case = make_case(64, 7, seed=12)
    rewards = 0.3 * (case["policy_cands"] - case["ref_cands"])
    r0 = 0.3 * (case["policy_chosen"] - case["ref_chosen"])
    if kernel == "sample":
        logits = torch.cat([r0[:, None], rewards.masked_fill(~case["mask"], float("-inf"))], dim=-1)
        old = torch.multinomial(torch.softmax(logits, -1), 1, generator=torch.Generator().manual_seed(3)) - 1
    else:
        probs = torch.softmax(rewards.masked_fill(~case["mask"], float("-inf")), dim=-1)
        if kernel == "uniform":
            probs = case["mask"].double() / case["mask"].sum(-1, keepdim=True)
        old = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(3))
    common = {"candidate_mask": case["mask"], "beta": 0.3, "kernel": kernel}
    chosen = {"policy_chosen_logps": case["policy_chosen"], "ref_chosen_logps": case["ref_chosen"]}
    new = mcpo_select(
        case["policy_cands"], case["ref_cands"], **common, **chosen, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(new, old)
    args = (case["policy_chosen"], case["policy_cands"], case["ref_chosen"], case["ref_cands"])
    out = mcpo_loss(*args, **common, num_negatives=1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out.metrics["mcpo/selected"], old)


def test_uniform_kernel_frequencies_are_uniform():
    counts = draw_counts("uniform", seed=2025)
    assert counts[0] == 0, "y0 drawn by a pool-only kernel"
    assert counts[3] == 0, "padded slot drawn"
    counts = counts[torch.tensor([1, 2, 4, 5])]
    assert chi2(counts, torch.full((4,), 0.25, dtype=torch.float64)) < CHI2_CRIT_DF3_P001
    sigma = math.sqrt(0.25 * 0.75 / N_DRAWS)
    assert bool(((counts / N_DRAWS - 0.25).abs() < 5 * sigma).all())


def per_row_grads(case, kernel, seed):
    out, gc, gp = run_mcpo(case, kernel=kernel, beta=0.5, seed=seed)
    return torch.cat([gc[:, None], gp], dim=1).double()  # (N, 1 + M): chosen, then the pool


def mixture_of_dpo_grads(weights: list[float]) -> torch.Tensor:
    """Σ_j weights_j ∇[-log σ(r0 - r_j)] (weights fixed numbers over [y0, slot 0, ..]; a y0
    draw's gradient is 0), from the reference."""
    case = one_row_pool()
    ((r0, pool),) = ref_case_rows(case, 0.5)
    total = torch.zeros(1 + len(pool), dtype=torch.float64)
    for j, w in zip(range(-1, len(pool)), weights, strict=True):
        if w:
            _, gc, gp = ref_selection_loss(r0, pool, j, 0.5)
            total += w * torch.tensor([gc] + gp, dtype=torch.float64)
    return total


def test_sample_pool_kernel_mean_gradient():
    """E_{j ~ softmax(r)}[∇ -log σ(r0 - r_j)] = Σ_j softmax(r)_j ∇ dpo_j (weights detached:
    no gradient through the choice). The batch mean of N per-draw gradients must agree within
    5 standard errors (per-draw std / sqrt(N)) in every coordinate."""
    grads = per_row_grads(repeat_case(one_row_pool(), N_DRAWS), "sample_pool", seed=99)
    mean, std = grads.mean(0), grads.std(0)
    tol = 5 * std / math.sqrt(N_DRAWS) + 1e-7
    case = one_row_pool()
    ((r0, pool),) = ref_case_rows(case, 0.5)
    softmax_w = ref_kernel_probs(r0, pool, "sample_pool")
    expected = mixture_of_dpo_grads(softmax_w)
    assert bool(((mean - expected).abs() <= tol).all()), (mean, expected, tol)
    assert grads[:, 3].eq(0).all(), "padded slot got gradient"  # column 3 = pool slot 2
    # Power: the uniform-weighted mixture is far outside the tolerance.
    uniform = mixture_of_dpo_grads(ref_kernel_probs(r0, pool, "uniform"))
    assert bool(((mean - uniform).abs() > tol).any())


def test_sample_kernel_mean_gradient():
    """The paper's kernel: the mean per-draw gradient is Σ_{j ∈ {y0} ∪ valid} K_j ∇ dpo_j with
    K = softmax(r0, r) and y0's term 0, i.e. (1 - K0) times sample_pool's. Within 5 standard
    errors; and sample_pool's mean (the 1 / (1 - K0) reweighting) is detectably different."""
    grads = per_row_grads(repeat_case(one_row_pool(), N_DRAWS), "sample", seed=98)
    mean, std = grads.mean(0), grads.std(0)
    tol = 5 * std / math.sqrt(N_DRAWS) + 1e-7
    ((r0, pool),) = ref_case_rows(one_row_pool(), 0.5)
    expected = mixture_of_dpo_grads(ref_kernel_probs(r0, pool, "sample"))
    assert bool(((mean - expected).abs() <= tol).all()), (mean, expected, tol)
    assert grads[:, 3].eq(0).all(), "padded slot got gradient"
    pool_only = mixture_of_dpo_grads(ref_kernel_probs(r0, pool, "sample_pool"))
    assert bool(((mean - pool_only).abs() > tol).any())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_listwise_gradient_is_softmax_weighted(dtype):
    """∇ loss = -∇r0 + Σ_{i ∈ {0} ∪ valid} softmax(r)_i ∇r_i, with ∇r = beta on its own log-prob:
    d/d policy_chosen = beta (w0 - 1), d/d policy_cand[i] = beta w_i, 0 on padding."""
    case = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in one_row_pool().items()}
    _, gc, gp = run_mcpo(case, kernel="listwise", beta=0.5)
    r = torch.tensor([0.5, 1.0, -0.5, 0.0, -1.5], dtype=torch.float64)  # y0, then valid slots
    w = torch.softmax(r, 0)
    expected_gp = torch.zeros(5, dtype=torch.float64)
    expected_gp[torch.tensor([0, 1, 3, 4])] = 0.5 * w[1:]
    torch.testing.assert_close(gc.double(), 0.5 * (w[:1] - 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(gp.double(), expected_gp[None], atol=1e-6, rtol=0)


def test_listwise_gradient_is_mean_cd_gradient():
    """Draw j from softmax over {y0} ∪ valid (with the pool-only mcpo_select on a pool that has
    y0 prepended); the linear contrastive-divergence gradient of a draw is ∇(r_j - r0), zero when
    j = 0. Its mean over N draws equals the listwise kernel's gradient within 5 standard errors."""
    one = one_row_pool()
    _, gc, gp = run_mcpo(one, kernel="listwise", beta=0.5)
    exact = torch.cat([gc, gp[0]]).double()

    case = repeat_case(one, N_DRAWS)
    aug_policy = torch.cat([case["policy_chosen"][:, None], case["policy_cands"]], 1)
    aug_ref = torch.cat([case["ref_chosen"][:, None], case["ref_cands"]], 1)
    aug_mask = torch.cat([torch.ones(N_DRAWS, 1, dtype=torch.bool), case["mask"]], 1)
    j = mcpo_select(
        aug_policy,
        aug_ref,
        candidate_mask=aug_mask,
        beta=0.5,
        kernel="sample_pool",
        generator=torch.Generator().manual_seed(4242),
    )
    j = j[:, 0]
    assert bool((j == 0).any()), "y0 should be drawn sometimes (weight ≈ 0.27)"
    leaf = aug_policy.double().clone().requires_grad_(True)
    rewards = 0.5 * (leaf - aug_ref.double())
    cd = rewards.gather(1, j[:, None]).squeeze(1) - rewards[:, 0]
    cd.sum().backward()
    grads = leaf.grad  # (N, 1 + M): chosen, then the pool
    mean, std = grads.mean(0), grads.std(0)
    tol = 5 * std / math.sqrt(N_DRAWS) + 1e-7
    assert bool(((mean - exact).abs() <= tol).all()), (mean, exact, tol)
    # Power: leaving y0 out of the softmax (weights over the valid pool only) is detectably wrong.
    w_pool = torch.softmax(torch.tensor([1.0, -0.5, 0.0, -1.5], dtype=torch.float64), 0)
    wrong = torch.tensor(
        [-0.5, 0.5 * w_pool[0], 0.5 * w_pool[1], 0.0, 0.5 * w_pool[2], 0.5 * w_pool[3]], dtype=torch.float64
    )
    assert bool(((mean - wrong).abs() > tol).any())


def test_listwise_gradient_is_mean_cd_gradient_of_sample_draws():
    """The same with the paper's kernel itself: mcpo_select(kernel="sample") returns -1 for a
    draw of y0, whose linear CD gradient ∇(r0 - r0) is 0."""
    one = one_row_pool()
    _, gc, gp = run_mcpo(one, kernel="listwise", beta=0.5)
    exact = torch.cat([gc, gp[0]]).double()
    case = repeat_case(one, N_DRAWS)
    j = mcpo_select(
        case["policy_cands"],
        case["ref_cands"],
        candidate_mask=case["mask"],
        policy_chosen_logps=case["policy_chosen"],
        ref_chosen_logps=case["ref_chosen"],
        beta=0.5,
        kernel="sample",
        generator=torch.Generator().manual_seed(4243),
    )
    j = j[:, 0]
    assert bool((j == CHOSEN_INDEX).any())
    chosen = case["policy_chosen"].double().clone().requires_grad_(True)
    cands = case["policy_cands"].double().clone().requires_grad_(True)
    r0 = 0.5 * (chosen - case["ref_chosen"].double())
    r = 0.5 * (cands - case["ref_cands"].double())
    drawn = torch.where(j == CHOSEN_INDEX, r0, r.gather(1, j.clamp(min=0)[:, None]).squeeze(1))
    (drawn - r0).sum().backward()
    grads = torch.cat([chosen.grad[:, None], cands.grad], 1)
    mean, std = grads.mean(0), grads.std(0)
    tol = 5 * std / math.sqrt(N_DRAWS) + 1e-7
    assert bool(((mean - exact).abs() <= tol).all()), (mean, exact, tol)


# ---------------------------------------------------------------------------------------------
# 5. Metrics
# ---------------------------------------------------------------------------------------------

METRIC_KEYS = {
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "mcpo/selected",
    "mcpo/chosen_drawn",
    "mcpo/distinct_negatives",
    "mcpo/pool_accuracy",
    "mcpo/num_candidates",
    "mcpo/entropy",
    "mcpo/kernel_kl_uniform",
    "mcpo/kernel_top_prob",
    "mcpo/kernel_chosen_prob",
    "mcpo/pool_reward_std",
}


def ref_pool_std(pool: list) -> float:
    """Population standard deviation (divisor n) of a row's valid rewards."""
    valid = [r for r in pool if r is not None]
    mean = sum(valid) / len(valid)
    return math.sqrt(sum((r - mean) ** 2 for r in valid) / len(valid))


@pytest.mark.parametrize("kernel", MCPO_KERNELS)
def test_metrics_shapes_detached_and_consistent(kernel):
    case = make_case(5, 7, seed=61)
    out, _, _ = run_mcpo(case, kernel=kernel, beta=0.3, seed=3)
    m = out.metrics
    assert set(m) == METRIC_KEYS
    for key, value in m.items():
        assert value.shape == ((5, 1) if key == "mcpo/selected" else (5,)), key
        assert value.grad_fn is None and not value.requires_grad, key
    assert m["mcpo/selected"].dtype == torch.long
    assert torch.equal(m["mcpo/num_candidates"], case["mask"].sum(1))

    rows = ref_case_rows(case, 0.3)
    sel = m["mcpo/selected"][:, 0].tolist()
    # A draw of y0 (sample only) reports y0's own reward as the rejected one: margin 0.
    rejected = [r0 if j == CHOSEN_INDEX else pool[j] for (r0, pool), j in zip(rows, sel, strict=True)]
    assert_close_ref(m["rewards/rejected"], rejected, 1e-5, 1e-5, "rewards/rejected")
    assert torch.equal(m["mcpo/chosen_drawn"], (m["mcpo/selected"][:, 0] == CHOSEN_INDEX).float())
    if kernel != "sample":
        assert bool((m["mcpo/chosen_drawn"] == 0).all())
    torch.testing.assert_close(m["rewards/margins"], m["rewards/chosen"] - m["rewards/rejected"])
    assert torch.equal(m["rewards/accuracies"], (m["rewards/margins"] > 0).float())

    entropy = m["mcpo/entropy"]
    n_valid = case["mask"].sum(1).double()
    if kernel in ("max", "min"):
        assert bool((entropy == 0).all())
    elif kernel == "uniform":
        torch.testing.assert_close(entropy.double(), n_valid.log(), atol=1e-6, rtol=0)
    elif kernel in ("sample", "sample_pool"):
        expected = [ref_entropy(ref_kernel_probs(r0, pool, kernel)) for r0, pool in rows]
        assert_close_ref(entropy, expected, 1e-5, 1e-5, f"{kernel} entropy")
    if kernel == "listwise":
        w0 = [ref_listwise_loss(r0, pool, 0.3)[3] for r0, pool in rows]
        assert_close_ref(m["mcpo/kernel_chosen_prob"], w0, 1e-6, 1e-5, "mcpo/kernel_chosen_prob")

    # Diagnostics against the reference: the support has n + 1 answers when it includes y0.
    probs = [ref_kernel_probs(r0, pool, kernel) for r0, pool in rows]
    support = n_valid + (1 if kernel in CHOSEN_SUPPORT_KERNELS else 0)
    kl = [math.log(n) - ref_entropy(p) for n, p in zip(support.tolist(), probs, strict=True)]
    assert_close_ref(entropy, [ref_entropy(p) for p in probs], 1e-5, 1e-5, "mcpo/entropy")
    assert_close_ref(m["mcpo/kernel_kl_uniform"], kl, 1e-5, 1e-5, "mcpo/kernel_kl_uniform")
    assert_close_ref(m["mcpo/kernel_top_prob"], [max(p) for p in probs], 1e-6, 1e-5, "top prob")
    assert_close_ref(m["mcpo/kernel_chosen_prob"], [p[0] for p in probs], 1e-6, 1e-5, "K0")
    assert_close_ref(
        m["mcpo/pool_reward_std"], [ref_pool_std(pool) for _, pool in rows], 1e-5, 1e-5, "mcpo/pool_reward_std"
    )


@pytest.mark.parametrize("kernel", MCPO_KERNELS)
def test_pool_accuracy_by_hand(kernel):
    """beta = 1, ref = -10 everywhere, so each reward is policy + 10.
    row 0: r0 = 1.0 vs [0.5, -0.5]           -> above all -> 1
    row 1: r0 = 0.0 vs [0.5, (pad 90)]       -> below 0.5 -> 0
    row 2: r0 = 0.2 vs [0.1, (pad 90)]       -> padding ignored -> 1
    row 3: r0 = 0.5 vs [0.5, -3.0]           -> a tie is not "above" -> 0"""
    r0 = torch.tensor([1.0, 0.0, 0.2, 0.5])
    r = torch.tensor([[0.5, -0.5], [0.5, 90.0], [0.1, 90.0], [0.5, -3.0]])
    mask = torch.tensor([[True, True], [True, False], [True, False], [True, True]])
    out = mcpo_loss(
        r0 - 10,
        r - 10,
        torch.full((4,), -10.0),
        torch.full((4, 2), -10.0),
        candidate_mask=mask,
        beta=1.0,
        kernel=kernel,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.metrics["mcpo/pool_accuracy"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert out.metrics["mcpo/num_candidates"].tolist() == [2, 1, 1, 2]


# ---------------------------------------------------------------------------------------------
# 6. Bad input
# ---------------------------------------------------------------------------------------------


def good_args():
    return {
        "policy_chosen_logps": torch.tensor([-5.0, -6.0]),
        "policy_candidate_logps": torch.tensor([[-4.0, -7.0, -9.0], [-5.0, -5.5, -8.0]]),
        "ref_chosen_logps": torch.tensor([-5.5, -6.5]),
        "ref_candidate_logps": torch.tensor([[-4.5, -7.5, -9.5], [-5.5, -6.0, -8.5]]),
        "candidate_mask": torch.tensor([[True, True, False], [True, False, True]]),
    }


def _nan_at(name, index, value=float("nan")):
    def edit(args):
        args[name] = args[name].clone()
        args[name][index] = value

    return edit


def _set(name, value):
    def edit(args):
        args[name] = value() if callable(value) else value

    return edit


BAD_INPUTS = [
    ("pool_batch_mismatch", _set("policy_candidate_logps", torch.zeros(3, 3)), {}, "policy_candidate_logps"),
    ("ref_pool_batch_mismatch", _set("ref_candidate_logps", torch.zeros(3, 3)), {}, "ref_candidate_logps"),
    ("ref_chosen_batch_mismatch", _set("ref_chosen_logps", torch.zeros(3)), {}, "ref_chosen_logps"),
    # policy pool (2, 3), mask (2, 3), ref pool (2, 4): the ref pool is the odd one out.
    ("ref_pool_size_mismatch", _set("ref_candidate_logps", torch.zeros(2, 4)), {}, "ref_candidate_logps"),
    ("mask_shape", _set("candidate_mask", torch.ones(2, 4, dtype=torch.bool)), {}, "candidate_mask"),
    ("nan_valid_policy_candidate", _nan_at("policy_candidate_logps", (1, 2)), {}, "policy_candidate_logps"),
    ("inf_valid_ref_candidate", _nan_at("ref_candidate_logps", (0, 1), float("inf")), {}, "ref_candidate_logps"),
    ("nan_policy_chosen", _nan_at("policy_chosen_logps", 1), {}, "policy_chosen_logps"),
    ("neg_inf_ref_chosen", _nan_at("ref_chosen_logps", 0, float("-inf")), {}, "ref_chosen_logps"),
    (
        "row_without_candidates",
        _set("candidate_mask", torch.tensor([[True, False, False], [False, False, False]])),
        {},
        "candidate_mask",
    ),
    (
        "empty_pool",
        lambda a: a.update(
            policy_candidate_logps=torch.zeros(2, 0), ref_candidate_logps=torch.zeros(2, 0), candidate_mask=None
        ),
        {},
        "policy_candidate_logps",
    ),
    ("beta_zero", None, {"beta": 0.0}, "beta"),
    ("beta_negative", None, {"beta": -0.1}, "beta"),
    ("beta_nan", None, {"beta": float("nan")}, "beta"),
    ("beta_inf", None, {"beta": float("inf")}, "beta"),
    ("unknown_kernel", None, {"kernel": "softmax"}, "kernel"),
    ("renamed_kernel", None, {"kernel": "expectation"}, "kernel"),
    ("int_mask", _set("candidate_mask", torch.ones(2, 3, dtype=torch.long)), {}, "candidate_mask"),
    ("float_mask", _set("candidate_mask", torch.ones(2, 3)), {}, "candidate_mask"),
]


@pytest.mark.parametrize("kernel", MCPO_KERNELS)
@pytest.mark.parametrize(("edit", "kwargs", "name"), [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_loss(edit, kwargs, name, kernel):
    args = good_args()
    if edit is not None:
        edit(args)
    kwargs = {"kernel": kernel, **kwargs}
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        mcpo_loss(
            args.pop("policy_chosen_logps"),
            args.pop("policy_candidate_logps"),
            args.pop("ref_chosen_logps"),
            args.pop("ref_candidate_logps"),
            **args,
            **kwargs,
        )


# In mcpo_select a policy pool with a different B from the mask is (rightly) a candidate_mask
# shape error, so that case is loss-only.
SELECT_BAD = [b for b in BAD_INPUTS if b[0] != "pool_batch_mismatch"]


@pytest.mark.parametrize("kernel", SELECTION_KERNELS)
@pytest.mark.parametrize(("edit", "kwargs", "name"), [b[1:] for b in SELECT_BAD], ids=[b[0] for b in SELECT_BAD])
def test_bad_input_select(edit, kwargs, name, kernel):
    args = good_args()
    if edit is not None:
        edit(args)
    kwargs = {"kernel": kernel, **kwargs}
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        mcpo_select(
            args["policy_candidate_logps"],
            args["ref_candidate_logps"],
            policy_chosen_logps=args["policy_chosen_logps"],
            ref_chosen_logps=args["ref_chosen_logps"],
            candidate_mask=args["candidate_mask"],
            **kwargs,
        )


@pytest.mark.parametrize("missing", ["policy_chosen_logps", "ref_chosen_logps"])
@pytest.mark.parametrize("kernel", SELECTION_KERNELS)
def test_select_chosen_logps_required_or_paired(kernel, missing):
    """sample needs r0 (both chosen tensors); a pool-only kernel takes both or neither."""
    args = good_args()
    kwargs = {k: args[k] for k in ("policy_chosen_logps", "ref_chosen_logps") if k != missing}
    with pytest.raises(ValueError, match=rf"^{missing}\b"):
        mcpo_select(
            args["policy_candidate_logps"],
            args["ref_candidate_logps"],
            candidate_mask=args["candidate_mask"],
            kernel=kernel,
            **kwargs,
        )
    if kernel == "sample":
        with pytest.raises(ValueError, match=r"^policy_chosen_logps\b.*sample_pool"):
            mcpo_select(
                args["policy_candidate_logps"],
                args["ref_candidate_logps"],
                candidate_mask=args["candidate_mask"],
                kernel=kernel,
            )


@pytest.mark.parametrize("fn", ["loss", "select"])
def test_unknown_kernel_lists_valid_names(fn):
    args = good_args()
    with pytest.raises(ValueError, match=r"^kernel\b") as info:
        if fn == "loss":
            mcpo_loss(
                args.pop("policy_chosen_logps"),
                args.pop("policy_candidate_logps"),
                args.pop("ref_chosen_logps"),
                args.pop("ref_candidate_logps"),
                **args,
                kernel="softmax",
            )
        else:
            mcpo_select(args["policy_candidate_logps"], args["ref_candidate_logps"], kernel="softmax")
    for name in MCPO_KERNELS if fn == "loss" else SELECTION_KERNELS:
        assert name in str(info.value), (name, str(info.value))


@pytest.mark.parametrize("kernel", MCPO_KERNELS)
def test_row_without_candidates_names_the_row(kernel):
    args = good_args()
    args["candidate_mask"] = torch.tensor([[True, False, False], [False, False, False]])
    with pytest.raises(ValueError, match=r"^candidate_mask: row 1 has no valid candidate"):
        mcpo_loss(
            args.pop("policy_chosen_logps"),
            args.pop("policy_candidate_logps"),
            args.pop("ref_chosen_logps"),
            args.pop("ref_candidate_logps"),
            **args,
            kernel=kernel,
        )


BAD_SELECTED = [
    # (id, kernel, selected for good_args' mask [[T, T, F], [T, F, T]])
    ("minus_one_pool_kernel", "sample_pool", [CHOSEN_INDEX, 0]),
    ("minus_one_max", "max", [0, CHOSEN_INDEX]),
    ("below_minus_one", "sample", [-2, 0]),
    ("past_the_pool", "sample", [0, 3]),
    ("padded_slot", "sample", [CHOSEN_INDEX, 1]),
    ("padded_slot_pool_kernel", "uniform", [2, 0]),
    ("wrong_shape", "sample", [0, 0, 0]),
    ("averaging_kernel", "listwise", [0, 0]),
    ("averaging_kernel_rb", "rao_blackwell", [CHOSEN_INDEX, 0]),
]


@pytest.mark.parametrize(("kernel", "selected"), [b[1:] for b in BAD_SELECTED], ids=[b[0] for b in BAD_SELECTED])
def test_bad_selected(kernel, selected):
    args = good_args()
    with pytest.raises(ValueError, match=r"^selected\b"):
        mcpo_loss(
            args.pop("policy_chosen_logps"),
            args.pop("policy_candidate_logps"),
            args.pop("ref_chosen_logps"),
            args.pop("ref_candidate_logps"),
            **args,
            kernel=kernel,
            selected=torch.tensor(selected)[:, None],
        )


def test_bad_selected_dtype():
    args = good_args()
    with pytest.raises(ValueError, match=r"^selected\b"):
        mcpo_loss(
            args.pop("policy_chosen_logps"),
            args.pop("policy_candidate_logps"),
            args.pop("ref_chosen_logps"),
            args.pop("ref_candidate_logps"),
            **args,
            selected=torch.tensor([0.0, 0.0]),
        )


def test_nan_in_padding_is_not_an_error():
    """The finiteness check is limited to valid slots (padding may hold anything)."""
    args = good_args()
    args["policy_candidate_logps"][0, 2] = float("nan")
    args["ref_candidate_logps"][1, 1] = float("inf")
    out = mcpo_loss(
        args.pop("policy_chosen_logps"),
        args.pop("policy_candidate_logps"),
        args.pop("ref_chosen_logps"),
        args.pop("ref_candidate_logps"),
        **args,
    )
    assert bool(torch.isfinite(out.loss).all())
