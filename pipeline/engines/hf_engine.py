"""The hf engine: ``transformers`` models in this process, on the torch device given.

Generation: ``hf_generation.HFEngine`` (a sampling loop, one RNG per request);
log-probs: ``logprob_engines.HFEngine`` (the trainer's own scoring path, so its
cached values are the policy's at step 0). It takes no engine options: its
settings are the stages' own (``batch_size``, ``batch_tokens``, ``device``).
"""

from __future__ import annotations

from prefpool.pipeline.engines.engine import Engine
from prefpool.pipeline.io.errors import PipelineConfigError


class HF(Engine):
    name = "hf"
    summary = "transformers in this process, on --device"

    def generator(self, info, *, batch_size: int, device: str, options: dict):
        from prefpool.pipeline.engines.hf_generation import HFEngine

        if options:  # generator_options refuses these first
            raise PipelineConfigError(f"the hf engine takes no engine options, got {sorted(options)}")
        return HFEngine(info, batch_size=batch_size, device=device)

    def scorer(self, source, *, dtype: str, batch_tokens: int, pad_token_id: int, device: str, options: dict):
        from prefpool.pipeline.engines.logprob_engines import HFEngine

        return HFEngine(source, dtype=dtype, batch_tokens=batch_tokens, pad_token_id=pad_token_id, device=device)
