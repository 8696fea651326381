"""``prompts``: prompts only (answers are generated later)."""

from __future__ import annotations

from prefpool.pipeline.formats.hh_rlhf import prompt_messages
from prefpool.pipeline.formats.ranked import PROMPT_NAMES
from prefpool.pipeline.formats.rows import Columns, MissingColumn, ParsedRow, field_of, first_present, require


def resolve(first: dict, cols: Columns) -> Columns:
    prompt = cols.prompt or first_present(first, PROMPT_NAMES)
    if prompt is None:
        raise MissingColumn("prompt", f"none of {PROMPT_NAMES} found; pass --columns prompt=NAME")
    require(first, prompt)
    return Columns(prompt=prompt)


def parse(record: dict, cols: Columns) -> ParsedRow:
    assert cols.prompt is not None
    return ParsedRow(prompt=prompt_messages(field_of(record, cols.prompt), cols.prompt), answers=[])
