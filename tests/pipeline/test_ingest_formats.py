"""Each input format, on hand-made fixtures in tests/fixtures/ingest/."""

from __future__ import annotations

import csv
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pipeline_helpers import rows_by_id

from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.io.errors import PipelineInputError
from prefpool.pipeline.io.ids import normalize_messages, prompt_id
from prefpool.pipeline.io.layout import REPORT, read_meta

# the fixtures drop rows on purpose: the warning that says so is tested in test_ingest_loss.py
pytestmark = pytest.mark.filterwarnings("ignore::prefpool.pipeline.formats.report.DroppedRowsWarning")


def pid(prompt) -> str:
    return prompt_id(normalize_messages(prompt))


def report(out) -> dict:
    return read_meta(out, REPORT)


def test_pairwise_strings_merge_duplicates_and_report_drops(tmp_path, fixtures):
    out = tmp_path / "out"
    summary = ingest(fixtures / "pairwise_strings.jsonl", format="pairwise", out=out)
    rows = rows_by_id(out)
    assert summary.rows_written == len(rows) == 3
    # rows 0 and 1 share a prompt (up to whitespace): one row, answer "4" kept once
    math = rows[pid("What is 2+2?")]
    assert [a["text"] for a in math["answers"]] == ["4", "5", "22"]
    assert [a["score"] for a in math["answers"]] == [9.0, 2.0, 1.0]
    assert math["pairs"] == [{"chosen": 0, "rejected": 1}, {"chosen": 0, "rejected": 2}]
    assert math["source"] == "pairwise_strings.jsonl"
    # scores from a Python-repr metadata string and from a metadata dict
    assert [a["score"] for a in rows[pid("Name a colour.")]["answers"]] == [8.0, 3.5]
    assert rows[pid("Héllo — unicode?")]["answers"][0]["text"] == "Bonjour ✓"
    rep = report(out)
    assert rep["rows_read"] == 8 and rep["rows_dropped"] == 4
    assert rep["dropped_rows"] == {
        "chosen_equals_rejected": 1,
        "empty_completion": 1,
        "empty_prompt": 1,
        "non_string_completion": 1,
    }
    assert rep["duplicate_rows_merged"] == 1 and rep["duplicate_answers_removed"] == 1
    first = next(e for e in rep["examples"] if e["reason"] == "non_string_completion")
    assert (first["row"], first["line"], first["column"]) == (5, 6, "rejected")
    assert first["file"].endswith("pairwise_strings.jsonl")


def test_strict_raises_on_the_first_bad_row(tmp_path, fixtures):
    with pytest.raises(
        PipelineInputError,
        match=r"pairwise_strings.jsonl, row 3 \(0-based\), line 4, column 'chosen': empty_completion",
    ):
        ingest(fixtures / "pairwise_strings.jsonl", format="pairwise", out=tmp_path / "o", strict=True)


def test_pairwise_chat_lists(tmp_path, fixtures):
    out = tmp_path / "out"
    ingest(fixtures / "pairwise_chat.jsonl", format="pairwise", out=out)
    rows = rows_by_id(out)
    assert set(rows) == {
        pid("Say hi."),
        pid([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Be brief."}]),
    }
    hi = rows[pid("Say hi.")]
    assert [(a["text"], a["score"]) for a in hi["answers"]] == [("Hi!", 8.0), ("No.", 2.0)]
    assert report(out)["dropped_rows"] == {"no_final_assistant": 1, "prompt_mismatch": 1}


def test_pairwise_chat_lists_without_prompt_column(tmp_path, fixtures):
    src = tmp_path / "chat.jsonl"
    src.write_text(
        "".join(
            json.dumps({k: v for k, v in json.loads(line).items() if k != "prompt"}) + "\n"
            for line in (fixtures / "pairwise_chat.jsonl").read_text().splitlines()
        )
    )
    with_prompt, without = tmp_path / "a", tmp_path / "b"
    ingest(fixtures / "pairwise_chat.jsonl", format="pairwise", out=with_prompt)
    ingest(src, format="pairwise", out=without)
    # the prompt comes from the messages; chosen and rejected lists must still agree
    assert rows_by_id(with_prompt).keys() == rows_by_id(without).keys()
    assert report(without)["dropped_rows"] == {"no_final_assistant": 1, "prompt_mismatch": 1}


def test_hh_rlhf_multi_turn(tmp_path, fixtures):
    out = tmp_path / "out"
    ingest(fixtures / "hh_rlhf.jsonl", format="hh-rlhf", out=out)
    joke_prompt = [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ]
    rows = rows_by_id(out)
    joke = rows[pid(joke_prompt)]
    assert joke["prompt"] == joke_prompt
    assert [a["text"] for a in joke["answers"]] == [
        "Why did the chicken cross the road? To get to the other side.",
        "No.",
    ]
    assert joke["pairs"] == [{"chosen": 0, "rejected": 1}]
    assert len(rows) == 3
    assert max(len(r["prompt"]) for r in rows.values()) == 5  # the three-turn dialogue
    assert report(out)["dropped_rows"] == {"hh_no_final_assistant": 1, "hh_prefix_mismatch": 1}


def test_nectar_ranked(tmp_path, fixtures):
    out = tmp_path / "out"
    ingest(fixtures / "nectar.jsonl", format="ranked", out=out)
    rows = rows_by_id(out)
    haiku = rows[pid("Write a haiku about rain.")]
    assert [(a["rank"], a["source"]) for a in haiku["answers"]] == [
        (1, "gpt-4"),
        (3, "llama-2-7b-chat"),
        (2, "claude-1"),
    ]
    assert haiku["pairs"] == []  # ranked data: the build stage derives pairs
    multi = rows[
        pid(
            [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello, how can I help?"},
                {"role": "user", "content": "What is 3*3?"},
            ]
        )
    ]
    assert [a["text"] for a in multi["answers"]] == ["9", "6"]
    rep = report(out)
    assert rep["dropped_answers"] == {"empty_completion": 1} and rep["dropped_rows"] == {"unranked": 1}


def test_alpaca_style_ranked_and_prompt_id_join(tmp_path, fixtures):
    ranked, nectar, prompts = tmp_path / "r", tmp_path / "n", tmp_path / "p"
    ingest(fixtures / "alpaca_ranked.jsonl", format="ranked", out=ranked)
    ingest(fixtures / "nectar.jsonl", format="ranked", out=nectar)
    ingest(fixtures / "prompts.jsonl", format="prompts", out=prompts)
    rows = rows_by_id(ranked)
    assert [(a["source"], a["score"], a["rank"]) for a in rows[pid("Say hi.")]["answers"]] == [
        ("m1", 0.5, 1),
        ("m3", 0.5, 1),
    ]
    # the same prompt from three files and formats has one id
    assert pid("Write a haiku about rain.") in set(rows) & set(rows_by_id(nectar))
    prompt_rows = rows_by_id(prompts)
    assert len(prompt_rows) == 2 and all(r["answers"] == [] for r in prompt_rows.values())
    assert report(prompts)["duplicate_rows_merged"] == 1


def test_csv_input(tmp_path, fixtures):
    out = tmp_path / "out"
    ingest(fixtures / "pairwise.csv", format="pairwise", out=out)
    rows = rows_by_id(out)
    assert [a["score"] for a in rows[pid("What is 2+2?")]["answers"]] == [9.0, 2.0]
    two = rows[pid("Write two lines.")]
    assert two["answers"][0]["text"] == "Line one.\nLine two." and two["answers"][1]["score"] is None
    assert report(out)["dropped_rows"] == {"empty_completion": 1}
    assert report(out)["examples"][0]["row"] == 2


def test_parquet_input_with_nested_messages_equals_jsonl(tmp_path, fixtures):
    records = [json.loads(line) for line in (fixtures / "pairwise_chat.jsonl").read_text().splitlines()]
    source = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist(records[:2]), source)
    from_parquet, from_jsonl = tmp_path / "p", tmp_path / "j"
    ingest(source, format="pairwise", out=from_parquet)
    ingest(fixtures / "pairwise_chat.jsonl", format="pairwise", out=from_jsonl)
    a, b = rows_by_id(from_parquet), rows_by_id(from_jsonl)
    assert {k: {**v, "source": ""} for k, v in a.items()} == {k: {**v, "source": ""} for k, v in b.items()}


def test_folder_of_mixed_files_in_sorted_order(tmp_path, fixtures):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(fixtures / "pairwise_strings.jsonl", folder / "b.jsonl")
    shutil.copy(fixtures / "pairwise.csv", folder / "a.csv")
    ingest(folder, format="pairwise", out=tmp_path / "out")
    math = rows_by_id(tmp_path / "out")[pid("What is 2+2?")]
    # a.csv is read first: its row gives the source; the b.jsonl duplicates are merged in
    assert math["source"] == "a.csv"
    assert [a["text"] for a in math["answers"]] == ["4", "5", "22"]


def test_missing_column_names_file_and_column(tmp_path, fixtures):
    with pytest.raises(PipelineInputError, match=r"missing_column.jsonl, column 'rejected': missing column"):
        ingest(fixtures / "missing_column.jsonl", format="pairwise", out=tmp_path / "o")
    with pytest.raises(PipelineInputError, match=r"prompts.jsonl, column 'answers'"):
        ingest(fixtures / "prompts.jsonl", format="ranked", out=tmp_path / "o2")
    with pytest.raises(PipelineInputError, match=r"column 'chosen'"):
        ingest(fixtures / "prompts.jsonl", format="pairwise", out=tmp_path / "o3")


def test_unparseable_json_line_names_file_row_and_line(tmp_path, fixtures):
    with pytest.raises(PipelineInputError, match=r"bad_json.jsonl, row 2 \(0-based\), line 4: invalid JSON"):
        ingest(fixtures / "bad_json.jsonl", format="pairwise", out=tmp_path / "o")


def test_truncated_parquet_input_is_named(tmp_path, fixtures):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "a", "chosen": "b", "rejected": "c"}] * 10), source)
    source.write_bytes(source.read_bytes()[:-20])
    with pytest.raises(PipelineInputError, match=r"in.parquet: not a readable Parquet file"):
        ingest(source, format="pairwise", out=tmp_path / "o")


def test_undecodable_csv_is_named(tmp_path):
    source = tmp_path / "in.csv"
    with open(source, "w", newline="") as handle:
        csv.writer(handle).writerows([["prompt", "chosen", "rejected"], ["a", "b", "c"]])
    with open(source, "ab") as handle:
        handle.write(b"x,\xff\xfe,z\n")
    with pytest.raises(PipelineInputError, match=r"in.csv, row 1 \(0-based\), line 3: not UTF-8: byte 0xff"):
        ingest(source, format="pairwise", out=tmp_path / "o")
