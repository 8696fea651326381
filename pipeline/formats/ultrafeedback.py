"""``ultrafeedback``: raw ``openbmb/UltraFeedback``, one instruction and its rated completions.

A row is ``{source, instruction, models, completions, correct_answers,
incorrect_answers}``; each completion ``{model, response, principle,
custom_system_prompt, critique, overall_score, fine-grained_score,
annotations}``, where ``annotations`` maps each aspect (``helpfulness``,
``honesty``, ``instruction_following``, ``truthfulness``) to ``{"Rating": "4",
"Rationale": ...}`` (copies made by the annotation script hold a one-item list
instead; both are read).

The score of a completion is ``overall_score`` (the critique's 1-10 grade), or
with ``--score-key`` (``--columns score=...``) ``fine-grained_score`` (the mean
of the aspect ratings) or one aspect's rating; a rating of ``"N/A"`` is a
missing score. Each completion's ``custom_system_prompt`` steered its own
generation and differs between completions, so it is not part of the prompt.
The ``model`` key becomes the answer's ``source``. As in ``ranked``, pairs stay
empty and the build stage derives them from the scores.
"""

from __future__ import annotations

from collections.abc import Mapping

from prefpool.pipeline.formats.rows import (
    BadRow,
    Columns,
    ParsedRow,
    answer,
    answer_list,
    check_text,
    field_of,
    lookup,
    require,
    to_messages,
    to_score,
    unranked,
)
from prefpool.pipeline.io.errors import PipelineConfigError

FIELDS = ("overall_score", "fine-grained_score")
ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")
NOT_RATED = "N/A"


def looks_like(item: object) -> bool:
    """Whether an item of an answers list is an UltraFeedback completion."""
    return isinstance(item, Mapping) and "response" in item and ("overall_score" in item or "annotations" in item)


def resolve(first: dict, cols: Columns) -> Columns:
    score = cols.score or FIELDS[0]
    if score not in FIELDS + ASPECTS:
        raise PipelineConfigError(
            f"--columns score={score}: the score of an UltraFeedback completion is one of {', '.join(FIELDS + ASPECTS)}"
        )
    prompt, answers = cols.prompt or "instruction", cols.answers or "completions"
    require(first, prompt, answers, hint="raw UltraFeedback rows have instruction and completions")
    return cols.but(
        prompt=prompt, answers=answers, text=cols.text or "response", model=cols.model or "model", score=score
    )


def _rating(item: Mapping, aspect: str, column: str, issues: list[BadRow]) -> float | None:
    annotation = lookup(item, f"annotations.{aspect}")
    if isinstance(annotation, list):  # the annotation script's one-item list per aspect
        annotation = annotation[0] if len(annotation) == 1 else None
    if not isinstance(annotation, Mapping):
        return None
    rating = annotation.get("Rating")
    return None if rating == NOT_RATED else to_score(rating, column, issues)


def _completion(item: object, cols: Columns, issues: list[BadRow]) -> dict:
    assert cols.answers is not None and cols.text is not None and cols.model is not None and cols.score is not None
    if not isinstance(item, Mapping):
        raise BadRow("bad_answer", cols.answers, f"expected an object, got {type(item).__name__}")
    text = check_text(lookup(item, cols.text), f"{cols.answers}[].{cols.text}")
    if cols.score in ASPECTS:
        score = _rating(item, cols.score, f"{cols.answers}[].annotations.{cols.score}.Rating", issues)
    else:
        score = to_score(lookup(item, cols.score), f"{cols.answers}[].{cols.score}", issues)
    model = lookup(item, cols.model)
    return answer(text, score=score, source=None if model is None else str(model))


def parse(record: dict, cols: Columns) -> ParsedRow:
    assert cols.prompt is not None and cols.answers is not None  # set by resolve()
    prompt = to_messages(field_of(record, cols.prompt), cols.prompt)
    answers, dropped, issues = answer_list(record, cols.answers, lambda item, found: _completion(item, cols, found))
    if all(a["score"] is None for a in answers):
        raise unranked(cols.answers, f"no completion has a {cols.score} score", issues)
    return ParsedRow(prompt=prompt, answers=answers, dropped_answers=dropped, issues=issues)
