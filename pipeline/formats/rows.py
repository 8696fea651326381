"""Pieces shared by the input formats: the parsed-row type, column names, value checks.

A format turns one input record into a ``ParsedRow`` or raises ``BadRow``;
ingest drops bad rows and counts them by reason (or raises under ``strict``).
A value that is unusable but not fatal to the row (a NaN or infinite score) is
set to null and listed in ``ParsedRow.issues``: counted in the report, an
error under ``strict``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace

from prefpool.pipeline.io.errors import PipelineConfigError
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
    """Input column names; ``None``: the format's default, or detected from a file's first record.

    ``text``, ``rank``, ``score`` and ``model`` are keys inside each item of the
    ``answers`` list (a dotted path reaches into nested objects); the others are
    top-level columns.
    """

    prompt: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    answers: str | None = None  # ranked, ultrafeedback: the list of answers
    text: str | None = None
    rank: str | None = None
    score: str | None = None  # ultrafeedback: a completion field or an annotation aspect
    model: str | None = None
    score_chosen: str | None = None  # pairwise: score or rating columns of the two answers
    score_rejected: str | None = None
    model_chosen: str | None = None  # pairwise: the models that wrote the two answers
    model_rejected: str | None = None
    metadata: str | None = None  # pairwise: may hold the scores (dict or Python-repr string)

    def but(self, **names: str | None) -> Columns:
        return replace(self, **names)

    def top_level(self) -> set[str]:
        """The record columns these names use (not the keys inside answers)."""
        inner = {"text", "rank", "score", "model"}
        return {v for k, v in self.__dict__.items() if v is not None and k not in inner}


COLUMN_KEYS = tuple(f.name for f in fields(Columns))


def parse_columns(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """``"prompt=instruction,chosen=good"`` (or a dict) -> ``{"prompt": "instruction", "chosen": "good"}``."""
    if spec is None:
        return {}
    if isinstance(spec, str):
        pairs = {}
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            key, sep, value = part.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise PipelineConfigError(f"--columns: expected KEY=COLUMN pairs separated by commas, got {part!r}")
            if key.strip() in pairs:
                raise PipelineConfigError(f"--columns: {key.strip()!r} is given twice")
            pairs[key.strip()] = value.strip()
        spec = pairs
    unknown = sorted(set(spec) - set(COLUMN_KEYS))
    if unknown:
        raise PipelineConfigError(f"--columns: unknown key {unknown[0]!r}; known keys: {', '.join(COLUMN_KEYS)}")
    bad = [k for k, v in spec.items() if not isinstance(v, str) or not v]
    if bad:
        raise PipelineConfigError(f"--columns: {bad[0]!r} needs a column name")
    return dict(spec)


@dataclass
class ParsedRow:
    prompt: list[dict[str, str]]
    answers: list[dict]  # {text, score, rank, source}
    pairs: list[tuple[int, int]] = field(default_factory=list)
    dropped_answers: list[BadRow] = field(default_factory=list)
    issues: list[BadRow] = field(default_factory=list)  # values set to null (e.g. a NaN score)


def answer(text: str, *, score: float | None = None, rank: int | None = None, source: str | None = None) -> dict:
    return {"text": text, "score": score, "rank": rank, "source": source}


def first_present(record: Mapping, names: tuple[str, ...]) -> str | None:
    return next((name for name in names if name in record), None)


def field_of(record: Mapping, column: str) -> object:
    if column not in record:
        raise BadRow("missing_field", column)
    return record[column]


def lookup(item: Mapping, key: str) -> object:
    """``item[key]``, or for a dotted key absent as such, the nested value (``"a.b"`` -> ``item["a"]["b"]``)."""
    if key in item or "." not in key:
        return item.get(key)
    value: object = item
    for part in key.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


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


def to_score(value: object, column: str, issues: list[BadRow]) -> float | None:
    """A finite float, or None when missing; strings are parsed because CSV cells are strings.

    A NaN or infinite value becomes None and is listed in ``issues`` (an error under ``strict``).
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise BadRow("bad_score", column, f"got {value!r}")
    try:
        score = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise BadRow("bad_score", column, f"got {value!r}") from None
    if not math.isfinite(score):
        issues.append(BadRow("nonfinite_score", column, f"got {value!r}; a missing score is null"))
        return None
    return score


def unranked(column: str, detail: str, issues: list[BadRow]) -> BadRow:
    """The error of a row with nothing to rank by; when its scores were all NaN or infinite, it says so."""
    nonfinite = [issue for issue in issues if issue.reason == "nonfinite_score"]
    if nonfinite:
        return BadRow(
            "nonfinite_score",
            nonfinite[0].column,
            f"every score is NaN or infinite ({nonfinite[0].detail.split(';')[0]}, {len(nonfinite)} in all) "
            "and no answer has a rank: nothing to rank the answers by",
        )
    return BadRow("unranked", column, detail)


def to_rank(value: object, column: str) -> int | None:
    """An integer rank; Nectar stores ranks as floats (1.0), which is accepted."""
    if value is None or value == "":
        return None
    try:
        rank = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise BadRow("bad_rank", column, f"got {value!r}") from None
    if isinstance(value, bool) or not rank.is_integer() or not -(2**31) <= rank < 2**31:
        raise BadRow("bad_rank", column, f"got {value!r}")
    return int(rank)


def answer_list(
    record: Mapping, column: str, parse_item: Callable[[object, list[BadRow]], dict]
) -> tuple[list[dict], list[BadRow], list[BadRow]]:
    """``(answers, dropped, issues)`` of the list in ``record[column]``: each item through ``parse_item``
    (which raises ``BadRow`` to drop the item and appends non-fatal issues to its list); an item
    dropped keeps none of its issues. No valid answer drops the whole row."""
    items = field_of(record, column)
    if not isinstance(items, list):
        raise BadRow("bad_answers", column, f"expected a list, got {type(items).__name__}")
    answers: list[dict] = []
    dropped: list[BadRow] = []
    issues: list[BadRow] = []
    for item in items:
        found: list[BadRow] = []
        try:
            answers.append(parse_item(item, found))
        except BadRow as bad:
            dropped.append(bad)
        else:
            issues.extend(found)
    if not answers:
        raise BadRow("no_valid_answers", column)
    return answers, dropped, issues


class MissingColumn(Exception):
    """A column the format needs is absent from a file; ingest names the file."""

    def __init__(self, column: str, hint: str = "") -> None:
        super().__init__(column)
        self.column = column
        self.hint = hint


def require(record: Mapping, *columns: str, hint: str = "") -> None:
    for column in columns:
        if column not in record:
            raise MissingColumn(column, hint)
