"""Run every row of the fault table (``fault_cases.CASES``) through the CLI, in-process.

For each row: the exit code; every expected text in the message and none of
the forbidden ones (a traceback, a Hub "Repo id" error, a token); every file of
the shared world and of the test's own folder byte-identical afterwards (no
output, no ``run.json``, no temporary or staging file), except the paths the
row allows (resumable work kept after a fault).
"""

from __future__ import annotations

import fnmatch

import pytest
from click.testing import CliRunner
from fault_cases import CASES
from fault_world import tree_digest

from prefpool.cli import app

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def test_the_table_is_large_and_covers_every_command():
    from prefpool.cli.app import COMMANDS

    assert len(CASES) >= 60
    assert len({c.name for c in CASES}) == len(CASES)
    covered = {c.name.split(":")[0] for c in CASES}
    assert set(COMMANDS) <= covered, set(COMMANDS) - covered


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault(case, world, tmp_path, monkeypatch):
    if case.setup is not None:
        case.setup(world, tmp_path)
    world_before, mine_before = tree_digest(world["root"]), tree_digest(tmp_path)
    dirs_before = _folders(tmp_path)
    args = [str(a) for a in case.args(world, tmp_path)]
    if case.fault is not None:
        case.fault(monkeypatch, tmp_path)
    result = CliRunner().invoke(app, args)
    monkeypatch.undo()  # the fault must not touch the checks below
    assert result.exception is None or isinstance(result.exception, SystemExit), (result.output, result.exception)
    assert result.exit_code == case.code, result.output
    for text in case.expect:
        assert text in result.output, result.output
    for text in case.absent:
        assert text not in result.output, result.output
    assert tree_digest(world["root"]) == world_before, "an earlier output changed"
    after = tree_digest(tmp_path)
    changed = {p for p in set(after) | set(mine_before) if after.get(p) != mine_before.get(p)}
    unexpected = [p for p in changed if not any(fnmatch.fnmatch(p, pattern) for pattern in case.leaves)]
    assert unexpected == [], f"written or changed: {sorted(unexpected)}"
    new_dirs = _folders(tmp_path) - dirs_before
    stray = [d for d in new_dirs if not any(fnmatch.fnmatch(d, pattern) for pattern in case.leaves)]
    assert stray == [], f"folders left behind: {sorted(stray)}"


def _folders(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir()}
