"""Refuse a training table whose cached reference log-probs were made under other settings.

The ``build`` manifest carries the fingerprints of its ``logprobs`` inputs,
whose identity holds the cache-key parts (``pipeline.model.cache_key.cache_components``;
a pushed table's card keeps them, ``pipeline.kinds.source``):
weights hash, tokenizer/template hash, max_length, truncation, dtype. The
trainer's tokenizer, ``max_length``, ``truncation`` and ``dtype`` must equal
them. The weights must too, unless ``reference_is_policy_init`` is false (a
policy initialised from other weights than the reference, e.g. a DPO run on
top of an SFT model whose parent made the cache); then the step-0 check,
which assumes policy == reference, is skipped. The parts also name the engine
that computed the values; it is not compared here (a cache of another engine
may agree within the tolerance), but when the step-0 check refuses such a
cache its message says the engine is the difference and what to rerun.

Every user of a cache calls these same functions: ``train``, ``eval``
(``reference_is_policy_init=None``: the weights decide whether the step-0
comparison runs, a trained policy is not expected to equal the reference),
``online`` (``reference_weights=``: each round's cache must be the frozen reference's)
and the TRL plug-ins (``trl_plugin``, on the caches ``prefpool_dataset`` records). ``check_step0`` is the one
comparison of the policy's values with the cached ones where they must agree.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from prefpool.core.errors import UserError
from prefpool.pipeline.kinds.source import TableSource
from prefpool.pipeline.model.cache_key import weights_hash
from prefpool.pipeline.model.tokenize import template_hash

HF_ENGINE = "hf"  # the engine whose numerics the trainer shares (pipeline.model.scoring)


class CacheMismatchError(UserError, ValueError):
    """The cached reference values do not belong to this policy/tokenizer/settings."""


class Step0MismatchError(UserError, RuntimeError):
    """The policy's step-0 log-probs differ from the cached reference values."""


def check_step0(
    diff: float, tolerance: float, *, data: str | Path, model: str | Path, engine: str | None = None, hint: str = ""
) -> None:
    """Refuse ``diff`` = max |policy - cached reference| log-prob (nats) above ``tolerance``: the policy is
    the reference here, so the values must agree; when they do not, the cache is another model's, or
    (``engine``, the cache's, other than hf) another engine's, whose numerics the trainer does not share."""
    if diff <= tolerance:
        return
    head = (
        f"step-0 check: the policy's log-probs differ from the cached reference values by up to {diff:.4g} "
        f"nats (tolerance {tolerance})."
    )
    if engine not in (None, HF_ENGINE):
        raise Step0MismatchError(
            f"{head} The cache in {data} was made by the {engine} engine, whose log-probs differ from the "
            f"trainer's ({HF_ENGINE} engine) numerics on long sequences even for the same model ({model}). "
            f"Rerun `prefpool logprobs --engine {HF_ENGINE}` on the same inputs and `prefpool build` with its "
            f"output, or accept the difference with step0_tolerance: {_above(diff)}"
        )
    raise Step0MismatchError(
        f"{head} The cache in {data} was probably made with another model, tokenizer, chat template or "
        f"max_length than {model}; rerun `prefpool logprobs` + `prefpool build` with it. {hint}".rstrip()
    )


def _above(diff: float) -> str:
    """A round tolerance above ``diff`` (0.00444 -> 0.005), for messages."""
    step = 10 ** math.floor(math.log10(diff)) if diff > 0 else 1e-3
    return f"{math.ceil(diff / step * 1.0001) * step:.3g}"


def cache_parts(table: TableSource) -> dict:
    """The cache-key parts of the table's reference log-probs (one set; build refuses mixed keys)."""
    parts = [p for _, p in table.caches]
    if not parts:
        raise CacheMismatchError(
            f"{table.label}: no logprobs cache key recorded (manifest or card); "
            "train and eval read tables made by `prefpool build` from `prefpool logprobs` output"
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
    reference_is_policy_init: bool | None,
    reference_weights: str | None = None,
) -> bool:
    """Raise ``CacheMismatchError`` naming every part that differs; return whether to run the step-0 check.

    ``model``: the policy's folder (None: the weights cannot be hashed, e.g. a module given to the TRL
    plug-ins or a model from a Hub id; then only the step-0 check compares them with the reference's).
    ``reference_is_policy_init``: True (train's default) refuses other weights than the cache's; False
    allows them, with a warning that the step-0 check is skipped; None (eval) runs the step-0 check
    exactly when the weights are the cache's, silently otherwise. ``reference_weights``: the weights
    hash the cache must have been made with (online's frozen reference), checked whatever the policy is.
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
    if reference_weights is not None and reference_weights != parts.get("weights_sha256"):
        raise CacheMismatchError(
            f"the reference log-probs were cached with other weights than the reference's (weights_sha256 "
            f"{str(parts.get('weights_sha256'))[:12]} vs {reference_weights[:12]}): rerun `prefpool logprobs` "
            "with the reference"
        )
    if model is None:
        if reference_is_policy_init is None:
            return False  # eval: a trained policy need not equal the reference, and its weights are unknown
        warnings.warn(
            "the policy's weights cannot be hashed (no local save_pretrained folder): only the step-0 check "
            "compares them with the reference the log-probs were cached with",
            stacklevel=2,
        )
        return reference_is_policy_init
    same = weights_hash(model, adapter=True) == parts.get("weights_sha256")  # eval takes an adapter folder
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
