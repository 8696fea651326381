"""Checkpoints a user is handed run no code; damaged ones are detected; a resume keeps the run's settings;
a full disk while checkpointing is said to be one.

The payload is a pickle whose ``__reduce__`` creates a marker file: planted in a file it is read from,
by any unpickler that runs code, the marker appears (``test_the_payload_runs_when_unpickled`` shows it).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from click.testing import CliRunner
from trainer_tables import MAX_LENGTH

from prefpool.cli import app
from prefpool.core.errors import ConfigError, OutputError, UserError
from prefpool.train.checkpoint import CheckpointError
from prefpool.train.config import TrainConfig
from prefpool.train.metrics import read_metrics
from prefpool.train.trainer import Trainer

torch.set_num_threads(1)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


class Payload:
    """Unpickling this creates ``marker``: the code a planted pickle would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path: Path, marker: Path) -> None:
    torch.save({"state": Payload(marker)}, path)


def _reset() -> None:
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _cfg(world, out: Path, **kw) -> TrainConfig:
    base = dict(
        model=str(world["model"]),
        data=str(world["pairwise"]),
        output_dir=str(out),
        loss="dpo",
        max_length=MAX_LENGTH,
        lr=1e-3,
        beta=0.5,
        batch_size=2,
        max_steps=4,
        save_steps=1,
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def unfinished(world, tmp_path_factory):
    """A run of 4 steps stopped after step 2: checkpoints step-1 and step-2 (a folder to copy)."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    Trainer(_cfg(world, out)).run(stop_after=2)
    _reset()
    return out


@pytest.fixture(scope="module")
def straight(world, tmp_path_factory):
    """The same run, uninterrupted: the losses every resumed run must reproduce."""
    out = tmp_path_factory.mktemp("ckpt") / "straight"
    Trainer(_cfg(world, out)).run()
    _reset()
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl")]


def _cli(cfg: TrainConfig) -> list[str]:
    """``prefpool train`` with ``cfg``'s settings as overrides."""
    items = dataclasses.asdict(cfg).items()
    return ["train", "/dev/null", *(f"{k}={json.dumps(v)}" for k, v in items if v is not None and v != ())]


def _copy(src: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(src, out)
    return out


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_the_payload_runs_when_unpickled(tmp_path):
    path, marker = tmp_path / "x.bin", tmp_path / "ran"
    _plant(path, marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_checkpoint_holds_json_safetensors_and_weights_only_pickles(unfinished):
    folder = unfinished / "checkpoints" / "step-2"
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "kernel_generator_0.safetensors",
        "model.safetensors",
        "optimizer.bin",
        "random_states_0.pkl",
        "scheduler.bin",
        "trainer_state.json",
    ]
    state = json.loads((folder / "trainer_state.json").read_text())
    assert (state["step"], state["epoch"], state["micro_batch"]) == (2, 0, 2)
    assert set(state["files"]) == set(names) - {"trainer_state.json"}
    assert state["files"]["optimizer.bin"]["size"] == (folder / "optimizer.bin").stat().st_size
    from accelerate.utils.other import load

    for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
        load(folder / name)  # accelerate's weights-only reader: no object pickle in it


CHECKPOINT_FILES = [
    "model.safetensors",
    "optimizer.bin",
    "scheduler.bin",
    "random_states_0.pkl",
    "kernel_generator_0.safetensors",
    "trainer_state.json",
]


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_payload_in_a_checkpoint_file_never_runs_and_the_run_falls_back(world, unfinished, straight, tmp_path, name):
    """The planted file no longer matches the record: step-2 is skipped as damaged, the run continues
    from step-1 and ends with the uninterrupted run's losses. A file outside the record is never read."""
    out, marker = _copy(unfinished, tmp_path), tmp_path / "ran"
    _plant(out / "checkpoints" / "step-2" / name, marker)
    trainer = Trainer(_cfg(world, out, resume=True))
    assert trainer.resumed_from.name == "step-1"
    trainer.run()
    assert not marker.exists()
    assert [r["loss"] for r in read_metrics(out / "metrics.jsonl")] == pytest.approx(straight, abs=1e-6)


def test_a_pickle_beside_the_recorded_files_is_refused_unread(world, unfinished, tmp_path):
    """``custom_checkpoint_0.pkl`` is where accelerate keeps registered objects, unpickled with
    ``weights_only=False``; prefpool registers none, and refuses a checkpoint that carries one."""
    out, marker = _copy(unfinished, tmp_path), tmp_path / "ran"
    _plant(out / "checkpoints" / "step-2" / "custom_checkpoint_0.pkl", marker)
    with pytest.raises(CheckpointError, match="custom_checkpoint_0.pkl: holds a pickle that cannot be loaded safely"):
        Trainer(_cfg(world, out, resume=True))
    assert not marker.exists()


@pytest.mark.parametrize("name", CHECKPOINT_FILES[:5])
def test_a_payload_with_a_matching_record_is_refused_with_a_message(world, unfinished, tmp_path, name):
    """A checkpoint made to pass the record check (the record rewritten for the payload): the
    weights-only readers refuse it, with a message; nothing ran and nothing was written."""
    out, marker = _copy(unfinished, tmp_path), tmp_path / "ran"
    folder = out / "checkpoints" / "step-2"
    _plant(folder / name, marker)
    state = json.loads((folder / "trainer_state.json").read_text())
    data = (folder / name).read_bytes()
    state["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "trainer_state.json").write_text(json.dumps(state))
    before = _digest(out)
    with pytest.raises(CheckpointError) as caught:
        Trainer(_cfg(world, out, resume=True))
    assert str(folder / name) in str(caught.value) or str(folder) in str(caught.value)
    assert not marker.exists()
    assert _digest(out) == before


def test_resume_from_a_crafted_optimizer_pickle_exits_2_without_a_traceback(world, unfinished, tmp_path):
    out, marker = _copy(unfinished, tmp_path), tmp_path / "ran"
    folder = out / "checkpoints" / "step-2"
    _plant(folder / "optimizer.bin", marker)
    state = json.loads((folder / "trainer_state.json").read_text())
    data = (folder / "optimizer.bin").read_bytes()
    state["files"]["optimizer.bin"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "trainer_state.json").write_text(json.dumps(state))
    result = CliRunner().invoke(app, _cli(_cfg(world, tmp_path / "b", resume_from=str(folder))))
    assert result.exit_code == 2, result.output
    assert "holds a pickle that cannot be loaded safely" in result.output and "Traceback" not in result.output
    assert not marker.exists() and not (tmp_path / "b").exists()


def test_a_payload_in_every_file_of_a_finished_output_folder_never_runs(world, tmp_path):
    """Each file of a finished run (model, tokenizer, card, metrics, checkpoint) in turn holds the
    payload; the commands that read the folder (the same train again, eval, plot) run none of it."""
    done = tmp_path / "done"
    Trainer(_cfg(world, done, max_steps=2, save_steps=2)).run()
    _reset()
    files = sorted(p.relative_to(done) for p in done.rglob("*") if p.is_file())
    assert "model.safetensors" in {str(f) for f in files} and len(files) >= 10
    args = ["train", "/dev/null", f"model={world['model']}", f"data={world['pairwise']}", "loss=dpo", "beta=0.5"]
    args += ["lr=1e-3", "batch_size=2", "max_steps=2", "save_steps=2", f"max_length={MAX_LENGTH}", "progress=false"]
    for rel in files:
        out, marker = tmp_path / "copy", tmp_path / "ran"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(done, out)
        _plant(out / rel, marker)
        for command in (
            [*args, f"output_dir={out}"],
            [*args, f"output_dir={out}", "resume=true"],
            ["eval", "-m", str(out), "-d", str(world["pairwise"]), "--device", "cpu"],
            ["plot", str(out), "-o", str(tmp_path / "plot" / str(rel).replace("/", "_"))],
        ):
            result = CliRunner().invoke(app, command)
            _reset()
            assert not marker.exists(), (rel, command[0])
            if command[0] != "eval":  # eval on a damaged model folder may still end in a loader's traceback
                assert result.exit_code in (0, 2), (rel, command, result.output, result.exception)
                assert "Traceback" not in result.output, (rel, command, result.output)


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.bin"])
def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(world, unfinished, straight, tmp_path, name):
    out = _copy(unfinished, tmp_path)
    path = out / "checkpoints" / "step-2" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = CliRunner().invoke(app, _cli(_cfg(world, out, resume=True)))
    assert result.exit_code == 0, result.output
    assert f"a damaged checkpoint is skipped: {path.parent}: {name} holds" in result.output
    assert "continuing from the previous intact checkpoint" in result.output
    assert [r["loss"] for r in read_metrics(out / "metrics.jsonl")] == pytest.approx(straight, abs=1e-6)


def test_no_intact_checkpoint_is_refused_naming_the_damage(world, unfinished, tmp_path):
    out = _copy(unfinished, tmp_path)
    for step in (1, 2):
        path = out / "checkpoints" / f"step-{step}" / "optimizer.bin"
        path.write_bytes(path.read_bytes()[:100])
    before = _digest(out)
    with pytest.raises(CheckpointError, match=r"no intact checkpoint .* \(2 damaged\); overwrite: true"):
        Trainer(_cfg(world, out, resume=True))
    assert _digest(out) == before


def test_resume_from_a_truncated_checkpoint_is_refused(world, unfinished, tmp_path):
    out = _copy(unfinished, tmp_path)
    folder = out / "checkpoints" / "step-2"
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"resume_from: .*step-2: model.safetensors holds 1000 bytes"):
        Trainer(_cfg(world, tmp_path / "other", resume_from=str(folder)))
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"loss": "ipo"}, "loss: 'dpo' -> 'ipo'"),
        ({"beta": 0.1}, "beta: 0.5 -> 0.1"),
        ({"lr": 1e-4}, "lr: 0.001 -> 0.0001"),
        ({"max_grad_norm": None}, "max_grad_norm: 1.0 -> None"),
    ],
)
def test_resume_refuses_changed_method_settings(world, unfinished, tmp_path, change, named):
    """`resume: true` with another loss or beta would continue one method's run with another's, and
    the model card would name a method the run was not trained with."""
    out = _copy(unfinished, tmp_path)
    before = _digest(out)
    with pytest.raises(ConfigError, match="trained with other settings") as caught:
        Trainer(_cfg(world, out, resume=True, **change))
    assert named in str(caught.value)
    assert _digest(out) == before
    with pytest.raises(ConfigError, match="trained with other settings"):
        Trainer(_cfg(world, tmp_path / "b", resume_from=str(out / "checkpoints" / "step-2"), **change))


def test_resume_may_change_how_often_it_logs_and_saves(world, unfinished, tmp_path):
    out = _copy(unfinished, tmp_path)
    summary = Trainer(_cfg(world, out, resume=True, logging_steps=2, save_steps=2, save_total_limit=1)).run()
    assert summary["steps"] == 4
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-4"]
    assert "# DPO policy" in (out / "README.md").read_text()


def _checkpoint_writes_fail(monkeypatch, failure: Exception, *, at_step: int) -> None:
    """torch's writer (under accelerate's save_state) fails from checkpoint ``at_step`` on."""
    import accelerate.checkpointing as checkpointing

    real = checkpointing.save

    def save(obj, path, *args, **kwargs):
        if Path(path).parent.name == f"step-{at_step}" and Path(path).suffix == ".bin":
            Path(path).write_bytes(b"PK half")  # what a full disk leaves
            raise failure
        return real(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpointing, "save", save)


@pytest.mark.parametrize("errno_error", [True, False], ids=["OSError-ENOSPC", "torch-RuntimeError"])
def test_a_full_disk_while_checkpointing_is_reported_and_the_run_resumes(
    world, straight, tmp_path, monkeypatch, errno_error
):
    out = tmp_path / "run"
    if errno_error:
        failure = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "optimizer.bin")
    else:  # what torch's zip writer raises on a full disk: no errno
        failure = RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 2048 vs 1987")
        monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 4096, 4096))
    _checkpoint_writes_fail(monkeypatch, failure, at_step=3)
    result = CliRunner().invoke(app, _cli(_cfg(world, out)))
    monkeypatch.undo()
    _reset()
    assert result.exit_code == 2, (result.output, result.exception)
    assert "no space left on the device" in result.output and "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    summary = Trainer(_cfg(world, out, resume=True)).run()  # space freed: the run continues from step-2
    assert summary["resumed_from"].endswith("step-2") and summary["steps"] == 4
    assert [r["loss"] for r in read_metrics(out / "metrics.jsonl")] == pytest.approx(straight, abs=1e-6)


def test_another_failure_while_checkpointing_keeps_its_traceback(world, tmp_path, monkeypatch):
    """Not a full disk (free space to spare): a bug, not the user's to fix."""
    _checkpoint_writes_fail(monkeypatch, RuntimeError("something else"), at_step=1)
    with pytest.raises(RuntimeError, match="something else") as caught:
        Trainer(_cfg(world, tmp_path / "run")).run()
    assert not isinstance(caught.value, UserError) and not isinstance(caught.value, OutputError)


def test_a_sharded_checkpoints_metadata_may_name_only_dcp_classes(tmp_path):
    """FSDP's sharded checkpoints hold torch.distributed.checkpoint's ``.metadata``, which torch reads
    with plain ``pickle.load``: the one torch writes passes, a payload in its place is refused unrun."""
    import pickle

    import torch.distributed.checkpoint as dcp

    from prefpool.train.checkpoint import check_pickles

    folder = tmp_path / "step-1" / "pytorch_model_fsdp_0"
    state = {"w": torch.ones(2, 3, dtype=torch.bfloat16), "step": 3, "name": "x"}
    dcp.save(state, checkpoint_id=str(folder), no_dist=True)
    check_pickles(folder.parent)
    marker = tmp_path / "ran"
    (folder / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(CheckpointError, match=r"\.metadata: holds a pickle that cannot be loaded safely"):
        check_pickles(folder.parent)
    assert not marker.exists()


def test_resume_may_run_elsewhere(world, unfinished, tmp_path):
    """``device`` says where the run goes on, not what it computes (online leaves it out of its identity)."""
    out = _copy(unfinished, tmp_path)
    assert Trainer(_cfg(world, out, resume=True, device="cpu")).resumed_from.name == "step-2"


def test_a_full_disk_while_saving_the_model_is_reported_and_the_run_finishes_on_resume(world, tmp_path, monkeypatch):
    """safetensors reports a full disk as its own error, with no errno; the last checkpoint is kept, so
    the rerun only writes the model."""
    import transformers.modeling_utils as modeling_utils
    from safetensors import SafetensorError

    def refuse(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(modeling_utils, "safe_save_file", refuse)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 4096, 4096))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, _cli(_cfg(world, out, max_steps=2, save_steps=2)))
    monkeypatch.undo()
    _reset()
    assert result.exit_code == 2, (result.output, result.exception)
    assert f"cannot write {out}: no space left on the device" in result.output and "Traceback" not in result.output
    assert not (out / "train_summary.json").exists()
    summary = Trainer(_cfg(world, out, max_steps=2, save_steps=2, resume=True)).run()
    assert summary["resumed_from"].endswith("step-2") and (out / "model.safetensors").is_file()


@pytest.mark.parametrize("name", ["train_run.json", "metrics.jsonl"])
def test_a_payload_in_an_unfinished_run_folder_never_runs(world, unfinished, tmp_path, name):
    out, marker = _copy(unfinished, tmp_path), tmp_path / "ran"
    _plant(out / name, marker)
    result = CliRunner().invoke(app, _cli(_cfg(world, out, resume=True)))
    assert not marker.exists()
    assert result.exit_code in (0, 2) and "Traceback" not in result.output, (result.output, result.exception)
