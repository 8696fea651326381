"""Pieces shared by the input formats: the parsed-row type, column names, value checks.

A format turns one input record into a ``ParsedRow`` or raises ``BadRow``;
ingest drops bad rows and counts them by reason (or raises under ``strict``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prefpool.pipeline.io.ids import normalize_messages


class BadRow(Exception):
    """The record cannot become an example; ``reason`` is a short stable key for the report."""

    def __init__(self, reason: str, column: str | None = None, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.column = column
        self.detail = detail


@dataclass(frozen=True)
class Columns:
    """Input column names; ``None`` means: detect from the file's first record."""

    prompt: str | None = None
    chosen: str = "chosen"
    rejected: str = "rejected"
    answers: str | None = None  # ranked: the list of answers
    text_key: str | None = None  # ranked: key of the text inside each answer
    rank_key: str = "rank"
    score_key: str = "score"
    model_key: str | None = None  # ranked: key naming the answer's generator
    score_chosen: str = "score_chosen"
    score_rejected: str = "score_rejected"
    metadata: str = "metadata"  # pairwise: may hold the scores (dict or Python-repr string)


@dataclass
class ParsedRow:
    prompt: list[dict[str, str]]
    answers: list[dict]  # {text, score, rank, source}
    pairs: list[tuple[int, int]] = field(default_factory=list)
    dropped_answers: list[BadRow] = field(default_factory=list)


def answer(text: str, *, score: float | None = None, rank: int | None = None, source: str | None = None) -> dict:
    return {"text": text, "score": score, "rank": rank, "source": source}


def first_present(record: dict, names: tuple[str, ...]) -> str | None:
    return next((name for name in names if name in record), None)


def field_of(record: dict, column: str) -> object:
    if column not in record:
        raise BadRow("missing_field", column)
    return record[column]


def to_messages(raw: object, column: str) -> list[dict[str, str]]:
    """A prompt given as a string or a message list, normalized; rejects an empty prompt."""
    if not isinstance(raw, (str, list)):
        raise BadRow("bad_prompt", column, f"expected a string or a message list, got {type(raw).__name__}")
    try:
        messages = normalize_messages(raw)
    except (TypeError, AttributeError) as exc:
        raise BadRow("bad_messages", column, str(exc)) from None
    check_prompt(messages, column)
    return messages


def check_prompt(messages: list[dict[str, str]], column: str | None) -> None:
    if not messages or not any(m["content"] for m in messages):
        raise BadRow("empty_prompt", column)


def check_text(text: object, column: str) -> str:
    if not isinstance(text, str):
        raise BadRow("non_string_completion", column, f"got {type(text).__name__}")
    if not text.strip():
        raise BadRow("empty_completion", column)
    return text


def to_score(value: object, column: str) -> float | None:
    """A float, or None for missing/NaN; strings are parsed because CSV cells are strings."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise BadRow("bad_score", column, f"got {value!r}")
    try:
        score = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BadRow("bad_score", column, f"got {value!r}") from None
    return None if math.isnan(score) else score


def to_rank(value: object, column: str) -> int | None:
    """An integer rank; Nectar stores ranks as floats (1.0), which is accepted."""
    if value is None or value == "":
        return None
    try:
        rank = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BadRow("bad_rank", column, f"got {value!r}") from None
    if isinstance(value, bool) or not rank.is_integer() or not -(2**31) <= rank < 2**31:
        raise BadRow("bad_rank", column, f"got {value!r}")
    return int(rank)


class MissingColumn(Exception):
    """A column the format needs is absent from a file; ingest names the file."""

    def __init__(self, column: str, hint: str = "") -> None:
        super().__init__(column)
        self.column = column
        self.hint = hint


def require(record: dict, *columns: str, hint: str = "") -> None:
    for column in columns:
        if column not in record:
            raise MissingColumn(column, hint)
