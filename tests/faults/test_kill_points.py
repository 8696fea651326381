"""``kill -9`` of ``merge``, ``push --dry-run`` and ``online`` at three points each, then the same command again.

Each kill runs the CLI in a fresh process (``kill_at.py``) that sends itself
SIGKILL at a named point: inside a write, between two writes, just before a
folder is swapped in. The rerun (in-process) must finish with exactly what an
uninterrupted run writes, leave no temporary, staging or half-written file, and
never have touched an earlier output on the way (merge over a different
output with ``--overwrite``: the old one is intact while the new one is built).

The other stages' kill tests: ``tests/pipeline/test_kill_resume.py`` (generate,
logprobs) and ``tests/train/test_train_kill_resume.py`` (train, online in training).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from fault_world import WORDS, tree_digest
from safetensors.torch import load_file

from prefpool.cli import app
from prefpool.pipeline.build import build
from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.io.atomic import is_temp_name
from prefpool.pipeline.io.read import read_table

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
KILLER = Path(__file__).with_name("kill_at.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
TIMEOUT_S = 300


def kill_at(point: str, nth: int, when: str, *args: object, log: Path) -> None:
    """Run ``prefpool ARGS`` in a fresh process that SIGKILLs itself at ``point`` (see ``kill_at.py``)."""
    argv = [sys.executable, str(KILLER), point, str(nth), when, "--", *map(str, args)]
    with open(log, "w") as handle:
        done = subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT, env=ENV, timeout=TIMEOUT_S)
    assert done.returncode == -signal.SIGKILL, f"not killed at {point} (rc {done.returncode}):\n{log.read_text()}"


def rerun(*args: object) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def leftovers(root: Path) -> list[str]:
    """Temporary files, staging and old folders anywhere under ``root``."""
    marks = (".staging", ".push-staging", ".train-staging", ".old-", ".train-old")
    return [str(p) for p in root.rglob("*") if is_temp_name(p) or any(m in p.name for m in marks)]


# -- merge ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory, world):
    """Two shard runs of 2-row units (several merged units), and the merge of an uninterrupted run."""
    root = tmp_path_factory.mktemp("merge")
    parts = [
        ingest(world["source"], format="ranked", out=root / f"s{i}", shard=f"{i}/2", rows_per_unit=2).out
        for i in (0, 1)
    ]
    straight = root / "straight"
    rerun("merge", *parts, "-o", straight)
    return {"parts": parts, "straight": straight}


MERGE_POINTS = [
    ("inside the shard writes", "prefpool.pipeline.io.stage_run:StageRun.write", 2, "after"),
    ("between the last shard and the manifest", "prefpool.pipeline.io.stage_run:write_manifest", 1, "before"),
    ("before the swap over an earlier output", "prefpool.pipeline.io.stage_run:StageRun._swap_in", 1, "before"),
]


@pytest.mark.parametrize("where, point, nth, when", MERGE_POINTS, ids=[p[0] for p in MERGE_POINTS])
def test_merge_killed_then_rerun_equals_one_run(shards, world, tmp_path, where, point, nth, when):
    out = tmp_path / "merged"
    extra = []
    if "swap" in where:  # an earlier, different output: --overwrite builds beside it and swaps at the end
        rerun("merge", world["shard0"], world["shard1"], "-o", out)
        earlier = tree_digest(out)
        extra = ["--overwrite"]
    kill_at(point, nth, when, "merge", *shards["parts"], "-o", out, *extra, log=tmp_path / "kill.log")
    if extra:
        assert tree_digest(out) == earlier  # killed while the new output was being made: the old one intact
    rerun("merge", *shards["parts"], "-o", out, *extra)
    assert read_table(out).to_pylist() == read_table(shards["straight"]).to_pylist()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in shards["straight"].iterdir())
    assert leftovers(tmp_path) == []


# -- push --dry-run -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table(tmp_path_factory, world):
    """An mcpo table of four shards (so push writes four data files) and its uninterrupted Hub folder."""
    root = tmp_path_factory.mktemp("push")
    lp = [world["lp_ex"], world["lp_gen"]]
    source = build("mcpo", examples=world["ingest"], logprobs=lp, out=root / "mcpo", rows_per_unit=2).out
    straight = root / "straight"
    rerun("push", source, "--repo-id", "me/prefs", "--dry-run", "-o", straight)
    return {"source": source, "straight": straight}


PUSH_POINTS = [
    ("between data files", "pyarrow.parquet:write_table", 2, "after"),
    ("after the card, before the swap", "prefpool.pipeline.push:write_text", 1, "after"),
    ("after the record, before the swap", "prefpool.pipeline.push:write_json", 1, "after"),
]


@pytest.mark.parametrize("where, point, nth, when", PUSH_POINTS, ids=[p[0] for p in PUSH_POINTS])
def test_push_dry_run_killed_then_rerun_equals_one_run(table, tmp_path, where, point, nth, when):
    out = tmp_path / "hub"
    args = ("push", table["source"], "--repo-id", "me/prefs", "--dry-run", "-o", out)
    kill_at(point, nth, when, *args, log=tmp_path / "kill.log")
    assert not out.exists() or "swap" in where and (out / "README.md").exists()  # never a half folder
    output = rerun(*args)
    assert "rows in 4 files (split train), written to" in output
    assert tree_digest(out) == tree_digest(table["straight"])
    assert json.loads((out / ".prefpool" / "push.json").read_text())["complete"] is True
    assert not (tmp_path / "hub.push.json").exists()  # nothing of the push outside its --out
    assert "up to date" in rerun(*args)
    assert leftovers(tmp_path) == []


# -- online ---------------------------------------------------------------------------------------------


def _online_config(world, folder: Path, prompts: Path) -> Path:
    config = folder.with_suffix(".yaml")
    config.write_text(
        json.dumps(
            {
                "output_dir": str(folder),
                "reference": str(world["model"]),
                "prompts": str(prompts),
                "rounds": 1,
                "n": 3,
                "temperature": 1.0,
                "max_new_tokens": 6,
                "max_length": 64,
                "reward_fn": f"{world['reward_length']}:reward",
                "show_progress": False,
                "train": {"batch_size": 2, "max_steps": 2, "save_steps": 1, "lr": 1e-3, "progress": False},
            }
        )
    )
    return config


@pytest.fixture(scope="module")
def online_run(tmp_path_factory, world):
    root = tmp_path_factory.mktemp("online")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say {w}."}) + "\n" for w in WORDS[:4]))
    straight = root / "straight"
    rerun("online", _online_config(world, straight, prompts))
    return {"prompts": prompts, "straight": straight}


ONLINE_POINTS = [
    # StageRun.write's first call is the prompts' ingest, its second generate's one shard
    ("inside generate, its shard written", "prefpool.pipeline.io.stage_run:StageRun.write", 2, "after"),
    ("score done, not yet recorded", "prefpool.train.online_state:OnlineState.mark", 3, "before"),
    ("trained, before the final save", "prefpool.train.trainer:Trainer._save_final", 1, "before"),
]


@pytest.mark.parametrize("where, point, nth, when", ONLINE_POINTS, ids=[p[0] for p in ONLINE_POINTS])
def test_online_killed_then_rerun_equals_one_run(online_run, world, tmp_path, where, point, nth, when):
    out = tmp_path / "run"
    config = _online_config(world, out, online_run["prompts"])
    kill_at(point, nth, when, "online", config, log=tmp_path / "kill.log")
    assert not (out / "online_summary.json").exists()
    rerun("online", config)
    straight = online_run["straight"]
    for stage, schema in (("generate", "candidates"), ("score", "scores"), ("logprobs", "logprobs"), ("build", "mcpo")):
        got, want = out / "round-0" / stage, straight / "round-0" / stage
        assert read_table(got, schema=schema).to_pylist() == read_table(want, schema=schema).to_pylist(), stage
    a = load_file(out / "round-0" / "train" / "model.safetensors")
    b = load_file(straight / "round-0" / "train" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    summary = json.loads((out / "online_summary.json").read_text())
    assert summary["rounds"][0]["steps"]["train"]["final_loss"] is not None
    assert leftovers(tmp_path) == []
