"""One writer per output: two REAL ``prefpool`` processes on one --out, at several start offsets.

Whatever the offset, one run writes the folder and the other either is refused (exit 2, naming the
holder, or naming the other settings when the first had finished) or, with --wait, runs after it; the
folder always holds exactly one run's rows, matching its manifest. A lock left by a dead process is
taken over, and the run says so; --overwrite with --out a symbolic link replaces the target, keeps the
link, and leaves no .old-PID folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prefpool.pipeline.io.layout import MANIFEST, read_meta
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.io.writer_lock import OutputLockedError, StaleLockWarning, lock_path, writer_lock

PREFPOOL = [sys.executable, "-m", "prefpool"]
ROWS = 20_000  # about a second of ingest: long enough for the second process to meet the first


def _source(path: Path, tag: str) -> Path:
    with open(path, "w") as handle:
        for i in range(ROWS):
            handle.write(json.dumps({"prompt": f"{tag} question {i}", "chosen": f"yes {i}", "rejected": "no"}) + "\n")
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("lock-sources")
    return {tag: _source(root / f"{tag}.jsonl", tag) for tag in ("P", "Q")}


def _start(args: list, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([*PREFPOOL, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out + err


def _rows_from(folder: Path) -> set[str]:
    return {p[-1]["content"].split(" ", 1)[0] for p in read_table(folder).column("prompt").to_pylist()}


@pytest.mark.parametrize("offset", [0.0, 0.3, 1.0, 4.0])
def test_two_ingests_into_one_out_never_mix(tmp_path, sources, offset):
    out = tmp_path / "out"
    first = _start(["ingest", sources["P"], "-f", "pairwise", "-o", out])
    time.sleep(offset)
    second = _start(["ingest", sources["Q"], "-f", "pairwise", "-o", out])
    results = [_finish(first), _finish(second)]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(text for code, text in results if code == 2)
    assert "being written by pid" in loser or "different settings" in loser, loser
    assert "Traceback" not in loser
    winner = "P" if results[0][0] == 0 else "Q"
    assert _rows_from(out) == {winner}
    assert read_table(out).num_rows == ROWS
    assert read_meta(out, MANIFEST)["identity"]["config"]["source"].endswith(f"{winner}.jsonl")
    assert not lock_path(out).exists()


def _holder(folder: Path, seconds: float) -> subprocess.Popen:
    """A process that holds the output lock of ``folder`` for ``seconds`` (prints 'held' once it does)."""
    code = (
        "import sys, time\n"
        "from prefpool.pipeline.io.writer_lock import writer_lock\n"
        f"with writer_lock({str(folder)!r}, command='holder'):\n"
        "    print('held', flush=True)\n"
        f"    time.sleep({seconds})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_naming_the_holder_and_leaves_nothing(tmp_path, sources):
    out = tmp_path / "new" / "out"
    holder = _holder(out, 30)
    try:
        code, text = _finish(_start(["ingest", sources["P"], "-f", "pairwise", "-o", out]))
    finally:
        holder.kill()
        holder.wait()
    assert code == 2, text
    assert f"{out.resolve()} is being written by pid {holder.pid} on host" in text
    assert "`prefpool holder`" in text and "--wait" in text and "Traceback" not in text
    assert not out.exists()


def test_wait_runs_after_the_holder(tmp_path, sources):
    out = tmp_path / "out"
    holder = _holder(out, 3)
    code, text = _finish(_start(["ingest", sources["P"], "-f", "pairwise", "-o", out, "--wait"]))
    assert holder.wait() == 0
    assert code == 0, text
    assert f"waiting for pid {holder.pid}" in text
    assert read_table(out).num_rows == ROWS


def test_a_lock_left_by_a_dead_process_is_taken_over_and_said(tmp_path, sources):
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = {"pid": dead.pid, "host": os.uname().nodename, "command": "ingest", "started": "2026-01-01T00:00:00"}
    lock_path(out).write_text(json.dumps(record))
    code, text = _finish(_start(["ingest", sources["P"], "-f", "pairwise", "-o", out]))
    assert code == 0, text
    assert f"took over the output lock {lock_path(out)} left by pid {dead.pid}" in text
    assert "no longer running" in text
    assert not lock_path(out).exists()


def test_in_process_refusal_and_nesting(tmp_path):
    out = tmp_path / "out"
    holder = _holder(out, 30)
    try:
        with pytest.raises(OutputLockedError, match="being written by pid"):
            with writer_lock(out, command="test"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with pytest.warns(StaleLockWarning):  # the killed holder's record is still in the file
        with writer_lock(out, command="test"):
            with writer_lock(out, command="nested"):  # the same process: no deadlock
                assert lock_path(out).exists()
    assert not lock_path(out).exists()


@pytest.mark.parametrize("old_record", ["empty", "a dead holder's"])
def test_a_refusal_in_the_moment_before_the_holder_writes_its_record_names_it(tmp_path, old_record):
    out = tmp_path / "out"
    lock = lock_path(out)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = {"pid": dead.pid, "host": os.uname().nodename, "command": "ingest", "started": "2026-01-01T00:00:00"}
    lock.write_text(json.dumps(stale) if old_record != "empty" else "")
    code = (  # takes the lock as writer_lock does, then waits before writing its record
        "import fcntl, os, sys, time\n"
        "from prefpool.pipeline.io.writer_lock import _record\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(0.5)\n"
        "_record(fd, 'late')\n"
        "time.sleep(30)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputLockedError, match=f"being written by pid {holder.pid} .*`prefpool late`"):
            with writer_lock(out, command="test"):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_overwrite_through_a_symlinked_out_replaces_the_target(tmp_path, sources):
    from prefpool.pipeline.ingest import ingest

    target = tmp_path / "real"
    ingest(sources["P"], format="pairwise", out=target)
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    ingest(sources["Q"], format="pairwise", out=link, overwrite=True)
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert _rows_from(target) == {"Q"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # no .old-PID, no staging, no lock


def test_every_command_takes_wait():
    import click

    from prefpool.cli import app
    from prefpool.cli.app import COMMANDS

    for name in COMMANDS:
        command = app.get_command(click.Context(app), name)
        assert any("--wait" in p.opts for p in command.params), name
