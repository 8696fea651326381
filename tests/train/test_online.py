"""OnMC-PO (`online`): two rounds end to end on a tiny model, resume after a crash, strict config.

The reward is `reward` below (the completion's length in characters), passed
to the score stage by file path: it varies between an untrained tiny model's
samples, so every round has non-empty pools.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from prefpool.core.config import ConfigError, load_config
from prefpool.pipeline.io.manifest import load_manifest
from prefpool.pipeline.model.info import load_model_info
from prefpool.testing import build_tiny_llama
from prefpool.train import trainer as trainer_module
from prefpool.train.metrics import read_metrics
from prefpool.train.online import ROUND_STEPS, online
from prefpool.train.online_config import OnlineConfig
from prefpool.train.online_state import STATE_NAME

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]
STEPS = 3
WORDS = ("apple", "river", "stone", "cloud", "green", "house", "light", "music")


def reward(prompt: list[dict[str, str]], completion: str) -> float:
    return float(len(completion))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("online")
    model = build_tiny_llama(root / "tiny")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say {w}."}) + "\n" for w in WORDS))
    config = {
        "reference": str(model),
        "prompts": str(prompts),
        "rounds": 2,
        "n": 4,
        "temperature": 1.0,
        "max_new_tokens": 6,
        "reward_fn": f"{Path(__file__).resolve()}:reward",
        "max_length": 64,
        "show_progress": False,
        "train": {
            "batch_size": 2,
            "max_steps": STEPS,
            "save_steps": 1,
            "lr": 1e-3,
            "kernel": "sample",
            "progress": False,
        },
    }
    return {"root": root, "model": model, "config": config}


def _cfg(setup: dict, output_dir: Path, **extra) -> OnlineConfig:
    path = setup["root"] / f"{output_dir.name}.yaml"
    path.write_text(yaml.safe_dump({**setup["config"], "output_dir": str(output_dir), **extra}))
    return load_config(OnlineConfig, path)


@pytest.fixture(scope="module")
def uninterrupted(setup) -> tuple[Path, dict, list[str]]:
    out = setup["root"] / "full"
    logs: list[str] = []
    return out, online(_cfg(setup, out), log=logs.append), logs


def _losses(run: Path, r: int) -> list[tuple[int, float]]:
    return [(m["step"], m["loss"]) for m in read_metrics(run / f"round-{r}" / "train" / "metrics.jsonl")]


def test_two_rounds_each_pool_comes_from_the_current_policy(uninterrupted, setup):
    out, summary, logs = uninterrupted
    for r in (0, 1):
        for step in ROUND_STEPS:
            assert (out / f"round-{r}" / step).is_dir()
        assert (out / f"round-{r}" / "train" / "model.safetensors").exists()
        assert [s for s, _ in _losses(out, r)] == list(range(1, STEPS + 1))
        assert all(rec["status"] == "ran" for rec in summary["rounds"][r]["steps"].values())
    policies = [setup["model"], out / "round-0" / "train"]
    for r, policy in enumerate(policies):
        manifest = load_manifest(out / f"round-{r}" / "generate")
        made_by = manifest.identity.config["model"]["weights_sha256"]
        assert made_by == load_model_info(policy).fingerprint["weights_sha256"]
        assert manifest.provenance["model"]["path"] == str(Path(policy).resolve())
    # Round 1 samples from a trained model, so its pool differs from round 0's.
    assert policies[0] != policies[1]
    assert load_model_info(policies[0]).fingerprint != load_model_info(policies[1]).fingerprint
    # The reference log-probs of both rounds come from the frozen reference.
    caches = [load_manifest(out / f"round-{r}" / "logprobs").identity.config["cache"] for r in (0, 1)]
    assert caches[0]["weights_sha256"] == caches[1]["weights_sha256"]
    # Step-0 check: round 0 (policy == reference) runs it; round 1 cannot.
    train = [summary["rounds"][r]["steps"]["train"] for r in (0, 1)]
    assert train[0]["step0_max_abs_diff"] is not None and train[0]["step0_max_abs_diff"] < 1e-3
    assert train[1]["step0_max_abs_diff"] is None
    assert any("step-0 check skipped" in line for line in logs)
    assert summary["final_model"] == str(out / "round-1" / "train")


class Crash(RuntimeError):
    pass


def _forbid_stages(monkeypatch) -> None:
    """Any stage call fails: a resumed run must skip the completed ones."""
    from prefpool.pipeline import build, generate, ingest, logprobs, score

    for module, name in (
        (generate, "generate"),
        (score, "score"),
        (logprobs, "logprobs"),
        (build, "build"),
        (ingest, "ingest"),
    ):
        monkeypatch.setattr(module, name, lambda *a, _n=name, **k: pytest.fail(f"{_n} recomputed"))


def test_resume_after_crash_in_round_1_training_gives_the_same_losses(uninterrupted, setup, monkeypatch):
    full, _, _ = uninterrupted
    out = setup["root"] / "crashed"
    original = trainer_module.Trainer.save_checkpoint

    def save_then_crash(self):
        folder = original(self)
        if "round-1" in str(self.out) and self.state.step == 2:
            raise Crash("killed after the step-2 checkpoint")
        return folder

    with monkeypatch.context() as m:
        m.setattr(trainer_module.Trainer, "save_checkpoint", save_then_crash)
        with pytest.raises(Crash):
            online(_cfg(setup, out), log=None)
    state = json.loads((out / STATE_NAME).read_text())["steps"]
    assert "round-1/build" in state and "round-1/train" not in state

    with monkeypatch.context() as m:
        _forbid_stages(m)
        logs: list[str] = []
        summary = online(_cfg(setup, out), log=logs.append)
    statuses = {(r["round"], s): rec["status"] for r in summary["rounds"] for s, rec in r["steps"].items()}
    assert statuses.pop((1, "train")) == "ran"
    assert set(statuses.values()) == {"done earlier"}
    resumed = summary["rounds"][1]["steps"]["train"]
    assert resumed["resumed_from"].endswith("step-2") and resumed["steps"] == STEPS
    for r in (0, 1):
        assert _losses(out, r) == _losses(full, r)


def test_stage_finished_but_not_recorded_resumes_its_units(uninterrupted, setup, monkeypatch):
    """A kill between generate's last write and the state update: the rerun calls generate again,
    which finds every unit done (units_skipped, no new tokens). Prompts here: an ingest output folder."""
    from prefpool.train.online_state import OnlineState

    full, _, _ = uninterrupted
    out = setup["root"] / "unrecorded"
    original = OnlineState.mark

    def mark_then_crash(self, round_, step, record):
        if (round_, step) == (0, "generate"):
            raise Crash("killed before the state update")
        original(self, round_, step, record)

    with monkeypatch.context() as m:
        m.setattr(OnlineState, "mark", mark_then_crash)
        with pytest.raises(Crash):
            online(_cfg(setup, out, rounds=1, prompts=str(full / "prompts")), log=None)
    summary = online(_cfg(setup, out, rounds=1, prompts=str(full / "prompts")), log=None)
    generate = summary["rounds"][0]["steps"]["generate"]
    assert generate["status"] == "ran" and generate["units_written"] == 0 and generate["units_skipped"] >= 1
    assert generate["tokens_generated"] == 0
    assert not (out / "prompts").exists()
    assert _losses(out, 0) == _losses(full, 0)


def test_rerun_of_a_finished_run_does_nothing(uninterrupted, setup, monkeypatch):
    out, _, _ = uninterrupted
    _forbid_stages(monkeypatch)
    monkeypatch.setattr(trainer_module, "Trainer", lambda *a, **k: pytest.fail("retrained"))
    summary = online(_cfg(setup, out), log=None)
    assert {rec["status"] for r in summary["rounds"] for rec in r["steps"].values()} == {"done earlier"}


def test_rerun_with_other_settings_is_refused(uninterrupted, setup):
    out, _, _ = uninterrupted
    with pytest.raises(ConfigError, match=r"n \(4 -> 5\)"):
        online(_cfg(setup, out, n=5), log=None)


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lrr=1", "train.lrr"),
        ("roundz=3", "roundz"),
        ("train.model=x", "train.model"),
        ("engine=vlm", "engine: 'vlm' is not one of 'hf', 'vllm'"),
        ("logprobs_engine=vlm", "logprobs_engine: 'vlm' is not one of 'hf', 'vllm'"),
    ],
)
def test_config_typo_exits_2_through_the_cli(setup, override, key):
    from prefpool.cli import app

    cfg = _cfg(setup, setup["root"] / "typo")
    path = setup["root"] / "typo.yaml"
    result = CliRunner().invoke(app, ["online", str(path), override])
    assert result.exit_code == 2, result.output
    assert key in result.output
    assert not Path(cfg.output_dir).exists()


def test_check_refuses_bad_settings(setup):
    with pytest.raises(ValueError, match="exactly one of reward_fn"):
        _cfg(setup, setup["root"] / "x", reward_model="m").check()
    with pytest.raises(ValueError, match="n: must be >= 2"):
        _cfg(setup, setup["root"] / "x", n=1).check()
    with pytest.raises(ValueError, match="kernel"):
        _cfg(setup, setup["root"] / "x", train={"kernel": "nope"}).check()


def test_example_config_loads():
    path = REPO / "configs" / "online-tiny.yaml"
    first = path.read_text().splitlines()[0]
    assert first == "# prefpool online configs/online-tiny.yaml"
    cfg = load_config(OnlineConfig, path)
    cfg.check()
    assert cfg.reference == "runs/tiny-llama" and cfg.train.save_steps > 0
    from prefpool.pipeline.engines.scorers import FunctionScorer

    # The score stage's own loader resolves it (a path/file.py:function spec, relative to the repo root).
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        assert callable(FunctionScorer(cfg.reward_fn).fn)


def _lrs(run: Path, r: int) -> list[float]:
    return [m["lr"] for m in read_metrics(run / f"round-{r}" / "train" / "metrics.jsonl")]


def test_per_round_schedule_restarts_its_linear_decay_every_round(uninterrupted):
    """lr 1e-3, 3 steps a round, no warmup: each round decays 3/3, 2/3, 1/3 of lr."""
    out, _, _ = uninterrupted
    for r in (0, 1):
        assert _lrs(out, r) == pytest.approx([1e-3, 2e-3 / 3, 1e-3 / 3], rel=1e-12)


def test_across_rounds_schedule_is_one_linear_decay_over_every_round(setup):
    """One schedule of 2 x 3 steps: round 0 takes 6/6, 5/6, 4/6 of lr, round 1 3/6, 2/6, 1/6."""
    out = setup["root"] / "across"
    online(_cfg(setup, out, lr_schedule="across_rounds"), log=None)
    assert _lrs(out, 0) + _lrs(out, 1) == pytest.approx([1e-3 * k / 6 for k in (6, 5, 4, 3, 2, 1)], rel=1e-12)
    # The round count sets every round's learning rates: a rerun with more rounds is another run.
    with pytest.raises(ConfigError, match=r"rounds \(2 -> 3\)"):
        online(_cfg(setup, out, lr_schedule="across_rounds", rounds=3), log=None)


def test_across_rounds_round_configs_and_refusals(setup):
    cfg = _cfg(setup, setup["root"] / "x", lr_schedule="across_rounds", rounds=3)
    parts = dict(model="m", data="d", output_dir="o", max_length=64, reference_is_policy_init=False)
    assert [
        (c.lr_schedule_steps, c.lr_schedule_start) for c in (cfg.round_train(**parts, round_=r) for r in (0, 1, 2))
    ] == [
        (9, 0),
        (9, 3),
        (9, 6),
    ]
    per_round = _cfg(setup, setup["root"] / "x").round_train(**parts, round_=1)
    # null: the TrainConfig of a run recorded before these keys existed has the same identity
    assert (per_round.lr_schedule_steps, per_round.lr_schedule_start) == (None, None)
    with pytest.raises(ConfigError, match="across_rounds needs train.max_steps"):
        _cfg(setup, setup["root"] / "x", lr_schedule="across_rounds", train={"max_steps": None}).check()
    with pytest.raises(ConfigError, match="train.lr_schedule_start"):  # online owns it
        _cfg(setup, setup["root"] / "x", train={"lr_schedule_start": 2})
