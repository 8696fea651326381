"""Strict YAML configs: overrides, nested dataclasses, unknown keys and bad types are errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from prefpool.core.config import (
    ConfigError,
    apply_overrides,
    check_kwargs,
    config_help,
    load_config,
)


@dataclass(frozen=True)
class Optim:
    lr: float = field(default=1e-5, metadata={"help": "learning rate"})
    betas: tuple[float, ...] = (0.9, 0.999)


@dataclass(frozen=True)
class Run:
    model: str = field(metadata={"help": "model folder"})
    loss: Literal["dpo", "mcpo"] = "dpo"
    steps: int = 10
    eval_dir: str | None = None
    optim: Optim = field(default_factory=Optim)


def _write(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_build_the_dataclass(tmp_path):
    path = _write(tmp_path, "model: m\nsteps: 5\noptim:\n  lr: 1\n")
    cfg = load_config(Run, path, ["loss=mcpo", "optim.betas=[0.5, 0.6]", "eval_dir=null"])
    assert cfg == Run(model="m", loss="mcpo", steps=5, optim=Optim(lr=1.0, betas=(0.5, 0.6)))
    assert isinstance(cfg.optim.lr, float)


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("model: m\nstep: 5\n", [], r"run.yaml: unknown key 'step'"),
        ("model: m\noptim:\n  lrr: 1\n", [], r"unknown key 'optim.lrr'"),
        ("model: m\n", ["optim.momentum=0.9"], r"unknown key 'optim.momentum'"),
        ("steps: 5\n", [], r"missing required key 'model'"),
        ("model: m\nsteps: five\n", [], r"steps: expected int"),
        ("model: m\nsteps: true\n", [], r"steps: expected int"),
        ("model: m\nloss: ipo\n", [], r"loss: 'ipo' is not one of"),
        ("model: m\noptim: 3\n", [], r"optim must be a mapping"),
        ("- a\n- b\n", [], r"top level must be a mapping"),
        ("model: [unclosed\n", [], r"not valid YAML"),
        ("model: m\n", ["steps"], r"expected key=value"),
    ],
)
def test_bad_configs_name_the_key_and_the_file(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Run, _write(tmp_path, text), overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["stesp=5"], r"^command line: unknown key 'stesp' \(did you mean 'steps'\?\)"),
        (["optim.momentum=0.9"], r"^command line: unknown key 'optim.momentum'"),
        (["steps=five"], r"^command line: steps: expected int, got 'five'"),
    ],
)
def test_a_bad_override_blames_the_command_line_not_the_file(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Run, _write(tmp_path, "model: m\n"), overrides)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(Run, tmp_path / "absent.yaml")


def test_overrides_do_not_change_the_input_mapping():
    data = {"optim": {"lr": 1.0}}
    apply_overrides(data, ["optim.lr=2"])
    assert data == {"optim": {"lr": 1.0}}


def test_check_kwargs_refuses_unknown_keyword():
    def stage(source, *, out, n=1):
        return source, out, n

    check_kwargs(stage, {"out": "x", "n": 2}, source="p.yaml: generate")
    with pytest.raises(ConfigError, match=r"p.yaml: generate: unknown key 'm' for stage"):
        check_kwargs(stage, {"m": 2}, source="p.yaml: generate")


def test_config_help_lists_fields_with_help():
    rows = {name: (default, text) for name, default, text in config_help(Run)}
    assert rows["model"] == ("(required)", "model folder")
    assert rows["steps"][0] == "10"
