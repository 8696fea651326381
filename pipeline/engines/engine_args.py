"""Engine options of ``generate`` and ``logprobs``: ``vllm.LLM`` keyword arguments.

They come from ``engine_args`` (the CLI's ``--engine-args '{"tensor_parallel_size": 2}'``,
a JSON object) merged over ``$PREFPOOL_VLLM_ARGS`` (also a JSON object): a key
given in both takes the ``engine_args`` value.

Run identity: engine options are *not* part of it. They say how the work is
executed (``tensor_parallel_size``, ``gpu_memory_utilization``,
``max_num_seqs``, ...), like ``batch_size`` and ``device`` for the hf engine, so
changing them must not invalidate a finished or half-finished output. The
options that would change the values written are therefore refused here
(``RESERVED``; for ``logprobs`` also prefix caching, ``SCORER_RESERVED``): the
stage sets them from its own arguments, which are in the identity: the model
folder, ``dtype`` (``logprobs --dtype``; ``generate`` uses the weights' dtype,
recorded in its identity), the per-request seeds. The
options actually used are recorded in the manifest's provenance
(``model.engine_args``). ``max_model_len`` is allowed: it only lowers the
context the stage checks against (see ``context_limit``).

The vllm engine's options are ``vllm_options``. An engine that takes none (the
hf engine: its settings are the stages' own arguments, ``batch_size``/``device``
for generate, ``batch_tokens`` for logprobs) answers ``engine_args`` with an
error (``refuse_options``) rather than ignoring them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from prefpool.core.bounded import BoundsError, loads_json
from prefpool.pipeline.io.errors import PipelineConfigError

OPTIONS_ENV = "PREFPOOL_VLLM_ARGS"
# vllm.LLM arguments that change what a run writes; each is set by the stage from its identity.
RESERVED = {
    "model": "the stage's --model",
    "tokenizer": "the model folder's tokenizer",
    "revision": "a local model folder",
    "tokenizer_revision": "a local model folder",
    "dtype": "logprobs --dtype; generate uses the weights' dtype",
    "quantization": "a model folder saved quantized",
    "hf_overrides": "a model folder with the config you want",
    "seed": "generate --seed (a seed per sample)",
}
# prefix caching skips the shared prefix's prompt log-probs: the logprobs stage's engine turns it off, always
SCORER_RESERVED = {**RESERVED, "enable_prefix_caching": "the logprobs stage (off: it would skip prompt log-probs)"}


def parse_engine_args(text: str | None, *, where: str = "--engine-args") -> dict | None:
    """A JSON object of ``vllm.LLM`` options, or None for an empty/absent value."""
    if text is None or not text.strip():
        return None
    # The text itself is never echoed in an error: it may hold a token (hf_token is a vllm.LLM option).
    try:
        parsed = loads_json(text)
    except BoundsError as exc:
        raise PipelineConfigError(f"{where}: the JSON is {exc}") from None
    except json.JSONDecodeError as exc:
        raise PipelineConfigError(
            f"{where} is not valid JSON ({exc.msg} at character {exc.pos}); give a JSON object, "
            "e.g. '{\"tensor_parallel_size\": 2}'"
        ) from None
    if not isinstance(parsed, dict):
        raise PipelineConfigError(
            f"{where} must be a JSON object of vllm.LLM options, e.g. '{{\"tensor_parallel_size\": 2}}'; "
            f"got a JSON {type(parsed).__name__}"
        )
    return parsed


def env_options() -> dict:
    """The options in ``$PREFPOOL_VLLM_ARGS`` (empty when unset)."""
    return parse_engine_args(os.environ.get(OPTIONS_ENV), where=f"${OPTIONS_ENV}") or {}


def _checked(engine_args: Mapping | None) -> Mapping:
    if engine_args is not None and not isinstance(engine_args, Mapping):
        raise PipelineConfigError(f"engine_args must be a dict of vllm.LLM options, got {type(engine_args).__name__}")
    return engine_args or {}


def refuse_options(engine: str, engine_args: Mapping | None) -> dict:
    """The options of an engine that takes none: ``{}``, or an error naming the ones given."""
    given = _checked(engine_args)
    if given:
        raise PipelineConfigError(
            f"engine_args are vllm.LLM options; the {engine!r} engine takes none "
            f"(got {sorted(given)}): use the stage's own arguments, or --engine vllm"
        )
    return {}


def vllm_options(engine_args: Mapping | None, *, reserved: Mapping[str, str] = RESERVED) -> dict:
    """The ``vllm.LLM`` options a vllm engine gets: checked, and merged over ``$PREFPOOL_VLLM_ARGS``."""
    merged = {**env_options(), **_checked(engine_args)}
    bad = [key for key in merged if key in reserved]
    if bad:
        raise PipelineConfigError(
            "engine options "
            + ", ".join(f"{k!r} (set by {reserved[k]})" for k in bad)
            + " would change the output without changing the run's identity; remove them from "
            f"--engine-args / ${OPTIONS_ENV}"
        )
    max_len = merged.get("max_model_len")
    if max_len is not None and (not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 2):
        raise PipelineConfigError(f"engine option max_model_len must be an integer >= 2, got {max_len!r}")
    return merged


def context_limit(max_position_embeddings: int | None, options: Mapping) -> int | None:
    """Tokens one sequence may hold: the model's context, lowered by vllm's ``max_model_len`` if set."""
    limits = [v for v in (max_position_embeddings, options.get("max_model_len")) if v is not None]
    return min(limits) if limits else None


def engine_gpus(options: Mapping) -> int:
    """GPUs one vLLM engine spans: ``tensor_parallel_size`` x ``pipeline_parallel_size`` (each 1 when unset)."""
    return int(options.get("tensor_parallel_size") or 1) * int(options.get("pipeline_parallel_size") or 1)


def vllm_gpus_why(options: Mapping) -> str:
    """Where ``engine_gpus`` comes from, for messages (``vllm tensor_parallel_size=4 x pipeline_parallel_size=1``)."""
    tp, pp = (int(options.get(k) or 1) for k in ("tensor_parallel_size", "pipeline_parallel_size"))
    return f"vllm tensor_parallel_size={tp} x pipeline_parallel_size={pp}"
