"""``ranked``: one prompt and a list of answers with ranks and/or scores.

Defaults fit both Nectar (``prompt``, ``answers: [{answer, model, rank}]``,
the prompt an HH-style ``"\\n\\nHuman: ...\\n\\nAssistant:"`` string) and the
AlpacaEval pools (``instruction``, ``candidates: [{output, generator, score,
rank}]``); every name can be given explicitly. A bad answer (empty text, bad
rank) is dropped on its own and counted; the row is dropped only when no
answer is left or none has a rank or a score. Pairs stay empty: the build
stage derives preferences from ranks/scores and states its tie policy.
"""

from __future__ import annotations

from prefpool.pipeline.formats.hh_rlhf import parse_turns
from prefpool.pipeline.formats.rows import (
    BadRow,
    Columns,
    MissingColumn,
    ParsedRow,
    answer,
    check_prompt,
    check_text,
    field_of,
    first_present,
    require,
    to_messages,
    to_rank,
    to_score,
)

PROMPT_NAMES = ("prompt", "instruction", "question")
ANSWERS_NAMES = ("answers", "candidates", "completions", "responses")
TEXT_KEYS = ("answer", "output", "text", "response", "completion", "content")
MODEL_KEYS = ("model", "generator", "source")


def resolve(first: dict, cols: Columns) -> Columns:
    prompt = cols.prompt or first_present(first, PROMPT_NAMES)
    answers = cols.answers or first_present(first, ANSWERS_NAMES)
    if prompt is None:
        raise MissingColumn("prompt", f"none of {PROMPT_NAMES} found; pass --prompt-column")
    if answers is None:
        raise MissingColumn("answers", f"none of {ANSWERS_NAMES} found; pass --answers-column")
    require(first, prompt, answers)
    return Columns(**{**cols.__dict__, "prompt": prompt, "answers": answers})


def prompt_messages(raw: object, column: str) -> list[dict[str, str]]:
    """A prompt; an HH-style transcript string (Nectar) is split into its turns."""
    if isinstance(raw, str) and raw.lstrip(" ").startswith(("\n\nHuman:", "Human:")):
        turns = parse_turns(raw.lstrip(" "), column)
        if turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
            turns = turns[:-1]  # the open "Assistant:" the answer would follow
        check_prompt(turns, column)
        return turns
    return to_messages(raw, column)


def _answer(item: object, cols: Columns, column: str) -> dict:
    if not isinstance(item, dict):
        raise BadRow("bad_answer", column, f"expected an object, got {type(item).__name__}")
    text_key = cols.text_key or first_present(item, TEXT_KEYS)
    if text_key is None:
        raise BadRow("missing_field", f"{column}[].text", f"none of {TEXT_KEYS}")
    model_key = cols.model_key or first_present(item, MODEL_KEYS)
    source = item.get(model_key) if model_key else None
    return answer(
        check_text(item.get(text_key), f"{column}[].{text_key}"),
        score=to_score(item.get(cols.score_key), f"{column}[].{cols.score_key}"),
        rank=to_rank(item.get(cols.rank_key), f"{column}[].{cols.rank_key}"),
        source=None if source is None else str(source),
    )


def parse(record: dict, cols: Columns) -> ParsedRow:
    assert cols.prompt is not None and cols.answers is not None  # set by resolve()
    prompt = prompt_messages(field_of(record, cols.prompt), cols.prompt)
    items = field_of(record, cols.answers)
    if not isinstance(items, list):
        raise BadRow("bad_answers", cols.answers, f"expected a list, got {type(items).__name__}")
    answers, dropped = [], []
    for item in items:
        try:
            answers.append(_answer(item, cols, cols.answers))
        except BadRow as bad:
            dropped.append(bad)
    if not answers:
        raise BadRow("no_valid_answers", cols.answers)
    if all(a["rank"] is None and a["score"] is None for a in answers):
        raise BadRow("unranked", cols.answers, "no answer has a rank or a score")
    return ParsedRow(prompt=prompt, answers=answers, dropped_answers=dropped)
