"""Derived tables: what each transform keeps, and that `prefpool train` accepts them with its
cache-key check and its step-0 check over every row (a wrong reference log-prob fails it)."""

from __future__ import annotations

import pytest

from prefpool.controlled import derive
from prefpool.controlled.task import true_reward
from prefpool.pipeline.io.ids import completion_id
from prefpool.pipeline.io.read import read_table
from prefpool.train.config import TrainConfig
from prefpool.train.trainer import Step0MismatchError, Trainer

pytestmark = pytest.mark.xdist_group("controlled")


def _train_one_step(task_data, table, out, **kw):
    """One step with the whole table in the first batch: the step-0 check sees every row."""
    rows = read_table(table).num_rows
    cfg = TrainConfig(
        model=str(task_data.reference),
        data=str(table),
        output_dir=str(out),
        batch_size=rows,
        max_steps=1,
        lr=1e-4,
        progress=False,
        **kw,
    )
    trainer = Trainer(cfg)
    trainer.run()
    return trainer.step0_diff


def test_max_margin_keeps_the_lowest_true_reward_member(task_data, tmp_path, fresh_accelerate_state):
    source = {r["prompt_id"]: r for r in read_table(task_data.train_table).to_pylist()}
    out = derive.derive_table(
        task_data.train_table, tmp_path / "mm", kind="mcpo", name="max_margin", transform=derive.max_margin
    )
    rows = read_table(out).to_pylist()
    assert len(rows) == len(source)
    for row in rows:
        src = source[row["prompt_id"]]
        i = src["pool"].index(row["pool"][0])
        assert len(row["pool"]) == 1 and true_reward(row["pool"][0]) == min(map(true_reward, src["pool"]))
        assert row["ref_pool_logps"] == [src["ref_pool_logps"][i]]
    assert _train_one_step(task_data, out, tmp_path / "train", loss="mcpo", kernel="uniform") < 1e-4


def _generated(task_data) -> dict[str, list[str]]:
    """prompt_id -> the generate stage's sample texts, in draw order."""
    generate = task_data.train_table.parent.parent / "generate"
    return {r["prompt_id"]: [s["text"] for s in r["samples"]] for r in read_table(generate).to_pylist()}


def _samples(task_data):
    train = task_data.train_table.parent.parent
    return derive.reference_samples(train / "generate", train / "logprobs")


@pytest.mark.parametrize(("kind", "loss"), [("pairwise", "dpo"), ("mpo", "mpo")])
def test_pair_and_mpo_tables_train(task_data, tmp_path, kind, loss, fresh_accelerate_state):
    samples = _samples(task_data)

    def fn(row):
        return derive.as_pair(row, 3) if kind == "pairwise" else derive.as_mpo(row, 3, samples)

    out = derive.derive_table(task_data.train_table, tmp_path / kind, kind=kind, name=kind, transform=fn)
    rows = read_table(out).to_pylist()
    src = read_table(task_data.train_table).to_pylist()
    assert [r["chosen"][0]["content"] for r in rows] == [r["preferred"] for r in src]
    assert all(r["rejected"][0]["content"] in s["pool"] for r, s in zip(rows, src, strict=True))
    extra = {"tau": 0.1} if loss == "mpo" else {}
    assert _train_one_step(task_data, out, tmp_path / "train", loss=loss, **extra) < 1e-4


def test_mpo_tau_samples_are_the_reference_draws_not_the_losing_pool(task_data, tmp_path):
    """MPO's tau term (eq. 33) needs y ~ pi_ref: every sample the generate stage drew for the prompt,
    in draw order, duplicates kept, the annotator's pick included; not the mcpo pool, which holds
    only the samples ranked below the pick (filtered by reward) with duplicates merged."""
    samples = _samples(task_data)
    out = derive.derive_table(
        task_data.train_table,
        tmp_path / "mpo",
        kind="mpo",
        name="as_mpo",
        transform=lambda r: derive.as_mpo(r, 3, samples),
    )
    generated = _generated(task_data)
    source = {r["prompt_id"]: r for r in read_table(task_data.train_table).to_pylist()}
    logps = read_table(task_data.train_table.parent.parent / "logprobs").to_pylist()
    cached = {(r["prompt_id"], r["completion_id"]): r["logp"] for r in logps}
    rows = read_table(out).to_pylist()
    assert len(rows) == len(source)
    for row in rows:
        pid = row["prompt_id"]
        assert row["ref_samples"] == generated[pid]
        assert row["ref_sample_ids"] == [completion_id(t) for t in generated[pid]]
        assert row["ref_sample_logps"] == [cached[(pid, c)] for c in row["ref_sample_ids"]]
        assert source[pid]["preferred"] in row["ref_samples"]  # the winner is a reference draw too
    # The old choice (the mcpo pool) differs: the pick is missing from every pool.
    assert all(source[r["prompt_id"]]["preferred"] not in source[r["prompt_id"]]["pool"] for r in rows)


def test_garbage_log_probs_match_the_policy_and_a_wrong_one_is_caught(task_data, tmp_path, fresh_accelerate_state):
    adder = derive.GarbageAdder(task_data.reference, task_data.train_table)
    garbage = derive.derive_table(task_data.train_table, tmp_path / "g", kind="mcpo", name="garbage", transform=adder)
    only = derive.derive_table(
        garbage, tmp_path / "g1", kind="mcpo", name="garbage_only", transform=derive.garbage_only
    )
    assert {tuple(r["pool"]) for r in read_table(only).to_pylist()} == {(derive.GarbageAdder.TEXT,)}
    assert _train_one_step(task_data, only, tmp_path / "t1", loss="mcpo", kernel="uniform") < 1e-4

    def off_by_one(row):
        return {**row, "ref_pool_logps": [v - 1.0 for v in row["ref_pool_logps"]]}

    wrong = derive.derive_table(only, tmp_path / "bad", kind="mcpo", name="bad", transform=off_by_one)
    with pytest.raises(Step0MismatchError):
        _train_one_step(task_data, wrong, tmp_path / "t2", loss="mcpo", kernel="uniform")


def test_a_source_that_is_not_an_mcpo_table_is_refused_before_anything_is_written(task_data, tmp_path):
    pairs = derive.derive_table(
        task_data.train_table, tmp_path / "pw", kind="pairwise", name="pairs", transform=lambda r: derive.as_pair(r, 0)
    )
    for source in (pairs, tmp_path / "missing"):
        with pytest.raises(ValueError, match="not an mcpo build output") as err:
            derive.derive_table(source, tmp_path / "out", kind="mcpo", name="x", transform=derive.max_margin)
        assert str(source) in str(err.value)
    assert not (tmp_path / "out").exists()
