"""Tiny Llama builder: loads back offline, deterministic, chat-template prefix property."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefpool.testing import (
    CHAT_TEMPLATE,
    EOS_TOKEN,
    SPECIAL_TOKENS,
    build_tiny_llama,
    default_corpus,
    train_tokenizer,
)

torch.set_num_threads(1)

SINGLE_TURN = [{"role": "user", "content": "Repeat the word apple."}]
WITH_SYSTEM = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Name a colour."},
]
MULTI_TURN = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 plus 3?"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "And 5 plus 5?"},
]
# Answers chosen to tempt BPE into merging across the prompt/answer boundary:
# leading spaces and newlines, punctuation, digits, non-ASCII, empty.
ANSWERS = ["apple", " apple", "\nApple!", "10", " \n 42.", "héllo wörld ✓", ""]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def model(tiny_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_dir)


def _ids(tokenizer, messages, **kwargs) -> list[int]:
    return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False, **kwargs)


def test_loads_back_with_auto_classes(tiny_dir, tokenizer, model):
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in tiny_dir.iterdir()
    }
    assert model.config.model_type == "llama"
    assert model.get_input_embeddings().num_embeddings >= len(tokenizer)
    assert tokenizer.eos_token == EOS_TOKEN
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.eos_token_id == model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    # Every special token is one token, and text round-trips through the byte-level BPE.
    for tok in SPECIAL_TOKENS:
        assert len(tokenizer(tok, add_special_tokens=False).input_ids) == 1
    text = "Héllo, wörld! 123 ✓\n\tend"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids) == text


def test_head_dim_is_64(model):
    cfg = model.config
    assert cfg.head_dim == cfg.hidden_size // cfg.num_attention_heads == 64
    assert model.model.layers[0].self_attn.q_proj.out_features == cfg.num_attention_heads * 64


def test_head_dim_below_64_rejected(tmp_path):
    with pytest.raises(ValueError, match="^num_heads"):
        build_tiny_llama(tmp_path, hidden_size=128, num_heads=4)


def test_same_seed_same_weights_different_seed_differs(tmp_path):
    kw = dict(hidden_size=64, num_heads=1, intermediate_size=64, num_layers=1, vocab_size=300)
    before = torch.random.get_rng_state()
    states = [
        AutoModelForCausalLM.from_pretrained(build_tiny_llama(tmp_path / name, seed=seed, **kw)).state_dict()
        for name, seed in [("a", 0), ("b", 0), ("c", 1)]
    ]
    assert torch.equal(torch.random.get_rng_state(), before), "build_tiny_llama moved the global RNG"
    assert states[0].keys() == states[1].keys() == states[2].keys()
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name
    # Norm weights are initialised to ones for every seed; the projections must differ.
    differing = [n for n in states[0] if not torch.equal(states[0][n], states[2][n])]
    assert "model.embed_tokens.weight" in differing and "lm_head.weight" in differing
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("prompt", [SINGLE_TURN, WITH_SYSTEM, MULTI_TURN], ids=["single", "system", "multi"])
@pytest.mark.parametrize("answer", ANSWERS)
def test_chat_template_prompt_is_prefix(tokenizer, prompt, answer):
    full = prompt + [{"role": "assistant", "content": answer}]
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(full, tokenize=False)
    assert full_text.startswith(prompt_text)
    assert full_text == prompt_text + answer + EOS_TOKEN

    prompt_ids = _ids(tokenizer, prompt, add_generation_prompt=True)
    full_ids = _ids(tokenizer, full)
    assert full_ids[: len(prompt_ids)] == prompt_ids
    completion = full_ids[len(prompt_ids) :]
    # The completion is the answer's own tokens, then end-of-turn: nothing leaks across.
    assert completion == tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    assert full_ids.count(tokenizer.bos_token_id) == 1 and full_ids[0] == tokenizer.bos_token_id


def test_chat_template_renders_every_turn(tokenizer):
    text = tokenizer.apply_chat_template(MULTI_TURN, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|bos|><|system|>Be brief.<|end|><|user|>What is 2 plus 3?<|end|>"
        "<|assistant|>5<|end|><|user|>And 5 plus 5?<|end|><|assistant|>"
    )
    assert not tokenizer.apply_chat_template(SINGLE_TURN, tokenize=False).endswith("<|assistant|>")
    with pytest.raises(Exception, match="unknown role"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_train_tokenizer_standalone():
    tok = train_tokenizer(default_corpus(50), vocab_size=300)
    assert len(tok) <= 300
    assert tok.chat_template == CHAT_TEMPLATE
    with pytest.raises(ValueError, match="^vocab_size"):
        train_tokenizer(["abc"], vocab_size=100)


def test_generate_runs_and_stops_at_end_of_turn(tiny_dir, tokenizer):
    """Fit one answer, then greedy generation must reproduce it and stop at <|end|>."""
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)  # private copy: it gets trained
    prompt_ids = _ids(tokenizer, SINGLE_TURN, add_generation_prompt=True)
    full_ids = _ids(tokenizer, SINGLE_TURN + [{"role": "assistant", "content": "apple"}])
    ids = torch.tensor([full_ids])
    labels = ids.clone()
    labels[:, : len(prompt_ids)] = -100

    # Random weights first: generate() runs and respects max_new_tokens.
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=5, do_sample=False)
    assert out.shape[1] <= len(prompt_ids) + 5

    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        opt.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
    model.eval()
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=20, do_sample=False)
    new = out[0, len(prompt_ids) :].tolist()
    assert new == full_ids[len(prompt_ids) :]  # "apple" then <|end|>, and nothing after
    assert new[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(new, skip_special_tokens=True) == "apple"
