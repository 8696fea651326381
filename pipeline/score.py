"""The ``score`` stage: a reward for every (prompt, completion) of a table -> the ``scores`` table.

Input: an ``examples`` folder (completions = ``answers[*].text``, the dataset's
answers) or a ``candidates`` folder (``samples[*].text``, generated samples).
Output: one row per distinct ``(prompt_id, completion_id)``, sorted by both,
cut into units written (and resumed) one by one through ``StageRun``;
``--shard i/N`` runs combine with ``prefpool merge``.

Scorer (exactly one; see ``score_scorers``): ``reward_fn="module:function"``,
called as ``function(prompt_messages, completion_text) -> float``, or
``reward_model=FOLDER``, an ``AutoModelForSequenceClassification`` scoring
the conversation in its own chat template (one label, or one head or a
weighted sum of several: ``engines/reward_model.py``). The scorer's identity (function name
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

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from prefpool.pipeline.engines.judge import JudgeScorer, Mode
from prefpool.pipeline.engines.preference import PreferenceScorer
from prefpool.pipeline.engines.preference import Rule as PreferenceRule
from prefpool.pipeline.engines.registry import EngineName, document_engines
from prefpool.pipeline.engines.reward_model import RewardModelScorer, load_reward_model
from prefpool.pipeline.engines.scorers import FunctionScorer, checked_score
from prefpool.pipeline.executors.base import Advance, ExecutorName, WorkerNeeds, make_executor
from prefpool.pipeline.io.completions import (
    TEXT_COLUMNS,
    distinct_completions,
    prompt_locations,
    read_completion_table,
)
from prefpool.pipeline.io.errors import PipelineConfigError
from prefpool.pipeline.io.ids import ShardSpec
from prefpool.pipeline.io.progress import progress, summary_line
from prefpool.pipeline.io.schemas import SCORES
from prefpool.pipeline.io.stage_run import StageRun, Unit, plan_units
from prefpool.pipeline.io.writer_lock import writes_folder
from prefpool.pipeline.model.device import resolve_device

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


@writes_folder(lambda a: a["out"], command="score")
@document_engines
def score(
    input_dir: str | Path,
    *,
    out: str | Path,
    reward_fn: str | None = None,
    reward_model: str | Path | None = None,
    batch_size: int = 16,
    reward_head: int | None = None,
    reward_weights: list[float] | None = None,
    max_batch_tokens: int | None = None,
    trust_remote_code: bool = False,
    reward_output: str = "logits",
    judge: str | Path | None = None,
    judge_mode: Mode = "pointwise",
    judge_template: str | Path | None = None,
    judge_engine: EngineName = "hf",
    judge_max_new_tokens: int = 32,
    preference_model: str | Path | None = None,
    preference_rule: PreferenceRule = "bradley-terry",
    shard: str | ShardSpec | None = None,
    overwrite: bool = False,
    rows_per_unit: int = ROWS_PER_UNIT,
    device: str = "auto",
    show_progress: bool | None = None,
    executor: ExecutorName = "local",
    workers: int | None = None,
    ray_address: str | None = None,
) -> ScoreSummary:
    """A reward for every (prompt, completion): the `scores` table (rank by it with `build --scores`).

    Give exactly one of ``reward_fn``, ``reward_model``, ``judge`` and ``preference_model``. ``batch_size``
    does not change the values and is not part of the run's identity.

    Args:
        input_dir: An `examples` (ingest) or `candidates` (generate) output folder.
        out: Output folder (scores shards; manifest.json and report.json in its .prefpool/).
        reward_fn: module:function or path/file.py:function; called as f(prompt messages, completion) -> float.
        reward_model: A sequence-classification model (one label, or several with reward_head / reward_weights): a
            local folder (save_pretrained), a .gguf file or a Hub id (from the local HF cache when there).
        batch_size: Reward model: sequences per forward pass; does not change values.
        reward_head: Reward model with several labels: the reward is this head's logit (0-based).
        reward_weights: Reward model with several labels: the reward is the weighted sum of its heads; repeat, one
            weight per label.
        max_batch_tokens: Reward model: at most this many padded tokens per forward pass (sequences are batched by
            length); does not change values.
        trust_remote_code: Reward model: run the model code shipped with its weights (needed by some, e.g. ArmoRM).
        reward_output: Reward model: the field of its output that holds the values: logits (a transformers
            classifier), or a field of a model's own output class (ArmoRM: score, its preference score; or rewards,
            its objectives, with reward_head / reward_weights).
        judge: An LLM judge (a causal LM: folder, .gguf or Hub id) run through the generation engine, greedy, in
            its own chat template; an output that does not parse is not scored (counted in report.json).
        judge_mode: pointwise (a 1-10 rating per answer) | pairwise (each answer against its row's first answer,
            in both orders: score 1, 0.5 or 0).
        judge_template: A text file replacing the mode's built-in prompt (same fields and reply format).
        judge_engine: The judge's generation engine: {engines}.
        judge_max_new_tokens: The judge's reply length limit, in tokens.
        preference_model: A pairwise preference model (a causal LM read as P(A better than B) at its next token),
            each pair in both orders.
        preference_rule: How its preferences rank a prompt's n completions: bradley-terry | copeland (both n(n-1)
            forward passes) | tournament (each against the row's first answer: 2(n-1)).
        shard: Run only shard i/N of the input (rows whose prompt_id hashes to bucket i); join the N outputs with
            `prefpool merge`.
        overwrite: Replace an existing output made with another scorer.
        rows_per_unit: Rows per work unit: one shard file each, the unit of resuming. Does not change the rows.
        device: Reward model: auto (CUDA when present, else CPU) | cpu | cuda | cuda:N | mps; not in the identity.
        show_progress: Progress on stderr: a bar on a terminal, else a line every $PREFPOOL_PROGRESS_SECONDS (30).
        executor: Where the units run: local (this process) | ray (Ray actors, each loading the scorer once; this
            process writes every shard). Does not change the rows.
        workers: ray: number of actors. Default: as many as the cluster's CPUs hold.
        ray_address: ray: the cluster to use. Default: $RAY_ADDRESS, else start a local Ray on this machine.
    """
    start = time.perf_counter()
    if sum(x is not None for x in (reward_fn, reward_model, judge, preference_model)) != 1:
        raise PipelineConfigError(
            "score needs exactly one of reward_fn (--reward-fn), reward_model (--reward-model), judge (--judge) and "
            "preference_model (--preference-model)"
        )
    if batch_size < 1 or (max_batch_tokens is not None and max_batch_tokens < 1):
        raise PipelineConfigError(f"batch_size and max_batch_tokens must be >= 1, got {batch_size}, {max_batch_tokens}")
    if reward_model is None and (
        reward_head is not None or reward_weights or trust_remote_code or reward_output != "logits"
    ):
        raise PipelineConfigError(
            "reward_head, reward_weights, trust_remote_code and reward_output apply to a reward_model only"
        )
    spec = ShardSpec.parse(shard)
    device = resolve_device(device)
    pool = make_executor(executor, workers=workers, address=ray_address)
    in_schema, table, inputs = read_completion_table(input_dir, stage="score")
    if judge is not None:
        scorer = _judge(
            judge,
            table,
            TEXT_COLUMNS[in_schema],
            mode=judge_mode,
            template=judge_template,
            engine=judge_engine,
            max_new_tokens=judge_max_new_tokens,
            batch_size=batch_size,
            device=device,
        )
    elif preference_model is not None:
        scorer = _preference(
            preference_model, table, TEXT_COLUMNS[in_schema], rule=preference_rule, batch_size=batch_size, device=device
        )
    else:
        scorer = _scorer(
            reward_fn,
            reward_model,
            batch_size=batch_size,
            device=device,
            head=reward_head,
            head_weights=reward_weights or None,
            max_batch_tokens=max_batch_tokens,
            trust_remote_code=trust_remote_code,
            output=reward_output,
        )
    pairs = distinct_completions(table, in_schema, spec)
    locations = prompt_locations(input_dir)
    column = TEXT_COLUMNS[in_schema]
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
        sources=[input_dir],
    )
    todo = run.pending(units)
    computed = 0
    with progress(STAGE, sum(len(u.items) for u in todo), enabled=show_progress, units=len(todo)) as bar:

        def write(unit: Unit, table: pa.Table) -> None:
            nonlocal computed
            run.write(unit, table)
            computed += table.num_rows
            bar.unit_done()

        pool.map(ScoreTask(scorer, locations, column, _needs(scorer)), todo, write, advance=bar)
    rows = len(pairs)
    extra = {}
    if isinstance(scorer, JudgeScorer) and not run.complete:
        extra = {"judge": _judge_report(run, units, scorer)}
        rows = extra["judge"]["scored"]
    summary = {"rows": rows, "input_schema": in_schema}
    report = {**summary, **extra, "scorer": scorer.identity}
    manifest = run.finish(sidecars={"report.json": report}, summary={"rows": rows})
    return ScoreSummary(
        out=run.out,
        rows=manifest.total_rows,
        computed=computed,
        units_written=run.units_written,
        units_skipped=run.units_skipped,
        seconds=time.perf_counter() - start,
    )


@dataclass(frozen=True)
class ScoreTask:
    """A unit of (prompt_id, completion_id, prompt, text) -> its scores table; the scorer loads once per worker.

    ``locations`` (prompt_id -> the input file and row of its prompt) and ``column`` name a completion in
    an error raised on a worker as a local run names it."""

    scorer: FunctionScorer | RewardModelScorer | JudgeScorer | PreferenceScorer
    locations: dict
    column: str
    needs: WorkerNeeds = WorkerNeeds()  # a reward model scores on the CPU; a judge where its engine runs

    def load(self):
        self.scorer.load()
        return partial(score_unit, scorer=self.scorer, locations=self.locations, column=self.column)


def score_unit(unit: Unit, advance: Advance, *, scorer, locations: dict, column: str) -> pa.Table:
    """The scores table of one unit; ``advance`` by its rows at the end."""
    where = [_where(pid, cid, locations, column) for pid, cid, _, _ in unit.items]
    items = [(prompt, text) for _, _, prompt, text in unit.items]
    if isinstance(scorer, (JudgeScorer, PreferenceScorer)):  # they look up each prompt's other answers
        values = scorer.score(items, where, prompt_ids=[pid for pid, _, _, _ in unit.items])
    else:
        values = scorer.score(items, where)
    rows = []
    for (pid, cid, _, _), value, label in zip(unit.items, values, where, strict=True):
        if value is None and isinstance(scorer, JudgeScorer):  # a judge may abstain: an unparsable output
            continue
        rows.append({"prompt_id": pid, "completion_id": cid, "score": checked_score(value, label)})
    advance(len(unit.items))
    return pa.Table.from_pylist(rows, schema=SCORES)


def _scorer(reward_fn, reward_model, **options):
    if reward_fn is not None:
        return FunctionScorer(reward_fn)
    return load_reward_model(reward_model, **options)


def _judge(model, table: pa.Table, column: str, **options) -> JudgeScorer:
    """The judge scorer; each prompt's reference answer (pairwise) is the first answer of its first row."""
    from prefpool.pipeline.model.info import load_model_info

    references: dict[str, str] = {}
    for pid, answers in zip(table.column("prompt_id").to_pylist(), table.column(column).to_pylist(), strict=True):
        if answers:
            references.setdefault(pid, answers[0]["text"])
    if options["mode"] == "pairwise" and not references:
        raise PipelineConfigError("a pairwise judge needs each prompt's reference answer (its row's first)")
    return JudgeScorer(load_model_info(model, what="judge"), references=references, **options)


def _preference(model, table: pa.Table, column: str, **options) -> PreferenceScorer:
    """The preference scorer; each prompt's pool: its distinct texts, its first row's first answer first."""
    from prefpool.pipeline.model.info import load_model_info

    pools: dict[str, dict[str, None]] = {}
    for pid, answers in zip(table.column("prompt_id").to_pylist(), table.column(column).to_pylist(), strict=True):
        pools.setdefault(pid, {}).update((a["text"], None) for a in answers)
    return PreferenceScorer(
        load_model_info(model, what="preference_model"), pools={k: list(v) for k, v in pools.items()}, **options
    )


def _needs(scorer) -> WorkerNeeds:
    """A judge's worker asks for the GPU its engine runs on; reward models and functions run on the CPU."""
    if isinstance(scorer, JudgeScorer):
        return scorer.engine.generator_needs(scorer.device, scorer.options, who="judge")
    return WorkerNeeds()


def _judge_report(run: StageRun, units: list[Unit], judge: JudgeScorer) -> dict:
    """Counted from the written shards (so a resumed run reports the whole run): answers judged, those scored,
    those left unscored because an output did not parse (and their share of the judged), and (pairwise) the
    references and the answers whose two orders disagree."""
    expected = sum(len(u.items) for u in units)
    scores = [v for u in units for v in pq.read_table(run.shard_path(u), columns=["score"]).column("score").to_pylist()]
    # pairwise: each prompt's reference scores 0.5 unjudged
    references = 0
    if judge.mode == "pairwise":
        references = sum(text == judge.references[pid] for u in units for pid, _, _, text in u.items)
    judged = expected - references
    report = {
        "mode": judge.mode,
        "answers": expected,
        "judged": judged,
        "scored": len(scores) - references,
        "unparsable": expected - len(scores),
        "unparsable_rate": (expected - len(scores)) / judged if judged else 0.0,
    }
    if judge.mode == "pairwise":
        report["references"] = references
        report["orders_disagree"] = sum(v == 0.5 for v in scores) - references
    return report


def _where(pid: str, cid: str, locations: dict, column: str) -> str:
    """Where a completion is, for error messages: its ids, and the file, row and column of its prompt's row."""
    file, row = locations[pid]
    return f"prompt_id {pid}, completion_id {cid} ({file}, row {row} (0-based), column {column!r})"
