"""`--model` takes a local folder, a Hub id (from the local HF cache) and a .gguf file, in every command.

The Hub cache is a real ``huggingface_hub`` layout (``prefpool.testing.cache_as_hub_model``,
checked with ``huggingface_hub.scan_cache_dir``) under a temporary ``HF_HUB_CACHE``, offline.
The GGUF is the tiny Llama written by ``prefpool.testing.write_tiny_gguf`` (F32, so its
weights and token ids are the folder's exactly); tests that need it skip without the ``gguf`` package.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from prefpool.cli import app
from prefpool.core.errors import InputError, MissingInputError
from prefpool.pipeline.generate import generate
from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.io.manifest import load_manifest
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.logprobs import logprobs
from prefpool.pipeline.model.cache_key import weights_hash
from prefpool.pipeline.model.info import load_model_info
from prefpool.pipeline.model.source import HUB_PATTERNS, resolve_model
from prefpool.testing import build_tiny_llama, cache_as_hub_model, write_tiny_gguf

torch.set_num_threads(1)
REPO_ID = "prefpool-tests/tiny-llama"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def hub_cache(tiny, tmp_path_factory):
    cache = tmp_path_factory.mktemp("hub")
    snapshot = cache_as_hub_model(tiny, REPO_ID, cache)
    return cache, snapshot


@pytest.fixture
def offline(hub_cache, monkeypatch):
    """huggingface_hub reads HF_HUB_CACHE / HF_HUB_OFFLINE at import: patch its constants for this process."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache[0]))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub_cache


@pytest.fixture(scope="module")
def gguf_file(tiny, tmp_path_factory):
    pytest.importorskip("gguf")
    return write_tiny_gguf(tiny, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf")


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    records = [
        {"prompt": f"What is {i} plus {i}?", "chosen": f"{2 * i}", "rejected": "the red apple"} for i in range(3)
    ]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    ingest(root / "pairs.jsonl", format="pairwise", out=root / "examples", show_progress=False)
    return root / "examples"


def _logps(folder) -> dict:
    return {(r["prompt_id"], r["completion_id"]): r["logp"] for r in read_table(folder, schema="logprobs").to_pylist()}


# -- the three kinds ---------------------------------------------------------------------------------


def test_a_folder_is_a_folder(tiny):
    source = resolve_model(tiny)
    assert (source.kind, source.folder, source.load_kwargs) == ("folder", tiny, {})


def test_hub_id_comes_from_the_local_cache_offline(offline, tiny):
    from huggingface_hub import scan_cache_dir

    cache, snapshot = offline
    assert [r.repo_id for r in scan_cache_dir(cache).repos] == [REPO_ID]  # the client reads our layout as its own
    source = resolve_model(REPO_ID)
    assert (source.kind, source.repo_id, source.folder, source.revision) == ("hub", REPO_ID, snapshot, snapshot.name)
    assert resolve_model(f"{REPO_ID}@{snapshot.name}").folder == snapshot  # a pinned commit
    # A snapshot links to the same bytes as the folder: the same weights hash, so a cache made from one
    # is valid for the other.
    assert weights_hash(REPO_ID) == weights_hash(tiny)
    assert source.describe() == {
        "source": "hub",
        "path": str(snapshot.resolve()),
        "repo_id": REPO_ID,
        "revision": snapshot.name,
    }


def test_hub_id_missing_offline_is_a_clear_error(offline):
    with pytest.raises(MissingInputError, match=r"not in the local Hugging Face cache .* HF_HUB_OFFLINE is set") as e:
        resolve_model("someone/not-cached")
    assert "hf download someone/not-cached" in str(e.value)
    with pytest.raises(MissingInputError, match="not in the local Hugging Face cache"):
        resolve_model(f"{REPO_ID}@no-such-branch")


def test_hub_id_missing_online_is_downloaded(offline, monkeypatch, tmp_path):
    """Not in the cache and not offline: one download of the files prefpool needs (stubbed: no network here)."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls = []

    def fake_snapshot_download(repo_id, *, revision=None, local_files_only=False, allow_patterns=None):
        calls.append((repo_id, revision, local_files_only, allow_patterns))
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        (tmp_path / "abc123").mkdir()
        return str(tmp_path / "abc123")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    source = resolve_model("someone/new-model@v1")
    assert calls == [("someone/new-model", "v1", True, None), ("someone/new-model", "v1", False, list(HUB_PATTERNS))]
    assert (source.kind, source.folder, source.revision) == ("hub", tmp_path / "abc123", "abc123")


def test_gguf_file_loads_with_gguf_file(gguf_file, tiny):
    source = resolve_model(gguf_file)
    assert (source.kind, source.folder, source.load_kwargs) == ("gguf", gguf_file.parent, {"gguf_file": gguf_file.name})
    # the hash of a GGUF is sha256(name NUL bytes), the file holding config, tokenizer and weights
    expected = hashlib.sha256(gguf_file.name.encode() + b"\0" + gguf_file.read_bytes()).hexdigest()
    assert weights_hash(gguf_file) == expected != weights_hash(tiny)
    info = load_model_info(gguf_file)
    folder = load_model_info(tiny)
    messages = [{"role": "user", "content": "What is 3 plus 4? Say it!"}]
    assert info.render(messages) == folder.render(messages)  # the same prompt tokens
    assert (info.eos_token_ids, info.pad_token_id, info.dtype) == (folder.eos_token_ids, folder.pad_token_id, "float32")
    assert info.fingerprint["weights_sha256"] == expected


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda tmp: tmp / "absent.gguf", MissingInputError, "no such .gguf file"),
        (lambda tmp: tmp / "absent-folder", MissingInputError, "no such folder; expected a local model folder"),
        (lambda tmp: "../up/and/away", MissingInputError, "no such folder"),
        (lambda tmp: _write(tmp / "weights.bin"), InputError, "is a file, not a local model folder"),
    ],
)
def test_bad_model_references(tmp_path, make, error, message):
    with pytest.raises(error, match=message):
        resolve_model(make(tmp_path))


def _write(path):
    path.write_text("not a model")
    return path


# -- the stages load every kind the same way ----------------------------------------------------------


def test_logprobs_of_a_gguf_and_a_hub_id_equal_the_folders(tiny, gguf_file, offline, examples, tmp_path):
    """The same weights from three sources give the same reference log-probs (F32 GGUF: exact weights)."""
    base = logprobs(examples, model=tiny, out=tmp_path / "folder", max_length=128, show_progress=False)
    hub = logprobs(examples, model=REPO_ID, out=tmp_path / "hub", max_length=128, show_progress=False)
    from_gguf = logprobs(examples, model=gguf_file, out=tmp_path / "gguf", max_length=128, show_progress=False)
    assert base.rows == hub.rows == from_gguf.rows == 6
    folder_values = _logps(tmp_path / "folder")
    assert _logps(tmp_path / "hub") == folder_values  # identical files: identical numbers
    gguf_values = _logps(tmp_path / "gguf")
    assert gguf_values.keys() == folder_values.keys()
    assert all(abs(gguf_values[k] - v) < 1e-5 for k, v in folder_values.items())
    hub_manifest = load_manifest(tmp_path / "hub")
    assert hub_manifest.provenance["model"]["repo_id"] == REPO_ID
    assert hub_manifest.identity.config["cache"] == load_manifest(tmp_path / "folder").identity.config["cache"]
    gguf_cache = load_manifest(tmp_path / "gguf").identity.config["cache"]
    assert gguf_cache["weights_sha256"] == weights_hash(gguf_file)


def test_generate_from_a_gguf_samples_what_the_folder_samples(tiny, gguf_file, examples, tmp_path):
    args = {"n": 2, "max_new_tokens": 6, "seed": 3, "device": "cpu", "show_progress": False}
    generate(examples, model=tiny, out=tmp_path / "folder", **args)
    generate(examples, model=gguf_file, out=tmp_path / "gguf", **args)

    def texts(folder):
        return [[s["text"] for s in r["samples"]] for r in read_table(folder, schema="candidates").to_pylist()]

    assert texts(tmp_path / "gguf") == texts(tmp_path / "folder")
    assert load_manifest(tmp_path / "gguf").provenance["model"]["source"] == "gguf"


def test_vllm_gets_a_gguf_as_a_float_folder_converted_once(gguf_file, tiny, tmp_path, monkeypatch, capfd):
    """What the vllm engine loads for a .gguf: a save_pretrained folder of the same weights and tokenizer,
    under the cache, named by the file's hash, written once (a second call converts nothing)."""
    monkeypatch.setenv("PREFPOOL_CACHE", str(tmp_path / "cache"))
    source = resolve_model(gguf_file)
    folder = Path(source.for_vllm())
    assert folder == tmp_path / "cache" / "gguf" / f"tiny-f32-{weights_hash(gguf_file)[:16]}"
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary folder left
    assert "converting tiny-f32.gguf to a float32 model folder" in capfd.readouterr().err
    converted, original = (resolve_model(f).causal_lm(torch.float32).state_dict() for f in (folder, tiny))
    assert converted.keys() == original.keys() and all(torch.equal(converted[k], original[k]) for k in original)
    assert resolve_model(folder).tokenizer().chat_template == source.tokenizer().chat_template
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert source.for_vllm() == str(folder) and (folder / "model.safetensors").stat().st_mtime_ns == mtime
    assert "converting" not in capfd.readouterr().err
    other = write_tiny_gguf(build_tiny_llama(tmp_path / "other", seed=1), tmp_path / "tiny-f32.gguf")
    assert Path(resolve_model(other).for_vllm()).parent == folder.parent != Path(resolve_model(other).for_vllm())


# -- every command that takes a model: a bad reference is exit 2 naming the option -------------------


def _commands(tmp, examples, tiny):
    missing = str(tmp / "absent.gguf")
    train_yaml = tmp / "train.yaml"
    train_yaml.write_text(f"model: {missing}\ndata: {tmp / 'no-data'}\noutput_dir: {tmp / 'run'}\n")
    online_yaml = tmp / "online.yaml"
    online_yaml.write_text(
        f"output_dir: {tmp / 'on'}\nreference: {missing}\nprompts: {examples}\nreward_fn: x:y\n"
        "train: {max_steps: 1}\n"
    )
    return {
        "generate": ["generate", str(examples), "-m", missing, "-n", "2", "-o", str(tmp / "g")],
        "logprobs": ["logprobs", str(examples), "-m", missing, "-o", str(tmp / "l")],
        "score": ["score", str(examples), "--reward-model", missing, "-o", str(tmp / "s")],
        "eval --model": ["eval", "-m", missing, "-d", str(examples)],
        "eval --ref-model": [
            "eval",
            "-m",
            str(tiny),
            "-d",
            str(examples),
            "--reward-fn",
            "m:f",
            "--ref-model",
            missing,
        ],
        "train": ["train", str(train_yaml)],
        "online": ["online", str(online_yaml)],
    }


NAMED = {"score": "reward_model", "eval --ref-model": "ref_model", "online": "reference"}


@pytest.mark.parametrize(
    "command", ["generate", "logprobs", "score", "eval --model", "eval --ref-model", "train", "online"]
)
def test_every_model_option_refuses_a_missing_gguf_with_exit_2(command, tmp_path, examples, tiny):
    args = _commands(tmp_path, examples, tiny)[command]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert f"error: {NAMED.get(command, 'model')} {tmp_path / 'absent.gguf'}: no such .gguf file" in result.output
    assert "Traceback" not in result.output


def test_cli_takes_a_hub_id_from_hf_hub_cache(hub_cache, examples, tmp_path):
    """As a user runs it: HF_HUB_CACHE and HF_HUB_OFFLINE in the environment (read by huggingface_hub at
    import, so a fresh process), a Hub id as --model."""
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache[0]), "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "prefpool", "logprobs", str(examples), "-m", REPO_ID, "-o", str(tmp_path / "lp")]
    done = subprocess.run([*args, "--max-length", "64"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert load_manifest(tmp_path / "lp").provenance["model"]["source"] == "hub"


def test_cli_hub_id_not_cached_is_exit_2(offline, examples, tmp_path):
    result = CliRunner().invoke(app, ["logprobs", str(examples), "-m", "nobody/nothing", "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "nobody/nothing is not in the local Hugging Face cache" in result.output
    assert str(offline[0]) in result.output and "Traceback" not in result.output


SMOLLM2_GGUF = (
    __import__("pathlib").Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"))
    / "smollm2"
    / "SmolLM2-135M-Instruct.Q4_1.gguf"
)


@pytest.mark.slow
@pytest.mark.skipif(not SMOLLM2_GGUF.is_file(), reason="the real GGUF: run ../shared/tools/get-smollm2 first")
def test_real_quantized_smollm2_gguf_scores_through_logprobs(examples, tmp_path):
    """A real llama.cpp file (Q4_1, SmolLM2-135M-Instruct): its own tokenizer and chat template, dequantized.
    (The tiny F32 GGUF above checks the values exactly; this one that a real file loads at all.)"""
    pytest.importorskip("gguf")
    summary = logprobs(examples, model=SMOLLM2_GGUF, out=tmp_path / "lp", max_length=64, show_progress=False)
    values = _logps(tmp_path / "lp")
    assert summary.rows == 6 and all(v < 0 for v in values.values())
    assert load_manifest(tmp_path / "lp").identity.config["cache"]["weights_sha256"] == weights_hash(SMOLLM2_GGUF)


@pytest.mark.parametrize(
    ("adapter_config", "error", "message"),
    [
        ({"peft_type": "LORA"}, "config", "no base_model_name_or_path: the adapter does not say which model it is for"),
        ("not json", "config", "no base_model_name_or_path"),
        (
            {"base_model_name_or_path": "/nonexistent/base-model"},
            "missing",
            "its base model (base_model_name_or_path in adapter_config.json) /nonexistent/base-model: no such folder",
        ),
    ],
)
def test_a_broken_adapter_folder_is_one_clear_error(tmp_path, adapter_config, error, message):
    """eval takes a LoRA adapter folder; one that names no base, or a base that is not there, is refused by name."""
    pytest.importorskip("peft")
    from prefpool.pipeline.io.errors import PipelineConfigError
    from prefpool.pipeline.model.folder import check_model

    folder = tmp_path / "run"
    folder.mkdir()
    text = adapter_config if isinstance(adapter_config, str) else json.dumps(adapter_config)
    (folder / "adapter_config.json").write_text(text)
    (folder / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises({"config": PipelineConfigError, "missing": MissingInputError}[error], match=re.escape(message)):
        check_model(folder, adapter=True)
    with pytest.raises(PipelineConfigError, match="a LoRA adapter folder"):  # where a whole model is needed
        check_model(folder)
