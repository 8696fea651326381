"""The step's memory floor: its arithmetic by hand, and `train --estimate-memory` on a real table."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from prefpool.train.config import TrainConfig
from prefpool.train.memory_estimate import estimate_memory
from prefpool.train.memory_floor import LOGITS_TILE, Shapes, step_floor

SMALL = Shapes(hidden=64, layers=2, intermediate=256, heads=1, kv_heads=1, head_dim=64, vocab=1000, parameters=10_000)


def test_floor_by_hand():
    """P = 10,000 float32 parameters; 3 sequences of 5 + 7 + 8 = 20 tokens.

    weights 40,000 B, gradients 40,000, AdamW 80,000; checkpointed inputs 2 layers x 20 x 64 x 4 = 10,240;
    one layer saves (6*64 + 2*64 + 4*256) = 1,536 elements a token -> 122,880 B, plus two MLP-wide
    gradients 2*256*20*4 = 40,960; head: hidden + its grad 2*64*20*4 = 10,240, tile + grad 2*20,000*4 =
    160,000 (20 x 1,000 logits < one tile); ids 3*8*20 = 480."""
    floor = step_floor(SMALL, [5, 7, 8])
    assert floor.parts == {
        "weights": 40_000,
        "gradients": 40_000,
        "optimizer state": 80_000,
        "checkpointed activations": 10_240,
        "layer working set": 163_840,
        "log-prob head": 170_240,
        "token ids": 480,
    }
    assert floor.total == sum(floor.parts.values()) - 163_840  # the smaller transient is not counted
    assert (floor.tokens, floor.padded_tokens, floor.sequences) == (20, 24, 3)


def test_floor_options():
    """bf16 halves every float part; SGD holds no state; LoRA's gradients and state follow the adapters;
    without checkpointing every layer keeps its saved tensors; a long batch's head holds one tile."""
    f32, bf16 = step_floor(SMALL, [10]), step_floor(SMALL, [10], dtype="bfloat16")
    assert all(bf16.parts[k] * 2 == f32.parts[k] for k in f32.parts if k != "token ids")
    assert step_floor(SMALL, [10], optimizer="sgd").parts["optimizer state"] == 0
    lora = step_floor(SMALL, [10], trainable=100)
    assert (lora.parts["gradients"], lora.parts["optimizer state"], lora.parts["weights"]) == (400, 800, 40_000)
    flat = step_floor(SMALL, [10], gradient_checkpointing=False)
    assert flat.parts["saved activations"] == 2 * SMALL.layer_saved_per_token() * 10 * 4
    assert step_floor(SMALL, [10_000]).parts["log-prob head"] == 2 * 64 * 10_000 * 4 + 2 * LOGITS_TILE * 4
    with pytest.raises(ValueError):
        step_floor(SMALL, [])


def test_estimate_matches_the_model_and_table(world, tmp_path):
    """The estimate counts the real model's parameters (built on the meta device) and the table's real
    token counts as the trainer tokenizes them."""
    cfg = TrainConfig(
        model=str(world["model"]),
        data=str(world["pairwise"]),
        output_dir=str(tmp_path / "o"),
        loss="dpo",
        batch_size=2,
        gradient_checkpointing=True,
    )
    est = estimate_memory(cfg)
    model = AutoModelForCausalLM.from_pretrained(str(world["model"]), dtype=torch.float32)
    assert est.parameters == sum(p.numel() for p in model.parameters())
    assert est.first.parts["weights"] == 4 * est.parameters
    config = AutoConfig.from_pretrained(str(world["model"]))
    per_token = config.num_hidden_layers * config.hidden_size * 4
    assert est.first.parts["checkpointed activations"] == per_token * est.first.tokens
    assert est.largest.total >= est.first.total
    assert not (tmp_path / "o").exists()  # nothing written


def test_estimate_memory_command(world, tmp_path):
    """`prefpool train CONFIG --estimate-memory`: the floor by part, nothing written, exit 0."""
    config = tmp_path / "train.yaml"
    config.write_text(
        f"model: {world['model']}\ndata: {world['pairwise']}\noutput_dir: {tmp_path / 'o'}\nloss: dpo\nbatch_size: 2\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "prefpool", "train", str(config), "--estimate-memory"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    for part in ("weights", "gradients", "optimizer state", "saved activations", "log-prob head", "floor"):
        assert part in out.stdout
    assert not (tmp_path / "o").exists()


@pytest.mark.usefixtures("fresh_accelerate_state")
@pytest.mark.parametrize("impl", ["foreach", "fused"])
def test_each_adamw_implementation_trains_as_the_for_loop(world, tmp_path, impl):
    """The optimizer-step memory cut changes no result: per-step losses and final weights of AdamW's foreach and
    fused implementations equal the for-loop's within float32 rounding over 6 steps."""
    from safetensors.torch import load_file

    from prefpool.train.metrics import read_metrics
    from prefpool.train.trainer import train

    def run(name: str, optimizer_impl: str) -> tuple[list[float], dict]:
        cfg = TrainConfig(
            model=str(world["model"]),
            data=str(world["pairwise"]),
            output_dir=str(tmp_path / name),
            loss="dpo",
            beta=0.5,
            lr=1e-3,
            batch_size=4,
            max_steps=6,
            weight_decay=0.01,
            optimizer_impl=optimizer_impl,
            progress=False,
        )
        train(cfg)
        losses = [line["loss"] for line in read_metrics(tmp_path / name / "metrics.jsonl")]
        return losses, load_file(str(tmp_path / name / "model.safetensors"))

    base_losses, base_weights = run("for-loop", "for-loop")
    losses, weights = run(impl, impl)
    assert len(losses) == 6 and losses == pytest.approx(base_losses, rel=1e-5, abs=1e-6)
    for name, value in base_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=1e-6)
    assert any(
        not torch.equal(value, load_file(str(world["model"] / "model.safetensors"))[name])
        for name, value in weights.items()
    )  # the runs trained
