"""``pairwise``: one prompt, a chosen and a rejected answer per row.

``chosen``/``rejected`` are strings, or chat message lists whose last message
is the assistant's answer and whose earlier messages are the prompt
(UltraFeedback-binarized style). With both a ``prompt`` column and message
lists, the two prompts must agree, else the row is dropped (``prompt_mismatch``).
Scores come from ``score_chosen``/``score_rejected`` columns or, failing that,
from a ``metadata`` field holding them as a dict or a Python-repr string.
"""

from __future__ import annotations

import ast

from prefpool.pipeline.formats.rows import (
    BadRow,
    Columns,
    MissingColumn,
    ParsedRow,
    answer,
    check_prompt,
    check_text,
    field_of,
    require,
    to_messages,
    to_score,
)
from prefpool.pipeline.io.ids import normalize_messages

PROMPT_NAMES = ("prompt", "instruction", "question")


def resolve(first: dict, cols: Columns) -> Columns:
    require(first, cols.chosen, cols.rejected, hint="the pairwise format needs chosen/rejected columns")
    if cols.prompt is not None:
        require(first, cols.prompt)
        return cols
    found = next((name for name in PROMPT_NAMES if name in first), None)
    if found is None and not isinstance(first.get(cols.chosen), list):
        # string answers carry no prompt of their own
        raise MissingColumn("prompt", "string chosen/rejected need a prompt column (--prompt-column)")
    return Columns(**{**cols.__dict__, "prompt": found})


def _split(raw: object, column: str) -> tuple[list[dict[str, str]] | None, str]:
    """(prompt messages or None, answer text) of a chosen/rejected value."""
    if isinstance(raw, list):
        if not raw or not isinstance(raw[-1], dict) or raw[-1].get("role") != "assistant":
            raise BadRow("no_final_assistant", column, "a message list must end with the assistant's answer")
        try:
            prefix = normalize_messages(raw[:-1])
        except (TypeError, AttributeError) as exc:
            raise BadRow("bad_messages", column, str(exc)) from None
        return prefix, check_text(raw[-1].get("content"), column)
    return None, check_text(raw, column)


def _metadata_scores(record: dict, cols: Columns) -> dict:
    raw = record.get(cols.metadata)
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = ast.literal_eval(raw)  # a Python repr; literal_eval never runs code
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise BadRow("bad_metadata", cols.metadata, "not a Python literal") from None
    return raw if isinstance(raw, dict) else {}


def _same_prompt(given: list[dict[str, str]], from_lists: list[dict[str, str]]) -> bool:
    """A string prompt (one user turn) may match just the last user turn of the messages:
    UltraFeedback-style lists can carry a system message the prompt column lacks. The
    messages are then the prompt, since they hold what the model saw."""
    if given == from_lists:
        return True
    user_turns = [m for m in from_lists if m["role"] == "user"]
    return (
        len(given) == 1
        and given[0]["role"] == "user"
        and bool(user_turns)
        and user_turns[-1] == given[0]
        and from_lists[-1] == user_turns[-1]
    )


def parse(record: dict, cols: Columns) -> ParsedRow:
    chosen_prompt, chosen = _split(field_of(record, cols.chosen), cols.chosen)
    rejected_prompt, rejected = _split(field_of(record, cols.rejected), cols.rejected)
    from_lists = chosen_prompt if chosen_prompt is not None else rejected_prompt
    if rejected_prompt is not None and from_lists != rejected_prompt:
        raise BadRow("prompt_mismatch", cols.rejected, "chosen and rejected have different prompt messages")
    if cols.prompt is None and from_lists is None:
        raise BadRow("missing_field", "prompt")
    prompt = from_lists
    if cols.prompt is not None:
        given = to_messages(field_of(record, cols.prompt), cols.prompt)
        if from_lists is None:
            prompt = given
        elif not _same_prompt(given, from_lists):
            raise BadRow("prompt_mismatch", cols.chosen, "the messages before the answer differ from the prompt")
    assert prompt is not None
    check_prompt(prompt, cols.chosen)
    if chosen.strip() == rejected.strip():
        raise BadRow("chosen_equals_rejected", cols.rejected)
    meta = _metadata_scores(record, cols)
    score_chosen = record.get(cols.score_chosen, meta.get(cols.score_chosen))
    score_rejected = record.get(cols.score_rejected, meta.get(cols.score_rejected))
    return ParsedRow(
        prompt=prompt,
        answers=[
            answer(chosen, score=to_score(score_chosen, cols.score_chosen)),
            answer(rejected, score=to_score(score_rejected, cols.score_rejected)),
        ],
        pairs=[(0, 1)],
    )
