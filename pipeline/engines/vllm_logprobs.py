"""The vllm engine for ``logprobs``: the same token sequences the hf engine scores, scored by ``vllm.LLM``.

Each sequence (prompt + completion ids from ``tokenize.encode_pair``) is sent
whole as a prompt with ``SamplingParams(max_tokens=1, prompt_logprobs=0)``;
vLLM then returns, for every prompt position ``t >= 1``, the log-prob of the
token at ``t`` given the tokens before it (``prompt_logprobs=0`` asks for the
actual token only, no top-k extras). The completion positions are summed in
float64. vLLM computes these from the raw logits, before any sampling
transform, which is what ``losses.sequence_logps`` does for the hf engine. On a
tiny model in float32 the two engines agree to about 1e-5
(tests/pipeline/test_vllm_logprobs.py checks 1e-4); on real models and long
sequences they do not: their kernels round differently and the differences
add up over hundreds of tokens (``benchmarks/bench_engine_agreement.py``
measures SmolLM2 on UltraFeedback).

Cache key: the engine is part of it (``cache_key.cache_components``), so a
vllm-made cache is never mistaken for the hf engine's, whose numbers the
trainer reproduces at step 0. ``train``'s step-0 check refuses a vllm cache
whose values differ from the policy's by more than ``step0_tolerance``, and
says the engine is the difference and what to run instead.

``batch_tokens`` is an hf-engine setting (vLLM schedules its own batches);
``vllm.LLM`` options come from ``logprobs(engine_args=...)`` (``--engine-args``)
merged over ``$PREFPOOL_VLLM_ARGS``, as for ``generate`` (see ``engine_args``).
Prefix caching is turned off: it would skip computing the shared prefix's
prompt log-probs (the stage refuses the option).
"""

from __future__ import annotations

from collections.abc import Sequence

from prefpool.pipeline.engines.logprob_engines import Scores
from prefpool.pipeline.engines.vllm_start import engine_options, load_llm


class VLLMEngine:
    def __init__(
        self, model: str, *, dtype: str, batch_tokens: int, pad_token_id: int, options: dict | None = None
    ) -> None:
        # vLLM needs no padding and batches by its own budget: batch_tokens and pad_token_id are unused
        self.llm = load_llm(model, engine_options(options), dtype=dtype, seed=0, enable_prefix_caching=False)

    def score(self, sequences: Sequence[Sequence[int]], starts: Sequence[int], *, per_token: bool) -> Scores:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0, detokenize=False)
        prompts = [{"prompt_token_ids": list(seq)} for seq in sequences]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        logps, counts, tokens = [], [], []
        for seq, start, out in zip(sequences, starts, outputs, strict=True):
            # prompt_logprobs[t]: {token id: Logprob} for position t (None at t = 0, which has no prefix)
            values = [out.prompt_logprobs[t][seq[t]].logprob for t in range(start, len(seq))]
            logps.append(sum(values))
            counts.append(len(values))
            tokens.append(values)
        return Scores(logps, counts, tokens if per_token else None)
