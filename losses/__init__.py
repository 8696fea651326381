"""Preference-optimization losses as pure functions of per-sequence log-probs.

Depends on torch only, so it plugs into any trainer (plain PyTorch, HF
``Trainer``, TRL, Lightning). Each loss returns the unreduced per-example loss
``(B,)`` and a dict of detached metrics; see ``LossOutput``. Each training
method (a loss with its settings, table kind and step) is a ``Method`` in
``METHODS``, collected from the loss modules (``registry``).
"""

from .apo import apo_down_loss, apo_zero_loss
from .bco import bco_pair_loss, update_reward_mean
from .cpo import cpo_loss
from .exo import exo_pair_loss
from .hidden_logps import hidden_logps
from .hinge import hinge_loss
from .kto import kto_pair_loss, mismatched_index
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
from .method import Method, PairLogps
from .mpo import mpo_loss
from .nca import infonca_loss, nca_pair_loss
from .nll import add_chosen_nll, chosen_nll
from .orpo import orpo_loss
from .output import LossOutput
from .pairwise import dpo_loss, ipo_loss, simpo_loss
from .registry import LOSSES, METHODS, get_loss, get_method, losses_for_kind
from .robust import robust_dpo_loss
from .sppo import sppo_hard_loss

__all__ = [
    "AVERAGING_KERNELS",
    "CHOSEN_INDEX",
    "CHOSEN_SUPPORT_KERNELS",
    "LOSSES",
    "MCPO_KERNELS",
    "METHODS",
    "RAO_BLACKWELL_MAX_DRAWS",
    "SELECTION_KERNELS",
    "LossOutput",
    "Method",
    "PairLogps",
    "add_chosen_nll",
    "apo_down_loss",
    "apo_zero_loss",
    "bco_pair_loss",
    "check_num_negatives",
    "chosen_nll",
    "cpo_loss",
    "dpo_loss",
    "exo_pair_loss",
    "get_loss",
    "get_method",
    "hidden_logps",
    "hinge_loss",
    "infonca_loss",
    "ipo_loss",
    "kernel_probs",
    "kto_pair_loss",
    "losses_for_kind",
    "mcpo_loss",
    "mcpo_select",
    "mismatched_index",
    "mpo_loss",
    "nca_pair_loss",
    "orpo_loss",
    "robust_dpo_loss",
    "picked_slots",
    "sequence_logps",
    "simpo_loss",
    "sppo_hard_loss",
    "update_reward_mean",
]
