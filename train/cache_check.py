"""Refuse a training table whose cached reference log-probs were made under other settings.

The ``build`` manifest carries the fingerprints of its ``logprobs`` inputs,
whose identity holds the cache-key parts (``pipeline.model.cache_key.cache_components``;
a pushed table's card keeps them, ``pipeline.kinds.source``):
weights hash, tokenizer/template hash, max_length, truncation, dtype. The
trainer's tokenizer, ``max_length``, ``truncation`` and ``dtype`` must equal
them. The weights must too, unless ``reference_is_policy_init`` is false (a
policy initialised from other weights than the reference, e.g. a DPO run on
top of an SFT model whose parent made the cache); then the step-0 check,
which assumes policy == reference, is skipped.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from prefpool.core.errors import UserError
from prefpool.pipeline.kinds.source import TableSource
from prefpool.pipeline.model.cache_key import weights_hash
from prefpool.pipeline.model.tokenize import template_hash


class CacheMismatchError(UserError, ValueError):
    """The cached reference values do not belong to this policy/tokenizer/settings."""


def cache_parts(table: TableSource) -> dict:
    """The cache-key parts of the table's reference log-probs (one set; build refuses mixed keys)."""
    parts = [p for _, p in table.caches]
    if not parts:
        raise CacheMismatchError(
            f"{table.label}: no logprobs cache key recorded (manifest or card); "
            "train reads tables made by `prefpool build` from `prefpool logprobs` output"
        )
    if len(parts) > 1:
        raise CacheMismatchError(f"{table.label}: reference log-probs from {len(parts)} different cache keys")
    return parts[0]


def check_cache(
    parts: dict,
    *,
    model: str | Path | None,
    tokenizer,
    max_length: int,
    truncation: str,
    dtype: str,
    reference_is_policy_init: bool,
) -> bool:
    """Raise ``CacheMismatchError`` naming every part that differs; return whether to run the step-0 check.

    ``model`` None: the policy's weights cannot be hashed (not a local folder, e.g. a model given as a
    module to the TRL plug-ins); only the step-0 check then compares them with the reference's."""
    mine = {
        "tokenizer_sha256": template_hash(tokenizer),
        "max_length": max_length,
        "truncation": truncation,
        "dtype": dtype,
    }
    differ = [f"{k} (cache {parts.get(k)!r}, train {v!r})" for k, v in mine.items() if parts.get(k) != v]
    if differ:
        raise CacheMismatchError(
            "the reference log-probs were cached with a different "
            + "; ".join(differ)
            + ". Rerun `prefpool logprobs` + `prefpool build` with this tokenizer and settings, "
            "or train with the cache's max_length/truncation/dtype"
        )
    if model is None:
        warnings.warn(
            "the policy's weights cannot be hashed (no local save_pretrained folder): only the step-0 check "
            "compares them with the reference the log-probs were cached with",
            stacklevel=2,
        )
        return reference_is_policy_init
    if weights_hash(model) == parts.get("weights_sha256"):
        if not reference_is_policy_init:
            warnings.warn("reference_is_policy_init is false: skipping the step-0 check", stacklevel=2)
        return reference_is_policy_init
    if reference_is_policy_init:
        raise CacheMismatchError(
            f"the policy's initial weights ({model}) are not the reference weights the log-probs were cached "
            "with (weights_sha256 differs). If that is intended (a reference other than the initial policy), "
            "set reference_is_policy_init: false; otherwise rerun `prefpool logprobs` with this model"
        )
    warnings.warn(
        "the policy's initial weights differ from the reference's (reference_is_policy_init: false): "
        "skipping the step-0 check",
        stacklevel=2,
    )
    return False
