"""Two REAL processes on one output, at several start offsets: train x2 on one output_dir (other lr, and the
same config twice), push --split train / --split test into one --out. One writer at a time: the second is
refused (exit 2, no traceback) or, with --wait, runs after the first; nothing is silently replaced, no
step is logged twice, and the pushed folder's card lists exactly the splits it holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prefpool.pipeline.io.card import read_card
from prefpool.pipeline.io.layout import META_DIR
from prefpool.pipeline.io.writer_lock import lock_path
from prefpool.pipeline.push import RECORD

PREFPOOL = [sys.executable, "-m", "prefpool"]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _pair(a: list, b: list, offset: float) -> list[tuple[int, str]]:
    first = subprocess.Popen(
        [*PREFPOOL, *map(str, a)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env()
    )
    time.sleep(offset)
    second = subprocess.Popen(
        [*PREFPOOL, *map(str, b)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env()
    )
    return [(p.wait(timeout=600), p.stdout.read()) for p in (first, second)]


def _train(w, out: Path, lr: str, *extra) -> list:
    return [
        "train", "/dev/null", "loss=dpo", "batch_size=2", "max_steps=4", f"lr={lr}", "progress=false",
        f"model={w['model']}", f"data={w['pairwise']}", f"output_dir={out}", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("offset", [0.0, 2.5])
def test_two_trainings_with_other_settings_on_one_output_dir(world, tmp_path, offset):
    out = tmp_path / "run"
    results = _pair(_train(world, out, "1e-4"), _train(world, out, "1e-3"), offset)
    assert sorted(code for code, _ in results) == [0, 2], results
    loser = next(text for code, text in results if code == 2)
    assert "being written by pid" in loser or "holds a finished training run" in loser, loser
    assert "Traceback" not in loser
    winner_lr = 1e-4 if results[0][0] == 0 else 1e-3
    assert (out / "train_summary.json").is_file()
    assert json.loads((out / "train_run.json").read_text())["lr"] == winner_lr
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4
    assert not lock_path(out).exists()


@pytest.mark.parametrize("offset", [0.0, 2.5])
def test_the_same_training_twice_logs_each_step_once(world, tmp_path, offset):
    out = tmp_path / "run"
    results = _pair(_train(world, out, "1e-3", "--wait"), _train(world, out, "1e-3", "--wait"), offset)
    assert [code for code, _ in results] == [0, 0], results
    assert any("already holds a finished run" in text for _, text in results), results
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and len(steps) == 4


def _push(w, out: Path, split: str, *extra) -> list:
    return ["push", w["pairwise"], "--split", split, "--repo-id", "me/prefs", "--dry-run", "-o", out, *extra]


@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_push_train_and_test_into_one_out(world, tmp_path, offset):
    out = tmp_path / "hub"
    results = _pair(_push(world, out, "train", "--wait"), _push(world, out, "test", "--wait"), offset)
    assert [code for code, _ in results] == [0, 0], results
    card = read_card(out)
    assert sorted(card["prefpool"]["splits"]) == ["test", "train"]
    files = sorted(p.name.split("-")[0] for p in (out / "data").glob("*.parquet"))
    assert sorted(set(files)) == ["test", "train"]
    record = json.loads((out / META_DIR / RECORD).read_text())
    assert record["complete"] is True


def test_push_without_wait_refuses_the_second(world, tmp_path):
    out = tmp_path / "hub"
    results = _pair(_push(world, out, "train"), _push(world, out, "test"), 0.0)
    codes = [code for code, _ in results]
    if codes == [0, 0]:  # the first had finished before the second started: both splits are there
        assert sorted(read_card(out)["prefpool"]["splits"]) == ["test", "train"]
        return
    assert sorted(codes) == [0, 2], results
    loser = next(text for code, text in results if code == 2)
    assert "being written by pid" in loser and "Traceback" not in loser
    winner = "train" if codes[0] == 0 else "test"
    assert sorted(read_card(out)["prefpool"]["splits"]) == [winner]
