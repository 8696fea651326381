"""No token reaches any file prefpool writes, or any line it prints, whichever way the user gave it.

The routes: the ``HF_TOKEN`` environment variable, a ``huggingface-cli login``
token file under ``HF_HOME``, and for the vllm engine the ``hf_token`` option
(a real ``vllm.LLM`` argument) through ``--engine-args``, through
``$PREFPOOL_VLLM_ARGS`` and through a pipeline YAML. After a full pipeline
(ingest, generate, score, logprobs, build, push --dry-run), train, eval and
plot, every file under the work folder and every line printed is grepped for
each token. The vllm test starts one real engine (generate); its logprobs stage
finds every value in a cache made beforehand under the vllm engine's key (by
the hf engine's scoring), so it records its engine options without starting a
second one. The hf
test runs everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from prefpool.cli import app
from prefpool.pipeline.io.layout import MANIFEST, read_meta

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def token(route: str) -> str:
    """A distinct Hugging Face-shaped token per route, so a leak names its route."""
    return "hf_" + (route.replace("_", "") * 40)[:34]


def _login(tmp_path: Path, monkeypatch=None) -> dict[str, str]:
    """``HF_TOKEN`` and a login token file (``$HF_HOME/token``, where huggingface-cli writes it)."""
    home = tmp_path / "hf-home"
    home.mkdir()
    (home / "token").write_text(token("login"))
    env = {"HF_TOKEN": token("env"), "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    if monkeypatch is not None:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
    return env


def leaks(work: Path, text: str, routes: list[str]) -> list[str]:
    """``route: where`` for every file prefpool wrote (all under ``work``) and the printed text holding a token."""
    found = []
    for route in routes:
        secret = token(route).encode()
        found += [f"{route}: printed" for _ in [0] if secret in text.encode()]
        found += [f"{route}: {p}" for p in work.rglob("*") if p.is_file() and secret in p.read_bytes()]
    return found


def _train_eval_plot(world, work: Path, table: Path, loss: str) -> str:
    printed = ""
    for args in (
        [
            *["train", "/dev/null", f"model={world['model']}", f"data={table}", f"output_dir={work / 'train'}"],
            *[f"loss={loss}", "batch_size=2", "max_steps=2", "progress=false", "report_to=[tensorboard]"],
        ],
        ["eval", "-m", work / "train", "-d", table, "-o", work / "eval", "--device", "cpu"],
        ["plot", work / "train"],
    ):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        printed += result.output
    return printed


def test_hf_engine_pipeline_train_eval_plot_write_no_token(world, tmp_path, monkeypatch):
    _login(tmp_path, monkeypatch)
    work = tmp_path / "work"
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        json.dumps(
            {
                "workdir": str(work),
                "model": str(world["model"]),
                "ingest": {"source": str(world["source"]), "format": "ranked"},
                "generate": {"n": 2, "max_new_tokens": 4},
                "score": {"reward_fn": f"{world['reward_length']}:reward"},
                "logprobs": {"max_length": 64},
                "build": {"kind": "mcpo"},
                "push": {"repo_id": "me/prefs", "dry_run": True},
            }
        )
    )
    result = CliRunner().invoke(app, ["run", str(config)])
    assert result.exit_code == 0, result.output
    printed = result.output + _train_eval_plot(world, work, work / "build", "mcpo")
    assert (work / "push" / "README.md").exists() and (work / "train" / "runs").is_dir()
    assert leaks(work, printed, ["env", "login"]) == []


def _require_vllm() -> None:
    if importlib.util.find_spec("vllm") is not None:
        return
    if os.environ.get("PREFPOOL_REQUIRE_VLLM") == "1":
        pytest.fail("PREFPOOL_REQUIRE_VLLM=1 but vllm is not importable", pytrace=False)
    pytest.skip("vllm is not installed")


def _cli(env: dict, *args: object) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "prefpool", *map(str, args)], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done.stdout + done.stderr


@pytest.mark.slow
def test_vllm_engine_options_token_through_every_route_reaches_no_file(world, tmp_path):
    """generate with ``--engine-args '{"hf_token": ...}'`` (the one engine start); then ``prefpool run``:
    a YAML generate section with its own ``hf_token`` (found complete: the token is no part of the run's
    identity), logprobs with the ``hf_token`` of ``$PREFPOOL_VLLM_ARGS`` (served from a cache),
    score, build, push --dry-run; then train, eval, plot."""
    _require_vllm()
    work = tmp_path / "work"
    base = {"VLLM_LOGGING_LEVEL": "WARNING"}
    vllm_args = {"max_model_len": 512, "enforce_eager": True}
    env = {**os.environ, **base, **_login(tmp_path), "PREFPOOL_VLLM_ARGS": json.dumps(vllm_args)}
    generate = ["-n", 2, "--max-new-tokens", 4, "--engine", "vllm"]
    printed = _cli(
        env,
        *["generate", world["ingest"], "-m", world["model"], *generate, "-o", work / "generate"],
        *["--engine-args", json.dumps({"hf_token": token("cli")})],
    )
    from prefpool.pipeline.engines.hf_engine import HF
    from prefpool.pipeline.engines.registry import ENGINES
    from prefpool.pipeline.engines.vllm_engine import VLLM
    from prefpool.pipeline.logprobs import logprobs

    class VLLMScoredByHF(VLLM):  # the vllm engine's name, options and device; the hf engine's scorer
        scorer = HF.scorer

    # The cache the YAML's vllm logprobs is served from: its key names the engine, so it is made as a vllm
    # run here, by the hf engine's scoring under that name (no second vLLM start).
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(ENGINES, "vllm", VLLMScoredByHF())
        made = logprobs(work / "generate", model=world["model"], out=work / "lp-cache", engine="vllm", max_length=64)
    env["PREFPOOL_VLLM_ARGS"] = json.dumps({**vllm_args, "hf_token": token("vllm_env")})
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        json.dumps(
            {
                "workdir": str(work),
                "model": str(world["model"]),
                "generate": {
                    "input_dir": str(world["ingest"]),
                    "n": 2,
                    "max_new_tokens": 4,
                    "engine": "vllm",
                    "engine_args": {"hf_token": token("yaml")},
                },
                "score": {"reward_fn": f"{world['reward_length']}:reward"},
                "logprobs": {
                    "input_dir": [str(work / "generate")],
                    "engine": "vllm",
                    "max_length": 64,
                    "cache": str(made.out),
                },
                "build": {"kind": "mcpo", "examples": str(world["ingest"])},
                "push": {"repo_id": "me/prefs", "dry_run": True},
            }
        )
    )
    printed += _cli(env, "run", config)
    assert "units_skipped=1" in printed  # generate: found complete, although its token changed
    assert "computed=0" in printed  # logprobs: every value from the cache
    manifest = read_meta(work / "logprobs" / "generate", MANIFEST)
    assert manifest["provenance"]["model"]["engine_args"]["hf_token"] == "<redacted>"
    for args in (
        [
            *["train", "/dev/null", f"model={world['model']}", f"data={work / 'build'}"],
            *[f"output_dir={work / 'train'}", "loss=mcpo", "batch_size=2", "max_steps=2", "progress=false"],
        ],
        ["eval", "-m", work / "train", "-d", work / "build", "-o", work / "eval", "--device", "cpu"],
        ["plot", work / "train"],
    ):
        printed += _cli(env, *args)
    assert leaks(work, printed, ["env", "login", "cli", "vllm_env", "yaml"]) == []
    assert token("yaml") in config.read_text()  # the token did go in, through the user's own file
