"""A TRL user's DPOConfig YAML in `prefpool train`: same-meaning names mapped, the rest refused with a reason,
every unknown key reported in one run with its nearest known name."""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner

from prefpool.cli import app
from prefpool.core.config import ConfigError, load_config
from prefpool.train.config import TrainConfig
from prefpool.train.online_config import OnlineConfig
from prefpool.train.trainer import warmup_steps

REQUIRED = "data: d\noutput_dir: o\n"

# The YAML a TRL user brings (the keys of TRL's DPO example scripts), and what each means in prefpool.
TRL_YAML = """\
model_name_or_path: runs/sft
data: d
output_dir: o
learning_rate: 5.0e-7
per_device_train_batch_size: 8
gradient_accumulation_steps: 2
num_train_epochs: 3.0
max_steps: -1
bf16: true
lr_scheduler_type: linear
warmup_ratio: 0.1
logging_steps: 10
save_steps: 500
save_total_limit: 2
report_to: none
beta: 0.1
loss_type: sigmoid
max_length: 512
max_grad_norm: 0
gradient_checkpointing: true
seed: 42
precompute_ref_log_probs: true
optim: adamw_torch
adam_beta1: 0.9
"""


def _load(tmp_path, text: str, overrides=()):
    path = tmp_path / "dpo.yaml"
    path.write_text(text)
    return load_config(TrainConfig, path, list(overrides))


def test_a_trl_dpo_config_yaml_trains_as_prefpool_settings(tmp_path):
    cfg = _load(tmp_path, TRL_YAML)
    expected = {
        "model": "runs/sft",
        "lr": 5e-7,
        "batch_size": 8,
        "gradient_accumulation_steps": 2,
        "epochs": 3,
        "max_steps": None,  # TRL's -1: train the epochs
        "mixed_precision": "bf16",
        "warmup_ratio": 0.1,
        "logging_steps": 10,
        "save_steps": 500,
        "save_total_limit": 2,
        "report_to": (),
        "beta": 0.1,
        "loss": "dpo",  # TRL's sigmoid loss is DPO's
        "max_length": 512,
        "max_grad_norm": None,  # TRL's 0: no clipping
        "gradient_checkpointing": True,
        "seed": 42,
        "optimizer": "adamw",
    }
    assert {k: getattr(cfg, k) for k in expected} == expected
    cfg.check()


def test_warmup_ratio_is_a_fraction_of_the_run_unless_warmup_steps_is_set(tmp_path):
    """HF's rule: warmup_steps > 0 wins; else ceil(ratio x total): ceil(0.1 x 25) = 3."""
    cfg = _load(tmp_path, REQUIRED + "model: m\nwarmup_ratio: 0.1\n")
    assert warmup_steps(cfg, 25) == 3 == math.ceil(0.1 * 25)
    assert warmup_steps(_load(tmp_path, REQUIRED + "model: m\nwarmup_ratio: 0.1\nwarmup_steps: 7\n"), 25) == 7
    # TRL >= 1 writes the ratio as a float warmup_steps below 1
    assert _load(tmp_path, REQUIRED + "model: m\nwarmup_steps: 0.2\n").warmup_ratio == 0.2


@pytest.mark.parametrize(
    ("line", "values"),
    [
        ("fp16: true", {"mixed_precision": "fp16"}),
        ("bf16: false", {"mixed_precision": "no"}),
        ("report_to: tensorboard", {"report_to": ("tensorboard",)}),
        ("report_to: [wandb, tensorboard]", {"report_to": ("wandb", "tensorboard")}),
        ("loss_type: [ipo]", {"loss": "ipo"}),
        ("optim: sgd", {"optimizer": "sgd"}),
        ("rpo_alpha: 0.5", {"nll_alpha": 0.5}),
        ("use_cpu: true", {"device": "cpu"}),
        ("resume_from_checkpoint: o/checkpoints/step-4", {"resume_from": "o/checkpoints/step-4"}),
        ("resume_from_checkpoint: true", {"resume": True}),
        ("truncation_mode: keep_start", {"truncation": "completion"}),
        ("model_init_kwargs: {dtype: bfloat16}", {"dtype": "bfloat16"}),
        ("torch_dtype: float16", {"dtype": "float16"}),
        ("save_strategy: 'no'", {"save_steps": 0}),
        ("save_strategy: no", {"save_steps": 0}),  # YAML 1.1: an unquoted no is false
        ("eval_strategy: no", {}),
        ("save_strategy: steps\nsave_steps: 20", {"save_steps": 20}),
        ("max_steps: 100", {"max_steps": 100}),
        ("max_steps: null", {"max_steps": None}),  # prefpool's own spelling still works
        ("report_to: []", {"report_to": ()}),
        ("loss_type: hinge", {"loss": "hinge"}),
        ("loss_type: exo_pair\nlabel_smoothing: 0.01", {"loss": "exo", "label_smoothing": 0.01}),
        ("loss_type: nca_pair", {"loss": "nca"}),
        ("loss_type: robust\nlabel_smoothing: 0.1", {"loss": "robust", "label_smoothing": 0.1}),
        ("loss_type: sppo_hard", {"loss": "sppo"}),
        ("loss_type: apo_zero", {"loss": "apo_zero"}),
        ("loss_type: [apo_down]", {"loss": "apo_down"}),
    ],
)
def test_each_trl_name_maps_to_its_prefpool_key(tmp_path, line, values):
    cfg = _load(tmp_path, f"{REQUIRED}model: m\n{line}\n")
    assert {k: getattr(cfg, k) for k in values} == values


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("lr_scheduler_type: cosine", "lr_scheduler_type: 'cosine' is not implemented; prefpool's schedule is linear"),
        ("num_train_epochs: 1.5", "num_train_epochs: 1.5 is not a whole number; prefpool trains whole epochs"),
        ("bf16: maybe", "bf16: expected true or false, got 'maybe'"),
        ("loss_type: sft", "loss_type: 'sft' has no prefpool loss"),
        ("report_to: all", "report_to: 'all' is not taken; name the trackers"),
        ("report_to: mlflow", "report_to[0]: 'mlflow' is not one of"),
        ("logging_steps: 0.1", "logging_steps: 0.1 is a fraction of the run in TRL"),
        ("save_steps: 0.5", "save_steps: 0.5 is a fraction of the run in TRL"),
        ("max_steps: two", "max_steps: expected a whole number, got 'two'"),
        ("warmup_ratio: 1.5", "warmup_ratio: must be in [0, 1), got 1.5"),
        ("optim: adafactor", "optim: 'adafactor' is not available; prefpool's optimizer key takes adamw or sgd"),
        ("adam_beta2: 0.95", "adam_beta2: 0.95 differs from torch's AdamW default 0.999"),
        ("precompute_ref_log_probs: false", "prefpool holds no reference model"),
        ("sync_ref_model: true", "prefpool holds no reference model"),
        ("use_peft: true", "prefpool's LoRA switch is lora_r > 0"),
        ("disable_dropout: false", "prefpool always turns dropout off"),
        ("eval_strategy: steps", "prefpool train does not evaluate while training; run `prefpool eval`"),
        (
            "per_device_eval_batch_size: 8",
            "per_device_eval_batch_size: not taken here: prefpool train does not evaluate",
        ),
        ("max_prompt_length: 128", "max_prompt_length: not taken here: prefpool never cuts the prompt"),
        ("truncation_mode: keep_end", "truncation_mode: 'keep_end' is not taken; prefpool keeps the prompt"),
        ("model_init_kwargs: {attn_implementation: sdpa}", "model_init_kwargs: only dtype is taken"),
        ("learning_rate: fast", "learning_rate (lr): expected float, got 'fast'"),
        ("learning_rate: 1.0e-5\nlr: 1.0e-6", "learning_rate (lr) and lr both set lr, to 1e-05 and 1e-06; give one"),
        ("bf16: true\nfp16: true", "bf16 (mixed_precision) and fp16 (mixed_precision) both set mixed_precision"),
        ("use_cpu: maybe", "use_cpu: expected true or false"),
    ],
)
def test_each_trl_name_with_a_value_prefpool_cannot_honour_is_exit_2(tmp_path, line, message):
    path = tmp_path / "dpo.yaml"
    path.write_text(f"{REQUIRED}model: m\n{line}\n")
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message in result.output, result.output
    assert "Traceback" not in result.output


def test_all_unknown_keys_in_one_error_each_with_its_nearest_name(tmp_path):
    """The failure of "Why": a TRL YAML stopped at its first unknown key, one key per run."""
    text = REQUIRED + "model: m\nlearnig_rate: 1\nbetaa: 0.2\nper_device_batch_size: 4\nwandb_project: x\n"
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, text, ["lr_scheduler_type=cosine"])
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'dpo.yaml'}: 5 keys cannot be used:")
    assert "unknown key 'learnig_rate' (did you mean 'learning_rate', which sets lr?)" in message
    assert "unknown key 'betaa' (did you mean 'beta'?)" in message
    assert (
        "unknown key 'per_device_batch_size' (did you mean 'per_device_train_batch_size', which sets batch_size?)"
        in message
    )
    assert "unknown key 'wandb_project'" in message
    assert "lr_scheduler_type: 'cosine' is not implemented" in message
    assert "known keys: batch_size, beta," in message


def test_one_unknown_key_keeps_the_one_line_message(tmp_path):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, REQUIRED + "model: m\nmax_step: 3\n")
    assert str(err.value).startswith(f"{tmp_path / 'dpo.yaml'}: unknown key 'max_step' (did you mean 'max_steps'?); ")
    assert "\n" not in str(err.value)


def test_train_help_lists_the_keys_and_the_trl_names():
    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0
    assert "warmup_ratio (default 0.0): Warmup as a fraction of the run's steps" in result.output
    assert "TRL DPOConfig names: mapped to the keys above, or refused with the reason given" in result.output
    assert "learning_rate: the peak learning rate (prefpool: lr)" in result.output
    assert "lr_scheduler_type: linear only" in result.output
    assert "--progress / --no-progress" in result.output


def test_online_train_section_takes_trl_names_but_not_the_ones_online_owns(tmp_path):
    base = "output_dir: o\nreference: r\nprompts: p\nreward_fn: m:f\n"
    path = tmp_path / "online.yaml"
    path.write_text(base + "train:\n  learning_rate: 1.0e-5\n  per_device_train_batch_size: 2\n")
    cfg = load_config(OnlineConfig, path)
    assert (cfg.train.lr, cfg.train.batch_size) == (1e-5, 2)
    path.write_text(base + "train:\n  model_name_or_path: x\n  lerning_rate: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(OnlineConfig, path)
    assert "unknown key 'train.model_name_or_path'" in str(err.value)  # the round's policy is online's
    assert "unknown key 'train.lerning_rate' (did you mean 'learning_rate', which sets lr?)" in str(err.value)
