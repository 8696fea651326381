"""What every training-table kind declares, and the decoded row all readers share.

A ``build`` table row, whatever its kind, is decoded into one ``TableRow``:
the prompt and its answers, the preferred (chosen) answer first, each with the
reference log-prob and the token count the ``logprobs`` stage cached. The
trainer, ``eval`` and the TRL plug-ins read rows through ``TableKind.decode``
and never branch on a kind's column names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class Answer:
    """One completion of a row, with what the reference cache says about it."""

    role: str  # "chosen" | "rejected" | "preferred" | "pool": names it in error messages
    text: str
    ref_logp: float  # log pi_ref(text | prompt), summed over its completion tokens
    num_tokens: int  # completion tokens the cache scored (a tokenization check)


@dataclass(frozen=True)
class TableRow:
    """A decoded row: ``answers[0]`` is the preferred answer; pairwise/mpo: ``[chosen, rejected]``,
    mcpo: ``[preferred, *pool]``."""

    prompt_id: str
    prompt: list[dict[str, str]]
    answers: tuple[Answer, ...]
    label: float = 1.0  # P(answers[0] is preferred); mpo's label, 1 elsewhere
    samples: tuple[str, ...] = ()  # mpo: texts sampled from the reference (the tau term)


@dataclass(frozen=True)
class TableKind:
    """A training-table kind: its schema, how a row decodes, which losses train on it."""

    name: str
    schema: pa.Schema
    decode: Callable[[dict], TableRow]
    losses: tuple[str, ...]  # names in prefpool.losses.LOSSES
    summary: str  # one line for docs and errors
