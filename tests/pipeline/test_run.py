"""`prefpool run` planning: sections checked against the stage functions, defaults, overrides, errors.

Nothing here loads a model: `load_pipeline` only reads and checks the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from prefpool.cli import app
from prefpool.core.config import ConfigError
from prefpool.pipeline.run import load_pipeline

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _full(tmp_path: Path) -> dict:
    return {
        "workdir": str(tmp_path / "w"),
        "model": "m",
        "ingest": {"source": "d.jsonl", "format": "ranked"},
        "generate": {"n": 2},
        "logprobs": {},
        "build": {"kind": ["mcpo", "pairwise"]},
        "push": {"repo_id": "me/x", "dry_run": True, "source": "{workdir}/build/mcpo"},
    }


def test_typo_key_is_refused_naming_file_section_and_key(tmp_path):
    config = _full(tmp_path)
    config["logprobs"] = {"max_lenght": 64}
    path = _write(tmp_path, config)
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    assert str(path) in str(err.value) and "section 'logprobs'" in str(err.value)
    assert "'max_lenght'" in str(err.value) and "max_length" in str(err.value)  # the known keys are listed

    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    assert "section 'logprobs'" in result.output and "max_lenght" in result.output
    assert "Traceback" not in result.output


def test_override_changes_a_stage_argument(tmp_path):
    path = _write(tmp_path, _full(tmp_path))
    calls = {c.label: c.kwargs for c in load_pipeline(path, ["generate.n=8", "workdir=" + str(tmp_path / "v")])}
    assert calls["generate"]["n"] == 8
    # {workdir} and the default outputs follow an overridden workdir
    assert calls["push"]["source"] == str(tmp_path / "v" / "build" / "mcpo")
    assert calls["generate"]["out"] == str(tmp_path / "v" / "generate")


def test_defaults_chain_the_stages(tmp_path):
    w = tmp_path / "w"
    calls = {c.label: c.kwargs for c in load_pipeline(_write(tmp_path, _full(tmp_path)))}
    assert list(calls) == [
        "ingest",
        "generate",
        "logprobs[ingest]",
        "logprobs[generate]",
        "build[mcpo]",
        "build[pairwise]",
        "push",
    ]
    assert calls["ingest"]["out"] == str(w / "ingest")
    assert calls["generate"]["input_dir"] == str(w / "ingest") and calls["generate"]["model"] == "m"
    assert calls["logprobs[ingest]"]["input_dir"] == str(w / "ingest")
    assert calls["logprobs[generate]"]["out"] == str(w / "logprobs" / "generate")
    mcpo, pairwise = calls["build[mcpo]"], calls["build[pairwise]"]
    assert mcpo["logprobs"] == [str(w / "logprobs" / "ingest"), str(w / "logprobs" / "generate")]
    assert mcpo["candidates"] == str(w / "generate") and "candidates" not in pairwise
    assert pairwise["out"] == str(w / "build" / "pairwise") and calls["push"]["out"] == str(w / "push")


def test_explicit_keys_win_over_defaults(tmp_path):
    config = _full(tmp_path)
    config["generate"]["model"] = "other"
    config["build"] = {"kind": "mcpo", "candidates": None}  # pool from the ranked answers
    del config["push"]["source"]
    calls = {c.label: c.kwargs for c in load_pipeline(_write(tmp_path, config))}
    assert calls["generate"]["model"] == "other" and calls["logprobs[ingest]"]["model"] == "m"
    assert calls["build"]["candidates"] is None and calls["build"]["out"] == str(tmp_path / "w" / "build")
    assert calls["push"]["source"] == str(tmp_path / "w" / "build")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.pop("workdir"), "'workdir'"),
        (lambda c: c.update(trian={}), "unknown top-level key 'trian'"),
        (lambda c: c.pop("ingest"), "section 'generate': missing required key 'input_dir'"),
        (lambda c: c["generate"].update(n="four"), "section 'generate': n: expected int"),
        (lambda c: c["push"].pop("source"), "set push's 'source'"),
        (lambda c: c.update(build={"kind": ["mcpo", "mcpo"]}), "same folder 'mcpo'"),
        (lambda c: c.update(push=["x"]), "section 'push': expected a mapping"),
        (
            lambda c: c.update(genrate={}, modle="m"),
            "unknown top-level keys 'genrate' (did you mean 'generate'?), 'modle' (did you mean 'model'?)",
        ),
        (
            lambda c: c["generate"].update(max_new_token=4, tempature=1.0),
            "section 'generate': unknown keys 'max_new_token' (did you mean 'max_new_tokens'?), "
            "'tempature' (did you mean 'temperature'?) for generate",
        ),
    ],
)
def test_bad_files_are_refused(tmp_path, change, message):
    config = _full(tmp_path)
    change(config)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_pipeline(_write(tmp_path, config))


def test_progress_flag_reaches_every_stage_that_reports_progress(tmp_path):
    """`prefpool run --no-progress`: show_progress=False for the stages that have it, unless a section says."""
    config = _full(tmp_path)
    config["generate"]["show_progress"] = True
    calls = {c.label: c.kwargs for c in load_pipeline(_write(tmp_path, config), progress=False)}
    assert calls["ingest"]["show_progress"] is False and calls["logprobs[ingest]"]["show_progress"] is False
    assert calls["generate"]["show_progress"] is True  # the section's own value wins
    assert "show_progress" not in calls["build[mcpo]"]  # build has no progress
    assert "show_progress" not in {c.label: c.kwargs for c in load_pipeline(_write(tmp_path, config))}["ingest"]


def test_example_configs_plan(monkeypatch):
    """Every configs/pipeline-*.yaml checks, and the local files it reads exist in a fresh clone."""
    monkeypatch.chdir(REPO)
    configs = sorted((REPO / "configs").glob("pipeline-*.yaml"))
    assert configs
    for path in configs:
        text = path.read_text()
        assert text.startswith("#") and f"prefpool run configs/{path.name}" in text
        calls = load_pipeline(path.relative_to(REPO))
        for call in calls:
            if call.stage == "ingest":
                assert Path(call.kwargs["source"]).exists()
        assert path.name in (REPO / "configs" / "README.md").read_text()
