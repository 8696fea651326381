"""`prefpool train` on real tables (ingest -> logprobs -> build with a tiny model): learning, the
cache checks, gradient-accumulation and resume invariants, and the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import pytest
import torch
from accelerate.state import AcceleratorState
from click.testing import CliRunner
from trainer_tables import MAX_LENGTH

from prefpool.cli import app
from prefpool.pipeline.build import build
from prefpool.pipeline.io.layout import MANIFEST, meta_path, read_meta
from prefpool.pipeline.logprobs import logprobs
from prefpool.testing import build_tiny_llama
from prefpool.train.cache_check import CacheMismatchError
from prefpool.train.config import TrainConfig
from prefpool.train.data import collate
from prefpool.train.metrics import read_metrics
from prefpool.train.objective import batch_loss
from prefpool.train.trainer import Step0MismatchError, Trainer

torch.set_num_threads(1)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _cfg(world, kind: str, loss: str, out, **kw) -> TrainConfig:
    base = dict(
        model=str(world["model"]),
        data=str(world[kind]),
        output_dir=str(out),
        loss=loss,
        max_length=MAX_LENGTH,
        lr=1e-3,
        beta=0.5,
        batch_size=4,
        max_steps=12,
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


@torch.no_grad()
def _table_loss(trainer: Trainer) -> float:
    """Mean loss over the whole table (fixed kernel draws), the same function training minimizes.

    MC-PO is measured by the NLL it estimates, the ``listwise`` value -r0 + log Σ_{i=0..M} exp(r_i) (Chen
    et al. 2025 read MC-PO as the NLL of p(y|x) ∝ exp(r)): the paper's ``sample`` kernel also draws the
    preferred answer, whose loss is the constant log 2, ever more often as training succeeds, so its
    sampled loss stays near log 2 while the policy learns.
    """
    batch = collate(trainer.kind, trainer.table.examples)
    gen = torch.Generator().manual_seed(123)
    cfg = dataclasses.replace(trainer.cfg, kernel="listwise") if trainer.kind == "mcpo" else trainer.cfg
    return batch_loss(trainer.model, batch, cfg, pad_token_id=trainer.pad, generator=gen).loss.mean().item()


@pytest.mark.parametrize(
    "kind,loss,extra",
    [
        ("pairwise", "dpo", {}),
        ("pairwise", "ipo", {}),
        ("pairwise", "simpo", {"beta": 2.0, "gamma": 0.5}),
        ("pairwise", "dpo", {"nll_alpha": 0.5}),
        ("mcpo", "mcpo", {"batch_size": 2, "kernel": "sample"}),
        ("mpo", "mpo", {"tau": 0.1}),
    ],
)
def test_loss_decreases_on_learnable_table(world, tmp_path, kind, loss, extra):
    trainer = Trainer(_cfg(world, kind, loss, tmp_path / "run", **extra))
    before = _table_loss(trainer)
    summary = trainer.run()
    after = _table_loss(trainer)
    assert summary["step0_max_abs_diff"] < 1e-4  # the cache is the initial policy's, same tokens
    assert after < before - 0.05, (before, after)
    if loss == "dpo" and not extra:
        assert math.isclose(before, math.log(2), abs_tol=1e-6)  # policy == reference: ln 2
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 13))
    assert records[0]["step0_max_abs_diff"] == summary["step0_max_abs_diff"]
    assert {"lr", "tokens_per_s", "peak_memory_mb", "rewards/accuracies"} <= set(records[0])
    if loss == "mcpo":
        # every one of the step's 2 draws: a pool slot in the histogram, or the preferred answer itself
        drawn_chosen = round(records[0]["mcpo/chosen_drawn"] * 2)
        assert sum(records[0]["mcpo/selected_hist"]) + drawn_chosen == 2 and "mcpo/entropy" in records[0]
    assert (tmp_path / "run" / "model.safetensors").exists()
    card = (tmp_path / "run" / "README.md").read_text()
    assert f"`{world[kind].name}`" in card and f"- {loss}" in card and "toy.jsonl" in card
    assert str(tmp_path) not in card and str(world["root"]) not in card  # no local path is published


@pytest.mark.parametrize("kind,loss,batch_size", [("pairwise", "dpo", 4), ("mcpo", "mcpo", 3)])
def test_step0_of_the_logprobs_stage_cache_is_exactly_zero(world, tmp_path, kind, loss, batch_size):
    """The ``logprobs`` stage (hf engine) and the trainer's step-0 check run one function
    (``scoring``: log-probs from hidden states, float32 on the CPU), on other batches and paddings:
    on the tiny model the cached values and the policy's agree to the last bit."""
    trainer = Trainer(_cfg(world, kind, loss, tmp_path / "run", batch_size=batch_size, max_steps=1))
    assert trainer.run()["step0_max_abs_diff"] == 0.0


@pytest.fixture(scope="module")
def other_cache(world):
    """A pairwise table whose reference log-probs come from another seed's model."""
    root = world["root"] / "other"
    model_b = build_tiny_llama(root / "model", seed=1)
    lp = logprobs(
        world["root"] / "data" / "examples", model=model_b, out=root / "lp", max_length=MAX_LENGTH, show_progress=False
    ).out
    return build("pairwise", examples=world["root"] / "data" / "examples", logprobs=lp, out=root / "pairwise").out


def test_weights_of_another_reference_are_refused_unless_declared(world, other_cache, tmp_path):
    with pytest.raises(CacheMismatchError, match="reference_is_policy_init: false"):
        Trainer(_cfg(world, "pairwise", "dpo", tmp_path / "a", data=str(other_cache)))
    with pytest.warns(UserWarning, match="skipping the step-0 check"):
        trainer = Trainer(
            _cfg(
                world,
                "pairwise",
                "dpo",
                tmp_path / "b",
                data=str(other_cache),
                reference_is_policy_init=False,
                max_steps=1,
            )
        )
    assert trainer.run()["step0_max_abs_diff"] is None


def test_step0_check_catches_a_wrong_cache(world, other_cache, tmp_path):
    """The other model's values, with the manifest edited to claim our weights: only step 0 can tell."""
    data = tmp_path / "relabelled"
    shutil.copytree(other_cache, data)
    manifest = read_meta(data, MANIFEST)
    ours = read_meta(world["pairwise"], MANIFEST)
    cache = ours["identity"]["inputs"]["logprobs"][0]["identity"]["config"]["cache"]
    manifest["identity"]["inputs"]["logprobs"][0]["identity"]["config"]["cache"] = cache
    meta_path(data, MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(Step0MismatchError, match="another model, tokenizer, chat template or max_length"):
        Trainer(_cfg(world, "pairwise", "dpo", tmp_path / "run", data=str(data))).run()
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_refuses_other_max_length_or_template(world, tmp_path):
    with pytest.raises(CacheMismatchError, match="max_length"):
        Trainer(_cfg(world, "pairwise", "dpo", tmp_path / "a", max_length=32))
    model = tmp_path / "model"
    shutil.copytree(world["model"], model)
    template = model / "chat_template.jinja"
    template.write_text(template.read_text().replace("{{ bos_token }}", "{{ bos_token }}{{ bos_token }}"))
    with pytest.raises(CacheMismatchError, match="tokenizer_sha256"):
        Trainer(_cfg(world, "pairwise", "dpo", tmp_path / "b", model=str(model)))


def test_max_length_defaults_to_the_caches(world, tmp_path):
    """No max_length in the config: the trainer tokenizes with the cache's, so it does not mismatch."""
    trainer = Trainer(_cfg(world, "pairwise", "dpo", tmp_path / "a", max_length=None))
    assert trainer.max_length == MAX_LENGTH == trainer.cache["max_length"]


def test_refuses_a_loss_that_does_not_fit_the_table(world, tmp_path):
    with pytest.raises(ValueError, match="'mcpo' does not fit the 'pairwise' table"):
        Trainer(_cfg(world, "pairwise", "mcpo", tmp_path))
    with pytest.raises(ValueError, match="build --kind pairwise"):
        Trainer(_cfg(world, "mcpo", "dpo", tmp_path))


def test_batch_8_equals_batch_1_times_8_accumulation(world, tmp_path):
    params = []
    for i, (batch, accum) in enumerate([(8, 1), (1, 8)]):
        trainer = Trainer(
            _cfg(
                world,
                "pairwise",
                "dpo",
                tmp_path / str(i),
                optimizer="sgd",
                lr=0.5,
                batch_size=batch,
                gradient_accumulation_steps=accum,
                max_steps=1,
                max_grad_norm=None,
            )
        )
        trainer.run()
        params.append(torch.cat([p.detach().flatten() for p in trainer.model.parameters()]))
        AcceleratorState._reset_state(reset_partial_state=True)
    initial = Trainer(_cfg(world, "pairwise", "dpo", tmp_path / "x"))
    start = torch.cat([p.detach().flatten() for p in initial.model.parameters()])
    assert (params[0] - start).abs().max() > 1e-3  # the step moved the weights
    torch.testing.assert_close(params[0], params[1], atol=1e-6, rtol=0)


def test_resumed_run_gives_the_same_losses(world, tmp_path):
    """MC-PO with the sample kernel (draws from the checkpointed generator), AdamW with warmup,
    6 steps over an 8-row table with batch 2: the run crosses an epoch boundary after step 4."""
    kw = dict(batch_size=2, max_steps=6, save_steps=3, warmup_steps=2, kernel="sample")
    straight = Trainer(_cfg(world, "mcpo", "mcpo", tmp_path / "straight", **kw)).run()
    AcceleratorState._reset_state(reset_partial_state=True)
    first = Trainer(_cfg(world, "mcpo", "mcpo", tmp_path / "killed", **kw)).run(stop_after=3)
    assert first["steps"] == 3 and not (tmp_path / "killed" / "model.safetensors").exists()
    AcceleratorState._reset_state(reset_partial_state=True)
    torch.manual_seed(999)  # a new process: the global RNG must come from the checkpoint
    resumed = Trainer(_cfg(world, "mcpo", "mcpo", tmp_path / "killed", resume=True, **kw))
    assert resumed.state.step == 3
    second = resumed.run()
    assert second["resumed_from"].endswith("step-3") and len(second["losses"]) == 3
    a = [r["loss"] for r in read_metrics(tmp_path / "straight" / "metrics.jsonl")]
    b = [r["loss"] for r in read_metrics(tmp_path / "killed" / "metrics.jsonl")]
    assert len(a) == len(b) == 6
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-6
    assert a == pytest.approx(straight["losses"], abs=0)


def test_gradient_checkpointing_and_bf16(world, tmp_path):
    plain = Trainer(_cfg(world, "pairwise", "dpo", tmp_path / "a", max_steps=2)).run()
    AcceleratorState._reset_state(reset_partial_state=True)
    ckpt = Trainer(_cfg(world, "pairwise", "dpo", tmp_path / "b", max_steps=2, gradient_checkpointing=True)).run()
    assert ckpt["losses"] == pytest.approx(plain["losses"], abs=1e-6)
    AcceleratorState._reset_state(reset_partial_state=True)
    bf16 = Trainer(
        _cfg(world, "pairwise", "dpo", tmp_path / "c", max_steps=2, mixed_precision="bf16", step0_tolerance=1.0)
    ).run()
    assert 0 < bf16["step0_max_abs_diff"] <= 1.0 and all(math.isfinite(x) for x in bf16["losses"])


def test_cli_train(world, tmp_path, monkeypatch):
    config = tmp_path / "train.yaml"
    config.write_text(
        f"model: {world['model']}\ndata: {world['pairwise']}\noutput_dir: {tmp_path / 'out'}\n"
        f"loss: dpo\nmax_length: {MAX_LENGTH}\nlr: 1.0e-3\nbatch_size: 4\n"
    )
    monkeypatch.setenv("PREFPOOL_PROGRESS_SECONDS", "1e-9")  # a log (not a terminal): a line per step
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(config), "max_steps=2"])
    assert result.exit_code == 0, result.output
    assert len(read_metrics(tmp_path / "out" / "metrics.jsonl")) == 2
    assert "train: 1/2 steps (50%)" in result.output and "train: 2/2 steps (100%)" in result.output
    AcceleratorState._reset_state(reset_partial_state=True)
    quiet = runner.invoke(app, ["train", str(config), "max_steps=1", f"output_dir={tmp_path / 'q'}", "--no-progress"])
    assert quiet.exit_code == 0, quiet.output
    assert "steps (" not in quiet.output
    AcceleratorState._reset_state(reset_partial_state=True)
    bad = runner.invoke(app, ["train", str(config), "learnig_rate=1"])
    assert bad.exit_code == 2
    assert "unknown key 'learnig_rate' (did you mean 'learning_rate', which sets lr?)" in bad.output


@pytest.mark.parametrize(
    ("settings", "factors"),
    [
        # warmup 2 of 3 steps: (s + 1) / 3 while s < 2, then (3 - s) / (3 - 2)
        ({"warmup_steps": 2}, [1 / 3, 2 / 3, 1.0]),
        # steps 4, 5, 6 of a 10-step schedule with warmup 2: (10 - s) / 8
        ({"warmup_steps": 2, "lr_schedule_steps": 10, "lr_schedule_start": 4}, [6 / 8, 5 / 8, 4 / 8]),
        # steps 0..2 of a 10-step schedule: still in its warmup 2 at steps 0, 1
        ({"warmup_steps": 2, "lr_schedule_steps": 10}, [1 / 3, 2 / 3, 8 / 8]),
    ],
)
def test_a_run_follows_its_stretch_of_the_lr_schedule(world, tmp_path, settings, factors):
    cfg = _cfg(world, "pairwise", "dpo", tmp_path / "run", max_steps=3, **settings)
    Trainer(cfg).run()
    lrs = [m["lr"] for m in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert lrs == pytest.approx([1e-3 * f for f in factors], rel=1e-12)
