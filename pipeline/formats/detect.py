"""``format="auto"``: the input format, told from the input's first record.

The rules, on the record's column names (after ``--columns``) and value types:

- ``chosen`` and ``rejected``: ``hh-rlhf`` when both are HH transcripts and no
  prompt column exists, else ``pairwise`` (every TRL preference shape);
- an answers list (``answers``/``candidates``/``completions``/``responses``):
  ``ultrafeedback`` when its items are UltraFeedback completions (``response``
  with ``overall_score`` or ``annotations``), else ``ranked``;
- neither, but a prompt column: ``prompts``, unless the record also holds
  something that looks like answers (``completion``, ``response``, ...), which
  ``prompts`` would silently discard.

No match, or more than one, is an error that lists the candidates and says
which flags decide.
"""

from __future__ import annotations

from collections.abc import Mapping

from prefpool.pipeline.formats import hh_rlhf, ultrafeedback
from prefpool.pipeline.formats.ranked import ANSWERS_NAMES, PROMPT_NAMES
from prefpool.pipeline.formats.rows import Columns, first_present

# Columns that hold answers in shapes no format reads (TRL prompt-completion, unpaired preference, SFT).
ANSWER_LIKE = ("completion", "response", "output", "answer", "messages", "label", "chosen", "rejected")
NEEDS = {
    "pairwise": "chosen and rejected columns (strings or message lists)",
    "hh-rlhf": "chosen and rejected HH transcripts ('\\n\\nHuman: ...\\n\\nAssistant: ...')",
    "ranked": f"a prompt and a list of answers ({'/'.join(ANSWERS_NAMES)}) with ranks or scores",
    "ultrafeedback": "instruction and completions[] with response and overall_score/annotations",
    "prompts": f"a prompt column ({'/'.join(PROMPT_NAMES)}) and no answers",
}


class UnclearFormat(Exception):
    """The record fits no format, or several; the message says why (ingest adds the file)."""


def candidates(record: Mapping, cols: Columns) -> list[str]:
    """Every format whose shape the record has."""
    found = []
    chosen, rejected = cols.chosen or "chosen", cols.rejected or "rejected"
    if chosen in record and rejected in record:
        prompt = cols.prompt or first_present(record, PROMPT_NAMES)
        hh = prompt is None and all(hh_rlhf.is_transcript(record[c]) for c in (chosen, rejected))
        found.append("hh-rlhf" if hh else "pairwise")
    answers = cols.answers or first_present(record, ANSWERS_NAMES)
    if answers is not None and isinstance(record.get(answers), list):
        items = record[answers]
        uf = any(ultrafeedback.looks_like(item) for item in items) or (
            not items and answers == "completions" and "instruction" in record and "models" in record
        )
        found.append("ultrafeedback" if uf else "ranked")
    if not found and (cols.prompt or first_present(record, PROMPT_NAMES)) in record:
        found.append("prompts")
    return found


def detect(record: Mapping, cols: Columns) -> str:
    """The format name, or ``UnclearFormat``."""
    found = candidates(record, cols)
    names = sorted(record)
    shown = ", ".join(repr(n) for n in names[:12]) + (", ..." if len(names) > 12 else "")
    flags = "pass --format (one of " + ", ".join(NEEDS) + ") and, for other column names, --columns KEY=COLUMN,..."
    if len(found) > 1:
        raise UnclearFormat(
            f"the columns ({shown}) fit several formats: "
            + "; ".join(f"{name} ({NEEDS[name]})" for name in found)
            + f"; {flags}"
        )
    if found == ["prompts"]:
        extra = [c for c in ANSWER_LIKE if c in record]
        if extra:
            raise UnclearFormat(
                f"the columns ({shown}) hold a prompt and {extra[0]!r} but no preference "
                "(no chosen/rejected, no ranked answers list); pass --format prompts to keep only the prompts, "
                f"or --columns to name the answer columns ({flags})"
            )
    if not found:
        raise UnclearFormat(
            f"the columns ({shown}) fit no format; expected one of: "
            + "; ".join(f"{name}: {need}" for name, need in NEEDS.items())
            + f"; {flags}"
        )
    return found[0]
