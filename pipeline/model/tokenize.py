"""The one place a (prompt, completion) pair becomes token ids: the trainer and ``logprobs`` both call it.

Cached reference log-probs are only comparable with the policy's log-probs if
both were computed on the same tokens, so there is exactly one split:

* prompt ids = ``apply_chat_template(prompt, add_generation_prompt=True)``;
* completion ids = the rest of ``apply_chat_template(prompt + [assistant answer])``
  (so they end with the template's end-of-turn token).

The split is only defined when the first rendering is a token prefix of the
second; a template that breaks this (e.g. one that strips or re-tokenizes
across the boundary) is rejected with an error naming the tokenizer.

Truncation policy ``"completion"`` (the only one): when prompt + completion is
longer than ``max_length`` tokens, the completion's tail is cut so the pair is
exactly ``max_length`` long, and ``truncated`` is True. The prompt is never cut:
a prompt that leaves fewer than one completion token raises
``PromptTooLongError``; the caller decides whether that drops the pair or
stops the run (``logprobs(long_prompts="drop" | "error")``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from prefpool.core.errors import ConfigError, InputError

TRUNCATION_POLICIES = ("completion",)


class PromptTooLongError(ValueError):
    """The prompt alone leaves no room for a single completion token within ``max_length``."""


class ChatTemplateError(InputError):
    """The tokenizer's chat template raised on these messages; its own exception is chained."""


@dataclass(frozen=True)
class EncodedPair:
    prompt_ids: list[int]
    completion_ids: list[int]
    truncated: bool  # the completion's tail was cut to fit max_length


def _tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def chat_ids(tokenizer, messages: Sequence[dict], **kwargs) -> list[int]:
    """Token ids of ``messages`` rendered with the tokenizer's chat template.

    The template is the model author's code and raises whatever they chose (an unknown role, no
    template at all): that becomes ``ChatTemplateError`` naming the tokenizer, the cause chained.
    """
    try:
        # return_dict=False: transformers 5 returns a BatchEncoding by default, 4.x a list.
        ids = tokenizer.apply_chat_template(list(messages), tokenize=True, return_dict=False, **kwargs)
    except Exception as exc:  # the template's own error, see the docstring
        raise ChatTemplateError(
            f"the chat template of tokenizer {_tokenizer_name(tokenizer)!r} rejects this prompt: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return list(ids)


def encode_pair(
    tokenizer,
    prompt_messages: Sequence[dict],
    completion_text: str,
    *,
    max_length: int | None,
    truncation: str = "completion",
) -> EncodedPair:
    """Prompt and completion token ids of one pair (see the module docstring for the policy).

    ``max_length=None`` means no limit. Raises ``InputError`` (a ``ValueError``) when the chat
    template breaks the prefix property, ``PromptTooLongError`` when the prompt
    leaves no completion token.
    """
    if truncation not in TRUNCATION_POLICIES:
        raise ConfigError(f"truncation: expected one of {TRUNCATION_POLICIES}, got {truncation!r}")
    prompt_ids = chat_ids(tokenizer, prompt_messages, add_generation_prompt=True)
    full = chat_ids(tokenizer, [*prompt_messages, {"role": "assistant", "content": completion_text}])
    if full[: len(prompt_ids)] != prompt_ids:
        raise InputError(
            f"tokenizer {_tokenizer_name(tokenizer)!r}: its chat template does not render the prompt "
            "(with add_generation_prompt=True) as a token prefix of prompt + answer; the completion "
            "tokens cannot be split off"
        )
    completion_ids = full[len(prompt_ids) :]
    if max_length is None or len(full) <= max_length:
        return EncodedPair(prompt_ids, completion_ids, False)
    room = max_length - len(prompt_ids)
    if room < 1:
        raise PromptTooLongError(
            f"the prompt is {len(prompt_ids)} tokens, leaving no completion token within max_length={max_length}"
        )
    return EncodedPair(prompt_ids, completion_ids[:room], True)


def template_hash(tokenizer) -> str:
    """sha256 over what decides the token ids: chat template, tokenizer model (or vocab), special tokens."""
    digest = hashlib.sha256()
    digest.update((getattr(tokenizer, "chat_template", None) or "").encode("utf-8"))
    digest.update(b"\0")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode("utf-8"))  # tokenizer.json's content
    else:
        digest.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode("utf-8"))
    digest.update(b"\0")
    special = {k: str(v) for k, v in tokenizer.special_tokens_map.items()}
    digest.update(json.dumps(special, sort_keys=True).encode("utf-8"))
    return digest.hexdigest()
