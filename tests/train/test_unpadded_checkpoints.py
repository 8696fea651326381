"""Checkpointed layer inputs kept without padding: the same log-probs and gradients, bit for bit, and
only the real positions held between forward and backward."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import transformers as T

import prefpool.train.unpadded_checkpoints as unpadded
from prefpool.pipeline.model.scoring import completion_logps
from prefpool.train.unpadded_checkpoints import keep_layer_inputs_unpadded

torch.set_num_threads(1)

VOCAB = 97
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
CONFIGS = {
    "llama": lambda: T.LlamaConfig(**COMMON),
    "qwen2": lambda: T.Qwen2Config(**COMMON),
    "gemma2": lambda: T.Gemma2Config(**COMMON, head_dim=8),
}


def _model(name: str, attention: str, *, unpadded_inputs: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    config = CONFIGS[name]()
    config._attn_implementation = attention
    model = T.AutoModelForCausalLM.from_config(config).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if unpadded_inputs:
        keep_layer_inputs_unpadded(model)
    return model


def _pairs() -> list[tuple[list[int], list[int]]]:
    """Ragged lengths (2 to 12 tokens): most rows are padded."""
    gen = torch.Generator().manual_seed(0)

    def tokens(n):
        return torch.randint(1, VOCAB, (n,), generator=gen).tolist()

    return [(tokens(p), tokens(c)) for p, c in [(3, 4), (1, 5), (6, 6), (2, 1), (4, 2)]]


def _step(model, pairs):
    logps, _ = completion_logps(model, pairs, 0, packing=False)
    (logps * torch.linspace(-1, 2, len(pairs))).sum().backward()
    return logps.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_same_values_and_gradients_bit_for_bit(name, attention):
    pairs = _pairs()
    want_logps, want_grads = _step(_model(name, attention, unpadded_inputs=False), pairs)
    got_logps, got_grads = _step(_model(name, attention, unpadded_inputs=True), pairs)
    assert torch.equal(got_logps, want_logps)
    assert want_grads.keys() == got_grads.keys()
    for key, want in want_grads.items():
        assert torch.equal(got_grads[key], want), key


def test_only_real_positions_are_kept(monkeypatch):
    kept = []
    drop = unpadded._drop_padding

    def recorded(hidden, index):
        packed = drop(hidden, index)
        kept.append((tuple(hidden.shape), tuple(packed[0].shape)))
        return packed

    monkeypatch.setattr(unpadded, "_drop_padding", recorded)
    pairs = _pairs()
    _step(_model("llama", "sdpa", unpadded_inputs=True), pairs)
    real = sum(len(p) + len(c) for p, c in pairs)
    assert kept == [((5, 12, 32), (real, 32))] * COMMON["num_hidden_layers"]


@pytest.mark.parametrize("unpadded_inputs", [True, False])
def test_the_padded_inputs_are_freed_after_the_forward(unpadded_inputs):
    """Between forward and backward nothing holds a padded layer input but checkpoint (without the cut)."""
    model = _model("llama", "sdpa", unpadded_inputs=unpadded_inputs)
    outputs = []
    for layer in model.model.layers:
        layer.register_forward_hook(lambda module, args, out: outputs.append(weakref.ref(out)))
    logps, _ = completion_logps(model, _pairs(), 0, packing=False)
    gc.collect()
    layers = COMMON["num_hidden_layers"]
    alive = [ref() is not None for ref in outputs[-layers:]]  # the gradient pass's (a check's forwards first)
    # the last layer's output is the final norm's input (kept by the norm)
    assert alive == ([False] * (layers - 1) if unpadded_inputs else [True] * (layers - 1)) + [True]


def test_no_padding_no_change(monkeypatch):
    """A batch of equal lengths (no padding) and a packed row keep their inputs as they are."""
    calls = []
    monkeypatch.setattr(unpadded, "_drop_padding", lambda *a: calls.append(a))
    model = _model("llama", "sdpa", unpadded_inputs=True)
    completion_logps(model, [([1, 2], [3, 4]), ([5, 6], [7, 8])], 0, packing=False)[0].sum().backward()
    completion_logps(model, _pairs(), 0, packing=True)[0].sum().backward()
    assert calls == []


@pytest.mark.parametrize("kind,loss,extra", [("pairwise", "dpo", {}), ("mcpo", "mcpo", {"kernel": "sample"})])
def test_training_with_it_equals_training_without_it(world, tmp_path, monkeypatch, kind, loss, extra):
    """The trainer's gradient checkpointing, 4 AdamW steps (2 of them after a resume from step 2): per-step
    losses and final weights equal, bit for bit, to a straight run whose checkpoints keep the padding."""
    from accelerate.state import AcceleratorState
    from safetensors.torch import load_file
    from trainer_tables import MAX_LENGTH

    import prefpool.train.trainer as trainer_module
    from prefpool.train.config import TrainConfig
    from prefpool.train.metrics import read_metrics
    from prefpool.train.trainer import Trainer

    def cfg(out, **kw):
        return TrainConfig(
            model=str(world["model"]),
            data=str(world[kind]),
            output_dir=str(out),
            loss=loss,
            max_length=MAX_LENGTH,
            lr=1e-3,
            batch_size=2,
            max_steps=4,
            save_steps=2,
            gradient_checkpointing=True,
            progress=False,
            **extra,
            **kw,
        )

    def results(out):
        losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
        return losses, load_file(out / "model.safetensors")

    kept_calls = []
    with monkeypatch.context() as patch:
        patch.setattr(trainer_module, "keep_layer_inputs_unpadded", kept_calls.append)
        Trainer(cfg(tmp_path / "padded")).run()
    assert len(kept_calls) == 1  # the trainer asked for it; here it was not applied
    AcceleratorState._reset_state(reset_partial_state=True)
    dropped = []
    drop = unpadded._drop_padding
    monkeypatch.setattr(unpadded, "_drop_padding", lambda *a: dropped.append(1) or drop(*a))
    Trainer(cfg(tmp_path / "unpadded")).run(stop_after=2)
    AcceleratorState._reset_state(reset_partial_state=True)
    Trainer(cfg(tmp_path / "unpadded", resume=True)).run()
    AcceleratorState._reset_state(reset_partial_state=True)
    want_losses, want_weights = results(tmp_path / "padded")
    got_losses, got_weights = results(tmp_path / "unpadded")
    assert dropped  # the micro-batches were padded, and their padding was dropped
    assert len(got_losses) == 4 and got_losses == want_losses
    assert want_weights.keys() == got_weights.keys()
    for name, want in want_weights.items():
        assert torch.equal(got_weights[name], want), name
