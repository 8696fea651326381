"""hidden_logps against the explicit LM head + log_softmax, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from prefpool.losses import hidden_logps, sequence_logps
from prefpool.losses.hidden_logps import _tiles

torch.set_num_threads(1)


def reference(hidden, weight, labels, mask, bias=None, scale=None, cap=None):
    """The textbook path: full logits in the inputs' dtype, upcast, scale, cap, log_softmax, gather."""
    mask = mask.bool()
    z = F.linear(hidden, weight, bias)
    z = z if z.dtype == torch.float64 else z.float()
    if scale is not None:
        z = z * scale
    if cap is not None:
        z = cap * torch.tanh(z / cap)
    tok = torch.log_softmax(z, -1).gather(-1, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    return (tok * mask).sum(-1), mask.sum(-1)


def make_case(batch, seq, width, vocab, *, dtype=torch.float32, seed=0, spread=1.0):
    """Hidden states, head weight and bias, labels (-100 where unused), a mask whose row 1 is empty."""
    gen = torch.Generator().manual_seed(seed)
    hidden = (spread * torch.randn(batch, seq, width, generator=gen)).to(dtype)
    weight = (torch.randn(vocab, width, generator=gen) / width**0.5).to(dtype)
    bias = (0.5 * torch.randn(vocab, generator=gen)).to(dtype)
    mask = torch.rand(batch, seq, generator=gen) < 0.7
    mask[0, 0] = True
    if batch > 1:
        mask[1] = False
    labels = torch.randint(0, vocab, (batch, seq), generator=gen).masked_fill(~mask, -100)
    return hidden, weight, bias, labels, mask


def leaves(*tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def backward_both(got, ref, seed=1):
    weights = torch.randn(got.shape[0], generator=torch.Generator().manual_seed(seed), dtype=got.dtype)
    (got * weights).sum().backward()
    (ref * weights.to(ref.dtype)).sum().backward()


# (B, T, H, V): T=1, B=1, V=1, V=2, V not a multiple of the chunk rows.
SHAPES = [(3, 7, 8, 11), (1, 1, 4, 2), (2, 5, 3, 1), (4, 13, 16, 37), (5, 3, 6, 129)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("chunk_elements", [2**26, 1, 23, 60])
@pytest.mark.parametrize("use_bias", [False, True])
def test_values_and_grads_fp32(shape, chunk_elements, use_bias):
    hidden, weight, bias, labels, mask = make_case(*shape)
    h1, w1, b1 = leaves(hidden, weight, bias)
    h2, w2, b2 = leaves(hidden, weight, bias)
    got, got_n = hidden_logps(h1, w1, labels, mask, bias=b1 if use_bias else None, chunk_elements=chunk_elements)
    ref, ref_n = reference(h2, w2, labels, mask, bias=b2 if use_bias else None)
    assert got.dtype == torch.float32 and got.shape == (shape[0],)
    assert got_n.dtype == torch.long and torch.equal(got_n, ref_n)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    backward_both(got, ref)
    for a, b in [(h1, h2), (w1, w2)] + ([(b1, b2)] if use_bias else []):
        assert a.grad.dtype == torch.float32
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5)
    if not use_bias:
        assert b1.grad is None


def test_tile_shapes():
    # Whole vocabulary rows when they fit (the sequence_logps chunking), else square-ish tiles.
    assert _tiles(10, 151936, 2**22) == (27, 151936)  # few positions: one tile holds them all
    assert _tiles(5000, 1000, 2**22) == (4194, 1000)  # small vocabulary
    assert _tiles(5734, 151936, 2**22) == (2048, 2048)
    assert _tiles(100_000, 151936, 2**26) == (8192, 8192)
    assert _tiles(3, 37, 1) == (1, 1)
    assert _tiles(40, 37, 60) == (8, 7)  # several row blocks and vocabulary tiles, ragged ends


@pytest.mark.parametrize(("scale", "cap"), [(0.0625, None), (None, 3.0), (2.5, 4.0), (-1.5, None)])
def test_logit_scale_and_softcap_fp32(scale, cap):
    # spread=4: logits of magnitude ~5-10, so a cap of 3-4 saturates and its derivative matters.
    hidden, weight, bias, labels, mask = make_case(4, 9, 16, 37, seed=3, spread=4.0)
    h1, w1, b1 = leaves(hidden, weight, bias)
    h2, w2, b2 = leaves(hidden, weight, bias)
    got, _ = hidden_logps(
        h1, w1, labels, mask, bias=b1, logit_scale=scale, final_logit_softcap=cap, chunk_elements=37 * 3
    )
    ref, _ = reference(h2, w2, labels, mask, bias=b2, scale=scale, cap=cap)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    backward_both(got, ref)
    for a, b in [(h1, h2), (w1, w2), (b1, b2)]:
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("scale", "cap"), [(None, None), (0.7, None), (None, 2.0), (1.3, 1.5)])
def test_gradcheck_float64(scale, cap):
    hidden, weight, bias, labels, mask = make_case(3, 4, 5, 7, dtype=torch.float64, seed=7, spread=2.0)

    def fn(h, w, b):
        return hidden_logps(h, w, labels, mask, bias=b, logit_scale=scale, final_logit_softcap=cap, chunk_elements=15)[
            0
        ]

    inputs = tuple(leaves(hidden, weight, bias))
    assert fn(*inputs).dtype == torch.float64
    assert torch.autograd.gradcheck(fn, inputs)


def test_bfloat16_inputs():
    # Both sides run the matmul in bf16 on the same rows, so the bf16 logits are
    # the same but for a rare one-ulp flip (a GEMM may sum in another order for
    # another row count); the log-probs are then reduced in float32 on both
    # sides. Observed: 4e-6 on sums of ~30 log-probs of size ~2, where bf16 vs
    # exact logits differ by 1e-2; atol 5e-3 lies between. Gradients are bf16
    # on both sides (8-bit mantissa; the weight's is a sum over chunks, ours
    # adds them in float32): observed at most 1 ulp (7.8e-3 on entries of
    # ~1.9); rtol 1e-2 and atol 1e-2 allow 1-2 ulps.
    hidden, weight, bias, labels, mask = make_case(4, 13, 32, 257, dtype=torch.bfloat16, seed=5)
    h1, w1, b1 = leaves(hidden, weight, bias)
    h2, w2, b2 = leaves(hidden, weight, bias)
    got, _ = hidden_logps(h1, w1, labels, mask, bias=b1, chunk_elements=257 * 4)
    ref, _ = reference(h2, w2, labels, mask, bias=b2)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=5e-3, rtol=0)
    backward_both(got, ref)
    for a, b in [(h1, h2), (w1, w2), (b1, b2)]:
        assert a.grad.dtype == torch.bfloat16
        torch.testing.assert_close(a.grad.float(), b.grad.float(), atol=1e-2, rtol=1e-2)


def test_cpu_bf16_autocast_matches_autocast_reference():
    # float32 hidden and weight (master weights), bf16 autocast as a trainer runs it: the
    # head's matmul is bf16 on both sides, so the same tolerances as bf16 inputs; the
    # gradients come back in float32 (the inputs' dtype).
    hidden, weight, bias, labels, mask = make_case(4, 13, 32, 257, seed=6)
    h1, w1, b1 = leaves(hidden, weight, bias)
    h2, w2, b2 = leaves(hidden, weight, bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = hidden_logps(h1, w1, labels, mask, bias=b1, chunk_elements=257 * 4)
        ref, _ = reference(h2, w2, labels, mask, bias=b2)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=5e-3, rtol=0)
    exact, _ = reference(hidden, weight, labels, mask, bias=bias)  # float32 logits
    assert (got - exact).abs().max() > 5e-3  # autocast really made the matmul bf16
    backward_both(got, ref)
    for a, b in [(h1, h2), (w1, w2), (b1, b2)]:
        assert a.grad.dtype == torch.float32
        torch.testing.assert_close(a.grad, b.grad, atol=1e-2, rtol=1e-2)


def test_empty_rows_and_unused_positions_get_zero_grad():
    hidden, weight, bias, labels, mask = make_case(3, 7, 8, 11)
    h, w = leaves(hidden, weight)
    got, counts = hidden_logps(h, w, labels, mask, chunk_elements=11)
    assert got[1].item() == 0.0 and counts[1].item() == 0
    got.sum().backward()
    assert not h.grad[~mask].any()
    assert h.grad[mask].abs().sum(-1).min() > 0


def test_all_masked_out_batch_is_differentiable():
    hidden, weight, bias, _, _ = make_case(2, 4, 3, 5)
    h, w, b = leaves(hidden, weight, bias)
    got, counts = hidden_logps(h, w, torch.full((2, 4), -100), torch.zeros(2, 4, dtype=torch.bool), bias=b)
    assert torch.equal(got, torch.zeros(2)) and torch.equal(counts, torch.zeros(2, dtype=torch.long))
    got.sum().backward()
    for x in (h, w, b):
        assert torch.equal(x.grad, torch.zeros_like(x))


class ShapeLog(TorchDispatchMode):
    """Records the shape of every tensor an aten op returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(x, torch.Tensor):
                self.shapes.append(tuple(x.shape))
        return out


def test_no_tensor_holds_more_than_a_chunk_of_logits():
    # V=64, H=8, chunk_elements=128: every tensor made in forward and backward holds at
    # most 128 values, except the (V, H) weight gradient, the (B, T, H) hidden gradient
    # and the (N, H) gathered hidden rows; the N used positions' logits would be N * V.
    batch, seq, width, vocab, chunk = 4, 16, 8, 64, 128
    hidden, weight, bias, labels, mask = make_case(batch, seq, width, vocab, seed=2)
    n_used = int(mask.sum())
    assert n_used * vocab > 4 * max(vocab * width, batch * seq * width)
    h, w, b = leaves(hidden, weight, bias)
    with ShapeLog() as log:
        got, _ = hidden_logps(h, w, labels, mask, bias=b, chunk_elements=chunk)
        got.sum().backward()
    allowed = {(vocab, width), (batch, seq, width), (n_used, width)}
    big = {s for s in log.shapes if torch.Size(s).numel() > chunk} - allowed
    assert big == set()
    assert (vocab, width) in log.shapes  # the gradients were made (the log is not empty)
    # The check sees a full logits tensor when there is one.
    with ShapeLog() as log:
        reference(*leaves(hidden, weight), labels, mask)[0].sum().backward()
    assert (batch, seq, vocab) in log.shapes


def test_frozen_weight_only_hidden_gets_grad():
    # LoRA-style: the head is frozen, the hidden states carry the gradient.
    hidden, weight, bias, labels, mask = make_case(3, 9, 8, 64, seed=4)
    (h,) = leaves(hidden)
    (h_ref,) = leaves(hidden)
    with ShapeLog() as log:
        got, _ = hidden_logps(h, weight, labels, mask, bias=bias, chunk_elements=64 * 3)
        got.sum().backward()
    assert weight.grad is None and bias.grad is None
    # Neither a (V, H) weight gradient nor a (V,) bias gradient was ever made.
    assert (64, 8) not in log.shapes and (64,) not in log.shapes
    reference(h_ref, weight, labels, mask, bias=bias)[0].sum().backward()
    torch.testing.assert_close(h.grad, h_ref.grad, atol=1e-5, rtol=1e-5)


def test_frozen_hidden_only_weight_gets_grad():
    hidden, weight, bias, labels, mask = make_case(3, 9, 8, 64, seed=4)
    (w,) = leaves(weight)
    (w_ref,) = leaves(weight)
    with ShapeLog() as log:
        got, _ = hidden_logps(hidden, w, labels, mask, chunk_elements=64 * 3)
        got.sum().backward()
    assert hidden.grad is None and tuple(hidden.shape) not in log.shapes
    reference(hidden, w_ref, labels, mask)[0].sum().backward()
    torch.testing.assert_close(w.grad, w_ref.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "nothing_requires_grad"])
def test_without_autograd(mode):
    hidden, weight, bias, labels, mask = make_case(3, 7, 8, 11, seed=4)
    ref, ref_n = reference(hidden, weight, labels, mask, bias=bias)
    if mode != "nothing_requires_grad":
        hidden, weight, bias = leaves(hidden, weight, bias)
    ctx = torch.inference_mode() if mode == "inference_mode" else torch.no_grad()
    if mode == "nothing_requires_grad":
        ctx = torch.enable_grad()
    with ctx:
        got, counts = hidden_logps(hidden, weight, labels, mask, bias=bias, chunk_elements=11)
    assert got.grad_fn is None and not got.requires_grad
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(counts, ref_n)


def test_int_mask_equals_bool_mask():
    hidden, weight, bias, labels, mask = make_case(3, 7, 8, 11, seed=2)
    a, na = hidden_logps(hidden, weight, labels, mask)
    b, nb = hidden_logps(hidden, weight, labels, mask.long())
    assert torch.equal(a, b) and torch.equal(na, nb)


class TinyTiedLM(torch.nn.Module):
    """Embedding -> one mixing layer -> head whose weight *is* the embedding's Parameter."""

    def __init__(self, vocab, width, seed=0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embed = torch.nn.Embedding(vocab, width)
            self.mix = torch.nn.Linear(width, width)

    def forward(self, input_ids):
        return torch.tanh(self.mix(self.embed(input_ids)))  # (B, T, H) "last hidden state"


def test_tied_embeddings_accumulate_both_gradients():
    vocab, width = 23, 8
    gen = torch.Generator().manual_seed(9)
    input_ids = torch.randint(0, vocab, (3, 10), generator=gen)
    completion = torch.zeros(3, 10, dtype=torch.bool)
    completion[:, 4:] = True
    completion[2, 8:] = False  # padding
    labels = input_ids.roll(-1, dims=1)
    mask = completion.roll(-1, dims=1)
    mask[:, -1] = False

    got_model, ref_model = TinyTiedLM(vocab, width), TinyTiedLM(vocab, width)
    assert got_model.embed.weight.requires_grad
    got, _ = hidden_logps(got_model(input_ids), got_model.embed.weight, labels, mask, chunk_elements=vocab * 2)
    with torch.no_grad():
        logits = got_model(input_ids) @ got_model.embed.weight.T
    ref, _ = reference(ref_model(input_ids), ref_model.embed.weight, labels, mask)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, sequence_logps(logits, labels, mask)[0], atol=1e-5, rtol=1e-5)
    backward_both(got, ref)
    for (name, p), q in zip(got_model.named_parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-5, msg=name)
    # Both parts are there: with the head's use detached, the embedding's gradient differs.
    lookup_only, head_only = TinyTiedLM(vocab, width), TinyTiedLM(vocab, width)
    a, _ = hidden_logps(lookup_only(input_ids), lookup_only.embed.weight.detach(), labels, mask)
    b, _ = hidden_logps(head_only(input_ids).detach(), head_only.embed.weight, labels, mask)
    backward_both(a, b)
    torch.testing.assert_close(
        lookup_only.embed.weight.grad + head_only.embed.weight.grad, got_model.embed.weight.grad, atol=1e-5, rtol=1e-5
    )
    assert lookup_only.embed.weight.grad.abs().max() > 1e-3 and head_only.embed.weight.grad.abs().max() > 1e-3


@pytest.mark.parametrize("chunk_elements", [2**22, 37])
def test_agrees_with_sequence_logps_on_explicit_logits_rolled(chunk_elements):
    # pipeline/model/scoring.py's convention: labels = input_ids rolled left, mask rolled, last column off.
    batch, seq, width, vocab = 3, 11, 8, 37
    hidden, weight, bias, _, _ = make_case(batch, seq, width, vocab, seed=11)
    gen = torch.Generator().manual_seed(12)
    input_ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    completion = torch.zeros(batch, seq, dtype=torch.bool)
    for row, (lo, hi) in enumerate([(3, 11), (5, 9), (1, 6)]):
        completion[row, lo:hi] = True
    labels = input_ids.roll(-1, dims=1)
    mask = completion.roll(-1, dims=1)
    mask[:, -1] = False
    h1, w1, b1 = leaves(hidden, weight, bias)
    h2, w2, b2 = leaves(hidden, weight, bias)
    got, got_n = hidden_logps(h1, w1, labels, mask, bias=b1, chunk_elements=chunk_elements)
    ref, ref_n = sequence_logps(F.linear(h2, w2, b2), labels, mask, chunk_elements=chunk_elements)
    assert torch.equal(got_n, ref_n)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    backward_both(got, ref)
    for a, b in [(h1, h2), (w1, w2), (b1, b2)]:
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5)


def _tiny_batch(vocab, seed=0):
    """Right-padded ids, attention mask, and the rolled labels/mask of their completions."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (3, 12), generator=gen)
    attention = torch.ones(3, 12, dtype=torch.long)
    completion = torch.zeros(3, 12, dtype=torch.bool)
    for row, (prompt, end) in enumerate([(4, 12), (2, 9), (6, 10)]):
        attention[row, end:] = 0
        input_ids[row, end:] = 0
        completion[row, prompt:end] = True
    labels = input_ids.roll(-1, dims=1)
    mask = completion.roll(-1, dims=1)
    mask[:, -1] = False
    return input_ids, attention, labels, mask


def _tiny_hf_model(kind, tied):
    import transformers as tf

    common = dict(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.5,
    )  # logits of size ~2, so a cap of 2 bends them
    if kind == "llama":
        config, cls, kwargs = tf.LlamaConfig(**common), tf.LlamaForCausalLM, {}
    elif kind == "gemma2":
        config = tf.Gemma2Config(**common, final_logit_softcapping=2.0, sliding_window=8)
        config._attn_implementation = "eager"
        cls, kwargs = tf.Gemma2ForCausalLM, {"final_logit_softcap": 2.0}
    elif kind == "cohere":
        config = tf.CohereConfig(**common, logit_scale=0.25)
        cls, kwargs = tf.CohereForCausalLM, {"logit_scale": 0.25}
    else:  # granite divides: pass the inverse
        config = tf.GraniteConfig(**common, logits_scaling=4.0)
        cls, kwargs = tf.GraniteForCausalLM, {"logit_scale": 1 / 4.0}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = cls(config)
    return model.float().train(False), kwargs


@pytest.mark.parametrize(
    ("kind", "tied"), [("llama", False), ("llama", True), ("gemma2", True), ("cohere", True), ("granite", False)]
)
def test_hf_model_matches_its_own_logits(kind, tied):
    """model.model(...).last_hidden_state + lm_head.weight == model(...).logits, value and every grad."""
    got_model, kwargs = _tiny_hf_model(kind, tied)
    ref_model, _ = _tiny_hf_model(kind, tied)
    assert (got_model.lm_head.weight is got_model.model.embed_tokens.weight) == tied
    input_ids, attention, labels, mask = _tiny_batch(97)

    hidden = got_model.model(input_ids=input_ids, attention_mask=attention, use_cache=False).last_hidden_state
    got, got_n = hidden_logps(hidden, got_model.lm_head.weight, labels, mask, **kwargs, chunk_elements=97 * 5)
    logits = ref_model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits
    ref, ref_n = sequence_logps(logits, labels, mask)
    assert torch.equal(got_n, ref_n)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    if kwargs:  # the scale / cap is not a no-op on these logits
        plain, _ = hidden_logps(hidden.detach(), got_model.lm_head.weight.detach(), labels, mask)
        assert (plain - ref).abs().max() > 1e-2
    backward_both(got, ref)
    n_grads = 0
    for (name, p), q in zip(got_model.named_parameters(), ref_model.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            n_grads += 1
            # float32 sums through two layers: 1e-5 of the gradient's largest entry (~10 here).
            atol = 1e-5 * max(1.0, q.grad.abs().max().item())
            torch.testing.assert_close(p.grad, q.grad, atol=atol, rtol=1e-5, msg=name)
    assert n_grads == len(list(ref_model.parameters()))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"hidden": torch.randn(3, 8)}, "hidden"),
        ({"hidden": torch.randint(0, 3, (3, 7, 4))}, "hidden"),
        ({"hidden": [[[0.0]]]}, "hidden"),
        ({"weight": torch.randn(11, 5)}, "weight"),
        ({"weight": torch.randn(11)}, "weight"),
        ({"weight": torch.randn(0, 4)}, "weight"),
        ({"weight": torch.randn(11, 4, dtype=torch.float64)}, "weight"),
        ({"weight": torch.randn(11, 4, device="meta")}, "weight"),
        ({"weight": torch.randint(0, 3, (11, 4))}, "weight"),
        ({"bias": torch.randn(10)}, "bias"),
        ({"bias": torch.randn(11, dtype=torch.bfloat16)}, "bias"),
        ({"bias": torch.randn(11, device="meta")}, "bias"),
        ({"labels": torch.zeros(3, 7, dtype=torch.int32)}, "labels"),
        ({"labels": torch.zeros(3, 6, dtype=torch.long)}, "labels"),
        ({"labels": torch.zeros(3, 7, dtype=torch.long, device="meta")}, "labels"),
        ({"mask": torch.ones(3, 8, dtype=torch.bool)}, "mask"),
        ({"mask": torch.ones(3, 7)}, "mask"),
        ({"mask": torch.full((3, 7), 2)}, "mask"),
        ({"mask": torch.ones(3, 7, dtype=torch.bool, device="meta")}, "mask"),
        ({"logit_scale": float("nan")}, "logit_scale"),
        ({"logit_scale": True}, "logit_scale"),
        ({"logit_scale": "0.5"}, "logit_scale"),
        ({"final_logit_softcap": 0.0}, "final_logit_softcap"),
        ({"final_logit_softcap": -30.0}, "final_logit_softcap"),
        ({"final_logit_softcap": float("inf")}, "final_logit_softcap"),
        ({"chunk_elements": 0}, "chunk_elements"),
        ({"chunk_elements": 2.0**22}, "chunk_elements"),
    ],
)
def test_bad_arguments(kwargs, name):
    args = {
        "hidden": torch.randn(3, 7, 4),
        "weight": torch.randn(11, 4),
        "labels": torch.zeros(3, 7, dtype=torch.long),
        "mask": torch.ones(3, 7, dtype=torch.bool),
        "bias": torch.randn(11),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=f"^{name}"):
        hidden_logps(args.pop("hidden"), args.pop("weight"), args.pop("labels"), args.pop("mask"), **args)


@pytest.mark.parametrize("bad", [-100, -1, 11, 12])
def test_label_out_of_range_at_used_position(bad):
    hidden, weight = torch.randn(3, 7, 4), torch.randn(11, 4)
    labels = torch.zeros(3, 7, dtype=torch.long)
    mask = torch.ones(3, 7, dtype=torch.bool)
    labels[2, 4] = bad
    with pytest.raises(ValueError, match=r"^labels: .*\(2, 4\)"):
        hidden_logps(hidden, weight, labels, mask)
    mask[2, 4] = False  # the same label at a masked-out position is ignored
    hidden_logps(hidden, weight, labels, mask)
