"""The real-data experiments write configs that ``prefpool train`` reads as meant: the AlpacaEval M ablation's
methods (kernel and number of sampled negatives) reach ``TrainConfig`` unchanged."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from prefpool.core.config import load_config
from prefpool.train.config import TrainConfig

REAL_DATA = Path(__file__).resolve().parents[1] / "experiments" / "real_data"


@pytest.fixture(scope="module")
def run_alpaca():
    sys.path.insert(0, str(REAL_DATA))  # the script imports its sibling ``common`` as a top-level module
    try:
        spec = importlib.util.spec_from_file_location("run_alpaca", REAL_DATA / "run_alpaca.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(REAL_DATA))
        sys.modules.pop("common", None)  # the sibling's generic name must not shadow a later ``import common``


@pytest.mark.parametrize("method", ["dpo_random", "mcpo", "random_m2", "mcpo_m3"])
def test_alpaca_methods_reach_train_config(run_alpaca, tmp_path, method):
    kernel, num_negatives = run_alpaca.METHODS[method]
    setting = run_alpaca.SETTINGS["reduced"]
    path = run_alpaca.train_config(
        setting, tmp_path / "model", tmp_path / "table", tmp_path / method, kernel, 3, None, num_negatives=num_negatives
    )
    config = load_config(TrainConfig, path)
    assert (config.loss, config.kernel, config.num_negatives) == ("mcpo", kernel, num_negatives)
    assert (config.seed, config.beta) == (3, setting["train"]["beta"])
    if num_negatives == 1:  # left out, so a config reads as it did before M existed
        assert "num_negatives" not in path.read_text()


def test_alpaca_paired_table_reads_per_seed_differences(run_alpaca):
    def run(top1, pair):
        return {"top1_accuracy": top1, "pairwise_accuracy": pair}

    results = {
        "runs": {
            "0": {"dpo_random": run(0.50, 0.70), "mcpo": run(0.60, 0.75)},
            "1": {"dpo_random": run(0.50, 0.70), "mcpo": run(0.40, 0.70)},
            "2": {"dpo_random": run(0.50, 0.70), "mcpo": run(0.65, 0.80)},
        }
    }
    lines = run_alpaca.paired_table(results).splitlines()
    assert len(lines) == 3  # header, rule, the one comparison both methods of which ran
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[:3] == ["mcpo − dpo_random", "3", "+0.100, -0.100, +0.150"]
    # mean 0.05, sd 0.1323, t(2) = 4.303: half-width 0.329
    assert cells[3] == "+0.050 [-0.279, +0.379]"
    assert cells[4] == "2 of 3"
