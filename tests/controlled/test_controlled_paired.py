"""The paired design's grid (``prefpool.controlled.grid``), runner (``experiments/controlled/paired.py``) and
summary (``experiments/controlled/paired_summary.py``): the summary on hand-made cells, and a smoke run of two
real cells end to end."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from prefpool.controlled.grid import COMPARISONS, METHODS, PAIRWISE, Cell, cells, invalid_reason, methods_of

SCRIPTS = Path(__file__).resolve().parents[2] / "experiments" / "controlled"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"controlled_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def summary():
    return _load("paired_summary")


def test_the_full_grid():
    """3 data seeds x 3 training seeds x 3 betas x 2 arms x 4 learning rates = 216 cells per method."""
    every = cells(methods=tuple(METHODS))
    assert len(every) == 216 * len(METHODS)
    assert len({c.id for c in every}) == len(every)
    assert {p.removeprefix("pair-") for p in PAIRWISE} >= {"dpo", "ipo", "simpo", "robust"}
    main = methods_of(("main",))
    assert main[:2] == ("mcpo", "dpo-random") and set(PAIRWISE) <= set(main)
    assert set(methods_of(("m",))) == {"mcpo", "dpo-random", "mcpo-m2", "mcpo-m3", "random-m2", "random-m3"}
    assert all(m in METHODS for c in COMPARISONS for m in c.methods())


def test_cells_of_one_seed_pair_differ_only_in_method_and_lr():
    some = cells(methods=("mcpo", "dpo-random"), data_seeds=(1,), train_seeds=(2,), betas=(1.0,), arms=("std",))
    assert {(c.data_seed, c.train_seed, c.beta, c.arm) for c in some} == {(1, 2, 1.0, "std")}
    assert some[0].id == "d1-t2-b1-std-mcpo-lr0.00025"


def test_invalid_reason():
    kernel = {"mcpo/kernel_kl_uniform": 0.25}
    assert invalid_reason(Cell(0, 0, 1.0, "std", "mcpo", 5e-4), kernel) == "kernel KL to uniform 0.250 < 0.3"
    assert invalid_reason(Cell(0, 0, 1.0, "std", "mcpo", 5e-4), {"mcpo/kernel_kl_uniform": 0.31}) is None
    assert invalid_reason(Cell(0, 0, 0.1, "std", "mcpo", 5e-4), kernel) is None  # the null control
    assert invalid_reason(Cell(0, 0, 1.0, "std", "dpo-random", 5e-4), {"mcpo/kernel_kl_uniform": 0.0}) is None
    assert invalid_reason(Cell(0, 0, 3.0, "std", "mcpo-max", 5e-4), None) is None
    assert (
        invalid_reason(Cell(0, 0, 3.0, "low", "garbage-mcpo", 5e-4), None) == "no kernel diagnostics in metrics.jsonl"
    )


def _cell(method, d, t, beta, points, *, arm="std", lr=5e-4, kernel_kl=0.5):
    cell = Cell(d, t, beta, arm, method, lr)
    kernel = {"mcpo/kernel_kl_uniform": kernel_kl} if METHODS[method].kernel else None
    records = [{"step": 20 * i, "kl": k, "reward": r} for i, (k, r) in enumerate([(0.0, 0.0), *points])]
    return {
        "id": cell.id,
        "cell": cell.__dict__,
        "records": records,
        "kernel": kernel,
        "invalid": invalid_reason(cell, kernel),
    }


def _synthetic(gain: float, null_gain: float = 0.0, mcpo_kernel_kl: float = 0.5) -> list[dict]:
    """9 seed pairs; dpo-random's frontier is reward = KL (to KL 3); mcpo's is (1 + gain) x KL at β 1 and 3,
    (1 + null_gain) x KL at β 0.1, each pair jittered. At KL k the paired difference is gain x k + jitter."""
    out = []
    for d in range(3):
        for t in range(3):
            jitter = 0.01 * (3 * d + t - 4)
            for beta in (0.1, 1.0, 3.0):
                g = null_gain if beta == 0.1 else gain
                out.append(_cell("dpo-random", d, t, beta, [(k, k) for k in (0.5, 1.0, 3.0)]))
                mine = [(k, (1 + g) * k + jitter) for k in (0.5, 1.0, 3.0)]
                out.append(_cell("mcpo", d, t, beta, mine, kernel_kl=mcpo_kernel_kl if beta != 0.1 else 0.02))
    return out


def test_summary_reproduces_a_clear_paired_gain(summary, tmp_path):
    text, outcomes = summary.summarize(_synthetic(gain=0.2), tmp_path)
    assert outcomes["main"] == {"std": "reproduced"}
    # the kernel ablation needs max and min, which were not run
    assert outcomes["kernel"] == {"std": "not testable"}
    assert "| mcpo − dpo-random | std | 1 | +0.10 [" in text  # KL 0.5: 0.2 x 0.5
    assert "9/9 p=0.00391 (+)" in text
    assert {p.name for p in tmp_path.iterdir()} == {
        f"paired_{r}{suffix}.png" for r in ("main", "kernel") for suffix in ("", "_frontier")
    }
    assert f"![main]({tmp_path / 'paired_main.png'})" in text  # no folder to link from: the path as given


def test_summary_links_figures_from_the_written_markdown(summary, tmp_path):
    figures, markdown_folder = tmp_path / "docs" / "figures", tmp_path / "experiments" / "controlled"
    text, _ = summary.summarize(_synthetic(gain=0.2), figures, links_from=markdown_folder)
    assert "![main](../../docs/figures/paired_main.png)" in text
    assert "![kernel, frontiers](../../docs/figures/paired_kernel_frontier.png)" in text


def test_summary_no_gain_is_not_reproduced(summary):
    _, outcomes = summary.summarize(_synthetic(gain=0.0))
    assert outcomes["main"] == {"std": "not reproduced"}


def test_summary_null_control_showing_the_gain_is_not_testable(summary):
    _, outcomes = summary.summarize(_synthetic(gain=0.2, null_gain=0.2))
    assert outcomes["main"] == {"std": "not testable"}


def test_summary_drops_invalid_runs(summary):
    """Every mcpo run at β 1 and 3 has its kernel within 0.2 nats of uniform: nothing left to test."""
    text, outcomes = summary.summarize(_synthetic(gain=0.2, mcpo_kernel_kl=0.2))
    assert outcomes["main"] == {"std": "not testable"}
    assert "| mcpo | 1 | std | 0.200 | 0.200 | 9 of 9 |" in text


def test_a_failing_cell_is_reported_and_the_sweep_goes_on(tmp_path, monkeypatch, capsys):
    paired = _load("paired")
    calls = []

    def broken(cell, *args, **kwargs):
        calls.append(cell.id)
        raise RuntimeError(f"loss is nan in {cell.id}")

    monkeypatch.setattr(paired, "run_cell", broken)
    out = tmp_path / "sweep"
    with pytest.raises(SystemExit, match="2 cells failed"):
        paired.main(["--out", str(out), "--smoke", "--methods", "mcpo", "dpo-random"])
    assert calls == ["d0-t0-b1-std-mcpo-lr0.001", "d0-t0-b1-std-dpo-random-lr0.001"]
    assert "RuntimeError: loss is nan in d0-t0-b1-std-mcpo-lr0.001" in (out / "failed" / f"{calls[0]}.txt").read_text()
    assert "FAILED" in capsys.readouterr().out


def test_list_and_max_cells(tmp_path, capsys):
    paired = _load("paired")
    paired.main(["--out", str(tmp_path), "--list", "--only", "kernel", "--data-seeds", "0", "--arms", "low"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"{3 * 3 * 4 * 4} cells"  # 3 training seeds x 3 betas x 4 lrs x 4 methods
    assert lines[0] == "      d0-t0-b1-low-mcpo-lr0.00025"


@pytest.mark.slow
def test_smoke_run_of_two_cells_then_the_summary(tmp_path, summary, capsys):
    """--smoke: one seed pair, β 1, today's annotator, one learning rate, 4 steps: the wiring end to end."""
    paired = _load("paired")
    out = tmp_path / "smoke"
    paired.main(["--out", str(out), "--smoke", "--methods", "mcpo", "dpo-random", "--prepare-only"])
    assert "data d0/std, table mcpo: ready in" in capsys.readouterr().out
    assert not (out / "cells").exists()
    paired.main(["--out", str(out), "--smoke", "--methods", "mcpo", "dpo-random"])  # reads the data made above
    printed = capsys.readouterr().out
    assert "ran 2 cells; 2/2 done" in printed
    results = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]
    assert [r["id"] for r in results] == ["d0-t0-b1-std-dpo-random-lr0.001", "d0-t0-b1-std-mcpo-lr0.001"]
    for r in results:
        assert [rec["step"] for rec in r["records"]] == [0, 2, 4]
        assert r["records"][0]["kl"] == 0.0  # the policy is the reference at step 0
        assert r["kernel"]["mcpo/kernel_kl_uniform"] >= 0 and r["seconds_per_step"] > 0
    assert not (out / "work").exists() or not any((out / "work").iterdir())  # run folders removed

    paired.main(["--out", str(out), "--smoke", "--methods", "mcpo", "dpo-random"])  # resumable: nothing to do
    assert "ran 0 cells; 2/2 done" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="other settings: steps"):
        paired.main(["--out", str(out), "--smoke", "--steps", "6", "--methods", "mcpo"])

    summary.main(["--out", str(out), "--write", str(tmp_path / "summary.md")])
    text = (tmp_path / "summary.md").read_text()
    assert "**Verdict (main):** not testable" in text  # one seed pair: every reading n/t
    assert "| mcpo − dpo-random | std | 1 | n/t (" in text  # 1 pair, or 0 when the mcpo run is invalid
    assert (out / "figures" / "paired_main.png").stat().st_size > 0
    assert (out / "figures" / "paired_main_frontier.png").stat().st_size > 0
