"""Per-sequence log-probabilities of label tokens, without a full log-softmax.

A causal LM's logits for a preference batch are large: ``B * T * V`` with a
vocabulary of 50k-250k entries. The textbook recipe
``log_softmax(logits.float(), -1).gather(-1, labels)`` materializes a float32
copy *and* a float32 log-softmax of that size, and autograd keeps the latter
for the backward pass. :func:`sequence_logps` computes the same numbers
position-chunk by position-chunk and keeps only one float per used token.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

__all__ = ["sequence_logps"]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # float64 stays float64 (used by gradcheck); everything else is done in float32.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk_rows(chunk_elements: int, vocab: int) -> int:
    return max(1, chunk_elements // max(1, vocab))


def _rows(logits: torch.Tensor, b_idx: torch.Tensor, t_idx: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Gather positions ``start:stop`` as a fresh ``(n, V)`` tensor in the compute dtype.

    Advanced indexing copies only these rows and works on strided views, so a
    non-contiguous ``logits`` is never copied as a whole.
    """
    rows = logits[b_idx[start:stop], t_idx[start:stop]]
    return rows.to(_compute_dtype(logits.dtype))


@torch.no_grad()
def _token_logps_and_lse(
    logits: torch.Tensor, b_idx: torch.Tensor, t_idx: torch.Tensor, lab: torch.Tensor, chunk_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N,)`` label log-probs and ``(N,)`` logsumexp at the gathered positions."""
    n_tok = b_idx.numel()
    dtype = _compute_dtype(logits.dtype)
    token_logps = torch.empty(n_tok, dtype=dtype, device=logits.device)
    lse = torch.empty(n_tok, dtype=dtype, device=logits.device)
    for start in range(0, n_tok, chunk_rows):
        stop = min(start + chunk_rows, n_tok)
        rows = _rows(logits, b_idx, t_idx, start, stop)  # (n, V), a private copy
        target = rows.gather(1, lab[start:stop, None]).squeeze(1)
        # logsumexp in place on the private copy: one (n, V) buffer per chunk.
        peak = rows.amax(dim=1, keepdim=True)
        peak = torch.where(torch.isinf(peak), torch.zeros_like(peak), peak)  # all -inf row
        rows.sub_(peak).exp_()
        chunk_lse = rows.sum(dim=1).log_().add_(peak.squeeze(1))
        lse[start:stop] = chunk_lse
        token_logps[start:stop] = target - chunk_lse
    return token_logps, lse


class _MaskedTokenLogps(torch.autograd.Function):
    """``logits -> (N,)`` label log-probs at the given positions, recomputing softmax in backward."""

    @staticmethod
    def forward(ctx, logits, b_idx, t_idx, lab, chunk_rows):
        token_logps, lse = _token_logps_and_lse(logits, b_idx, t_idx, lab, chunk_rows)
        # Only (N,) tensors of our own are saved; `logits` is the caller's tensor,
        # already alive, and is needed to recompute the softmax.
        ctx.save_for_backward(logits, b_idx, t_idx, lab, lse)
        ctx.chunk_rows = chunk_rows
        return token_logps

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_tok):
        logits, b_idx, t_idx, lab, lse = ctx.saved_tensors
        grad = torch.zeros(logits.shape, dtype=logits.dtype, device=logits.device)
        n_tok = b_idx.numel()
        grad_tok = grad_tok.to(lse.dtype)
        for start in range(0, n_tok, ctx.chunk_rows):
            stop = min(start + ctx.chunk_rows, n_tok)
            g = grad_tok[start:stop, None]
            rows = _rows(logits, b_idx, t_idx, start, stop)
            # d(x_y - lse)/dx = onehot(y) - softmax(x); softmax = exp(x - lse).
            rows.sub_(lse[start:stop, None]).exp_().mul_(-g)
            rows.scatter_add_(1, lab[start:stop, None], g)
            grad.index_put_((b_idx[start:stop], t_idx[start:stop]), rows.to(grad.dtype))
        return grad, None, None, None, None


def _validate(logits, labels, mask, chunk_elements) -> torch.Tensor:
    """Check the arguments; return the mask as a bool tensor."""
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"logits: expected a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise ValueError(f"logits: expected a floating-point tensor, got dtype {logits.dtype}")
    if logits.dim() != 3:
        raise ValueError(f"logits: expected shape (B, T, V), got {tuple(logits.shape)}")
    bt = tuple(logits.shape[:2])
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels: expected a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype != torch.long:
        raise ValueError(f"labels: expected dtype torch.int64 (long), got {labels.dtype}")
    if tuple(labels.shape) != bt:
        raise ValueError(f"labels: expected shape {bt} (logits' B, T), got {tuple(labels.shape)}")
    if labels.device != logits.device:
        raise ValueError(f"labels: on {labels.device}, logits on {logits.device}")
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask: expected a torch.Tensor, got {type(mask).__name__}")
    if tuple(mask.shape) != bt:
        raise ValueError(f"mask: expected shape {bt} (logits' B, T), got {tuple(mask.shape)}")
    if mask.device != logits.device:
        raise ValueError(f"mask: on {mask.device}, logits on {logits.device}")
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or mask.is_complex():
            raise ValueError(f"mask: expected a bool or 0/1 integer tensor, got dtype {mask.dtype}")
        if bool(((mask != 0) & (mask != 1)).any()):
            raise ValueError("mask: integer mask must hold only 0 and 1")
        mask = mask != 0
    if isinstance(chunk_elements, bool) or not isinstance(chunk_elements, int) or chunk_elements < 1:
        raise ValueError(f"chunk_elements: must be an int >= 1, got {chunk_elements!r}")
    return mask


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, *, chunk_elements: int = 2**22
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Summed log-probability of the label tokens of each sequence, and their count.

    .. math::

        \mathrm{logps}_b = \sum_{t:\ \mathrm{mask}_{b,t}}
            \Big( z_{b,t,y_{b,t}} - \log \sum_{v} e^{z_{b,t,v}} \Big),
        \qquad \mathrm{counts}_b = \sum_t \mathrm{mask}_{b,t}

    with ``z = logits`` and ``y = labels``.

    Alignment: ``logits[:, t]`` scores ``labels[:, t]``; this function does not
    shift. For a causal LM whose ``logits[:, t]`` predicts token ``t + 1`` pass::

        sequence_logps(logits[:, :-1], input_ids[:, 1:], completion_mask[:, 1:])

    Those slices are strided views; they are read in place, never copied whole.

    Args:
        logits: ``(B, T, V)`` float32, bfloat16 or float16 (float64 is kept in
            float64). Not checked for NaN/inf: that would cost a full pass per
            step; a NaN logit at a used position gives a NaN result.
        labels: ``(B, T)`` long. Values at masked-out positions are ignored and
            may be anything (``-100`` included); used ones must lie in ``[0, V)``.
        mask: ``(B, T)`` bool, or integer holding only 0/1: the positions to score.
        chunk_elements: rough number of logits upcast to float32 at once; a chunk
            holds ``max(1, chunk_elements // V)`` positions. The default, 2**22
            (16 MiB in float32), was no slower than 2**26 and used less memory
            in ``benchmarks/bench_sequence_logps.py`` (see BENCHMARKS.md).

    Returns:
        ``(logps, counts)``: ``logps`` ``(B,)`` float32 (float64 for float64
        logits), ``counts`` ``(B,)`` long, the number of used positions. A row
        without used positions gets ``logps`` 0 and ``counts`` 0.

    Why chunked: only the ``N`` used positions are gathered (``mask.nonzero()``),
    and they are processed a chunk at a time: upcast to float32, logsumexp, pick
    the label's logit. Only the ``(N,)`` logsumexp is saved for backward, which
    recomputes ``softmax`` chunk by chunk and writes
    ``grad * (onehot(label) - softmax)`` into a zero gradient shaped like
    ``logits`` (in ``logits``' dtype). So no float32 ``(B, T, V)`` tensor exists
    at any time; the extra memory is one float32 chunk plus the gradient that
    any dense backward must produce. Under ``torch.no_grad`` / inference mode,
    or when ``logits`` does not require grad, no autograd node is built.

    Raises:
        ValueError: message starting with the argument's name, for a wrong type,
            dtype, shape or device, a non-0/1 integer mask, or a used label
            outside ``[0, V)``.
    """
    mask = _validate(logits, labels, mask, chunk_elements)
    batch, _, vocab = logits.shape
    counts = mask.sum(dim=1, dtype=torch.long)
    b_idx, t_idx = mask.nonzero(as_tuple=True)
    lab = labels[b_idx, t_idx]
    out_of_range = (lab < 0) | (lab >= vocab)
    if bool(out_of_range.any()):
        bad = int(out_of_range.nonzero()[0, 0])
        pos = (int(b_idx[bad]), int(t_idx[bad]))
        raise ValueError(f"labels: value {int(lab[bad])} at masked-in position {pos} is outside [0, {vocab})")
    chunk_rows = _chunk_rows(chunk_elements, vocab)
    if torch.is_grad_enabled() and logits.requires_grad:
        token_logps = _MaskedTokenLogps.apply(logits, b_idx, t_idx, lab, chunk_rows)
    else:
        token_logps, _ = _token_logps_and_lse(logits, b_idx, t_idx, lab, chunk_rows)
    logps = torch.zeros(batch, dtype=token_logps.dtype, device=logits.device)
    logps = logps.index_add(0, b_idx, token_logps)
    return logps, counts
