"""What one training step must hold in memory, computed from the model's shapes and the batch's real tokens.

``step_floor`` is the floor a step cannot go below on any implementation that
keeps the same numerics (dtype, optimizer, full fine-tuning or LoRA):

- ``weights``: every parameter, once (tied embeddings counted once);
- ``gradients``: one per trainable parameter, in the parameter's dtype;
- ``optimizer state``: AdamW's two moments per trainable parameter (torch keeps
  them in the parameter's dtype); none for SGD;
- ``checkpointed activations``: with gradient checkpointing, each decoder
  layer's input, ``tokens x hidden``; without it, every layer's saved tensors
  (the next item, once per layer);
- ``layer working set``: what the backward of one decoder layer needs at once:
  the tensors its forward saves per token (two norm inputs and outputs, the
  rotated query, key and value, the attention output, and the MLP's gate, up,
  activation and product: ``6 hidden + 2 kv + 4 intermediate``) plus two
  gradients of the MLP's width. Attention itself adds only a per-head
  log-sum-exp with a fused kernel; the ``heads x T x T`` scores of the math
  kernel are not part of the floor;
- ``log-prob head``: the final hidden states and their gradient, plus one
  logits tile and its gradient (``losses.hidden_logps`` never holds more of
  the ``tokens x vocabulary`` logits);
- ``token ids``: ids and masks of the micro-batch.

The floor (``StepFloor.total``) counts the two transient working sets once, the
larger of them: the head's tiles are freed before the first layer's backward.

Tokens are the micro-batch's real tokens (no padding): padding is work and
memory a step can avoid (``packing``); ``padded_tokens`` says what the
planned micro-batch pads to. The parts are the floor's, not a measurement:
``benchmarks/bench_step_memory.py`` measures the same parts on a real step and
prints them side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LOGITS_TILE = 2**22  # losses.hidden_logps' default chunk_elements
ID_TENSORS = 3  # input ids, attention mask, completion mask (int64 / bool, counted as 8 bytes)
MIB = 2**20
TRANSIENT = ("layer working set", "log-prob head")  # never live at the same time


@dataclass(frozen=True)
class Shapes:
    """A decoder-only transformer's sizes (transformers config names)."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    parameters: int  # every parameter once (tied weights once; LoRA adapters included)

    @classmethod
    def of(cls, config, parameters: int) -> Shapes:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            hidden=config.hidden_size,
            layers=config.num_hidden_layers,
            intermediate=config.intermediate_size,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            vocab=config.vocab_size,
            parameters=parameters,
        )

    def layer_saved_per_token(self) -> int:
        """Elements one decoder layer's forward saves for its backward, per token."""
        kv = self.kv_heads * self.head_dim
        return 6 * self.hidden + 2 * kv + 4 * self.intermediate


@dataclass(frozen=True)
class StepFloor:
    parts: dict[str, int]  # bytes, in the order of the module docstring
    tokens: int  # real tokens of the micro-batch
    padded_tokens: int  # what right-padding to the longest sequence makes of them
    sequences: int

    @property
    def total(self) -> int:
        """What the step holds at its fullest: every part but the two transient working sets, plus the
        larger of them (the head's tiles live at the start of the backward, a layer's at each layer)."""
        transient = [self.parts.get(name, 0) for name in TRANSIENT]
        return sum(self.parts.values()) - sum(transient) + max(transient)

    def lines(self) -> list[str]:
        width = max(len(name) for name in self.parts)
        rows = [f"  {name:<{width}}  {size / MIB:>9,.0f} MiB" for name, size in self.parts.items()]
        rows.append(f"  {'floor':<{width}}  {self.total / MIB:>9,.0f} MiB (the {' and '.join(TRANSIENT)}: the larger)")
        return rows


def step_floor(
    shapes: Shapes,
    lengths: Sequence[int],
    *,
    dtype: str = "float32",
    trainable: int | None = None,
    optimizer: str = "adamw",
    gradient_checkpointing: bool = True,
) -> StepFloor:
    """The floor of one optimizer step whose gradient pass scores sequences of ``lengths`` tokens.

    ``trainable``: trainable parameters (default: all of ``shapes.parameters``; the adapters with LoRA)."""
    if not lengths:
        raise ValueError("lengths: a micro-batch has at least one sequence")
    size = BYTES[dtype]
    trainable = shapes.parameters if trainable is None else trainable
    tokens = sum(lengths)
    saved_layer = shapes.layer_saved_per_token() * tokens * size
    working = saved_layer + 2 * shapes.intermediate * tokens * size
    kept = shapes.layers * shapes.hidden * tokens * size if gradient_checkpointing else shapes.layers * saved_layer
    parts = {
        "weights": shapes.parameters * size,
        "gradients": trainable * size,
        "optimizer state": (2 * trainable * size) if optimizer == "adamw" else 0,
        "checkpointed activations" if gradient_checkpointing else "saved activations": kept,
        "layer working set": working if gradient_checkpointing else 2 * shapes.intermediate * tokens * size,
        "log-prob head": 2 * shapes.hidden * tokens * size + 2 * min(LOGITS_TILE, tokens * shapes.vocab) * size,
        "token ids": ID_TENSORS * 8 * tokens,
    }
    return StepFloor(parts, tokens, len(lengths) * max(lengths), len(lengths))
