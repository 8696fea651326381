"""Losses by name: a plain dict, so a trainer picks one from a config string."""

from __future__ import annotations

from collections.abc import Callable

from .mcpo import mcpo_loss
from .mpo import mpo_loss
from .output import LossOutput
from .pairwise import dpo_loss, ipo_loss, simpo_loss

LOSSES: dict[str, Callable[..., LossOutput]] = {
    "dpo": dpo_loss,
    "ipo": ipo_loss,
    "simpo": simpo_loss,
    "mcpo": mcpo_loss,
    "mpo": mpo_loss,
}


def get_loss(name: str) -> Callable[..., LossOutput]:
    """Look a loss up by name; an unknown name is a ``ValueError`` listing the known ones."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"loss: unknown loss {name!r}; expected one of {', '.join(sorted(LOSSES))}") from None
