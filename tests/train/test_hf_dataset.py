"""``table_dataset``: any build table as a ``datasets.Dataset`` in TRL's column names, with its cache recorded.

On the real pipeline's tables (``world``): every row equals the kind's decoded row, the features are
the kind's TRL schema, and the record of the reference cache survives the transforms a user applies.
"""

from __future__ import annotations

import pytest
from datasets import Features, load_from_disk

from prefpool.pipeline.kinds import KINDS
from prefpool.pipeline.kinds.hf import table_dataset, table_info
from prefpool.pipeline.kinds.source import open_table
from prefpool.pipeline.push import push
from prefpool.train.data import decoded_rows


@pytest.mark.parametrize("kind", ["pairwise", "mcpo", "mpo"])
def test_rows_in_trls_names(world, kind):
    ds = table_dataset(world[kind])
    rows = decoded_rows(world[kind], kind)
    assert ds.features == Features.from_arrow_schema(KINDS[kind].trl_schema)
    assert ds.num_rows == len(rows)
    for got, row in zip(ds, rows, strict=True):
        assert got["prompt"] == row.prompt
        assert got["chosen"] == [{"role": "assistant", "content": row.answers[0].text}]
        assert got["rejected"] == [{"role": "assistant", "content": row.answers[1].text}]
        assert (got["ref_chosen_logps"], got["ref_rejected_logps"]) == (
            row.answers[0].ref_logp,
            row.answers[1].ref_logp,
        )
        if kind == "mcpo":
            assert got["pool"] == [a.text for a in row.answers[1:]]
            assert got["ref_pool_logps"] == [a.ref_logp for a in row.answers[1:]]
        if kind == "mpo":
            assert (got["label"], got["ref_samples"]) == (row.label, list(row.samples))


def test_the_cache_record_survives_transforms_and_a_push(world, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ds = table_dataset(world["pairwise"])
    info = table_info(ds)
    assert info["kind"] == "pairwise" and info["caches"] == list(open_table(world["pairwise"]).caches)
    transformed = ds.map(lambda e: {"n": 1}).select(range(3)).shuffle(seed=0).train_test_split(test_size=1)["train"]
    assert table_info(transformed) == info
    ds.save_to_disk(tmp_path / "saved")
    assert table_info(load_from_disk(str(tmp_path / "saved"))) == info
    out = tmp_path / "hub"
    push(world["pairwise"], repo_id="me/p", dry_run=True, out=out)
    pushed = table_dataset(out)
    assert pushed.to_list() == ds.to_list() and table_info(pushed)["caches"] == info["caches"]
    assert table_info(pushed)["split"] == "train"
