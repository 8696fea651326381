"""An engine is one object in one registry: the CLI's choices and help come from it, the stages ask it and
never compare its name, and an engine registered there (here a tiny fake one) runs through the real stages."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path

import click
import pytest

from prefpool.cli import app
from prefpool.pipeline.engines.engine import Engine
from prefpool.pipeline.engines.generation import Completion
from prefpool.pipeline.engines.logprob_engines import Scores
from prefpool.pipeline.engines.registry import ENGINES, EngineName, engine_named
from prefpool.pipeline.generate import generate
from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.io.errors import PipelineConfigError
from prefpool.pipeline.io.manifest import load_manifest
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.logprobs import logprobs
from prefpool.testing import build_tiny_llama

REPO = Path(__file__).resolve().parents[2]
# Where a stage or an application decides something about an engine: it asks the engine object.
SCANNED = ("pipeline", "train", "prefpool")


@pytest.mark.parametrize(
    ("command", "option"), [("generate", "engine"), ("logprobs", "engine"), ("score", "judge_engine")]
)
def test_cli_engine_choices_and_help_come_from_the_registry(command, option):
    assert typing.get_args(EngineName) == tuple(ENGINES)
    params = {p.name: p for p in app.get_command(click.Context(app), command).params}
    choice = params[option].type
    assert isinstance(choice, click.Choice) and tuple(choice.choices) == tuple(ENGINES)
    for name, engine in ENGINES.items():
        assert f"{name} ({engine.summary})" in params[option].help


def _name_comparisons(text: str) -> list[str]:
    names = "|".join(re.escape(n) for n in ENGINES)
    quoted = rf"[\"']({names})[\"']"
    pattern = re.compile(rf"(==|!=)\s*{quoted}|{quoted}\s*(==|!=)|\b(not\s+)?in\s*[(\[{{]\s*{quoted}")
    return [line.strip() for line in text.splitlines() if pattern.search(line)]


def test_the_scan_finds_a_name_comparison():
    assert _name_comparisons('    device = resolve_device(device) if engine == "hf" else parse_device(device)')
    assert _name_comparisons('if engine in ("vllm", "other"):')
    assert not _name_comparisons('config = {"engine": engine.name}')


def test_no_stage_compares_an_engine_name():
    found = {
        str(path.relative_to(REPO)): hits
        for folder in SCANNED
        for path in sorted((REPO / folder).rglob("*.py"))
        if (hits := _name_comparisons(path.read_text(encoding="utf-8")))
    }
    assert not found, f"ask the engine object (pipeline/engines/registry.py: engine_named) instead: {found}"


def test_an_unknown_engine_is_a_config_error_listing_the_registered_ones():
    with pytest.raises(PipelineConfigError, match=r"engine must be one of \['hf', 'vllm'\], got 'nope'"):
        engine_named("nope")


class EchoGenerator:
    """Each request's completion: its prompt's last tokens, reversed, cut at ``max_new_tokens``."""

    def generate(self, requests, params, *, on_done):
        out = []
        for request in requests:
            tokens = tuple(reversed(request.prompt_tokens[-params.max_new_tokens :]))
            out.append(Completion(tokens, "length"))
            on_done(len(tokens))
        return out


class CountingScorer:
    """log p of a completion: minus its length (one nat per token)."""

    def score(self, sequences, starts, *, per_token):
        counts = [len(seq) - start for seq, start in zip(sequences, starts, strict=True)]
        return Scores([-float(c) for c in counts], counts, [[-1.0] * c for c in counts] if per_token else None)


class Echo(Engine):
    name = "echo"
    summary = "a test engine"

    def generator(self, info, *, batch_size, device, options):
        return EchoGenerator()

    def scorer(self, source, *, dtype, batch_tokens, pad_token_id, device, options):
        return CountingScorer()


@pytest.fixture
def echo(monkeypatch):
    monkeypatch.setitem(ENGINES, "echo", Echo())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("echo")
    source = root / "p.jsonl"
    source.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Hi.", "Name a colour.", "Count to three."]))
    ingest(source, format="prompts", out=root / "ex")
    return build_tiny_llama(root / "tiny", num_layers=1), root / "ex"


def test_a_registered_engine_runs_through_generate_and_logprobs(echo, world, tmp_path):
    model, examples = world
    made = generate(examples, model=model, out=tmp_path / "cand", n=2, engine="echo", max_new_tokens=3, device="cpu")
    assert (made.rows_written, made.samples, made.tokens_generated) == (3, 6, 18)
    manifest = load_manifest(made.out)
    assert manifest.identity.config["engine"] == "echo"
    samples = [s for row in read_table(made.out, schema="candidates").column("samples").to_pylist() for s in row]
    assert {s["finish_reason"] for s in samples} == {"length"} and {s["num_tokens"] for s in samples} == {3}
    with pytest.raises(PipelineConfigError, match="the 'echo' engine takes none"):
        generate(examples, model=model, out=tmp_path / "x", n=1, engine="echo", engine_args={"a": 1})

    scored = logprobs(made.out, model=model, out=tmp_path / "lp", engine="echo", max_length=64, device="cpu")
    assert scored.computed == scored.rows > 0
    table = read_table(scored.out, schema="logprobs")
    assert table.column("logp").to_pylist() == [-float(n) for n in table.column("num_tokens").to_pylist()]
    assert load_manifest(scored.out).identity.config["cache"]["engine"] == "echo"  # its name is its identity
