"""Scoring many completions of one prompt with the prompt run once: its keys and values are cached.

MC-PO's pool pass scores ``1 + M`` answers per prompt. Run as ``1 + M`` full
sequences, the prompt goes through the model ``1 + M`` times; here it goes
once. For a batch of pairs (prompts of at least 2 tokens):

1. the distinct prompts, *without their last token*, are run once, right-padded,
   with ``use_cache=True``: their keys and values, ``(G, heads, P - 1, d)`` per layer;
2. the cache is copied out to one row per pair (``reorder_cache`` with each
   pair's prompt index), and the rows ``[last prompt token, c_1 .. c_L]`` are
   run against it. The attention mask is the prompt's padding mask followed by
   the completion's, the position ids continue each prompt's own length (so
   the rotary phases equal those of the full sequence), and the causal mask
   follows the cache slots. Position 0 (the prompt's last token) predicts
   ``c_1``, position ``j`` predicts ``c_{j+1}``: the same ``L`` log-probs as the
   full sequence, through ``lm_head.token_logps``.

The prompt's last token is fed with the completions so that no log-prob has
to come out of the prompt pass: the prompt pass asks the head for nothing
(``logits_to_keep=1``, an empty mask). The result equals the unshared pass up
to float rounding (another order of the same sums; tested). Models whose
cache is not a plain ``DynamicCache`` of full-attention layers (sliding-window
layers drop old keys; other cache types) are scored without sharing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .batches import TokenPair
from .lm_head import Method, token_logps


def shareable(pair: TokenPair) -> bool:
    """A pair whose prompt leaves at least one token to cache once its last token moves to the completion."""
    return len(pair[0]) >= 2


def _plain_cache(cache) -> bool:
    from transformers.cache_utils import DynamicCache, DynamicLayer

    return (
        isinstance(cache, DynamicCache)
        and all(type(layer) is DynamicLayer for layer in cache.layers)
        and cache.get_seq_length() > 0
    )


def shared_prompt_logps(
    model: torch.nn.Module, pairs: Sequence[TokenPair], pad_token_id: int, *, method: Method | None = None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(values (N, W), mask (N, W))``: per-position log-probs of each pair's completion tokens, or None.

    Two forwards (the prompts, then the completions against their cache); no gradient. None where
    the model's cache cannot be shared (see the module docstring): the caller scores the pairs
    unshared. ``values[mask]`` row by row are each completion's token log-probs in order.
    """
    if not all(shareable(p) for p in pairs):
        raise ValueError("pairs: every prompt needs at least 2 tokens to share its cache")
    device = next(model.parameters()).device
    index: dict[tuple[int, ...], int] = {}
    rows = [index.setdefault(tuple(prompt), len(index)) for prompt, _ in pairs]
    prompts = list(index)

    width = max(len(p) for p in prompts) - 1
    prefix = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    prefix_attention = torch.zeros(len(prompts), width, dtype=torch.long)
    for g, prompt in enumerate(prompts):
        prefix[g, : len(prompt) - 1] = torch.tensor(prompt[:-1])
        prefix_attention[g, : len(prompt) - 1] = 1
    prefix, prefix_attention = prefix.to(device), prefix_attention.to(device)
    nothing = torch.zeros(len(prompts), 1, dtype=torch.bool, device=device)
    _, out = token_logps(
        model,
        {"input_ids": prefix, "attention_mask": prefix_attention, "use_cache": True, "logits_to_keep": 1},
        torch.zeros(len(prompts), 1, dtype=torch.long, device=device),
        nothing,
        method=method,
        with_output=True,
    )
    cache = out.past_key_values
    if not _plain_cache(cache) or cache.get_seq_length() != width:
        return None
    picked = torch.tensor(rows, device=device)
    cache.reorder_cache(picked)  # (N, heads, width, d) per layer: each pair's own copy of its prompt

    span = max(len(c) for _, c in pairs) + 1
    ids = torch.full((len(pairs), span), pad_token_id, dtype=torch.long)
    attention = torch.zeros(len(pairs), span, dtype=torch.long)
    scored = torch.zeros(len(pairs), span, dtype=torch.bool)  # labels[:, j] = ids[:, j + 1] is a completion token
    start = torch.zeros(len(pairs), 1, dtype=torch.long)
    for n, (prompt, completion) in enumerate(pairs):
        ids[n, : len(completion) + 1] = torch.tensor([prompt[-1], *completion])
        attention[n, : len(completion) + 1] = 1
        scored[n, : len(completion)] = True
        start[n] = len(prompt) - 1
    positions = (start + torch.arange(span)).to(device)  # (N, span): each prompt's own continuation
    ids, attention, scored = ids.to(device), attention.to(device), scored.to(device)
    labels = ids.roll(-1, dims=1)
    values = token_logps(
        model,
        {
            "input_ids": ids,
            "attention_mask": torch.cat([prefix_attention[picked], attention], dim=1),
            "position_ids": positions,
            "past_key_values": cache,
            "use_cache": False,
        },
        labels,
        scored,
        method=method,
    )
    return values, scored
