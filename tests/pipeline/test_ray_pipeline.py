"""``prefpool run pipeline.yaml executor=ray``, as a user types it: ray == local == --shard + merge.

The command runs in a subprocess that starts its own local Ray (no RAY_ADDRESS;
``RAY_TMPDIR`` set to a folder made here). Its generate, score and logprobs
outputs must equal a local run's on the same input, rows bit for bit and
manifests but for the start time, and equal the merge of ``--shard i/2`` runs
(log-probs there up to float rounding: other units, other padded batches);
the run must start one Ray for all its stages and leave no Ray process behind.

Why the local references read the Ray run's own candidates: a shard's
metadata records when its run started, so two generate runs, equal in every
row, differ in their files' sha256, which score and logprobs record as their
input's fingerprint. Comparing score and logprobs on one input keeps that
apart from what is being tested.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from ray_helpers import GENERATE, assert_same_output, ray_processes, short_tmpdir, wait_until

from prefpool.pipeline.generate import generate
from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.logprobs import logprobs
from prefpool.pipeline.merge import merge
from prefpool.pipeline.score import score
from prefpool.testing import build_tiny_llama

pytest.importorskip("ray")
torch.set_num_threads(1)
# slow: a fresh interpreter, a Ray start and three stages' actors (~25 s on 2 idle cores)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]
PROMPTS = 12
SCORE = {"rows_per_unit": 4}
LOGPROBS = {"max_length": 128, "rows_per_unit": 4}


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory):
    """The subprocess run: (its workdir, the model, the source file, the reward function, its RAY_TMPDIR)."""
    root = tmp_path_factory.mktemp("ray-pipeline")
    model = build_tiny_llama(root / "model", num_layers=1)
    source = root / "data.jsonl"
    rows = [{"prompt": f"Say {i} twice.", "chosen": f"{i} {i}", "rejected": f"{i}"} for i in range(PROMPTS)]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reward = root / "reward.py"
    reward.write_text("def reward(prompt, text):\n    return float(len(text.split()))\n")
    config = {
        "workdir": str(root / "ray"),
        "model": str(model),
        "ingest": {"source": str(source), "format": "pairwise"},
        "generate": {**GENERATE, "rows_per_unit": 2},
        "score": {"reward_fn": f"{reward}:reward", **SCORE},
        "logprobs": {"input_dir": "{workdir}/generate", **LOGPROBS},
    }
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    tmp = short_tmpdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=tmp, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(
        [sys.executable, "-m", "prefpool.cli", "run", str(path), "executor=ray"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"work": root / "ray", "model": model, "source": source, "reward": reward, "tmp": tmp, "stdout": done.stdout}


def _one_ray_and_no_ray_process_left(ray_run):
    sessions = [p for p in (Path(ray_run["tmp"]) / "ray").glob("session_*") if not p.is_symlink()]
    assert len(sessions) == 1, sessions  # generate, score and logprobs shared one Ray
    wait_until(lambda: not ray_processes(ray_run["tmp"]), 30, "the run's Ray processes to exit")
    shutil.rmtree(ray_run["tmp"], ignore_errors=True)
    assert [line.split(":")[0] for line in ray_run["stdout"].splitlines()] == [
        "ingest",
        "generate",
        "score",
        "logprobs",
    ]


def _generate_equal(ray_run, tmp_path):
    examples = ingest(ray_run["source"], format="pairwise", out=tmp_path / "examples").out
    args = {"model": ray_run["model"], "rows_per_unit": 2, "show_progress": False, **GENERATE}
    local = generate(examples, out=tmp_path / "local", **args).out
    assert_same_output(ray_run["work"] / "generate", local)
    parts = [generate(examples, out=tmp_path / f"part{i}", shard=f"{i}/2", **args).out for i in range(2)]
    merge(parts, tmp_path / "merged")
    assert_same_output(tmp_path / "merged", local, merged=True)


def _score_equal(ray_run, tmp_path):
    cands = ray_run["work"] / "generate"
    args = {"reward_fn": f"{ray_run['reward']}:reward", "show_progress": False, **SCORE}
    local = score(cands, out=tmp_path / "local", **args).out
    assert_same_output(ray_run["work"] / "score", local)
    parts = [score(cands, out=tmp_path / f"part{i}", shard=f"{i}/2", **args).out for i in range(2)]
    merge(parts, tmp_path / "merged")
    assert_same_output(tmp_path / "merged", local, merged=True)


def _logprobs_equal(ray_run, tmp_path):
    cands = ray_run["work"] / "generate"
    args = {"model": ray_run["model"], "show_progress": False, **LOGPROBS}
    local = logprobs(cands, out=tmp_path / "local", **args).out
    assert_same_output(ray_run["work"] / "logprobs", local)
    parts = [logprobs(cands, out=tmp_path / f"part{i}", shard=f"{i}/2", **args).out for i in range(2)]
    merge(parts, tmp_path / "merged")
    assert_same_output(tmp_path / "merged", local, merged=True, logp_abs=1e-5)


def test_run_on_ray_equals_local_and_shards_merged(ray_run, tmp_path):
    """One test for the whole check, so the subprocess run is made once even where pytest-xdist does not
    keep a module's tests on one worker (pytest 9 with xdist 3.8 ignores xdist_group)."""
    _one_ray_and_no_ray_process_left(ray_run)
    for stage, check in (("generate", _generate_equal), ("score", _score_equal), ("logprobs", _logprobs_equal)):
        (tmp_path / stage).mkdir()
        check(ray_run, tmp_path / stage)
