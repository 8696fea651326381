"""Each public preference schema, in its exact column layout (fixtures/public/), read with no flags.

The fixtures hold hand-written rows in the columns and types of the datasets they
stand for; the expected prompts, answers and scores below are worked out by hand.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from pipeline_helpers import FIXTURES, rows_by_id

from prefpool.cli import app
from prefpool.pipeline.formats.report import DroppedRowsWarning
from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.io.errors import PipelineInputError
from prefpool.pipeline.io.ids import normalize_messages, prompt_id
from prefpool.pipeline.io.layout import REPORT, read_meta
from prefpool.pipeline.io.stage_run import StageRun, plan_units
from prefpool.pipeline.kinds.pairwise import SCHEMA as PAIRWISE

PUBLIC = Path(__file__).parent / "fixtures" / "public"


def pid(prompt) -> str:
    return prompt_id(normalize_messages(prompt))


def report(out: Path) -> dict:
    return read_meta(out, REPORT)


def records(name: str) -> list[dict]:
    return [json.loads(line) for line in (PUBLIC / name).read_text().splitlines()]


def u(content: str) -> dict:
    return {"role": "user", "content": content}


def a(content: str) -> dict:
    return {"role": "assistant", "content": content}


def texts(row: dict) -> list[tuple[str, float | None, str | None]]:
    return [(x["text"], x["score"], x["source"]) for x in row["answers"]]


def test_trl_standard_explicit_and_implicit_prompt_give_one_table(tmp_path):
    """TRL's docs: {"prompt": "The sky is", "chosen": " blue."} and {"chosen": "The sky is blue."} are the same
    example. The implicit prompt is the shared text up to the last space before the answers differ."""
    explicit, implicit = tmp_path / "e", tmp_path / "i"
    first = ingest(PUBLIC / "trl_standard_explicit.jsonl", out=explicit)
    second = ingest(PUBLIC / "trl_standard_implicit.jsonl", out=implicit)
    assert (first.format, second.format) == ("pairwise", "pairwise")
    rows = rows_by_id(explicit)
    assert [x["text"] for x in rows[pid("The sky is")]["answers"]] == [" blue.", " green."]
    assert rows[pid("Water is")]["pairs"] == [{"chosen": 0, "rejected": 1}]
    strip = {k: {**v, "source": ""} for k, v in rows.items()}
    assert strip == {k: {**v, "source": ""} for k, v in rows_by_id(implicit).items()}
    assert report(implicit)["rows_dropped"] == 0 and report(implicit)["inputs"]["format"] == "pairwise"


def test_trl_conversational_explicit_prompt(tmp_path):
    """The shape of prefpool's own pairwise export: prompt a message list, chosen/rejected one assistant message.
    It used to drop every row as prompt_mismatch and exit 0 with 0 rows."""
    out = tmp_path / "out"
    summary = ingest(PUBLIC / "trl_conversational_explicit.jsonl", format="pairwise", out=out)
    assert summary.rows_written == 3 and summary.rows_dropped == 0
    rows = rows_by_id(out)
    planet = [u("Hi"), a("Hello! How can I help?"), u("Name a planet.")]
    assert rows[pid(planet)]["prompt"] == planet
    assert texts(rows[pid(planet)]) == [("Mars.", None, None), ("The Moon.", None, None)]
    system = [{"role": "system", "content": "Answer in one word."}, u("Opposite of hot?")]
    assert [x["text"] for x in rows[pid(system)]["answers"]] == ["Cold.", "Warm, mostly."]


def test_trl_conversational_implicit_prompt_equals_explicit(tmp_path):
    explicit, implicit = tmp_path / "e", tmp_path / "i"
    ingest(PUBLIC / "trl_conversational_explicit.jsonl", out=explicit)
    ingest(PUBLIC / "trl_conversational_implicit.jsonl", out=implicit)
    strip = lambda folder: {k: {**v, "source": ""} for k, v in rows_by_id(folder).items()}  # noqa: E731
    assert strip(explicit) == strip(implicit) and len(strip(explicit)) == 3


def test_prefpool_pairwise_table_reads_back(tmp_path):
    """A `build --kind pairwise` table (TRL conversational, explicit prompt) is itself an ingest input."""
    rows = [
        {
            "prompt_id": "x",
            "prompt": [u("What color is the sky?")],
            "chosen": [a("It is blue.")],
            "rejected": [a("It is green.")],
            "ref_chosen_logps": -3.5,
            "ref_rejected_logps": -4.0,
            "chosen_id": "c",
            "rejected_id": "r",
            "chosen_num_tokens": 4,
            "rejected_num_tokens": 4,
        }
    ]
    table = tmp_path / "pairwise"  # written the way `build` writes it: shards and a manifest
    run = StageRun(table, stage="build", schema="pairwise", config={}, inputs={}, rows_per_unit=10)
    for unit in run.pending(plan_units(rows, key_of=lambda r: r["prompt_id"], rows_per_unit=10)):
        run.write(unit, pa.Table.from_pylist(list(unit.items), schema=PAIRWISE))
    run.finish(sidecars={REPORT: {"pairs": 1}})
    single = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=PAIRWISE), single)
    for source in (table, single):
        out = tmp_path / f"out-{source.name}"
        assert ingest(source, out=out).format == "pairwise"
        (row,) = rows_by_id(out).values()
        assert row["prompt"] == [u("What color is the sky?")]
        assert [x["text"] for x in row["answers"]] == ["It is blue.", "It is green."]


def _hub_folder(root: Path, splits: dict[str, list[dict]], readme: str = "") -> Path:
    """A dataset repository as the Hub stores it: README.md and data/<split>-00000-of-00001.parquet."""
    (root / "data").mkdir(parents=True)
    (root / "README.md").write_text(readme or "# a dataset\n")
    for split, rows in splits.items():
        pq.write_table(pa.Table.from_pylist(rows), root / "data" / f"{split}-00000-of-00001.parquet")
    return root


UFB_README = """---
license: mit
configs:
- config_name: default
  data_files:
  - split: train_prefs
    path: data/train_prefs-*
  - split: test_prefs
    path: data/test_prefs-*
---
# Dataset Card for UltraFeedback Binarized
"""


def test_ultrafeedback_binarized_folder_splits_and_scores(tmp_path):
    """HuggingFaceH4/ultrafeedback_binarized as cloned: README configs name the splits train_prefs/test_prefs."""
    repo = _hub_folder(
        tmp_path / "ultrafeedback_binarized",
        {
            "train_prefs": records("ultrafeedback_binarized_train_prefs.jsonl"),
            "test_prefs": records("ultrafeedback_binarized_test_prefs.jsonl"),
        },
        UFB_README,
    )
    with pytest.raises(PipelineInputError, match=r"several splits and none is 'train': train_prefs, test_prefs"):
        ingest(repo, out=tmp_path / "none")
    assert not (tmp_path / "none").exists()
    train, test = tmp_path / "train", tmp_path / "test"
    assert ingest(repo, split="train_prefs", out=train).rows_written == 2
    assert ingest(repo, split="test_prefs", out=test).rows_written == 1
    rows = rows_by_id(train)
    assert [(x["text"], x["score"]) for x in rows[pid("What is 7 * 6?")]["answers"]] == [
        ("7 * 6 = 42.", 10.0),
        ("7 * 6 = 36.", 2.0),
    ]
    assert report(train)["inputs"]["splits_found"] == ["train_prefs", "test_prefs"]
    assert set(report(train)["unused_columns"].popitem()[1]) == {"prompt_id", "messages"}
    assert {r["source"] for r in rows.values()} == {"data/train_prefs-00000-of-00001.parquet"}


def test_nectar(tmp_path):
    out = tmp_path / "out"
    summary = ingest(PUBLIC / "nectar.jsonl", out=out)
    assert summary.format == "ranked"
    rows = rows_by_id(out)
    happy = rows[pid("Give me a synonym for happy.")]
    assert [(x["text"], x["rank"], x["source"]) for x in happy["answers"]] == [
        ("Joyful.", 1, "gpt-4"),
        ("Content, or glad.", 2, "gpt-3.5-turbo"),
        ("Sad.", 3, "llama-2-7b-chat"),
    ]
    two_turns = [u("Hi"), a("Hello! What can I do for you?"), u("What is 2 + 3?")]
    assert [x["text"] for x in rows[pid(two_turns)]["answers"]] == ["2 + 3 = 5.", "It is 6."]
    assert set(report(out)["unused_columns"].popitem()[1]) == {"turns", "num_responses", "source", "good_natured"}


def test_raw_ultrafeedback_overall_score_and_aspects(tmp_path):
    """openbmb/UltraFeedback: completions[].overall_score by default, an aspect's rating with --score-key;
    a rating of "N/A" is a missing score."""
    overall, helpful, honest = tmp_path / "o", tmp_path / "h", tmp_path / "n"
    assert ingest(PUBLIC / "ultrafeedback_raw.jsonl", out=overall).format == "ultrafeedback"
    ingest(PUBLIC / "ultrafeedback_raw.jsonl", out=helpful, score_key="helpfulness")
    ingest(PUBLIC / "ultrafeedback_raw.jsonl", out=honest, columns="score=honesty")
    sky = pid("Explain why the sky is blue in one sentence.")
    assert [(x["score"], x["source"]) for x in rows_by_id(overall)[sky]["answers"]] == [
        (9.0, "gpt-4"),
        (3.0, "alpaca-7b"),
        (7.5, "falcon-40b-instruct"),
    ]
    assert [x["score"] for x in rows_by_id(helpful)[sky]["answers"]] == [5.0, 1.0, 4.0]
    assert [x["score"] for x in rows_by_id(honest)[sky]["answers"]] == [5.0, None, 4.0]
    fish = rows_by_id(overall)[pid("How many legs does a fish have?")]
    assert fish["answers"][0]["text"] == "Fish have no legs; they swim with fins." and fish["pairs"] == []
    assert report(overall)["dropped_rows"] == {}


def test_raw_ultrafeedback_as_ranked_is_an_error_not_an_empty_success(tmp_path):
    """It used to drop every row as `unranked` and exit 0 (the scores sit under overall_score)."""
    out = tmp_path / "out"
    with pytest.raises(PipelineInputError, match=r"no row could be used.*unranked: 2 rows \(e\.g\. .*row 0, line 1"):
        ingest(PUBLIC / "ultrafeedback_raw.jsonl", format="ranked", out=out)
    assert not out.exists()
    ranked = tmp_path / "ranked"  # naming the key works too
    assert ingest(
        PUBLIC / "ultrafeedback_raw.jsonl", format="ranked", score_key="overall_score", out=ranked
    ).rows_written


def _hh_repository(root: Path) -> Path:
    """Anthropic/hh-rlhf's layout: <subset>/{train,test}.jsonl.gz, and red-team-attempts in no split."""
    hh = (FIXTURES / "hh_rlhf.jsonl").read_bytes().splitlines(keepends=True)
    for sub, train, test in (("harmless-base", hh[:2], hh[2:3]), ("helpful-base", hh[3:], hh[:1])):
        (root / sub).mkdir(parents=True)
        (root / sub / "train.jsonl.gz").write_bytes(gzip.compress(b"".join(train)))
        (root / sub / "test.jsonl.gz").write_bytes(gzip.compress(b"".join(test)))
    (root / "red-team-attempts").mkdir()
    red_team = (PUBLIC / "hh_red_team_attempts.jsonl").read_bytes()
    (root / "red-team-attempts" / "red_team_attempts.jsonl.gz").write_bytes(gzip.compress(red_team))
    (root / "README.md").write_text("# HH-RLHF\n")
    return root


def test_hh_rlhf_jsonl_gz_file(tmp_path):
    """The Hub's own file, harmless-base/test.jsonl.gz, used to be refused as an unsupported file type."""
    repo = _hh_repository(tmp_path / "hh-rlhf")
    out = tmp_path / "out"
    ingest(repo / "harmless-base" / "test.jsonl.gz", format="hh-rlhf", out=out)
    (row,) = rows_by_id(out).values()
    assert row["prompt"][-1] == u("four") and [x["text"] for x in row["answers"]] == ["good", "bad"]
    assert row["source"] == "test.jsonl.gz"


def test_hh_rlhf_repository_train_split_and_unread_files(tmp_path):
    repo = _hh_repository(tmp_path / "hh-rlhf")
    out = tmp_path / "out"
    with pytest.warns(DroppedRowsWarning) as caught:
        summary = ingest(repo, out=out)
    assert (summary.format, summary.split) == ("hh-rlhf", "train")
    # harmless-base/train: 2 good rows; helpful-base/train: the prefix mismatch and the missing Assistant turn
    assert (summary.rows_read, summary.rows_written, summary.rows_dropped) == (4, 2, 2)
    assert {r["source"] for r in rows_by_id(out).values()} == {"harmless-base/train.jsonl.gz"}
    assert report(out)["inputs"]["files_in_no_split"] == ["red-team-attempts/red_team_attempts.jsonl.gz"]
    messages = [str(w.message) for w in caught]
    assert any("red-team-attempts/red_team_attempts.jsonl.gz" in m and "in no split" in m for m in messages)
    assert any("dropped 2 of 4 rows (50%)" in m and "hh_prefix_mismatch" in m for m in messages)
    test = tmp_path / "test"
    assert ingest(repo, split="test", out=test).rows_written == 2  # one row from each subset folder


def test_argilla_ratings_and_models_are_kept(tmp_path):
    """argilla/dpo-mix-7k (chosen_rating, chosen_model) and ultrafeedback-binarized-preferences-cleaned
    (chosen-rating, chosen-model): the ratings are the answers' scores, the models their sources."""
    mix, cleaned = tmp_path / "mix", tmp_path / "cleaned"
    ingest(PUBLIC / "argilla_dpo_mix.jsonl", out=mix)
    ingest(PUBLIC / "argilla_ultrafeedback_cleaned.jsonl", out=cleaned)
    prime = rows_by_id(mix)[pid("Is 17 prime?")]
    assert texts(prime) == [
        ("Yes, 17 is prime.", 5.0, "gpt-4-1106-preview"),
        ("No, 17 = 3 * 6.", 1.0, "argilla/notus-7b-v1"),
    ]
    rome = rows_by_id(mix)[pid([{"role": "system", "content": "Be concise."}, u("Capital of Italy?")])]
    assert [x["score"] for x in rome["answers"]] == [4.5, 2.5]
    (row,) = rows_by_id(cleaned).values()
    assert texts(row) == [("Modern.", 5.0, "gpt-4"), ("Old.", 1.5, "pythia-12b")]
    assert report(cleaned)["unused_columns"].popitem()[1] == ["source"]


def test_cli_names_the_detected_format(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["ingest", str(PUBLIC / "nectar.jsonl"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "format=ranked" in result.output and "split=train" in result.output
    assert report(out)["inputs"] == {
        "format": "ranked",
        "format_requested": "auto",
        "split": "train",
        "splits_found": ["train"],
        "files_in_no_split": [],
    }
