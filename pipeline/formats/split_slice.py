"""A row range in a split name, as ``datasets`` writes it: ``train[:24]``, ``train[10:34]``, ``test[100:]``.

Rows are counted in the order the source yields them (files in split order,
records in file order), before any row is parsed or dropped, so ``train[:24]``
reads the first 24 records of the split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prefpool.pipeline.io.errors import PipelineConfigError

_SLICE = re.compile(r"^(?P<name>[^\[\]]+)\[(?P<start>\d*):(?P<stop>\d*)\]$")


@dataclass(frozen=True)
class SplitSlice:
    name: str | None  # the split to read (None: the default one)
    start: int = 0
    stop: int | None = None  # exclusive; None: to the end

    def takes(self, index: int) -> bool:
        """Whether the record at ``index`` (0-based, in the source's order) is in the range."""
        return index >= self.start and (self.stop is None or index < self.stop)

    def done(self, index: int) -> bool:
        """Whether no record from ``index`` on is in the range (reading can stop)."""
        return self.stop is not None and index >= self.stop


def parse_split(split: str | None) -> SplitSlice:
    """``"train[:24]"`` -> ``SplitSlice("train", 0, 24)``; a plain name or None reads the whole split."""
    if split is None or "[" not in split:
        return SplitSlice(split)
    match = _SLICE.match(split.strip())
    if not match:
        raise PipelineConfigError(
            f"split {split!r}: expected NAME or NAME[START:STOP] with row numbers, e.g. train[:24] or train[10:34]"
        )
    start = int(match["start"]) if match["start"] else 0
    stop = int(match["stop"]) if match["stop"] else None
    if stop is not None and stop <= start:
        raise PipelineConfigError(f"split {split!r}: the range [{start}:{stop}] holds no row; STOP must exceed START")
    return SplitSlice(match["name"].strip(), start, stop)
