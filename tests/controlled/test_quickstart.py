"""`prefpool quickstart` end to end in a reduced setting: the report folder, determinism, refusals."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from prefpool.cli import app
from prefpool.controlled.quickstart import MARKER, QuickstartConfig, run_quickstart

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("controlled")]

SMALL = {
    "engine": "hf",
    "n": 4,
    "steps": 4,
    "batch_size": 4,
    "probe_every": 2,
    "probe_samples": 2,
    "reference_steps": 30,
}


def _probe_records(out, method):
    records = [json.loads(line) for line in (out / "runs" / method / "probe.jsonl").read_text().splitlines()]
    for r in records:
        r.pop("train_seconds")  # wall time: the one thing allowed to differ
    return records


def _losses(out, method):
    lines = (out / "runs" / method / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def test_quickstart_writes_the_report_and_is_deterministic(tmp_path, fresh_accelerate_state):
    a = run_quickstart(QuickstartConfig(out_dir=str(tmp_path / "a"), **SMALL), log=None)
    b = run_quickstart(QuickstartConfig(out_dir=str(tmp_path / "b"), **SMALL), log=None)
    out = tmp_path / "a"
    for name in ("REPORT.md", "curves.png", "summary.json", "pipeline.yaml", MARKER):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "REPORT.md").read_text()
    assert "DPO (random rejected)" in report and "MC-PO (sample kernel)" in report
    assert "prefpool run" in report  # the commands that made the data
    for method in ("dpo-random", "mcpo"):
        records = _probe_records(out, method)
        assert [r["step"] for r in records] == [0, 2, 4]
        assert records[0]["kl"] == 0.0  # step 0 is the reference itself
        assert records == _probe_records(tmp_path / "b", method)
        assert _losses(out, method) == _losses(tmp_path / "b", method) and len(_losses(out, method)) == 4
        assert (out / "runs" / method / "model.safetensors").is_file()
        evaluation = json.loads((out / "runs" / f"{method}-eval" / "eval.json").read_text())
        assert 0 <= evaluation["samples"]["win_rate"] <= 1 and 0 < evaluation["ranking"]["num_prompts"] <= 24
    assert [r["final"] for r in a["runs"]] != [] and a["runs"][0]["final"]["reward"] == b["runs"][0]["final"]["reward"]


def test_quickstart_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    result = CliRunner().invoke(app, ["quickstart", "--out", str(tmp_path), "--overwrite"])
    assert result.exit_code == 2 and "not a quickstart folder" in result.output
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    result = CliRunner().invoke(app, ["quickstart", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--overwrite" in result.output
