"""The example training configs load strictly and say how to run them."""

from __future__ import annotations

from pathlib import Path

from prefpool.core.config import load_config
from prefpool.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]


def test_example_train_configs_load_and_name_their_command():
    configs = sorted((REPO / "configs").glob("train-*.yaml"))
    assert configs
    for path in configs:
        text = path.read_text()
        assert text.startswith("#") and f"prefpool train configs/{path.name}" in text
        config = load_config(TrainConfig, path)
        assert config.loss and config.data
        assert path.name in (REPO / "configs" / "README.md").read_text()
