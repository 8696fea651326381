"""``report_to``: the trainer's scalars reach accelerate's trackers, equal to metrics.jsonl.

tensorboard is in the ``test`` extra, so it runs in CI; wandb needs a network or an offline
setup and is checked only on the config path (accepted name, unknown names refused).
"""

from __future__ import annotations

import pytest
import torch
from trainer_tables import MAX_LENGTH

from prefpool.core.config import load_config
from prefpool.core.errors import ConfigError
from prefpool.train.config import TrainConfig
from prefpool.train.metrics import read_metrics, tracker_scalars
from prefpool.train.trainer import TRACKER_DIR, Trainer

torch.set_num_threads(1)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _cfg(world, out, **kw) -> TrainConfig:
    base = dict(
        model=str(world["model"]),
        data=str(world["pairwise"]),
        output_dir=str(out),
        loss="dpo",
        max_length=MAX_LENGTH,
        lr=1e-3,
        beta=0.5,
        batch_size=4,
        max_steps=4,
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every event
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_scalars_equal_metrics_jsonl(world, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    Trainer(_cfg(world, out, report_to=("tensorboard",))).run()
    run_dir = out / TRACKER_DIR / "prefpool"
    assert list(run_dir.glob("events.out.tfevents.*")), list(out.rglob("*"))
    scalars = _scalars(run_dir)
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [step for step, _ in scalars["loss"]] == [1, 2, 3, 4]
    # Event files hold float32: equal to metrics.jsonl's float64 after rounding to float32.
    assert [v for _, v in scalars["loss"]] == [float(torch.tensor(r["loss"], dtype=torch.float32)) for r in records]
    assert len({v for _, v in scalars["loss"]}) > 1  # the loss moved: not one value repeated
    # Every numeric metrics.jsonl value is there, at its step.
    for record in records:
        for name, value in tracker_scalars(record).items():
            logged = dict(scalars[name])[record["step"]]
            assert logged == pytest.approx(value, rel=1e-6, abs=1e-6), (name, record["step"])
    assert set(scalars) == set(tracker_scalars(records[0]))  # step 1 also has step0_max_abs_diff


def test_tracker_scalars_drops_non_numeric():
    record = {"step": 3, "loss": 0.5, "epoch": 0, "grad_norm": None, "mcpo/selected_hist": [1, 2], "ok": True}
    assert tracker_scalars(record) == {"loss": 0.5, "epoch": 0}


def test_without_trackers_no_runs_folder(world, tmp_path):
    out = tmp_path / "run"
    Trainer(_cfg(world, out, max_steps=1)).run()
    assert not (out / TRACKER_DIR).exists()


@pytest.mark.parametrize(
    "names,match",
    [
        (("tensorbord",), "unknown tracker 'tensorbord'"),
        (("comet_ml",), "unknown tracker 'comet_ml'"),
        (("tensorboard", "tensorboard"), "named twice"),
    ],
)
def test_unknown_tracker_is_a_config_error(names, match):
    cfg = TrainConfig(model="m", data="d", output_dir="o", report_to=names)
    with pytest.raises(ValueError, match=match):
        cfg.check()


def test_report_to_from_yaml(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("model: m\ndata: d\noutput_dir: o\nreport_to: [tensorboard, wandb]\n")
    cfg = load_config(TrainConfig, path, [])
    assert cfg.report_to == ("tensorboard", "wandb")
    cfg.check()  # wandb is an accepted name, installed or not
    path.write_text("model: m\ndata: d\noutput_dir: o\nreport_to: [neptune]\n")
    with pytest.raises(ValueError, match=r"report_to\[0\]: 'neptune' is not one of 'tensorboard', 'wandb'"):
        load_config(TrainConfig, path, []).check()


def test_wandb_missing_is_an_error_not_silence(world, tmp_path, monkeypatch):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    with pytest.raises(ConfigError, match="report_to: wandb is not installed"):
        Trainer(_cfg(world, tmp_path / "run", report_to=("wandb",)))
