"""The one scoring path (``pipeline.model.scoring``) against the textbook ``log_softmax(logits).gather``.

The reference is computed one unpadded sequence at a time from the model's own
full logits in float64; the scoring path runs padded, packed or with a shared
prompt, and takes its log-probs from the hidden states through the swapped
head. Values and parameter gradients must agree within float32 rounding, for
heads that are untied, tied, biased, soft-capped (Gemma 2) and scaled (Cohere,
Granite), on Llama, Qwen2, Phi, Gemma 2, Cohere, Granite and GPT-2 shapes.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers as T

from prefpool.pipeline.model import lm_head, prompt_cache, scoring
from prefpool.pipeline.model.scoring import completion_logps, plan_batches, plan_scoring, score_pairs, score_tokens

torch.set_num_threads(1)

VOCAB = 97  # odd, and not a multiple of any tile
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
CONFIGS = {
    "llama": lambda: T.LlamaConfig(**COMMON),
    "llama-tied": lambda: T.LlamaConfig(**COMMON, tie_word_embeddings=True),
    "qwen2": lambda: T.Qwen2Config(**COMMON),
    "phi-head-bias": lambda: T.PhiConfig(**COMMON),
    "gemma2-softcap": lambda: T.Gemma2Config(**COMMON, head_dim=8, final_logit_softcapping=3.0),
    "cohere-scale": lambda: T.CohereConfig(**COMMON, logit_scale=0.25),
    "granite-scale": lambda: T.GraniteConfig(**COMMON, logits_scaling=4.0),
    "gpt2-tied": lambda: T.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2
    ),
}


def _model(name: str, **config) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = CONFIGS[name]()
    for key, value in config.items():
        setattr(cfg, key, value)
    return T.AutoModelForCausalLM.from_config(cfg).eval()


def _pairs(seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Ragged pairs; two share a prompt; one prompt of a single token."""
    gen = torch.Generator().manual_seed(seed)

    def tokens(n):
        return torch.randint(1, VOCAB, (n,), generator=gen).tolist()

    pairs = [(tokens(p), tokens(c)) for p, c in [(3, 4), (1, 5), (6, 2), (3, 7), (2, 1)]]
    return [*pairs, (pairs[0][0], tokens(3))]


def _textbook(model, pairs) -> torch.Tensor:
    """``(N,)`` float64: per pair alone, full logits, log_softmax, gather of the next tokens."""
    out = []
    for prompt, completion in pairs:
        ids = torch.tensor([prompt + completion])
        logp = model(ids).logits[0, :-1].double().log_softmax(-1).gather(1, ids[0, 1:, None])[:, 0]
        out.append(logp[len(prompt) - 1 :].sum())
    return torch.stack(out)


def _grads(model, loss) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_values_and_gradients_equal_log_softmax_gather(name):
    model = _model(name)
    pairs = _pairs()
    assert lm_head.output_head(model) is not None  # every one of these runs from hidden states
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a fallback to full logits warns: fail on it
        with torch.no_grad():
            want = _textbook(model, pairs)
            padded, counts = completion_logps(model, pairs, 0)
            packed, packed_counts = completion_logps(model, pairs, 0, packing=True)
            shared, tokens = score_tokens(model, pairs, 0, share_prompts=True, max_tokens=20)
    assert counts.tolist() == packed_counts.tolist() == [len(c) for _, c in pairs]
    for got in (padded, packed, shared):
        torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=0)
    torch.testing.assert_close(torch.stack([t.sum() for t in tokens]).double(), want, atol=2e-5, rtol=0)
    assert [len(t) for t in tokens] == [len(c) for _, c in pairs]

    weights = torch.linspace(0.5, 1.5, len(pairs), dtype=torch.float64)  # a gradient that weighs pairs apart
    want_grads = _grads(model, (_textbook(model, pairs) * weights).sum())
    for packing in (False, True):
        got = completion_logps(model, pairs, 0, packing=packing)[0].double()
        got_grads = _grads(model, (got * weights).sum())
        assert len(got_grads) == len(want_grads) > 0
        for g, w in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(g.double(), w.double(), rtol=1e-4, atol=1e-6)


def test_the_head_never_makes_full_logits(monkeypatch):
    """After the one-time check, the head's own ``nn.Linear.forward`` (the (B, T, V) logits) never runs."""
    model = _model("llama")
    pairs = _pairs()
    completion_logps(model, pairs, 0)  # the first call checks the head against the model's logits
    head = model.get_output_embeddings()
    calls = []
    real = torch.nn.Linear.forward

    def spy(self, x):
        if self is head:
            calls.append(tuple(x.shape))
        return real(self, x)

    monkeypatch.setattr(torch.nn.Linear, "forward", spy)
    logps, _ = completion_logps(model, pairs, 0)
    logps.sum().backward()
    score_pairs(model, pairs, 0, share_prompts=True)
    assert calls == []
    assert completion_logps(model, pairs, 0, method="logits")[0].shape == (len(pairs),)
    assert len(calls) == 1  # the plain path does use it: the spy sees it


class _HalvedLogits(T.LlamaForCausalLM):
    """A head that does something after its matmul that prefpool cannot know: logits / 2."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits / 2
        return out


def test_an_unknown_head_transform_falls_back_to_full_logits():
    torch.manual_seed(0)
    model = _HalvedLogits(T.LlamaConfig(**COMMON)).eval()
    pairs = _pairs()
    with pytest.warns(UserWarning, match="differ from the model's own logits"):
        got, _ = completion_logps(model, pairs, 0)
    with torch.no_grad():
        torch.testing.assert_close(got.detach().double(), _textbook(model, pairs), atol=2e-5, rtol=0)
    with pytest.raises(ValueError, match="method"):
        completion_logps(model, pairs, 0, method="logit")


def test_lora_adapters_and_a_lora_head():
    """peft wrappers are seen through; adapters on the body train through the hidden path; an adapter
    on the head itself makes it not a plain linear layer: scored through the full logits, correctly."""
    peft = pytest.importorskip("peft")
    pairs = _pairs()
    for targets, hidden, trained in ((["q_proj", "v_proj"], True, 8), (["q_proj", "lm_head"], False, 6)):
        base = _model("llama")
        lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
        model = peft.get_peft_model(base, lora)
        assert (lm_head.output_head(model) is not None) is hidden
        if not hidden:
            with pytest.raises(ValueError, match="not a plain nn.Linear"):
                completion_logps(model, pairs, 0, method="hidden")
        want = _grads(model, _textbook(model, pairs).sum())
        got, _ = completion_logps(model, pairs, 0)
        with torch.no_grad():
            torch.testing.assert_close(got.double(), _textbook(model, pairs), atol=2e-5, rtol=0)
        grads = _grads(model, got.sum())
        assert len(grads) == len(want) == trained  # A and B of every adapted module
        for g, w in zip(grads, want, strict=True):
            torch.testing.assert_close(g.double(), w.double(), rtol=1e-4, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients():
    pairs = _pairs()
    plain = _model("llama").train()
    want = _grads(plain, completion_logps(plain, pairs, 0)[0].sum())
    checkpointed = _model("llama").train()
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    got = _grads(checkpointed, completion_logps(checkpointed, pairs, 0)[0].sum())
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


def test_bf16_autocast_agrees_with_the_full_logits_path():
    """Under bf16 autocast the head's matmul runs in bf16 as nn.Linear's would: values and gradients
    close to the full-logits path under the same autocast (bf16 rounding apart), far from float32 noise."""
    model = _model("llama")
    pairs = _pairs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain, _ = completion_logps(model, pairs, 0, method="logits")
        hidden, _ = completion_logps(model, pairs, 0, method="hidden")
    torch.testing.assert_close(hidden, plain, atol=0.05, rtol=0.01)
    want = torch.cat([g.flatten() for g in _grads(model, plain.sum())])
    got = torch.cat([g.flatten() for g in _grads(model, hidden.sum())])
    assert torch.nn.functional.cosine_similarity(got, want, dim=0) > 0.999
    assert got.dtype == torch.float32  # gradients in the parameters' dtype


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packing_equals_padding(attention):
    """Packed end to end, position ids restarting per sequence: transformers' attention keeps the
    sequences apart (a block-diagonal mask for sdpa/eager); a changed neighbour changes nothing."""
    model = _model("llama")
    model.config._attn_implementation = attention
    pairs = _pairs()
    pairs.insert(3, ([], [3, 4, 5]))  # no prompt: its first token has no position to be predicted from
    padded, padded_counts = completion_logps(model, pairs, 0, packing=False)
    packed, packed_counts = completion_logps(model, pairs, 0, packing=True)
    assert packed_counts.tolist() == padded_counts.tolist() and packed_counts[3] == 2
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=0)
    changed = [(pairs[0][0], [5, 6, 7, 8, 9]), *pairs[1:]]
    again, _ = completion_logps(model, changed, 0, packing=True)
    torch.testing.assert_close(again[1:], packed[1:], atol=1e-5, rtol=0)
    assert not scoring.packing_default(model)  # sdpa/eager pad by default; flash-attention packs


def test_shared_prompts_equal_unshared_and_run_each_prompt_once(monkeypatch):
    """Many answers per prompt, some prompts of one token (not shareable), tiny and large budgets."""
    model = _model("llama")
    gen = torch.Generator().manual_seed(4)
    prompts = [torch.randint(1, VOCAB, (n,), generator=gen).tolist() for n in (5, 1, 9, 3)]
    pairs = [(p, torch.randint(1, VOCAB, (int(k),), generator=gen).tolist()) for p in prompts for k in (2, 7, 1, 4)]
    prompt_runs = []
    real = prompt_cache.shared_prompt_logps

    def counted(model, batch, pad, **kw):
        prompt_runs.append(len({tuple(p) for p, _ in batch}))
        return real(model, batch, pad, **kw)

    monkeypatch.setattr(scoring, "shared_prompt_logps", counted)
    want_sums, want_tokens = score_tokens(model, pairs, 0)
    assert prompt_runs == []
    for budget in (1, 40, 10_000):
        prompt_runs.clear()
        sums, tokens = score_tokens(model, pairs, 0, share_prompts=True, max_tokens=budget)
        torch.testing.assert_close(sums, want_sums, atol=1e-5, rtol=0)
        for got, want in zip(tokens, want_tokens, strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        if budget == 10_000:
            assert prompt_runs == [3]  # one batch, the three shareable prompts run once each
        assert sum(prompt_runs) >= 3


def test_a_sliding_window_cache_is_not_shared_but_scored():
    """Gemma 2's sliding-window layers keep only the last keys: such a cache is not reused."""
    model = _model("gemma2-softcap", sliding_window=2)
    pairs = _pairs()
    got = score_pairs(model, pairs, 0, share_prompts=True)
    with torch.no_grad():
        torch.testing.assert_close(got.double(), _textbook(model, pairs), atol=2e-5, rtol=0)


def test_plan_batches_keeps_the_budget_and_the_order():
    widths = [5, 1, 4, 4, 2, 9]
    assert plan_batches(widths, 8) == [[1, 4], [2, 3], [0], [5]]  # 9 > budget: a batch of its own
    # Any order: the widest row so far sets the padded width.
    by_index = plan_batches(widths, 10, key=lambda i: i)
    assert by_index == [[0, 1], [2, 3], [4], [5]]
    for batch in by_index[:-1]:
        assert max(widths[i] for i in batch) * len(batch) <= 10
    pairs = [([1, 2], [3]), ([1], [4, 5]), ([1, 2], [6, 7, 8]), ([9, 9, 9], [1])]
    shared, plain = plan_scoring(pairs, 100, share_prompts=True)
    assert shared == [[0, 2, 3]] and plain == [[1]]  # a one-token prompt cannot be shared
    assert plan_scoring(pairs, 100, share_prompts=False) == ([], [[0, 1, 3, 2]])
