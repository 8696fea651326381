"""MC-PO (Chen et al. 2025, arXiv 2502.04567): `mcpo_loss` and `mcpo_select`.

1. Against a plain float64 reference written here (Python loops, `math`), loss and gradients,
   over odd shapes, ragged masks, float32 and bfloat16; float64 `gradcheck`.
2. Hand-computed values (arithmetic in the docstrings).
3. Invariants: M = 1 is DPO, max/min pick by implicit reward, padding is inert, seeding.
4. Statistics with fixed seeds: sample-kernel frequencies and mean gradients, the expectation
   kernel as the mean contrastive-divergence gradient.
5. Metrics. 6. Bad input -> ValueError naming the argument.
"""

from __future__ import annotations

import math

import pytest
import torch

from prefpool.losses import (
    MCPO_KERNELS,
    SELECTION_KERNELS,
    dpo_loss,
    kernel_probs,
    mcpo_loss,
    mcpo_select,
)

torch.set_num_threads(1)

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


def ref_kernel_probs(pool: list, kernel: str) -> list[float]:
    """The distribution a selection kernel draws from, over one row's slots (0 on padding)."""
    valid = [i for i, r in enumerate(pool) if r is not None]
    probs = [0.0] * len(pool)
    if kernel == "sample":
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
    return probs


def ref_entropy(probs: list[float]) -> float:
    return -sum(p * math.log(p) for p in probs if p > 0)


def ref_selection_loss(r0: float, pool: list, j: int, beta: float):
    """-log σ(r0 - r_j) and its gradient w.r.t. policy_chosen and each policy candidate.

    d/dm softplus(-m) = -σ(-m); dm/d policy_chosen = beta, dm/d policy_cand[j] = -beta.
    """
    m = r0 - pool[j]
    loss = ref_softplus(-m)
    grad_chosen = -beta * ref_sigmoid(-m)
    grad_cands = [0.0] * len(pool)
    grad_cands[j] = beta * ref_sigmoid(-m)
    return loss, grad_chosen, grad_cands


def ref_expectation_loss(r0: float, pool: list, beta: float):
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
    selected = out.metrics["mcpo/selected"].tolist()
    loss_ref, gc_ref, gp_ref, entropy_ref = [], [], [], []
    for b, (r0, pool_r) in enumerate(rows):
        w = float(upstream[b])
        if kernel == "expectation":
            loss, gc, gp, w0, weights = ref_expectation_loss(r0, pool_r, beta)
            entropy_ref.append(ref_entropy([w0] + weights))
        else:
            j = selected[b]
            assert case["mask"][b, j], f"row {b}: picked padded slot {j}"
            probs = ref_kernel_probs(pool_r, kernel)
            if kernel in ("max", "min"):
                # The picked reward is the extreme one (up to float32-vs-float64 near-ties).
                best = (
                    max(r for r in pool_r if r is not None)
                    if kernel == "max"
                    else min(r for r in pool_r if r is not None)
                )
                assert abs(pool_r[j] - best) < 1e-5, (b, j, pool_r)
            loss, gc, gp = ref_selection_loss(r0, pool_r, j, beta)
            entropy_ref.append(ref_entropy(probs))
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


@pytest.mark.parametrize("kernel", SELECTION_KERNELS)
def test_kernel_probs_match_reference(kernel):
    """`kernel_probs` on given rewards equals the reference distribution (float64 in, out)."""
    case = make_case(5, 7, seed=3)
    rows = ref_case_rows(case, 0.3)
    rewards = torch.tensor([[0.0 if r is None else r for r in pool] for _, pool in rows], dtype=torch.float64)
    probs = kernel_probs(rewards, case["mask"], kernel)
    expected = [ref_kernel_probs(pool, kernel) for _, pool in rows]
    assert_close_ref(probs, expected, 1e-12, 1e-12, f"kernel_probs[{kernel}]")


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


@pytest.mark.parametrize("kernel", MCPO_KERNELS)
def test_gradcheck_float64(kernel):
    """Finite differences in float64 w.r.t. all four log-prob tensors.

    Random kernels re-seed their generator inside the function, so every evaluation draws the
    same negatives (the +-1e-6 perturbations are far too small to move a draw here).
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

    Selection kernels: -log σ(0 - 0) = ln 2 = 0.693147...
    Expectation with n valid candidates: -0 + log((n + 1) e^0) = ln(n + 1):
    rows with n = 1, 2, 4 give ln 2 = 0.693147, ln 3 = 1.098612, ln 5 = 1.609438.
    Sample entropy is that of the uniform distribution over the n valid: ln 1, ln 2, ln 4.
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
    if kernel == "expectation":
        expected = torch.tensor([0.6931471805599453, 1.0986122886681098, 1.6094379124341003])
    else:
        expected = torch.full((3,), 0.6931471805599453)
    torch.testing.assert_close(out.loss, expected, atol=1e-6, rtol=0)
    if kernel == "sample":
        torch.testing.assert_close(out.metrics["mcpo/entropy"], torch.tensor([0.0, math.log(2), math.log(4)]))


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
        # expectation: -1 + log(e^1 + e^0.5 + e^-0.5) = log(1 + e^-0.5 + e^-1.5)
        #   = log(1 + 0.606531 + 0.223130) = log(1.829661) = 0.604131.
        # weights softmax(1, 0.5, -0.5) = (0.546549, 0.331499, 0.121952):
        # d/d policy_chosen = 0.5 * (0.546549 - 1) = -0.226725; d/d cand = 0.5 * w.
        ("expectation", 0.6041306053367284, -0.22672531, [0.16574948, 0.06097583], 0),
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
    assert out.metrics["mcpo/selected"].tolist() == [selected]
    assert out.metrics["rewards/chosen"].tolist() == [1.0]


def test_two_candidates_sample_kernel_by_hand():
    """sample: P(y1) = e^0.5 / (e^0.5 + e^-0.5) = 1 / (1 + e^-1) = 0.731059, P(y2) = 0.268941;
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
        kernel="sample",
        generator=torch.Generator().manual_seed(5),
    )
    sel = out.metrics["mcpo/selected"]
    expected = torch.where(sel == 0, 0.4740769841801067, 0.2014132779827524)
    torch.testing.assert_close(out.loss, expected.float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.metrics["mcpo/entropy"], torch.full((n,), 0.5822031088882179))
    freq = (sel == 0).double().mean().item()
    p = 0.7310585786300049
    assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_expectation_metrics_by_hand():
    """expectation: mcpo/selected and rewards/rejected report the highest-reward candidate
    (y1, r = 0.5, margin 0.5); mcpo/chosen_weight = e^1 / (e^1 + e^0.5 + e^-0.5) = 0.546549;
    entropy of (0.546549, 0.331499, 0.121952) = 0.960... nats (computed below)."""
    out = mcpo_loss(*two_candidate_case(), beta=0.5, kernel="expectation")
    w = [0.5465493872661796, 0.3314989604240915, 0.12195165230972885]
    m = out.metrics
    assert m["mcpo/selected"].tolist() == [0]
    torch.testing.assert_close(m["rewards/rejected"], torch.tensor([0.5]))
    torch.testing.assert_close(m["rewards/margins"], torch.tensor([0.5]))
    torch.testing.assert_close(m["mcpo/chosen_weight"], torch.tensor([w[0]]))
    torch.testing.assert_close(m["mcpo/entropy"], torch.tensor([ref_entropy(w)]))


# ---------------------------------------------------------------------------------------------
# 3. Invariants
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_mask", [False, True], ids=["no_mask", "all_true_mask"])
@pytest.mark.parametrize("kernel", MCPO_KERNELS)
def test_one_candidate_is_dpo(kernel, use_mask):
    """M = 1: every kernel must pick the only candidate, and the expectation form
    -r0 + log(e^r0 + e^r1) = log(1 + e^(r1 - r0)) = -log σ(r0 - r1) is DPO as well."""
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
    assert out.metrics["mcpo/selected"].tolist() == expected
    sel = mcpo_select(policy, ref, candidate_mask=mask, beta=0.1, kernel=kernel)
    assert sel.tolist() == expected
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
    assert bool(base["mask"].gather(1, sel[:, None]).all()), "a padded slot was picked"
    assert bool(torch.isfinite(out1.loss).all())
    assert bool(torch.isfinite(gc1).all()) and bool(torch.isfinite(gp1).all())
    assert bool((gp1[~base["mask"]] == 0).all())
    torch.testing.assert_close(out1.loss, out0.loss, atol=0, rtol=0)
    torch.testing.assert_close(gc1, gc0, atol=0, rtol=0)
    torch.testing.assert_close(gp1, gp0, atol=0, rtol=0)
    for key, value in out0.metrics.items():
        torch.testing.assert_close(out1.metrics[key], value, atol=0, rtol=0, msg=key)


@pytest.mark.parametrize("kernel", ["sample", "uniform"])
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
    case = make_case(9, 7, seed=51)
    out = mcpo_loss(
        case["policy_chosen"],
        case["policy_cands"],
        case["ref_chosen"],
        case["ref_cands"],
        candidate_mask=case["mask"],
        beta=0.3,
        kernel=kernel,
        generator=torch.Generator().manual_seed(77),
    )
    sel = mcpo_select(
        case["policy_cands"],
        case["ref_cands"],
        candidate_mask=case["mask"],
        beta=0.3,
        kernel=kernel,
        generator=torch.Generator().manual_seed(77),
    )
    assert sel.dtype == torch.long and sel.shape == (9,)
    assert torch.equal(sel, out.metrics["mcpo/selected"])


def test_select_rejects_expectation():
    case = make_case(2, 3)
    with pytest.raises(ValueError, match=r"^kernel"):
        mcpo_select(case["policy_cands"], case["ref_cands"], candidate_mask=case["mask"], kernel="expectation")


# ---------------------------------------------------------------------------------------------
# 4. Statistics (fixed seeds, N = 20000 draws as one batch)
# ---------------------------------------------------------------------------------------------

N_DRAWS = 20000
# Upper 0.001 quantile of chi-square with 3 degrees of freedom (4 valid candidates - 1):
# chi2.ppf(0.999, df=3) = 16.266. Checked in test_chi2_critical_value.
CHI2_CRIT_DF3_P001 = 16.266


def test_chi2_critical_value():
    """The hard-coded critical value: P(chi2_3 > 16.266) = Q(3/2, 16.266/2) ≈ 0.001."""
    sf = torch.special.gammaincc(
        torch.tensor(1.5, dtype=torch.float64), torch.tensor(CHI2_CRIT_DF3_P001 / 2, dtype=torch.float64)
    )
    assert abs(sf.item() - 0.001) < 1e-6


def chi2(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def draw_counts(kernel, seed):
    case = repeat_case(one_row_pool(), N_DRAWS)
    sel = mcpo_select(
        case["policy_cands"],
        case["ref_cands"],
        candidate_mask=case["mask"],
        beta=0.5,
        kernel=kernel,
        generator=torch.Generator().manual_seed(seed),
    )
    return torch.bincount(sel, minlength=5).double()


def test_sample_kernel_frequencies_are_softmax():
    counts = draw_counts("sample", seed=2024)
    assert counts[2] == 0, "padded slot drawn"
    valid = torch.tensor([0, 1, 3, 4])
    counts = counts[valid]
    p = torch.softmax(torch.tensor([1.0, -0.5, 0.0, -1.5], dtype=torch.float64), 0)
    assert chi2(counts, p) < CHI2_CRIT_DF3_P001
    freq = counts / N_DRAWS
    sigma = (p * (1 - p) / N_DRAWS).sqrt()
    assert bool(((freq - p).abs() < 5 * sigma).all()), (freq, p)
    # Power: the same counts are nowhere near uniform (statistic in the thousands).
    assert chi2(counts, torch.full((4,), 0.25, dtype=torch.float64)) > 10 * CHI2_CRIT_DF3_P001


def test_uniform_kernel_frequencies_are_uniform():
    counts = draw_counts("uniform", seed=2025)
    assert counts[2] == 0, "padded slot drawn"
    counts = counts[torch.tensor([0, 1, 3, 4])]
    assert chi2(counts, torch.full((4,), 0.25, dtype=torch.float64)) < CHI2_CRIT_DF3_P001
    sigma = math.sqrt(0.25 * 0.75 / N_DRAWS)
    assert bool(((counts / N_DRAWS - 0.25).abs() < 5 * sigma).all())


def per_row_grads(case, kernel, seed):
    out, gc, gp = run_mcpo(case, kernel=kernel, beta=0.5, seed=seed)
    return torch.cat([gc[:, None], gp], dim=1).double()  # (N, 1 + M): chosen, then the pool


def mixture_of_dpo_grads(weights: list[float]) -> torch.Tensor:
    """Σ_j weights_j ∇[-log σ(r0 - r_j)] (weights fixed numbers), from the reference."""
    case = one_row_pool()
    ((r0, pool),) = ref_case_rows(case, 0.5)
    total = torch.zeros(1 + len(pool), dtype=torch.float64)
    for j, w in enumerate(weights):
        if w:
            _, gc, gp = ref_selection_loss(r0, pool, j, 0.5)
            total += w * torch.tensor([gc] + gp, dtype=torch.float64)
    return total


def test_sample_kernel_mean_gradient():
    """E_{j ~ softmax(r)}[∇ -log σ(r0 - r_j)] = Σ_j softmax(r)_j ∇ dpo_j (weights detached:
    no gradient through the choice). The batch mean of N per-draw gradients must agree within
    5 standard errors (per-draw std / sqrt(N)) in every coordinate."""
    grads = per_row_grads(repeat_case(one_row_pool(), N_DRAWS), "sample", seed=99)
    mean, std = grads.mean(0), grads.std(0)
    tol = 5 * std / math.sqrt(N_DRAWS) + 1e-7
    case = one_row_pool()
    ((_, pool),) = ref_case_rows(case, 0.5)
    softmax_w = ref_kernel_probs(pool, "sample")
    expected = mixture_of_dpo_grads(softmax_w)
    assert bool(((mean - expected).abs() <= tol).all()), (mean, expected, tol)
    assert grads[:, 3].eq(0).all(), "padded slot got gradient"  # column 3 = pool slot 2
    # Power: the uniform-weighted mixture is far outside the tolerance.
    uniform = mixture_of_dpo_grads(ref_kernel_probs(pool, "uniform"))
    assert bool(((mean - uniform).abs() > tol).any())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_expectation_gradient_is_softmax_weighted(dtype):
    """∇ loss = -∇r0 + Σ_{i ∈ {0} ∪ valid} softmax(r)_i ∇r_i, with ∇r = beta on its own log-prob:
    d/d policy_chosen = beta (w0 - 1), d/d policy_cand[i] = beta w_i, 0 on padding."""
    case = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in one_row_pool().items()}
    _, gc, gp = run_mcpo(case, kernel="expectation", beta=0.5)
    r = torch.tensor([0.5, 1.0, -0.5, 0.0, -1.5], dtype=torch.float64)  # y0, then valid slots
    w = torch.softmax(r, 0)
    expected_gp = torch.zeros(5, dtype=torch.float64)
    expected_gp[torch.tensor([0, 1, 3, 4])] = 0.5 * w[1:]
    torch.testing.assert_close(gc.double(), 0.5 * (w[:1] - 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(gp.double(), expected_gp[None], atol=1e-6, rtol=0)


def test_expectation_gradient_is_mean_cd_gradient():
    """Draw j from softmax over {y0} ∪ valid (with mcpo_select on a pool that has y0 prepended);
    the contrastive-divergence gradient of a draw is ∇(r_j - r0), zero when j = 0. Its mean over
    N draws equals the expectation kernel's gradient within 5 standard errors."""
    one = one_row_pool()
    _, gc, gp = run_mcpo(one, kernel="expectation", beta=0.5)
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
        kernel="sample",
        generator=torch.Generator().manual_seed(4242),
    )
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


# ---------------------------------------------------------------------------------------------
# 5. Metrics
# ---------------------------------------------------------------------------------------------

METRIC_KEYS = {
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "mcpo/selected",
    "mcpo/entropy",
    "mcpo/pool_accuracy",
    "mcpo/num_candidates",
}


@pytest.mark.parametrize("kernel", MCPO_KERNELS)
def test_metrics_shapes_detached_and_consistent(kernel):
    case = make_case(5, 7, seed=61)
    out, _, _ = run_mcpo(case, kernel=kernel, beta=0.3, seed=3)
    m = out.metrics
    expected_keys = METRIC_KEYS | ({"mcpo/chosen_weight"} if kernel == "expectation" else set())
    assert expected_keys <= set(m)
    for key, value in m.items():
        assert value.shape == (5,), key
        assert value.grad_fn is None and not value.requires_grad, key
    assert m["mcpo/selected"].dtype == torch.long
    assert torch.equal(m["mcpo/num_candidates"], case["mask"].sum(1))

    rows = ref_case_rows(case, 0.3)
    sel = m["mcpo/selected"].tolist()
    rejected = [pool[j] for (_, pool), j in zip(rows, sel, strict=True)]
    assert_close_ref(m["rewards/rejected"], rejected, 1e-5, 1e-5, "rewards/rejected")
    torch.testing.assert_close(m["rewards/margins"], m["rewards/chosen"] - m["rewards/rejected"])
    assert torch.equal(m["rewards/accuracies"], (m["rewards/margins"] > 0).float())

    entropy = m["mcpo/entropy"]
    n_valid = case["mask"].sum(1).double()
    if kernel in ("max", "min"):
        assert bool((entropy == 0).all())
    elif kernel == "uniform":
        torch.testing.assert_close(entropy.double(), n_valid.log(), atol=1e-6, rtol=0)
    elif kernel == "sample":
        expected = [ref_entropy(ref_kernel_probs(pool, "sample")) for _, pool in rows]
        assert_close_ref(entropy, expected, 1e-5, 1e-5, "sample entropy")
    if kernel == "expectation":
        w0 = [ref_expectation_loss(r0, pool, 0.3)[3] for r0, pool in rows]
        assert_close_ref(m["mcpo/chosen_weight"], w0, 1e-6, 1e-5, "mcpo/chosen_weight")


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
    ("int_mask", _set("candidate_mask", torch.ones(2, 3, dtype=torch.long)), {}, "candidate_mask"),
    ("float_mask", _set("candidate_mask", torch.ones(2, 3)), {}, "candidate_mask"),
]


@pytest.mark.parametrize("kernel", ["sample", "expectation"])
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


# mcpo_select has no chosen tensors, and a policy pool with a different B from the mask is
# (rightly) a candidate_mask shape error there, so those cases are loss-only.
SELECT_BAD = [b for b in BAD_INPUTS if "chosen" not in b[0] and b[0] != "pool_batch_mismatch"]


@pytest.mark.parametrize(("edit", "kwargs", "name"), [b[1:] for b in SELECT_BAD], ids=[b[0] for b in SELECT_BAD])
def test_bad_input_select(edit, kwargs, name):
    args = good_args()
    if edit is not None:
        edit(args)
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        mcpo_select(
            args["policy_candidate_logps"], args["ref_candidate_logps"], candidate_mask=args["candidate_mask"], **kwargs
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
