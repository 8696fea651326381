"""Merge input rows that share a ``prompt_id`` into one example.

Answers are concatenated in input order with identical texts kept once (the
first occurrence keeps its score/rank/source), pair indices are remapped to
the merged list, and pairs are unioned. The row's ``source`` is the first
row's. Ranks of merged ranked rows keep their original values: ranks from
different rows are not comparable, which the build stage must keep in mind.
"""

from __future__ import annotations

from prefpool.pipeline.formats.rows import ParsedRow


class ExampleMerger:
    def __init__(self) -> None:
        self._rows: dict[str, dict] = {}
        self._text_index: dict[str, dict[str, int]] = {}
        self.rows_merged = 0
        self.answers_removed = 0

    def add(self, pid: str, parsed: ParsedRow, source: str) -> None:
        row = self._rows.get(pid)
        if row is None:
            row = {"prompt_id": pid, "prompt": parsed.prompt, "answers": [], "pairs": [], "source": source}
            self._rows[pid] = row
            self._text_index[pid] = {}
        else:
            self.rows_merged += 1
        index = self._text_index[pid]
        remap = []
        for ans in parsed.answers:
            if ans["text"] in index:
                self.answers_removed += 1
            else:
                index[ans["text"]] = len(row["answers"])
                row["answers"].append(ans)
            remap.append(index[ans["text"]])
        for chosen, rejected in parsed.pairs:
            pair = {"chosen": remap[chosen], "rejected": remap[rejected]}
            if pair["chosen"] != pair["rejected"] and pair not in row["pairs"]:
                row["pairs"].append(pair)

    def rows(self) -> list[dict]:
        """Merged rows in canonical order: sorted by ``prompt_id``."""
        return [self._rows[pid] for pid in sorted(self._rows)]
