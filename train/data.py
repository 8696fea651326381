"""The training table in memory: every text tokenized once, batches in a (seed, epoch) order.

Rows are decoded by their kind's spec (``pipeline.kinds``) and every answer is
tokenized with ``pipeline.model.tokenize.encode_pair`` and the
``max_length``/``truncation`` the reference log-probs were cached with, so the
policy scores exactly the tokens the cache scored (``encode_row``). Each
tokenized answer's length is compared with the cached token count: a
difference means the cache was made with another tokenization, and is refused.
``eval`` tokenizes through the same function.

Batches: the row order of epoch ``e`` is a shuffle seeded by ``(seed, e)``;
an epoch has ``rows // global_batch`` micro-batches (the remainder is skipped,
so every optimizer step holds the same number of examples). The data position
``(epoch, micro-batch)`` is all a resumed run needs to continue the stream.

Length grouping (``group_rows``, the trainer's ``group_by_length``): the
shuffled order is cut into windows of ``GROUP_WINDOW`` optimizer steps; in a
window the rows are sorted by length (longest first) and cut into steps, and
the steps are put in an order shuffled with ``(seed, epoch)``. A micro-batch
then holds rows of similar length, so little of its forward goes to padding,
while which rows share an optimizer step is still random at the scale of a
window. The order stays a pure function of ``(seed, epoch)`` and the step's
row count: resuming needs nothing more, and every process computes the same
order. Grouping by the optimizer step's rows (not a micro-batch's) keeps
"batch 8 x 1 step == batch 1 x 8 accumulation steps": both see the same rows
in every step.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from prefpool.core.errors import ConfigError
from prefpool.losses import get_method
from prefpool.pipeline.io.errors import PipelineInputError
from prefpool.pipeline.kinds import Answer, TableRow
from prefpool.pipeline.kinds.source import TableSource, open_table
from prefpool.pipeline.model.scoring import TokenPair
from prefpool.pipeline.model.tokenize import encode_pair
from prefpool.train.cache_check import CacheMismatchError
from prefpool.train.kinds import Example, PairBatch, PoolBatch, train_kind

__all__ = [
    "Example",
    "PairBatch",
    "PoolBatch",
    "TrainingTable",
    "check_reference_values",
    "collate",
    "decoded_rows",
    "encode_answer",
    "encode_row",
    "prompts_of",
]


def decoded_rows(data: str | Path | TableSource, kind: str | None = None, *, loss: str | None = None) -> list[TableRow]:
    """Every row of the build table ``data`` (a folder, a pushed folder, a Hub id or an opened
    ``TableSource``), decoded by its kind's spec; ``kind`` given: the table must be of that kind;
    ``loss`` given: every row must hold the columns the method reads (``check_method_columns``)."""
    table = open_table(data)
    if kind is not None and table.kind != kind:
        raise PipelineInputError(f"holds a {table.kind!r} table, expected {kind!r}", file=table.label)
    decode = train_kind(table.kind).table.decode
    rows = table.read()
    check_reference_values(table, rows)
    if loss is not None:
        check_method_columns(table, rows, loss)
    return [decode(row) for row in rows.to_pylist()]


def check_method_columns(source: TableSource, rows: pa.Table, loss: str) -> None:
    """A ``ConfigError`` naming the ``loss`` key and the column where the table lacks, or leaves null in
    some row, a column the method reads beyond its kind's own (``Method.columns``: InfoNCA's scores)."""
    for column in get_method(loss).columns:
        nulls = rows.num_rows if column not in rows.column_names else rows.column(column).null_count
        if nulls:
            how = train_kind(source.kind).table.optional_columns.get(column)
            raise ConfigError(
                f"loss: {loss!r} reads column {column!r}, which is missing in {nulls} of the {rows.num_rows} rows "
                f"of the {source.kind!r} table {source.label}" + (f"; make the table with {how}" if how else "")
            )


def check_reference_values(source: TableSource, rows: pa.Table) -> None:
    """Refuse a NaN or infinite cached reference log-prob (a float ``ref_*`` column): every loss and
    metric of its row would be NaN. The error names the file, the column, the first such row and the count."""
    for name in rows.column_names:
        column = rows.column(name)
        values, parents = column, None
        if pa.types.is_list(column.type):
            flat = column.combine_chunks()
            values, parents = pc.list_flatten(flat), pc.list_parent_indices(flat)
        if not name.startswith("ref_") or not pa.types.is_floating(values.type):
            continue
        bad = pc.invert(pc.fill_null(pc.is_finite(values), True))
        if not pc.any(bad).as_py():
            continue
        where = pc.indices_nonzero(bad)
        bad_rows = sorted(set((pc.take(parents, where) if parents is not None else where).to_pylist()))
        first = bad_rows[0]
        file, row = _file_of_row(source, first)
        prompt_id = rows.column("prompt_id")[first].as_py() if "prompt_id" in rows.column_names else None
        raise PipelineInputError(
            f"a NaN or infinite reference log-prob (prompt_id {prompt_id}; {len(bad_rows)} of the table's "
            f"{rows.num_rows} rows hold one); remake the table with `prefpool logprobs` and `build`",
            file=file,
            row=row,
            column=name,
        )


def _file_of_row(source: TableSource, index: int) -> tuple[Path | str, int]:
    """The Parquet file holding row ``index`` of the table, and the row's number in it."""
    for path in source.files:
        try:
            count = pq.ParquetFile(path).metadata.num_rows
        except (OSError, pa.ArrowException):
            break
        if index < count:
            return path, index
        index -= count
    return source.label, index


def encode_row(
    tokenizer,
    row: TableRow,
    *,
    max_length: int | None,
    truncation: str = "completion",
    with_samples: bool = False,
    cache: dict | None = None,
) -> tuple[tuple[TokenPair, ...], tuple[TokenPair, ...]]:
    """The row's answers (and samples) as ``(prompt_ids, completion_ids)``, each answer checked against
    the token count the reference cache scored. ``cache`` reuses encodings of repeated texts."""
    cache = {} if cache is None else cache

    def encode(text: str) -> TokenPair:
        return _encode(tokenizer, row, text, max_length=max_length, truncation=truncation, cache=cache)

    answers = tuple(
        encode_answer(tokenizer, row, answer, max_length=max_length, truncation=truncation, cache=cache)
        for answer in row.answers
    )
    samples = tuple(encode(text) for text in row.samples) if with_samples else ()
    return answers, samples


def encode_answer(
    tokenizer, row: TableRow, answer: Answer, *, max_length: int | None, truncation: str, cache: dict
) -> TokenPair:
    """``answer`` under the row's prompt, checked against the token count the reference cache scored."""
    pair = _encode(tokenizer, row, answer.text, max_length=max_length, truncation=truncation, cache=cache)
    if len(pair[1]) != answer.num_tokens:
        raise CacheMismatchError(
            f"prompt_id {row.prompt_id}, {answer.role}: {len(pair[1])} completion tokens here, "
            f"{answer.num_tokens} when the reference was scored: the reference log-probs were made with "
            "another tokenizer, chat template, max_length or truncation"
        )
    return pair


def _encode(tokenizer, row: TableRow, text: str, *, max_length: int | None, truncation: str, cache: dict) -> TokenPair:
    key = (row.prompt_id, text)
    if key not in cache:
        pair = encode_pair(tokenizer, row.prompt, text, max_length=max_length, truncation=truncation)
        cache[key] = (pair.prompt_ids, pair.completion_ids)
    return cache[key]


GROUP_WINDOW = 16  # optimizer steps whose rows are sorted together by length


def length_grouped(order: Sequence[int], widths: Sequence[int], step_rows: int, rng: random.Random) -> list[int]:
    """``order`` regrouped: per window of ``GROUP_WINDOW * step_rows`` rows, sorted by ``widths``
    (longest first, ties in ``order``'s order), cut into steps of ``step_rows``, the steps shuffled
    with ``rng``. Rows past the last whole step keep their place at the end (an epoch skips them)."""
    whole = len(order) - len(order) % step_rows
    out: list[int] = []
    window = GROUP_WINDOW * step_rows
    for start in range(0, whole, window):
        rows = sorted(order[start : min(start + window, whole)], key=lambda i: -widths[i])
        steps = [rows[k : k + step_rows] for k in range(0, len(rows), step_rows)]
        rng.shuffle(steps)
        out += [i for step in steps for i in step]
    return out + list(order[whole:])


def prompts_of(data: str | Path | TableSource, max_prompts: int | None = None) -> Sequence[tuple[str, list[dict]]]:
    """Distinct ``(prompt_id, prompt)`` of a build table (a folder, a pushed folder, a Hub id or an opened
    ``TableSource``), in table (prompt_id) order."""
    seen, out = set(), []
    for row in open_table(data).read().select(["prompt_id", "prompt"]).to_pylist():
        if row["prompt_id"] not in seen:
            seen.add(row["prompt_id"])
            out.append((row["prompt_id"], row["prompt"]))
    return out if max_prompts is None else out[:max_prompts]


class TrainingTable:
    """Rows of a ``build`` output, tokenized once with the cache's settings."""

    def __init__(
        self,
        folder,
        kind: str,
        tokenizer,
        *,
        max_length: int,
        truncation: str,
        with_samples: bool = False,
        loss: str | None = None,
    ) -> None:
        """``loss`` given: the table must hold the columns that method reads (``check_method_columns``)."""
        self.kind = kind
        self.examples: list[Example] = []
        self._order: tuple[tuple, list[int]] | None = None
        encoded: dict = {}
        for row in decoded_rows(folder, kind, loss=loss):
            try:
                answers, samples = encode_row(
                    tokenizer,
                    row,
                    max_length=max_length,
                    truncation=truncation,
                    with_samples=with_samples,
                    cache=encoded,
                )
                kl = row.mismatched
                mismatched = None
                if kl is not None:
                    mismatched = encode_answer(
                        tokenizer, row, kl, max_length=max_length, truncation=truncation, cache=encoded
                    )
            except CacheMismatchError as exc:
                label = folder.label if isinstance(folder, TableSource) else folder
                raise CacheMismatchError(f"{label}: {exc}") from None
            ref_logps = tuple(a.ref_logp for a in row.answers)
            mismatched_logp = 0.0 if kl is None else kl.ref_logp
            example = Example(answers, ref_logps, row.label, samples, row.scores, mismatched, mismatched_logp)
            self.examples.append(example)

    def __len__(self) -> int:
        return len(self.examples)

    def batches_per_epoch(self, global_batch: int) -> int:
        return len(self.examples) // global_batch

    def order(self, seed: int, epoch: int, *, group_rows: int | None = None) -> list[int]:
        """The row order of ``epoch``: the same for the same (seed, epoch), in any process.

        ``group_rows``: the rows of one optimizer step; grouped by length in windows of
        ``GROUP_WINDOW`` steps (see the module docstring). None: the plain shuffle."""
        key = (seed, epoch, group_rows)
        if self._order is None or self._order[0] != key:  # one epoch's order serves all its micro-batches
            self._order = (key, self._make_order(seed, epoch, group_rows))
        return self._order[1]

    def _make_order(self, seed: int, epoch: int, group_rows: int | None) -> list[int]:
        order = list(range(len(self.examples)))
        random.Random(f"prefpool-data:{seed}:{epoch}").shuffle(order)
        if group_rows is None:
            return order
        widths = [max(len(p) + len(c) for p, c in e.answers) for e in self.examples]
        return length_grouped(order, widths, group_rows, random.Random(f"prefpool-groups:{seed}:{epoch}"))

    def micro_batch(
        self,
        seed: int,
        epoch: int,
        index: int,
        *,
        batch_size: int,
        process: int = 0,
        num_processes: int = 1,
        group_rows: int | None = None,
    ) -> list[Example]:
        """This process's ``batch_size`` rows of micro-batch ``index`` of ``epoch`` (``group_rows``: see ``order``)."""
        start = (index * num_processes + process) * batch_size
        rows = self.order(seed, epoch, group_rows=group_rows)[start : start + batch_size]
        if len(rows) != batch_size:
            raise IndexError(f"epoch {epoch} has no micro-batch {index}")
        return [self.examples[i] for i in rows]


def collate(kind: str, examples: Sequence[Example]) -> PairBatch | PoolBatch:
    """The batch of ``examples`` as the kind's spec makes it (``PoolBatch`` for mcpo, ``PairBatch`` else)."""
    return train_kind(kind).collate(examples)
