"""``prefpool online`` with ``executor: ray``: a round's stages on Ray actors equal the local round.

One round of OnMC-PO locally and one with ``executor: ray`` (a local Ray that
the run starts and stops itself, ``RAY_TMPDIR`` set to a folder made here):
the round's candidates, scores and reference log-probs are equal row for row,
training on them logs the same losses, and no Ray process is left.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from prefpool.core.config import load_config
from prefpool.pipeline.io.read import read_table
from prefpool.testing import build_tiny_llama
from prefpool.train.metrics import read_metrics
from prefpool.train.online import online, round_dir
from prefpool.train.online_config import OnlineConfig

ray = pytest.importorskip("ray")
torch.set_num_threads(1)
pytestmark = pytest.mark.xdist_group("ray")
WORDS = ("apple", "river", "stone", "cloud", "green", "house")


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_online_round_on_ray_equals_the_local_round(tmp_path, monkeypatch):
    assert not ray.is_initialized()
    model = build_tiny_llama(tmp_path / "tiny", num_layers=1)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say {w}."}) + "\n" for w in WORDS))
    reward = tmp_path / "reward.py"
    reward.write_text("def reward(prompt, completion):\n    return float(len(completion))\n")
    base = {
        "reference": str(model),
        "prompts": str(prompts),
        "rounds": 1,
        "n": 4,
        "temperature": 1.0,
        "max_new_tokens": 6,
        "reward_fn": f"{reward}:reward",
        "max_length": 64,
        "show_progress": False,
        "train": {"batch_size": 2, "max_steps": 2, "lr": 1e-3, "kernel": "max", "progress": False},
    }

    def run(name: str, **extra) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**base, "output_dir": str(tmp_path / name), **extra}))
        online(load_config(OnlineConfig, path), log=None)
        return round_dir(tmp_path / name, 0)

    local = run("local")
    marker = tempfile.mkdtemp(prefix="rp-", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", marker)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    remote = run("ray", executor="ray", workers=2)
    assert not ray.is_initialized()  # the run shut down the Ray it started
    for step in ("generate", "score", "logprobs"):
        assert read_table(remote / step).equals(read_table(local / step)), step
    losses = [[r["loss"] for r in read_metrics(d / "train" / "metrics.jsonl")] for d in (local, remote)]
    assert losses[0] == losses[1] and len(losses[0]) == 2
    deadline = time.monotonic() + 30
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_with(marker)
    shutil.rmtree(marker, ignore_errors=True)
