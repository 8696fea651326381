"""Gradient checkpointing that keeps each decoder layer's input without its padding positions.

With gradient checkpointing, what a step holds between its forward and its
backward is each layer's input, ``(B, T, hidden)`` for a batch right-padded to
its longest sequence ``T``: with sequences of mixed lengths, about half of it
can be padding. ``keep_layer_inputs_unpadded(model)`` wraps the model's
checkpoint function so that the layer input it saves holds the real positions
only (those where the forward's 2-D ``attention_mask`` is set); for the
backward's recompute the input is rebuilt with zeros at the padding positions.

This changes no value, loss or gradient, bit for bit, for a causal LM scored on
right-padded rows (``pipeline.model.batches.pad_pairs``):

- a real position's output never depends on a padding position's value: the
  attention mask gives padding keys a weight of exactly 0 (and right padding
  lies after every real position, which causality hides anyway), and the
  other layers act per position;
- the gradient reaching a padding position is exactly 0 at every layer (the
  loss reads real positions only, and causality sends nothing from a later
  position to an earlier one), so a padding row's contribution to a weight's
  gradient is ``x * 0 = 0`` whatever finite ``x`` the recompute gives it.

(It assumes layers that mix positions only through causal attention: a
mixture-of-experts layer whose capacity limit lets padding tokens crowd out
real ones would not qualify; no transformers decoder does that in training.)

The mask of the running forward is read by a forward pre-hook on the model;
a forward without a 2-D mask, or without padding (a packed row, a batch of
equal lengths), keeps its inputs as they are.
"""

from __future__ import annotations

import torch

__all__ = ["keep_layer_inputs_unpadded"]


class _RealPositions:
    """The real positions of the model's running forward: flat indices into ``B x T``, and ``(B, T)``."""

    def __init__(self) -> None:
        self.index: torch.Tensor | None = None
        self.shape: tuple[int, int] | None = None

    def read(self, module, args, kwargs) -> None:
        mask = kwargs.get("attention_mask")
        self.index = self.shape = None
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and not bool(mask.all()):
            self.index = mask.reshape(-1).nonzero().squeeze(1)
            self.shape = tuple(mask.shape)


def _drop_padding(hidden: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Size, torch.Tensor]:
    """``hidden``'s real positions, ``(real tokens, ...)``, with what ``_restore_padding`` needs."""
    return hidden.reshape(-1, *hidden.shape[2:]).index_select(0, index), hidden.shape, index


def _restore_padding(packed: tuple[torch.Tensor, torch.Size, torch.Tensor]) -> torch.Tensor:
    real, shape, index = packed
    full = real.new_zeros((shape[0] * shape[1], *shape[2:]))
    full.index_copy_(0, index, real)
    return full.view(shape)


def _saving_unpadded(checkpoint, positions: _RealPositions):
    """``checkpoint`` whose saved input ``args[0]`` (the layer's hidden states) keeps the real positions only."""

    def checkpointed(function, *args, **kwargs):
        hidden = args[0] if args else None
        index = positions.index
        if (
            index is None
            or not isinstance(hidden, torch.Tensor)
            or not hidden.is_floating_point()
            or tuple(hidden.shape[:2]) != positions.shape
        ):
            return checkpoint(function, *args, **kwargs)

        # The hooks outlive this call (autograd keeps them with what they saved): they hold the input's
        # shape and address, never the input itself.
        shape, address = hidden.shape, hidden.data_ptr()

        def pack(tensor: torch.Tensor):
            if tensor.shape == shape and tensor.data_ptr() == address:
                return _drop_padding(tensor, index)
            return tensor

        def unpack(packed):
            return _restore_padding(packed) if isinstance(packed, tuple) else packed

        # Only the inputs checkpoint saves itself go through these hooks: what the layer saves inside is
        # caught by checkpoint's own (inner) hooks and never kept.
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            return checkpoint(function, *args, **kwargs)

    return checkpointed


def keep_layer_inputs_unpadded(model: torch.nn.Module) -> None:
    """Make ``model``'s gradient checkpointing (already enabled) keep each layer's input unpadded."""
    positions = _RealPositions()
    wrapped = 0
    for module in model.modules():
        checkpoint = getattr(module, "_gradient_checkpointing_func", None)
        if getattr(module, "gradient_checkpointing", False) and checkpoint is not None:
            module._gradient_checkpointing_func = _saving_unpadded(checkpoint, positions)
            wrapped += 1
    if wrapped:
        model.register_forward_pre_hook(positions.read, with_kwargs=True)
