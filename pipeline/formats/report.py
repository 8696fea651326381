"""``report.json`` of ingest: what was read, dropped (and why) and merged; and the messages that say so.

The report is the full account. Loss is also said out loud: no row written is
an error (``no_rows_message``), more than ``WARN_DROPPED`` of the rows dropped
a ``DroppedRowsWarning`` (``warnings.warn``, printed on stderr), both naming the
top reasons with an example each.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict

from prefpool.pipeline.formats.readers import Record
from prefpool.pipeline.formats.rows import BadRow, Columns

EXAMPLES_PER_REASON = 3
WARN_DROPPED = 0.10  # warn when more than this share of the rows read is dropped
TOP_REASONS = 3


class DroppedRowsWarning(UserWarning):
    """Ingest dropped many rows, or left data (files, score-like columns) unread."""


class IngestReport:
    def __init__(self) -> None:
        self.rows_read = 0
        self.dropped_rows: Counter[str] = Counter()
        self.dropped_answers: Counter[str] = Counter()
        self.dropped_values: Counter[str] = Counter()
        self.duplicate_rows_merged = 0
        self.duplicate_answers_removed = 0
        self.examples: list[dict] = []
        self._shown: Counter[str] = Counter()
        self.columns: dict[str, Columns] = {}  # file -> resolved column names
        self.unused_columns: dict[str, list[str]] = {}  # file -> columns of its first record no format field read
        self.inputs: dict = {}  # what was read: format, split, splits found, files in no split

    def drop(self, bad: BadRow, record: Record, *, what: str = "row") -> None:
        """Count a dropped ``row``, ``answer`` or ``value`` (a score set to null)."""
        counter = {"row": self.dropped_rows, "answer": self.dropped_answers, "value": self.dropped_values}[what]
        counter[bad.reason] += 1
        key = f"{what}:{bad.reason}"
        if self._shown[key] < EXAMPLES_PER_REASON:
            self._shown[key] += 1
            self.examples.append(
                {
                    "dropped": what,
                    "reason": bad.reason,
                    "file": record.file,
                    "row": record.row,
                    "line": record.line,
                    "column": bad.column,
                    "detail": bad.detail,
                }
            )

    @property
    def rows_dropped(self) -> int:
        return sum(self.dropped_rows.values())

    def to_json(self, rows_written: int) -> dict:
        return {
            "rows_read": self.rows_read,
            "rows_written": rows_written,
            "rows_dropped": self.rows_dropped,
            "dropped_rows": dict(sorted(self.dropped_rows.items())),
            "dropped_answers": dict(sorted(self.dropped_answers.items())),
            "dropped_values": dict(sorted(self.dropped_values.items())),
            "duplicate_rows_merged": self.duplicate_rows_merged,
            "duplicate_answers_removed": self.duplicate_answers_removed,
            "row_numbers": "0-based within each file; line is 1-based",
            "examples": self.examples,
            "columns": {file: asdict(cols) for file, cols in self.columns.items()},
            "unused_columns": self.unused_columns,
            "inputs": self.inputs,
        }

    def top_reasons(self, what: str = "row", limit: int = TOP_REASONS) -> str:
        """``"prompt_mismatch: 12 rows (e.g. a.jsonl, row 0, line 1, column 'chosen': ...)"; ...``."""
        counter = {"row": self.dropped_rows, "answer": self.dropped_answers, "value": self.dropped_values}[what]
        parts = []
        for reason, count in counter.most_common(limit):
            example = next(e for e in self.examples if e["dropped"] == what and e["reason"] == reason)
            where = [example["file"], f"row {example['row']}"]
            if example["line"] is not None:
                where.append(f"line {example['line']}")
            if example["column"] is not None:
                where.append(f"column {example['column']!r}")
            detail = f": {example['detail']}" if example["detail"] else ""
            parts.append(f"{reason}: {count} {what}{'s' if count != 1 else ''} (e.g. {', '.join(where)}{detail})")
        return "; ".join(parts)

    def no_rows_message(self) -> str:
        if self.rows_read == 0:
            return "the input holds no rows"
        return (
            f"no row could be used: all {self.rows_read} rows read were dropped. Top reasons: {self.top_reasons()}. "
            "Check --format (or let it be detected) and --columns; report.json is not written"
        )

    def dropped_warning(self) -> str | None:
        if not self.rows_read or self.rows_dropped <= WARN_DROPPED * self.rows_read:
            return None
        share = self.rows_dropped / self.rows_read
        return (
            f"ingest dropped {self.rows_dropped} of {self.rows_read} rows ({share:.0%}); "
            f"top reasons: {self.top_reasons()} (all counts and examples in report.json)"
        )
