"""Inference engines behind the stages, each behind a small seam.

- ``generation`` (the seam of ``generate``), ``hf_generation``, ``vllm_generation``.
- ``logprob_engines`` (the seam of ``logprobs`` and its hf engine), ``vllm_logprobs``.
- ``scorers``: what gives a (prompt, completion) its score in ``score``.
- ``sampling``: per-sample seeds and the next-token distribution; ``engine_args``: ``vllm.LLM`` options.

vLLM is imported only when a vllm engine is chosen.
"""
