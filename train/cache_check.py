"""Refuse a training table whose cached reference log-probs were made under other settings.

The ``build`` manifest carries the fingerprints of its ``logprobs`` inputs,
whose identity holds the cache-key parts (``pipeline.model.cache_key.cache_components``):
weights hash, tokenizer/template hash, max_length, truncation, dtype. The
trainer's tokenizer, ``max_length``, ``truncation`` and ``dtype`` must equal
them. The weights must too, unless ``reference_is_policy_init`` is false (a
policy initialised from other weights than the reference, e.g. a DPO run on
top of an SFT model whose parent made the cache); then the step-0 check,
which assumes policy == reference, is skipped.

Every user of a cache calls these same functions: ``train``, ``eval``
(``reference_is_policy_init=None``: the weights decide whether the step-0
comparison runs, a trained policy is not expected to equal the reference),
``online`` (``reference=``: each round's cache must be the frozen reference's)
and the TRL plug-ins (``check_dataset_cache``). ``check_step0`` is the one
comparison of the policy's values with the cached ones where they must agree.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from prefpool.core.errors import UserError
from prefpool.pipeline.io.manifest import Manifest
from prefpool.pipeline.model.cache_key import weights_hash
from prefpool.pipeline.model.tokenize import template_hash


class CacheMismatchError(UserError, ValueError):
    """The cached reference values do not belong to this policy/tokenizer/settings."""


class Step0MismatchError(UserError, RuntimeError):
    """The policy's step-0 log-probs differ from the cached reference values."""


DATASET_INFO_KEY = "prefpool_reference_cache"  # how mcpo_dataset / mpo_dataset carry the cache key parts


def check_step0(diff: float, tolerance: float, *, data: str | Path, model: str | Path, hint: str = "") -> None:
    """Refuse ``diff`` = max |policy - cached reference| log-prob (nats) above ``tolerance``: the policy is
    the reference here, so the values must agree; when they do not, the cache is another model's."""
    if not diff <= tolerance:
        raise Step0MismatchError(
            f"step-0 check: the policy's log-probs differ from the cached reference values by up to {diff:.4g} "
            f"nats (tolerance {tolerance}). The cache in {data} was probably made with another model, "
            f"tokenizer, chat template or max_length than {model}; rerun `prefpool logprobs` + `prefpool build` "
            f"with it. {hint}".rstrip()
        )


def cache_parts(manifest: Manifest, data: str | Path) -> dict:
    """The cache-key parts of the table's reference log-probs (one set; build refuses mixed keys)."""
    inputs = manifest.identity.inputs if isinstance(manifest.identity.inputs, dict) else {}
    parts = []
    for fp in inputs.get("logprobs", []):
        cache = fp.get("identity", {}).get("config", {}).get("cache")
        if cache is not None and cache not in parts:
            parts.append(cache)
    if not parts:
        raise CacheMismatchError(
            f"{data}: the manifest records no logprobs cache key; "
            "train and eval read tables made by `prefpool build` from `prefpool logprobs` output"
        )
    if len(parts) > 1:
        raise CacheMismatchError(f"{data}: reference log-probs from {len(parts)} different cache keys")
    return parts[0]


def check_cache(
    parts: dict,
    *,
    model: str | Path | None,
    tokenizer,
    max_length: int,
    truncation: str,
    dtype: str,
    reference_is_policy_init: bool | None,
    reference: str | Path | None = None,
) -> bool:
    """Raise ``CacheMismatchError`` naming every part that differs; return whether to run the step-0 check.

    ``model``: the policy's folder (None: a module with no folder, its weights are not compared).
    ``reference_is_policy_init``: True (train's default) refuses other weights than the cache's; False
    allows them, with a warning that the step-0 check is skipped; None (eval) runs the step-0 check
    exactly when the weights are the cache's, silently otherwise. ``reference``: a folder whose weights
    the cache must have been made with (online's frozen reference), checked whatever the policy is.
    """
    mine = {
        "tokenizer_sha256": template_hash(tokenizer),
        "max_length": max_length,
        "truncation": truncation,
        "dtype": dtype,
    }
    differ = [f"{k} (cache {parts.get(k)!r}, here {v!r})" for k, v in mine.items() if parts.get(k) != v]
    if differ:
        template = (
            " (the tokenizer or its chat template differs)"
            if mine["tokenizer_sha256"] != parts.get("tokenizer_sha256")
            else ""
        )
        raise CacheMismatchError(
            "the reference log-probs were cached with a different "
            + "; ".join(differ)
            + f"{template}. Rerun `prefpool logprobs` + `prefpool build` with this tokenizer and settings, "
            "or use the cache's max_length/truncation/dtype"
        )
    if reference is not None and weights_hash(reference) != parts.get("weights_sha256"):
        raise CacheMismatchError(
            f"the reference log-probs were not cached with the reference {reference} (weights_sha256 differs): "
            "rerun `prefpool logprobs` with it"
        )
    if model is None:
        return False  # a module: its weights cannot be compared, nor the step-0 check be trusted to apply
    same = weights_hash(model) == parts.get("weights_sha256")
    if reference_is_policy_init is None:
        return same
    if same:
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
