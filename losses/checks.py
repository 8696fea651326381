"""Input validation shared by the losses.

Every failure is a ``ValueError`` whose message starts with the argument's
name, so a caller can tell which tensor was wrong without reading our code.
"""

from __future__ import annotations

import torch


def check_logps(
    name: str, x: torch.Tensor, shape: tuple[int, ...] | None = None, mask: torch.Tensor | None = None
) -> None:
    """Check a log-prob tensor: floating point, the expected shape, finite.

    ``mask`` (same shape, bool) limits the finiteness check to the entries that
    are used: padded pool slots may hold anything.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    if shape is not None and tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(x.shape)}")
    used = x if mask is None else x[mask]
    if not bool(torch.isfinite(used).all()):
        bad = (~torch.isfinite(x)) if mask is None else (~torch.isfinite(x) & mask)
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name}: contains NaN or inf (first at index {first})")


def check_batch(name: str, x: torch.Tensor) -> int:
    """Check a ``(B,)`` log-prob tensor and return B."""
    check_logps(name, x)
    if x.dim() != 1:
        raise ValueError(f"{name}: expected shape (B,), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: empty batch")
    return x.shape[0]


def check_mask(name: str, mask: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor | None:
    """Check an optional bool mask of the given shape."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"{name}: expected a bool tensor")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(mask.shape)}")
    return mask


def check_counts(name: str, counts: torch.Tensor, batch: int) -> None:
    """Check a ``(B,)`` token-count tensor: positive everywhere."""
    if not isinstance(counts, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(counts).__name__}")
    if tuple(counts.shape) != (batch,):
        raise ValueError(f"{name}: expected shape ({batch},), got {tuple(counts.shape)}")
    if not bool((counts > 0).all()):
        raise ValueError(f"{name}: token counts must be positive")


def check_pair(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None) -> int:
    """Check the ``(B,)`` log-prob tensors of a batch of pairs (the reference ones when given) and return B."""
    batch = check_batch("policy_chosen_logps", policy_chosen_logps)
    check_logps("policy_rejected_logps", policy_rejected_logps, (batch,))
    if ref_chosen_logps is not None:
        check_logps("ref_chosen_logps", ref_chosen_logps, (batch,))
    if ref_rejected_logps is not None:
        check_logps("ref_rejected_logps", ref_rejected_logps, (batch,))
    return batch


def check_label_smoothing(label_smoothing: float) -> None:
    if not (isinstance(label_smoothing, (int, float)) and 0.0 <= label_smoothing < 0.5):
        raise ValueError(f"label_smoothing: must be in [0, 0.5), got {label_smoothing!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_positive(name: str, value: float) -> None:
    if not (_is_number(value) and value > 0 and value != float("inf")):
        raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")


def check_nonnegative(name: str, value: float) -> None:
    if not (_is_number(value) and value >= 0 and value != float("inf")):
        raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Compute in float32 at least: logsigmoid and logsumexp lose too much in bf16/fp16."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
