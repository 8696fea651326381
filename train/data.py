"""The training table in memory: every text tokenized once, batches in a (seed, epoch) order.

Texts are tokenized with ``pipeline.tokenize.encode_pair`` and the
``max_length``/``truncation`` the reference log-probs were cached with, so the
policy scores exactly the tokens the cache scored. Each tokenized answer's
length is compared with the cached ``*_num_tokens``: a difference means the
cache was made with another tokenization, and is refused.

Batches: the row order of epoch ``e`` is a shuffle seeded by ``(seed, e)``;
an epoch has ``rows // global_batch`` micro-batches (the remainder is skipped,
so every optimizer step holds the same number of examples). The data position
``(epoch, micro-batch)`` is all a resumed run needs to continue the stream.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.model.scoring import TokenPair
from prefpool.pipeline.model.tokenize import encode_pair
from prefpool.train.cache_check import CacheMismatchError

from .mcpo_step import PoolBatch


@dataclass(frozen=True)
class Example:
    """One row, tokenized. ``answers[0]`` is the preferred answer; the rest depend on the kind:
    pairwise/mpo: ``[chosen, rejected]``; mcpo: ``[preferred, *pool]``."""

    answers: tuple[TokenPair, ...]
    ref_logps: tuple[float, ...]  # cached reference log-prob of each answer
    label: float = 1.0  # mpo: preference label
    samples: tuple[TokenPair, ...] = ()  # mpo: reference samples (tokenized only when tau > 0)


@dataclass(frozen=True)
class PairBatch:
    """``B`` pairs. Log-prob tensors are ``(B,)`` float64 (cached reference values)."""

    chosen: Sequence[TokenPair]
    rejected: Sequence[TokenPair]
    ref_chosen_logps: torch.Tensor
    ref_rejected_logps: torch.Tensor
    label: torch.Tensor  # (B,)
    samples: Sequence[Sequence[TokenPair]]  # B lists (empty unless mpo with tau > 0)


def _answer_text(turn) -> str:
    return turn[0]["content"] if isinstance(turn, list) else turn


class TrainingTable:
    """Rows of a ``build`` output, tokenized once with the cache's settings."""

    def __init__(
        self, folder, kind: str, tokenizer, *, max_length: int, truncation: str, with_samples: bool = False
    ) -> None:
        self.kind = kind
        table = read_table(folder, schema=kind)
        self.examples: list[Example] = []
        encoded: dict[tuple[str, str], TokenPair] = {}

        def encode(row: dict, text: str, cached_tokens: int | None, role: str) -> TokenPair:
            key = (row["prompt_id"], text)
            if key not in encoded:
                pair = encode_pair(tokenizer, row["prompt"], text, max_length=max_length, truncation=truncation)
                encoded[key] = (pair.prompt_ids, pair.completion_ids)
            pair = encoded[key]
            if cached_tokens is not None and len(pair[1]) != cached_tokens:
                raise CacheMismatchError(
                    f"{folder}: prompt_id {row['prompt_id']}: the {role} answer tokenizes to {len(pair[1])} "
                    f"completion tokens, the cache scored {cached_tokens}: the reference log-probs were made "
                    "with another tokenizer, chat template, max_length or truncation"
                )
            return pair

        for row in table.to_pylist():
            if kind == "mcpo":
                answers = [encode(row, row["preferred"], row["preferred_num_tokens"], "preferred")]
                answers += [encode(row, t, n, "pool") for t, n in zip(row["pool"], row["pool_num_tokens"], strict=True)]
                self.examples.append(Example(tuple(answers), (row["ref_preferred_logp"], *row["ref_pool_logps"])))
                continue
            chosen = encode(row, _answer_text(row["chosen"]), row["chosen_num_tokens"], "chosen")
            rejected = encode(row, _answer_text(row["rejected"]), row["rejected_num_tokens"], "rejected")
            samples: tuple[TokenPair, ...] = ()
            if kind == "mpo" and with_samples:
                samples = tuple(encode(row, t, None, "sample") for t in row["ref_samples"])
            self.examples.append(
                Example(
                    (chosen, rejected),
                    (row["ref_chosen_logps"], row["ref_rejected_logps"]),
                    label=row.get("label", 1.0),
                    samples=samples,
                )
            )

    def __len__(self) -> int:
        return len(self.examples)

    def batches_per_epoch(self, global_batch: int) -> int:
        return len(self.examples) // global_batch

    def order(self, seed: int, epoch: int) -> list[int]:
        """The row order of ``epoch``: the same for the same (seed, epoch), in any process."""
        order = list(range(len(self.examples)))
        random.Random(f"prefpool-data:{seed}:{epoch}").shuffle(order)
        return order

    def micro_batch(
        self, seed: int, epoch: int, index: int, *, batch_size: int, process: int = 0, num_processes: int = 1
    ) -> list[Example]:
        """This process's ``batch_size`` rows of micro-batch ``index`` of ``epoch``."""
        start = (index * num_processes + process) * batch_size
        rows = self.order(seed, epoch)[start : start + batch_size]
        if len(rows) != batch_size:
            raise IndexError(f"epoch {epoch} has no micro-batch {index}")
        return [self.examples[i] for i in rows]


def collate(kind: str, examples: Sequence[Example]) -> PairBatch | PoolBatch:
    """A ``PoolBatch`` (mcpo) or ``PairBatch`` (pairwise, mpo) of ``examples``."""
    if kind == "mcpo":
        width = max(len(e.answers) - 1 for e in examples)
        ref_pool = torch.zeros(len(examples), width, dtype=torch.float64)
        mask = torch.zeros(len(examples), width, dtype=torch.bool)
        for b, e in enumerate(examples):
            m = len(e.answers) - 1
            ref_pool[b, :m] = torch.tensor(e.ref_logps[1:], dtype=torch.float64)
            mask[b, :m] = True
        return PoolBatch(
            chosen=[e.answers[0] for e in examples],
            pools=[list(e.answers[1:]) for e in examples],
            ref_chosen_logps=torch.tensor([e.ref_logps[0] for e in examples], dtype=torch.float64),
            ref_pool_logps=ref_pool,
            pool_mask=mask,
        )
    return PairBatch(
        chosen=[e.answers[0] for e in examples],
        rejected=[e.answers[1] for e in examples],
        ref_chosen_logps=torch.tensor([e.ref_logps[0] for e in examples], dtype=torch.float64),
        ref_rejected_logps=torch.tensor([e.ref_logps[1] for e in examples], dtype=torch.float64),
        label=torch.tensor([e.label for e in examples], dtype=torch.float64),
        samples=[list(e.samples) for e in examples],
    )
