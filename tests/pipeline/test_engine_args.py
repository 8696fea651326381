"""Engine options (--engine-args) and the model's context limit, for generate and logprobs.

vllm is not installed here: a fake ``vllm`` module records the keyword
arguments ``vllm.LLM`` is called with, then stops the run. That checks the
whole path: CLI JSON -> stage -> engine factory -> ``load_llm`` -> ``vllm.LLM``.
"""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from click.testing import CliRunner

from prefpool.cli import app
from prefpool.pipeline.engines.engine_args import parse_engine_args
from prefpool.pipeline.engines.registry import ENGINES
from prefpool.pipeline.generate import generate
from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.io.errors import PipelineConfigError
from prefpool.pipeline.io.manifest import load_manifest
from prefpool.pipeline.logprobs import DEFAULT_MAX_LENGTH, TruncationWarning, logprobs, resolve_max_length
from prefpool.testing import build_tiny_llama

torch.set_num_threads(1)
runner = CliRunner()
CONTEXT = 512  # build_tiny_llama's max_position_embeddings


class _Stop(Exception):
    """Raised by the fake vllm.LLM once it has recorded its arguments."""


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(build_tiny_llama(tmp_path_factory.mktemp("model") / "tiny"))


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "p.jsonl").write_text(
        "".join(
            json.dumps({"prompt": f"Say {w}.", "chosen": w, "rejected": "no"}) + "\n" for w in ("yes", "river", "stone")
        )
    )
    ingest(root / "p.jsonl", format="pairwise", out=root / "ex")
    return str(root / "ex")


@pytest.fixture
def fake_vllm(monkeypatch):
    calls = []

    class LLM:
        def __init__(self, **kwargs):
            calls.append(kwargs)
            raise _Stop

    platforms = types.SimpleNamespace(current_platform=types.SimpleNamespace(is_cpu=lambda: False))
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, platforms=platforms))
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    monkeypatch.setenv("PREFPOOL_VLLM_ARGS", json.dumps({"tensor_parallel_size": 1, "gpu_memory_utilization": 0.5}))
    return calls


def test_parse_engine_args():
    assert parse_engine_args('{"tensor_parallel_size": 2}') == {"tensor_parallel_size": 2}
    assert parse_engine_args(None) is None and parse_engine_args("  ") is None
    with pytest.raises(PipelineConfigError, match="not valid JSON"):
        parse_engine_args("{tensor_parallel_size: 2}")
    with pytest.raises(PipelineConfigError, match="must be a JSON object"):
        parse_engine_args("[2]")
    with pytest.raises(PipelineConfigError, match="'dtype' .* would change the output"):
        ENGINES["vllm"].generator_options({"dtype": "bfloat16"})
    with pytest.raises(PipelineConfigError, match="the 'hf' engine takes none"):
        ENGINES["hf"].generator_options({"tensor_parallel_size": 2})
    assert ENGINES["hf"].generator_options({}) == {} and ENGINES["hf"].scorer_options(None) == {}
    with pytest.raises(PipelineConfigError, match="'enable_prefix_caching' .* would change the output"):
        ENGINES["vllm"].scorer_options({"enable_prefix_caching": True})


@pytest.mark.parametrize("stage", ["generate", "logprobs"])
def test_cli_engine_args_reach_vllm_llm_merged_over_the_env(stage, model, examples, tmp_path, fake_vllm):
    extra = ["-n", "2", "--max-new-tokens", "4"] if stage == "generate" else []
    out = tmp_path / "out"
    for tp in (2, 4):
        result = runner.invoke(
            app,
            [
                stage,
                examples,
                "-m",
                model,
                "-o",
                str(out),
                "--engine",
                "vllm",
                *extra,
                "--engine-args",
                json.dumps({"tensor_parallel_size": tp}),
            ],
        )
        assert isinstance(result.exception, _Stop), result.output
    first, second = fake_vllm
    assert (first["tensor_parallel_size"], second["tensor_parallel_size"]) == (2, 4)  # the CLI's wins over the env
    assert first["gpu_memory_utilization"] == 0.5 and first["model"] == model and first["dtype"] == "float32"
    if stage == "logprobs":
        assert first["enable_prefix_caching"] is False
    assert not out.exists()  # the engine stopped before the first shard: nothing written, not even run.json


@pytest.mark.parametrize("stage", ["generate", "logprobs"])
@pytest.mark.parametrize(
    ("engine", "args", "match"),
    [
        ("vllm", "{oops", "not valid JSON"),
        ("vllm", '"tp=2"', "must be a JSON object"),
        ("vllm", '{"dtype": "float16"}', "'dtype'"),
        ("hf", '{"tensor_parallel_size": 2}', "takes none"),
    ],
)
def test_cli_bad_engine_args_exit_2_before_any_work(stage, engine, args, match, model, examples, tmp_path):
    extra = ["-n", "2"] if stage == "generate" else []
    result = runner.invoke(
        app,
        [stage, examples, "-m", model, "-o", str(tmp_path / "o"), "--engine", engine, *extra, "--engine-args", args],
    )
    assert result.exit_code == 2 and "error:" in result.output and match in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_logprobs_max_length_defaults_to_the_models_context(model, examples, tmp_path):
    summary = logprobs(examples, model=model, out=tmp_path / "lp", show_progress=False)
    assert summary.rows == 6
    cache = load_manifest(tmp_path / "lp").identity.config["cache"]
    assert cache["max_length"] == CONTEXT  # the resolved number, not None: the trainer checks against it
    # an explicit max_length equal to the resolved one is the same run, found complete
    assert logprobs(examples, model=model, out=tmp_path / "lp", max_length=CONTEXT).computed == 0


def test_logprobs_max_length_defaults_to_1024_below_a_long_context_and_warns_when_it_cuts_many(tmp_path):
    """A model with an 8,192-token context (SmolLM2's): the default is 1,024, not 8,192. With max_length 24,
    the 3 answers of 20 words are cut: more than 10 %, so a warning names the counts and the flag."""
    long_model = build_tiny_llama(tmp_path / "long", max_position_embeddings=8192)
    assert resolve_max_length(long_model, None, {}) == DEFAULT_MAX_LENGTH == 1024
    assert resolve_max_length(long_model, None, {"max_model_len": 600}) == 600
    rows = [{"prompt": f"Say {w}.", "chosen": " ".join([w] * 20), "rejected": "no"} for w in ("yes", "river", "stone")]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ingest(tmp_path / "p.jsonl", format="pairwise", out=tmp_path / "ex")
    with pytest.warns(TruncationWarning, match=r"max_length=24 cut 3 and dropped 0 .* of 6 completions; pass "):
        logprobs(tmp_path / "ex", model=long_model, out=tmp_path / "lp", max_length=24, show_progress=False)
    assert load_manifest(tmp_path / "lp").identity.config["cache"]["max_length"] == 24


def test_logprobs_max_length_beyond_the_context_is_refused(model, examples, tmp_path):
    with pytest.raises(
        PipelineConfigError,
        match=rf"max_length=2048 is beyond the model's context of {CONTEXT} "
        rf"tokens \(config.max_position_embeddings={CONTEXT}\)",
    ):
        logprobs(examples, model=model, out=tmp_path / "lp", max_length=2048)
    assert not (tmp_path / "lp").exists()
    result = runner.invoke(app, ["logprobs", examples, "-m", model, "-o", str(tmp_path / "lp"), "--max-length", "513"])
    assert result.exit_code == 2 and "max_length=513" in result.output and str(CONTEXT) in result.output
    # vllm's max_model_len lowers the context: the default follows it, a larger value is refused
    assert resolve_max_length(model, None, {"max_model_len": 300}) == 300
    with pytest.raises(PipelineConfigError, match="max_length=400 .* context of 300 .* max_model_len=300"):
        resolve_max_length(model, 400, {"max_model_len": 300})


def test_generate_max_new_tokens_beyond_the_context_is_refused(model, examples, tmp_path):
    with pytest.raises(
        PipelineConfigError,
        match=rf"max_new_tokens={CONTEXT} \(from the argument\) leaves no room "
        rf"for a prompt .*context of {CONTEXT} .*max_position_embeddings={CONTEXT}",
    ):
        generate(examples, model=model, out=tmp_path / "g", n=1, max_new_tokens=CONTEXT)
    assert not (tmp_path / "g").exists()
    result = runner.invoke(
        app, ["generate", examples, "-m", model, "-o", str(tmp_path / "g"), "-n", "1", "--max-new-tokens", "4000"]
    )
    assert result.exit_code == 2 and "max_new_tokens=4000" in result.output and str(CONTEXT) in result.output
