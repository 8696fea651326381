"""Progress bars (rows, rate, ETA, work units done) and the one-line summary every stage prints."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class _RateColumn(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} {self.unit}/s" if speed else f"? {self.unit}/s")


class Advance:
    """``advance(n)``: n more rows (or samples) done; ``advance.unit_done()``: one more work unit written."""

    def __init__(self, bar: Progress | None = None, task=None, units: int | None = None) -> None:
        self.bar, self.task, self.units, self.units_done = bar, task, units, 0

    def __call__(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n)

    def unit_done(self) -> None:
        self.units_done += 1
        if self.bar is not None and self.units is not None:
            self.bar.update(self.task, units=f"{self.units_done}/{self.units} units")


@contextmanager
def progress(
    description: str,
    total: int | None = None,
    *,
    enabled: bool | None = None,
    unit: str = "rows",
    units: int | None = None,
) -> Iterator[Advance]:
    """Yield an ``Advance``; shows a bar on stderr when it is a terminal (or ``enabled``).

    ``units``: the work units to do, shown as ``done/total units`` beside the rows, the rate and the ETA.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield Advance()
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TaskProgressColumn(),
        _RateColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    if units is not None:
        columns.insert(5, TextColumn("{task.fields[units]}"))
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total, units=f"0/{units} units")
        yield Advance(bar, task, units)


def summary_line(stage: str, *, rows: int, seconds: float, out: str | Path, **counts: object) -> str:
    """E.g. ``ingest: 1000 rows in 0.8 s (1250 rows/s) -> out/  [dropped=5 merged=2]``."""
    rate = rows / seconds if seconds > 0 else float("inf")
    extra = " ".join(f"{k}={v}" for k, v in counts.items())
    line = f"{stage}: {rows} rows in {seconds:.1f} s ({rate:.0f} rows/s) -> {out}"
    return f"{line}  [{extra}]" if extra else line
