"""What prefpool sets when it starts vLLM on the CPU, and an engine that does not start.

A fake ``vllm`` module (``LLM`` records its keyword arguments, then stops the
run or fails as vLLM does) checks the path CLI -> stage -> ``load_llm`` ->
``vllm.LLM`` without vllm; ``tests/pipeline/test_vllm_generate.py`` runs the
real engine from the plain command line on long real prompts.
"""

from __future__ import annotations

import json
import os
import sys
import types

import pytest
from click.testing import CliRunner

from prefpool.cli import app
from prefpool.pipeline.engines.vllm_start import GIB, KV_ENV, MULTIPROC_ENV, cpu_settings
from prefpool.pipeline.ingest import ingest
from prefpool.testing import build_tiny_llama

runner = CliRunner()
# vLLM's own message when gpu_memory_utilization (0.92 of all memory) is more than is free
VLLM_MEMORY = (
    "Available memory on node 0 (19.32/23.54 GiB) on startup is less than desired CPU memory utilization "
    "(0.92, 21.66 GiB)."
)


class _Stop(Exception):
    """Raised by the fake vllm.LLM once it has recorded its arguments."""


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(build_tiny_llama(tmp_path_factory.mktemp("model") / "tiny"))


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "p.jsonl").write_text(
        "".join(json.dumps({"prompt": f"Say {w}.", "chosen": w, "rejected": "no"}) + "\n" for w in ("yes", "river"))
    )
    ingest(root / "p.jsonl", format="pairwise", out=root / "ex")
    return str(root / "ex")


def fake_vllm(monkeypatch, *, cpu: bool = True, fail: BaseException | None = None) -> list[dict]:
    calls = []

    class LLM:
        def __init__(self, **kwargs):
            calls.append(kwargs)
            raise fail or _Stop

    platforms = types.SimpleNamespace(current_platform=types.SimpleNamespace(is_cpu=lambda: cpu))
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, platforms=platforms))
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    return calls


@pytest.fixture
def plain_env(monkeypatch):
    """A shell with no VLLM_* variable and no $PREFPOOL_VLLM_ARGS."""
    for name in (MULTIPROC_ENV, KV_ENV, "PREFPOOL_VLLM_ARGS"):
        monkeypatch.setenv(name, "")  # recorded, so what load_llm sets is undone after the test
        monkeypatch.delenv(name)


def test_cpu_settings_fill_only_what_the_user_left_unset(plain_env, monkeypatch):
    extra, env = cpu_settings({}, per_request_seeds=True, available=20 * GIB)
    assert extra == {"kv_cache_memory_bytes": 2 * GIB, "enable_chunked_prefill": False}  # 20/4, capped at 2
    assert env == {MULTIPROC_ENV: "0"}
    assert cpu_settings({}, per_request_seeds=False, available=6 * GIB)[0] == {"kv_cache_memory_bytes": 6 * GIB // 4}
    assert cpu_settings({}, per_request_seeds=False, available=GIB)[0] == {"kv_cache_memory_bytes": GIB // 2}
    # the user's values win: their memory option, their chunked-prefill choice, their environment
    mine = {"gpu_memory_utilization": 0.3, "enable_chunked_prefill": True}
    assert cpu_settings(mine, per_request_seeds=True, available=20 * GIB)[0] == {}
    assert cpu_settings({"kv_cache_memory_bytes": GIB}, per_request_seeds=False, available=20 * GIB)[0] == {}
    monkeypatch.setenv(KV_ENV, "2")
    monkeypatch.setenv(MULTIPROC_ENV, "1")
    assert cpu_settings({}, per_request_seeds=False, available=20 * GIB) == ({}, {})


@pytest.mark.parametrize("stage", ["generate", "logprobs"])
def test_plain_command_line_on_cpu_gets_the_settings_and_one_line(
    stage, model, examples, tmp_path, plain_env, monkeypatch
):
    calls = fake_vllm(monkeypatch)
    extra = ["-n", "2", "--max-new-tokens", "4"] if stage == "generate" else []
    result = runner.invoke(app, [stage, examples, "-m", model, "-o", str(tmp_path / "o"), "--engine", "vllm", *extra])
    assert isinstance(result.exception, _Stop), result.output
    (kwargs,) = calls
    assert GIB // 2 <= kwargs["kv_cache_memory_bytes"] <= 2 * GIB
    assert "gpu_memory_utilization" not in kwargs
    # per-sample seeds (generate) break under chunked prefill on the CPU; logprobs draws nothing
    assert kwargs.get("enable_chunked_prefill") is (False if stage == "generate" else None)
    assert os.environ[MULTIPROC_ENV] == "0"
    lines = [line for line in result.output.splitlines() if line.startswith("prefpool: vLLM on the CPU")]
    assert len(lines) == 1 and "kv_cache_memory_bytes=" in lines[0] and f"{MULTIPROC_ENV}=0" in lines[0]


def test_no_cpu_settings_on_a_gpu(model, examples, tmp_path, plain_env, monkeypatch):
    calls = fake_vllm(monkeypatch, cpu=False)
    result = runner.invoke(app, ["logprobs", examples, "-m", model, "-o", str(tmp_path / "o"), "--engine", "vllm"])
    assert isinstance(result.exception, _Stop), result.output
    assert "kv_cache_memory_bytes" not in calls[0] and "prefpool: vLLM on the CPU" not in result.output


@pytest.mark.parametrize(
    ("fail", "args", "says"),
    [
        (ValueError(VLLM_MEMORY), '{"gpu_memory_utilization": 0.92}', "kv_cache_memory_bytes"),
        (
            TypeError("EngineArgs.__init__() got an unexpected keyword argument 'max_seqs'"),
            '{"max_seqs": 4}',
            "not a vllm.LLM keyword argument",
        ),
        (RuntimeError("Engine core initialization failed. See root cause above."), "{}", "vLLM's log above"),
    ],
)
def test_an_engine_that_does_not_start_is_one_error_exit_2(fail, args, says, model, examples, tmp_path, monkeypatch):
    fake_vllm(monkeypatch, fail=fail)
    out = tmp_path / "o"
    result = runner.invoke(
        app, ["logprobs", examples, "-m", model, "-o", str(out), "--engine", "vllm", "--engine-args", args]
    )
    assert result.exit_code == 2, result.output
    assert "error: vLLM did not start: " + type(fail).__name__ in result.output and says in result.output
    assert "Traceback" not in result.output
    assert not out.exists()
