"""A real full disk and a real read-only disk: tiny tmpfs mounts (root only; skipped elsewhere).

The fault table simulates both by refusing writes inside the process; here the
kernel refuses them. A full disk mid-run keeps the finished shards, leaves no
temporary file, and the same command resumes once there is space again; a
read-only disk fails before anything is written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from prefpool.cli import app
from prefpool.pipeline.io.atomic import is_temp_name
from prefpool.pipeline.io.layout import RUN_MARKER, meta_dir, meta_path
from prefpool.pipeline.io.read import read_table


def _mount(point: Path, options: str) -> bool:
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
    return done.returncode == 0


@pytest.fixture
def tmpfs(tmp_path):
    """A mount point and a function mounting a tmpfs there with the given options."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    point = tmp_path / "disk"
    point.mkdir()
    mounted = []

    def mount(options: str) -> Path:
        if not _mount(point, options):
            pytest.skip("cannot mount a tmpfs here (no CAP_SYS_ADMIN)")
        mounted.append(point)
        return point

    yield mount
    if mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_full_disk_keeps_finished_shards_and_the_rerun_completes(world, tmpfs):
    disk = tmpfs("size=24k")  # room for run.json and two 6 kB shards of eight
    args = ["ingest", str(world["source"]), "-f", "ranked", "-o", str(disk / "o"), "--rows-per-unit", "1"]
    full = CliRunner().invoke(app, args)
    assert full.exit_code == 2 and "no space left on the device" in full.output, full.output
    out = disk / "o"
    kept = sorted(p.name for p in out.iterdir() if p.suffix == ".parquet")
    assert meta_path(out, RUN_MARKER).is_file() and len(kept) >= 1
    assert not any(is_temp_name(p) for p in [*out.iterdir(), *meta_dir(out).iterdir()])
    subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert f"units_skipped={len(kept)}" in again.output
    assert read_table(disk / "o").to_pylist() == read_table(world["ingest"]).to_pylist()


def test_a_read_only_disk_fails_before_writing(world, tmpfs):
    disk = tmpfs("ro,size=1m")
    result = CliRunner().invoke(app, ["ingest", str(world["source"]), "-f", "ranked", "-o", str(disk / "o")])
    assert result.exit_code == 2 and "read-only" in result.output and "Traceback" not in result.output
    assert list(disk.iterdir()) == []
