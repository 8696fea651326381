"""``ranked``: one prompt and a list of answers with ranks and/or scores.

Defaults fit both Nectar (``prompt``, ``answers: [{answer, model, rank}]``,
the prompt an HH-style ``"\\n\\nHuman: ...\\n\\nAssistant:"`` string) and the
AlpacaEval pools (``instruction``, ``candidates: [{output, generator, score,
rank}]``); every name can be given explicitly, and the keys inside an answer
may be dotted paths (``score=judge.value``). A bad answer (empty text, bad
rank) is dropped on its own and counted; the row is dropped only when no
answer is left or none has a rank or a score. Pairs stay empty: the build
stage derives preferences from ranks/scores and states its tie policy.
"""

from __future__ import annotations

from prefpool.pipeline.formats.hh_rlhf import prompt_messages
from prefpool.pipeline.formats.rows import (
    BadRow,
    Columns,
    MissingColumn,
    ParsedRow,
    answer,
    answer_list,
    check_text,
    field_of,
    first_present,
    lookup,
    require,
    to_rank,
    to_score,
    unranked,
)

PROMPT_NAMES = ("prompt", "instruction", "question")
ANSWERS_NAMES = ("answers", "candidates", "completions", "responses")
TEXT_KEYS = ("answer", "output", "text", "response", "completion", "content")
MODEL_KEYS = ("model", "generator", "source")

__all__ = ["ANSWERS_NAMES", "PROMPT_NAMES", "parse", "prompt_messages", "resolve"]


def resolve(first: dict, cols: Columns) -> Columns:
    prompt = cols.prompt or first_present(first, PROMPT_NAMES)
    answers = cols.answers or first_present(first, ANSWERS_NAMES)
    if prompt is None:
        raise MissingColumn("prompt", f"none of {PROMPT_NAMES} found; pass --columns prompt=NAME")
    if answers is None:
        raise MissingColumn("answers", f"none of {ANSWERS_NAMES} found; pass --columns answers=NAME")
    require(first, prompt, answers)
    return cols.but(prompt=prompt, answers=answers, rank=cols.rank or "rank", score=cols.score or "score")


def _answer(item: object, cols: Columns, column: str, issues: list[BadRow]) -> dict:
    assert cols.rank is not None and cols.score is not None
    if not isinstance(item, dict):
        raise BadRow("bad_answer", column, f"expected an object, got {type(item).__name__}")
    text_key = cols.text or first_present(item, TEXT_KEYS)
    if text_key is None:
        raise BadRow("missing_field", f"{column}[].text", f"none of {TEXT_KEYS}")
    model_key = cols.model or first_present(item, MODEL_KEYS)
    source = lookup(item, model_key) if model_key else None
    return answer(
        check_text(lookup(item, text_key), f"{column}[].{text_key}"),
        score=to_score(lookup(item, cols.score), f"{column}[].{cols.score}", issues),
        rank=to_rank(lookup(item, cols.rank), f"{column}[].{cols.rank}"),
        source=None if source is None else str(source),
    )


def parse(record: dict, cols: Columns) -> ParsedRow:
    assert cols.prompt is not None and cols.answers is not None  # set by resolve()
    prompt = prompt_messages(field_of(record, cols.prompt), cols.prompt)
    answers, dropped, issues = answer_list(
        record, cols.answers, lambda item, found: _answer(item, cols, cols.answers, found)
    )
    if all(a["rank"] is None and a["score"] is None for a in answers):
        raise unranked(cols.answers, "no answer has a rank or a score", issues)
    return ParsedRow(prompt=prompt, answers=answers, dropped_answers=dropped, issues=issues)
