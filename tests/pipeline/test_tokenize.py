"""The one prompt/completion split shared by the trainer and the logprobs stage."""

from __future__ import annotations

import copy

import pytest

from prefpool.pipeline.model.tokenize import PromptTooLongError, encode_pair, template_hash
from prefpool.testing import default_corpus, train_tokenizer

PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Repeat the word apple."}]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(default_corpus())


def test_split_is_the_template_prefix_and_ends_with_end_of_turn(tok):
    pair = encode_pair(tok, PROMPT, "apple apple", max_length=None)
    full = tok.apply_chat_template(PROMPT + [{"role": "assistant", "content": "apple apple"}], return_dict=False)
    assert pair.prompt_ids + pair.completion_ids == list(full)
    assert pair.prompt_ids == list(tok.apply_chat_template(PROMPT, add_generation_prompt=True, return_dict=False))
    assert pair.completion_ids[-1] == tok.eos_token_id
    assert tok.decode(pair.completion_ids[:-1]) == "apple apple"
    assert not pair.truncated


def test_completion_tail_is_cut_to_max_length(tok):
    whole = encode_pair(tok, PROMPT, "the cat sees a red apple and the blue sky", max_length=None)
    n = len(whole.prompt_ids) + len(whole.completion_ids)
    exact = encode_pair(tok, PROMPT, "the cat sees a red apple and the blue sky", max_length=n)
    assert exact == whole  # a pair that fits exactly is not truncated
    cut = encode_pair(tok, PROMPT, "the cat sees a red apple and the blue sky", max_length=len(whole.prompt_ids) + 2)
    assert cut.truncated and cut.prompt_ids == whole.prompt_ids
    assert cut.completion_ids == whole.completion_ids[:2]


def test_prompt_that_leaves_no_completion_token_is_an_error(tok):
    n = len(encode_pair(tok, PROMPT, "x", max_length=None).prompt_ids)
    assert encode_pair(tok, PROMPT, "apple", max_length=n + 1).completion_ids  # one token still fits
    with pytest.raises(PromptTooLongError, match=f"max_length={n}"):
        encode_pair(tok, PROMPT, "apple", max_length=n)


def test_template_without_the_prefix_property_is_named(tok):
    broken = copy.deepcopy(tok)
    broken.name_or_path = "my-broken-tok"
    # The generation prompt opens a system turn, the full rendering an assistant turn.
    broken.chat_template = tok.chat_template.replace(
        "{% if add_generation_prompt %}{{ '<|assistant|>' }}", "{% if add_generation_prompt %}{{ '<|system|>' }}"
    )
    assert broken.chat_template != tok.chat_template
    with pytest.raises(ValueError, match="my-broken-tok.*prefix"):
        encode_pair(broken, PROMPT, "apple", max_length=None)
    with pytest.raises(ValueError, match="truncation"):
        encode_pair(tok, PROMPT, "apple", max_length=None, truncation="prompt")


def test_template_hash_tracks_template_and_vocab(tok):
    assert template_hash(tok) == template_hash(copy.deepcopy(tok))
    other_template = copy.deepcopy(tok)
    other_template.chat_template = tok.chat_template + " "
    assert template_hash(other_template) != template_hash(tok)
    assert template_hash(train_tokenizer(default_corpus(seed=1), vocab_size=300)) != template_hash(tok)


def test_template_hash_of_a_tokenizer_without_a_rust_backend_uses_its_vocab():
    class Slow:
        chat_template = "{{ messages }}"
        special_tokens_map = {"eos_token": "</s>"}

        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return self.vocab

    assert template_hash(Slow({"a": 0, "b": 1})) == template_hash(Slow({"b": 1, "a": 0}))
    assert template_hash(Slow({"a": 0, "b": 1})) != template_hash(Slow({"a": 1, "b": 0}))
