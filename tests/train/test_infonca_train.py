"""InfoNCA through `prefpool train`: an ``mcpo`` table built ranking by `prefpool score`'s rewards carries
the answers' scores (``preferred_score``, ``pool_scores``), the trainer collates them as the soft targets,
and a table without them is refused before training, naming the ``loss`` key and the column."""

from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner
from trainer_tables import MAX_LENGTH, word_reward

from prefpool.cli import app
from prefpool.pipeline.io.read import read_table
from prefpool.train.config import TrainConfig
from prefpool.train.data import collate
from prefpool.train.metrics import read_metrics
from prefpool.train.objective import batch_loss
from prefpool.train.trainer import Trainer

torch.set_num_threads(1)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _cfg(world, data: str, out, **kw) -> TrainConfig:
    base = dict(
        model=str(world["model"]),
        data=str(world[data]),
        output_dir=str(out),
        loss="infonca",
        max_length=MAX_LENGTH,
        lr=1e-3,
        batch_size=4,
        max_steps=12,
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


@torch.no_grad()
def _table_loss(trainer: Trainer) -> float:
    batch = collate(trainer.kind, trainer.table.examples)
    return batch_loss(trainer.model, batch, trainer.cfg, pad_token_id=trainer.pad, generator=None).loss.mean().item()


def test_a_scored_mcpo_table_carries_the_rewards_in_pool_order(world):
    rows = read_table(world["mcpo_scored"]).to_pylist()
    assert len(rows) == 8
    for row in rows:
        assert row["preferred_score"] == word_reward(row["prompt"], row["preferred"]) == 3.0
        assert row["pool_scores"] == [word_reward(row["prompt"], text) for text in row["pool"]] == [2.0, 1.0, 0.0]
    unscored = read_table(world["mcpo"]).to_pylist()
    assert all(r["preferred_score"] is None and r["pool_scores"] is None for r in unscored)


def test_infonca_at_step0_is_log_of_the_answer_count(world, tmp_path):
    """Policy = reference: every reward is 0, the policy's softmax is uniform over the 1 + 3 answers, so
    the cross-entropy from any targets is ln 4 = 1.3863 per row."""
    trainer = Trainer(_cfg(world, "mcpo_scored", tmp_path / "run", loss_settings={"alpha": 0.5}))
    assert trainer.cfg.settings.alpha == 0.5
    assert _table_loss(trainer) == pytest.approx(math.log(4), abs=1e-4)


def test_infonca_learns_on_a_scored_mcpo_table(world, tmp_path):
    trainer = Trainer(_cfg(world, "mcpo_scored", tmp_path / "run", beta=0.5, loss_settings={"alpha": 0.5}))
    before = _table_loss(trainer)
    summary = trainer.run()
    after = _table_loss(trainer)
    assert summary["step0_max_abs_diff"] < 1e-4
    assert after < before - 0.01, (before, after)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 13))
    assert all(math.isfinite(r["loss"]) and "infonca/accuracy" in r for r in records)


def _write(path, text: str):
    path.write_text(text)
    return path


def test_prefpool_train_runs_infonca_and_refuses_a_table_without_scores(world, tmp_path):
    head = (
        f"model: {world['model']}\nloss: infonca\nmax_length: {MAX_LENGTH}\nlr: 1.0e-3\nbatch_size: 4\n"
        "max_steps: 2\nprogress: false\nloss_settings: {alpha: 0.5}\n"
    )
    runner = CliRunner()
    good = _write(tmp_path / "good.yaml", head + f"data: {world['mcpo_scored']}\noutput_dir: {tmp_path / 'good'}\n")
    result = runner.invoke(app, ["train", str(good)])
    assert result.exit_code == 0, result.output
    assert len(read_metrics(tmp_path / "good" / "metrics.jsonl")) == 2
    assert "- infonca" in (tmp_path / "good" / "README.md").read_text()

    bad = _write(tmp_path / "bad.yaml", head + f"data: {world['mcpo']}\noutput_dir: {tmp_path / 'bad'}\n")
    result = runner.invoke(app, ["train", str(bad)])
    assert result.exit_code == 2, result.output
    assert "loss: 'infonca' reads column 'preferred_score'" in result.output, result.output
    assert "missing in 8 of the 8 rows" in result.output and "--scores" in result.output, result.output
    assert "Traceback" not in result.output
