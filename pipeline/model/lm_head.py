"""Next-token log-probs of a causal LM from its last hidden states: the output head never makes logits.

``token_logps(model, inputs, labels, mask)`` runs ``model(**inputs)`` once and
returns, per position, the log-prob of ``labels`` where ``mask`` is set (0
elsewhere), ``(B, T)`` float32. By default ("hidden") the model's output head
is swapped, for the duration of that one call, for a function of the hidden
states it receives: ``losses.hidden_logps`` over the masked positions only,
in tiles of positions x vocabulary, recomputed in backward. No ``(B, T, V)``
logits exist, in forward or backward; prompt and padding positions never
reach the head.

Why swap the head instead of calling the decoder and the head ourselves: the
head then runs *inside* the model's own forward, so whatever wraps that
forward still works: DDP prepares its gradient reduction, FSDP2 and ZeRO-3
have gathered the sharded head weight (and re-gather it for backward through
the hooks they put on the forward's output), accelerate's autocast is on, and
whatever the model does to the hidden states before its head (a final norm,
MiniCPM's width scaling) is included. The swapped head hands the log-probs
back through the model's output as zeros that carry their gradient
(``v - v.detach()``), so the output stays on the backward path those hooks
watch; whatever the model then does to its "logits" (Gemma 2's soft cap,
Cohere's scale) maps 0 to 0, and its slope at 0 (the scale, or 1) is divided
out again.

What the head does after its matmul must be known: ``final_logit_softcapping``
(Gemma 2/3/4), ``logit_scale`` (Cohere), ``logits_scaling`` (Granite) are read
from the config. Every model is checked once, on a few tokens, against its
own full logits (``_agrees``); a model whose head does something else
(another multiplier, a vocabulary slice) fails that check and is scored
through its full logits ("logits", the plain path) with a warning, as is a
head that is not a plain ``nn.Linear`` (a LoRA-wrapped or quantized head, an
offloaded one).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch

from prefpool.losses import hidden_logps, sequence_logps

from .modes import eval_mode

Method = Literal["hidden", "logits"]
METHODS: tuple[str, ...] = ("hidden", "logits")


@dataclass(frozen=True)
class Head:
    """A model's output projection and what its forward applies after the matmul."""

    module: torch.nn.Linear  # weight (V, H), bias (V,) or None; maybe shared with the input embedding
    logit_scale: float | None  # logits *= scale (Cohere; Granite: 1 / logits_scaling)
    softcap: float | None  # logits = cap * tanh(logits / cap) (Gemma 2/3/4)
    model_type: str


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside DDP / DeepSpeed / ``torch.compile`` / peft wrappers (FSDP2 wraps in place)."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel) or type(model).__name__ == "DeepSpeedEngine":
            inner = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            inner = model._orig_mod
        elif callable(getattr(model, "get_base_model", None)):  # peft.PeftModel
            inner = model.get_base_model()
        else:
            return model
        if inner is model:
            return model
        model = inner


def model_type(model: torch.nn.Module) -> str:
    config = getattr(unwrap(model), "config", None)
    return getattr(config, "model_type", type(unwrap(model)).__name__)


def output_head(model: torch.nn.Module) -> Head | None:
    """The head ``token_logps`` can run from hidden states, or None (then the full logits are used)."""
    base = unwrap(model)
    get = getattr(base, "get_output_embeddings", None)
    module = get() if callable(get) else None
    # Exactly nn.Linear: a peft LoRA layer or ModulesToSaveWrapper is not one (its weight lacks the
    # adapter); an accelerate-offloaded head (``_hf_hook``) has no weight until its own forward runs.
    if not isinstance(module, torch.nn.Linear) or hasattr(module, "_hf_hook") or module.weight.is_meta:
        return None
    config = getattr(base, "config", None)
    text = config.get_text_config() if callable(getattr(config, "get_text_config", None)) else config
    kind = str(getattr(text, "model_type", "") or type(base).__name__)
    cap = getattr(text, "final_logit_softcapping", None)
    scale = None
    if kind.startswith("cohere") and getattr(text, "logit_scale", None) is not None:
        scale = float(text.logit_scale)
    if kind.startswith("granite") and getattr(text, "logits_scaling", None):
        scale = 1.0 / float(text.logits_scaling)
    return Head(module, scale, float(cap) if cap else None, kind)


@contextmanager
def _forward_replaced(module: torch.nn.Module, forward: Callable) -> Iterator[None]:
    """``module.forward`` is ``forward`` inside; the module's own (or an earlier instance override) after."""
    had = "forward" in module.__dict__
    old = module.__dict__.get("forward")
    module.forward = forward
    try:
        yield
    finally:
        if had:
            module.forward = old
        else:
            del module.forward


def _hidden_values(model, head: Head, inputs: dict, labels: torch.Tensor, mask: torch.Tensor, seen: dict):
    """``(B, T)`` log-probs from the hidden states the model feeds ``head``, in one ``model(**inputs)``."""
    captured: list[torch.Tensor] = []

    def forward(hidden: torch.Tensor) -> torch.Tensor:  # (B, T, H): what the model gives its head
        b, t, h = hidden.shape
        weight = head.module.weight  # read now: under FSDP2 / ZeRO-3 the gathered weight
        seen["low_precision"] = weight.dtype not in (torch.float32, torch.float64) or torch.is_autocast_enabled(
            hidden.device.type
        )
        # One position per "sequence": hidden_logps then returns each used position's own log-prob.
        values, _ = hidden_logps(
            hidden.reshape(b * t, 1, h),
            weight,
            labels.reshape(b * t, 1),
            mask.reshape(b * t, 1),
            bias=head.module.bias,
            logit_scale=head.logit_scale,
            final_logit_softcap=head.softcap,
        )
        values = values.view(b, t)
        captured.append(values)
        return (values - values.detach()).unsqueeze(-1)  # (B, T, 1) zeros that carry the gradient

    with _forward_replaced(head.module, forward):
        out = model(**inputs)
    if len(captured) != 1:
        raise RuntimeError(f"{head.model_type}: the output head ran {len(captured)} times in one forward")
    values = captured[0]
    passed = out.logits
    if passed.requires_grad:
        slope = head.logit_scale if head.logit_scale is not None else 1.0  # of the model's f(z) at z = 0
        values = values.detach() + passed.reshape(values.shape).to(values.dtype) / slope
    return values, out


def _logits_values(model, inputs: dict, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` log-probs from the model's full ``(B, T, V)`` logits (the plain path)."""
    out = model(**inputs)
    logits = out.logits
    b, t, v = logits.shape
    values, _ = sequence_logps(logits.reshape(b * t, 1, v), labels.reshape(b * t, 1), mask.reshape(b * t, 1))
    return values.view(b, t), out


PROBE_TOKENS = 8
_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # head module -> agrees with its logits?


def _agrees(model, head: Head) -> bool:
    """Does the hidden path give the model's own log-probs on a few tokens? Checked once per head module.

    Every process of a distributed run calls this at the same point (its first scoring call), so
    the two probe forwards stay collective."""
    known = _CHECKED.get(head.module)
    if known is not None:
        return known
    weight = head.module.weight
    vocab = weight.shape[0]
    ids = ((torch.arange(PROBE_TOKENS) * 7919 + 1) % vocab)[None].to(weight.device)  # (1, 8)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "use_cache": False}
    labels = ids.roll(-1, dims=1)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, -1] = False
    seen: dict = {}
    with torch.no_grad(), eval_mode(model):
        mine, _ = _hidden_values(model, head, inputs, labels, mask, seen)
        theirs, _ = _logits_values(model, inputs, labels, mask)
    tolerance = 0.25 if seen.get("low_precision") else 1e-3  # per token, nats; bf16 logits round apart
    difference = float((mine - theirs).abs().max())
    agrees = difference <= tolerance
    if not agrees:
        warnings.warn(
            f"{head.model_type}: log-probs from the hidden states differ from the model's own logits by "
            f"{difference:.3g} nats per token (its head does something after the matmul that prefpool does not "
            "know); scoring this model through its full logits instead (more memory)",
            stacklevel=3,
        )
    _CHECKED[head.module] = agrees
    return agrees


def token_logps(
    model: torch.nn.Module,
    inputs: dict,
    labels: torch.Tensor,
    mask: torch.Tensor,
    *,
    method: Method | None = None,
    with_output: bool = False,
):
    """Log-prob of ``labels[b, t]`` at every position where ``mask[b, t]``, 0 elsewhere: ``(B, T)`` float32.

    One ``model(**inputs)``; differentiable when gradient is enabled. ``labels`` and ``mask`` are
    ``(B, T)``, aligned with the model's output (``labels[:, t]`` is what position ``t`` predicts:
    the caller shifts). ``method``: "hidden" (from the hidden states, no logits; refused where the
    model's head is not a plain linear layer), "logits" (the model's full logits), None: "hidden"
    where the head is a plain linear layer that passes the one-time check, else "logits".
    ``with_output``: return ``(values, the model's output)`` (its ``past_key_values``; its "logits"
    are the placeholder zeros on the hidden path).
    """
    if method not in (None, *METHODS):
        raise ValueError(f"method: expected one of {METHODS} or None, got {method!r}")
    head = output_head(model) if method != "logits" else None
    if method == "hidden" and head is None:
        raise ValueError(
            f"method='hidden': the output head of this {model_type(model)} model is not a plain nn.Linear "
            "(a LoRA-wrapped, quantized or offloaded head); use method='logits' or None"
        )
    if head is not None and (method == "hidden" or _agrees(model, head)):
        values, out = _hidden_values(model, head, inputs, labels, mask, {})
    else:
        values, out = _logits_values(model, inputs, labels, mask)
    return (values, out) if with_output else values
