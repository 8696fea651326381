"""MC-PO with M sampled negatives per row (``num_negatives``; Chen et al. 2025, arXiv 2502.04567).

The loss is the NLL with M noise samples, -r0 + log(exp(r0) + Σ_j exp(r(s_j))), each s_j an
independent draw of the kernel. The reference below computes that formula literally (no
cancellation of r0) for every ordered tuple of draws (s_1..s_M) with replacement, weights
each tuple by Π_j K(s_j), and sums: the exact expectation of the value and of the gradient.

Rows used (beta = 1, reference log-probs 0, so the policy log-probs are the rewards): three
ragged rows, r0 = (0, 0.8, -0.3), pools (1, -0.5, pad, 0.2), (0.1, pad, -1, pad),
(0.5, 0.4, -0.2, 1.1).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from prefpool.losses import CHOSEN_INDEX, RAO_BLACKWELL_MAX_DRAWS, mcpo_loss, mcpo_select

torch.set_num_threads(1)

N = 20000
R0 = torch.tensor([0.0, 0.8, -0.3], dtype=torch.float64)
POOL = torch.tensor([[1.0, -0.5, 7.0, 0.2], [0.1, 7.0, -1.0, 7.0], [0.5, 0.4, -0.2, 1.1]], dtype=torch.float64)
MASK = torch.tensor([[True, True, False, True], [True, False, True, False], [True, True, True, True]])


def rows_case(copies: int):
    """The three rows, each repeated ``copies`` times (row b at positions b, b + 3, ...)."""
    rows = torch.arange(3).repeat(copies)
    return {
        "policy_chosen": R0[rows],
        "policy_cands": POOL[rows],
        "ref_chosen": torch.zeros(3 * copies, dtype=torch.float64),
        "ref_cands": torch.zeros(3 * copies, 4, dtype=torch.float64),
        "mask": MASK[rows],
    }, rows


def run(case, kernel, m, *, seed=0, selected=None):
    """mcpo_loss at beta = 1 with M = m; gradients of the summed loss w.r.t. the policy inputs,
    as (rows, 1 + K) (d/d policy_chosen first)."""
    chosen = case["policy_chosen"].clone().requires_grad_(True)
    cands = case["policy_cands"].clone().requires_grad_(True)
    out = mcpo_loss(
        chosen,
        cands,
        case["ref_chosen"],
        case["ref_cands"],
        candidate_mask=case["mask"],
        beta=1.0,
        kernel=kernel,
        num_negatives=m,
        generator=torch.Generator().manual_seed(seed),
        selected=selected,
    )
    out.loss.sum().backward()
    return out, torch.cat([chosen.grad[:, None], cands.grad], dim=1)


def kernel_of(b: int, kernel: str) -> dict[int, float]:
    """Row b's draw distribution over {-1 (y0), valid slots}: softmax over {y0} ∪ valid
    (sample), softmax over the valid pool (sample_pool), uniform over it (uniform)."""
    valid = MASK[b].nonzero().squeeze(1).tolist()
    if kernel == "sample":
        support = [CHOSEN_INDEX, *valid]
        logits = torch.tensor([float(R0[b])] + [float(POOL[b, i]) for i in valid], dtype=torch.float64)
    elif kernel == "sample_pool":
        support, logits = valid, POOL[b, valid]
    else:
        support, logits = valid, torch.zeros(len(valid), dtype=torch.float64)
    return dict(zip(support, torch.softmax(logits, 0).tolist(), strict=True))


def exact_expectation(b: int, kernel: str, m: int) -> tuple[float, torch.Tensor]:
    """Σ over ordered draws with replacement of Π K(s_j) times the loss and its gradient."""
    probs = kernel_of(b, kernel)
    value, grad = 0.0, torch.zeros(5, dtype=torch.float64)
    for draws in itertools.product(probs, repeat=m):
        weight = math.prod(probs[s] for s in draws)
        leaf = torch.cat([R0[b : b + 1], POOL[b]]).clone().requires_grad_(True)  # [r0, pool...]
        r0 = leaf[0]
        noise = torch.stack([r0 if s == CHOSEN_INDEX else leaf[1 + s] for s in draws])
        loss = -r0 + torch.log(torch.exp(r0) + torch.exp(noise).sum())
        loss.backward()
        value += weight * loss.item()
        grad += weight * leaf.grad
    return value, grad


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("kernel", ["sample", "uniform", "sample_pool"])
def test_mean_over_draws_is_the_exact_expectation(kernel, m):
    """N identical copies of each row: the mean loss and mean gradient of the sampled loss equal
    the exact expectation over ordered M-tuples drawn with replacement (5 standard errors), and
    picks repeat within a row (draws with replacement)."""
    case, rows = rows_case(N)
    out, grads = run(case, kernel, m, seed=100 + m)
    assert out.metrics["mcpo/selected"].shape == (3 * N, m)
    for b in range(3):
        value, grad = exact_expectation(b, kernel, m)
        loss_b, grad_b = out.loss[rows == b], grads[rows == b]
        assert abs(loss_b.mean().item() - value) < 5 * loss_b.std().item() / math.sqrt(N), (b, loss_b.mean(), value)
        tol = 5 * grad_b.std(0) / math.sqrt(N) + 1e-12
        assert bool(((grad_b.mean(0) - grad).abs() <= tol).all()), (b, grad_b.mean(0), grad)
    # Draws are independent: with replacement, a row of 2 valid candidates repeats a pick often.
    picks = out.metrics["mcpo/selected"][rows == 1]
    repeats = (picks[:, :, None] == picks[:, None, :]).sum((1, 2)) > m
    assert bool(repeats.any())


@pytest.mark.parametrize("m", [1, 2, 3])
def test_rao_blackwell_is_the_exact_expectation(m):
    """rao_blackwell at M negatives: value and gradient equal the exact expectation of `sample`'s
    over ordered M-tuples (1e-12), row by row; padding gets no gradient."""
    case, _ = rows_case(1)
    out, grads = run(case, "rao_blackwell", m)
    for b in range(3):
        value, grad = exact_expectation(b, "sample", m)
        assert abs(out.loss[b].item() - value) < 1e-12, (b, out.loss[b].item(), value)
        torch.testing.assert_close(grads[b], grad, atol=1e-12, rtol=0)
    assert bool((grads[:, 1:][~case["mask"]] == 0).all())


def test_rao_blackwell_refuses_past_its_enumeration_limit():
    """(1 + K)^M ordered draws: 5 columns and M = 5 is 3125 (allowed), M = 6 is 15625 (refused)."""
    case, _ = rows_case(1)
    run(case, "rao_blackwell", 5)
    assert 5**5 <= RAO_BLACKWELL_MAX_DRAWS < 5**6
    with pytest.raises(ValueError, match=r"^num_negatives: rao_blackwell at M = 6 .* 15625 ordered draws"):
        run(case, "rao_blackwell", 6)


def test_hand_case_two_negatives():
    """Row 0, picks (y0, slot 0) and (slot 0, slot 3): the loss is log(1 + 1 + e^1) = 1.551444
    (y0 adds exp(r0) / exp(r0) = 1) and log(1 + e^1 + e^0.2) = 1.597301; gradients by hand:
    d/d r_i = n_i e^{r_i} / Z', d/d r0 = -(their sum), with Z' the argument of the log."""
    case, _ = rows_case(1)
    one = {k: v[:1].expand(2, *v.shape[1:]).clone() for k, v in case.items()}
    selected = torch.tensor([[CHOSEN_INDEX, 0], [0, 3]])
    out, grads = run(one, "sample", 2, selected=selected)
    z0, z1 = 2 + math.e, 1 + math.e + math.exp(0.2)
    torch.testing.assert_close(out.loss, torch.tensor([math.log(z0), math.log(z1)], dtype=torch.float64))
    assert abs(math.log(z0) - 1.551444) < 1e-6 and abs(math.log(z1) - 1.597301) < 1e-6
    expected = torch.tensor(
        [
            [-math.e / z0, math.e / z0, 0.0, 0.0, 0.0],
            [-(math.e + math.exp(0.2)) / z1, math.e / z1, 0.0, 0.0, math.exp(0.2) / z1],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(grads, expected, atol=1e-12, rtol=0)
    m = out.metrics
    assert m["mcpo/chosen_drawn"].tolist() == [0.5, 0.0]
    assert m["mcpo/distinct_negatives"].tolist() == [1, 2]
    torch.testing.assert_close(m["rewards/rejected"], torch.tensor([0.5, 0.6], dtype=torch.float64))


def test_all_draws_y0_is_constant():
    """Every draw y0: the loss is log(1 + M) exactly and no input gets gradient."""
    case, _ = rows_case(1)
    out, grads = run(case, "sample", 3, selected=torch.full((3, 3), CHOSEN_INDEX))
    assert out.loss.tolist() == [math.log(4.0)] * 3
    assert bool((grads == 0).all())
    assert out.metrics["mcpo/distinct_negatives"].tolist() == [0, 0, 0]


def test_sampled_gradient_checks_in_float64():
    """With the picks fixed (repeats and y0 included), the loss is a smooth function of all
    four inputs: float64 finite differences agree with autograd."""
    case, _ = rows_case(1)
    selected = torch.tensor([[0, 0, CHOSEN_INDEX], [2, CHOSEN_INDEX, 0], [3, 1, 2]])
    leaves = tuple(
        case[k].clone().requires_grad_(True) for k in ("policy_chosen", "policy_cands", "ref_chosen", "ref_cands")
    )

    def loss(*x):
        return mcpo_loss(
            *x, candidate_mask=case["mask"], beta=0.7, kernel="sample", num_negatives=3, selected=selected
        ).loss

    assert torch.autograd.gradcheck(loss, leaves, eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize(("kernel", "expected"), [("max", [[0, 3], [0, 2], [3, 0]]), ("min", [[1, 3], [2, 0], [2, 1]])])
def test_max_min_take_distinct_extremes(kernel, expected):
    """max: the M highest-reward distinct valid slots, hardest first; min: the lowest, easiest
    first. Padding (reward 7 here) is never taken. The loss is the NLL with those M negatives."""
    case, _ = rows_case(1)
    out, _ = run(case, kernel, 2)
    assert out.metrics["mcpo/selected"].tolist() == expected
    sel = mcpo_select(
        case["policy_cands"], case["ref_cands"], candidate_mask=case["mask"], beta=1.0, kernel=kernel, num_negatives=2
    )
    assert sel.tolist() == expected
    for b, picks in enumerate(expected):
        z = 1 + sum(math.exp(POOL[b, i].item() - R0[b].item()) for i in picks)
        assert abs(out.loss[b].item() - math.log(z)) < 1e-12
    assert out.metrics["mcpo/distinct_negatives"].tolist() == [2, 2, 2]


def test_max_min_ties_go_to_the_lower_slot():
    """Equal rewards: the lower slot first (as at M = 1, where the pick is the arg-max's first index)."""
    flat = torch.zeros(1, 4, dtype=torch.float64)
    for kernel in ("max", "min"):
        sel = mcpo_select(flat, flat, beta=1.0, kernel=kernel, num_negatives=3)
        assert sel.tolist() == [[0, 1, 2]]


def test_max_needs_m_distinct_candidates():
    """Row 1 has 2 valid candidates: M = 3 distinct ones cannot be taken; the error names the row."""
    case, _ = rows_case(1)
    with pytest.raises(
        ValueError, match=r"^num_negatives: the max kernel takes 3 distinct pool answers per row; row 1"
    ):
        run(case, "max", 3)


def test_listwise_takes_no_negatives():
    case, _ = rows_case(1)
    with pytest.raises(ValueError, match=r"^num_negatives: listwise is the NLL over the whole pool"):
        run(case, "listwise", 2)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_num_negatives(bad):
    case, _ = rows_case(1)
    with pytest.raises(ValueError, match=r"^num_negatives: expected an int >= 1"):
        run(case, "sample", bad)
    with pytest.raises(ValueError, match=r"^num_negatives: expected an int >= 1"):
        mcpo_select(case["policy_cands"], case["ref_cands"], beta=1.0, kernel="uniform", num_negatives=bad)


def test_selected_must_have_m_columns():
    """selected is (B, M): a (B,) tensor, or M columns that disagree with num_negatives, are errors."""
    case, _ = rows_case(1)
    with pytest.raises(ValueError, match=r"^selected: expected shape \(B, num_negatives\) = \(3, 2\)"):
        run(case, "sample", 2, selected=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^selected: expected shape \(B, num_negatives\) = \(3, 1\)"):
        run(case, "sample", 1, selected=torch.zeros(3, 2, dtype=torch.long))


def test_select_and_loss_agree_at_m_3():
    """mcpo_select with a seed makes the picks mcpo_loss makes with that seed; passing them back
    as `selected` gives the same loss and metrics."""
    case, _ = rows_case(50)
    args = (case["policy_chosen"], case["policy_cands"], case["ref_chosen"], case["ref_cands"])
    common = {"candidate_mask": case["mask"], "beta": 1.0, "kernel": "sample", "num_negatives": 3}
    out = mcpo_loss(*args, **common, generator=torch.Generator().manual_seed(8))
    sel = mcpo_select(
        case["policy_cands"],
        case["ref_cands"],
        policy_chosen_logps=case["policy_chosen"],
        ref_chosen_logps=case["ref_chosen"],
        **common,
        generator=torch.Generator().manual_seed(8),
    )
    assert torch.equal(sel, out.metrics["mcpo/selected"])
    again = mcpo_loss(*args, **common, selected=sel)
    assert torch.equal(again.loss, out.loss)
    for key, value in out.metrics.items():
        assert torch.equal(again.metrics[key], value), key


def test_distinct_negatives_counts_a_slot_once_whatever_the_order_of_y0_draws():
    """Slot 0 picked before or after a y0 draw (which also points at slot 0 once clamped): one
    distinct negative either way, and the same loss."""
    case, _ = rows_case(1)
    one = {k: v[:1].expand(2, *v.shape[1:]).clone() for k, v in case.items()}
    out, _ = run(one, "sample", 2, selected=torch.tensor([[0, CHOSEN_INDEX], [CHOSEN_INDEX, 0]]))
    assert out.metrics["mcpo/distinct_negatives"].tolist() == [1, 1]
    assert out.loss[0].item() == out.loss[1].item()
