"""``--overwrite`` with the output a symbolic link to a folder: the folder it names is replaced, the link is
kept, nothing is removed through the link, and no .old-PID, staging or lock file is left beside it."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from prefpool.cli import app

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _train(w, out, lr):
    return [
        "train", "/dev/null", "loss=dpo", "batch_size=2", "max_steps=2", f"lr={lr}", "progress=false",
        f"model={w['model']}", f"data={w['pairwise']}", f"output_dir={out}", "overwrite=true",
    ]  # fmt: skip


def test_train_overwrite_through_a_link(world, tmp_path):
    target, link = tmp_path / "real", tmp_path / "run"
    assert CliRunner().invoke(app, _train(world, target, "1e-3")).exit_code == 0
    link.symlink_to(target, target_is_directory=True)
    result = CliRunner().invoke(app, _train(world, link, "1e-4"))
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert json.loads((target / "train_run.json").read_text())["lr"] == 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real", "run"]


def test_push_overwrite_through_a_link(world, tmp_path):
    target, link = tmp_path / "real", tmp_path / "hub"
    base = ["push", str(world["pairwise"]), "--repo-id", "me/prefs", "--dry-run"]
    assert CliRunner().invoke(app, [*base, "-o", str(target)]).exit_code == 0
    link.symlink_to(target, target_is_directory=True)
    result = CliRunner().invoke(app, [*base, "--split", "test", "-o", str(link), "--overwrite", "--license", "mit"])
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert (target / "README.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub", "real"]  # push's record is inside the folder
    assert (target / ".prefpool" / "push.json").is_file()
