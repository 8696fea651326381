"""Progress that works in logs: plain lines at most every N seconds off a terminal, --no-progress silences it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from prefpool.core.errors import ConfigError
from prefpool.pipeline.io.progress import (
    INTERVAL_ENV,
    LineProgress,
    announce,
    log_interval,
    progress,
    progress_line,
    rate_text,
    summary_line,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_line_has_done_total_rate_and_eta():
    """128 of 512 in 32 s: 4 samples/s, 25 %, (512 - 128) / 4 = 96 s left."""
    line = progress_line("generate", 128, 512, unit="samples", rate=4.0, elapsed=32.0)
    assert line == "generate: 128/512 samples (25%), 4 samples/s, elapsed 0:00:32, ETA 0:01:36"
    assert progress_line("ingest: reading", 1200, None, unit="rows", rate=40.0, elapsed=30.0) == (
        "ingest: reading: 1200 rows, 40 rows/s, elapsed 0:00:30"
    )


def test_a_slow_rate_reads_as_time_per_item_never_zero_per_second():
    """0.1 rows/s is 10 s a row; 1/150 steps/s is 150 s = 2.5 min a step; fast rates keep thousands separators."""
    assert rate_text(0.1, "rows") == "10 s/row" and rate_text(1 / 150, "steps") == "2.5 min/step"
    assert rate_text(4.25, "samples") == "4.25 samples/s" and rate_text(1250.4, "rows") == "1,250 rows/s"
    assert rate_text(0.0, "rows") == "? rows/s"
    assert summary_line("logprobs", rows=3, seconds=40.0, out="o") == "logprobs: 3 rows in 40.0 s (13.3 s/row) -> o"


def test_lines_come_at_most_every_interval_and_a_last_one_at_the_end():
    clock, stream = Clock(), io.StringIO()
    bar = LineProgress("logprobs", 10, unit="rows", stream=stream, interval=30.0, clock=clock)
    for _ in range(10):  # one row every 10 s: the first at once (10 s >= 5 s), then every 30 s; the end shown once
        clock.now += 10
        bar.advance(1)
    bar.close()
    assert stream.getvalue().splitlines() == [
        "logprobs: 1/10 rows (10%), ? rows/s, elapsed 0:00:10",
        "logprobs: 4/10 rows (40%), 10 s/row, elapsed 0:00:40, ETA 0:01:00",
        "logprobs: 7/10 rows (70%), 10 s/row, elapsed 0:01:10, ETA 0:00:30",
        "logprobs: 10/10 rows (100%), 10 s/row, elapsed 0:01:40",
    ]


def test_the_eta_counts_from_the_first_output_not_from_the_model_load():
    """140 s of loading, then 1 sample, then 9 more in 18 s: 0.5 samples/s, so 86 left take 172 s, not hours."""
    clock, stream = Clock(), io.StringIO()
    bar = LineProgress("generate", 96, unit="samples", stream=stream, interval=15.0, clock=clock)
    clock.now += 140
    bar.advance(1)
    clock.now += 18
    bar.advance(9)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "generate: 1/96 samples (1%), ? samples/s, elapsed 0:02:20"  # no ETA from the load
    assert lines[1] == "generate: 10/96 samples (10%), 2 s/sample, elapsed 0:02:38, ETA 0:02:52"


def test_announce_says_what_starts_unless_progress_is_off():
    stream = io.StringIO()
    announce("eval", "loading the model m.gguf", stream=stream)
    announce("eval", "not shown", enabled=False, stream=stream)
    assert stream.getvalue() == "eval: loading the model m.gguf\n"


def test_a_run_shorter_than_the_interval_writes_nothing():
    clock, stream = Clock(), io.StringIO()
    bar = LineProgress("build", 5, unit="rows", stream=stream, interval=30.0, clock=clock)
    for _ in range(5):
        clock.now += 1
        bar.advance(1)
    bar.close()
    assert stream.getvalue() == ""


def test_work_done_before_a_resume_is_shown_but_not_in_the_rate():
    """Resumed at step 40 of 100: step 41 after 30 s of loading, then 20 more in 40 s is 2 s a step,
    ETA (100 - 61) / 0.5 = 78 s."""
    clock, stream = Clock(), io.StringIO()
    bar = LineProgress("train", 100, unit="steps", stream=stream, interval=40.0, initial=40, clock=clock)
    clock.now += 30
    bar.advance(1)
    clock.now += 40
    bar.advance(20)
    assert stream.getvalue().splitlines() == [
        "train: 41/100 steps (41%), ? steps/s, elapsed 0:00:30",
        "train: 61/100 steps (61%), 2 s/step, elapsed 0:01:10, ETA 0:01:18",
    ]


def test_off_a_terminal_progress_writes_lines_and_no_progress_writes_nothing(monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "1e-9")
    stream = io.StringIO()  # not a terminal, as a Slurm log is not
    with progress("score", 3, stream=stream) as advance:
        for _ in range(3):
            advance(1)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("score: 1/3 rows (33%)") and lines[-1].startswith("score: 3/3 rows (100%)")
    assert "\x1b" not in stream.getvalue()  # no terminal control codes in a log
    silent = io.StringIO()
    with progress("score", 3, enabled=False, stream=silent) as advance:
        advance(3)
    assert silent.getvalue() == ""


@pytest.mark.parametrize("bad", ["soon", "0", "-5", "inf"])
def test_a_bad_interval_is_a_config_error(monkeypatch, bad):
    monkeypatch.setenv(INTERVAL_ENV, bad)
    with pytest.raises(ConfigError, match=f"\\${INTERVAL_ENV}: expected a number of seconds > 0"):
        log_interval()


def test_a_stage_in_a_log_prints_progress_lines(tmp_path):
    """`prefpool ingest` with stderr a file (nohup, Slurm): plain progress lines; --no-progress: none."""
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "a", "rejected": "b"}) + "\n" for i in range(5)))
    env = {**os.environ, INTERVAL_ENV: "1e-9"}

    def run(*extra, out):
        with open(tmp_path / f"{out}.log", "w") as log:
            command = [
                sys.executable,
                "-m",
                "prefpool",
                "ingest",
                str(src),
                "-f",
                "pairwise",
                "-o",
                str(tmp_path / out),
            ]
            done = subprocess.run([*command, *extra], stderr=log, stdout=subprocess.PIPE, env=env, timeout=120)
        assert done.returncode == 0
        return (tmp_path / f"{out}.log").read_text()

    log = run(out="a")
    assert "ingest: reading: 5 rows" in log and "ingest: writing: 1/1 shards (100%)" in log
    assert run("--no-progress", out="b") == ""
