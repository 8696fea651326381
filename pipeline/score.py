"""The ``score`` stage: a reward for every (prompt, completion) of a table -> the ``scores`` table.

Input: an ``examples`` folder (completions = ``answers[*].text``, the dataset's
answers) or a ``candidates`` folder (``samples[*].text``, generated samples).
Output: one row per distinct ``(prompt_id, completion_id)``, sorted by both,
cut into units written (and resumed) one by one through ``StageRun``;
``--shard i/N`` runs combine with ``prefpool merge``.

Scorer (exactly one; see ``score_scorers``): ``reward_fn="module:function"``,
called as ``function(prompt_messages, completion_text) -> float``, or
``reward_model=FOLDER``, a one-label ``AutoModelForSequenceClassification``
scoring the chat-templated conversation. The scorer's identity (function name
and source hash, or weights/tokenizer hashes) is the run's config, so it is in
the manifest and another scorer over the same output is refused.

A score that is not a finite real number, or a reward function that raises,
is an error naming the prompt_id, completion_id and input folder (exit code 2;
``--debug`` shows the function's traceback). ``build --scores`` ranks by this table.

Executors: ``executor="ray"`` scores the units on Ray actors (one CPU each;
a reward model is loaded once per actor); the reward function travels to the
actors with the scorer (a function from a ``.py`` path by value, one from an
importable module by name: the module must be importable on every node).
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyarrow as pa

from prefpool.pipeline.engines.scorers import FunctionScorer, RewardFunctionError, RewardModelScorer
from prefpool.pipeline.executors.base import Advance, ExecutorName, WorkerNeeds, make_executor
from prefpool.pipeline.io.completions import distinct_completions, read_completion_table
from prefpool.pipeline.io.errors import PipelineConfigError, PipelineInputError
from prefpool.pipeline.io.ids import ShardSpec
from prefpool.pipeline.io.progress import progress, summary_line
from prefpool.pipeline.io.schemas import SCORES
from prefpool.pipeline.io.stage_run import StageRun, Unit, plan_units

STAGE = "score"
ROWS_PER_UNIT = 1024


@dataclass(frozen=True)
class ScoreSummary:
    out: Path
    rows: int
    computed: int  # rows scored in this call
    units_written: int
    units_skipped: int
    seconds: float

    def line(self) -> str:
        return summary_line(
            STAGE,
            rows=self.rows,
            seconds=self.seconds,
            out=self.out,
            computed=self.computed,
            units_written=self.units_written,
            units_skipped=self.units_skipped,
        )


def score(
    input_dir: str | Path,
    *,
    out: str | Path,
    reward_fn: str | None = None,
    reward_model: str | Path | None = None,
    batch_size: int = 16,
    shard: str | ShardSpec | None = None,
    overwrite: bool = False,
    rows_per_unit: int = ROWS_PER_UNIT,
    show_progress: bool | None = None,
    executor: ExecutorName = "local",
    workers: int | None = None,
    ray_address: str | None = None,
) -> ScoreSummary:
    """A reward for every (prompt, completion): the `scores` table (rank by it with `build --scores`).

    Give exactly one of ``reward_fn`` and ``reward_model``. ``batch_size`` (reward
    model only) does not change the values and is not part of the run's identity.

    Args:
        input_dir: An `examples` (ingest) or `candidates` (generate) output folder.
        out: Output folder (scores shards, manifest.json, report.json).
        reward_fn: module:function or path/file.py:function; called as f(prompt messages, completion) -> float.
        reward_model: A one-label sequence-classification model folder (save_pretrained).
        batch_size: Reward model: sequences per forward pass; does not change values.
        shard: Run only shard i/N of the input (rows whose prompt_id hashes to bucket i); join the N outputs with
            `prefpool merge`.
        overwrite: Replace an existing output made with another scorer.
        rows_per_unit: Rows per work unit: one shard file each, the unit of resuming. Does not change the rows.
        show_progress: Progress bar on stderr; default: when stderr is a terminal.
        executor: Where the units run: local (this process) | ray (Ray actors, each loading the scorer once; this
            process writes every shard). Does not change the rows.
        workers: ray: number of actors. Default: as many as the cluster's CPUs hold.
        ray_address: ray: the cluster to use. Default: $RAY_ADDRESS, else start a local Ray on this machine.
    """
    start = time.perf_counter()
    if (reward_fn is None) == (reward_model is None):
        raise PipelineConfigError(
            "score needs exactly one of reward_fn (--reward-fn) and reward_model (--reward-model)"
        )
    if batch_size < 1:
        raise PipelineConfigError(f"batch_size must be >= 1, got {batch_size}")
    spec = ShardSpec.parse(shard)
    pool = make_executor(executor, workers=workers, address=ray_address)
    scorer = _scorer(reward_fn, reward_model, batch_size)
    in_schema, table, inputs = read_completion_table(input_dir, stage="score")
    pairs = distinct_completions(table, in_schema, spec)
    units = plan_units(pairs, key_of=lambda p: f"{p[0]}:{p[1]}", rows_per_unit=rows_per_unit)
    run = StageRun(
        out,
        stage=STAGE,
        schema="scores",
        config={"scorer": scorer.identity},
        inputs=inputs,
        shard=spec,
        rows_per_unit=rows_per_unit,
        overwrite=overwrite,
        model=scorer.identity,
    )
    todo = run.pending(units)
    computed = 0
    with progress(STAGE, sum(len(u.items) for u in todo), enabled=show_progress, units=len(todo)) as bar:

        def write(unit: Unit, table: pa.Table) -> None:
            nonlocal computed
            run.write(unit, table)
            computed += table.num_rows
            bar.unit_done()

        pool.map(ScoreTask(scorer, str(input_dir)), todo, write, advance=bar)
    summary = {"rows": len(pairs), "input_schema": in_schema}
    run.finish(sidecars={"report.json": {**summary, "scorer": scorer.identity}}, summary={"rows": len(pairs)})
    return ScoreSummary(
        run.out, len(pairs), computed, run.units_written, run.units_skipped, time.perf_counter() - start
    )


@dataclass(frozen=True)
class ScoreTask:
    """A unit of (prompt_id, completion_id, prompt, text) -> its scores table; the scorer loads once per worker."""

    scorer: FunctionScorer | RewardModelScorer
    input_dir: str
    needs: WorkerNeeds = WorkerNeeds()  # the reward model scores on the CPU

    def load(self):
        self.scorer.load()
        return partial(score_unit, scorer=self.scorer, input_dir=self.input_dir)


def score_unit(unit: Unit, advance: Advance, *, scorer, input_dir: str) -> pa.Table:
    """The scores table of one unit; ``advance`` by its rows at the end."""
    try:
        values = scorer.score([(prompt, text) for _, _, prompt, text in unit.items])
    except RewardFunctionError as exc:
        pid, cid = unit.items[exc.index][:2]
        raise PipelineInputError(
            f"reward_fn {scorer.identity['name']} raised {type(exc.cause).__name__}: {exc.cause} "
            f"for prompt_id {pid}, completion_id {cid}",
            file=input_dir,
        ) from exc.cause
    rows = []
    for (pid, cid, _, _), value in zip(unit.items, values, strict=True):
        rows.append({"prompt_id": pid, "completion_id": cid, "score": _checked(value, pid, cid, input_dir)})
    advance(len(rows))
    return pa.Table.from_pylist(rows, schema=SCORES)


def _scorer(reward_fn, reward_model, batch_size):
    if reward_fn is not None:
        return FunctionScorer(reward_fn)
    from transformers import AutoTokenizer

    from prefpool.pipeline.model.cache_key import weights_hash

    if not Path(reward_model).is_dir():
        raise PipelineConfigError(f"reward model {reward_model}: not a local model folder (save_pretrained layout)")
    weights = weights_hash(reward_model)
    tokenizer = AutoTokenizer.from_pretrained(str(reward_model))
    return RewardModelScorer(reward_model, batch_size=batch_size, weights_sha256=weights, tokenizer=tokenizer)


def _checked(value: object, pid: str, cid: str, input_dir) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise PipelineInputError(
            f"score is {value!r} for prompt_id {pid}, completion_id {cid} (a score must be a finite real number)",
            file=input_dir,
        )
    return float(value)
