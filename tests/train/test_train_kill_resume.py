"""Real ``kill -9`` of ``prefpool train`` and ``prefpool online``, then a rerun of the same command.

The CLI runs in a subprocess with ``save_steps: 1``; a poller watches the
output folder and sends SIGKILL (no exception, no ``finally``, no flush) in the
middle of training: once a complete checkpoint ``step-k`` (``k >= 2``, its
``trainer_state.json`` written) exists, preferably while step ``k+1``'s
``metrics.jsonl`` line is already written but its checkpoint is not (the
resumed run must drop that line). The rerun, in a new process, continues from
the newest checkpoint; its per-step metrics (losses, the MC-PO ``sample``
kernel's picks, lr, grad norm) and final weights must equal those of an
uninterrupted run of the same config, with one ``metrics.jsonl`` line per step.

The pipeline stages' counterpart (generate, logprobs) is
``tests/pipeline/test_kill_resume.py`` (this file needs another basename: tests/ has no
``__init__.py``, so two ``test_kill_resume.py`` would clash at collection); the in-process
"stop after step k" resume tests are in ``test_trainer.py`` and ``test_online.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from trainer_tables import MAX_LENGTH

from prefpool.cli import app
from prefpool.core.config import load_config
from prefpool.train.config import TrainConfig
from prefpool.train.metrics import read_metrics
from prefpool.train.online import online
from prefpool.train.online_config import OnlineConfig
from prefpool.train.online_state import STATE_NAME
from prefpool.train.trainer import latest_checkpoint, train

torch.set_num_threads(1)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

TIMEOUT_S = 120  # a hung subprocess fails the test instead of hanging the suite
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
# Differ between runs by construction (wall clock, process RSS); every other metric must be equal.
TIMING = ("tokens_per_s", "peak_memory_mb")
TRAIN_STEPS = 16  # ~30 ms a step on the tiny model: the kill lands well before the end
ONLINE_STEPS = 10
WORDS = ("apple", "river", "stone", "cloud", "green", "house", "light", "music")


def _write_config(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def _cli(command: str, config: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "prefpool.cli", command, str(config), *overrides]


def _checkpoint_step(train_dir: Path) -> int:
    """The newest complete checkpoint's step (the one a resumed run starts from); 0 if none."""
    found = latest_checkpoint(train_dir)
    return int(found.name.split("-")[1]) if found else 0


def _logged_steps(train_dir: Path) -> int:
    """Complete ``metrics.jsonl`` lines (one per step, from step 1; the child may be mid-append)."""
    path = train_dir / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def _mid_training(train_dir: Path, steps: int) -> Callable[[], bool]:
    """True once a checkpoint ``k >= 2`` exists and either step ``k+1`` is logged but not yet
    checkpointed (so the killed run leaves a line the resumed run must drop) or half the run is done."""

    def ready() -> bool:
        k = _checkpoint_step(train_dir)
        return k >= 2 and (_logged_steps(train_dir) > k or k >= steps // 2)

    return ready


def _run_and_kill(argv: list[str], log: Path, ready: Callable[[], bool]) -> float:
    """Run ``argv`` in a subprocess; SIGKILL it as soon as ``ready()``. Returns the seconds it ran."""
    start = time.monotonic()
    with open(log, "w") as handle:  # a file, not a pipe: a full pipe would stall the child
        proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=ENV)
    try:
        while proc.poll() is None and not ready():
            assert time.monotonic() - start < TIMEOUT_S, "the kill point was not reached in time"
            time.sleep(0.002)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, (
        f"the run ended (rc {proc.returncode}) before the kill: make it longer\n{log.read_text()[-3000:]}"
    )
    return time.monotonic() - start


def _run(argv: list[str], log: Path) -> None:
    with open(log, "w") as handle:
        proc = subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT, env=ENV, timeout=TIMEOUT_S)
    assert proc.returncode == 0, log.read_text()[-3000:]


def _kill_state(train_dir: Path) -> str:
    k, logged = _checkpoint_step(train_dir), _logged_steps(train_dir)
    return f"checkpoint step-{k}, {logged} metrics line(s){' (one past it)' if logged > k else ''}"


def _deterministic(train_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(train_dir / "metrics.jsonl")]


def _assert_same_training(got: Path, want: Path, steps: int) -> None:
    """Same per-step metrics (one line per step) and the same final weights, bit for bit.

    Exact equality, no tolerance: both runs do the same fp32 CPU operations in the same order on
    one thread, and JSON round-trips floats exactly, so a resumed run that restores model,
    optimizer, scheduler, data position and every generator reproduces each number. ``losses``
    and ``mcpo/selected_hist`` (the ``sample`` kernel's picks) are compared first for a clear message.
    """
    a, b = _deterministic(got), _deterministic(want)
    assert [r["step"] for r in a] == list(range(1, steps + 1))  # no duplicate or missing step
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["mcpo/selected_hist"] for r in a] == [r["mcpo/selected_hist"] for r in b]
    assert a == b
    wa, wb = load_file(got / "model.safetensors"), load_file(want / "model.safetensors")
    assert wa.keys() == wb.keys()
    different = [name for name in wa if not torch.equal(wa[name], wb[name])]
    assert not different, f"weights differ: {different}"


# -- prefpool train -----------------------------------------------------------------------------------


@pytest.mark.parametrize("num_negatives", [1, 3])
def test_train_killed_then_resumed_equals_one_run(world, tmp_path, num_negatives):
    """MC-PO, ``sample`` kernel with 1 or 3 negatives a prompt, AdamW with warmup, batch 2 over 8 rows
    (an epoch every 4 steps), rows grouped by length (``group_by_length``: the order is recomputed from
    the data position), a checkpoint every step and only the newest two kept (the kill may land in a
    prune)."""

    def config(name: str) -> Path:
        return _write_config(
            tmp_path / f"{name}.yaml",
            {
                "model": str(world["model"]),
                "data": str(world["mcpo"]),
                "output_dir": str(tmp_path / name),
                "loss": "mcpo",
                "kernel": "sample",
                "num_negatives": num_negatives,
                "max_length": MAX_LENGTH,
                "lr": 1e-3,
                "beta": 0.5,
                "batch_size": 2,
                "group_by_length": True,
                "max_steps": TRAIN_STEPS,
                "warmup_steps": 2,
                "save_steps": 1,
                "save_total_limit": 2,
                "progress": False,
            },
        )

    killed, out = config("killed"), tmp_path / "killed"
    seconds = _run_and_kill(_cli("train", killed), tmp_path / "killed.log", _mid_training(out, TRAIN_STEPS))
    k = _checkpoint_step(out)
    print(f"train: killed after {seconds:.1f} s at {_kill_state(out)}")
    assert 2 <= k < TRAIN_STEPS
    assert not (out / "model.safetensors").exists() and not (out / "train_summary.json").exists()

    _run(_cli("train", killed, "resume=true"), tmp_path / "resumed.log")
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from"] == str(out / "checkpoints" / f"step-{k}")
    assert summary["steps"] == TRAIN_STEPS and len(summary["losses"]) == TRAIN_STEPS - k

    train(load_config(TrainConfig, config("straight")))  # in-process: no second interpreter start-up
    _assert_same_training(out, tmp_path / "straight", TRAIN_STEPS)
    # Every step drew M picks for each of its 2 rows: the histogram's pool picks plus the y0 draws.
    for record in read_metrics(out / "metrics.jsonl"):
        drawn = sum(record["mcpo/selected_hist"]) + round(record["mcpo/chosen_drawn"] * 2 * num_negatives)
        assert drawn == 2 * num_negatives, record


# -- prefpool online ----------------------------------------------------------------------------------


REWARD = "def reward(prompt, completion):\n    return float(len(completion))  # varies between samples\n"


def test_online_killed_in_both_rounds_then_resumed_equals_one_run(world, tmp_path):
    """Two rounds; the first run is killed during round 0's training, the rerun during round 1's
    (so round 1 samples from a policy whose training was itself resumed, in a new process); the
    third run, in-process through the CLI (no third interpreter start-up), finishes."""
    (tmp_path / "reward.py").write_text(REWARD)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say {w}."}) + "\n" for w in WORDS))

    def config(name: str) -> Path:
        return _write_config(
            tmp_path / f"{name}.yaml",
            {
                "output_dir": str(tmp_path / name),
                "reference": str(world["model"]),
                "prompts": str(prompts),
                "rounds": 2,
                "n": 4,
                "temperature": 1.0,
                "max_new_tokens": 6,
                "max_length": 64,
                "reward_fn": f"{tmp_path / 'reward.py'}:reward",
                "show_progress": False,
                "train": {
                    "batch_size": 2,
                    "max_steps": ONLINE_STEPS,
                    "save_steps": 1,
                    "lr": 1e-3,
                    "kernel": "sample",
                    "progress": False,
                },
            },
        )

    killed, out = config("killed"), tmp_path / "killed"
    kill_steps = []
    for r in (0, 1):
        train_dir = out / f"round-{r}" / "train"
        seconds = _run_and_kill(
            _cli("online", killed), tmp_path / f"killed-{r}.log", _mid_training(train_dir, ONLINE_STEPS)
        )
        kill_steps.append(_checkpoint_step(train_dir))
        print(f"online: run {r + 1} killed after {seconds:.1f} s in round {r} at {_kill_state(train_dir)}")
        assert 2 <= kill_steps[r] < ONLINE_STEPS
        state = json.loads((out / STATE_NAME).read_text())["steps"]
        assert f"round-{r}/build" in state and f"round-{r}/train" not in state
        assert not (train_dir / "model.safetensors").exists()
    result = CliRunner().invoke(app, ["online", str(killed)])
    assert result.exit_code == 0, result.output

    summary = json.loads((out / "online_summary.json").read_text())
    for r in (0, 1):  # round 0's record: from the second run (the trainer's summary), "done earlier" now
        record = summary["rounds"][r]["steps"]["train"]
        assert record["resumed_from"] == str(out / f"round-{r}" / "train" / "checkpoints" / f"step-{kill_steps[r]}")
    statuses = {(r["round"], s): rec["status"] for r in summary["rounds"] for s, rec in r["steps"].items()}
    assert statuses.pop((1, "train")) == "ran" and set(statuses.values()) == {"done earlier"}

    online(load_config(OnlineConfig, config("straight")), log=None)  # in-process
    for r in (0, 1):  # round 0's model is round 1's policy: it generated round 1's pool
        _assert_same_training(
            out / f"round-{r}" / "train", tmp_path / "straight" / f"round-{r}" / "train", ONLINE_STEPS
        )
