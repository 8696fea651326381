"""What ingest reads: compressed files, encodings, folders split the Hub's way, globs, URLs, datasets objects,
Hub ids; and the clear error for each thing that can go wrong there."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from click.testing import CliRunner
from pipeline_helpers import rows_by_id

from prefpool.cli import app
from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.io.errors import OutputConflictError, PipelineConfigError, PipelineInputError
from prefpool.pipeline.io.layout import REPORT, read_meta
from prefpool.pipeline.io.read import read_table

runner = CliRunner()
ROWS = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."},
    {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},
]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")


def prompts_of(folder: Path) -> list[str]:
    return sorted(r["prompt"][0]["content"] for r in rows_by_id(folder).values())


def stripped(folder: Path) -> dict:
    return {k: {**v, "source": ""} for k, v in rows_by_id(folder).items()}


COMPRESS = {
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".xz": lzma.compress,
    ".zst": lambda b: zstandard.ZstdCompressor().compress(b),
}


@pytest.mark.parametrize("suffix", sorted(COMPRESS))
def test_compressed_text_files_equal_the_plain_file(tmp_path, suffix):
    plain = tmp_path / "d.jsonl"
    plain.write_bytes(jsonl(ROWS))
    packed = tmp_path / f"d.jsonl{suffix}"
    packed.write_bytes(COMPRESS[suffix](jsonl(ROWS)))
    ingest(plain, out=tmp_path / "plain")
    summary = ingest(packed, out=tmp_path / "packed")
    assert summary.rows_written == 3 and stripped(tmp_path / "plain") == stripped(tmp_path / "packed")
    assert {r["source"] for r in rows_by_id(tmp_path / "packed").values()} == {f"d.jsonl{suffix}"}


def test_compressed_csv_and_json(tmp_path):
    (tmp_path / "d.csv.gz").write_bytes(gzip.compress(b"prompt,chosen,rejected\nWhat is 2+2?,4,5\n"))
    (tmp_path / "d.json.xz").write_bytes(lzma.compress(json.dumps(ROWS).encode()))
    assert ingest(tmp_path / "d.csv.gz", out=tmp_path / "c").rows_written == 1
    assert ingest(tmp_path / "d.json.xz", out=tmp_path / "j").rows_written == 3


def test_corrupt_or_unsupported_compressed_files_are_named(tmp_path):
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress(jsonl(ROWS * 50))[:-30])
    with pytest.raises(PipelineInputError, match=r"cut.jsonl.gz, row \d+ \(0-based\), line \d+: cannot read"):
        ingest(truncated, out=tmp_path / "o1")
    assert not (tmp_path / "o1").exists()
    packed_parquet = tmp_path / "d.parquet.gz"
    packed_parquet.write_bytes(b"\x1f\x8b not really")
    result = runner.invoke(app, ["ingest", str(packed_parquet), "-o", str(tmp_path / "o2")])
    assert result.exit_code == 2 and "d.parquet.gz: unsupported file type (compressed Parquet/Arrow" in result.output


def test_non_utf8_byte_is_reported_at_its_line(tmp_path):
    """A bad byte on line 3 used to be reported at row 0, line 1 (the text reader decodes in blocks)."""
    source = tmp_path / "d.jsonl"
    source.write_bytes(jsonl(ROWS[:2]) + b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(PipelineInputError, match=r"d.jsonl, row 2 \(0-based\), line 3: not UTF-8: byte 0xe9"):
        ingest(source, format="pairwise", out=tmp_path / "o")
    result = runner.invoke(app, ["ingest", str(source), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "row 2 (0-based), line 3: not UTF-8" in result.output
    assert not (tmp_path / "o").exists()  # nothing left behind by the failed run


def test_csv_with_a_byte_order_mark(tmp_path):
    """Excel writes UTF-8 CSV with a BOM; its header used to read as '\\ufeffprompt', a missing column."""
    source = tmp_path / "excel.csv"
    source.write_bytes("prompt,chosen,rejected\nWhat is 2+2?,4,5\nSay hi.,Hi!,No.\n".encode("utf-8-sig"))
    summary = ingest(source, format="pairwise", out=tmp_path / "o")
    assert summary.rows_written == 2 and prompts_of(tmp_path / "o") == ["Say hi.", "What is 2+2?"]
    assert report_columns(tmp_path / "o")["prompt"] == "prompt"


def report_columns(out: Path) -> dict:
    return next(iter(read_meta(out, REPORT)["columns"].values()))


def test_bom_on_a_jsonl_file_is_skipped(tmp_path):
    source = tmp_path / "d.jsonl"
    source.write_bytes(b"\xef\xbb\xbf" + jsonl(ROWS))
    assert ingest(source, out=tmp_path / "o").rows_written == 3


def test_csv_with_a_wrong_field_count_or_duplicate_header(tmp_path):
    ragged = tmp_path / "ragged.csv"
    ragged.write_text('prompt,chosen,rejected\na,b,c\n"multi\nline",x,y,extra\n')
    with pytest.raises(PipelineInputError, match=r"ragged.csv, row 1 \(0-based\), line 3: 4 fields where the header"):
        ingest(ragged, out=tmp_path / "o1")
    twice = tmp_path / "twice.csv"
    twice.write_text("prompt,chosen,chosen\na,b,c\n")
    with pytest.raises(PipelineInputError, match=r"twice.csv, line 1: bad CSV header: column 'chosen' appears twice"):
        ingest(twice, out=tmp_path / "o2")


LAYOUTS = {
    "sharded": [
        "data/train-00000-of-00002.parquet",
        "data/train-00001-of-00002.parquet",
        "data/test-00000-of-00001.jsonl",
    ],
    "split folders": ["train/part-a.jsonl", "train/more/part-b.csv", "test/all.jsonl"],
    "split files": ["train.jsonl", "train_extra.parquet", "test.jsonl"],
}


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".csv":
        path.write_text(
            "prompt,chosen,rejected\n" + "".join(f"{r['prompt']},{r['chosen']},{r['rejected']}\n" for r in rows)
        )
    else:
        path.write_bytes(jsonl(rows))


def _pair(i: int) -> dict:
    return {"prompt": f"Question {i}?", "chosen": f"good {i}", "rejected": f"bad {i}"}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_folder_splits_the_hub_way(tmp_path, layout):
    """Splits used to mix (the folder read flat, --split ignored); now train by default, test on request."""
    repo = tmp_path / "repo"
    first, second, test = LAYOUTS[layout]
    _write(repo / first, [_pair(0), _pair(1)])
    _write(repo / second, [_pair(2)])
    _write(repo / test, [_pair(9)])
    (repo / "README.md").write_text("# card\n")
    train = ingest(repo, out=tmp_path / "train")
    assert (train.split, train.rows_written) == ("train", 3)
    assert prompts_of(tmp_path / "train") == ["Question 0?", "Question 1?", "Question 2?"]
    assert {r["source"] for r in rows_by_id(tmp_path / "train").values()} == {first, second}
    assert ingest(repo, split="test", out=tmp_path / "test").rows_written == 1
    result = runner.invoke(app, ["ingest", str(repo), "--split", "validation", "-o", str(tmp_path / "v")])
    assert result.exit_code == 2 and "no split 'validation'; splits found: train, test" in result.output
    assert not (tmp_path / "v").exists()


def test_folder_without_split_names_is_one_split(tmp_path, fixtures):
    folder = tmp_path / "flat"
    folder.mkdir()
    (folder / "a.jsonl").write_bytes(jsonl(ROWS[:1]))
    (folder / "sub").mkdir()
    (folder / "sub" / "b.jsonl").write_bytes(jsonl(ROWS[1:]))
    summary = ingest(folder, out=tmp_path / "o")
    assert (summary.split, summary.rows_written) == ("train", 3)  # read recursively
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no data")
    with pytest.raises(PipelineInputError, match=r"empty: folder holds no .jsonl/.json/.csv/.parquet/.arrow files"):
        ingest(empty, out=tmp_path / "o2")


def test_readme_subsets(tmp_path):
    """A README.md listing configs (like trl-internal-testing/zen) picks files per subset and split."""
    repo = tmp_path / "zen"
    _write(repo / "standard_preference" / "train-00000-of-00001.jsonl", [_pair(0), _pair(1)])
    _write(repo / "standard_preference" / "test-00000-of-00001.jsonl", [_pair(2)])
    _write(repo / "standard_prompt_only" / "train-00000-of-00001.jsonl", [{"prompt": "Only a prompt."}])
    (repo / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: standard_preference\n  data_files:\n"
        "  - split: train\n    path: standard_preference/train-*\n"
        "  - split: test\n    path: standard_preference/test-*\n"
        "- config_name: standard_prompt_only\n  data_files:\n"
        "  - split: train\n    path: standard_prompt_only/train-*\n---\n# zen\n"
    )
    with pytest.raises(PipelineInputError, match="several subsets and none is the default: standard_preference, st"):
        ingest(repo, out=tmp_path / "o")
    pref = ingest(repo, subset="standard_preference", out=tmp_path / "p")
    assert (pref.format, pref.rows_written) == ("pairwise", 2)
    assert ingest(repo, config_name="standard_prompt_only", out=tmp_path / "q").format == "prompts"
    result = runner.invoke(app, ["ingest", str(repo), "--subset", "nope", "-o", str(tmp_path / "r")])
    assert result.exit_code == 2 and "no subset 'nope'; README.md lists: standard_preference, standard_prompt_only" in (
        result.output
    )


def test_glob(tmp_path):
    _write(tmp_path / "d" / "train-a.jsonl", [_pair(0)])
    _write(tmp_path / "d" / "train-b.jsonl", [_pair(1)])
    _write(tmp_path / "d" / "test.jsonl", [_pair(2)])
    _write(tmp_path / "d" / "other.csv", [_pair(3)])
    summary = ingest(str(tmp_path / "d" / "*.jsonl"), out=tmp_path / "o")
    assert (summary.split, summary.rows_written) == ("train", 2)
    assert ingest(str(tmp_path / "d" / "t*.jsonl"), split="test", out=tmp_path / "t").rows_written == 1
    with pytest.raises(PipelineInputError, match=r"\*.parquet: the glob matches no"):
        ingest(str(tmp_path / "d" / "*.parquet"), out=tmp_path / "n")


def test_arrow_files_and_save_to_disk_folders(tmp_path):
    import datasets

    table = pa.Table.from_pylist(ROWS)
    stream = tmp_path / "d.arrow"
    with pa.ipc.new_stream(stream, table.schema) as writer:  # the IPC stream format datasets writes
        writer.write_table(table)
    assert ingest(stream, out=tmp_path / "a").rows_written == 3
    saved = tmp_path / "saved"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS[:2]), "test": datasets.Dataset.from_list(ROWS[2:])}
    ).save_to_disk(str(saved))
    summary = ingest(saved, out=tmp_path / "s")
    assert (summary.split, summary.rows_written) == ("train", 2)
    assert ingest(saved, split="test", out=tmp_path / "st").rows_written == 1
    broken = tmp_path / "broken.arrow"
    broken.write_bytes(stream.read_bytes()[:-40])
    result = runner.invoke(app, ["ingest", str(broken), "-o", str(tmp_path / "b")])
    assert result.exit_code == 2 and "broken.arrow" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "b").exists()


def test_datasets_objects(tmp_path):
    """A Dataset passed from Python used to be turned into a string and sent to the Hub."""
    import datasets

    dataset = datasets.Dataset.from_list(ROWS)
    out = tmp_path / "o"
    summary = ingest(dataset, out=out)
    assert summary.rows_written == 3 and {r["source"] for r in rows_by_id(out).values()} == {"dataset:train"}
    assert ingest(dataset, out=out).units_written == 0  # same fingerprint: complete
    with pytest.raises(OutputConflictError, match="inputs differ"):
        ingest(dataset.select([0, 1]), out=out)
    both = datasets.DatasetDict({"train": dataset.select([0]), "test": dataset.select([1, 2])})
    assert ingest(both, split="test", out=tmp_path / "t").rows_written == 2
    with pytest.raises(PipelineInputError, match=r"no split 'dev'; splits found: train, test"):
        ingest(both, split="dev", out=tmp_path / "d")
    with pytest.raises(PipelineConfigError, match="--subset and --revision"):
        ingest(dataset, revision="main", out=tmp_path / "r")


def test_iterable_dataset_is_identified_by_its_rows(tmp_path):
    import datasets

    def rows(n):
        return datasets.Dataset.from_list(ROWS[:n]).to_iterable_dataset()

    out = tmp_path / "o"
    assert ingest(rows(3), out=out).rows_written == 3
    assert ingest(rows(3), out=out).units_written == 0
    with pytest.raises(OutputConflictError, match="inputs differ"):
        ingest(rows(2), out=out)
    bad = datasets.Dataset.from_list([{"prompt": "p", "chosen": "same", "rejected": "same"}]).to_iterable_dataset()
    with pytest.raises(PipelineInputError, match="chosen_equals_rejected: 1 row"):
        ingest(bad, out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_url_sources_through_fsspec(tmp_path):
    memory = fsspec.filesystem("memory")
    memory.pipe("/prefpool-test/data/train-00000-of-00001.jsonl", jsonl(ROWS[:2]))
    memory.pipe("/prefpool-test/data/test-00000-of-00001.jsonl.gz", gzip.compress(jsonl(ROWS[2:])))
    try:
        summary = ingest("memory://prefpool-test", out=tmp_path / "o")
        assert (summary.split, summary.rows_written) == ("train", 2)
        one = ingest("memory://prefpool-test/data/test-00000-of-00001.jsonl.gz", out=tmp_path / "t")
        assert one.rows_written == 1
    finally:
        memory.rm("/prefpool-test", recursive=True)


def test_missing_paths_and_misplaced_hub_flags(tmp_path, fixtures):
    result = runner.invoke(app, ["ingest", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "nope.jsonl: no such file or folder" in result.output
    result = runner.invoke(app, ["ingest", str(fixtures / "prompts.jsonl"), "--revision", "v1", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "--revision applies to Hub dataset ids" in result.output
    with pytest.raises(PipelineConfigError, match="--subset applies to Hub dataset ids and folders"):
        ingest(fixtures / "prompts.jsonl", subset="x", out=tmp_path / "o")
    with pytest.raises(PipelineInputError, match="no subset 'x': the folder has no README.md listing configs"):
        ingest(fixtures, subset="x", format="prompts", out=tmp_path / "o")
    with pytest.raises(PipelineInputError, match=r"no split 'test'; splits found: train"):
        ingest(fixtures / "prompts.jsonl", split="test", out=tmp_path / "o")
    with pytest.raises(PipelineConfigError, match="source must be a path"):
        ingest(42, out=tmp_path / "o")


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """datasets' Hub entry points, pointed at a local dataset repository (no network): the real builder,
    download_and_prepare and as_dataset run on it; the calls are recorded."""
    import datasets

    repo = tmp_path / "hub-repo"
    _write(repo / "harmless" / "train-00000-of-00001.jsonl", [_pair(0), _pair(1)])
    _write(repo / "harmless" / "test-00000-of-00001.jsonl", [_pair(2)])
    _write(repo / "helpful" / "train-00000-of-00001.jsonl", [_pair(3)])
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: harmless\n  default: true\n  data_files:\n"
        "  - split: train\n    path: harmless/train-*\n  - split: test\n    path: harmless/test-*\n"
        "- config_name: helpful\n  data_files:\n  - split: train\n    path: helpful/train-*\n---\n"
    )
    calls = []
    real_builder, real_names, real_default = (
        datasets.load_dataset_builder,
        datasets.get_dataset_config_names,
        datasets.get_dataset_default_config_name,
    )

    def local(path):
        assert path == "someone/hh-like"
        return str(repo)

    def builder(path, name=None, revision=None):
        calls.append(("builder", path, name, revision))
        return real_builder(local(path), name=name, cache_dir=str(tmp_path / "cache"))

    monkeypatch.setattr(datasets, "load_dataset_builder", builder)
    monkeypatch.setattr(datasets, "get_dataset_config_names", lambda path, revision=None: real_names(local(path)))
    monkeypatch.setattr(
        datasets, "get_dataset_default_config_name", lambda path, revision=None: real_default(local(path))
    )
    return calls


def test_hub_id_with_subset_split_and_revision(tmp_path, fake_hub):
    out = tmp_path / "o"
    summary = ingest("someone/hh-like", out=out)
    assert (summary.split, summary.rows_written) == ("train", 2)
    assert fake_hub == [("builder", "someone/hh-like", "harmless", None)]
    assert {r["source"] for r in rows_by_id(out).values()} == {"someone/hh-like:harmless:train"}
    test = ingest("someone/hh-like", split="test", revision="v2", out=tmp_path / "t")
    assert test.rows_written == 1 and fake_hub[-1] == ("builder", "someone/hh-like", "harmless", "v2")
    assert {r["source"] for r in rows_by_id(tmp_path / "t").values()} == {"someone/hh-like@v2:harmless:test"}
    assert ingest("someone/hh-like", subset="helpful", out=tmp_path / "h").rows_written == 1
    with pytest.raises(
        PipelineInputError, match=r"someone/hh-like: no subset 'nope'; the dataset has: harmless, helpful"
    ):
        ingest("someone/hh-like", subset="nope", out=tmp_path / "n")
    with pytest.raises(PipelineInputError, match=r"someone/hh-like: no split 'dev'; splits found: train, test"):
        ingest("someone/hh-like", split="dev", out=tmp_path / "d")


def _offline_ingest(tmp_path: Path, repo_id: str, out: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"),
    }
    command = [sys.executable, "-m", "prefpool", "ingest", repo_id, "-o", str(out)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def _cache_like_a_download(tmp_path: Path, namespace: str, name: str, splits: dict[str, list[dict]]) -> None:
    """What `load_dataset("namespace/name")` leaves in the datasets cache, made from a local folder."""
    import datasets

    folder = tmp_path / f"{namespace}___{name}"  # the cache folder name of a Hub id
    for split, rows in splits.items():
        _write(folder / "data" / f"{split}-00000-of-00001.jsonl", rows)
    builder = datasets.load_dataset_builder(str(folder), cache_dir=str(tmp_path / "datasets-cache"))
    builder.download_and_prepare()
    for split in splits:  # the Hub id's files are named after its dataset name
        Path(builder.cache_dir, f"{folder.name}-{split}.arrow").rename(Path(builder.cache_dir, f"{name}-{split}.arrow"))


def test_hub_id_offline_needs_a_local_cache(tmp_path):
    """With HF_HUB_OFFLINE=1: nothing cached is exit 2 with a message saying what is needed, no traceback;
    a cached copy is read."""
    done = _offline_ingest(tmp_path, "someone/not-cached", tmp_path / "o")
    assert done.returncode == 2, done.stderr
    assert "error: someone/not-cached is not a local file, folder or glob" in done.stderr
    assert "it needs the network or a local cache (HF_HUB_OFFLINE is set" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "o").exists()
    _cache_like_a_download(tmp_path, "someone", "cached", {"train": [_pair(0), _pair(1)], "test": [_pair(2)]})
    cached = _offline_ingest(tmp_path, "someone/cached", tmp_path / "c")
    assert cached.returncode == 0, cached.stderr
    assert cached.stdout.startswith("ingest: 2 rows") and "format=pairwise split=train" in cached.stdout
    assert {r["source"] for r in rows_by_id(tmp_path / "c").values()} == {"someone/cached:default:train"}


def test_reading_errors_keep_an_earlier_output(tmp_path, fixtures):
    out = tmp_path / "out"
    ingest(fixtures / "pairwise_strings.jsonl", out=out)
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(jsonl(ROWS) + b"\xff\n")
    with pytest.raises(PipelineInputError, match="line 4: not UTF-8"):
        ingest(bad, out=out, overwrite=True)
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.glob(".out.*"))  # the staging folder of the failed run is gone
    assert read_table(out).num_rows == len(rows_by_id(out))
