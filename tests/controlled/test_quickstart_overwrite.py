"""``quickstart --overwrite`` never removes the earlier result before the new one is complete: the earlier
folder is set aside (renamed, not deleted) and removed only after the new REPORT.md; a run killed before
that leaves it aside, and the next run puts it back under its name first."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from prefpool.controlled.quickstart import MARKER, _fresh_folder, earlier_folder
from prefpool.core.errors import OutputExistsError

EARLIER = {MARKER: "made by quickstart\n", "REPORT.md": "# the earlier report\n", "summary.json": '{"runs": []}\n'}


def _earlier(out):
    out.mkdir()
    for name, text in EARLIER.items():
        (out / name).write_text(text)


def _files(folder):
    return {p.name: p.read_text() for p in folder.iterdir() if p.is_file()}


def test_overwrite_sets_the_earlier_folder_aside_and_a_killed_run_gets_it_back(tmp_path):
    out = tmp_path / "qs"
    _earlier(out)
    aside = _fresh_folder(out, overwrite=True)
    assert aside == earlier_folder(out) and _files(aside) == EARLIER
    assert sorted(p.name for p in out.iterdir()) == [MARKER]
    (out / "partial.txt").write_text("a run killed here")
    with pytest.raises(OutputExistsError, match="not empty"):
        _fresh_folder(out, overwrite=False)  # the next run: the earlier result is back first
    assert _files(out) == EARLIER and not earlier_folder(out).exists()


def test_a_quickstart_killed_after_seconds_leaves_the_earlier_report(tmp_path):
    out = tmp_path / "qs"
    _earlier(out)
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefpool", "quickstart", "--out", str(out), "--overwrite"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not earlier_folder(out).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # inside the run: data being made
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _files(earlier_folder(out)) == EARLIER
    with pytest.raises(OutputExistsError):
        _fresh_folder(out, overwrite=False)
    assert _files(out) == EARLIER


def test_overwrite_through_a_symlinked_out_keeps_the_link(tmp_path):
    from prefpool.pipeline.io.swap import real_folder

    target = tmp_path / "real"
    _earlier(target)
    link = tmp_path / "qs"
    link.symlink_to(target, target_is_directory=True)
    out = real_folder(link)
    aside = _fresh_folder(out, overwrite=True)
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert _files(aside) == EARLIER and sorted(p.name for p in target.iterdir()) == [MARKER]
