"""The value every loss returns."""

from __future__ import annotations

from typing import NamedTuple

import torch


class LossOutput(NamedTuple):
    """Per-example loss and detached metrics.

    Attributes:
        loss: unreduced per-example loss, shape ``(B,)``. The caller reduces it
            (``.mean()``, or a sum divided by a global example count under
            gradient accumulation).
        metrics: named, detached tensors, each of shape ``(B,)`` unless its
            docstring says otherwise. Nothing in here carries gradient.
    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]
