"""The one redaction layer: credentials stay in memory, never in a file or a log line.

Everything prefpool writes or prints about a run (manifests and run identities,
shard metadata, provenance, dataset and model cards, metrics, tracker configs,
``train_summary.json``, eval results, state files, log lines, error messages)
goes through ``redact`` (structured data) or ``redact_text`` (text) first. The
values a run *uses* are untouched: an ``hf_token`` engine option still reaches
``vllm.LLM``; only what is recorded about it is replaced by ``REDACTED``.

What counts as a secret:

* the value of a key that names a credential (``is_secret_key``): the last
  word of the key is ``token``, ``password``, ``secret``, ``authorization``,
  ``credentials``, ``cookie``, ... or its last two words are ``api key``,
  ``access key``, ``secret key``, ``private key`` (``hf_token``, ``apiKey``,
  ``AWS_SECRET_ACCESS_KEY``); the tokenizer's special-token names
  (``eos_token``, ``pad_token``, ...) and counts (``tokens``, ``max_new_tokens``)
  are not credentials;
* any substring that has the shape of a known kind of token (``TOKEN_PATTERNS``:
  Hugging Face ``hf_...``, OpenAI ``sk-...``, GitHub, Slack, AWS, ``Bearer ...``);
* the user-info of a URL (``https://alice:PASSWORD@host/``) and the value of a
  query-string parameter that names a credential or a signature (``?token=``,
  ``X-Amz-Signature=``, ``X-Amz-Credential=``, ``sig=``, ``key=``);
* any substring equal to a value seen under a secret key in this process, or
  held by an environment variable whose name is a secret key (``HF_TOKEN``,
  ``WANDB_API_KEY``), when at least ``MIN_SECRET_LENGTH`` characters long.

Because the marker is a constant, a run's identity (``RunIdentity.to_json``) is
the same whatever token it was given: a new token never invalidates a finished
or half-finished output.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "REDACTED",
    "TOKEN_PATTERNS",
    "URL_QUERY_PARAM",
    "URL_USERINFO",
    "is_secret_key",
    "redact",
    "redact_text",
    "remember_secret",
]

REDACTED = "<redacted>"
MIN_SECRET_LENGTH = 8  # shorter values would replace ordinary words

_LAST_WORDS = {
    "token",
    "password",
    "passwd",
    "passphrase",
    "secret",
    "authorization",
    "credential",
    "credentials",
    "cookie",
    "apikey",
}
_LAST_TWO = {("api", "key"), ("access", "key"), ("secret", "key"), ("private", "key"), ("auth", "key")}
# Tokenizer vocabulary words, not credentials.
_NOT_SECRET = {
    "bos_token",
    "eos_token",
    "pad_token",
    "unk_token",
    "sep_token",
    "cls_token",
    "mask_token",
    "pad_token_type",
}
TOKEN_PATTERNS = (
    re.compile(r"\bhf_[A-Za-z0-9]{20,}"),  # Hugging Face user access token
    re.compile(r"\bapi_org_[A-Za-z0-9]{20,}"),  # Hugging Face organisation token
    re.compile(r"\bsk-[A-Za-z0-9_-]{20,}"),  # OpenAI and similar
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}"),  # GitHub
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{20,}"),
    re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),  # Slack
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}"),  # an Authorization header's value
)
# A URL's user-info (``https://alice:PASSWORD@host/``, ``https://TOKEN@host/``): all of it is replaced.
URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/?#@]+@")
# A query-string parameter whose name names a credential (``?token=``, ``&X-Amz-Credential=``) or a
# signed URL's signature (``X-Amz-Signature``, ``sig``, ``X-Goog-Signature``, ``key``): its value is replaced.
URL_QUERY_PARAM = re.compile(r"([?&;])([A-Za-z0-9_.-]+)=([^&#\s\"']+)")
_SIGNATURE_WORDS = {"signature", "sig", "key", "code"}
_seen: set[str] = set()  # values met under secret keys in this process


def _words(key: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)  # camelCase -> camel_Case
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def is_secret_key(key: object) -> bool:
    """Whether a mapping key (or an environment variable's name) names a credential."""
    if not isinstance(key, str):
        return False
    words = _words(key)
    if not words or "_".join(words) in _NOT_SECRET:
        return False
    return words[-1] in _LAST_WORDS or tuple(words[-2:]) in _LAST_TWO


def remember_secret(value: object) -> None:
    """Scrub ``value`` from every later ``redact_text`` in this process (e.g. a token read from a file)."""
    if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH:
        _seen.add(value)


def _known_values() -> list[str]:
    env = [v for k, v in os.environ.items() if is_secret_key(k) and len(v) >= MIN_SECRET_LENGTH]
    return sorted({*env, *_seen}, key=len, reverse=True)  # longest first: a value inside another


def redact_text(text: str, *, known: list[str] | None = None) -> str:
    """``text`` with every token-shaped substring and every known secret value replaced by ``REDACTED``."""
    if not isinstance(text, str) or not text:
        return text
    for value in _known_values() if known is None else known:
        if value in text:
            text = text.replace(value, REDACTED)
    for pattern in TOKEN_PATTERNS:
        text = pattern.sub(REDACTED, text)
    if "://" in text:
        text = URL_USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    if "=" in text:
        text = URL_QUERY_PARAM.sub(_query_param, text)
    return text


def _query_param(match: re.Match) -> str:
    sep, name, value = match.groups()
    words = _words(name)
    secret = is_secret_key(name) or (words and words[-1] in _SIGNATURE_WORDS)
    return f"{sep}{name}={REDACTED}" if secret and value != REDACTED else match.group(0)


def redact(obj: Any) -> Any:
    """A copy of a JSON-like value with the secrets replaced (see the module docstring).

    Mappings become dicts, tuples stay tuples; other values pass through unchanged.
    """
    _collect(obj)
    return _redact(obj, _known_values())


def _collect(obj: Any) -> None:
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if is_secret_key(key):
                remember_secret(value)
            _collect(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _collect(value)


def _redact(obj: Any, known: list[str]) -> Any:
    if isinstance(obj, Mapping):
        return {
            _redact(k, known): REDACTED if is_secret_key(k) and v is not None else _redact(v, known)
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [_redact(v, known) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_redact(v, known) for v in obj)
    if isinstance(obj, str):
        return redact_text(obj, known=known)
    return obj
