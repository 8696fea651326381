"""Every training method of the registry runs end to end: `prefpool train` on a real table made by the
real stages (ingest -> logprobs -> build, tiny model), and learns on it. A method added to
``prefpool.losses`` is picked up here without editing this file."""

from __future__ import annotations

import math

import pytest
import torch
from accelerate.state import AcceleratorState
from click.testing import CliRunner
from trainer_tables import MAX_LENGTH

from prefpool.cli import app
from prefpool.losses import METHODS
from prefpool.train.config import TrainConfig
from prefpool.train.data import collate
from prefpool.train.metrics import read_metrics
from prefpool.train.objective import batch_loss
from prefpool.train.trainer import Trainer

torch.set_num_threads(1)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

PAIRWISE = [name for name, method in METHODS.items() if method.kind == "pairwise"]


@torch.no_grad()
def _table_loss(trainer: Trainer) -> float:
    """The method's mean loss over the whole table (its initial running statistics)."""
    batch = collate(trainer.kind, trainer.table.examples)
    return batch_loss(trainer.model, batch, trainer.cfg, pad_token_id=trainer.pad, generator=None).loss.mean().item()


@pytest.mark.parametrize("loss", PAIRWISE)
def test_every_pairwise_method_learns(world, tmp_path, loss):
    cfg = TrainConfig(
        model=str(world["model"]),
        data=str(world["pairwise"]),
        output_dir=str(tmp_path / "run"),
        loss=loss,
        max_length=MAX_LENGTH,
        lr=1e-3,
        batch_size=4,
        max_steps=12,
        progress=False,
    )
    trainer = Trainer(cfg)
    before = _table_loss(trainer)
    summary = trainer.run()
    after = _table_loss(trainer)
    assert summary["step0_max_abs_diff"] < 1e-4
    assert after < before - 0.01, (loss, before, after)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 13))
    assert all(math.isfinite(r["loss"]) for r in records)


def _write(path, text: str):
    path.write_text(text)
    return path


@pytest.mark.parametrize("loss", PAIRWISE)
def test_prefpool_train_runs_every_pairwise_method(world, tmp_path, loss):
    config = _write(
        tmp_path / "train.yaml",
        f"model: {world['model']}\ndata: {world['pairwise']}\noutput_dir: {tmp_path / 'out'}\n"
        f"loss: {loss}\nmax_length: {MAX_LENGTH}\nlr: 1.0e-3\nbatch_size: 4\nmax_steps: 2\nprogress: false\n",
    )
    result = CliRunner().invoke(app, ["train", str(config)])
    assert result.exit_code == 0, result.output
    assert len(read_metrics(tmp_path / "out" / "metrics.jsonl")) == 2
    assert f"- {loss}" in (tmp_path / "out" / "README.md").read_text()


def test_bco_running_mean_is_kept_across_steps_and_checkpoints(world, tmp_path):
    """The reward mean moves with the batches and is saved in the checkpoint: resuming from step 2
    logs the same step-3 reward mean as the uninterrupted run."""
    base = dict(
        model=str(world["model"]),
        data=str(world["pairwise"]),
        loss="bco",
        max_length=MAX_LENGTH,
        lr=1e-3,
        batch_size=2,
        max_steps=3,
        save_steps=1,
        progress=False,
    )
    Trainer(TrainConfig(**base, output_dir=str(tmp_path / "one"))).run()
    whole = read_metrics(tmp_path / "one" / "metrics.jsonl")
    means = [r["bco/reward_mean"] for r in whole]
    assert len(set(means)) == 3, means
    AcceleratorState._reset_state(reset_partial_state=True)
    resumed = tmp_path / "one" / "checkpoints"
    step2 = sorted(resumed.iterdir())[1]
    Trainer(TrainConfig(**base, output_dir=str(tmp_path / "two"), resume_from=str(step2))).run()
    again = read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert again[-1]["step"] == 3
    assert again[-1]["bco/reward_mean"] == pytest.approx(means[2], abs=1e-6)


def test_method_settings_from_the_config(world, tmp_path):
    """A method's own settings (loss_settings), checked against its dataclass; MPO's
    length_normalize is reachable; a setting the method lacks exits 2 naming the key."""
    runner = CliRunner()
    head = (
        f"model: {world['model']}\nmax_length: {MAX_LENGTH}\nlr: 1.0e-3\nbatch_size: 4\nmax_steps: 2\nprogress: false\n"
    )
    ok = {
        "cpo": f"data: {world['pairwise']}\nloss: cpo\nloss_settings: {{cpo_alpha: 0.5}}\n",
        "mpo": f"data: {world['mpo']}\nloss: mpo\ntau: 0.1\nloss_settings: {{length_normalize: true}}\n",
    }
    for name, body in ok.items():
        config = _write(tmp_path / f"{name}.yaml", head + body + f"output_dir: {tmp_path / name}\n")
        result = runner.invoke(app, ["train", str(config)])
        assert result.exit_code == 0, result.output
        AcceleratorState._reset_state(reset_partial_state=True)
    bad = {
        f"data: {world['pairwise']}\nloss: dpo\ngamma: 0.5\n": "gamma: not a setting of loss 'dpo'; its settings: "
        "beta, label_smoothing",
        f"data: {world['pairwise']}\nloss: cpo\nloss_settings: {{cpo_alph: 1}}\n": "unknown key "
        "'loss_settings.cpo_alph' (did you mean 'cpo_alpha'?)",
        f"data: {world['pairwise']}\nloss: exo\nbeta: 0.2\nloss_settings: {{beta: 0.3}}\n": "beta and "
        "loss_settings.beta: both set beta; give one",
    }
    for i, (body, message) in enumerate(bad.items()):
        config = _write(tmp_path / f"bad{i}.yaml", head + body + f"output_dir: {tmp_path / f'bad{i}'}\n")
        result = runner.invoke(app, ["train", str(config)])
        assert result.exit_code == 2, result.output
        assert message in result.output, result.output


def test_a_setting_given_in_loss_settings_only():
    cfg = TrainConfig(model="m", data="d", output_dir="o", loss="exo", loss_settings={"beta": 0.3})
    assert cfg.beta == 0.3 and cfg.settings.beta == 0.3 and cfg.settings.label_smoothing == 1e-3


def test_simpo_defaults_are_its_own():
    cfg = TrainConfig(model="m", data="d", output_dir="o", loss="simpo")
    assert (cfg.beta, cfg.gamma) == (2.0, 1.0)
    assert TrainConfig(model="m", data="d", output_dir="o", loss="dpo").beta == 0.1


def test_mpo_length_normalize_reaches_the_loss(world, tmp_path):
    """MPO's p from per-token means (length_normalize) is another loss on the same table and weights:
    the same as mpo_loss computes with the batch's token counts."""
    values = {}
    for flag in (False, True):
        cfg = TrainConfig(
            model=str(world["model"]),
            data=str(world["mpo"]),
            output_dir=str(tmp_path / str(flag)),
            loss="mpo",
            max_length=MAX_LENGTH,
            loss_settings={"length_normalize": flag},
            progress=False,
        )
        assert cfg.settings.length_normalize is flag
        values[flag] = _table_loss(Trainer(cfg))
        AcceleratorState._reset_state(reset_partial_state=True)
    assert values[False] != pytest.approx(values[True], abs=1e-6), values
