"""A training method as one spec: its name, settings, table kind and per-batch step.

A loss module declares its methods in a module-level ``METHODS`` tuple;
``registry`` collects every module's ``METHODS``, so a new pairwise loss is one
file in ``losses/`` (its function, its settings dataclass, its ``Method``) and
nothing else: the config checker, ``prefpool train --help``, the TRL name table
and the table kinds' lists of losses all read the registry.

The settings dataclass is frozen; each field has a default and a help text
(``field(metadata={"help": ...})``); ``prefpool train`` checks a config's loss
settings strictly against it. A pairwise method's ``step`` maps the batch's
per-sequence tensors (``PairLogps``) and the settings to a ``LossOutput``; a
method with running statistics (BCO's reward mean) takes them as ``state`` and
returns the new state, so the loss stays a pure function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .output import LossOutput

State = Mapping[str, float]


def setting(default: Any, help: str) -> Any:
    """A settings field: its default and its help text."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class PairLogps:
    """One micro-batch of pairs as per-sequence tensors, each ``(B,)``.

    Log-probs are summed over completion tokens; ``ref_*`` are the cached
    reference values (no gradient); ``*_tokens`` are completion token counts.
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor


PairStep = Callable[[PairLogps, Any, State], tuple[LossOutput, State]]


@dataclass(frozen=True)
class Method:
    """One training method.

    Attributes:
        name: the config's ``loss`` value.
        function: the pure loss function (``LOSSES[name]``).
        settings: frozen dataclass of the method's settings, with defaults and help.
        kind: the table kind it trains on (``pairwise``, ``mcpo``, ``mpo``, ``kto``).
        needs_reference: whether the loss reads the cached reference log-probs.
        summary: one line for ``--help`` and the docs.
        step: pairwise methods: ``(PairLogps, settings, state) -> (LossOutput, state)``;
            the other kinds run their own step (``prefpool.train.kinds``).
        trl_loss_type: TRL ``DPOConfig.loss_type`` names that mean this method.
        initial_state: the running statistics ``step`` starts from (empty for most).
        columns: the columns it reads that a table of its kind may leave null or lack (InfoNCA's
            scores); ``prefpool train`` refuses a table without them, naming the column.
    """

    name: str
    function: Callable[..., LossOutput]
    settings: type
    kind: str
    needs_reference: bool
    summary: str
    step: PairStep | None = None
    trl_loss_type: tuple[str, ...] = ()
    initial_state: State = field(default_factory=dict)
    columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (dataclasses.is_dataclass(self.settings) and self.settings.__dataclass_params__.frozen):
            raise TypeError(f"method {self.name!r}: settings must be a frozen dataclass")
        for f in dataclasses.fields(self.settings):
            if f.default is dataclasses.MISSING or not f.metadata.get("help"):
                raise TypeError(f"method {self.name!r}: setting {f.name!r} needs a default and a help text")

    def setting_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.settings))


# The four log-prob tensors of a reference-anchored pairwise loss, in the order the losses take them.
WITH_REFERENCE = ("chosen", "rejected", "ref_chosen", "ref_rejected")


def pair_step(function: Callable[..., LossOutput], *tensors: str) -> PairStep:
    """A stateless pairwise step: ``function(*(PairLogps fields named by tensors), **settings)``.

    ``pair_step(dpo_loss, "chosen", "rejected", "ref_chosen", "ref_rejected")``
    calls ``dpo_loss(x.chosen, x.rejected, x.ref_chosen, x.ref_rejected, beta=..., label_smoothing=...)``.
    """
    names = {f.name for f in dataclasses.fields(PairLogps)}
    unknown = [t for t in tensors if t not in names]
    if unknown:
        raise TypeError(f"pair_step: {unknown} are not PairLogps fields ({', '.join(sorted(names))})")

    def step(logps: PairLogps, settings: Any, state: State) -> tuple[LossOutput, State]:
        args = [getattr(logps, t) for t in tensors]
        return function(*args, **dataclasses.asdict(settings)), state

    return step
