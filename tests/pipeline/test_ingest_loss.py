"""Silent loss is a failure: no rows is an error, many drops a warning; strict refuses NaN/infinite scores;
format detection says what it found or which flags decide; --columns maps other names."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner
from pipeline_helpers import rows_by_id

from prefpool.cli import app
from prefpool.pipeline.formats.report import DroppedRowsWarning
from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.io.errors import PipelineConfigError, PipelineInputError
from prefpool.pipeline.io.layout import REPORT, read_meta
from prefpool.pipeline.io.read import read_table

runner = CliRunner()


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def report(out: Path) -> dict:
    return read_meta(out, REPORT)


def pair(i: int, **extra) -> dict:
    return {"prompt": f"Question {i}?", "chosen": f"good {i}", "rejected": f"bad {i}", **extra}


def test_zero_rows_is_an_error_naming_the_reasons(tmp_path):
    """Every row unusable used to exit 0 with an empty table."""
    source = write(
        tmp_path / "d.jsonl",
        [pair(0, chosen="same", rejected="same"), pair(1, chosen="same", rejected="same"), pair(2, chosen="  ")],
    )
    out = tmp_path / "out"
    result = runner.invoke(app, ["ingest", str(source), "-o", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "no row could be used: all 3 rows read were dropped" in result.output
    assert "chosen_equals_rejected: 2 rows (e.g. " in result.output and "d.jsonl, row 0, line 1, column 'rejected'" in (
        result.output
    )
    assert "empty_completion: 1 row (e.g. " in result.output
    assert not out.exists()  # nothing that looks like an output


def test_zero_rows_keeps_an_earlier_output(tmp_path):
    out = tmp_path / "out"
    ingest(write(tmp_path / "good.jsonl", [pair(0), pair(1)]), out=out)
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = write(tmp_path / "bad.jsonl", [pair(0, chosen="x", rejected="x")])
    with pytest.raises(PipelineInputError, match="no row could be used"):
        ingest(bad, out=out, overwrite=True)
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    empty_folder = tmp_path / "empty-out"
    empty_folder.mkdir()
    with pytest.raises(PipelineInputError, match="no row could be used"):
        ingest(bad, out=empty_folder)
    assert list(empty_folder.iterdir()) == []


def test_an_empty_input_is_an_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(PipelineInputError, match=r"empty.jsonl: the input holds no rows"):
        ingest(empty, format="prompts", out=tmp_path / "o")


def test_a_shard_with_no_rows_is_not_an_error(tmp_path):
    """The zero-rows check is over the whole input: one shard may own none of two rows."""
    source = write(tmp_path / "d.jsonl", [pair(0), pair(1)])
    sizes = [ingest(source, out=tmp_path / f"s{i}", shard=f"{i}/8").rows_written for i in range(8)]
    assert sum(sizes) == 2 and 0 in sizes


def test_many_drops_warn_with_the_reasons(tmp_path):
    rows = [pair(i) for i in range(8)] + [pair(8, chosen=""), pair(9, rejected=7)]
    source = write(tmp_path / "d.jsonl", rows)
    with pytest.warns(DroppedRowsWarning, match=r"dropped 2 of 10 rows \(20%\); top reasons: empty_completion: 1 row"):
        summary = ingest(source, out=tmp_path / "o")
    assert summary.rows_written == 8 and report(tmp_path / "o")["rows_dropped"] == 2
    done = subprocess.run(
        [sys.executable, "-m", "prefpool", "ingest", str(source), "-o", str(tmp_path / "cli")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.startswith("ingest: 8 rows")
    assert "DroppedRowsWarning: ingest dropped 2 of 10 rows (20%); top reasons: empty_completion" in done.stderr


def test_few_drops_do_not_warn(tmp_path):
    source = write(tmp_path / "d.jsonl", [pair(i) for i in range(10)] + [pair(10, chosen="")])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DroppedRowsWarning)
        assert ingest(source, out=tmp_path / "o").rows_dropped == 1  # 1 of 11: under 10 %


def test_unread_score_columns_warn(tmp_path):
    source = write(tmp_path / "d.jsonl", [pair(0, chosen_reward=0.9, rejected_reward=0.1)])
    with pytest.warns(DroppedRowsWarning, match="look like scores.*chosen_reward, rejected_reward"):
        ingest(source, out=tmp_path / "o")
    mapped = tmp_path / "m"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DroppedRowsWarning)
        ingest(source, out=mapped, columns="score_chosen=chosen_reward,score_rejected=rejected_reward")
    assert [a["score"] for a in next(iter(rows_by_id(mapped).values()))["answers"]] == [0.9, 0.1]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_strict_refuses_nan_and_infinite_scores(tmp_path, value):
    """strict used to take NaN as a missing score without a word (and inf as a score)."""
    source = tmp_path / "d.jsonl"
    source.write_text(
        json.dumps(pair(0, score_chosen=1.0, score_rejected=0.0))
        + "\n"
        + f'{{"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": {value}, "score_rejected": 0.5}}\n'
    )
    with pytest.raises(
        PipelineInputError, match=r"d.jsonl, row 1 \(0-based\), line 2, column 'score_chosen': nonfinite"
    ):
        ingest(source, format="pairwise", strict=True, out=tmp_path / "o")
    out = tmp_path / "lenient"
    ingest(source, format="pairwise", out=out)
    rep = report(out)
    assert rep["dropped_values"] == {"nonfinite_score": 1} and rep["rows_dropped"] == 0
    q = next(r for r in rows_by_id(out).values() if r["prompt"][0]["content"] == "q")
    assert [a["score"] for a in q["answers"]] == [None, 0.5]


def test_strict_refuses_nan_ratings_in_ranked_answers(tmp_path):
    source = write(
        tmp_path / "d.jsonl",
        [{"prompt": "p", "answers": [{"answer": "x", "score": 1.0}, {"answer": "y", "score": float("nan")}]}],
    )
    with pytest.raises(PipelineInputError, match=r"column 'answers\[\]\.score': nonfinite_score"):
        ingest(source, strict=True, out=tmp_path / "o")
    result = runner.invoke(app, ["ingest", str(source), "--strict", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "nonfinite_score" in result.output


def test_undetectable_and_ambiguous_formats_list_the_candidates(tmp_path):
    unknown = write(tmp_path / "u.jsonl", [{"text": "just text"}])
    result = runner.invoke(app, ["ingest", str(unknown), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "cannot tell the input format: the columns ('text') fit no format; expected one of: pairwise:" in (
        result.output
    )
    assert "pass --format (one of pairwise, hh-rlhf, ranked, ultrafeedback, prompts)" in result.output
    both = write(tmp_path / "b.jsonl", [{**pair(0), "answers": [{"answer": "x", "rank": 1}]}])
    with pytest.raises(PipelineInputError, match=r"fit several formats: pairwise \(.*\); ranked \("):
        ingest(both, out=tmp_path / "o")
    assert ingest(both, format="ranked", out=tmp_path / "r").format == "ranked"
    completion = write(tmp_path / "c.jsonl", [{"prompt": "p", "completion": "c", "label": True}])
    with pytest.raises(PipelineInputError, match=r"hold a prompt and 'completion' but no preference"):
        ingest(completion, out=tmp_path / "o")
    assert ingest(completion, format="prompts", out=tmp_path / "p").rows_written == 1
    assert not (tmp_path / "o").exists()


def test_columns_map_other_names(tmp_path):
    source = write(
        tmp_path / "d.jsonl",
        [{"instruction": "Name a fruit.", "good": "Apple.", "bad": "Rock.", "g_score": 4, "b_score": 1}],
    )
    out = tmp_path / "o"
    summary = ingest(
        source,
        out=out,
        columns="prompt=instruction, chosen=good,rejected=bad,score_chosen=g_score,score_rejected=b_score",
    )
    assert summary.format == "pairwise"
    (row,) = rows_by_id(out).values()
    assert row["prompt"] == [{"role": "user", "content": "Name a fruit."}]
    assert [(a["text"], a["score"]) for a in row["answers"]] == [("Apple.", 4.0), ("Rock.", 1.0)]
    assert report(out)["unused_columns"].popitem()[1] == []
    dict_form = tmp_path / "dict"
    ingest(source, out=dict_form, columns={"prompt": "instruction", "chosen": "good", "rejected": "bad"})
    assert read_table(dict_form).column("prompt_id").to_pylist() == read_table(out).column("prompt_id").to_pylist()


def test_bad_columns_flags(tmp_path):
    source = write(tmp_path / "d.jsonl", [pair(0)])
    result = runner.invoke(app, ["ingest", str(source), "--columns", "prompt", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--columns: expected KEY=COLUMN pairs" in result.output
    with pytest.raises(PipelineConfigError, match="unknown key 'answer'; known keys: prompt, chosen"):
        ingest(source, columns="answer=x", out=tmp_path / "o")
    with pytest.raises(PipelineConfigError, match="--columns prompt=a and the prompt flag"):
        ingest(source, columns="prompt=a", prompt_column="b", out=tmp_path / "o")
    with pytest.raises(PipelineInputError, match=r"d.jsonl, column 'question': missing column for format 'pairwise'"):
        ingest(source, columns="prompt=question", out=tmp_path / "o")
    with pytest.raises(PipelineConfigError, match="score=usefulness: the score of an UltraFeedback completion"):
        ingest(source, format="ultrafeedback", columns="score=usefulness", out=tmp_path / "o")
    assert not (tmp_path / "o").exists()
