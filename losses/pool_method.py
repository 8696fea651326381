"""MC-PO's method spec; its loss is ``mcpo.mcpo_loss``, its kernels are in ``mcpo_kernels``.

MC-PO trains on an ``mcpo`` table with a two-pass step (``prefpool.train.kinds.mcpo``).
S-DPO's softmax loss (Chen et al. 2024, arXiv 2406.09215) over a pool of
negatives is the ``listwise`` kernel: ``-r0 + logsumexp(r0, r_1..r_M)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .mcpo import mcpo_loss
from .mcpo_kernels import MCPO_KERNELS
from .method import Method, setting


@dataclass(frozen=True)
class MCPOSettings:
    beta: float = setting(0.1, "KL strength: rewards are beta * (log pi - log pi_ref), > 0.")
    kernel: str = setting(
        "sample",
        "sample (the paper's kernel, Chen et al. 2025 Sec. 3: a draw from the preferred answer and the pool, "
        "prob. ∝ exp(reward)) | sample_pool (the same over the pool only) | max | min | uniform (DPO with the "
        "hardest / easiest / a random pool answer) | rao_blackwell (the sample kernel's expected loss) | "
        "listwise (-r0 + logsumexp: S-DPO's softmax loss). One of: " + ", ".join(MCPO_KERNELS),
    )


METHODS = (
    Method(
        "mcpo",
        mcpo_loss,
        MCPOSettings,
        kind="mcpo",
        needs_reference=True,
        summary="MC-PO (Chen et al. 2025): DPO against a kernel-drawn negative from the pool",
    ),
)
