"""`--device`: auto (CUDA when present, else CPU) in every command that loads a model; a bad one is exit 2."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from prefpool.cli import app
from prefpool.core.errors import ConfigError
from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.model.device import parse_device, resolve_device
from prefpool.testing import build_tiny_llama

NO_CUDA = not torch.cuda.is_available()


def test_auto_is_cuda_when_present_else_cpu():
    assert resolve_device("auto") == resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(" CPU ") == "cpu"
    assert parse_device("cuda:3") == "cuda:3"  # spelling only: vLLM places itself


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:x", "cpu:0", ""])
def test_a_misspelt_device_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="is not a device; expected auto, cpu, cuda, cuda:N or mps"):
        resolve_device(bad)


@pytest.mark.skipif(not NO_CUDA, reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_refused():
    with pytest.raises(ConfigError, match="torch sees no CUDA device on this machine"):
        resolve_device("cuda")


def test_a_cuda_index_past_the_last_device_is_refused():
    if NO_CUDA:
        pytest.skip("needs CUDA")
    with pytest.raises(ConfigError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_every_engine_defaults_to_auto():
    import inspect

    from prefpool.pipeline.generate import generate
    from prefpool.pipeline.logprobs import logprobs
    from prefpool.pipeline.score import score
    from prefpool.train.config import TrainConfig
    from prefpool.train.evaluate import evaluate
    from prefpool.train.online_config import OnlineConfig

    for fn in (generate, logprobs, score, evaluate):
        assert inspect.signature(fn).parameters["device"].default == "auto", fn.__name__
    for cls in (TrainConfig, OnlineConfig):
        assert {f.name: f.default for f in cls.__dataclass_fields__.values()}["device"] == "auto", cls.__name__


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("device")
    model = build_tiny_llama(root / "model")
    (root / "p.jsonl").write_text(json.dumps({"prompt": "hi", "chosen": "a", "rejected": "b"}) + "\n")
    ingest(root / "p.jsonl", format="pairwise", out=root / "examples", show_progress=False)
    (root / "train.yaml").write_text(f"model: {model}\ndata: {root / 'examples'}\noutput_dir: {root / 'run'}\n")
    (root / "online.yaml").write_text(
        f"output_dir: {root / 'on'}\nreference: {model}\nprompts: {root / 'examples'}\nreward_fn: x:y\n"
    )
    return root, model


@pytest.mark.parametrize("command", ["generate", "logprobs", "score", "eval", "train", "online"])
def test_every_command_refuses_a_bad_device_with_exit_2(inputs, command, tmp_path):
    root, model = inputs
    args = {
        "generate": ["generate", str(root / "examples"), "-m", str(model), "-n", "2", "-o", str(tmp_path / "g")],
        "logprobs": ["logprobs", str(root / "examples"), "-m", str(model), "-o", str(tmp_path / "l")],
        "score": ["score", str(root / "examples"), "--reward-model", str(model), "-o", str(tmp_path / "s")],
        "eval": ["eval", "-m", str(model), "-d", str(root / "examples")],
        "train": ["train", str(root / "train.yaml")],
        "online": ["online", str(root / "online.yaml")],
    }[command]
    flag = ["device=gpu"] if command in ("train", "online") else ["--device", "gpu"]
    result = CliRunner().invoke(app, [*args, *flag])
    assert result.exit_code == 2, result.output
    assert "'gpu'" in result.output and "Traceback" not in result.output
    assert not any(tmp_path.iterdir())  # refused before anything was written
