"""Real ``kill -9`` of the long-running stages (generate, logprobs), then a rerun of the same command.

The CLI runs in a subprocess (``prefpool run`` with a one-stage YAML: the YAML
passes ``rows_per_unit: 1`` to the stage function, so every prompt or pair is
its own shard file). As soon as one shard exists under its final name the
process gets SIGKILL; the same command is then run to completion and its
output compared with an uninterrupted run: same rows, no duplicates, no
temporary files, a manifest. The input is large enough (dozens of units) that
the kill lands mid-run; the resumed run must report skipped units.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from prefpool.cli import app
from prefpool.pipeline.generate import generate
from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.io.atomic import is_temp_name
from prefpool.pipeline.io.manifest import load_manifest
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.io.shards import ShardName
from prefpool.pipeline.logprobs import logprobs
from prefpool.testing import build_tiny_llama

torch.set_num_threads(1)
TIMEOUT_S = 60  # a hung subprocess fails the test instead of hanging the suite
PROMPTS = 32  # one unit each (generate) or two (logprobs): the kill lands well before the end


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", num_layers=1)


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    src = folder / "data.jsonl"
    rows = [
        {
            "prompt": f"Repeat the word {i} and say what {i} plus {i} is.",
            "chosen": f"{2 * i} " * (i % 7 + 1),
            "rejected": "the cat sees a red apple " * (i % 5 + 1),
        }
        for i in range(PROMPTS)
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ingest(src, format="pairwise", out=folder / "examples").out


def _shards(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if ShardName.parse(p.name)] if folder.is_dir() else []


def _config(workdir: Path, stage: str, section: dict) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / f"{stage}.yaml"
    config.write_text(json.dumps({"workdir": str(workdir), stage: section}))  # JSON is YAML
    return config


def _run_and_kill(config: Path, out: Path) -> bool:
    """Run ``prefpool run CONFIG`` in a subprocess; SIGKILL it once a shard of ``out`` exists.

    Returns whether it was killed while running (False: it finished first).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = config.with_suffix(".log")  # a file, not a pipe: a full pipe would stall the child
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefpool.cli", "run", str(config)], stdout=handle, stderr=subprocess.STDOUT, env=env
        )
    killed = False
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while proc.poll() is None and not _shards(out):
            assert time.monotonic() < deadline, "no shard appeared in time"
            time.sleep(0.01)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
        proc.wait(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if killed:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 0, log.read_text()
    return killed


def _kill_then_resume(tmp_path: Path, stage: str, section: dict) -> tuple[Path, str]:
    """Kill a run of the CLI, then rerun the same command (in-process: no second interpreter start-up)."""
    start = time.perf_counter()
    config, out = _config(tmp_path, stage, section), tmp_path / stage
    killed = _run_and_kill(config, out)
    left = len(_shards(out))
    mid = time.perf_counter()
    assert load_manifest(out) is None or not killed
    result = CliRunner().invoke(app, ["run", str(config)])
    assert result.exit_code == 0, result.output
    stdout = result.output
    print(
        f"{stage}: killed={killed} with {left} shard(s) written after {mid - start:.1f} s; "
        f"resume took {time.perf_counter() - mid:.1f} s: {stdout.strip()}"
    )
    assert killed, "the run finished before the kill: make the input larger"
    skipped = int(re.search(r"units_skipped=(\d+)", stdout).group(1))
    assert skipped >= 1  # finished shards were kept, not redone
    manifest = load_manifest(out)
    assert manifest is not None
    assert not [p for p in out.iterdir() if is_temp_name(p)]
    assert sorted(p.name for p in _shards(out)) == sorted(e.file for e in manifest.shards)
    return out, stdout


def test_generate_killed_then_rerun_equals_one_run(tiny, examples, tmp_path):
    args = {"n": 2, "max_new_tokens": 24, "temperature": 1.0, "seed": 3, "batch_size": 2, "rows_per_unit": 1}
    out, _ = _kill_then_resume(
        tmp_path / "killed",
        "generate",
        {"input_dir": str(examples), "model": str(tiny), "show_progress": False, **args},
    )
    reference = generate(examples, model=tiny, out=tmp_path / "ref", show_progress=False, **args).out
    got = read_table(out, schema="candidates").to_pylist()
    want = read_table(reference, schema="candidates").to_pylist()
    ids = [r["prompt_id"] for r in got]
    assert len(ids) == len(set(ids)) == PROMPTS
    assert sorted(got, key=lambda r: r["prompt_id"]) == sorted(want, key=lambda r: r["prompt_id"])


def test_logprobs_killed_then_rerun_equals_one_run(tiny, examples, tmp_path):
    args = {"max_length": 128, "rows_per_unit": 1}
    out, _ = _kill_then_resume(
        tmp_path / "killed",
        "logprobs",
        {"input_dir": str(examples), "model": str(tiny), "show_progress": False, **args},
    )
    reference = logprobs(examples, model=tiny, out=tmp_path / "ref", show_progress=False, **args).out

    def rows(folder):
        table = read_table(folder, schema="logprobs").to_pylist()
        return {(r["prompt_id"], r["completion_id"]): r for r in table}, len(table)

    (got, n_got), (want, n_want) = rows(out), rows(reference)
    assert n_got == len(got) == n_want == 2 * PROMPTS  # no duplicates: 2 answers per prompt
    assert sorted(got) == sorted(want)
    for key, row in want.items():
        assert got[key]["logp"] == pytest.approx(row["logp"], abs=1e-5)
        assert {k: v for k, v in got[key].items() if k != "logp"} == {k: v for k, v in row.items() if k != "logp"}
