"""Per-sequence label log-probs straight from the last hidden states and the LM head.

:func:`sequence_logps` avoids a float32 copy of the logits, but the model has
already written them: ``(B, T, V)`` in the model's dtype, plus their gradient
in backward. With a 150k vocabulary that is the largest activation of a small
model. :func:`hidden_logps` takes the hidden states and the head's weight
instead and computes the logits one tile (positions x vocabulary entries) at a
time, in forward and again in backward, so no ``(B, T, V)`` (or ``(N, V)``)
tensor ever exists.
"""

from __future__ import annotations

import contextlib
import math
import numbers

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["hidden_logps"]


def _float_dtype(dtype: torch.dtype) -> torch.dtype:
    # float64 stays float64 (gradcheck); every other dtype is reduced in float32.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _no_autocast(device_type: str):
    """Autocast off for the body of forward/backward: the matmul dtype is chosen once, up front.

    Otherwise autocast would re-decide the dtype of every op inside (and of the
    backward matmuls, which autocast does not expect to see at all).
    """
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _matmul_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> tuple[torch.dtype, bool]:
    """The dtype the head's matmul runs in, and whether autocast chose it.

    Under ``torch.autocast`` an ``nn.Linear`` casts its (non-float64) inputs to
    the autocast dtype; we do the same, so the logits equal the model's own.
    """
    device_type = hidden.device.type
    if (
        torch.amp.is_autocast_available(device_type)
        and torch.is_autocast_enabled(device_type)
        and torch.float64 not in (hidden.dtype, weight.dtype)
    ):
        return torch.get_autocast_dtype(device_type), True
    return hidden.dtype, False


def _tiles(n_tok: int, vocab: int, chunk_elements: int) -> tuple[int, int]:
    """``(rows, cols)`` of a logits tile: about ``chunk_elements`` entries, as square as allowed.

    Whole vocabulary rows when they fit (few positions, or a small vocabulary):
    then it is ``sequence_logps``' chunking. Otherwise a tile spans at least
    ``sqrt(chunk_elements)`` vocabulary entries: thin tiles of a few full rows
    would re-read (and, in backward, re-accumulate) the whole ``(V, H)`` weight
    for every few positions, which is what makes a naive chunked head slow.
    """
    side = max(1, math.isqrt(chunk_elements))
    cols = min(vocab, max(side, chunk_elements // max(1, n_tok)))
    return max(1, chunk_elements // cols), cols


class _Head:
    """Tiles of the logits map ``h -> f(h @ W.T + b)`` with ``f(z) = c tanh(s z / c)``."""

    def __init__(self, weight, bias, mm_dtype, scale, cap):
        # Cast once per pass (no copy when the dtype already matches); under
        # autocast this is the same cast nn.Linear would make.
        self.weight = weight.to(mm_dtype)
        self.bias = None if bias is None else bias.to(mm_dtype)
        self.mm_dtype = mm_dtype
        self.scale = scale
        self.cap = cap
        self.dtype = _float_dtype(mm_dtype)

    def logits(
        self, h: torch.Tensor, v0: int, v1: int, *, keep_tanh: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(n, v1 - v0)`` transformed logits in float32 (float64), and, if asked, ``tanh(s z / c)``.

        The matmul is in ``mm_dtype`` (so bf16 logits round like the model's own
        ``lm_head``); the result is upcast first and then scaled and capped in
        float32, which is at least as accurate as HF's ops in the model dtype.
        """
        bias = None if self.bias is None else self.bias[v0:v1]
        z = F.linear(h, self.weight[v0:v1], bias).to(self.dtype)
        if self.scale is not None:
            z.mul_(self.scale)
        if self.cap is None:
            return z, None
        u = z.div_(self.cap).tanh_()  # in place: z is our private tile
        if not keep_tanh:  # forward: one buffer; backward needs tanh for the derivative
            return u.mul_(self.cap), None
        return u * self.cap, u


def _label_cols(lab: torch.Tensor, v0: int, v1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Column of each row's label inside the tile ``[v0, v1)`` (clamped), and whether it is there.

    Clamp-and-mask instead of ``nonzero``: no host sync per tile on a GPU.
    """
    local = lab - v0
    inside = (local >= 0) & (local < v1 - v0)
    return local.clamp_(0, v1 - v0 - 1).unsqueeze(1), inside


@torch.no_grad()
def _forward(hidden, head: _Head, b_idx, t_idx, lab, tiles):
    """``(N,)`` label log-probs and ``(N,)`` logsumexp at the gathered positions.

    Rows outer, vocabulary inner, with a running (max, sum of exp) per row: the
    logsumexp of a row is assembled across its vocabulary tiles.
    """
    n_tok, vocab = b_idx.numel(), head.weight.shape[0]
    rows_per, cols_per = tiles
    token_logps = torch.empty(n_tok, dtype=head.dtype, device=hidden.device)
    lse = torch.empty(n_tok, dtype=head.dtype, device=hidden.device)
    for r0 in range(0, n_tok, rows_per):
        r1 = min(r0 + rows_per, n_tok)
        # Gathered per row block: only (rows, H) of hidden is copied at a time.
        h = hidden[b_idx[r0:r1], t_idx[r0:r1]].to(head.mm_dtype)
        run_max = torch.full((r1 - r0,), -math.inf, dtype=head.dtype, device=hidden.device)
        run_sum = torch.zeros(r1 - r0, dtype=head.dtype, device=hidden.device)
        target = torch.zeros(r1 - r0, dtype=head.dtype, device=hidden.device)
        for v0 in range(0, vocab, cols_per):
            v1 = min(v0 + cols_per, vocab)
            y, _ = head.logits(h, v0, v1)
            col, inside = _label_cols(lab[r0:r1], v0, v1)
            target += torch.where(inside, y.gather(1, col).squeeze(1), 0.0)
            new_max = torch.maximum(run_max, y.amax(dim=1))
            # exp in place on the private tile; rescale the sum so far to the new max.
            run_sum = run_sum * torch.exp(run_max - new_max) + y.sub_(new_max[:, None]).exp_().sum(1)
            run_max = new_max
        lse[r0:r1] = run_max + run_sum.log()
        token_logps[r0:r1] = target - lse[r0:r1]
    return token_logps, lse


class _HiddenTokenLogps(torch.autograd.Function):
    """``(hidden, weight, bias) -> (N,)`` label log-probs, recomputing each tile's logits in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, b_idx, t_idx, lab, tiles, mm_dtype, scale, cap):
        with _no_autocast(hidden.device.type):
            head = _Head(weight, bias, mm_dtype, scale, cap)
            token_logps, lse = _forward(hidden, head, b_idx, t_idx, lab, tiles)
        # hidden/weight/bias are the caller's tensors, alive anyway; of our own
        # only (N,) tensors are kept. The cast weight (under autocast) is not
        # saved: it is remade in backward rather than held between the passes.
        ctx.save_for_backward(hidden, weight, bias, b_idx, t_idx, lab, lse)
        ctx.tiles, ctx.mm_dtype, ctx.scale, ctx.cap = tiles, mm_dtype, scale, cap
        return token_logps

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_tok):
        hidden, weight, bias, b_idx, t_idx, lab, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        rows_per, cols_per = ctx.tiles
        n_tok, vocab, width = b_idx.numel(), weight.shape[0], weight.shape[1]
        with _no_autocast(hidden.device.type):
            head = _Head(weight, bias, ctx.mm_dtype, ctx.scale, ctx.cap)
            acc = head.dtype  # float32 (float64): every sum over tiles is taken in it
            dev = hidden.device
            h_all = hidden[b_idx, t_idx].to(ctx.mm_dtype)  # (N, H): the size of hidden, not of logits
            grad_rows = torch.zeros(n_tok, width, dtype=acc, device=dev) if need_h else None
            grad_w = torch.empty_like(weight) if need_w else None
            grad_b = torch.empty_like(bias) if need_b else None
            grad_tok = grad_tok.to(acc)
            # Vocabulary outer, rows inner: a block of weight-gradient rows is summed
            # over all positions in a small float32 buffer and written once, so no
            # (V, H) accumulator or temporary exists; the accumulator that spans
            # the vocabulary is the (N, H) hidden gradient.
            for v0 in range(0, vocab, cols_per):
                v1 = min(v0 + cols_per, vocab)
                w_blk = head.weight[v0:v1]
                acc_w = torch.zeros(v1 - v0, width, dtype=acc, device=dev) if need_w else None
                acc_b = torch.zeros(v1 - v0, dtype=acc, device=dev) if need_b else None
                for r0 in range(0, n_tok, rows_per):
                    r1 = min(r0 + rows_per, n_tok)
                    h = h_all[r0:r1]
                    g = grad_tok[r0:r1, None]
                    y, u = head.logits(h, v0, v1, keep_tanh=True)
                    # d(y_label - lse)/dy = onehot(label) - softmax(y), softmax = exp(y - lse).
                    g_z = y.sub_(lse[r0:r1, None]).exp_().mul_(-g)
                    col, inside = _label_cols(lab[r0:r1], v0, v1)
                    g_z.scatter_add_(1, col, torch.where(inside[:, None], g, 0.0))
                    # Chain rule through f: dy/dz = s (1 - tanh^2) with a cap, s without.
                    if u is not None:
                        g_z.mul_(u.square_().neg_().add_(1))
                        del u
                    if ctx.scale is not None:
                        g_z.mul_(ctx.scale)
                    if need_b:
                        acc_b += g_z.sum(0)
                    # The matmuls run in the head's dtype, as nn.Linear's backward would.
                    g_z = g_z.to(ctx.mm_dtype)
                    if need_h:
                        if g_z.dtype == acc:
                            grad_rows[r0:r1].addmm_(g_z, w_blk)
                        else:
                            grad_rows[r0:r1] += g_z @ w_blk
                    if need_w:
                        if g_z.dtype == acc:
                            acc_w.addmm_(g_z.t(), h)
                        else:
                            acc_w += g_z.t() @ h
                if need_w:
                    grad_w[v0:v1] = acc_w
                if need_b:
                    grad_b[v0:v1] = acc_b
            grad_h = None
            if need_h:
                grad_h = torch.zeros_like(hidden)  # zero at every position not gathered
                grad_h[b_idx, t_idx] = grad_rows.to(hidden.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None, None, None, None


def _check_tensor(name, x, *, dim=None, shape=None, device=None, floating=False):
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    if dim is not None and x.dim() != dim[0]:
        raise ValueError(f"{name}: expected shape {dim[1]}, got {tuple(x.shape)}")
    if shape is not None and tuple(x.shape) != shape[0]:
        raise ValueError(f"{name}: expected shape {shape[0]} ({shape[1]}), got {tuple(x.shape)}")
    if device is not None and x.device != device:
        raise ValueError(f"{name}: on {x.device}, hidden on {device}")


def _check_number(name, x, *, positive):
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(x):
        raise ValueError(f"{name}: expected a finite real number or None, got {x!r}")
    if positive and x <= 0:
        raise ValueError(f"{name}: must be > 0, got {x!r}")
    return float(x)


def _validate(hidden, weight, labels, mask, bias, logit_scale, final_logit_softcap, chunk_elements):
    """Check the arguments; return ``(mask as bool, logit_scale, softcap)``."""
    _check_tensor("hidden", hidden, dim=(3, "(B, T, H)"), floating=True)
    dev, bt, width = hidden.device, tuple(hidden.shape[:2]), hidden.shape[2]
    _check_tensor("weight", weight, dim=(2, "(V, H)"), device=dev, floating=True)
    if weight.shape[1] != width:
        raise ValueError(f"weight: expected shape (V, {width}) (H = hidden's last dim), got {tuple(weight.shape)}")
    if weight.shape[0] < 1:
        raise ValueError("weight: vocabulary (dim 0) is empty")
    autocast = _matmul_dtype(hidden, weight)[1]
    # Without autocast nn.Linear refuses mixed dtypes; so do we, rather than guess.
    if weight.dtype != hidden.dtype and not autocast:
        raise ValueError(
            f"weight: dtype {weight.dtype} differs from hidden's {hidden.dtype} "
            "(outside torch.autocast they must match)"
        )
    if bias is not None:
        _check_tensor("bias", bias, shape=((weight.shape[0],), "weight's V"), device=dev, floating=True)
        if bias.dtype != weight.dtype and not autocast:
            raise ValueError(f"bias: dtype {bias.dtype} differs from weight's {weight.dtype}")
    _check_tensor("labels", labels, device=dev)
    if labels.dtype != torch.long:
        raise ValueError(f"labels: expected dtype torch.int64 (long), got {labels.dtype}")
    _check_tensor("labels", labels, shape=(bt, "hidden's B, T"))
    _check_tensor("mask", mask, shape=(bt, "hidden's B, T"), device=dev)
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or mask.is_complex():
            raise ValueError(f"mask: expected a bool or 0/1 integer tensor, got dtype {mask.dtype}")
        if bool(((mask != 0) & (mask != 1)).any()):
            raise ValueError("mask: integer mask must hold only 0 and 1")
        mask = mask != 0
    scale = _check_number("logit_scale", logit_scale, positive=False)
    cap = _check_number("final_logit_softcap", final_logit_softcap, positive=True)
    if isinstance(chunk_elements, bool) or not isinstance(chunk_elements, int) or chunk_elements < 1:
        raise ValueError(f"chunk_elements: must be an int >= 1, got {chunk_elements!r}")
    return mask, scale, cap


def hidden_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    logit_scale: float | None = None,
    final_logit_softcap: float | None = None,
    chunk_elements: int = 2**22,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Summed label log-probs of each sequence from hidden states and LM-head weight, and counts.

    .. math::

        z_{b,t} = W h_{b,t} + \beta, \qquad
        y_{b,t} = c \tanh(s\, z_{b,t} / c) \quad (\text{or } s\, z_{b,t} \text{ without a cap}),

        \mathrm{logps}_b = \sum_{t:\ \mathrm{mask}_{b,t}}
            \Big( y_{b,t,\ell_{b,t}} - \log \sum_v e^{y_{b,t,v}} \Big),
        \qquad \mathrm{counts}_b = \sum_t \mathrm{mask}_{b,t}

    with ``h = hidden``, ``W = weight``, ``β = bias``, ``s = logit_scale``,
    ``c = final_logit_softcap``, ``ℓ = labels``. Equal to
    ``sequence_logps(f(hidden @ weight.T + bias), labels, mask)`` without the
    ``(B, T, V)`` logits: scale first, then cap, as an HF model computes its
    logits (Cohere/Granite scale, Gemma 2/3 cap; none does both).

    Alignment is that of :func:`sequence_logps`: ``hidden[:, t]`` scores
    ``labels[:, t]``, no shift inside. For a causal LM (``hidden[:, t]``
    predicts token ``t + 1``) roll the labels as ``prefpool.pipeline.model.scoring`` does::

        labels = input_ids.roll(-1, dims=1)
        mask = completion_mask.roll(-1, dims=1); mask[:, -1] = False

    Args:
        hidden: ``(B, T, H)`` last hidden states, after the final norm (HF:
            ``model.model(...).last_hidden_state``).
        weight: ``(V, H)`` the LM head's weight (HF: ``model.lm_head.weight``;
            it may be the input embedding's Parameter, tied: autograd adds both
            gradients). Same dtype as ``hidden`` unless under ``torch.autocast``.
        labels: ``(B, T)`` long; used values in ``[0, V)``, others ignored (``-100`` too).
        mask: ``(B, T)`` bool or 0/1 integer: the positions to score.
        bias: optional ``(V,)`` head bias.
        logit_scale: multiply the logits by this (Cohere ``config.logit_scale``;
            Granite divides by ``config.logits_scaling``: pass its inverse).
        final_logit_softcap: ``> 0``; ``y = c * tanh(y / c)`` (Gemma 2/3
            ``config.final_logit_softcapping``).
        chunk_elements: about how many logits exist at once, in tiles of
            positions x vocabulary entries: whole vocabulary rows,
            ``chunk_elements // V`` of them, when ``chunk_elements // N >= V``
            or ``V <= sqrt(chunk_elements)`` (as in ``sequence_logps``),
            otherwise tiles at least ``sqrt(chunk_elements)`` entries wide
            (2048 x 2048 for the default 2**22, 16 MiB in float32).

    Returns:
        ``(logps, counts)``: ``(B,)`` float32 (float64 for float64 inputs) and
        ``(B,)`` long. A row without used positions gets 0 and 0.

    How: the ``N`` used positions are gathered (``mask.nonzero()``), so prompt
    and padding never reach the head. Forward takes a block of positions at a
    time and walks the vocabulary in tiles: matmul in the inputs' dtype (bf16
    logits are the model's own), upcast to float32, scale/cap, pick the label,
    and a running max and sum of exponentials give each row's logsumexp. Only
    the ``(N,)`` logsumexp is saved. Backward walks the vocabulary outermost
    and recomputes each tile's logits:
    ``dz = g (onehot(label) - softmax(y)) f'(z)``, ``grad_bias += dz.sum(0)``,
    ``grad_weight[tile] += dz.T @ h`` (summed over the position blocks in a
    float32 buffer, then written once in the weight's dtype) and
    ``grad_hidden += dz @ W[tile]`` (an ``(N, H)`` float32 sum, scattered
    back to the used positions; zero elsewhere). Thin tiles of whole rows
    would re-read, and in backward re-accumulate, the whole ``(V, H)`` weight
    for every few positions; square tiles do each once per block. Only the
    gradients whose input requires grad are made; with none, or under
    ``torch.no_grad``/inference mode, no autograd node is built. Extra memory:
    a tile and its ``(cols, H)`` weight-gradient buffer, the ``(N, H)``
    gathered rows and their float32 gradient, the gradients themselves, and
    under autocast the weight cast to the autocast dtype (as ``nn.Linear``
    makes it). Not checked for NaN/inf: a NaN input gives a NaN result.

    Autocast: under ``torch.autocast`` the matmuls (forward and backward) run in
    the autocast dtype, as ``nn.Linear``'s would (float64 inputs excepted);
    the rest in float32, with autocast off inside. Gradients come back in
    ``hidden``'s and ``weight``'s own dtypes (float32 master weights get a
    float32 weight gradient).

    Raises:
        ValueError: message starting with the argument's name: wrong type,
            dtype, shape or device, ``H`` mismatch, a non-0/1 integer mask, a
            used label outside ``[0, V)``, a bad scale, cap or chunk size.
    """
    mask, scale, cap = _validate(hidden, weight, labels, mask, bias, logit_scale, final_logit_softcap, chunk_elements)
    batch, vocab = hidden.shape[0], weight.shape[0]
    counts = mask.sum(dim=1, dtype=torch.long)
    b_idx, t_idx = mask.nonzero(as_tuple=True)
    lab = labels[b_idx, t_idx]
    out_of_range = (lab < 0) | (lab >= vocab)
    if bool(out_of_range.any()):
        bad = int(out_of_range.nonzero()[0, 0])
        pos = (int(b_idx[bad]), int(t_idx[bad]))
        raise ValueError(f"labels: value {int(lab[bad])} at masked-in position {pos} is outside [0, {vocab})")
    tiles = _tiles(b_idx.numel(), vocab, chunk_elements)
    mm_dtype, _ = _matmul_dtype(hidden, weight)
    inputs = (hidden, weight) if bias is None else (hidden, weight, bias)
    if torch.is_grad_enabled() and any(x.requires_grad for x in inputs):
        token_logps = _HiddenTokenLogps.apply(hidden, weight, bias, b_idx, t_idx, lab, tiles, mm_dtype, scale, cap)
    else:
        with _no_autocast(hidden.device.type):
            head = _Head(weight, bias, mm_dtype, scale, cap)
            token_logps, _ = _forward(hidden, head, b_idx, t_idx, lab, tiles)
    logps = torch.zeros(batch, dtype=token_logps.dtype, device=hidden.device)
    logps = logps.index_add(0, b_idx, token_logps)
    return logps, counts
