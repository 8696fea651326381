"""The length-grouped row order of the gradient pass (``train.data.length_grouped``, ``group_by_length``).

Invariants: each epoch uses the same rows as the plain shuffle, just regrouped;
a step's rows are sorted by length; which rows share a step depends only on
(seed, epoch) and the step's row count, so batch 8 x 1 step and batch 4 x 2
accumulation steps (or 2 processes x 4) see the same rows in every step, and a
resumed run (which recomputes the order from the data position) continues the
same stream. Less padding is counted in padded tokens, not timed. The real
kill-and-resume of a grouped run is ``test_train_kill_resume.py``.
"""

from __future__ import annotations

import random

import pytest

from prefpool.train.data import GROUP_WINDOW, TrainingTable, length_grouped
from prefpool.train.kinds import Example


def _table(widths: list[int]) -> TrainingTable:
    """A table of examples whose two answers are ``width`` and ``width - 1`` tokens wide in all."""
    table = TrainingTable.__new__(TrainingTable)
    table.kind, table._order = "pairwise", None
    table.examples = [
        Example(answers=(([1], [2] * (w - 1)), ([1], [3] * (w - 2))), ref_logps=(0.0, 0.0)) for w in widths
    ]
    return table


def _widths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(3, 200) for _ in range(n)]


def test_length_grouped_regroups_each_window_and_keeps_the_tail():
    step, n = 4, GROUP_WINDOW * 4 * 3 + 6  # three whole windows, then 6 rows: one more step and a tail of 2
    widths = _widths(n)
    order = list(range(n))
    random.Random(1).shuffle(order)
    grouped = length_grouped(order, widths, step, random.Random(2))
    assert sorted(grouped) == list(range(n))
    assert grouped[-2:] == order[-2:]  # past the last whole step: untouched (an epoch skips them)
    window = GROUP_WINDOW * step
    for start in range(0, n - 2, window):
        assert set(grouped[start : start + window]) == set(order[start : start + window])
    steps = [grouped[k : k + step] for k in range(0, n - 2, step)]
    assert all([widths[i] for i in s] == sorted((widths[i] for i in s), reverse=True) for s in steps)
    heads = [widths[s[0]] for s in steps[:GROUP_WINDOW]]
    assert heads != sorted(heads, reverse=True)  # the steps of a window are shuffled, not longest first
    assert length_grouped(order, widths, step, random.Random(2)) == grouped  # a pure function of its inputs


def _padded(table, seed, epoch, batch, steps, group_rows):
    """Padded tokens (rows x widest row) of the first ``steps`` micro-batches, as one forward each."""
    total = 0
    for index in range(steps):
        rows = table.micro_batch(seed, epoch, index, batch_size=batch, group_rows=group_rows)
        total += 2 * batch * max(len(p) + len(c) for e in rows for p, c in e.answers)
    return total


def test_grouping_cuts_padding():
    table = _table(_widths(256, seed=3))
    plain = _padded(table, 0, 0, 4, 64, None)
    grouped = _padded(table, 0, 0, 4, 64, 4)
    assert grouped < 0.75 * plain, (grouped, plain)
    used = {id(e) for i in range(64) for e in table.micro_batch(0, 0, i, batch_size=4, group_rows=4)}
    assert len(used) == 256  # every row once in the epoch


@pytest.mark.parametrize("batch,accum,procs", [(4, 2, 1), (2, 2, 2), (1, 8, 1)])
def test_a_step_holds_the_same_rows_however_it_is_split(batch, accum, procs):
    """Rows of optimizer step s: batch 8 x 1 process x 1 micro-batch == any split of its 8 rows."""
    table = _table(_widths(200, seed=5))
    whole = [set(map(id, table.micro_batch(7, 1, s, batch_size=8, group_rows=8))) for s in range(25)]
    for s in range(25):
        rows = set()
        for k in range(accum):
            for p in range(procs):
                got = table.micro_batch(
                    7, 1, s * accum + k, batch_size=batch, process=p, num_processes=procs, group_rows=8
                )
                rows |= set(map(id, got))
        assert rows == whole[s]


def test_the_order_depends_on_seed_and_epoch_only():
    table = _table(_widths(100, seed=6))
    first = table.order(0, 2, group_rows=4)
    other = _table(_widths(100, seed=6))  # a resumed run's table: a fresh object, nothing carried over
    assert other.order(0, 2, group_rows=4) == first
    assert table.order(0, 3, group_rows=4) != first and table.order(1, 2, group_rows=4) != first
    assert table.order(0, 2) != first  # grouping changes the order
