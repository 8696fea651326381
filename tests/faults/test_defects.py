"""The defects an adversarial run of the CLI found (issue 11), each reproduced here, then fixed.

The simpler ones (a raw traceback where a clear error belongs) are rows of the
fault table (``fault_cases``); these need more than an exit code: a fresh
interpreter, the numbers eval reports, the bytes of an earlier run, the cause
chained to an error, a token grepped for in every file written.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from fault_world import tree_digest

from prefpool.cli import app
from prefpool.core.errors import UserCodeError
from prefpool.pipeline.io.layout import MANIFEST, read_meta
from prefpool.pipeline.io.read import read_table

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
TOKEN = "hf_" + "Zq7" * 12  # the shape of a Hugging Face access token


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_merge_runs_from_the_command_line_in_a_fresh_process(world, tmp_path):
    """`pipeline/merge.py` used `pa.compute` without importing it; in-process tests passed only because
    another import had loaded it. A fresh interpreter runs the shipped command."""
    out = tmp_path / "merged"
    done = subprocess.run(
        [sys.executable, "-m", "prefpool", "merge", str(world["shard0"]), str(world["shard1"]), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "merge: 8 rows from 2 shard runs" in done.stdout
    assert read_table(out).to_pylist() == read_table(world["ingest"]).to_pylist()


def _files_holding(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_an_engine_token_in_provenance_reaches_no_manifest_and_no_card(world, tmp_path):
    """`hf_token` is a real `vllm.LLM` option; given in engine_args it was stored verbatim in the
    logprobs provenance, copied into every later manifest and rendered into the dataset card."""
    from prefpool.pipeline.build import build
    from prefpool.pipeline.io.stage_run import StageRun, plan_units
    from prefpool.pipeline.push import push

    lp = tmp_path / "lp"
    source = read_table(world["lp_ex"])
    run = StageRun(
        lp,
        stage="logprobs",
        schema="logprobs",
        config=read_meta(world["lp_ex"], MANIFEST)["identity"]["config"],
        inputs={"made_by": "test"},
        rows_per_unit=64,
        model={"engine": "vllm", "engine_args": {"hf_token": TOKEN, "tensor_parallel_size": 1}},
    )
    units = plan_units(list(range(source.num_rows)), key_of=str, rows_per_unit=64)
    for unit in run.pending(units):
        run.write(unit, source.take(list(unit.items)))
    run.finish()
    table = build("pairwise", examples=world["ingest"], logprobs=lp, out=tmp_path / "pairwise").out
    push(table, repo_id="me/prefs", dry_run=True, out=tmp_path / "hub")
    assert _files_holding(tmp_path, TOKEN) == []
    provenance = read_meta(lp, MANIFEST)["provenance"]["model"]
    assert provenance["engine_args"] == {"hf_token": "<redacted>", "tensor_parallel_size": 1}
    assert "<redacted>" in (tmp_path / "hub" / "README.md").read_text()


def test_eval_refuses_a_cache_made_under_another_chat_template(world):
    """Weights identical to the reference, another chat template: eval compared completion token
    counts only (equal here) and reported accuracy > 0 with ties < 1, where every reward is 0."""
    result = invoke("eval", "--model", world["model_other_template"], "--data", world["pairwise"], "--device", "cpu")
    assert result.exit_code == 2, result.output
    assert "tokenizer_sha256" in result.output and "chat template" in result.output


def test_eval_of_the_reference_itself_is_all_ties(world, tmp_path):
    """The step-0 comparison of eval: policy == reference (same weights hash) gives log-ratio 0 on
    every answer, so accuracy 0 and tie rate 1; it passes, and says so in the result."""
    out = tmp_path / "ref"
    result = invoke("eval", "--model", world["model"], "--data", world["pairwise"], "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    ranking = json.loads((out / "eval.json").read_text())["ranking"]
    assert ranking["accuracy"] == 0.0 and ranking["tie_rate"] == 1.0
    assert ranking["step0_max_abs_diff"] is not None and ranking["step0_max_abs_diff"] < 1e-4


def test_eval_step0_catches_values_of_another_model(world):
    """The relabelled table claims our weights and template: only the values can tell."""
    result = invoke("eval", "--model", world["model"], "--data", world["pairwise_relabelled"], "--device", "cpu")
    assert result.exit_code == 2, result.output
    assert "step-0" in result.output


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _train_args(world, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "/dev/null",
        f"model={world['model']}",
        f"data={world['pairwise']}",
        f"output_dir={out}",
        "loss=dpo",
        "batch_size=2",
        "max_steps=2",
        "lr=1e-3",
        "progress=false",
        *extra,
    ]


def test_train_refused_at_step0_leaves_a_finished_run_byte_identical(world, tmp_path):
    """A run refused at the step-0 check emptied the finished run's metrics.jsonl in the same folder."""
    run = _copy(world["train_done"], tmp_path / "run")
    before = tree_digest(run)
    relabelled = f"data={world['pairwise_relabelled']}"
    refused = invoke(*_train_args(world, run, relabelled))
    assert refused.exit_code == 2 and "overwrite" in refused.output, refused.output
    assert tree_digest(run) == before
    failed = invoke(*_train_args(world, run, relabelled, "overwrite=true"))
    assert failed.exit_code == 2 and "step-0" in failed.output, failed.output
    assert tree_digest(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging folder left behind


def test_rerunning_a_finished_resume_run_is_a_no_op(world, tmp_path):
    """Rerunning a finished `resume: true` run rewrote train_summary.json and the model card with
    "final loss None"."""
    run = _copy(world["train_done"], tmp_path / "run")
    before = tree_digest(run)
    result = invoke(*_train_args(world, run, "resume=true"))
    assert result.exit_code == 0, result.output
    assert "nothing to do" in result.output and "final loss None" not in result.output
    assert tree_digest(run) == before


def test_a_reward_function_that_raises_names_the_prompt_and_row_and_chains_its_error(world, tmp_path):
    from prefpool.pipeline.score import score

    result = invoke("score", world["generate"], "-o", tmp_path / "s", "--reward-fn", f"{world['reward_raises']}:reward")
    assert result.exit_code == 2, result.output
    assert "prompt_id" in result.output and "row 0" in result.output and "KeyError" in result.output
    assert not (tmp_path / "s").exists()  # nothing half-made: no folder, no run.json
    with pytest.raises(UserCodeError) as caught:
        score(world["generate"], out=tmp_path / "s", reward_fn=f"{world['reward_raises']}:reward")
    assert isinstance(caught.value.__cause__, KeyError)


def test_logprobs_template_errors_leave_no_run_json(world, tmp_path):
    """logprobs with a tokenizer without chat template, or a prompt role the template rejects, raised
    a raw traceback and left a run.json behind (generate reported the same inputs cleanly)."""
    no_template = invoke("logprobs", world["ingest"], "-m", world["model_no_chat_template"], "-o", tmp_path / "a")
    assert no_template.exit_code == 2 and "no chat template" in no_template.output, no_template.output
    bad_role = invoke("logprobs", world["ingest_bad_role"], "-m", world["model"], "-o", tmp_path / "b")
    assert bad_role.exit_code == 2, bad_role.output
    assert "row 0" in bad_role.output and "'prompt'" in bad_role.output and "narrator" in bad_role.output
    assert list(tmp_path.iterdir()) == []
