"""push: the dry-run Hub folder loads with `datasets`, its card matches the schema, no token leaks."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner
from datasets import Features, load_dataset
from test_build_helpers import candidates_row, example, logprob_rows, rows_of, write_rows

from prefpool.cli import app
from prefpool.pipeline import push as push_module
from prefpool.pipeline.build import build
from prefpool.pipeline.io.card import features_yaml
from prefpool.pipeline.io.schemas import SCHEMAS
from prefpool.pipeline.push import push

TOKEN = "secret-test-token"


@pytest.fixture
def table(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    examples = [example(f"q{i}", [(f"a{i}", 0.9, 1), (f"b{i} b", 0.5, 2), (f"c{i} c c", 0.1, 3)]) for i in range(5)]
    cands = [candidates_row(ex, ["s1", "s2"]) for ex in examples]
    ex = write_rows(tmp_path / "ex", "examples", examples, stage="ingest")
    ca = write_rows(tmp_path / "ca", "candidates", cands, stage="generate")
    lp = write_rows(tmp_path / "lp", "logprobs", logprob_rows(examples, cands), stage="logprobs")
    return {
        kind: build(
            kind,
            examples=ex,
            logprobs=lp,
            candidates=None if kind == "pairwise" else ca,
            out=tmp_path / kind,
            rows_per_unit=4,
        ).out
        for kind in ("pairwise", "mcpo", "mpo")
    }


def _front_matter(readme: str) -> dict:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n")[1])


@pytest.mark.parametrize("kind", ["pairwise", "mcpo", "mpo"])
def test_dry_run_folder_loads_and_card_matches_schema(tmp_path, table, kind):
    out = tmp_path / f"hub-{kind}"
    summary = push(table[kind], repo_id="me/prefs", dry_run=True, out=out, license="mit")
    assert not summary.uploaded and len(summary.files) > 1  # one data file per source shard
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        f"train-{i:05d}-of-{len(summary.files):05d}.parquet" for i in range(len(summary.files))
    ]
    loaded = load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train")
    assert loaded.to_list() == rows_of(table[kind])
    assert load_dataset(str(out), split="train").to_list() == rows_of(table[kind])

    meta = _front_matter((out / "README.md").read_text())
    assert meta["license"] == "mit"
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    features = meta["dataset_info"]["features"]
    assert [f["name"] for f in features] == SCHEMAS[kind].names
    # our converter agrees with the datasets library's own, and parses back to the file's features
    assert features == features_yaml(SCHEMAS[kind]) == Features.from_arrow_schema(SCHEMAS[kind])._to_yaml_list()
    assert Features._from_yaml_list(features) == loaded.features


def test_card_names_every_stage_and_no_file_holds_the_token(tmp_path, table):
    out = tmp_path / "hub"
    push(table["mpo"], repo_id="me/prefs", dry_run=True, out=out)
    readme = (out / "README.md").read_text()
    for stage in ("`build` (this table", "`ingest` (examples", "`generate` (candidates", "`logprobs` (logprobs[0]"):
        assert stage in readme
    for path in out.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_upload_calls_the_hub_api_without_passing_a_token(tmp_path, table, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, *args, **kwargs):
            calls.append(("init", args, kwargs))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            folder = kwargs["folder_path"]
            calls.append(("upload_folder", sorted(p.name for p in __import__("pathlib").Path(folder).rglob("*"))))
            calls.append(("upload_kwargs", {k: v for k, v in kwargs.items() if k != "folder_path"}))

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    summary = push_module.push(table["pairwise"], repo_id="me/prefs", private=True)
    assert summary.uploaded
    assert calls[0] == ("init", (), {})
    assert calls[1] == ("create_repo", "me/prefs", {"repo_type": "dataset", "private": True, "exist_ok": True})
    assert "README.md" in calls[2][1] and any(n.startswith("train-00000-of-") for n in calls[2][1])
    assert calls[3][1]["repo_type"] == "dataset" and "token" not in calls[3][1]


def test_cli_push_dry_run(tmp_path, table):
    result = CliRunner().invoke(
        app, ["push", str(table["mcpo"]), "--repo-id", "me/x", "--dry-run", "--out", str(tmp_path / "h")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "h" / "README.md").exists() and TOKEN not in result.output
    no_out = CliRunner().invoke(app, ["push", str(table["mcpo"]), "--repo-id", "me/x", "--dry-run"])
    assert no_out.exit_code == 2 and "needs --out" in no_out.output
