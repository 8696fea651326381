"""`prefpool generate`: a thin wrapper; user errors exit 2 with a message naming the file."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from prefpool.cli import app
from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.io.stage_run import StageRun
from prefpool.testing import build_tiny_llama

torch.set_num_threads(1)
runner = CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(build_tiny_llama(tmp_path_factory.mktemp("model") / "tiny"))


def _examples(tmp_path, prompts):
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    ingest(src, format="prompts", out=tmp_path / "ex")
    return str(tmp_path / "ex")


def test_generate_prints_a_summary(tmp_path, model):
    examples = _examples(tmp_path, ["Hi.", "What is 2 plus 3?"])
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "generate",
            examples,
            "--model",
            model,
            "--n",
            "2",
            "--engine",
            "hf",
            "--out",
            str(out),
            "--max-new-tokens",
            "5",
            "--top-p",
            "0.9",
            "--seed",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("generate: 2 rows in ") and "samples=4" in result.stdout
    assert read_table(out, schema="candidates").num_rows == 2


def test_bad_input_exits_2(tmp_path, model):
    # an examples table with no rows (ingest refuses to write one; another producer might)
    run = StageRun(tmp_path / "ex", stage="ingest", schema="examples", config={}, inputs={}, rows_per_unit=1)
    run.pending([])
    run.finish()
    empty = str(tmp_path / "ex")
    result = runner.invoke(app, ["generate", empty, "-m", model, "-n", "2", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "error:" in result.output and "no rows" in result.output
    assert str(tmp_path / "ex") in result.output and "Traceback" not in result.output
    missing = runner.invoke(app, ["generate", str(tmp_path), "-m", model, "-n", "2", "-o", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "no manifest.json" in missing.output
    bad_temp = runner.invoke(
        app, ["generate", empty, "-m", model, "-n", "2", "-o", str(tmp_path / "o"), "--temperature", "-1"]
    )
    assert bad_temp.exit_code == 2 and "temperature" in bad_temp.output
    no_model = runner.invoke(
        app, ["generate", empty, "-m", str(tmp_path / "nope"), "-n", "2", "-o", str(tmp_path / "o")]
    )
    assert no_model.exit_code == 2 and "no such folder; expected a local model folder" in no_model.output
