"""`prefpool ingest` / `prefpool merge`: thin wrappers; user errors exit 2 with a message."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from prefpool.cli import app
from prefpool.pipeline.io.read import read_table

# the fixtures drop rows on purpose: the warning that says so is tested in test_ingest_loss.py
pytestmark = pytest.mark.filterwarnings("ignore::prefpool.pipeline.formats.report.DroppedRowsWarning")


runner = CliRunner()


def test_ingest_prints_a_summary(tmp_path, fixtures):
    out = tmp_path / "out"
    result = runner.invoke(app, ["ingest", str(fixtures / "hh_rlhf.jsonl"), "--format", "hh-rlhf", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ingest: 3 rows in ") and "dropped=2" in result.output
    assert read_table(out).num_rows == 3


def test_bad_input_exits_2_with_file_and_column(tmp_path, fixtures):
    result = runner.invoke(
        app, ["ingest", str(fixtures / "missing_column.jsonl"), "--format", "pairwise", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert "error:" in result.output and "missing_column.jsonl" in result.output and "'rejected'" in result.output
    assert "Traceback" not in result.output


def test_bad_line_bad_shard_and_conflict_exit_2(tmp_path, fixtures):
    out = str(tmp_path / "o")
    bad = runner.invoke(app, ["ingest", str(fixtures / "bad_json.jsonl"), "-f", "pairwise", "-o", out])
    assert bad.exit_code == 2 and "row 2 (0-based), line 4" in bad.output
    shard = runner.invoke(
        app, ["ingest", str(fixtures / "prompts.jsonl"), "-f", "prompts", "-o", out, "--shard", "2/2"]
    )
    assert shard.exit_code == 2 and "shard must be i/N" in shard.output
    fmt = runner.invoke(app, ["ingest", str(fixtures / "prompts.jsonl"), "-f", "nope", "-o", out])
    assert fmt.exit_code == 2 and "'nope' is not one of 'auto', 'pairwise', 'hh-rlhf'" in fmt.output
    assert runner.invoke(app, ["ingest", str(fixtures / "prompts.jsonl"), "-f", "prompts", "-o", out]).exit_code == 0
    clash = runner.invoke(app, ["ingest", str(fixtures / "alpaca_ranked.jsonl"), "-f", "ranked", "-o", out])
    assert clash.exit_code == 2 and "--overwrite" in clash.output
    forced = runner.invoke(
        app, ["ingest", str(fixtures / "alpaca_ranked.jsonl"), "-f", "ranked", "-o", out, "--overwrite"]
    )
    assert forced.exit_code == 0


def test_merge_command(tmp_path, fixtures):
    parts = []
    for i in range(2):
        parts.append(str(tmp_path / f"s{i}"))
        args = ["ingest", str(fixtures / "nectar.jsonl"), "-f", "ranked", "-o", parts[-1], "--shard", f"{i}/2"]
        assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, ["merge", *parts, "--out", str(tmp_path / "m")])
    assert result.exit_code == 0 and "merge: 2 rows from 2 shard runs" in result.output
    missing = runner.invoke(app, ["merge", parts[0], "--out", str(tmp_path / "m2")])
    assert missing.exit_code == 2 and "exactly once" in missing.output


def test_card_fields_are_recorded_and_bad_ones_exit_2(tmp_path, fixtures):
    """--source-dataset/--license/--language go into the identity (for push's card); an output made
    without them still matches a rerun without them (they are left out of the identity when unset)."""
    from prefpool.pipeline.io.manifest import load_manifest

    src = str(fixtures / "pairwise_strings.jsonl")
    plain = runner.invoke(app, ["ingest", src, "-f", "pairwise", "-o", str(tmp_path / "plain")])
    assert plain.exit_code == 0
    assert not {"license", "language", "source_dataset"} & set(load_manifest(tmp_path / "plain").identity.config)
    out = str(tmp_path / "o")
    flags = ["--source-dataset", "me/prefs", "--license", "cc-by-4.0", "--language", "en", "--language", "fr"]
    ok = runner.invoke(app, ["ingest", src, "-f", "pairwise", "-o", out, *flags])
    assert ok.exit_code == 0, ok.output
    config = load_manifest(out).identity.config
    assert (config["source_dataset"], config["license"], config["language"]) == ("me/prefs", "cc-by-4.0", ["en", "fr"])
    for args, match in (
        (["--source-dataset", "just-a-name"], "source_dataset: 'just-a-name' is not a valid Hub repo id"),
        (["--license", "Apache 2"], "license: 'Apache 2' is not a licence id"),
        (["--language", "EN_us"], "language: 'EN_us' is not an ISO 639 language code"),
    ):
        bad = runner.invoke(app, ["ingest", src, "-f", "pairwise", "-o", str(tmp_path / "bad"), *args])
        assert bad.exit_code == 2 and match in bad.output, bad.output
        assert not (tmp_path / "bad").exists()


def test_a_missing_column_lists_the_columns_that_exist(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text('{"prompt": "q", "chosen": "a", "rejected": "b", "source_index": 3}\n')
    result = runner.invoke(app, ["ingest", str(src), "--columns", "prompt=question", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "column 'question': missing column for format 'pairwise'" in result.output
    assert "the columns of this file are: 'prompt', 'chosen', 'rejected', 'source_index'" in result.output


def test_a_row_range_in_the_split_reads_only_those_records(tmp_path):
    """`--split 'train[:2]'` as datasets writes it: the first 2 records; `train[1:3]`: records 1 and 2."""
    src = tmp_path / "p.jsonl"
    src.write_text("".join(f'{{"prompt": "q{i}", "chosen": "a", "rejected": "b"}}\n' for i in range(5)))
    prompts = {}
    for split in ("train[:2]", "train[1:3]", "train[3:]"):
        out = tmp_path / split
        result = runner.invoke(app, ["ingest", str(src), "--split", split, "-o", str(out)])
        assert result.exit_code == 0, result.output
        prompts[split] = sorted(row["prompt"][0]["content"] for row in read_table(out).to_pylist())
    assert prompts == {"train[:2]": ["q0", "q1"], "train[1:3]": ["q1", "q2"], "train[3:]": ["q3", "q4"]}
    for bad in ("train[2:1]", "train[a:b]", "test[:2]"):
        result = runner.invoke(app, ["ingest", str(src), "--split", bad, "-o", str(tmp_path / "bad")])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
