"""The ``build`` stage: ``examples`` (+ ``candidates``) + ``logprobs`` -> a training table.

A generic driver: it checks the policies, scans and shards the inputs, hands
a ``BuildContext`` (``kinds/build_context.py``) to the table kind's ``plan``
and writes what the plan makes. Each kind (its schema, decoder, plan, and
what it needs from the inputs) is one module of ``pipeline/kinds/``
(``pairwise``, ``mcpo``, ``mpo``, ``kto``), registered in ``pipeline/kinds/__init__.py``;
the ``--kind`` choices come from that registry.

Policies (all stored in the manifest's config and counted in ``report.json``):

- ranks/scores and ties: see ``kinds/select.py`` (``rank_by``, ``best_ties``;
  derived pairs skip equal keys).
- ``max_pool``: a pool (or the MPO samples) keeps its first ``max_pool`` members.
- ``empty_pool="drop"`` drops a row whose pool is empty (after removing
  members with no log-prob) and counts it; ``"error"`` raises naming the prompt_id.
- ``missing="error"`` (default): a text with no reference log-prob in the
  logprobs tables raises, naming the prompt_id, the role (chosen, rejected,
  preferred, pool, sample) and the text. ``"drop"``: the row is dropped (a
  pool member or sample: only that member) and counted per role.
- A NaN or infinite log-prob is always an error (``build_inputs``).
- pool hygiene (empty, truncated and duplicate samples, prompts whose answers
  are all one text, texts identical to the preferred one) and a
  length-penalized ranking key: ``kinds/hygiene.py``; the pair rules
  (``pair_mode``, ``min_margin``): ``kinds/pair_rules.py``; several scorers'
  scores combined (``ensemble_rule``): ``kinds/ensemble.py``.
- ``scores`` (the output of ``prefpool score``, one folder or several): the
  answers are ranked by those scores instead of the examples' own ranks or
  scores (``rank_by`` becomes ``"score"``, higher is better, ties per
  ``best_ties``; derived pairs skip equal scores), and explicit ``pairs`` are
  ignored: every row's pairs are derived. Scores made over the ``examples``
  rank its answers (joined by prompt_id and completion_id). Scores made over
  a ``candidates`` table rank its samples, which then stand in for the
  answers: ``mcpo``'s preferred answer is the highest-scored sample (its pool
  the other samples, as above) and ``pairwise`` pairs the best sample with
  each lower-scored one; it needs ``candidates`` (the texts) and is refused
  for ``mpo``. Duplicate sample texts count once (the first). An answer
  with no score is unranked (counted: ``answers_without_score``); a NaN or
  infinite score is an error.

Sharding: ``shard="i/N"`` (``--shard i/N``) builds only the rows whose
``stable_bucket(prompt_id, N) == i``, like every other stage; ``merge`` of the
N shard runs equals one unsharded run (rows, order, units, ``report.json``).
Every input (examples, candidates, logprobs, scores) is filtered by that bucket
right after its scan, before any join. Polars has no native sha256, so the
bucket is a Python map over the *distinct* prompt ids of each batch
(``_shard_filter``), not a call per row. A plan that relates a prompt to other
prompts reads the whole examples table as well (``BuildContext.all_examples``:
``kto``'s mismatched pairs), so its shards pair a prompt as one run does.

Memory bound: one shard's output. The joins run as one lazy polars plan over
the Parquet shards; the plan is collected once (streaming engine), at the end,
because ``StageRun`` writes sorted units with a hash of their rows. Policy
checks (missing values, counts) are extra lazy passes that collect only counts
or one offending row. The output of one run (of one shard with ``--shard``)
therefore has to fit in memory; the inputs need not. Use ``--shard i/N`` (N
processes, one after another or in parallel) and ``prefpool merge`` to split a
build whose output does not fit.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

from prefpool.pipeline.io.errors import PipelineConfigError, PipelineInputError
from prefpool.pipeline.io.ids import ShardSpec, stable_bucket
from prefpool.pipeline.io.progress import summary_line
from prefpool.pipeline.io.read import scan
from prefpool.pipeline.io.stage_run import StageRun, plan_units
from prefpool.pipeline.io.writer_lock import writes_folder
from prefpool.pipeline.kinds import KINDS, ensemble, get_kind, hygiene
from prefpool.pipeline.kinds import select as sel
from prefpool.pipeline.kinds.build_context import BuildContext
from prefpool.pipeline.kinds.inputs import fingerprint, logprobs_lookup, scores_lookup
from prefpool.pipeline.kinds.pair_rules import PAIR_MODES, PairMode

STAGE = "build"
ROWS_PER_UNIT = 100_000
KindName = Literal[tuple(KINDS)]  # type: ignore[valid-type]  # build's --kind choices: the registry's kinds


def _either(names: list[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


@dataclass(frozen=True)
class BuildConfig:
    """What decides build's output (stored in the manifest; a rerun must match it)."""

    kind: str = field(metadata={"help": " | ".join(KINDS)})
    rank_by: str = field(default="rank", metadata={"help": "rank (lower is better) | score (higher is better)"})
    pair_mode: str = field(default="best-vs-rest", metadata={"help": "derived pairs: " + " | ".join(PAIR_MODES)})
    best_ties: str = field(default="first", metadata={"help": "tie for best: first (lowest index) | drop row"})
    missing: str = field(default="error", metadata={"help": "text without a log-prob: error | drop"})
    max_pool: int | None = field(default=None, metadata={"help": "keep the first N pool members / samples"})
    empty_pool: str = field(default="drop", metadata={"help": "row with an empty pool: drop | error"})
    label: float = field(default=1.0, metadata={"help": "mpo: preference label of every pair"})
    preferred: str = field(default="auto", metadata={"help": "mcpo's y0: auto | ranked | chosen"})
    with_candidates: bool = field(default=False, metadata={"help": "a candidates table was given"})
    scores: str | None = field(
        default=None, metadata={"help": "ranked by a scores table made over: examples | candidates"}
    )
    # pair rules (pipeline/kinds/pair_rules.py) and pool hygiene (pipeline/kinds/hygiene.py)
    min_margin: float = field(default=0.0, metadata={"help": "derived pairs: least key difference"})
    pair_seed: int = field(default=0, metadata={"help": "best-vs-random: seed of the draw"})
    duplicates: str = field(default="keep", metadata={"help": "duplicate samples in a pool: keep | collapse"})
    empty: str = field(default="drop", metadata={"help": "empty answers: drop | keep"})
    truncated: str = field(default="keep", metadata={"help": "samples cut at max_new_tokens: keep | drop | penalize"})
    truncated_penalty: float = field(default=1.0, metadata={"help": "penalize: subtracted from the score"})
    identical_pools: str = field(default="drop", metadata={"help": "all answers one text: drop | keep"})
    length_penalty: float = field(default=0.0, metadata={"help": "ranking score minus this times num_tokens"})
    ensemble: str | None = field(default=None, metadata={"help": "several scorers combined by: zmean | vote"})

    def hygiene(self, **overrides: str) -> dict[str, str]:
        rules = {name: getattr(self, name) for name in hygiene.CHOICES}
        return {**rules, **overrides}

    def check(self) -> None:
        sel.check_choice("kind", self.kind, tuple(KINDS))
        sel.check_choice("missing", self.missing, ("error", "drop"))
        sel.check_choice("empty_pool", self.empty_pool, ("drop", "error"))
        sel.check_choice("rank_by", self.rank_by, ("rank", "score"))
        sel.check_choice("pair_mode", self.pair_mode, PAIR_MODES)
        for name, choices in hygiene.CHOICES.items():
            sel.check_choice(name, getattr(self, name), choices)
        for name in ("min_margin", "truncated_penalty", "length_penalty"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise PipelineConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.truncated == "penalize" and self.scores != "candidates":
            raise PipelineConfigError(
                "truncated='penalize' (--truncated penalize) lowers a sample's score: it needs samples ranked by "
                "a scores table (--scores over the candidates, with --candidates)"
            )
        if self.ensemble is not None:
            sel.check_choice("ensemble", self.ensemble, ensemble.RULES)
        if self.length_penalty and self.rank_by != "score":
            raise PipelineConfigError("length_penalty (--length-penalty) needs answers ranked by a score")
        sel.check_choice("best_ties", self.best_ties, ("first", "drop"))
        sel.check_choice("preferred", self.preferred, ("auto", "ranked", "chosen"))
        if self.max_pool is not None and self.max_pool < 1:
            raise PipelineConfigError(f"max_pool must be >= 1, got {self.max_pool}")
        if not (math.isfinite(self.label) and 0.0 <= self.label <= 1.0):
            raise PipelineConfigError(
                f"label (--label) must be a probability in [0, 1] (MPO's preference I; 1 = the chosen answer is "
                f"preferred), got {self.label!r}"
            )
        kind = get_kind(self.kind)
        if kind.needs_candidates and not self.with_candidates:
            raise PipelineConfigError(f"build --kind {kind.name} needs --candidates ({kind.candidates})")
        if self.scores == "candidates" and not (kind.ranks_samples and self.with_candidates):
            ranking = [k.name for k in KINDS.values() if k.ranks_samples]
            raise PipelineConfigError(
                "scores made over a candidates table rank its samples: they need --candidates (the texts) "
                f"and --kind {_either(ranking)}"
            )


@dataclass(frozen=True)
class BuildSummary:
    out: Path
    rows_written: int
    report: dict
    seconds: float

    def line(self) -> str:
        return summary_line(STAGE, rows=self.rows_written, seconds=self.seconds, out=self.out)


def _shard_filter(spec: ShardSpec) -> pl.Expr | None:
    """``stable_bucket(prompt_id, N) == i`` as a polars predicate (None: the whole input).

    sha256 is not a polars expression, so each batch's distinct ids are hashed in
    Python and the batch is tested by membership; elementwise, so it streams.
    """
    if spec.count == 1:
        return None

    def owned(ids: pl.Series) -> pl.Series:
        keep = [pid for pid in ids.unique().drop_nulls().to_list() if stable_bucket(pid, spec.count) == spec.index]
        return ids.is_in(pl.Series(keep, dtype=pl.String).implode())

    return pl.col("prompt_id").map_batches(owned, return_dtype=pl.Boolean, is_elementwise=True)


def _no_rows_message(config: BuildConfig, counts: dict[str, int], examples_rows: int) -> str:
    """Why a build wrote nothing: its top drop reasons, each with what to pass (as ingest refuses 0 rows)."""
    flag = f"--rank-by {'score' if config.rank_by == 'rank' else 'rank'}"
    hints = {
        "dropped_no_ranked_answer": f"no answer has a {config.rank_by}: pass {flag}, or --preferred chosen "
        "for plain prompt/chosen/rejected data",
        "dropped_no_pair": "the rows have no chosen/rejected pair: pass --preferred ranked with --rank-by",
        "dropped_no_ranked_answer_or_pair": f"the rows have neither an answer ranked by {config.rank_by} nor a "
        f"chosen/rejected pair: pass {flag}",
        "dropped_empty_pool": "no pool left for the preferred answer: pass --candidates (from `prefpool "
        "generate`) and its --logprobs, or check --max-pool",
        "dropped_empty_samples": "no reference samples: pass the --candidates of `prefpool generate` and "
        "their --logprobs",
        "dropped_tie_for_best": "the best answers tie: pass --best-ties first",
        "pairs_below_margin": "every derived pair is closer than --min-margin: lower it",
        **get_kind(config.kind).no_row_hints,
    }
    missing = (
        "no reference log-prob: run `prefpool logprobs` over every table whose texts the build uses and pass "
        "each with --logprobs"
    )
    reasons = sorted(
        ((n, v) for n, v in counts.items() if (n.startswith("dropped_") or n == "pairs_below_margin") and v),
        key=lambda nv: -nv[1],
    )
    if reasons:
        told = [
            f"{name}: {value} ("
            + hints.get(name, missing if name.startswith("dropped_missing_logp") else "see report")
            + ")"
            for name, value in reasons[:3]
        ]
        why = "Top reasons: " + "; ".join(told)
    elif get_kind(config.kind).made_of_pairs and counts.get("pairs_explicit", 0) + counts.get("pairs_derived", 0) == 0:
        why = f"the rows hold no chosen/rejected pair and no answers ranked by {config.rank_by}: pass {flag}"
    else:
        why = "no row was dropped by a counted reason"
    return (
        f"build --kind {config.kind} made no row from the {examples_rows} examples rows; nothing is written. {why}. "
        "What each kind needs: `prefpool build --help`"
    )


def _read_scores(score_dirs: list, ensemble_rule: ensemble.Rule | None) -> tuple:
    """``(scores frame, scored, scorers)``: one scorer's scores, several combined by ``ensemble_rule``, or none."""
    if score_dirs and ensemble_rule is not None:
        return ensemble.combine(score_dirs, ensemble_rule)
    if ensemble_rule is not None:
        raise PipelineConfigError("ensemble_rule (--ensemble-rule) combines scores: give two or more --scores")
    scores_frame, scored = scores_lookup(score_dirs) if score_dirs else (None, None)
    return scores_frame, scored, []


def _input_paths(examples, lp_dirs: list, candidates, score_dirs: list) -> dict:
    return {
        "examples": str(examples),
        "logprobs": [str(d) for d in lp_dirs],
        "candidates": None if candidates is None else str(candidates),
        "scores": [str(d) for d in score_dirs],
    }


@writes_folder(lambda a: a["out"], command="build")
def build(
    kind: KindName,
    *,
    examples: str | Path,
    logprobs: str | Path | list[str | Path],
    out: str | Path,
    candidates: str | Path | None = None,
    scores: str | Path | list[str | Path] | None = None,
    rank_by: Literal["rank", "score"] = "rank",
    pair_mode: PairMode = "best-vs-rest",
    best_ties: Literal["first", "drop"] = "first",
    missing: Literal["error", "drop"] = "error",
    max_pool: int | None = None,
    empty_pool: Literal["drop", "error"] = "drop",
    label: float = 1.0,
    preferred: Literal["auto", "ranked", "chosen"] = "auto",
    min_margin: float = 0.0,
    pair_seed: int = 0,
    duplicates: hygiene.Duplicates = "keep",
    empty: hygiene.Empty = "drop",
    truncated: hygiene.Truncated = "keep",
    truncated_penalty: float = 1.0,
    identical_pools: hygiene.IdenticalPools = "drop",
    length_penalty: float = 0.0,
    ensemble_rule: ensemble.Rule | None = None,
    overwrite: bool = False,
    rows_per_unit: int = ROWS_PER_UNIT,
    shard: str | ShardSpec | None = None,
) -> BuildSummary:
    """Join examples (+ candidates) with reference log-probs into a training table.

    The policies are described in the module docstring. Output rows are sorted by
    ``prompt_id`` (pairs then by chosen and rejected answer index), so the output
    does not depend on the row order of any input.

    Args:
        kind: What each needs from its input. KIND_NEEDS Every text needs a reference log-prob from
            `prefpool logprobs` (--logprobs). A build that makes no row is an error naming the reasons.
        examples: `examples` folder (from ingest).
        logprobs: `logprobs` folder; repeat for several.
        out: Output folder (shards; manifest.json and report.json in its .prefpool/).
        candidates: `candidates` folder: mcpo pool / mpo reference samples.
        scores: `scores` folder (from `prefpool score`): rank by these scores; repeat for several.
        rank_by: rank (lower is better) | score (higher is better).
        pair_mode: Pairs derived from ranks (ties skipped): best-vs-rest (the best against each worse answer) |
            best-vs-worst (SimPO) | best-vs-random (one worse answer, drawn by pair_seed) | all.
        best_ties: Tie for best: first (lowest answer index) | drop (the row).
        missing: A text with no reference log-prob: error | drop.
        max_pool: Keep the first N pool members / reference samples.
        empty_pool: A row with an empty pool: drop | error.
        label: mpo: preference label of every pair.
        preferred: mcpo's preferred answer y0: ranked (the best by --rank-by) | chosen (the first pair's chosen
            answer: plain prompt/chosen/rejected data; with --candidates, a SPIN-like pool) | auto (ranked where a
            row has a ranked answer, else chosen).
        min_margin: Derived pairs: keep a pair only when the chosen answer beats the rejected one by at least this
            much (score difference; rank difference when ranked by rank).
        pair_seed: best-vs-random: seed of the draw of the rejected answer.
        duplicates: Generated samples with the same text in one pool: keep (they are draws) | collapse (the first).
        empty: Answers and samples that are empty or whitespace: drop | keep.
        truncated: Samples cut at max_new_tokens (finish_reason length): keep | drop | penalize (score minus
            truncated_penalty; needs --scores over the candidates).
        truncated_penalty: truncated=penalize: subtracted from a truncated sample's score.
        identical_pools: A prompt whose answers (or samples) all have one text: drop (SimPO) | keep.
        length_penalty: Ranked by a score: rank by score - length_penalty * num_tokens (reference tokens).
        ensemble_rule: Scores of several scorers: combine them by zmean (mean of per-prompt z-scores) | vote (majority
            vote of their rankings: pairwise majority wins).
        overwrite: Replace an existing output made with different settings.
        rows_per_unit: Rows per work unit: one shard file each, the unit of resuming. Does not change the rows.
        shard: Run only shard i/N of the input (rows whose prompt_id hashes to bucket i); join the N outputs with
            `prefpool merge`.
    """
    start = time.perf_counter()
    spec = ShardSpec.parse(shard)
    score_dirs = [] if scores is None else [scores] if isinstance(scores, (str, Path)) else list(scores)
    scores_frame, scored, scorers = _read_scores(score_dirs, ensemble_rule)
    config = BuildConfig(
        kind,
        "score" if scored else rank_by,
        pair_mode,
        best_ties,
        missing,
        max_pool,
        empty_pool,
        float(label),
        preferred,
        candidates is not None,
        scored,
        float(min_margin),
        int(pair_seed),
        duplicates,
        empty,
        truncated,
        float(truncated_penalty),
        identical_pools,
        float(length_penalty),
        ensemble_rule,
    )
    config.check()
    lp_dirs = [logprobs] if isinstance(logprobs, (str, Path)) else list(logprobs)
    inputs: dict[str, object] = {
        "examples": fingerprint(examples, "examples"),
        "logprobs": [fingerprint(d, "logprobs") for d in lp_dirs],
    }
    if candidates is not None:
        inputs["candidates"] = fingerprint(candidates, "candidates")
    if score_dirs:
        inputs["scores"] = [fingerprint(d, "scores") for d in score_dirs]
    run = StageRun(
        out,
        stage=STAGE,
        schema=kind,
        config=asdict(config),
        inputs=inputs,
        shard=spec,
        rows_per_unit=rows_per_unit,
        overwrite=overwrite,
        sources=[examples, *lp_dirs, *([candidates] if candidates is not None else []), *score_dirs],
    )
    if scorers:
        run.provenance["scores_ensemble"] = {"rule": ensemble_rule, "scorers": scorers}
    if run.complete:
        manifest = run.finish()
        return BuildSummary(run.out, manifest.total_rows, manifest.summary, time.perf_counter() - start)

    keep = _shard_filter(spec)

    def owned(frame: pl.LazyFrame) -> pl.LazyFrame:
        return frame if keep is None else frame.filter(keep)

    cand = None if candidates is None else owned(scan(candidates, schema="candidates"))
    scores_frame = None if scores_frame is None else owned(scores_frame)
    ex = owned(scan(examples, schema="examples"))
    lookup = logprobs_lookup(lp_dirs, keep=keep)
    whole = scan(examples, schema="examples")
    ctx = BuildContext(config, ex, lookup, ", ".join(map(str, lp_dirs)), scores_frame, cand, all_examples=whole)
    table_kind = get_kind(kind)
    frame = table_kind.plan(ctx, cand)
    schema = table_kind.schema
    # The one collect of the stage (see the module docstring).
    table = frame.sort("prompt_id", "_k1", "_k2").select(schema.names).collect(engine="streaming").to_arrow()
    table = table.cast(schema)
    examples_rows = inputs["examples"]["total_rows"] if keep is None else ex.select(pl.len()).collect().item()  # type: ignore[index]
    if table.num_rows == 0 and examples_rows and spec.count == 1:
        raise PipelineInputError(_no_rows_message(config, ctx.counts, examples_rows), file=str(examples))

    # keyed by prompt_id as `merge` keys its units, so merged shard runs have the unsharded run's units
    units = plan_units(table.column("prompt_id").to_pylist(), key_of=lambda k: k, rows_per_unit=rows_per_unit)
    for unit in run.pending(units):
        run.write(unit, table.slice(unit.seq * rows_per_unit, len(unit.items)))
    report = {
        "kind": kind,
        "rows_written": table.num_rows,
        # this shard's examples rows, so that `merge` sums them to the input's
        "examples_rows": examples_rows,
        **dict(sorted(ctx.counts.items())),
        "config": asdict(config),
        "inputs": _input_paths(examples, lp_dirs, candidates, score_dirs),
        **({"scores_ensemble": {"rule": ensemble_rule, "scorers": scorers}} if scorers else {}),
    }
    summary = {k: v for k, v in report.items() if isinstance(v, int)}
    run.finish(sidecars={"report.json": report}, summary=summary)
    return BuildSummary(run.out, table.num_rows, report, time.perf_counter() - start)


# --kind's help: each kind's own line (``TableKind.needs``), in registry order.
if build.__doc__:
    build.__doc__ = build.__doc__.replace("KIND_NEEDS", " ".join(f"{k.name}: {k.needs}" for k in KINDS.values()))
