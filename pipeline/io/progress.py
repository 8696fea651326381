"""Progress (done/total, rate, ETA, work units) that works on a terminal and in a log, and the stage summary.

On a terminal, a rich bar. Anywhere else (a Slurm log, ``nohup``, a pipe) a
bar is useless: it redraws with control codes and the log gets only its last
state. There, a plain line at most every ``$PREFPOOL_PROGRESS_SECONDS``
seconds (default 30), e.g.::

    generate: 128/512 samples (25%), 4.2 samples/s, elapsed 0:00:30, ETA 0:01:31

and, once a line has been written, a last one when the work is done. A run
shorter than the interval writes none (the stage's summary line says it all).
The first piece of work done ``FIRST_LINE_SECONDS`` or more after the start
(a model was loading) writes a line at once. Rates and ETAs count from that
first piece on, so a model's load time does not stretch the ETA; a slow rate
reads as time per item (``12.5 s/step``), never as ``0 rows/s``.
``announce`` writes one line when a stage starts something slow (loading a
model), so a long command talks from its first second.
``--no-progress`` (``enabled=False``) writes nothing either way. With ``units``
(a stage's work units, e.g. on a Ray cluster) both show ``done/total units`` too.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

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

from prefpool.core.errors import ConfigError

INTERVAL_ENV = "PREFPOOL_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0
FIRST_LINE_SECONDS = 5.0


class _RateColumn(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text(rate_text(task.finished_speed or task.speed, self.unit))


def rate_text(rate: float | None, unit: str) -> str:
    """``1,250 rows/s``, ``4.2 rows/s``; below one a second as time per item: ``12.5 s/step``, ``2.1 min/step``."""
    if not rate or rate <= 0 or not math.isfinite(rate):
        return f"? {unit}/s"
    if rate >= 100:
        return f"{rate:,.0f} {unit}/s"
    if rate >= 1:
        return f"{rate:.3g} {unit}/s"
    one = unit.removesuffix("s")
    seconds = 1 / rate
    return f"{seconds:.3g} s/{one}" if seconds < 60 else f"{seconds / 60:.3g} min/{one}"


def announce(description: str, text: str, *, enabled: bool | None = None, stream: TextIO | None = None) -> None:
    """``description: text`` on stderr (nothing when ``enabled`` is False): e.g. that a model starts loading."""
    if enabled is False:
        return
    stream = sys.stderr if stream is None else stream
    stream.write(f"{description}: {text}\n")
    stream.flush()


def log_interval() -> float:
    """Seconds between two plain progress lines: ``$PREFPOOL_PROGRESS_SECONDS``, else 30."""
    raw = os.environ.get(INTERVAL_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise ConfigError(f"${INTERVAL_ENV}: expected a number of seconds > 0, got {raw!r}")
    return value


def _clock_text(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def progress_line(
    description: str,
    done: int,
    total: int | None,
    *,
    unit: str,
    rate: float,
    elapsed: float,
    units: str | None = None,
) -> str:
    """One plain progress line (see the module docstring); ``rate`` in ``unit`` per second."""
    count = f"{done}/{total} {unit} ({100 * done / total:.0f}%)" if total else f"{done} {unit}"
    speed = rate_text(rate, unit)
    line = f"{description}: {count}, {units + ', ' if units else ''}{speed}, elapsed {_clock_text(elapsed)}"
    if total and rate > 0 and done < total:
        line += f", ETA {_clock_text((total - done) / rate)}"
    return line


class LineProgress:
    """``advance(n)`` that writes ``progress_line`` to ``stream`` at most every ``interval`` seconds."""

    def __init__(
        self,
        description: str,
        total: int | None,
        *,
        unit: str,
        stream: TextIO,
        interval: float,
        initial: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.stream, self.interval, self.clock = stream, interval, clock
        self.initial = self.done = initial  # a resumed run's earlier work does not count in the rate
        self.start = self.last = clock()
        self.first: tuple[float, int] | None = None  # (time, done) at the first advance: the work's own start
        self.lines = 0
        self.shown = initial  # the count the last line showed
        self.units: str | None = None  # "3/12 units", set by Advance.unit_done

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if self.first is None:
            self.first = (now, self.done)
            if now - self.start >= min(FIRST_LINE_SECONDS, self.interval):
                self._write(now)  # the first output after loading: how long that took
                return
        if now - self.last >= self.interval:
            self._write(now)

    def close(self) -> None:
        # the log shows where the work ended; a run shorter than one interval stays quiet
        if self.lines and self.shown != self.done:
            self._write(self.clock())

    def rate(self, now: float) -> float:
        """Work per second from the first advance on, so load time is excluded; 0 (unknown) until a second one."""
        if self.first is not None and self.done > self.first[1] and now > self.first[0]:
            return (self.done - self.first[1]) / (now - self.first[0])
        return 0.0

    def _write(self, now: float) -> None:
        text = progress_line(
            self.description,
            self.done,
            self.total,
            unit=self.unit,
            rate=self.rate(now),
            elapsed=now - self.start,
            units=self.units,
        )
        self.stream.write(text + "\n")
        self.stream.flush()
        self.last, self.lines, self.shown = now, self.lines + 1, self.done


class Advance:
    """``advance(n)``: n more rows (or samples) done; ``advance.unit_done()``: one more work unit written."""

    def __init__(self, bar: Progress | None = None, task=None, units: int | None = None, lines=None) -> None:
        self.bar, self.task, self.units, self.lines, self.units_done = bar, task, units, lines, 0

    def __call__(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n)
        elif self.lines is not None:
            self.lines.advance(n)

    def unit_done(self) -> None:
        self.units_done += 1
        if self.units is None:
            return
        text = f"{self.units_done}/{self.units} units"
        if self.bar is not None:
            self.bar.update(self.task, units=text)
        elif self.lines is not None:
            self.lines.units = text


@contextmanager
def progress(
    description: str,
    total: int | None = None,
    *,
    enabled: bool | None = None,
    unit: str = "rows",
    initial: int = 0,
    stream: TextIO | None = None,
    units: int | None = None,
) -> Iterator[Advance]:
    """Yield an ``Advance``: a bar on a terminal, else plain lines (``enabled`` None or True); nothing if False.

    ``initial``: work already done before this call (a resumed run), shown but not counted in the rate.
    ``units``: the work units to do, shown as ``done/total units`` beside the rows, the rate and the ETA.
    """
    if enabled is False:
        yield Advance()
        return
    stream = sys.stderr if stream is None else stream
    if not stream.isatty():
        lines = LineProgress(description, total, unit=unit, stream=stream, interval=log_interval(), initial=initial)
        if units is not None:
            lines.units = f"0/{units} units"
        yield Advance(units=units, lines=lines)
        lines.close()  # not reached when the work failed: the error is the log's last word
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
    with Progress(*columns, console=Console(file=stream), transient=True) as bar:
        task = bar.add_task(description, total=total, completed=initial, units=f"0/{units} units")
        yield Advance(bar, task, units)


def summary_line(stage: str, *, rows: int, seconds: float, out: str | Path, **counts: object) -> str:
    """E.g. ``ingest: 1000 rows in 0.8 s (1250 rows/s) -> out/  [dropped=5 merged=2]``."""
    rate = rows / seconds if seconds > 0 else None
    extra = " ".join(f"{k}={v}" for k, v in counts.items())
    line = f"{stage}: {rows} rows in {seconds:.1f} s ({rate_text(rate, 'rows')}) -> {out}"
    return f"{line}  [{extra}]" if extra else line
