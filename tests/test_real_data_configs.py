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
