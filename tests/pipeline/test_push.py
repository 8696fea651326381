"""push: splits of one repo with one card that loads with `datasets`, matches the schema, carries the
source's licence and ids, keeps the splits already pushed; bad options fail with exit 2; no token leaks.

Before (the failures of issue 13): a push wrote one split per card, without task_categories,
language, size_categories or the source's licence, and a second push (another split) into the
same folder was refused, on the Hub it replaced the card and so hid the first split.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from datasets import Features, load_dataset
from test_build_helpers import candidates_row, example, logprob_rows, rows_of, write_rows

from prefpool.cli import app
from prefpool.pipeline import push as push_module
from prefpool.pipeline.build import build
from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.io.card import features_yaml, read_card
from prefpool.pipeline.io.errors import OutputConflictError, PipelineConfigError
from prefpool.pipeline.io.schemas import get_schema
from prefpool.pipeline.push import push

TOKEN = "secret-test-token"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def table(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    examples = [example(f"q{i}", [(f"a{i}", 0.9, 1), (f"b{i} b", 0.5, 2), (f"c{i} c c", 0.1, 3)]) for i in range(5)]
    held_out = [example(f"t{i}", [(f"x{i}", 0.9, 1), (f"y{i} y", 0.5, 2)]) for i in range(3)]
    cands = [candidates_row(ex, ["s1", "s2"]) for ex in examples + held_out]
    ex = write_rows(tmp_path / "ex", "examples", examples, stage="ingest")
    ex_test = write_rows(tmp_path / "ex-test", "examples", held_out, stage="ingest")
    ca = write_rows(tmp_path / "ca", "candidates", cands, stage="generate")
    lp = write_rows(tmp_path / "lp", "logprobs", logprob_rows(examples + held_out, cands), stage="logprobs")
    tables = {
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
    tables["pairwise-test"] = build("pairwise", examples=ex_test, logprobs=lp, out=tmp_path / "pairwise-test").out
    return tables


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
    assert meta["task_categories"] == ["text-generation"] and meta["size_categories"] == ["n<1K"]
    features = meta["dataset_info"]["features"]
    assert [f["name"] for f in features] == get_schema(kind).names
    # our converter agrees with the datasets library's own, and parses back to the file's features
    assert features == features_yaml(get_schema(kind)) == Features.from_arrow_schema(get_schema(kind))._to_yaml_list()
    assert Features._from_yaml_list(features) == loaded.features
    assert meta["prefpool"]["table_kind"] == kind and meta["prefpool"]["splits"]["train"]["rows"] == loaded.num_rows


def test_two_splits_in_one_card_and_a_second_push_keeps_the_first(tmp_path, table):
    out = tmp_path / "hub"
    first = push(table["pairwise"], repo_id="me/prefs", dry_run=True, out=out, language=["en"], pretty_name="P")
    assert first.splits == ("train",)
    second = push(table["pairwise-test"], split="test", repo_id="me/prefs", dry_run=True, out=out)
    assert (second.splits, second.pushed) == (("train", "test"), ("test",))
    loaded = load_dataset(str(out))
    assert sorted(loaded) == ["test", "train"]
    assert loaded["train"].to_list() == rows_of(table["pairwise"])
    assert loaded["test"].to_list() == rows_of(table["pairwise-test"])
    meta = _front_matter((out / "README.md").read_text())
    assert Features._from_yaml_list(meta["dataset_info"]["features"]) == loaded["test"].features
    assert [s["name"] for s in meta["dataset_info"]["splits"]] == ["train", "test"]
    assert meta["configs"][0]["data_files"] == [
        {"split": "train", "path": "data/train-*"},
        {"split": "test", "path": "data/test-*"},
    ]
    assert meta["language"] == ["en"] and meta["pretty_name"] == "P"  # kept from the first push
    # train from another source: refused unless overwrite (the folder as it was), then it replaces train only
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(OutputConflictError, match=r"another source or other settings \(split train\).*--overwrite"):
        push(table["pairwise-test"], split="train", repo_id="me/prefs", dry_run=True, out=out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    again = push(table["pairwise-test"], split="train", repo_id="me/prefs", dry_run=True, out=out, overwrite=True)
    assert again.splits == ("train", "test")
    reloaded = load_dataset(str(out))
    assert reloaded["train"].to_list() == reloaded["test"].to_list() == rows_of(table["pairwise-test"])
    # both splits at once, into a new folder
    both = push(
        [table["pairwise"], table["pairwise-test"]],
        split=["train", "test"],
        repo_id="me/prefs",
        dry_run=True,
        out=tmp_path / "both",
    )
    assert both.splits == ("train", "test") and both.rows == len(rows_of(table["pairwise"])) + 3 == 10 + 3
    assert load_dataset(str(tmp_path / "both"))["test"].num_rows == 3


def test_source_licence_ids_and_language_come_from_ingest(tmp_path, table):
    """Declared at ingest (the source's licence and Hub id, the language), carried through build into the card."""
    src = tmp_path / "pairs.jsonl"
    src.write_text(
        "".join(json.dumps({"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"}) + "\n" for i in range(4))
    )
    ex = ingest(
        src,
        format="pairwise",
        out=tmp_path / "ingest",
        source_dataset="HuggingFaceH4/ultrafeedback_binarized",
        license="mit",
        language=["en"],
    ).out
    rows = rows_of(ex)
    lp = write_rows(tmp_path / "lp2", "logprobs", logprob_rows(rows), stage="logprobs")
    built = build("pairwise", examples=ex, logprobs=lp, out=tmp_path / "b").out
    out = tmp_path / "hub"
    push(built, repo_id="me/uf", dry_run=True, out=out, tags=["dpo"], task_categories=["text-generation"])
    meta = _front_matter((out / "README.md").read_text())
    assert meta["license"] == "mit"
    assert meta["source_datasets"] == ["HuggingFaceH4/ultrafeedback_binarized"]
    assert meta["language"] == ["en"] and meta["tags"] == ["dpo"]
    entry = meta["prefpool"]["splits"]["train"]
    assert entry["rows"] == len(rows) and entry["stages"][0]["stage"] == "build"
    (ingest_node,) = [node for node in entry["stages"] if node["stage"] == "ingest"]
    assert ingest_node["config"]["license"] == "mit" and ingest_node["config"]["language"] == ["en"]
    # a flag wins over what ingest recorded
    push(built, repo_id="me/uf", dry_run=True, out=tmp_path / "hub2", license="cc-by-4.0")
    assert _front_matter((tmp_path / "hub2" / "README.md").read_text())["license"] == "cc-by-4.0"
    # nothing recorded, nothing given: the card says unknown, and the body says so
    push(table["mcpo"], repo_id="me/uf", dry_run=True, out=tmp_path / "hub3")
    readme = (tmp_path / "hub3" / "README.md").read_text()
    assert _front_matter(readme)["license"] == "unknown" and "not recorded, check the source's terms" in readme


def test_card_names_every_stage_and_no_file_holds_the_token(tmp_path, table):
    out = tmp_path / "hub"
    push(table["mpo"], repo_id="me/prefs", dry_run=True, out=out)
    readme = (out / "README.md").read_text()
    for stage in ("`build` (this table", "`ingest` (examples", "`generate` (candidates", "`logprobs` (logprobs[0]"):
        assert stage in readme
    for path in out.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


class FakeApi:
    """huggingface_hub.HfApi's calls push makes, recorded; ``card`` is the README already in the repo."""

    calls: list = []
    card: Path | None = None

    def __init__(self, *args, **kwargs):
        self.calls.append(("init", args, kwargs))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def hf_hub_download(self, **kwargs):
        from huggingface_hub.errors import RemoteEntryNotFoundError
        from huggingface_hub.utils._http import httpx2

        self.calls.append(("hf_hub_download", kwargs))
        if self.card is None:  # what the Hub answers for a repo without a README
            url = f"https://huggingface.co/datasets/{kwargs['repo_id']}/resolve/main/README.md"
            response = httpx2.Response(404, request=httpx2.Request("GET", url))
            raise RemoteEntryNotFoundError("404 Client Error: Entry not found", response=response)
        shutil.copy(self.card, Path(kwargs["local_dir"]) / "README.md")

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        self.calls.append(("upload_folder", sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))))
        self.calls.append(("upload_kwargs", {k: v for k, v in kwargs.items() if k != "folder_path"}))
        self.calls.append(("card", read_card(folder)))


def test_upload_reads_the_repo_card_and_keeps_its_splits(tmp_path, table, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    FakeApi.calls, FakeApi.card = [], None
    summary = push_module.push(table["pairwise"], repo_id="me/prefs", private=True)
    assert summary.uploaded and summary.splits == ("train",)
    calls = dict((c[0], c[1:]) for c in FakeApi.calls)
    assert calls["init"] == ((), {})
    assert calls["create_repo"] == ("me/prefs", {"repo_type": "dataset", "private": True, "exist_ok": True})
    assert "README.md" in calls["upload_folder"][0] and "data/train-00000-of-00003.parquet" in calls["upload_folder"][0]
    kwargs = calls["upload_kwargs"][0]
    assert kwargs["repo_type"] == "dataset" and "token" not in kwargs and kwargs["delete_patterns"] == ["data/train-*"]
    # the Hub now holds that card; pushing the test split keeps train in the card and deletes only test files
    first_card = tmp_path / "remote-README.md"
    push(table["pairwise"], repo_id="me/prefs", dry_run=True, out=tmp_path / "as-pushed")
    shutil.copy(tmp_path / "as-pushed" / "README.md", first_card)
    FakeApi.calls, FakeApi.card = [], first_card
    second = push_module.push(table["pairwise-test"], split="test", repo_id="me/prefs")
    calls = dict((c[0], c[1:]) for c in FakeApi.calls)
    assert second.splits == ("train", "test")
    assert calls["upload_kwargs"][0]["delete_patterns"] == ["data/test-*"]
    assert not any(p.startswith("data/train-") for p in calls["upload_folder"][0])  # train files stay remote
    card = calls["card"][0]
    assert list(card["prefpool"]["splits"]) == ["train", "test"]
    assert [d["split"] for d in card["configs"][0]["data_files"]] == ["train", "test"]


def test_cli_push_dry_run_tags_and_title(tmp_path, table):
    out = tmp_path / "h"
    result = CliRunner().invoke(
        app,
        [
            "push",
            str(table["mcpo"]),
            "--repo-id",
            "me/x",
            "--dry-run",
            "--out",
            str(out),
            "--tag",
            "mcpo",
            "--tag",
            "pools",
            "--pretty-name",
            "My pools",
            "--language",
            "en",
            "--task-category",
            "text-generation",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "split train" in result.output and TOKEN not in result.output
    meta = _front_matter((out / "README.md").read_text())
    assert (meta["tags"], meta["pretty_name"], meta["language"]) == (["mcpo", "pools"], "My pools", ["en"])
    no_out = CliRunner().invoke(app, ["push", str(table["mcpo"]), "--repo-id", "me/x", "--dry-run"])
    assert no_out.exit_code == 2 and "needs --out" in no_out.output


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--split", "train", "--split", "test"], "1 source folders but 2 --split names"),
        (["--split", "my-split"], "split: 'my-split' is not a split name"),
        (["--license", "MIT License"], "license: 'MIT License' is not a licence id"),
        (["--language", "English"], "language: 'English' is not an ISO 639 language code"),
        (["--task-category", "Text Generation"], "task_category: 'Text Generation' is not a Hub task category"),
        (["--tag", "x", "--repo-id", "me/bad--name"], "repo_id: 'me/bad--name' is not a valid Hub repo id"),
        (["--tag", " spaced "], "tag: ' spaced ' is not a tag"),
        (["--pretty-name", "two\nlines"], "pretty_name: 'two\\nlines' is not a title"),
        (["--pretty-name", ""], "pretty_name: '' is not a title"),
    ],
)
def test_bad_options_exit_2_with_the_option_named(tmp_path, table, args, match):
    base = ["push", str(table["pairwise"]), "--dry-run", "--out", str(tmp_path / "h")]
    if "--repo-id" not in args:
        base += ["--repo-id", "me/x"]
    result = CliRunner().invoke(app, base + args)
    assert result.exit_code == 2 and match in result.output, result.output
    assert not (tmp_path / "h").exists()  # nothing written


def test_refused_mixes_leave_the_folder_as_it_was(tmp_path, table):
    out = tmp_path / "hub"
    push(table["pairwise"], repo_id="me/prefs", dry_run=True, out=out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(PipelineConfigError, match="the repo holds 'pairwise' splits"):
        push(table["mcpo"], split="test", repo_id="me/prefs", dry_run=True, out=out)
    with pytest.raises(PipelineConfigError, match="different tables"):
        push([table["pairwise"], table["mcpo"]], split=["a", "b"], repo_id="me/p", dry_run=True, out=tmp_path / "n")
    with pytest.raises(PipelineConfigError, match="name their splits"):
        push([table["pairwise"], table["pairwise-test"]], repo_id="me/p", dry_run=True, out=tmp_path / "n")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    other = tmp_path / "notes"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(OutputConflictError, match="holds no folder `prefpool push` wrote"):
        push(table["pairwise"], repo_id="me/prefs", dry_run=True, out=other)
    assert (other / "notes.txt").read_text() == "mine"


def test_the_card_templates_are_package_data():
    """The templates in the top-level data_cards/ are found through importlib.resources (not a path
    into the source tree), so the wheel must hold them: pyproject lists them as package data."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"]["prefpool.data_cards"] == "data_cards"
    assert "*.md" in config["package-data"]["prefpool.data_cards"]
    for name in ("dataset_card.md", "model_card.md"):
        assert (REPO / "data_cards" / name).is_file()


def test_a_built_wheel_holds_the_card_templates_and_reads_them_installed(tmp_path):
    """Build the wheel, unpack it as an install would, and read both templates through
    importlib.resources in a fresh interpreter that sees only the unpacked wheel (``-S``: no
    site-packages, so not this checkout's editable install)."""
    try:
        version = tuple(int(x) for x in metadata.version("setuptools").split(".")[:2])
    except metadata.PackageNotFoundError:
        pytest.skip("no setuptools to build a wheel with")
    if version < (77, 0):
        pytest.skip(f"setuptools {version} here; the project's license field needs >= 77 to build")
    tree = tmp_path / "src"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, tree / name)
    for folder in ("prefpool", "losses", "pipeline", "train", "data_cards"):
        shutil.copytree(REPO / folder, tree / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(tree),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("prefpool-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"prefpool/data_cards/dataset_card.md", "prefpool/data_cards/model_card.md"} <= set(names)
    installed = tmp_path / "installed"
    zipfile.ZipFile(wheel).extractall(installed)
    code = (
        "import json, importlib.resources as r, prefpool.data_cards as d\n"
        "print(json.dumps({n: r.files('prefpool.data_cards').joinpath(n).read_text(encoding='utf-8') "
        "for n in ('dataset_card.md', 'model_card.md')} | {'at': d.__file__}))"
    )
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code],
        env={"PYTHONPATH": str(installed)},
        cwd=installed,  # not the repository, whose prefpool/ source folder would be found first
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    read = json.loads(proc.stdout)
    assert read.pop("at").startswith(str(installed))
    assert read == {n: (REPO / "data_cards" / n).read_text(encoding="utf-8") for n in read}


def test_the_card_publishes_no_local_path(tmp_path, monkeypatch):
    """Ingest from an absolute path, log-probs from a local model folder, build, push: the card names the input
    file and the model by name (the model also by weights hash), never by where they lie."""
    from prefpool.pipeline.logprobs import logprobs
    from prefpool.testing import build_tiny_llama

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    private = tmp_path / "private"
    model = build_tiny_llama(private / "tiny-model")
    src = private / "prefs.jsonl"
    src.write_text("".join(f'{{"prompt": "q{i}", "chosen": "good {i}", "rejected": "bad"}}\n' for i in range(3)))
    ex = ingest(src.resolve(), out=tmp_path / "ex").out
    lp = logprobs(ex, model=model.resolve(), out=tmp_path / "lp", show_progress=False).out
    table = build("pairwise", examples=ex, logprobs=lp, out=tmp_path / "pw").out
    push(table, repo_id="me/prefs", dry_run=True, out=tmp_path / "hub")
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "prefs.jsonl" in card and "tiny-model" in card
    assert str(tmp_path) not in card and "/private/" not in card
    assert read_card(tmp_path / "hub")["prefpool"]["splits"]["train"]["rows"] == 3  # the front matter reads back


def test_public_text_cuts_absolute_paths_to_names_and_keeps_urls_and_relative_paths():
    from prefpool.pipeline.io.card import public_text

    text = 'source: /home/me/d/uf.jsonl; `{"given": "~/m/S.gguf"}` https://hf.co/datasets/a/b data/train-* 1/2 a / b'
    assert (
        public_text(text) == 'source: uf.jsonl; `{"given": "S.gguf"}` https://hf.co/datasets/a/b data/train-* 1/2 a / b'
    )
