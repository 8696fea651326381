"""Measure a policy on the controlled task: true reward and KL to the reference, on fresh samples.

``Probe.measure(policy)`` draws ``samples_per_prompt`` completions for each
probe prompt from the policy (temperature 1, no top-p: the policy's own
distribution), through the hf generate engine with the generate stage's
per-sample seeds, so the same policy always gets the same samples. It returns:

- ``reward``: mean true reward (``task.true_reward``) of the samples;
- ``kl``: a Monte-Carlo estimate of the sequence-level KL(π ‖ π_ref), the mean
  over samples y ~ π of ``log π(y|x) − log π_ref(y|x)``, both computed on the
  sampled token ids (eos included when it ended the sample), so it is unbiased
  for the distribution the engine sampled (samples cut at ``max_new_tokens``
  count with the tokens they have);
- standard errors of both, the fraction of samples that are sentences of the
  language, and the mean length in tokens.

The reference model is held here, for measurement only; training never sees it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from prefpool.pipeline.engines.hf_generation import HFEngine
from prefpool.pipeline.engines.sampling import SamplingParams, sample_seed
from prefpool.pipeline.io.ids import prompt_id
from prefpool.pipeline.model.info import load_model_info
from prefpool.pipeline.model.scoring import eval_mode, score_pairs

from .task import in_language, true_reward


def _mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var / n)


class Probe:
    def __init__(
        self,
        reference: str | Path,
        prompts: list[list[dict[str, str]]],
        *,
        samples_per_prompt: int = 8,
        max_new_tokens: int = 32,
        seed: int = 0,
        batch_size: int = 64,
        score_max_tokens: int = 16384,
    ) -> None:
        from transformers import AutoModelForCausalLM

        self.info = load_model_info(reference)
        self.reference = AutoModelForCausalLM.from_pretrained(reference, dtype=torch.float32).eval()
        self.params = SamplingParams(
            temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens, eos_token_ids=self.info.eos_token_ids
        )
        self.requests = [
            (tuple(self.info.render(m)), sample_seed(seed, prompt_id(m), i))
            for m in prompts
            for i in range(samples_per_prompt)
        ]
        self.batch_size, self.score_max_tokens = batch_size, score_max_tokens

    def _logps(self, model: torch.nn.Module, seqs: list[tuple[list[int], list[int]]]) -> list[float]:
        # The scoring path of the pipeline and the trainer: length-bucketed, from hidden states.
        return score_pairs(model, seqs, self.info.pad_token_id, max_tokens=self.score_max_tokens).double().tolist()

    def samples(self, policy: torch.nn.Module) -> list[tuple[list[int], list[int], str]]:
        """``(prompt ids, completion ids with the eos that ended it, text)`` of every probe sample."""
        from prefpool.pipeline.engines.generation import Request

        with eval_mode(policy):
            engine = HFEngine(self.info, batch_size=self.batch_size, device="cpu", model=policy)
            completions = engine.generate(
                [Request(p, s) for p, s in self.requests], self.params, on_done=lambda _tokens: None
            )
        eos = self.info.eos_token_ids[0]
        return [
            (
                list(prompt),
                [*c.token_ids, *([eos] if c.finish_reason == "stop" else [])],
                self.info.decode(list(c.token_ids)),
            )
            for (prompt, _), c in zip(self.requests, completions, strict=True)
        ]

    def measure(self, policy: torch.nn.Module) -> dict:
        """Sample from ``policy`` (left in the mode it came in) and measure; see the module docstring."""
        drawn = self.samples(policy)
        seqs = [(prompt, completion) for prompt, completion, _ in drawn]
        with eval_mode(policy):
            policy_logps = self._logps(policy, seqs)
        reference_logps = self._logps(self.reference, seqs)
        texts = [text for _, _, text in drawn]
        reward, reward_se = _mean_se([true_reward(t) for t in texts])
        kl, kl_se = _mean_se([p - r for p, r in zip(policy_logps, reference_logps, strict=True)])
        return {
            "reward": reward,
            "reward_se": reward_se,
            "kl": kl,
            "kl_se": kl_se,
            "in_language": sum(in_language(t) for t in texts) / len(texts),
            "length": sum(len(c) for _, c in seqs) / len(seqs),
            "samples": len(texts),
            "example": texts[0],
        }
