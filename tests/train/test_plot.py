"""`prefpool plot` / `plot_run`: PNG curves from hand-written metrics.jsonl files."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from prefpool.cli import app
from prefpool.train.plot import DPI, PANEL_SIZE, plot_run

image = pytest.importorskip("matplotlib.image")


def _write_run(folder, records, loss=None):
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if loss:
        (folder / "train_summary.json").write_text(json.dumps({"loss_name": loss}))
    return folder


def _pair_records(n):
    return [
        {
            "step": s,
            "loss": 0.69 - 0.05 * s,
            "rewards/margins": 0.1 * s,
            "rewards/accuracies": 0.5 + 0.05 * s,
            "lr": 1e-3,
            "grad_norm": None,
        }
        for s in range(1, n + 1)
    ]


def _size(path):
    height, width = image.imread(path).shape[:2]
    return width, height


def test_one_pairwise_run_has_three_panels(tmp_path):
    run = _write_run(tmp_path / "dpo", _pair_records(5), loss="dpo")
    out = plot_run(run, tmp_path / "plots")
    assert out == tmp_path / "plots" / "curves.png" and out.stat().st_size > 0
    # loss, margin, accuracy: 3 panels of PANEL_SIZE inches at DPI.
    assert _size(out) == (round(3 * PANEL_SIZE[0] * DPI), round(PANEL_SIZE[1] * DPI))


def test_mcpo_entropy_panel_and_several_runs_on_one_figure(tmp_path):
    dpo = _write_run(tmp_path / "dpo", _pair_records(4), loss="dpo")
    mcpo_records = [
        {**r, "mcpo/entropy": 1.2 - 0.1 * r["step"], "mcpo/selected_hist": [1, 1]} for r in _pair_records(6)
    ]
    mcpo = _write_run(tmp_path / "mcpo", mcpo_records)
    out = plot_run([dpo, mcpo], tmp_path / "compare")
    assert _size(out) == (round(4 * PANEL_SIZE[0] * DPI), round(PANEL_SIZE[1] * DPI))


def test_missing_metrics_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        plot_run(tmp_path / "empty", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_cli_plot(tmp_path):
    run = _write_run(tmp_path / "run", _pair_records(3), loss="dpo")
    runner = CliRunner()
    result = runner.invoke(app, ["plot", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "curves.png").stat().st_size > 0  # default: RUN_DIR/curves.png
    result = runner.invoke(app, ["plot", str(run), str(tmp_path / "missing"), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2
    assert "no metrics.jsonl" in result.output
    result = runner.invoke(app, ["plot", str(run), "--out", str(tmp_path / "figs")])
    assert result.exit_code == 0 and (tmp_path / "figs" / "curves.png").stat().st_size > 0, result.output
    assert str(tmp_path / "figs" / "curves.png") in result.output


def test_out_is_a_folder_not_a_png(tmp_path):
    """`--out x.png` (the old meaning) and `--out FILE` are refused before drawing, exit 2; nothing is written."""
    run = _write_run(tmp_path / "run", _pair_records(3), loss="dpo")
    (tmp_path / "taken").write_text("keep me")
    runner = CliRunner()
    named = runner.invoke(app, ["plot", str(run), "--out", str(tmp_path / "c.png")])
    assert named.exit_code == 2 and "--out is a folder (plot writes curves.png into it)" in named.output
    assert "Traceback" not in named.output and not (tmp_path / "c.png").exists()
    taken = runner.invoke(app, ["plot", str(run), "--out", str(tmp_path / "taken")])
    assert taken.exit_code == 2 and "is a file" in taken.output
    assert (tmp_path / "taken").read_text() == "keep me"
