"""``num_negatives`` (MC-PO's M) in the ``prefpool train`` and ``prefpool online`` configs: bad values
exit 2 naming the key, a value the table's pools cannot give is refused with a message, and an online
round passes the setting on to its TrainConfig."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from trainer_tables import MAX_LENGTH

from prefpool.cli import app
from prefpool.core.config import load_config
from prefpool.train.online_config import OnlineConfig

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _train(tmp_path, **settings):
    path = tmp_path / "train.yaml"
    path.write_text(json.dumps({"data": "d", "output_dir": str(tmp_path / "out"), "model": "m", **settings}))
    return CliRunner().invoke(app, ["train", str(path)])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"num_negatives": 0}, "train.yaml: num_negatives: must be >= 1, got 0"),
        ({"kernel": "listwise", "num_negatives": 2}, "num_negatives: listwise is the NLL over the whole pool"),
    ],
)
def test_bad_num_negatives_exit_2(tmp_path, settings, message):
    result = _train(tmp_path, loss="mcpo", **settings)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("kernel", "m", "message"),
    [
        ("max", 4, "num_negatives: 4 with kernel max takes 4 distinct pool answers per prompt, and a prompt"),
        ("rao_blackwell", 7, "num_negatives: rao_blackwell at 7 negatives averages over (1 + 3)^7 = 16384"),
    ],
)
def test_more_negatives_than_the_pools_give_exit_2(world, tmp_path, kernel, m, message):
    """The table's pools hold 3 answers: max cannot take 4 distinct ones, and rao_blackwell at M = 7
    would enumerate 4^7 ordered draws a prompt, past RAO_BLACKWELL_MAX_DRAWS (4096 = 4^6)."""
    result = _train(
        tmp_path,
        model=str(world["model"]),
        data=str(world["mcpo"]),
        loss="mcpo",
        kernel=kernel,
        num_negatives=m,
        max_length=MAX_LENGTH,
        max_steps=1,
        progress=False,
    )
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output


def test_online_round_takes_num_negatives(tmp_path):
    path = tmp_path / "online.yaml"
    path.write_text("output_dir: o\nreference: r\nprompts: p\nreward_fn: m:f\ntrain:\n  num_negatives: 3\n")
    cfg = load_config(OnlineConfig, path)
    round_cfg = cfg.round_train(model="m", data="d", output_dir="o", max_length=64, reference_is_policy_init=True)
    assert round_cfg.num_negatives == 3 and round_cfg.loss == "mcpo"
