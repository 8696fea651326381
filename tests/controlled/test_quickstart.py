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
    # Every ± says what it is; the kernel's diagnostics are printed, and are those of metrics.jsonl.
    assert "is the standard error of the mean over the 48 probe samples of this one run" in report
    assert "kernel KL to uniform" in report and "y0 draws" in report and "Across" not in report
    mcpo = next(r for r in a["runs"] if r["method"] == "mcpo")
    lines = [json.loads(line) for line in (out / "runs" / "mcpo" / "metrics.jsonl").read_text().splitlines()]
    kl = sum(r["mcpo/kernel_kl_uniform"] for r in lines) / len(lines)
    assert mcpo["kernel"]["kl_uniform"] == pytest.approx(kl) and kl > 0
    assert f"{kl:.2f} (" in report
    dpo = next(r for r in a["runs"] if r["method"] == "dpo-random")
    assert dpo["kernel"]["kl_uniform"] == pytest.approx(0, abs=1e-12) and dpo["kernel"]["chosen_drawn"] == 0
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


def test_quickstart_seeds_report_mean_and_sd_across_training_seeds(tmp_path, fresh_accelerate_state):
    """--seeds 2: each method trained with seeds 0 and 1 on the same data; the report adds mean ± sd
    across them and the paired difference, computed from the per-seed probe records."""
    out = tmp_path / "s"
    summary = run_quickstart(QuickstartConfig(out_dir=str(out), seeds=2, **SMALL), log=None)
    for method in ("dpo-random", "mcpo"):
        assert (out / "runs" / f"{method}-seed1" / "probe.jsonl").is_file()
    finals = {(r["method"], r["seed"]): r["final"]["reward"] for r in summary["seeds"]}
    assert sorted(finals) == [("dpo-random", 0), ("dpo-random", 1), ("mcpo", 0), ("mcpo", 1)]
    across = summary["across_seeds"]
    mean = (finals[("mcpo", 0)] + finals[("mcpo", 1)]) / 2
    sd = abs(finals[("mcpo", 0)] - finals[("mcpo", 1)]) / 2**0.5
    assert across["mcpo"]["reward"] == pytest.approx([mean, sd])
    diffs = [finals[("mcpo", s)] - finals[("dpo-random", s)] for s in (0, 1)]
    assert across["paired"]["reward"][0] == pytest.approx(sum(diffs) / 2) and across["paired"]["n"] == 2
    report = (out / "REPORT.md").read_text()
    assert "## Across 2 training seeds" in report and "standard deviation across the seeds" in report
    assert f"{mean:+.2f} ± {sd:.2f}" in report
