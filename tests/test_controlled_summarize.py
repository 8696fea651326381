"""``experiments/controlled/summarize.py``: the matched-KL reading of the frontier and the sharing of
the kernels experiment's runs with the beta sweep, on hand-made probe records."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "controlled" / "summarize.py"


@pytest.fixture(scope="module")
def summarize():
    spec = importlib.util.spec_from_file_location("controlled_summarize", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _records(points):
    return [{"step": 20 * i, "train_seconds": float(i), "reward": r, "kl": k} for i, (r, k) in enumerate(points)]


def test_best_reward_within_a_kl_budget(summarize):
    recs = _records([(-0.1, 0.0), (0.5, 0.8), (1.2, 3.0), (0.9, 1.5)])
    assert summarize.best_reward_within(recs, 1.0) == 0.5
    assert summarize.best_reward_within(recs, 2.0) == 0.9  # 1.2 is past the budget
    assert summarize.best_reward_within(recs, 0.5) == -0.1  # step 0 (KL 0) always counts
    assert summarize.best_reward_within(recs, 10.0) == 1.2


def test_matched_kl_pools_every_beta_of_a_method(summarize):
    """Seed 0: uniform's best within KL 1 is +0.4 (beta 1), sample's +0.7 (beta 3); seed 1: +0.2 and
    +0.5. Means ± std over the two seeds: +0.30 ± 0.14, +0.60 ± 0.14."""
    runs = {
        "uniform_beta1.0": {0: _records([(0, 0), (0.4, 0.9)]), 1: _records([(0, 0), (0.2, 0.6)])},
        "uniform_beta3.0": {0: _records([(0, 0), (0.9, 4.0)]), 1: _records([(0, 0), (0.1, 0.3)])},
        "sample_beta1.0": {0: _records([(0, 0), (0.3, 0.5)]), 1: _records([(0, 0), (0.5, 0.9)])},
        "sample_beta3.0": {0: _records([(0, 0), (0.7, 1.0)]), 1: _records([(0, 0), (2.0, 8.0)])},
    }
    table = summarize.matched_kl_table(runs)
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in table.splitlines()[2:]}
    assert rows["uniform"][3] == "+0.30 ± 0.14"  # KL ≤ 1
    assert rows["sample"][3] == "+0.60 ± 0.14"
    assert rows["sample"][-1].strip(" |") == "+1.35 ± 0.92"  # KL ≤ 20: +0.7 and +2.0


def test_the_sweep_at_the_default_beta_is_the_kernels_run(summarize, tmp_path):
    (tmp_path / "settings.json").write_text(json.dumps({"steps": 20, "long_steps": 60, "beta": 0.1}))
    for experiment, name in (("kernels", "sample"), ("frontier", "sample_beta1.0")):
        folder = tmp_path / "seed-0" / "runs" / experiment / name
        folder.mkdir(parents=True)
        (folder / "probe.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records([(0, 0), (1, 2)])))
    runs = summarize.load_runs(tmp_path)
    assert runs["frontier"]["sample_beta0.1"] is runs["kernels"]["sample"]
    assert sorted(runs["frontier"]) == ["sample_beta0.1", "sample_beta1.0"]
