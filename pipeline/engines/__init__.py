"""Inference engines behind the stages: each engine one object, registered in one place.

- ``engine``: what a stage asks of an engine (``Engine``: its options, device, generator,
  log-prob scorer, worker needs, what it needs installed); ``registry``: ``ENGINES``, the
  stages' ``engine`` choices; ``hf_engine``, ``vllm_engine``: the two engines.
- ``generation`` (the generator seam of ``generate``), ``hf_generation``, ``vllm_generation``.
- ``logprob_engines`` (the scorer seam of ``logprobs`` and the hf scorer), ``vllm_logprobs``.
- ``scorers``: what gives a (prompt, completion) its score in ``score``.
- ``sampling``: per-sample seeds and the next-token distribution; ``engine_args``: ``vllm.LLM`` options;
  ``vllm_start``: starting a ``vllm.LLM``.

vLLM is imported only when a vllm engine starts.
"""
