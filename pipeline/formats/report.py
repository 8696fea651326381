"""``report.json`` of ingest: what was read, dropped (and why) and merged."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict

from prefpool.pipeline.formats.readers import Record
from prefpool.pipeline.formats.rows import BadRow, Columns

EXAMPLES_PER_REASON = 3


class IngestReport:
    def __init__(self) -> None:
        self.rows_read = 0
        self.dropped_rows: Counter[str] = Counter()
        self.dropped_answers: Counter[str] = Counter()
        self.duplicate_rows_merged = 0
        self.duplicate_answers_removed = 0
        self.examples: list[dict] = []
        self._shown: Counter[str] = Counter()
        self.columns: dict[str, Columns] = {}  # file -> resolved column names

    def drop(self, bad: BadRow, record: Record, *, answer: bool = False) -> None:
        (self.dropped_answers if answer else self.dropped_rows)[bad.reason] += 1
        key = ("answer:" if answer else "row:") + bad.reason
        if self._shown[key] < EXAMPLES_PER_REASON:
            self._shown[key] += 1
            self.examples.append(
                {
                    "dropped": "answer" if answer else "row",
                    "reason": bad.reason,
                    "file": record.file,
                    "row": record.row,
                    "line": record.line,
                    "column": bad.column,
                    "detail": bad.detail,
                }
            )

    def to_json(self, rows_written: int) -> dict:
        return {
            "rows_read": self.rows_read,
            "rows_written": rows_written,
            "rows_dropped": sum(self.dropped_rows.values()),
            "dropped_rows": dict(sorted(self.dropped_rows.items())),
            "dropped_answers": dict(sorted(self.dropped_answers.items())),
            "duplicate_rows_merged": self.duplicate_rows_merged,
            "duplicate_answers_removed": self.duplicate_answers_removed,
            "row_numbers": "0-based within each file; line is 1-based",
            "examples": self.examples,
            "columns": {file: asdict(cols) for file, cols in self.columns.items()},
        }
