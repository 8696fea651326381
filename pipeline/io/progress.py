"""Progress bars (rows, rate, ETA) and the one-line summary every stage prints."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
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


@contextmanager
def progress(
    description: str, total: int | None = None, *, enabled: bool | None = None, unit: str = "rows"
) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; shows a bar on stderr when it is a terminal (or ``enabled``)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield lambda n=1: None
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
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def summary_line(stage: str, *, rows: int, seconds: float, out: str | Path, **counts: object) -> str:
    """E.g. ``ingest: 1000 rows in 0.8 s (1250 rows/s) -> out/  [dropped=5 merged=2]``."""
    rate = rows / seconds if seconds > 0 else float("inf")
    extra = " ".join(f"{k}={v}" for k, v in counts.items())
    line = f"{stage}: {rows} rows in {seconds:.1f} s ({rate:.0f} rows/s) -> {out}"
    return f"{line}  [{extra}]" if extra else line
