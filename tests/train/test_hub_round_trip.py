"""The Hub round trip, offline: build -> push --dry-run (train and test) -> datasets -> train / eval.

The tables are the real pipeline's (ingest -> logprobs -> build on a tiny model, ``world``). A
pushed folder, and the same folder as a Hub dataset in a local Hugging Face cache (the layout
``huggingface_hub`` writes, read by its own ``snapshot_download`` with ``HF_HUB_OFFLINE=1``),
train exactly as the build folder they were pushed from: same rows, same cache checks, same
per-step losses. Before: `prefpool train`/`eval` read only build folders (a manifest), so what
was shared could not be trained on.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml
from click.testing import CliRunner
from datasets import Features, load_dataset
from trainer_tables import MAX_LENGTH

from prefpool.cli import app
from prefpool.core.errors import MissingInputError
from prefpool.pipeline.build import build
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.kinds.source import open_table
from prefpool.pipeline.push import push
from prefpool.train.config import TrainConfig
from prefpool.train.evaluate import evaluate
from prefpool.train.trainer import train

torch.set_num_threads(1)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    hub = tmp_path / "hf-hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))  # read at import
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    return hub


@pytest.fixture
def pushed(world, tmp_path, offline):
    """train = the pairwise table, test = a build of half its prompts; both pushed to one folder."""
    half = build(
        "pairwise",
        examples=world["root"] / "data" / "examples",
        logprobs=world["root"] / "data" / "lp-examples",
        out=tmp_path / "held-out",
        shard="0/2",
    ).out
    out = tmp_path / "hub-folder"
    push(world["pairwise"], repo_id="me/prefs", dry_run=True, out=out, license="mit", language=["en"])
    push(half, split="test", repo_id="me/prefs", dry_run=True, out=out)
    return out, half


def _in_hub_cache(folder, hub, repo_id="me/prefs"):
    """``folder`` as ``huggingface_hub`` caches a dataset repo snapshot (refs/main -> snapshots/<commit>)."""
    repo = hub / f"datasets--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)


def _cfg(world, data, out, **kw) -> TrainConfig:
    base = dict(
        model=str(world["model"]),
        data=str(data),
        output_dir=str(out),
        loss="dpo",
        max_length=MAX_LENGTH,
        lr=1e-3,
        beta=0.5,
        batch_size=4,
        max_steps=2,
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


def test_pushed_splits_load_with_the_cards_features(pushed):
    out, half = pushed
    loaded = load_dataset(str(out))
    assert sorted(loaded) == ["test", "train"]
    meta = yaml.safe_load((out / "README.md").read_text().split("---\n")[1])
    features = Features._from_yaml_list(meta["dataset_info"]["features"])
    assert loaded["train"].features == loaded["test"].features == features
    assert loaded["test"].to_list() == read_table(half).to_pylist()
    entry = meta["prefpool"]["splits"]["train"]
    assert entry["reference_cache"]["max_length"] == MAX_LENGTH and len(entry["cache_key"]) == 32
    assert meta["size_categories"] == ["n<1K"] and meta["license"] == "mit" and meta["language"] == ["en"]


def test_train_on_the_pushed_folder_equals_train_on_the_build_folder(world, pushed, tmp_path):
    out, _ = pushed
    direct = train(_cfg(world, world["pairwise"], tmp_path / "direct"))
    shared = train(_cfg(world, out, tmp_path / "shared", data_split="train"))
    assert shared["rows"] == direct["rows"] and shared["losses"] == direct["losses"]
    assert shared["step0_max_abs_diff"] is not None and shared["step0_max_abs_diff"] < 1e-4
    card = (tmp_path / "shared" / "README.md").read_text()
    assert f"`{out.name} (split train)`" in card  # by name: a card publishes no local path
    assert str(tmp_path) not in card and str(world["model"]) not in card
    assert f"`{Path(world['model']).name}` (weights sha256 `" in card and "base_model" not in card


def test_train_and_eval_on_a_hub_id_from_the_local_cache(world, pushed, tmp_path, offline):
    out, half = pushed
    _in_hub_cache(out, offline)
    table = open_table("me/prefs", split="test")
    assert (table.kind, table.rows) == ("pairwise", read_table(half).num_rows)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(_cfg(world, "me/prefs", tmp_path / "hub-run").__dict__))
    result = CliRunner().invoke(app, ["train", str(config), "--progress"])
    assert result.exit_code == 0, result.output
    assert f"train: reading me/prefs, loading {world['model']}; progress follows\n" in result.output
    # the final loss with 4 decimals (not float's 17 digits), the step-0 diff with 3 significant ones
    assert re.search(
        r"train: \d+ steps, final loss -?\d+\.\d{4}, step-0 diff [-+.e\d]{1,9} nats -> ", result.output, re.M
    )
    # eval defaults to the test split; the same metrics as on the build folder it was pushed from
    from_hub = evaluate(world["model"], "me/prefs", device="cpu")
    from_folder = evaluate(world["model"], half, device="cpu")
    assert from_hub["ranking"] == from_folder["ranking"] and from_hub["data"] == "me/prefs (split test)"


def test_hub_id_not_in_the_cache_and_bad_splits_are_clear_errors(world, pushed, tmp_path, offline):
    out, _ = pushed
    with pytest.raises(MissingInputError, match="not \\(completely\\) in the local Hugging Face cache"):
        open_table("me/not-there")
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(_cfg(world, "me/not-there", tmp_path / "r").__dict__))
    result = CliRunner().invoke(app, ["train", str(config)])
    assert result.exit_code == 2 and "huggingface-cli download --repo-type dataset me/not-there" in result.output
    result = CliRunner().invoke(app, ["train", str(config), f"data={out}", "data_split=validation"])
    assert result.exit_code == 2 and "has the splits train, test" in result.output
    result = CliRunner().invoke(app, ["train", str(config), f"data={world['pairwise']}", "data_split=test"])
    assert result.exit_code == 2 and "a build output folder (one table, no splits)" in result.output
    result = CliRunner().invoke(app, ["train", str(config), "data=not a folder or id"])
    assert result.exit_code == 2 and "nor a Hub dataset id" in result.output
    result = CliRunner().invoke(app, ["eval", "--model", str(world["model"]), "--data", str(out), "--split", "dev"])
    assert result.exit_code == 2 and "split 'dev'" in result.output and "has the splits train, test" in result.output
