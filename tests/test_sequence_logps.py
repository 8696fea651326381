"""sequence_logps against the textbook log_softmax + gather, values and gradients."""

from __future__ import annotations

import pytest
import torch

from prefpool.losses.logps import sequence_logps

torch.set_num_threads(1)


def naive(logits, labels, mask):
    """Reference: full float32 log-softmax, gather, masked sum (-100 labels clamped away)."""
    mask = mask.bool()
    safe = labels.masked_fill(~mask, 0)
    tok = torch.log_softmax(logits.float() if logits.dtype != torch.float64 else logits, -1)
    tok = tok.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return (tok * mask).sum(-1), mask.sum(-1)


def make_mask(batch, seq, kind, gen):
    """Masks padded on the left, the right, both, or at random; row 1 is always empty."""
    mask = torch.zeros(batch, seq, dtype=torch.bool)
    for b in range(batch):
        lo = int(torch.randint(0, seq // 2 + 1, (1,), generator=gen)) if kind in ("left", "both") else 0
        hi = seq - int(torch.randint(0, seq // 2 + 1, (1,), generator=gen)) if kind in ("right", "both") else seq
        mask[b, lo:hi] = True
    if kind == "random":
        mask = torch.rand(batch, seq, generator=gen) < 0.6
    if batch > 1:
        mask[1] = False
    return mask


def make_case(batch, seq, vocab, kind, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(batch, seq, vocab, generator=gen)).to(dtype)
    labels = torch.randint(0, vocab, (batch, seq), generator=gen)
    mask = make_mask(batch, seq, kind, gen)
    labels = labels.masked_fill(~mask, -100)
    return logits, labels, mask


SHAPES = [(3, 7, 11), (1, 1, 2), (2, 5, 1), (4, 13, 37), (5, 3, 129)]
KINDS = ["left", "right", "both", "random"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk_elements", [2**26, 1, 23])
def test_values_and_grads_fp32(shape, kind, chunk_elements):
    logits, labels, mask = make_case(*shape, kind)
    got_in = logits.clone().requires_grad_(True)
    ref_in = logits.clone().requires_grad_(True)
    got, got_n = sequence_logps(got_in, labels, mask, chunk_elements=chunk_elements)
    ref, ref_n = naive(ref_in, labels, mask)
    assert got.dtype == torch.float32 and got.shape == (shape[0],)
    assert got_n.dtype == torch.long and torch.equal(got_n, ref_n)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    weights = torch.randn(shape[0])
    (got * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(got_in.grad, ref_in.grad, atol=1e-5, rtol=1e-5)


def test_empty_row_is_zero_and_gets_no_grad():
    logits, labels, mask = make_case(3, 7, 11, "both")
    assert not mask[1].any()
    logits.requires_grad_(True)
    got, counts = sequence_logps(logits, labels, mask)
    assert got[1].item() == 0.0 and counts[1].item() == 0
    got.sum().backward()
    assert not logits.grad[1].any()
    assert not logits.grad[~mask].any()  # masked positions get exactly zero gradient


def test_all_masked_out_batch_is_differentiable():
    logits = torch.randn(2, 4, 5, requires_grad=True)
    labels = torch.full((2, 4), -100)
    got, counts = sequence_logps(logits, labels, torch.zeros(2, 4, dtype=torch.bool))
    assert torch.equal(got, torch.zeros(2)) and torch.equal(counts, torch.zeros(2, dtype=torch.long))
    got.sum().backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["left", "random"])
def test_low_precision_logits(dtype, kind):
    # Both sides read the same bf16/fp16 logits and compute in float32, so the
    # values agree to float32 summation order: tolerance 1e-4 on sums of up to
    # ~30 token log-probs of magnitude ~10. The gradient is rounded to the
    # logits' dtype on both sides (8 bits of mantissa for bf16), so allow one
    # unit in the last place: atol 1e-2 for bf16, 1e-3 for fp16.
    logits, labels, mask = make_case(4, 13, 37, kind, dtype=dtype)
    got_in = logits.clone().requires_grad_(True)
    ref_in = logits.clone().requires_grad_(True)
    got, _ = sequence_logps(got_in, labels, mask, chunk_elements=50)
    ref, _ = naive(ref_in, labels, mask)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-5)
    got.sum().backward()
    ref.sum().backward()
    assert got_in.grad.dtype == dtype
    atol = 1e-2 if dtype == torch.bfloat16 else 1e-3
    torch.testing.assert_close(got_in.grad.float(), ref_in.grad.float(), atol=atol, rtol=1e-2)


def test_non_contiguous_view_matches_contiguous_copy():
    # The caller's shift: logits[:, :-1], input_ids[:, 1:], mask[:, 1:].
    gen = torch.Generator().manual_seed(3)
    big = torch.randn(3, 9, 17, generator=gen, requires_grad=True)
    input_ids = torch.randint(0, 17, (3, 9), generator=gen)
    mask = make_mask(3, 9, "both", gen)
    view = big[:, :-1]
    assert not view.is_contiguous()
    got, got_n = sequence_logps(view, input_ids[:, 1:], mask[:, 1:], chunk_elements=17 * 2)
    got.sum().backward()
    copy = big.detach()[:, :-1].contiguous().requires_grad_(True)
    ref, ref_n = sequence_logps(copy, input_ids[:, 1:].contiguous(), mask[:, 1:].contiguous())
    ref.sum().backward()
    assert torch.equal(got, ref) and torch.equal(got_n, ref_n)
    torch.testing.assert_close(big.grad[:, :-1], copy.grad, atol=0, rtol=0)
    assert not big.grad[:, -1].any()
    nv, _ = naive(big.detach()[:, :-1], input_ids[:, 1:], mask[:, 1:])
    torch.testing.assert_close(got, nv, atol=1e-5, rtol=1e-5)


def test_one_position_per_chunk_is_identical():
    logits, labels, mask = make_case(4, 13, 37, "random", seed=5)
    a_in = logits.clone().requires_grad_(True)
    b_in = logits.clone().requires_grad_(True)
    a, _ = sequence_logps(a_in, labels, mask)
    b, _ = sequence_logps(b_in, labels, mask, chunk_elements=37)
    assert torch.equal(a, b)
    a.sum().backward()
    b.sum().backward()
    assert torch.equal(a_in.grad, b_in.grad)


def test_int_mask_equals_bool_mask():
    logits, labels, mask = make_case(3, 7, 11, "random", seed=2)
    a, na = sequence_logps(logits, labels, mask)
    b, nb = sequence_logps(logits, labels, mask.long())
    assert torch.equal(a, b) and torch.equal(na, nb)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_without_autograd(mode):
    logits, labels, mask = make_case(3, 7, 11, "left", seed=4)
    logits.requires_grad_(True)
    ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with ctx:
        got, counts = sequence_logps(logits, labels, mask, chunk_elements=11)
    assert got.grad_fn is None and not got.requires_grad
    ref, ref_n = naive(logits.detach(), labels, mask)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(counts, ref_n)


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 4, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    labels = torch.randint(0, 5, (2, 4), generator=gen)
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    labels[0, 0] = -100

    def fn(x):
        return sequence_logps(x, labels, mask, chunk_elements=10)[0]

    assert fn(logits).dtype == torch.float64
    assert torch.autograd.gradcheck(fn, (logits,))
    # and through a strided view
    assert torch.autograd.gradcheck(
        lambda x: fn(x[:, 1:]), (torch.randn(2, 5, 5, dtype=torch.float64, generator=gen, requires_grad=True),)
    )


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"logits": torch.randn(3, 7)}, "logits"),
        ({"logits": torch.randint(0, 3, (3, 7, 11))}, "logits"),
        ({"logits": [[[0.0]]]}, "logits"),
        ({"labels": torch.zeros(3, 7, dtype=torch.int32)}, "labels"),
        ({"labels": torch.zeros(3, 6, dtype=torch.long)}, "labels"),
        ({"labels": torch.zeros(7, 3, dtype=torch.long)}, "labels"),
        ({"mask": torch.ones(3, 8, dtype=torch.bool)}, "mask"),
        ({"mask": torch.ones(3, 7)}, "mask"),
        ({"mask": torch.full((3, 7), 2)}, "mask"),
        ({"chunk_elements": 0}, "chunk_elements"),
    ],
)
def test_bad_arguments(kwargs, name):
    args = {
        "logits": torch.randn(3, 7, 11),
        "labels": torch.zeros(3, 7, dtype=torch.long),
        "mask": torch.ones(3, 7, dtype=torch.bool),
    }
    args.update(kwargs)
    chunk = args.pop("chunk_elements", 2**26)
    with pytest.raises(ValueError, match=f"^{name}"):
        sequence_logps(args["logits"], args["labels"], args["mask"], chunk_elements=chunk)


@pytest.mark.parametrize("bad", [-100, -1, 11, 12])
def test_label_out_of_range_at_used_position(bad):
    logits = torch.randn(3, 7, 11)
    labels = torch.zeros(3, 7, dtype=torch.long)
    mask = torch.ones(3, 7, dtype=torch.bool)
    labels[2, 4] = bad
    with pytest.raises(ValueError, match=r"^labels: .*\(2, 4\)"):
        sequence_logps(logits, labels, mask)
    mask[2, 4] = False  # the same label at a masked-out position is ignored
    sequence_logps(logits, labels, mask)
