"""Fresh samples of the policy scored against a reference: mean reward, win-rate, length-controlled win-rate.

Sampling goes through the generate stage's own machinery (``load_model_info``,
``resolve_params``, the hf engine's ``generator``, ``sample_seed``), so prompts are rendered,
seeded and decoded exactly as ``prefpool generate`` does. Sample ``i`` of a
prompt uses the seed ``sample_seed(seed, prompt_id, i)`` for both models.

The reference: the reference model's sample of the same prompt and index
(``ref_model``), else the prompt's preferred answer in the table (its first
row's ``answers[0]``: the chosen answer, y0), which every sample of the prompt
meets.

Win-rate: per comparison, the policy's sample wins (1), ties (1/2) or loses
(0) by a pointwise scorer's two values (a reward function, a reward model,
a judge's ratings), or scores P(policy ≻ reference) by a pairwise scorer
(a preference model; a judge's verdicts in both orders: 1, 1/2 or 0); a
comparison without an outcome (a judge's reply that does not parse) is left
out of the rates and counted (``judge``). With the length-controlled win-rate
and both sides' mean length (``eval_winrate``).
"""

from __future__ import annotations

from pathlib import Path

from prefpool.core.errors import ConfigError
from prefpool.pipeline.engines.generation import Request
from prefpool.pipeline.engines.registry import engine_named
from prefpool.pipeline.engines.sampling import sample_seed
from prefpool.pipeline.engines.scorers import checked_score
from prefpool.pipeline.generate import resolve_params
from prefpool.pipeline.model.info import load_model_info
from prefpool.pipeline.model.source import ModelSource, resolve_model

from .data import decoded_rows, prompts_of
from .eval_scorers import SampleScorer
from .eval_winrate import outcome_figures, outcomes


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
    scorer: SampleScorer,
    ref_model: str | Path | ModelSource | None = None,
    num_samples: int = 1,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int = 0,
    max_prompts: int | None = None,
    device: str = "cpu",
) -> dict:
    """``model``'s samples on the table's prompts scored by ``scorer`` (``eval_scorers``) against the reference:
    ``ref_model``'s samples, else each prompt's preferred answer in the table (see the module docstring)."""
    if num_samples < 1:
        raise ConfigError(f"num_samples: must be >= 1, got {num_samples}")
    prompts = list(prompts_of(data, max_prompts))
    kwargs = {
        "num_samples": num_samples,
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "device": device,
    }
    texts, record = sample_texts(model, prompts, **kwargs)
    out: dict = {
        "num_prompts": len(prompts),
        "num_samples": num_samples,
        "seed": seed,
        "sampling": {k: record[k] for k in ("temperature", "top_p", "max_new_tokens")},
        "scorer": scorer.kind,
    }
    if ref_model is not None:
        references = sample_texts(ref_model, prompts, **kwargs, what="ref_model")[0]
        out.update(reference="ref_model", ref_model=resolve_model(ref_model).given)
        where = f"of {out['ref_model']}"
    else:
        answers = preferred_answers(data)
        references = [[answers[pid]] for pid, _ in prompts]
        out["reference"] = "table"
        where = "(the table's preferred answer)"
    flat_texts, flat_references = _flat(texts, num_samples), _flat(references, num_samples)
    if scorer.pairwise:
        messages = [m for _, m in prompts for _ in range(num_samples)]
        comparisons = list(zip(messages, flat_texts, flat_references, strict=True))
        wins = scorer.compare(comparisons)
    else:
        policy = _values(scorer, prompts, texts, f"of {model} (prompts of {data})")
        reference = _values(scorer, prompts, references, f"{where} (prompts of {data})")
        out["mean_reward"] = _mean(policy)
        out["ref_mean_reward"] = _mean(reference)
        wins = outcomes(_flat(policy, num_samples), _flat(reference, num_samples))
    out.update(outcome_figures(wins, flat_texts, flat_references))
    if scorer.kind == "judge":
        out["judge"] = judge_counts(scorer.judge_mode, wins, flat_texts, flat_references)
    return out


def preferred_answers(data) -> dict[str, str]:
    """prompt_id -> the preferred answer (``answers[0]``: chosen, y0) of its first row in the table."""
    out: dict[str, str] = {}
    for row in decoded_rows(data):
        out.setdefault(row.prompt_id, row.answers[0].text)
    return out


def _values(scorer: SampleScorer, prompts, texts: list[list[str]], where: str) -> list[list[float | None]]:
    """The pointwise scorer's value of every text (a judge's None: its reply did not parse); ``where`` names
    the texts' source in an error."""
    out = []
    for (pid, messages), row in zip(prompts, texts, strict=True):
        wheres = [f"prompt_id {pid}, sample {i} {where}" for i in range(len(row))]
        values = scorer.score([(messages, text) for text in row], wheres)
        abstains = scorer.kind == "judge"
        out.append(
            [None if v is None and abstains else checked_score(v, w) for v, w in zip(values, wheres, strict=True)]
        )
    return out


def _flat(rows: list[list], num_samples: int) -> list:
    """One entry per (prompt, sample index); a row of one (a table's answer, scored once) serves every index."""
    return [v for row in rows for v in (row if len(row) == num_samples else row * num_samples)]


def _mean(values: list[list[float | None]]) -> float | None:
    kept = [v for row in values for v in row if v is not None]
    return sum(kept) / len(kept) if kept else None


def judge_counts(mode: str | None, wins: list[float | None], texts: list[str], references: list[str]) -> dict:
    """How the judge's comparisons went: those judged (pairwise: not when both texts are the same), those left
    without an outcome because a reply did not parse (and their share of the judged), and (pairwise) those whose
    two orders disagree."""
    identical = sum(a == b for a, b in zip(texts, references, strict=True)) if mode == "pairwise" else 0
    judged = len(wins) - identical
    unparsable = sum(w is None for w in wins)
    counts = {
        "mode": mode,
        "comparisons": len(wins),
        "judged": judged,
        "unparsable": unparsable,
        "unparsable_rate": unparsable / judged if judged else 0.0,
    }
    if mode == "pairwise":
        counts["identical"] = identical
        counts["orders_disagree"] = sum(w == 0.5 for w in wins) - identical
    return counts
