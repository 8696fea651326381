"""``hh-rlhf``: Anthropic HH transcripts.

``chosen`` and ``rejected`` are whole dialogues, ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``,
that share everything up to their last ``"\\n\\nAssistant:"`` and differ in the
final assistant turn. The shared part becomes a multi-turn prompt (user,
assistant, user, ...) and the two final turns the answers. Rows whose
transcripts do not share that prefix, or have no final assistant turn, are
dropped with a reason.
"""

from __future__ import annotations

import re

from prefpool.pipeline.formats.rows import (
    BadRow,
    Columns,
    ParsedRow,
    answer,
    check_prompt,
    check_text,
    field_of,
    require,
    to_messages,
)

ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_turns(text: str, column: str) -> list[dict[str, str]]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b"`` -> user/assistant messages, contents stripped."""
    if not text.startswith("\n\n") and text.startswith(("Human:", "Assistant:")):
        text = "\n\n" + text  # some copies lost the leading blank line
    pieces = _TURN.split(text)
    if pieces[0].strip():
        raise BadRow("hh_malformed", column, "text before the first Human:/Assistant: turn")
    return [
        {"role": _ROLES[role], "content": content.strip()}
        for role, content in zip(pieces[1::2], pieces[2::2], strict=True)
    ]


def split_transcript(text: object, column: str) -> tuple[str, str]:
    """(everything before the last assistant turn, that turn's text)."""
    if not isinstance(text, str):
        raise BadRow("non_string_completion", column, f"got {type(text).__name__}")
    cut = text.rfind(ASSISTANT)
    if cut < 0:
        raise BadRow("hh_no_final_assistant", column)
    return text[:cut], text[cut + len(ASSISTANT) :].strip()


def prompt_messages(raw: object, column: str) -> list[dict[str, str]]:
    """A prompt: a string, a message list, or an HH-style transcript string (Nectar), split into its turns."""
    if isinstance(raw, str) and raw.lstrip(" ").startswith(("\n\nHuman:", "Human:")):
        turns = parse_turns(raw.lstrip(" "), column)
        if turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
            turns = turns[:-1]  # the open "Assistant:" the answer would follow
        check_prompt(turns, column)
        return turns
    return to_messages(raw, column)


def is_transcript(value: object) -> bool:
    """Whether ``value`` looks like an HH dialogue string (a Human turn, then an Assistant turn)."""
    return isinstance(value, str) and value.lstrip(" ").startswith(("\n\nHuman:", "Human:")) and ASSISTANT in value


def resolve(first: dict, cols: Columns) -> Columns:
    cols = cols.but(chosen=cols.chosen or "chosen", rejected=cols.rejected or "rejected")
    require(first, cols.chosen, cols.rejected, hint="the hh-rlhf format needs chosen/rejected transcripts")
    return cols


def parse_pair(chosen_raw: object, rejected_raw: object, chosen_col: str, rejected_col: str) -> ParsedRow:
    """Two whole transcripts -> the shared prompt and the two final assistant turns."""
    chosen_prefix, chosen = split_transcript(chosen_raw, chosen_col)
    rejected_prefix, rejected = split_transcript(rejected_raw, rejected_col)
    if chosen_prefix.strip() != rejected_prefix.strip():
        raise BadRow("hh_prefix_mismatch", rejected_col, "chosen and rejected differ before the last turn")
    prompt = parse_turns(chosen_prefix, chosen_col)
    if not prompt or prompt[-1]["role"] != "user" or not any(m["content"] for m in prompt):
        raise BadRow(
            "empty_prompt" if not prompt else "hh_malformed", chosen_col, "the prompt must end with a Human turn"
        )
    check_text(chosen, chosen_col)
    check_text(rejected, rejected_col)
    if chosen == rejected:
        raise BadRow("chosen_equals_rejected", rejected_col)
    return ParsedRow(prompt=prompt, answers=[answer(chosen), answer(rejected)], pairs=[(0, 1)])


def parse(record: dict, cols: Columns) -> ParsedRow:
    assert cols.chosen is not None and cols.rejected is not None  # set by resolve()
    return parse_pair(field_of(record, cols.chosen), field_of(record, cols.rejected), cols.chosen, cols.rejected)
