"""Turn a model and tokenized (prompt, completion) pairs into per-sequence log-probs: the one scoring path.

A sequence here is a pair of token-id lists ``(prompt_ids, completion_ids)``
as made by the pipeline's shared tokenization. Every caller goes through this
module: the ``logprobs`` stage's hf engine (the cached reference values), the
trainer's gradient pass and its step-0 check, MC-PO's pool pass, ``prefpool
eval``, the controlled task's probe and the examples. So a cached reference
value and the policy's own value at step 0 come out of the same code.

- ``completion_logps``: one forward, with gradient when enabled (the gradient
  pass). Rows are right-padded, or packed end to end into one row where the
  attention implementation takes packed sequences (``packing``).
- ``score_pairs`` / ``score_tokens``: no gradient, any number of pairs, in
  length-bucketed batches of at most ``max_tokens`` padded tokens
  (``batches.plan_batches``, the one planner); optionally a prompt shared by
  several pairs is run once (``prompt_cache``).

Log-probs come from the last hidden states, never from full logits
(``lm_head.token_logps``: the head runs in tiles over the completion
positions only), except where the model's head cannot be run that way.

Packing (``packing=True``): the pairs go end to end in one ``(1, S)`` row with
position ids restarting per sequence and no attention mask, which
transformers turns into per-sequence attention: flash-attention 2/3's varlen
kernels (CUDA; ``packing=None`` packs there by default; not run in this
project's tests, which have no GPU), or a block-diagonal mask for sdpa and
eager (correct and tested, but the mask and the attention over it grow with
``S**2``: on these the default is padding). Other implementations (flex, paged)
are not packed by default either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .batches import TokenPair, pack_pairs, pad_pairs, plan_batches
from .lm_head import Method, token_logps, unwrap
from .modes import eval_mode
from .prompt_cache import shareable, shared_prompt_logps

__all__ = [
    "TokenPair",
    "completion_logps",
    "eval_mode",
    "pack_pairs",
    "packing_default",
    "pad_pairs",
    "plan_batches",
    "plan_scoring",
    "score_pairs",
    "score_tokens",
]

VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")  # packed by default (CUDA only)


def packing_default(model: torch.nn.Module) -> bool:
    """Pack by default only where attention runs per packed sequence without a dense mask."""
    config = getattr(unwrap(model), "config", None)
    return getattr(config, "_attn_implementation", None) in VARLEN_ATTENTION


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _shifted(input_ids: torch.Tensor, completion_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``labels[:, t] = input_ids[:, t + 1]`` and whether it is a completion token, ``(B, T)`` each.

    Rolled rather than sliced (``logits[:, :-1]``): nothing downstream holds a strided view of a
    ``(B, T, ...)`` activation, whose gradient autograd would materialize a second time."""
    labels = input_ids.roll(-1, dims=1)
    mask = completion_mask.roll(-1, dims=1)
    mask[:, -1] = False
    return labels, mask


def _forward_pairs(
    model: torch.nn.Module, pairs: Sequence[TokenPair], pad_token_id: int, *, packing: bool, method: Method | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward: ``(logps (N,), counts (N,), values (R, W), mask (R, W))``, ``values[mask]`` being
    the completion tokens' log-probs, pair after pair, in order."""
    device = _device(model)
    if packing:
        batch = pack_pairs(pairs, device)
        labels, mask = _shifted(batch["input_ids"], batch["completion_mask"])
        sequence = batch["sequence"]
        mask &= sequence == sequence.roll(-1, dims=1)  # never predict the next sequence's first token
        inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
        values = token_logps(model, inputs, labels, mask, method=method)  # (1, S)
        logps = torch.zeros(len(pairs), dtype=values.dtype, device=device).index_add(0, sequence[0], values[0])
        counts = torch.zeros(len(pairs), dtype=torch.long, device=device).index_add(0, sequence[0], mask[0].long())
        return logps, counts, values, mask
    batch = pad_pairs(pairs, pad_token_id, device)
    labels, mask = _shifted(batch["input_ids"], batch["completion_mask"])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    values = token_logps(model, inputs, labels, mask, method=method)  # (N, T)
    return values.sum(dim=1), mask.sum(dim=1), values, mask


def completion_logps(
    model: torch.nn.Module,
    pairs: Sequence[TokenPair],
    pad_token_id: int,
    *,
    packing: bool | None = None,
    method: Method | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of each completion under ``model`` and its token count, ``(N,)`` float32 and long.

    One forward pass; gradient flows if it is enabled. ``packing``: None = where the attention
    implementation is varlen (see the module docstring). ``method``: see ``lm_head.token_logps``
    (None: from hidden states where the model's head allows it).
    """
    if packing is None:
        packing = packing_default(model)
    logps, counts, _, _ = _forward_pairs(model, pairs, pad_token_id, packing=packing, method=method)
    return logps, counts


def plan_scoring(
    pairs: Sequence[TokenPair], max_tokens: int, *, share_prompts: bool
) -> tuple[list[list[int]], list[list[int]]]:
    """``score_tokens``' batches: ``(shared, plain)`` lists of pair indices. A shared batch costs two
    forwards (its prompts, then its answers against their cache), a plain one one forward.

    Widths are prompt + completion tokens. Shared batches are ordered by prompt length, then prompt,
    then width, so the answers of a prompt are consecutive and usually share one batch."""
    widths = [len(p) + len(c) for p, c in pairs]
    shared = [i for i, pair in enumerate(pairs) if share_prompts and shareable(pair)]
    plain = sorted(set(range(len(pairs))) - set(shared))
    prompt_of: dict[tuple[int, ...], int] = {}
    for i in shared:
        prompt_of.setdefault(tuple(pairs[i][0]), len(prompt_of))

    def by_prompt(j: int):
        prompt = pairs[shared[j]][0]
        return (len(prompt), prompt_of[tuple(prompt)], widths[shared[j]], j)

    shared_batches = [
        [shared[j] for j in b] for b in plan_batches([widths[i] for i in shared], max_tokens, key=by_prompt)
    ]
    plain_batches = [[plain[j] for j in b] for b in plan_batches([widths[i] for i in plain], max_tokens)]
    return shared_batches, plain_batches


def _dummy(model, pad_token_id: int, method: Method | None) -> None:
    """One forward on a two-token sequence, result dropped (lockstep)."""
    _forward_pairs(model, [((pad_token_id,), (pad_token_id,))], pad_token_id, packing=False, method=method)


@torch.no_grad()
def score_tokens(
    model: torch.nn.Module,
    pairs: Sequence[TokenPair],
    pad_token_id: int,
    *,
    max_tokens: int = 16384,
    lockstep: bool = False,
    share_prompts: bool = False,
    packing: bool | None = None,
    method: Method | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Log-probs of many sequences without gradient: the sums ``(N,)`` float32 and, per sequence, its
    completion tokens' log-probs ``(L_i,)`` float32, on the CPU, in input order.

    Batches: ``plan_batches`` over the padded widths (prompt + completion), at most ``max_tokens``
    padded tokens each. ``share_prompts``: pairs with the same prompt (of at least 2 tokens) are
    scored against one run of it (``prompt_cache``): two forwards per batch, the same values up to
    float rounding; such batches are ordered by prompt, so a prompt's answers meet.

    ``lockstep``: every process of the ``torch.distributed`` group runs as many forward passes as
    the process with the most (the extra ones on a two-token dummy, result dropped), and all
    processes must call this together. A sharded model (FSDP, DeepSpeed ZeRO-3) gathers its
    parameters collectively in each forward, so a process that ran fewer would wait forever.

    ``on_batch(n)``: called after each batch with its number of sequences (progress).
    """
    if packing is None:
        packing = packing_default(model)
    shared_batches, plain_batches = plan_scoring(pairs, max_tokens, share_prompts=share_prompts)
    forwards = 2 * len(shared_batches) + len(plain_batches)
    extra = 0
    if lockstep:
        most = torch.tensor(forwards, device=_device(model))
        torch.distributed.all_reduce(most, op=torch.distributed.ReduceOp.MAX)
        extra = int(most) - forwards

    sums = torch.empty(len(pairs), dtype=torch.float32)
    tokens: list[torch.Tensor | None] = [None] * len(pairs)

    def store(rows: list[int], logps: torch.Tensor, counts: torch.Tensor, values: torch.Tensor, mask) -> None:
        sums[rows] = logps.float().cpu()
        # values[mask] runs row by row (a packed row: sequence by sequence), so counts split it per pair.
        for i, v in zip(rows, values[mask].float().cpu().split(counts.tolist()), strict=True):
            tokens[i] = v
        if on_batch is not None:
            on_batch(len(rows))

    for rows in shared_batches:
        batch = [pairs[i] for i in rows]
        result = shared_prompt_logps(model, batch, pad_token_id, method=method)
        if result is None:  # this model's cache cannot be shared: the same count of forwards, unshared
            store(rows, *_forward_pairs(model, batch, pad_token_id, packing=False, method=method))
        else:
            values, mask = result
            store(rows, values.sum(dim=1), mask.sum(dim=1), values, mask)
    for rows in plain_batches:
        store(rows, *_forward_pairs(model, [pairs[i] for i in rows], pad_token_id, packing=packing, method=method))
    for _ in range(extra):
        _dummy(model, pad_token_id, method)
    return sums, tokens  # type: ignore[return-value]


def score_pairs(
    model: torch.nn.Module,
    pairs: Sequence[TokenPair],
    pad_token_id: int,
    *,
    max_tokens: int = 16384,
    lockstep: bool = False,
    share_prompts: bool = False,
    packing: bool | None = None,
    method: Method | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Log-probs of many sequences without gradient, ``(N,)`` float32 on the CPU, in input order
    (``score_tokens``' sums; the same arguments)."""
    sums, _ = score_tokens(
        model,
        pairs,
        pad_token_id,
        max_tokens=max_tokens,
        lockstep=lockstep,
        share_prompts=share_prompts,
        packing=packing,
        method=method,
        on_batch=on_batch,
    )
    return sums
