"""Bounded input: a JSON line nested 100,000 arrays deep and a 21-line YAML alias bomb are refused with a
clear error (exit 2, the file and line named, no traceback), fast and in little memory."""

from __future__ import annotations

import json
import resource
import time

import pytest
from click.testing import CliRunner

from prefpool.cli import app
from prefpool.core.bounded import MAX_DEPTH, BoundsError, load_yaml, loads_json


def _alias_bomb(key_path: str = "engine_args") -> str:
    """21 lines: each anchor lists the one before nine times: 9**19 strings once expanded."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 20):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    lines.append(f"{key_path}: *a19")
    return "\n".join(lines) + "\n"


def test_a_json_line_nested_100000_deep_is_refused_naming_file_and_line(tmp_path):
    src = tmp_path / "deep.jsonl"
    good = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
    src.write_text(good + "\n" + '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    result = CliRunner().invoke(app, ["ingest", str(src), "-f", "pairwise", "-o", str(tmp_path / "out"), "--strict"])
    assert result.exit_code == 2, result.output
    assert "deep.jsonl, row 1 (0-based), line 2" in result.output
    assert f"nested more than {MAX_DEPTH} levels" in result.output
    assert "Traceback" not in result.output and "RecursionError" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_json_file_nested_too_deep_is_refused(tmp_path):
    src = tmp_path / "deep.json"
    src.write_text("[" + "[" * 5000 + "]" * 5000 + "]")
    result = CliRunner().invoke(app, ["ingest", str(src), "-f", "pairwise", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "deep.json" in result.output and "nested more than" in result.output


def test_a_deep_engine_args_json_is_refused():
    with pytest.raises(BoundsError, match="nested more than"):
        loads_json("{" + '"a": {' * 200 + "}" * 201)
    assert loads_json('{"a": [[1, 2], {"b": [3]}]}') == {"a": [[1, 2], {"b": [3]}]}


def test_a_yaml_alias_bomb_in_a_pipeline_config_is_refused_fast(tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text("workdir: w\ngenerate:\n  n: 2\n" + _alias_bomb("bomb"))
    assert len(config.read_text().splitlines()) == 24
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["run", str(config)])
    assert time.perf_counter() - start < 10
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # kB: no expansion happened
    assert result.exit_code == 2, result.output
    assert f"{config}: the YAML is" in result.output and "aliases (*name) expand to more than" in result.output
    assert "Traceback" not in result.output


def test_a_yaml_alias_bomb_in_engine_args_of_a_train_config_is_refused(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(_alias_bomb())
    result = CliRunner().invoke(app, ["train", str(config)])
    assert result.exit_code == 2, result.output
    assert "aliases (*name) expand" in result.output and "Traceback" not in result.output


def test_yaml_nested_too_deep_is_refused_and_ordinary_aliases_load():
    with pytest.raises(BoundsError, match="nested more than"):
        load_yaml("x: " + "[" * 50_000 + "]" * 50_000)
    text = "base: &b {lr: 1.0e-3, beta: 0.1}\nrun: {<<: *b, beta: 0.2}\nother: *b\n"
    assert load_yaml(text) == {
        "base": {"lr": 1e-3, "beta": 0.1},
        "run": {"lr": 1e-3, "beta": 0.2},
        "other": {"lr": 1e-3, "beta": 0.1},
    }
