"""``pairwise``: one prompt, a chosen and a rejected answer per row (TRL's preference type, all four shapes).

- **standard, explicit prompt**: ``prompt``, ``chosen``, ``rejected`` strings.
- **standard, implicit prompt**: ``chosen``/``rejected`` strings that begin with
  the same prompt text. The prompt is their common prefix, cut back to the last
  whitespace so that no word is split; the answers are the rest, as TRL splits
  them (``"The sky is blue."`` -> ``"The sky is"``, ``" blue."``), so both
  spellings of an example give the same row.
  HH-style transcripts (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) are split
  into turns instead (see ``hh_rlhf``).
- **conversational, explicit prompt**: ``prompt`` a message list (or a string),
  ``chosen``/``rejected`` lists whose last message is the assistant's answer,
  usually that message alone. Messages before it in the list continue the
  prompt when they start with an assistant turn, and otherwise must repeat it
  (UltraFeedback-binarized: ``prompt`` a string, ``chosen`` ``[user, assistant]``).
- **conversational, implicit prompt**: ``chosen``/``rejected`` lists holding
  the whole dialogue; the messages before the last are the prompt and must be
  the same in both.

A prompt string in HH transcript form is split into its turns. Scores come from
a pair of score/rating columns (``score_chosen``/``score_rejected``,
``chosen_rating``/``rejected_rating``, ``chosen-rating``/``rejected-rating``,
``chosen_score``/``rejected_score``, ``rating_chosen``/``rating_rejected``:
the first pair present in a file's first record) or, failing that, from a
``metadata`` field holding ``score_chosen``/``score_rejected`` as a dict or a
Python-repr string. ``chosen_model``/``rejected_model`` (or the hyphenated
names) become each answer's ``source``.
"""

from __future__ import annotations

import ast
import os

from prefpool.pipeline.formats import hh_rlhf
from prefpool.pipeline.formats.rows import (
    BadRow,
    Columns,
    ParsedRow,
    answer,
    check_prompt,
    check_text,
    field_of,
    first_present,
    require,
    to_score,
)
from prefpool.pipeline.io.ids import normalize_messages

PROMPT_NAMES = ("prompt", "instruction", "question")
SCORE_PAIRS = (
    ("score_chosen", "score_rejected"),
    ("chosen_rating", "rejected_rating"),
    ("chosen-rating", "rejected-rating"),
    ("chosen_score", "rejected_score"),
    ("rating_chosen", "rating_rejected"),
)
MODEL_PAIRS = (("chosen_model", "rejected_model"), ("chosen-model", "rejected-model"))
METADATA = "metadata"  # the default; holds score_chosen/score_rejected when those columns are absent


def _pair_names(first: dict, given: tuple[str | None, str | None], known: tuple[tuple[str, str], ...]):
    """The given names (which must be present) or the first known pair found in the record."""
    if given[0] is not None or given[1] is not None:
        require(first, *(name for name in given if name is not None))
        return given
    return next((pair for pair in known if pair[0] in first and pair[1] in first), (None, None))


def resolve(first: dict, cols: Columns) -> Columns:
    chosen, rejected = cols.chosen or "chosen", cols.rejected or "rejected"
    require(first, chosen, rejected, hint="the pairwise format needs chosen/rejected columns")
    prompt = cols.prompt
    if prompt is not None:
        require(first, prompt)
    else:
        prompt = first_present(first, PROMPT_NAMES)
    score_chosen, score_rejected = _pair_names(first, (cols.score_chosen, cols.score_rejected), SCORE_PAIRS)
    model_chosen, model_rejected = _pair_names(first, (cols.model_chosen, cols.model_rejected), MODEL_PAIRS)
    if cols.metadata is not None:
        require(first, cols.metadata)
    return cols.but(
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        score_chosen=score_chosen or SCORE_PAIRS[0][0],
        score_rejected=score_rejected or SCORE_PAIRS[0][1],
        model_chosen=model_chosen,
        model_rejected=model_rejected,
        metadata=cols.metadata or METADATA,
    )


def _split(raw: object, column: str) -> tuple[list[dict[str, str]] | None, str]:
    """(the messages before the answer, or None for a string; the answer text) of a chosen/rejected value."""
    if isinstance(raw, list):
        if not raw or not isinstance(raw[-1], dict) or raw[-1].get("role") != "assistant":
            raise BadRow("no_final_assistant", column, "a message list must end with the assistant's answer")
        try:
            prefix = normalize_messages(raw[:-1])
        except (TypeError, AttributeError) as exc:
            raise BadRow("bad_messages", column, str(exc)) from None
        return prefix, check_text(raw[-1].get("content"), column)
    return None, check_text(raw, column)


def _same_prompt(given: list[dict[str, str]], from_list: list[dict[str, str]]) -> bool:
    """A string prompt (one user turn) may match just the last user turn of the messages:
    UltraFeedback-style lists can carry a system message the prompt column lacks. The
    messages are then the prompt, since they hold what the model saw."""
    if given == from_list:
        return True
    user_turns = [m for m in from_list if m["role"] == "user"]
    return (
        len(given) == 1
        and given[0]["role"] == "user"
        and bool(user_turns)
        and user_turns[-1] == given[0]
        and from_list[-1] == user_turns[-1]
    )


def _with_prompt(given: list[dict[str, str]], prefix: list[dict[str, str]] | None, column: str):
    """The prompt of one answer, from the prompt column and the messages before the answer."""
    if not prefix:
        return given
    if prefix[0]["role"] == "assistant":
        return given + prefix  # the completion continues the conversation
    if _same_prompt(given, prefix):
        return prefix
    raise BadRow("prompt_mismatch", column, "the messages before the answer differ from the prompt")


def _implicit_strings(chosen: str, rejected: str, cols: Columns) -> tuple[list[dict[str, str]], str, str]:
    """TRL's standard implicit-prompt shape: the prompt is the shared beginning of the two texts."""
    shared = os.path.commonprefix([chosen, rejected])
    cut = max(shared.rfind(c) for c in " \n\t")
    prompt = shared[: max(cut, 0)].strip()
    if not prompt:
        raise BadRow(
            "no_common_prompt",
            cols.chosen,
            "chosen and rejected share no leading prompt text and no prompt column was found; "
            "name it with --columns prompt=NAME",
        )
    return normalize_messages(prompt), chosen[cut:], rejected[cut:]


def _metadata_scores(record: dict, column: str) -> dict:
    raw = record.get(column)
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = ast.literal_eval(raw)  # a Python repr; literal_eval never runs code
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise BadRow("bad_metadata", column, "not a Python literal") from None
    return raw if isinstance(raw, dict) else {}


def _scores(record: dict, cols: Columns, issues: list[BadRow]) -> list[float | None]:
    """Each answer's score: its column in this record, else the same name inside ``metadata``."""
    assert cols.score_chosen is not None and cols.score_rejected is not None and cols.metadata is not None
    meta: dict | None = None
    scores = []
    for name in (cols.score_chosen, cols.score_rejected):
        if name in record:
            value, where = record[name], name
        else:
            meta = _metadata_scores(record, cols.metadata) if meta is None else meta
            value, where = meta.get(name), f"{cols.metadata}.{name}"
        scores.append(to_score(value, where, issues))
    return scores


def _model(record: dict, column: str | None) -> str | None:
    value = record.get(column) if column else None
    return None if value is None else str(value)


def parse(record: dict, cols: Columns) -> ParsedRow:
    assert cols.chosen is not None and cols.rejected is not None  # set by resolve()
    raw_chosen, raw_rejected = field_of(record, cols.chosen), field_of(record, cols.rejected)
    if cols.prompt is None and hh_rlhf.is_transcript(raw_chosen) and hh_rlhf.is_transcript(raw_rejected):
        parsed = hh_rlhf.parse_pair(raw_chosen, raw_rejected, cols.chosen, cols.rejected)
        prompt, chosen, rejected = parsed.prompt, parsed.answers[0]["text"], parsed.answers[1]["text"]
    else:
        chosen_prefix, chosen = _split(raw_chosen, cols.chosen)
        rejected_prefix, rejected = _split(raw_rejected, cols.rejected)
        if (chosen_prefix is None) != (rejected_prefix is None):
            raise BadRow("mixed_answer_types", cols.rejected, "one answer is a message list, the other a string")
        if cols.prompt is not None:
            given = hh_rlhf.prompt_messages(field_of(record, cols.prompt), cols.prompt)
            prompt = _with_prompt(given, chosen_prefix, cols.chosen)
            if _with_prompt(given, rejected_prefix, cols.rejected) != prompt:
                raise BadRow("prompt_mismatch", cols.rejected, "chosen and rejected have different prompt messages")
        elif chosen_prefix is None:
            prompt, chosen, rejected = _implicit_strings(chosen, rejected, cols)
        else:
            if chosen_prefix != rejected_prefix:
                raise BadRow("prompt_mismatch", cols.rejected, "chosen and rejected have different prompt messages")
            prompt = chosen_prefix
    check_prompt(prompt, cols.prompt or cols.chosen)
    check_text(chosen, cols.chosen)
    check_text(rejected, cols.rejected)
    if chosen.strip() == rejected.strip():
        raise BadRow("chosen_equals_rejected", cols.rejected)
    issues: list[BadRow] = []
    score_chosen, score_rejected = _scores(record, cols, issues)
    return ParsedRow(
        prompt=prompt,
        answers=[
            answer(chosen, score=score_chosen, source=_model(record, cols.model_chosen)),
            answer(rejected, score=score_rejected, source=_model(record, cols.model_rejected)),
        ],
        pairs=[(0, 1)],
        issues=issues,
    )
