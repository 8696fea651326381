"""Every path read from a file stays inside its folder: manifest shards and sidecars, a card's data_files,
a pushed card's split names. Each case plants the entry an adversary would and checks that nothing
outside the folder is read or written."""

from __future__ import annotations

import json
import shutil

import pytest

from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.io.errors import PipelineInputError
from prefpool.pipeline.io.layout import MANIFEST, meta_path
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.merge import merge

pytestmark = pytest.mark.filterwarnings("ignore::prefpool.pipeline.formats.report.DroppedRowsWarning")


def _edit_manifest(folder, change):
    path = meta_path(folder, MANIFEST)
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


@pytest.fixture
def shard_runs(tmp_path, fixtures):
    parts = [tmp_path / "slices" / f"slice{i}" for i in range(2)]
    for i, part in enumerate(parts):
        ingest(fixtures / "pairwise_strings.jsonl", format="pairwise", out=part, shard=f"{i}/2")
    return parts


def test_merge_never_writes_a_sidecar_outside_out(tmp_path, shard_runs):
    victim = tmp_path / "victim" / "settings.json"
    victim.parent.mkdir()
    victim.write_text('{"mine": true}')
    for part in shard_runs:
        (part / ".prefpool" / "settings.json").write_text('{"planted": 1}')
        _edit_manifest(part, lambda m: m["sidecars"].append("../../victim/settings.json"))
    out = tmp_path / "slices" / "merged"
    with pytest.raises(PipelineInputError, match=r"manifest\.json.*sidecars.*may list only report\.json"):
        merge(shard_runs, out)
    assert victim.read_text() == '{"mine": true}'
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slices", "victim"]


def test_a_shard_listed_outside_the_folder_is_not_read(tmp_path, fixtures):
    out = tmp_path / "out"
    ingest(fixtures / "pairwise_strings.jsonl", format="pairwise", out=out)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shard = next(out.glob("part-*.parquet"))
    shutil.copy(shard, elsewhere / shard.name)
    _edit_manifest(out, lambda m: m["shards"][0].update(file=f"../elsewhere/{shard.name}"))
    with pytest.raises(PipelineInputError, match=r"manifest\.json.*shard '\.\./elsewhere/part-.*not a shard file name"):
        read_table(out)
    _edit_manifest(out, lambda m: m["shards"][0].update(file=str(elsewhere / shard.name)))
    with pytest.raises(PipelineInputError, match=r"not a shard file name"):
        read_table(out)


def test_a_shard_that_links_outside_the_folder_is_not_read(tmp_path, fixtures):
    out = tmp_path / "out"
    ingest(fixtures / "pairwise_strings.jsonl", format="pairwise", out=out)
    shard = next(out.glob("part-*.parquet"))
    moved = tmp_path / "elsewhere.parquet"
    shutil.move(shard, moved)
    shard.symlink_to(moved)
    with pytest.raises(PipelineInputError, match=r"shard 'part-.*outside .*symbolic link"):
        read_table(out)


def _hub_folder(tmp_path, data_files):
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "train.jsonl").write_text(json.dumps({"prompt": "in", "chosen": "a", "rejected": "b"}) + "\n")
    card = {"configs": [{"config_name": "default", "data_files": data_files}]}
    (repo / "README.md").write_text("---\n" + json.dumps(card) + "\n---\n# data\n")
    private = tmp_path / "private"
    private.mkdir()
    (private / "secret.jsonl").write_text(json.dumps({"prompt": "PRIVATE", "chosen": "a", "rejected": "b"}) + "\n")
    return repo, private


@pytest.mark.parametrize(
    "pattern",
    ["../private/*.jsonl", "ABSOLUTE", "data/../../private/secret.jsonl"],
    ids=["dotdot", "absolute", "inner-dotdot"],
)
def test_card_data_files_outside_the_folder_are_refused(tmp_path, pattern):
    pattern = str(tmp_path / "private" / "*.jsonl") if pattern == "ABSOLUTE" else pattern
    repo, _ = _hub_folder(tmp_path, [{"split": "train", "path": pattern}])
    out = tmp_path / "out"
    with pytest.raises(PipelineInputError, match=r"README\.md.*data_files.*outside|README\.md.*not a path inside"):
        ingest(repo, format="pairwise", out=out)
    assert not out.exists()


def test_card_data_files_inside_the_folder_still_work(tmp_path):
    repo, _ = _hub_folder(tmp_path, [{"split": "train", "path": "data/*.jsonl"}])
    summary = ingest(repo, format="pairwise", out=tmp_path / "out")
    assert summary.rows_written == 1


def test_a_pushed_card_split_outside_the_folder_is_refused(tmp_path, monkeypatch):
    import yaml
    from test_build_helpers import example, logprob_rows, write_rows

    from prefpool.pipeline.build import build
    from prefpool.pipeline.kinds.source import open_table
    from prefpool.pipeline.push import push

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    examples = [example(f"q{i}", [(f"a{i}", 0.9, 1), (f"b{i} b", 0.5, 2)]) for i in range(4)]
    ex = write_rows(tmp_path / "ex", "examples", examples, stage="ingest")
    lp = write_rows(tmp_path / "lp", "logprobs", logprob_rows(examples), stage="logprobs")
    table = build("pairwise", examples=ex, logprobs=lp, out=tmp_path / "pairwise").out
    pushed = tmp_path / "pushed"
    push(table, repo_id="me/prefs", dry_run=True, out=pushed)
    outside = tmp_path / "outside_tables"
    outside.mkdir()
    for file in (pushed / "data").glob("train-*.parquet"):
        shutil.copy(file, outside / file.name)
    card = (pushed / "README.md").read_text()
    front, body = card[4:].split("\n---\n", 1)
    meta = yaml.safe_load(front)
    meta["prefpool"]["splits"]["../../outside_tables/train"] = meta["prefpool"]["splits"].pop("train")
    (pushed / "README.md").write_text("---\n" + yaml.safe_dump(meta) + "---\n" + body)
    with pytest.raises(PipelineInputError, match=r"README\.md.*split '\.\./\.\./outside_tables/train'.*never a path"):
        open_table(pushed, split="../../outside_tables/train")
