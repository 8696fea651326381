"""Reward of fresh samples, and their win-rate against a reference model's samples.

Sampling goes through the generate stage's own machinery (``load_model_info``,
``resolve_params``, the hf engine's ``generator``, ``sample_seed``), so prompts are rendered,
seeded and decoded exactly as ``prefpool generate`` does. Sample ``i`` of a
prompt uses the seed ``sample_seed(seed, prompt_id, i)`` for both models.

Win-rate: per (prompt, sample index), the policy's sample wins (1), ties (1/2)
or loses (0) against the reference's sample of the same index, by the reward
(a function, or a sequence-classification reward model); with the
length-controlled win-rate and both sides' mean length (``eval_winrate``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prefpool.core.errors import ConfigError
from prefpool.pipeline.engines.generation import Request
from prefpool.pipeline.engines.registry import engine_named
from prefpool.pipeline.engines.sampling import sample_seed
from prefpool.pipeline.engines.scorers import call_reward, checked_score, load_reward_fn
from prefpool.pipeline.generate import resolve_params
from prefpool.pipeline.model.info import load_model_info
from prefpool.pipeline.model.source import ModelSource, resolve_model

from .data import prompts_of
from .eval_winrate import win_rate_figures

RewardFn = Callable[[list[dict], str], float]


def sample_texts(
    model: str | Path,
    prompts: list[tuple[str, list[dict]]],
    *,
    num_samples: int,
    seed: int,
    max_new_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    device: str = "cpu",
    batch_size: int = 16,
    what: str = "model",
) -> tuple[list[list[str]], dict]:
    """``num_samples`` completions per prompt from ``model``, and the sampling parameters used.

    ``model``: a folder, a .gguf file or a Hub id (``source.resolve_model``); ``what`` names it in errors."""
    info = load_model_info(model, what=what)
    params, record = resolve_params(info, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    requests = [
        Request(tuple(info.render(messages)), sample_seed(seed, pid, i))
        for pid, messages in prompts
        for i in range(num_samples)
    ]
    engine = engine_named("hf").generator(info, batch_size=batch_size, device=device, options={})
    completions = engine.generate(requests, params, on_done=lambda _tokens: None)
    texts = [info.decode(list(c.token_ids)) for c in completions]
    return [texts[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))], record


def sample_metrics(
    model: str | Path,
    data,  # a build table: folder, pushed folder, Hub id or TableSource
    *,
    reward_fn: str | RewardFn | None = None,
    reward_model: str | Path | None = None,
    ref_model: str | Path | ModelSource | None = None,
    num_samples: int = 1,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int = 0,
    max_prompts: int | None = None,
    device: str = "cpu",
) -> dict:
    """Mean reward of ``model``'s samples on the table's prompts; with ``ref_model`` also the win-rate."""
    if num_samples < 1:
        raise ConfigError(f"num_samples: must be >= 1, got {num_samples}")
    if (reward_fn is None) == (reward_model is None):
        raise ConfigError(
            "sampled rewards need exactly one of reward_fn (--reward-fn) and reward_model (--reward-model)"
        )
    if reward_model is not None:
        from prefpool.pipeline.engines.reward_model import load_reward_model

        scorer = load_reward_model(reward_model, batch_size=16, device=device)
    else:
        fn, name = load_reward_fn(reward_fn)
    prompts = list(prompts_of(data, max_prompts))
    kwargs = {
        "num_samples": num_samples,
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "device": device,
    }

    def rewards(texts: list[list[str]], who: str | Path) -> list[list[float]]:
        out = []
        for (pid, messages), row in zip(prompts, texts, strict=True):
            wheres = [f"prompt_id {pid}, sample {i} of {who} (prompts of {data})" for i in range(len(row))]
            if reward_model is not None:
                values = scorer.score([(messages, text) for text in row], wheres)
            else:
                values = [call_reward(fn, name, messages, text, where=w) for text, w in zip(row, wheres, strict=True)]
            out.append([checked_score(v, w) for v, w in zip(values, wheres, strict=True)])
        return out

    texts, record = sample_texts(model, prompts, **kwargs)
    policy = rewards(texts, model)
    flat = [r for row in policy for r in row]
    out = {
        "num_prompts": len(prompts),
        "num_samples": num_samples,
        "seed": seed,
        "sampling": {k: record[k] for k in ("temperature", "top_p", "max_new_tokens")},
        "mean_reward": sum(flat) / len(flat),
        "mean_length_chars": sum(len(t) for row in texts for t in row) / len(flat),
    }
    if ref_model is not None:
        ref_texts = sample_texts(ref_model, prompts, **kwargs, what="ref_model")[0]
        ref_flat = [r for row in rewards(ref_texts, ref_model) for r in row]
        out.update(
            {
                "ref_model": resolve_model(ref_model).given,
                "ref_mean_reward": sum(ref_flat) / len(ref_flat),
                **win_rate_figures(
                    flat, ref_flat, [t for row in texts for t in row], [t for row in ref_texts for t in row]
                ),
            }
        )
    return out
