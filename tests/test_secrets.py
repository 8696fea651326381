"""The redaction layer (``prefpool.core.secrets``): which keys and values are secrets, and what is kept."""

from __future__ import annotations

import json

import pytest

from prefpool.core.secrets import REDACTED, is_secret_key, redact, redact_text, remember_secret

HF = "hf_" + "a1B2c3D4e5" * 3 + "f6g7"  # 37 characters, a Hugging Face token's shape


@pytest.mark.parametrize(
    "key",
    [
        "token",
        "hf_token",
        "HF_TOKEN",
        "access-token",
        "apiKey",
        "api_key",
        "OPENAI_API_KEY",
        "AWS_SECRET_ACCESS_KEY",
        "password",
        "db_passwd",
        "client_secret",
        "Authorization",
        "credentials",
        "cookie",
    ],
)
def test_credential_keys(key):
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "tokens",
        "num_tokens",
        "max_new_tokens",
        "batch_tokens",
        "tokens_per_s",
        "eos_token",
        "pad_token",
        "bos_token",
        "eos_token_ids",
        "pad_token_id",
        "tokenizer_sha256",
        "cache_key",
        "rank_key",
        "text_key",
        "model_key",
        "secrets_found",
        3,
    ],
)
def test_ordinary_keys_are_kept(key):
    assert not is_secret_key(key)


def test_redact_replaces_values_under_secret_keys_and_token_shaped_strings_anywhere():
    record = {
        "engine_args": {"hf_token": "plain-words-but-secret", "tensor_parallel_size": 2, "api_key": None},
        "note": f"made with {HF} at noon",
        "headers": ["Authorization: Bearer abcdefgh12345678"],
        "eos_token": "<|end|>",
        "tuple": ("sk-" + "x" * 24, 1.5),
    }
    out = redact(record)
    assert out == {
        "engine_args": {"hf_token": REDACTED, "tensor_parallel_size": 2, "api_key": None},
        "note": f"made with {REDACTED} at noon",
        "headers": [f"Authorization: {REDACTED}"],
        "eos_token": "<|end|>",
        "tuple": (REDACTED, 1.5),
    }
    assert record["engine_args"]["hf_token"] == "plain-words-but-secret"  # the value in use is untouched


def test_a_value_seen_under_a_secret_key_is_scrubbed_from_later_text():
    """The value is not token-shaped; once redact() has met it under `password`, text mentioning it loses it."""
    redact({"password": "correct-horse-battery"})
    assert redact_text("login failed for correct-horse-battery") == f"login failed for {REDACTED}"


def test_secret_environment_values_are_scrubbed(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef-not-shaped")
    monkeypatch.setenv("PREFPOOL_SOMETHING", "0123456789-ordinary")  # not a secret name: kept
    assert redact_text("key 0123456789abcdef-not-shaped, 0123456789-ordinary") == f"key {REDACTED}, 0123456789-ordinary"


def test_short_values_are_not_scrubbed_from_text():
    remember_secret("abc")  # too short: it would cut ordinary words
    assert redact_text("abc abc") == "abc abc"


def test_redaction_makes_identities_independent_of_the_token():
    from prefpool.pipeline.io.manifest import RunIdentity

    def identity(token: str) -> dict:
        return RunIdentity("logprobs", "logprobs", {"engine_args": {"hf_token": token}}, {}, "0/1", 1).to_json()

    assert identity(HF) == identity("hf_" + "Z" * 34)
    assert HF not in json.dumps(identity(HF))
