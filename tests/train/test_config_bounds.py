"""Numbers that break the math are refused before anything is written, naming the key and where it came from.

Each numeric field of ``TrainConfig`` and ``OnlineConfig`` declares its range once, with its help
text (``Bounds`` in the field's metadata); the strict loader checks it, and ``check()`` applies the
same declarations to a config built in Python.
"""

from __future__ import annotations

import dataclasses
import typing

import pytest
from click.testing import CliRunner

from prefpool.cli import app
from prefpool.core.config import ConfigError, load_config
from prefpool.train.config import TrainConfig
from prefpool.train.online_config import OnlineConfig, RoundTrainConfig

REQUIRED = ["model=m", "data=d"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("beta=.nan", "beta: must be a finite number, got nan"),
        ("beta=-0.5", "beta: must be > 0, got -0.5"),
        ("beta=0", "beta: must be > 0, got 0.0"),
        ("label_smoothing=0.7", "label_smoothing: must be in [0, 0.5), got 0.7"),
        ("label_smoothing=0.5", "label_smoothing: must be in [0, 0.5), got 0.5"),
        ("nll_alpha=.inf", "nll_alpha: must be a finite number, got inf"),
        ("lr=.inf", "lr: must be a finite number, got inf"),
        ("lr=-1e-5", "lr: must be >= 0, got -1e-05"),
        ("max_grad_norm=-1", "max_grad_norm: must be > 0 (or null, or 0 as TRL writes it: no clipping), got -1"),
        ("save_total_limit=-1", "save_total_limit: must be >= 1 (or null: keep all), got -1"),
        ("save_total_limit=0", "save_total_limit: must be >= 1 (or null: keep all), got 0"),
        ("gamma=-.inf", "gamma: must be a finite number, got -inf"),
        ("tau=-1", "tau: must be >= 0, got -1.0"),
        ("weight_decay=-0.1", "weight_decay: must be >= 0, got -0.1"),
        ("warmup_ratio=1", "warmup_ratio: must be in [0, 1), got 1.0"),
        ("seed=-1", "seed: must be in [0, 4294967295], got -1"),
        ("lora_alpha=0", "lora_alpha: must be > 0, got 0.0"),
        ("lora_dropout=1", "lora_dropout: must be in [0, 1), got 1.0"),
        ("step0_tolerance=.nan", "step0_tolerance: must be a finite number, got nan"),
        ("score_max_tokens=0", "score_max_tokens: must be >= 1, got 0"),
        ("max_steps=0", "max_steps: must be >= 1 (or null), got 0"),
    ],
)
def test_train_refuses_a_number_out_of_its_range_before_writing(tmp_path, override, message):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "/dev/null", *REQUIRED, f"output_dir={out}", override])
    assert result.exit_code == 2, result.output
    assert f"error: command line: {message}" in result.output, result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_a_value_from_the_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "dpo.yaml"
    path.write_text("model: m\ndata: d\noutput_dir: o\nbeta: .nan\n")
    with pytest.raises(ConfigError, match=rf"^{path}: beta: must be a finite number, got nan$"):
        load_config(TrainConfig, path)
    with pytest.raises(ConfigError, match=r"^command line: lr: must be >= 0, got -1.0$"):
        load_config(TrainConfig, path, ["beta=0.1", "lr=-1.0"])


def test_a_trl_alias_is_checked_under_the_name_written(tmp_path):
    path = tmp_path / "dpo.yaml"
    path.write_text("model: m\ndata: d\noutput_dir: o\nlearning_rate: .inf\n")
    with pytest.raises(ConfigError, match=r"learning_rate \(lr\): must be a finite number"):
        load_config(TrainConfig, path)
    assert load_config(TrainConfig, path, ["learning_rate=1e-5"]).lr == 1e-5
    assert load_config(TrainConfig, path, ["learning_rate=1e-5", "max_grad_norm=0"]).max_grad_norm is None


def test_null_where_null_is_documented_is_taken():
    cfg = load_config(TrainConfig, None, [*REQUIRED, "output_dir=o", "max_grad_norm=null", "save_total_limit=null"])
    assert cfg.max_grad_norm is None and cfg.save_total_limit is None


def test_online_train_section_and_top_level_numbers_are_checked(tmp_path):
    base = ["output_dir=o", "reference=r", "prompts=p", "reward_fn=f.py:f"]
    with pytest.raises(ConfigError, match=r"^command line: train.beta: must be > 0, got -1.0$"):
        load_config(OnlineConfig, None, [*base, "train.beta=-1"])
    with pytest.raises(ConfigError, match=r"^command line: top_p: must be in \(0, 1\], got 1.5$"):
        load_config(OnlineConfig, None, [*base, "top_p=1.5"])
    with pytest.raises(ConfigError, match=r"n: must be >= 2 \(MC-PO needs a preferred sample"):
        load_config(OnlineConfig, None, [*base, "n=1"])


def test_a_config_built_in_python_is_checked_by_check():
    with pytest.raises(ConfigError, match=r"^beta: must be a finite number, got nan$"):
        TrainConfig(model="m", data="d", output_dir="o", beta=float("nan")).check()
    with pytest.raises(ConfigError, match=r"^max_grad_norm: must be > 0"):
        TrainConfig(model="m", data="d", output_dir="o", max_grad_norm=-1.0).check()


@pytest.mark.parametrize("cls", [TrainConfig, RoundTrainConfig, OnlineConfig])
def test_every_numeric_field_declares_its_range(cls):
    hints = typing.get_type_hints(cls)
    numeric = {int, float}
    for f in dataclasses.fields(cls):
        options = set(typing.get_args(hints[f.name])) or {hints[f.name]}
        if options & numeric:
            assert f.metadata.get("bounds") is not None, f"{cls.__name__}.{f.name} declares no bounds"


def test_help_lists_each_range():
    from prefpool.core.config import config_help

    rows = {name: text for name, _, text in config_help(TrainConfig)}
    assert rows["beta"].endswith("Allowed: > 0.")
    assert rows["label_smoothing"].endswith("Allowed: in [0, 0.5).")
    assert rows["save_total_limit"].endswith("Allowed: >= 1 (or null: keep all).")
    result = CliRunner().invoke(app, ["online", "--help"])
    assert "Allowed: >= 2 (MC-PO needs a preferred sample and a pool below it)." in " ".join(result.output.split())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lr_schedule_start": 3}, "lr_schedule_start: 3 needs lr_schedule_steps"),
        ({"lr_schedule_start": 6, "lr_schedule_steps": 6}, r"lr_schedule_start: 6 is past the schedule's end"),
        ({"lr_schedule_steps": 0}, r"lr_schedule_steps: must be >= 1 \(or null\), got 0"),
    ],
)
def test_a_stretch_of_a_longer_lr_schedule_must_lie_inside_it(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(model="m", data="d", output_dir="o", **settings).check()
    TrainConfig(model="m", data="d", output_dir="o", lr_schedule_start=5, lr_schedule_steps=6).check()
