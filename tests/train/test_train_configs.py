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


def test_accelerate_fsdp2_config_is_one_accelerate_reads_and_names_its_launch():
    """configs/accelerate-fsdp2-2x8.yaml: accelerate's own loader takes it (unknown top-level keys are
    a TypeError there), every fsdp_config key is an `accelerate launch` option, 16 processes on 2 nodes."""
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils import DistributedType

    path = REPO / "configs" / "accelerate-fsdp2-2x8.yaml"
    text = path.read_text()
    assert "accelerate launch --config_file configs/accelerate-fsdp2-2x8.yaml --machine_rank R" in text
    assert "-m prefpool.cli train configs/" in text and path.name in (REPO / "configs" / "README.md").read_text()
    config = ClusterConfig.from_yaml_file(str(path))
    assert config.distributed_type == DistributedType.FSDP
    assert (config.num_machines, config.num_processes, config.machine_rank) == (2, 16, 0)
    assert config.fsdp_config["fsdp_version"] == 2 and config.fsdp_config["fsdp_reshard_after_forward"] is True
    options = {a.dest for a in launch_command_parser()._actions}
    assert set(config.fsdp_config) <= options, set(config.fsdp_config) - options
