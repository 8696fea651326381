"""Tables that are valid files but hold nothing to learn from: refused with a message, before anything
is written, not a traceback after step 0.

- NaN (or infinite) cached reference log-probs, here in a pushed folder a user was handed: the error
  names the Parquet file, the row and the column;
- a build table with 0 rows (every row dropped as ``missing``): ``eval`` says so.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from prefpool.cli import app
from prefpool.pipeline.build import build
from prefpool.pipeline.push import push

torch.set_num_threads(1)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _pushed_with(world, tmp_path, column: str, value: float, rows=None):
    """A pushed folder of the pairwise table whose ``column`` holds ``value`` in ``rows`` (all: None)."""
    folder = push(world["pairwise"], repo_id="me/prefs", dry_run=True, out=tmp_path / "hub").folder
    (shard,) = sorted((folder / "data").glob("train-*.parquet"))
    table = pq.read_table(shard)
    old = table.column(column).to_pylist()
    new = [value if rows is None or i in rows else v for i, v in enumerate(old)]
    table = table.set_column(table.schema.get_field_index(column), table.schema.field(column), pa.array(new))
    pq.write_table(table, shard)
    return folder, shard


def _train(world, data, out):
    args = ["train", "/dev/null", f"model={world['model']}", f"data={data}", f"output_dir={out}", "loss=dpo"]
    return CliRunner().invoke(app, [*args, "batch_size=2", "max_steps=2", "progress=false"])


@pytest.mark.parametrize(
    ("column", "value", "rows", "count"),
    [
        ("ref_chosen_logps", float("nan"), None, 24),
        ("ref_rejected_logps", float("-inf"), {5}, 1),
    ],
)
def test_train_refuses_non_finite_reference_values_naming_file_row_and_column(
    world, tmp_path, column, value, rows, count
):
    folder, shard = _pushed_with(world, tmp_path, column, value, rows)
    out = tmp_path / "run"
    result = _train(world, folder, out)
    assert result.exit_code == 2, (result.output, result.exception)
    first = min(rows) if rows else 0
    assert f"{shard}, row {first} (0-based), column '{column}': a NaN or infinite reference log-prob" in result.output
    assert f"{count} of the table's 24 rows hold one" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_eval_refuses_non_finite_reference_values(world, tmp_path):
    folder, shard = _pushed_with(world, tmp_path, "ref_chosen_logps", float("nan"))
    result = CliRunner().invoke(app, ["eval", "-m", str(world["model"]), "-d", str(folder), "--device", "cpu"])
    assert result.exit_code == 2, (result.output, result.exception)
    assert f"{shard}, row 0 (0-based), column 'ref_chosen_logps'" in result.output
    assert "Traceback" not in result.output


def test_eval_on_a_table_with_no_rows_says_so(world, tmp_path):
    """A valid table with no rows: the shard of a sharded build that no prompt hashes to (an unsharded
    build that makes no row is refused at build time)."""
    empty = empty_shard(world["root"] / "data" / "examples", world["root"] / "data" / "lp-examples", tmp_path)
    assert empty.rows_written == 0
    out = tmp_path / "e"
    result = CliRunner().invoke(
        app, ["eval", "-m", str(world["model"]), "-d", str(empty.out), "--device", "cpu", "-o", str(out)]
    )
    assert result.exit_code == 2, (result.output, result.exception)
    assert f"{empty.out}: the table holds no rows: there is nothing to evaluate" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def empty_shard(examples, logprobs, root):
    """The first shard ``i/64`` of a pairwise build that holds no row (8 prompts leave most of them empty)."""
    for index in range(64):
        made = build("pairwise", examples=examples, logprobs=logprobs, out=root / f"shard{index}", shard=f"{index}/64")
        if made.rows_written == 0:
            return made
    raise AssertionError("every shard holds a row")
