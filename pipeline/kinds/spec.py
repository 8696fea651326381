"""What every training-table kind declares (``TableKind``), and the decoded row all readers share.

A kind's module declares its schema, decoder, ``build`` plan and the facts
``build`` checks in one ``TableKind``; see ``pipeline/kinds/__init__.py``.

A ``build`` table row, whatever its kind, is decoded into one ``TableRow``:
the prompt and its answers, the preferred (chosen) answer first, each with the
reference log-prob and the token count the ``logprobs`` stage cached. The
trainer, ``eval`` and the TRL plug-ins read rows through ``TableKind.decode``
and never branch on a kind's column names.

Each kind also says how a row looks in TRL's names (``trl_schema``, ``to_trl``):
``prompt``, ``chosen``, ``rejected`` (conversational: one assistant message) and
``ref_chosen_logps``/``ref_rejected_logps``, the columns ``DPOTrainer`` reads, plus
the kind's own (``pool``..., ``label``, ``ref_samples``, ``kl_completion``) where TRL has no name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa

from prefpool.pipeline.io.schemas import ASSISTANT_TURN, MESSAGE, is_optional

if TYPE_CHECKING:
    import polars as pl

    from .build_context import BuildContext


@dataclass(frozen=True)
class Answer:
    """One completion of a row, with what the reference cache says about it."""

    role: str  # "chosen" | "rejected" | "preferred" | "pool" | "mismatched": names it in error messages
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
    # each answer's score (higher is better), in answer order; None: the row carries none (mcpo's
    # preferred_score and pool_scores, when the build ranked by a score)
    scores: tuple[float, ...] | None = None
    # kto: another prompt's answer scored under this prompt, KTO's mismatched pair (kinds/mismatched.py)
    mismatched: Answer | None = None


# The columns of a row in TRL's names, common to every kind (``trl_pair``).
TRL_PAIR_FIELDS = [
    pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("prompt", pa.list_(MESSAGE), nullable=False),
    pa.field("chosen", ASSISTANT_TURN, nullable=False),
    pa.field("rejected", ASSISTANT_TURN, nullable=False),
    pa.field("ref_chosen_logps", pa.float64(), nullable=False),
    pa.field("ref_rejected_logps", pa.float64(), nullable=False),
    pa.field("chosen_num_tokens", pa.int32(), nullable=False),
    pa.field("rejected_num_tokens", pa.int32(), nullable=False),
]


def assistant_turn(text: str) -> list[dict]:
    """TRL's conversational completion: one assistant message."""
    return [{"role": "assistant", "content": text}]


def trl_pair(row: TableRow) -> dict:
    """The ``TRL_PAIR_FIELDS`` of ``row``: ``answers[0]`` chosen, ``answers[1]`` rejected."""
    chosen, rejected = row.answers[0], row.answers[1]
    return {
        "prompt_id": row.prompt_id,
        "prompt": row.prompt,
        "chosen": assistant_turn(chosen.text),
        "rejected": assistant_turn(rejected.text),
        "ref_chosen_logps": chosen.ref_logp,
        "ref_rejected_logps": rejected.ref_logp,
        "chosen_num_tokens": chosen.num_tokens,
        "rejected_num_tokens": rejected.num_tokens,
    }


@dataclass(frozen=True)
class TableKind:
    """A training-table kind: everything about it, declared in its own module of ``pipeline/kinds/``.

    Its schema and how a row decodes (every reader), which losses train on it
    (``prefpool train``), its TRL view (the plug-ins), and how ``build`` makes
    it: ``plan`` (the polars plan of its rows, from a ``BuildContext``) and the
    facts ``build`` and ``prefpool run`` check or default by.
    """

    name: str
    schema: pa.Schema
    decode: Callable[[dict], TableRow]
    # build's polars plan of the table: (context, the candidates table or None) -> rows in ``schema``'s
    # columns plus the sort keys ``_k1``, ``_k2`` (after ``prompt_id``)
    plan: Callable[[BuildContext, pl.LazyFrame | None], pl.LazyFrame]
    losses: tuple[str, ...]  # the methods that train on it: prefpool.losses.losses_for_kind(name)
    summary: str  # one line for docs and errors
    needs: str  # what build needs from its inputs to make it (build's --kind help)
    candidates: str | None = None  # what a candidates table is to it (None: it reads none)
    needs_candidates: bool = False  # build refuses to make it without --candidates
    ranks_samples: bool = False  # a scores table made over candidates may rank its samples
    made_of_pairs: bool = False  # its rows are chosen/rejected pairs
    # nullable columns that a table may lack (an older build): column -> how build fills it
    optional_columns: Mapping[str, str] = field(default_factory=dict)
    trl_schema: pa.Schema = pa.schema(TRL_PAIR_FIELDS)  # a row in TRL's column names
    to_trl: Callable[[TableRow], dict] = trl_pair
    made_by: str = ""  # the commands that make it, for errors; empty: `prefpool build --kind <name>`
    # build's message when it makes no row: what to pass, for the drop counters its plan adds
    no_row_hints: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        declared = {f.name for f in self.schema if is_optional(f)}
        if declared != set(self.optional_columns):
            raise TypeError(
                f"table kind {self.name!r}: optional_columns {sorted(self.optional_columns)} must name the "
                f"schema's optional fields {sorted(declared)}"
            )

    @property
    def recipe(self) -> str:
        """The commands that make a table of this kind (``made_by``, or build's own)."""
        return self.made_by or f"`prefpool build --kind {self.name}`"
