"""`prefpool train` with LoRA adapters (peft): only the adapters train, the step-0 check holds
(peft starts ``B`` at zero, so the wrapped policy is the base), the adapter is what is saved,
and an interrupted LoRA run resumes to the same losses."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from accelerate.state import AcceleratorState
from trainer_tables import MAX_LENGTH

from prefpool.train.config import TrainConfig
from prefpool.train.data import collate
from prefpool.train.metrics import read_metrics
from prefpool.train.objective import batch_loss
from prefpool.train.trainer import Trainer

pytest.importorskip("peft")
torch.set_num_threads(1)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _cfg(world, out, **kw) -> TrainConfig:
    base = dict(
        model=str(world["model"]),
        data=str(world["pairwise"]),
        output_dir=str(out),
        loss="dpo",
        max_length=MAX_LENGTH,
        lr=1e-2,
        beta=0.5,
        batch_size=4,
        max_steps=10,
        progress=False,
        lora_r=4,
        lora_alpha=8.0,
        lora_target_modules=("q_proj", "v_proj"),
    )
    return TrainConfig(**{**base, **kw})


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.accelerator.unwrap_model(trainer.model).named_parameters()}


@torch.no_grad()
def _table_loss(trainer: Trainer) -> float:
    batch = collate(trainer.kind, trainer.table.examples)
    return batch_loss(trainer.model, batch, trainer.cfg, pad_token_id=trainer.pad, generator=None).loss.mean().item()


def test_lora_trains_only_the_adapters(world, tmp_path):
    trainer = Trainer(_cfg(world, tmp_path / "run"))
    before_weights, before = _weights(trainer), _table_loss(trainer)
    assert before == pytest.approx(0.6931471805599453, abs=1e-6)  # B = 0: policy == reference, DPO = ln 2
    summary = trainer.run()
    after_weights, after = _weights(trainer), _table_loss(trainer)
    assert summary["step0_max_abs_diff"] < 1e-4
    assert after < before - 0.05, (before, after)
    changed = {n for n in before_weights if not torch.equal(before_weights[n], after_weights[n])}
    lora = {n for n in before_weights if "lora_" in n}
    assert lora and changed == {n for n in lora if "lora_B" in n or "lora_A" in n}
    out = tmp_path / "run"
    assert (out / "adapter_model.safetensors").exists() and (out / "adapter_config.json").exists()
    assert not (out / "model.safetensors").exists()  # the adapter, not a full copy of the base
    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and "LoRA adapter (peft): r 4" in card


def test_lora_resume_gives_the_same_losses(world, tmp_path):
    kw = dict(max_steps=4, save_steps=2, warmup_steps=1)
    straight = Trainer(_cfg(world, tmp_path / "straight", **kw)).run()
    AcceleratorState._reset_state(reset_partial_state=True)
    Trainer(_cfg(world, tmp_path / "killed", **kw)).run(stop_after=2)
    AcceleratorState._reset_state(reset_partial_state=True)
    resumed = Trainer(_cfg(world, tmp_path / "killed", resume=True, **kw))
    assert resumed.state.step == 2
    resumed.run()
    a = [r["loss"] for r in read_metrics(tmp_path / "straight" / "metrics.jsonl")]
    b = [r["loss"] for r in read_metrics(tmp_path / "killed" / "metrics.jsonl")]
    assert a == pytest.approx(straight["losses"], abs=0) and len(b) == 4
    assert b == pytest.approx(a, abs=1e-6)


def test_lora_settings_are_checked(world, tmp_path):
    with pytest.raises(ValueError, match="lora_dropout"):
        _cfg(world, tmp_path, lora_dropout=1.0).check()


def test_eval_reads_a_lora_run_folder_as_its_merged_model(world, tmp_path):
    """``prefpool eval`` of what a LoRA run writes (the adapter, no config.json) scores the base with the adapter
    on: the same ranking as the merged model saved as a whole folder. Commands that need a whole model refuse
    the adapter folder by name, exit 2."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefpool.train.evaluate import evaluate

    run = tmp_path / "run"
    Trainer(_cfg(world, run, max_steps=4, lr=5e-2)).run()
    merged = tmp_path / "merged"
    base = AutoModelForCausalLM.from_pretrained(world["model"])
    PeftModel.from_pretrained(base, run).merge_and_unload().save_pretrained(merged)
    AutoTokenizer.from_pretrained(run).save_pretrained(merged)

    adapter = evaluate(model=run, data=world["pairwise"], device="cpu", show_progress=False)["ranking"]
    whole = evaluate(model=merged, data=world["pairwise"], device="cpu", show_progress=False)["ranking"]
    assert adapter["mean_margin"] != 0.0  # trained: the adapter moved the log-ratios
    assert adapter["accuracy"] == whole["accuracy"]
    assert adapter["mean_margin"] == pytest.approx(whole["mean_margin"], rel=1e-4, abs=1e-6)

    proc = subprocess.run(
        [sys.executable, "-m", "prefpool", "logprobs", str(world["root"] / "data" / "examples"), "--model", str(run),
         "--out", str(tmp_path / "lp")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "a LoRA adapter folder (adapter_config.json), not a whole model" in proc.stderr
    assert "Traceback" not in proc.stderr
