"""What scores eval's fresh samples: the ``score`` stage's own scorers, one per kind.

- pointwise, a value per sample (a comparison's outcome is 1, 1/2 or 0 by the two values): a reward
  function (``FunctionScorer``), a sequence-classification reward model (``RewardModelScorer``) or a
  pointwise judge (``JudgeScorer``: a 1-10 rating; None for a reply that does not parse);
- pairwise, the outcome of a comparison itself, both orders averaged against position bias: a pairwise
  preference model (``PreferenceScorer.preference``: P(policy ≻ reference)) or a pairwise judge
  (``JudgeScorer.compare``: 1, 1/2 or 0; None for a reply that does not parse).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefpool.core.errors import ConfigError
from prefpool.pipeline.engines.judge import Mode as JudgeMode
from prefpool.pipeline.engines.registry import EngineName

Item = tuple[list[dict], str]  # (prompt messages, completion text)
Comparison = tuple[list[dict], str, str]  # (prompt messages, policy text, reference text)
JudgeEngine = EngineName


@dataclass
class SampleScorer:
    """``kind``: reward_fn | reward_model | judge | preference_model. Pointwise scorers have ``score``
    (items, where) -> values; pairwise ones ``compare`` (comparisons) -> outcomes. ``identity``: JSON values."""

    kind: str
    identity: Any
    score: Callable[[Sequence[Item], Sequence[str]], list] | None = None
    compare: Callable[[Sequence[Comparison]], list[float | None]] | None = None
    judge_mode: str | None = None

    @property
    def pairwise(self) -> bool:
        return self.compare is not None


def sample_scorer(
    *,
    reward_fn: str | Callable | None,
    reward_model: str | Path | None,
    preference_model: str | Path | None,
    judge: str | Path | None,
    judge_mode: JudgeMode,
    judge_template: str | Path | None,
    judge_engine: JudgeEngine,
    judge_max_new_tokens: int,
    device: str,
    batch_size: int = 16,
) -> SampleScorer | None:
    """The one scorer given (None: none given); more than one, or judge settings without a judge, is a ConfigError."""
    given = [n for n, v in [("reward_fn", reward_fn), ("reward_model", reward_model),
                            ("preference_model", preference_model), ("judge", judge)] if v is not None]  # fmt: skip
    if len(given) > 1:
        raise ConfigError(
            f"give one of reward_fn (--reward-fn), reward_model (--reward-model), preference_model "
            f"(--preference-model) and judge (--judge), not several; got {', '.join(given)}"
        )
    if judge is None and judge_template is not None:
        raise ConfigError("judge_template (--judge-template) applies to a judge (--judge) only")
    if not given:
        return None
    if reward_fn is not None:
        from prefpool.pipeline.engines.scorers import FunctionScorer

        function = FunctionScorer(reward_fn)
        identity = function.identity if isinstance(reward_fn, str) else repr(reward_fn)
        return SampleScorer("reward_fn", identity, score=function.score)
    if reward_model is not None:
        from prefpool.pipeline.engines.reward_model import load_reward_model
        from prefpool.pipeline.model.cache_key import weights_hash

        model = load_reward_model(reward_model, batch_size=batch_size, device=device)
        return SampleScorer("reward_model", weights_hash(reward_model, what="reward_model"), score=model.score)
    from prefpool.pipeline.model.info import load_model_info

    if preference_model is not None:
        from prefpool.pipeline.engines.preference import PreferenceScorer

        info = load_model_info(preference_model, what="preference_model")
        preference = PreferenceScorer(info, rule="tournament", pools={}, batch_size=batch_size, device=device)
        identity = {**_plain(preference.identity), "model": info.fingerprint}

        def compare(comparisons: Sequence[Comparison]) -> list[float | None]:
            """``preference`` per prompt: one batch of each prompt's pairs."""
            out: list[float | None] = [None] * len(comparisons)
            by_prompt: dict[str, list[int]] = {}
            for i, (prompt, _, _) in enumerate(comparisons):
                by_prompt.setdefault(json.dumps(prompt, sort_keys=True), []).append(i)
            for indices in by_prompt.values():
                pairs = [(comparisons[i][1], comparisons[i][2]) for i in indices]
                for i, value in zip(indices, preference.preference(comparisons[indices[0]][0], pairs), strict=True):
                    out[i] = value
            return out

        return SampleScorer("preference_model", identity, compare=compare)
    from prefpool.pipeline.engines.judge import JudgeScorer

    scorer = JudgeScorer(
        load_model_info(judge, what="judge"),
        mode=judge_mode,
        template=judge_template,
        engine=judge_engine,
        max_new_tokens=judge_max_new_tokens,
        batch_size=batch_size,
        device=device,
    )
    identity = {**_plain(scorer.identity), "model": scorer.info.fingerprint}
    if judge_mode == "pairwise":
        return SampleScorer("judge", identity, compare=scorer.compare, judge_mode=judge_mode)
    return SampleScorer("judge", identity, score=scorer.score, judge_mode=judge_mode)


def _plain(identity: dict) -> dict:
    """``identity`` as JSON reads it back (eval compares a stored identity with a fresh one)."""
    return json.loads(json.dumps(identity))
