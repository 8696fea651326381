"""KTO through `prefpool train`: the mismatched pairs `logprobs --kl-pairs` caches and `build --kind kto`
joins, checked against a direct computation with the reference model, and the trainer's step-0 loss
against ``kto_pair_loss`` computed with a real reference model on the same batch."""

from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
import pytest
import torch
from accelerate.state import AcceleratorState
from click.testing import CliRunner
from datasets import Features
from trainer_tables import MAX_LENGTH
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefpool.cli import app
from prefpool.losses import kto_pair_loss
from prefpool.pipeline.build import BuildConfig, _no_rows_message, build
from prefpool.pipeline.io.ids import ShardSpec, completion_id
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.kinds import KINDS
from prefpool.pipeline.kinds.hf import table_dataset
from prefpool.pipeline.kinds.mismatched import mismatched_pairs, with_mismatched_pairs
from prefpool.pipeline.logprobs import logprobs
from prefpool.pipeline.merge import merge
from prefpool.pipeline.model.tokenize import encode_pair
from prefpool.pipeline.push import push
from prefpool.train.config import TrainConfig
from prefpool.train.metrics import read_metrics
from prefpool.train.trainer import Trainer

torch.set_num_threads(1)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module")
def kto(world):
    """The world's examples scored with their mismatched pairs by its model, and the kto table built on them."""
    root = world["root"] / "kto"
    examples = world["root"] / "data" / "examples"
    lp = logprobs(
        examples, model=world["model"], out=root / "lp", max_length=MAX_LENGTH, show_progress=False, kl_pairs=True
    ).out
    table = build("kto", examples=examples, logprobs=lp, out=root / "table").out
    return {"examples": examples, "lp": lp, "table": table, "root": root}


def _expected_partners(examples) -> dict[str, tuple[str, str]]:
    """The rule, written out: prompts with a non-blank answer sorted by prompt_id, each paired with the
    first non-blank answer of the next one (the last with the first's). prompt_id -> (partner, text)."""
    firsts = {}
    for row in read_table(examples).to_pylist():
        texts = [a["text"] for a in row["answers"] if a["text"].strip()]
        if texts:
            firsts[row["prompt_id"]] = texts[0]
    ids = sorted(firsts)
    return {pid: (ids[(k + 1) % len(ids)], firsts[ids[(k + 1) % len(ids)]]) for k, pid in enumerate(ids)}


@torch.no_grad()
def _direct_logp(model, pair) -> float:
    """``sum_t log p(completion_t | prefix)`` from one plain forward's full logits, float64."""
    prompt, completion = pair
    ids = torch.tensor([list(prompt) + list(completion)])
    logits = model(ids).logits[0].double().log_softmax(-1)  # (T, V)
    positions = torch.arange(len(prompt), ids.shape[1])
    return float(logits[positions - 1, ids[0, positions]].sum())


def test_each_row_carries_another_prompts_answer_by_the_rule(kto):
    table = read_table(kto["table"])
    partners = _expected_partners(kto["examples"])
    assert table.num_rows == 24 and set(table.column("prompt_id").to_pylist()) == set(partners)
    for row in table.to_pylist():
        partner, text = partners[row["prompt_id"]]
        assert partner != row["prompt_id"]
        assert row["kl_completion"] == text and row["kl_completion_id"] == completion_id(text)


def test_cached_mismatched_reference_logps_equal_a_direct_computation(world, kto):
    """``ref_kl_logps`` is the reference model's log-prob of (this prompt, kl_completion), computed here
    from the model's full logits (not the stage's hidden-state scoring), with the stage's tokens."""
    model = AutoModelForCausalLM.from_pretrained(world["model"], torch_dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(world["model"])
    rows = read_table(kto["table"]).to_pylist()
    for row in rows:
        pair = encode_pair(tokenizer, row["prompt"], row["kl_completion"], max_length=MAX_LENGTH)
        assert len(pair.completion_ids) == row["kl_num_tokens"]
        direct = _direct_logp(model, (pair.prompt_ids, pair.completion_ids))
        assert row["ref_kl_logps"] == pytest.approx(direct, abs=1e-4)
    # the values vary across rows: a column of one repeated number would pass the loop only by accident
    assert len({round(r["ref_kl_logps"], 6) for r in rows}) > 4


def test_sharded_stages_pair_a_prompt_as_the_unsharded_ones_do(kto, tmp_path):
    """The rule reads the whole examples table: two shards' mismatched pairs are the whole run's, and
    two sharded builds merged are the unsharded build."""
    examples = read_table(kto["examples"])
    whole = mismatched_pairs(examples)
    shards = [ShardSpec.parse(f"{i}/2") for i in range(2)]
    assert sorted(p for s in shards for p in with_mismatched_pairs([], examples, "examples", s, file="e")) == whole
    parts = [
        build("kto", examples=kto["examples"], logprobs=kto["lp"], out=tmp_path / f"s{i}", shard=f"{i}/2").out
        for i in range(2)
    ]
    merge(parts, out=tmp_path / "merged")
    assert read_table(tmp_path / "merged").equals(read_table(kto["table"]))


def test_kl_pairs_on_a_candidates_table_is_refused(world, tmp_path):
    args = ["logprobs", str(world["root"] / "data" / "candidates"), "--model", str(world["model"])]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "lp"), "--kl-pairs", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "holds a 'candidates' table: run it on the examples folder" in result.output
    assert not (tmp_path / "lp").exists()


def test_the_trl_view_carries_the_mismatched_pair(kto):
    ds = table_dataset(kto["table"])
    assert ds.features == Features.from_arrow_schema(KINDS["kto"].trl_schema)
    rows = read_table(kto["table"]).to_pylist()
    assert [(r["kl_completion"], r["ref_kl_logps"]) for r in ds] == [
        (r["kl_completion"], r["ref_kl_logps"]) for r in rows
    ]


def test_build_without_the_mismatched_logprobs_names_the_command(world, kto, tmp_path):
    """A logprobs folder made without --kl-pairs: build --kind kto exits 2 naming the folder and what to run."""
    result = CliRunner().invoke(
        app,
        [
            "build",
            "--kind",
            "kto",
            "--examples",
            str(kto["examples"]),
            "--logprobs",
            str(world["root"] / "data" / "lp-examples"),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "no reference log-prob for the mismatched completion" in result.output
    assert "prefpool logprobs --kl-pairs" in result.output and "Traceback" not in result.output


def test_missing_drop_counts_the_mismatched_pairs_without_a_logprob_and_says_what_to_run(world, kto, tmp_path):
    """--missing drop over a logprobs folder made without --kl-pairs: a row survives only where its
    mismatched text is one of its own prompt's scored answers; the others are counted, and build's
    no-row message gives the kind's hint for that counter (``TableKind.no_row_hints``)."""
    lp = world["root"] / "data" / "lp-examples"
    summary = build("kto", examples=kto["examples"], logprobs=lp, out=tmp_path / "o", missing="drop")
    scored = {(r["prompt_id"], r["completion_id"]) for r in read_table(lp).to_pylist()}
    kept = {pid for pid, cid, _, _ in mismatched_pairs(read_table(kto["examples"])) if (pid, cid) in scored}
    whole = read_table(kto["table"]).column("prompt_id").to_pylist()  # every pair, with --kl-pairs
    assert read_table(summary.out).column("prompt_id").to_pylist() == [pid for pid in whole if pid in kept]
    dropped = summary.report["dropped_missing_logp_mismatched"]
    assert dropped == len([pid for pid in whole if pid not in kept]) > 0
    message = _no_rows_message(BuildConfig("kto", missing="drop"), {"dropped_missing_logp_mismatched": dropped}, 24)
    assert f"dropped_missing_logp_mismatched: {dropped} (no reference log-prob of the mismatched pairs" in message
    assert "prefpool logprobs --kl-pairs" in message


def test_a_kto_table_without_its_mismatched_column_names_file_column_and_command(world, kto, tmp_path):
    folder = push(kto["table"], repo_id="me/kto", dry_run=True, out=tmp_path / "hub").folder
    (shard,) = sorted((folder / "data").glob("train-*.parquet"))
    pq.write_table(pq.read_table(shard).drop(["ref_kl_logps"]), shard)
    args = ["train", "/dev/null", f"model={world['model']}", f"data={folder}", f"output_dir={tmp_path / 'run'}"]
    result = CliRunner().invoke(app, [*args, "loss=kto_pair", "batch_size=2", "max_steps=1", "progress=false"])
    assert result.exit_code == 2, (result.output, result.exception)
    assert f"{shard}, column 'ref_kl_logps': missing column" in result.output
    assert "prefpool logprobs --kl-pairs" in result.output and "prefpool build --kind kto" in result.output


def test_kto_pair_on_a_pairwise_table_says_which_table_it_needs(world, tmp_path):
    args = ["train", "/dev/null", f"model={world['model']}", f"data={world['pairwise']}"]
    result = CliRunner().invoke(app, [*args, f"output_dir={tmp_path / 'run'}", "loss=kto_pair", "progress=false"])
    assert result.exit_code == 2, result.output
    assert "'kto_pair' does not fit the 'pairwise' table" in result.output
    assert "prefpool logprobs --kl-pairs" in result.output


def _sharper(model_dir, out, factor: float):
    """The model with its logits multiplied by ``factor`` (its final norm's weight scaled), saved to ``out``."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight.mul_(factor)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def test_step0_loss_equals_kto_with_a_real_reference_model(world, kto, tmp_path):
    """A policy other than the reference (its logits doubled: on these mismatched pairs its log-probs
    are above the reference's on average, so z0 > 0), whole table in one micro-batch: the loss the
    trainer logs for step 1 (computed at the initial weights) equals ``kto_pair_loss`` fed with log-probs
    that the real reference model and the policy compute here on the same rows, chosen, rejected and
    mismatched pairs alike."""
    policy = _sharper(world["model"], tmp_path / "policy", 2.0)
    cfg = TrainConfig(
        model=str(policy),
        data=str(kto["table"]),
        output_dir=str(tmp_path / "run"),
        loss="kto_pair",
        max_length=MAX_LENGTH,
        beta=0.5,
        loss_settings={"desirable_weight": 1.0, "undesirable_weight": 1.5},
        lr=1e-3,
        batch_size=24,
        max_steps=1,
        reference_is_policy_init=False,
        progress=False,
    )
    with pytest.warns(UserWarning, match="skipping the step-0 check"):
        trainer = Trainer(cfg)
    examples = trainer._micro_batch(0, 0)
    reference = AutoModelForCausalLM.from_pretrained(world["model"], torch_dtype=torch.float32).eval()
    start = AutoModelForCausalLM.from_pretrained(policy, torch_dtype=torch.float32).eval()

    def logps(model, pairs) -> torch.Tensor:
        return torch.tensor([_direct_logp(model, p) for p in pairs], dtype=torch.float64)

    chosen = [e.answers[0] for e in examples]
    rejected = [e.answers[1] for e in examples]
    mismatched = [e.mismatched for e in examples]
    expected = kto_pair_loss(
        logps(start, chosen),
        logps(start, rejected),
        logps(reference, chosen),
        logps(reference, rejected),
        logps(start, mismatched),
        logps(reference, mismatched),
        beta=0.5,
        desirable_weight=1.0,
        undesirable_weight=1.5,
    )
    assert float(expected.metrics["kto/kl"][0]) > 0.0  # the reference point is in play
    trainer.run()
    (record,) = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert record["loss"] == pytest.approx(float(expected.loss.mean()), abs=1e-5)
    assert record["kto/kl"] == pytest.approx(float(expected.metrics["kto/kl"][0]), abs=1e-5)


def test_prefpool_train_runs_kto_end_to_end_from_the_cli(world, tmp_path):
    """logprobs --kl-pairs -> build --kind kto -> train, each through the `prefpool` command; KTO learns."""
    runner = CliRunner()
    examples = world["root"] / "data" / "examples"
    lp, table, run = tmp_path / "lp", tmp_path / "kto", tmp_path / "run"
    steps = [
        ["logprobs", str(examples), "--model", str(world["model"]), "--out", str(lp)],
        ["--max-length", str(MAX_LENGTH), "--kl-pairs", "--no-progress"],
    ]
    result = runner.invoke(app, steps[0] + steps[1])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["build", "--kind", "kto", "--examples", str(examples), "--logprobs", str(lp), "--out", str(table)]
    )
    assert result.exit_code == 0, result.output
    config = tmp_path / "train.yaml"
    config.write_text(
        f"model: {world['model']}\ndata: {table}\noutput_dir: {run}\nloss: kto_pair\nmax_length: {MAX_LENGTH}\n"
        "lr: 1.0e-3\nbeta: 0.5\nbatch_size: 4\nmax_steps: 12\nprogress: false\n"
    )
    AcceleratorState._reset_state(reset_partial_state=True)
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 0, result.output
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 13))
    assert records[0]["step0_max_abs_diff"] < 1e-4  # chosen, rejected and mismatched pairs alike
    assert records[0]["loss"] == pytest.approx(0.5, abs=1e-6)  # policy == reference: z0 = 0, each term 1/2
    assert all(math.isfinite(r["loss"]) and "kto/kl" in r for r in records)
    assert sum(r["loss"] for r in records[-4:]) / 4 < 0.5 - 0.01
    assert "- kto_pair" in (run / "README.md").read_text()
    assert json.loads((run / "train_summary.json").read_text())["table_kind"] == "kto"
