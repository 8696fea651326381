"""The whole pipeline through `run_pipeline` and one YAML file, on a tiny local model.

ingest (ranked answers) -> generate (3 samples) -> logprobs (answers and
samples) -> build mcpo (pool = samples), pairwise, mpo -> push --dry-run.
The first run is interrupted at push (a bad `push.source` override), the
second resumes, the third must do nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import yaml
from datasets import load_dataset
from pipeline_helpers import assert_loads_with_datasets, rows_by_id

from prefpool.pipeline.io.errors import PipelineError
from prefpool.pipeline.io.ids import completion_id
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.run import run_pipeline
from prefpool.testing import build_tiny_llama

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "configs" / "data" / "tiny_ranked.jsonl"
N = 3


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("e2e-model") / "tiny")


@pytest.fixture(scope="module")
def pipeline(tiny_model, tmp_path_factory):
    """Run the YAML three times; returns (workdir, summaries of run 2, summaries of run 3, seconds of run 3, logs)."""
    root = tmp_path_factory.mktemp("e2e")
    config = {
        "workdir": str(root / "work"),
        "model": str(tiny_model),
        "ingest": {"source": str(DATA), "format": "ranked"},
        # n is overridden to N on the command line: the test checks the override reached the stage.
        "generate": {"n": 1, "max_new_tokens": 6, "temperature": 1.0, "batch_size": 18},
        "logprobs": {"max_length": 128},
        "build": {"kind": ["mcpo", "pairwise", "mpo"]},
        "push": {"source": "{workdir}/build/mcpo", "repo_id": "me/tiny-mcpo", "dry_run": True},
    }
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    logs: list[str] = []
    with pytest.raises(PipelineError):  # everything but push ran
        run_pipeline(path, [f"generate.n={N}", "push.source={workdir}/build/none"], log=logs.append)
    resumed = {c.label: s for c, s in run_pipeline(path, [f"generate.n={N}"], log=logs.append)}
    start = time.perf_counter()
    again = {c.label: s for c, s in run_pipeline(path, [f"generate.n={N}"], log=logs.append)}
    return root / "work", resumed, again, time.perf_counter() - start, logs


def _logps(work: Path) -> dict[tuple[str, str], float]:
    rows = read_table(work / "logprobs" / "ingest").to_pylist() + read_table(work / "logprobs" / "generate").to_pylist()
    return {(r["prompt_id"], r["completion_id"]): r["logp"] for r in rows}


def test_row_counts_and_prompt_ids_line_up(pipeline):
    work, *_ = pipeline
    examples = rows_by_id(work / "ingest")
    candidates = rows_by_id(work / "generate")
    assert len(examples) == 6
    assert candidates.keys() == examples.keys()
    assert all(len(row["samples"]) == N for row in candidates.values())

    answer_pairs = {(pid, completion_id(a["text"])) for pid, row in examples.items() for a in row["answers"]}
    sample_pairs = {(pid, completion_id(s["text"])) for pid, row in candidates.items() for s in row["samples"]}
    lp_ex = read_table(work / "logprobs" / "ingest").to_pylist()
    lp_cand = read_table(work / "logprobs" / "generate").to_pylist()
    assert {(r["prompt_id"], r["completion_id"]) for r in lp_ex} == answer_pairs and len(lp_ex) == len(answer_pairs)
    assert {(r["prompt_id"], r["completion_id"]) for r in lp_cand} == sample_pairs
    assert len(lp_cand) == len(sample_pairs)

    # best-vs-rest: one pair per non-best answer; mpo has the same pairs.
    n_pairs = sum(len(row["answers"]) - 1 for row in examples.values())
    pairwise = read_table(work / "build" / "pairwise").to_pylist()
    mpo = read_table(work / "build" / "mpo").to_pylist()
    mcpo = read_table(work / "build" / "mcpo").to_pylist()
    assert len(pairwise) == len(mpo) == n_pairs
    assert {r["prompt_id"] for r in mcpo} == {r["prompt_id"] for r in pairwise} == examples.keys()


def test_mcpo_reference_logps_are_the_logprobs_values(pipeline):
    work, *_ = pipeline
    logps = _logps(work)
    candidates = rows_by_id(work / "generate")
    for row in read_table(work / "build" / "mcpo").to_pylist():
        pid = row["prompt_id"]
        assert row["ref_preferred_logp"] == logps[(pid, row["preferred_id"])]
        assert row["ref_pool_logps"] == [logps[(pid, cid)] for cid in row["pool_ids"]]
        # the pool is the generated samples, in sample order, minus the preferred text
        samples = [s["text"] for s in candidates[pid]["samples"] if s["text"] != row["preferred"]]
        assert row["pool"] == samples
        assert row["pool_ids"] == [completion_id(t) for t in samples]
    for row in read_table(work / "build" / "mpo").to_pylist():
        assert row["ref_sample_logps"] == [logps[(row["prompt_id"], c)] for c in row["ref_sample_ids"]]


def test_every_stage_output_loads_with_datasets(pipeline, monkeypatch, tmp_path):
    """``load_dataset(folder)`` and ``load_dataset("parquet", data_dir=folder)`` give each stage's table."""
    work, *_ = pipeline
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    stages = ["ingest", "generate", "logprobs/ingest", "logprobs/generate", "build/mcpo", "build/pairwise", "build/mpo"]
    for stage in stages:
        assert_loads_with_datasets(work / stage, tmp_path / "hf-cache")


def test_pushed_folder_loads_with_datasets(pipeline, monkeypatch, tmp_path):
    work, *_ = pipeline
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    loaded = load_dataset(str(work / "push"), split="train")
    mcpo = read_table(work / "build" / "mcpo")
    assert loaded.num_rows == mcpo.num_rows
    assert loaded["prompt_id"] == mcpo.column("prompt_id").to_pylist()
    assert json.loads((work / "push" / ".prefpool" / "push.json").read_text())["complete"] is True


def test_resume_after_failure_and_rerun_is_a_noop(pipeline):
    _, resumed, again, seconds, logs = pipeline
    # The interrupted run had written every stage but push: the resumed run only pushes.
    assert resumed["generate"].units_written == 0 and resumed["generate"].tokens_generated == 0
    assert resumed["logprobs[ingest]"].computed == resumed["logprobs[generate]"].computed == 0
    assert resumed["push"].rows == 6
    assert again["generate"].units_written == 0 and again["logprobs[generate]"].computed == 0
    assert again["ingest"].units_written == 0
    assert any(line.startswith("push: up to date") for line in logs)
    assert seconds < 10, f"a rerun of a complete pipeline took {seconds:.1f} s"
    assert [line.split(":")[0] for line in logs[-8:]] == [
        "ingest",
        "generate",
        "logprobs[ingest]",
        "logprobs[generate]",
        "build[mcpo]",
        "build[pairwise]",
        "build[mpo]",
        "push",
    ]
