"""Preference-optimization losses as pure functions of per-sequence log-probs.

Depends on torch only, so it plugs into any trainer (plain PyTorch, HF
``Trainer``, TRL, Lightning). Each loss returns the unreduced per-example loss
``(B,)`` and a dict of detached metrics; see ``LossOutput``.
"""

from .hidden_logps import hidden_logps
from .logps import sequence_logps
from .mcpo import mcpo_loss, mcpo_select
from .mcpo_kernels import (
    AVERAGING_KERNELS,
    CHOSEN_INDEX,
    CHOSEN_SUPPORT_KERNELS,
    MCPO_KERNELS,
    RAO_BLACKWELL_MAX_DRAWS,
    SELECTION_KERNELS,
    check_num_negatives,
    kernel_probs,
    picked_slots,
)
from .mpo import mpo_loss
from .nll import add_chosen_nll, chosen_nll
from .output import LossOutput
from .pairwise import dpo_loss, ipo_loss, simpo_loss
from .registry import LOSSES, get_loss

__all__ = [
    "AVERAGING_KERNELS",
    "CHOSEN_INDEX",
    "CHOSEN_SUPPORT_KERNELS",
    "LOSSES",
    "MCPO_KERNELS",
    "RAO_BLACKWELL_MAX_DRAWS",
    "SELECTION_KERNELS",
    "LossOutput",
    "add_chosen_nll",
    "check_num_negatives",
    "chosen_nll",
    "dpo_loss",
    "get_loss",
    "hidden_logps",
    "ipo_loss",
    "kernel_probs",
    "mcpo_loss",
    "mcpo_select",
    "mpo_loss",
    "picked_slots",
    "sequence_logps",
    "simpo_loss",
]
