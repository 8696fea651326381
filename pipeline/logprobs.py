"""The ``logprobs`` stage: the reference model's log-prob of every (prompt, completion) in a table.

Input: an ``examples`` folder (completions = ``answers[*].text``) or a
``candidates`` folder (``samples[*].text``). Output: the ``logprobs`` table, one
row per distinct ``(prompt_id, completion_id)``, sorted by both, cut into units
that are written (and resumed) one by one through ``StageRun``.

``max_length`` (prompt + completion tokens) defaults to ``DEFAULT_MAX_LENGTH``
(1,024), or the model's context when that is smaller:
``config.max_position_embeddings``, lowered by vllm's ``max_model_len`` engine
option. A model's whole context (8,192 for SmolLM2) would keep every long
answer whole and make training slow and memory-hungry; 1,024 keeps most
preference data whole. When more than 10 % of the completions are cut or
dropped, a ``TruncationWarning`` says how many and what to pass. The resolved
number is what the cache key and manifest record; ``train`` and ``eval`` read
it from the cache (a different one is refused there). A ``max_length``
beyond that context is refused up front (``PipelineConfigError``): the model
would run past the positions it was trained on and the values would be
meaningless.

Engine options: ``engine_args`` (vllm only) are ``vllm.LLM`` keyword arguments
merged over ``$PREFPOOL_VLLM_ARGS``. They are not part of the cache key or the
run's identity (they decide how, not what, is computed; options that would
change the values, ``dtype`` included, are refused: see ``engine_args``);
the manifest's provenance records them.

Tokens come from ``tokenize.encode_pair`` and values (hf engine) from
``model.scoring.score_tokens``, the trainer's own functions: log-probs from the
last hidden states, the LM head run over completion positions only, so a
cached reference value equals the policy's value at step 0. Pairs whose prompt alone fills
``max_length`` are dropped and counted (``long_prompts="drop"``, the default)
or stop the run (``"error"``); a completion too long is cut at its tail and
flagged ``truncated``.

Cache: every row carries a ``cache_key``, the hash of what its value depends on
(weights, config.json, tokenizer + chat template, max length, truncation
policy, dtype, engine: hf and vllm values of one sequence differ by up to
~1e-2 nats on long real sequences, so neither engine's rows stand in for the
other's, and train's step-0 check names the engine of a cache it refuses).
Rows found under the same key in ``cache=DIR`` or in the output folder itself
are copied, not recomputed, so rerunning on a grown input into the same folder
scores only the new pairs. An output made under another key is
refused (naming what differs) unless ``overwrite=True``.

Executors: ``executor="ray"`` scores the units on Ray actors, each loading the
model once; a worker holds one GPU for the hf engine and ``tensor_parallel_size
x pipeline_parallel_size`` for vllm (none on a cluster without GPUs). The
driver looks rows up in the cache and sends only the pairs to compute.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from prefpool.core.errors import InputError
from prefpool.pipeline.engines.engine import Engine
from prefpool.pipeline.engines.engine_args import context_limit
from prefpool.pipeline.engines.logprob_engines import DTYPES
from prefpool.pipeline.engines.registry import EngineName, document_engines, engine_named
from prefpool.pipeline.executors.base import Advance, ExecutorName, WorkerNeeds, make_executor
from prefpool.pipeline.io.completions import distinct_completions, prompt_locations, read_completion_table
from prefpool.pipeline.io.errors import OutputConflictError, PipelineConfigError, PipelineInputError
from prefpool.pipeline.io.ids import ShardSpec
from prefpool.pipeline.io.progress import announce, progress, summary_line
from prefpool.pipeline.io.read import checked_shards
from prefpool.pipeline.io.schemas import LOGPROBS
from prefpool.pipeline.io.shards import ShardName, read_shard
from prefpool.pipeline.io.stage_run import StageRun, Unit, existing_identity, plan_units
from prefpool.pipeline.io.writer_lock import writes_folder
from prefpool.pipeline.kinds.mismatched import with_mismatched_pairs
from prefpool.pipeline.model.cache_key import cache_components, cache_key_of, weights_hash
from prefpool.pipeline.model.folder import check_model, load_tokenizer
from prefpool.pipeline.model.source import ModelSource, resolve_model
from prefpool.pipeline.model.tokenize import PromptTooLongError, encode_pair

STAGE = "logprobs"
ROWS_PER_UNIT = 1024
LONG_PROMPTS = ("drop", "error")
DEFAULT_MAX_LENGTH = 1024  # when max_length is not given: prompt + completion tokens (the context if smaller)
WARN_CUT = 0.10  # warn when more than this share of the completions is truncated or dropped


class TruncationWarning(UserWarning):
    """max_length cut or dropped many completions."""


@dataclass(frozen=True)
class LogprobsSummary:
    out: Path
    pairs: int  # distinct (prompt, completion) pairs this shard owns
    rows: int  # rows in the output
    dropped_long_prompt: int
    truncated: int
    tokens: int  # completion tokens in the output
    computed: int  # rows scored by the model in this call
    cache_hits: int  # rows copied from a cache in this call
    units_written: int
    units_skipped: int
    seconds: float
    tokens_per_s: float  # completion tokens scored per second in this call

    def line(self) -> str:
        return summary_line(
            STAGE,
            rows=self.rows,
            seconds=self.seconds,
            out=self.out,
            pairs=self.pairs,
            computed=self.computed,
            cached=self.cache_hits,
            dropped=self.dropped_long_prompt,
            truncated=self.truncated,
            tokens_per_s=f"{self.tokens_per_s:.0f}",
            units_written=self.units_written,
            units_skipped=self.units_skipped,
        )


@writes_folder(lambda a: a["out"], command="logprobs")
@document_engines
def logprobs(
    input_dir: str | Path,
    *,
    model: str | Path,
    out: str | Path,
    engine: EngineName = "hf",
    max_length: int | None = None,
    batch_tokens: int = 16384,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    per_token: bool = False,
    long_prompts: Literal["drop", "error"] = "drop",
    shard: str | ShardSpec | None = None,
    overwrite: bool = False,
    cache: str | Path | None = None,
    rows_per_unit: int = ROWS_PER_UNIT,
    device: str = "auto",
    show_progress: bool | None = None,
    engine_args: dict | None = None,
    executor: ExecutorName = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    kl_pairs: bool = False,
) -> LogprobsSummary:
    """Reference log-probs of every (prompt, completion) pair: the `logprobs` table.

    ``model`` is a local folder (``save_pretrained`` layout), a ``.gguf`` file or a
    Hub id (``source.resolve_model``). ``max_length=None``: 1,024, or the model's context when smaller
    (see the module docstring).

    Args:
        input_dir: An `examples` (ingest) or `candidates` (generate) output folder.
        model: Reference model: a local save_pretrained folder, a .gguf file or a Hub id (from the local HF cache when
            there).
        out: Output folder (logprobs shards; manifest.json and report.json in its .prefpool/).
        engine: Scoring engine: {engines}.
        max_length: Max prompt + completion tokens; longer completions are cut at the tail. Default: 1024, or the
            model's context (max_position_embeddings) when smaller. train and eval use the cache's.
        batch_tokens: Token budget of one padded batch (rows x longest row); does not change the values.
        dtype: float32 | bfloat16 | float16.
        per_token: Also store per-token log-probs.
        long_prompts: A prompt that fills max_length: drop (counted) | error.
        shard: Run only shard i/N of the input (rows whose prompt_id hashes to bucket i); join the N outputs with
            `prefpool merge`.
        overwrite: Replace an existing output made with another model or settings.
        cache: A previous logprobs output whose rows (same cache key) are reused.
        rows_per_unit: Rows per work unit: one shard file each, the unit of resuming. Does not change the rows.
        device: hf engine: auto (CUDA when present, else CPU) | cpu | cuda | cuda:N | mps.
        show_progress: Progress on stderr: a bar on a terminal, else a line every $PREFPOOL_PROGRESS_SECONDS (30).
        engine_args: vllm only: vllm.LLM options, a JSON object, e.g. '{"tensor_parallel_size": 2}'; merged over
            $PREFPOOL_VLLM_ARGS. On the CPU none is needed: prefpool sets the KV cache size from the free memory
            (and what else vLLM needs there) and prints what it set; a value given here wins.
        executor: Where the units run: local (this process) | ray (Ray actors, each loading the model once; this
            process writes every shard). Does not change the rows.
        workers: ray: number of actors. Default: as many as the cluster's CPUs/GPUs hold.
        ray_address: ray: the cluster to use. Default: $RAY_ADDRESS, else start a local Ray on this machine.
        kl_pairs: examples only: also score each prompt with another prompt's answer, KTO's mismatched pair
            (the pair `build --kind kto` joins in; the rule: pipeline/kinds/mismatched.py).
    """
    start = time.perf_counter()
    backend = engine_named(engine)
    _check_args(max_length, batch_tokens, dtype, long_prompts)
    announce("logprobs", f"hashing and loading {model} ({engine} engine); progress follows", enabled=show_progress)
    source = check_model(model, weights=False)  # weights_hash checks the weights
    device = backend.device(device)
    options = backend.scorer_options(engine_args)
    pool = make_executor(executor, workers=workers, address=ray_address)
    spec = ShardSpec.parse(shard)
    in_schema, table, inputs = read_completion_table(input_dir, stage="logprobs")

    weights = weights_hash(source)  # before loading anything: a folder without weights fails fast
    max_length = resolve_max_length(source, max_length, options)
    tokenizer = load_tokenizer(source)  # refuses a tokenizer without chat template
    components = cache_components(
        weights, tokenizer, max_length=max_length, truncation="completion", dtype=dtype, engine=backend.name
    )
    key = cache_key_of(components)
    out = Path(out)
    replace = _check_existing(out, components, overwrite)

    pairs = distinct_completions(table, in_schema, spec)
    if kl_pairs:
        pairs = with_mismatched_pairs(pairs, table, in_schema, spec, file=input_dir)
    locations = prompt_locations(input_dir)
    check_templates(tokenizer, pairs, locations, max_length=max_length)  # before anything is written
    units = plan_units(pairs, key_of=lambda p: f"{p[0]}:{p[1]}", rows_per_unit=rows_per_unit)
    run = StageRun(
        out,
        stage=STAGE,
        schema="logprobs",
        config={
            "engine": backend.name,
            "cache_key": key,
            "cache": components,
            "per_token": per_token,
            "long_prompts": long_prompts,
            # in the run's identity: an output made without them is not taken as this run's
            **({"kl_pairs": True} if kl_pairs else {}),
        },
        inputs=inputs,
        shard=spec,
        rows_per_unit=rows_per_unit,
        overwrite=overwrite or replace,
        model=_provenance(source, backend, device, options, key, components),
        sources=[input_dir],  # cache may be the output folder itself: its rows are read before the swap
    )
    if run.complete:
        return _already_complete(run, units, start)

    task = LogprobsTask(
        _LazyScorer(backend, source, dtype, batch_tokens, tokenizer, options, device),
        tokenizer,
        key=key,
        max_length=max_length,
        per_token=per_token,
        long_prompts=long_prompts,
        locations=locations,
        model=str(model),
        needs=backend.scorer_needs(device, options),
    )
    todo = run.pending(units)
    cached = _load_cache(out, cache, key, per_token) if todo else {}
    counts = _score_pending(run, todo, cached, task, pool, show_progress)
    return _finish(run, units, len(pairs), counts, start, max_length=max_length, context=model_context(source))


def _provenance(source: ModelSource, engine: Engine, device: str, options: dict, key: str, components: dict) -> dict:
    """The manifest's ``model`` record: the model, the engine and where it ran, the cache key and its parts."""
    return {
        **source.describe(),
        "engine": engine.name,
        "device": device,
        "cache_key": key,
        **components,
        "engine_args": options,
    }


def _finish(
    run: StageRun, units: list[Unit], pairs: int, counts: dict, start: float, *, max_length: int, context: int | None
) -> LogprobsSummary:
    """Count the output's rows, write report.json and the manifest, warn when many were cut: the summary."""
    totals = _totals(run, units)
    summary = {"pairs": pairs, **totals, "dropped_long_prompt": pairs - totals["rows"]}
    run.finish(sidecars={"report.json": summary}, summary=summary)
    _warn_cut(summary, max_length, context)
    return LogprobsSummary(
        out=run.out,
        pairs=pairs,
        rows=totals["rows"],
        dropped_long_prompt=summary["dropped_long_prompt"],
        truncated=totals["truncated"],
        tokens=totals["tokens"],
        computed=counts["computed"],
        cache_hits=counts["cache_hits"],
        units_written=run.units_written,
        units_skipped=run.units_skipped,
        seconds=time.perf_counter() - start,
        tokens_per_s=counts["tokens_scored"] / counts["seconds"] if counts["seconds"] > 0 else 0.0,
    )


def _already_complete(run: StageRun, units: list[Unit], start: float) -> LogprobsSummary:
    """The summary of an output that holds every unit already: its recorded counts, nothing computed."""
    summary = run.finish().summary
    return LogprobsSummary(
        out=run.out,
        pairs=summary["pairs"],
        rows=summary["rows"],
        dropped_long_prompt=summary["dropped_long_prompt"],
        truncated=summary["truncated"],
        tokens=summary["tokens"],
        computed=0,
        cache_hits=0,
        units_written=0,
        units_skipped=len(units),
        seconds=time.perf_counter() - start,
        tokens_per_s=0.0,
    )


def _score_pending(
    run: StageRun, todo: list[Unit], cached: dict, task: LogprobsTask, pool, show_progress: bool | None
) -> dict:
    """Write the units in ``todo``: rows found in ``cached`` copied, the others scored by ``task`` on ``pool``.

    Returns the counts of this call: rows computed and copied, completion tokens scored and the seconds spent.
    """
    counts = {"computed": 0, "cache_hits": 0, "tokens_scored": 0, "seconds": 0.0}
    with progress("logprobs", sum(len(u.items) for u in todo), enabled=show_progress, units=len(todo)) as bar:
        found: dict[int, dict[int, dict]] = {}  # unit seq -> the unit's cached rows, by index in the unit
        work = []  # the units with pairs to compute, holding only those pairs
        for unit in todo:
            hits, rest = _split_cached(unit.items, cached, task.per_token)
            counts["cache_hits"] += len(hits)
            found[unit.seq] = hits
            if rest:
                work.append(Unit(unit.seq, unit.key, tuple(rest)))
            else:
                _write_unit(run, unit, hits, bar, len(hits))

        def write(unit: Unit, result: tuple[dict[int, dict], dict]) -> None:
            rows, unit_counts = result
            for name, value in unit_counts.items():
                counts[name] += value
            hits = found.pop(unit.seq)
            _write_unit(run, unit, {**hits, **rows}, bar, len(hits))

        pool.map(task, work, write, advance=bar)
    return counts


def model_context(model: str | Path | ModelSource) -> int | None:
    """``max_position_embeddings`` of the model's config (of its text model for a multimodal one)."""
    config = resolve_model(model).config()
    value = getattr(config, "max_position_embeddings", None)
    if value is None and hasattr(config, "get_text_config"):
        value = getattr(config.get_text_config(), "max_position_embeddings", None)
    return int(value) if value else None


def resolve_max_length(model: str | Path | ModelSource, max_length: int | None, options: dict) -> int:
    """The ``max_length`` the run uses: ``DEFAULT_MAX_LENGTH`` or the smaller context when None; refused when
    beyond the context."""
    context = model_context(model)
    limit = context_limit(context, options)
    if max_length is None:
        return min(limit, DEFAULT_MAX_LENGTH) if limit is not None else DEFAULT_MAX_LENGTH
    if limit is not None and max_length > limit:
        where = f"config.max_position_embeddings={context}"
        if options.get("max_model_len") is not None:
            where += f", engine option max_model_len={options['max_model_len']}"
        raise PipelineConfigError(
            f"max_length={max_length} is beyond the model's context of {limit} tokens ({where}) for "
            f"{resolve_model(model).given}: "
            f"pass max_length <= {limit}, or leave it unset (min({DEFAULT_MAX_LENGTH}, the context))"
        )
    return max_length


def _warn_cut(summary: dict, max_length: int, context: int | None) -> None:
    cut, dropped, pairs = summary["truncated"], summary["dropped_long_prompt"], summary["pairs"]
    if not pairs or cut + dropped <= WARN_CUT * pairs:
        return
    larger = f"at most the model's context of {context}" if context else "larger"
    warnings.warn(
        f"max_length={max_length} cut {cut} and dropped {dropped} (prompt alone too long) of {pairs} completions; "
        f"pass --max-length {larger} to keep more whole (train and eval read it from this cache)",
        TruncationWarning,
        stacklevel=4,  # _warn_cut <- _finish <- logprobs <- its writes_folder wrapper
    )


def _check_args(max_length, batch_tokens, dtype, long_prompts) -> None:
    if dtype not in DTYPES:
        raise PipelineConfigError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if long_prompts not in LONG_PROMPTS:
        raise PipelineConfigError(f"long_prompts must be one of {LONG_PROMPTS}, got {long_prompts!r}")
    if (max_length is not None and max_length < 2) or batch_tokens < 1:
        raise PipelineConfigError(f"need max_length >= 2 and batch_tokens >= 1, got {max_length}, {batch_tokens}")


def check_templates(tokenizer, pairs, locations: dict, *, max_length: int) -> None:
    """Tokenize each prompt's first pair before any work: a prompt the chat template rejects (an unknown
    role, a template that breaks the prompt/completion split) is an error naming its file, row and
    column, and nothing has been written yet."""
    seen = set()
    for pid, _cid, prompt, text in pairs:
        if pid in seen:
            continue
        seen.add(pid)
        try:
            encode_pair(tokenizer, prompt, text, max_length=max_length)
        except PromptTooLongError:
            continue  # long_prompts decides, per pair
        except InputError as exc:
            file, row = locations[pid]
            raise PipelineInputError(f"prompt_id {pid}: {exc}", file=file, row=row, column="prompt") from exc


def _check_existing(out: Path, components: dict, overwrite: bool) -> bool:
    """Refuse an output made under another cache key; True when an existing output may be updated in place."""
    found = existing_identity(out) if out.is_dir() else None
    if found is None or found[0] == "damaged" or found[1].get("stage") != STAGE:
        return False  # empty, unreadable or not ours: StageRun decides
    identity = found[1]
    theirs = identity["config"].get("cache", {})
    differ = [k for k in components if theirs.get(k) != components[k]]
    if not differ:
        return True  # same values: rows are reused, only new pairs are scored
    if overwrite:
        return False
    raise OutputConflictError(
        f"{out} holds log-probs made with a different {', '.join(differ)} (another model, tokenizer or "
        "settings); pass overwrite=True (--overwrite) to replace them, or choose another --out folder"
    )


def _load_cache(out: Path, cache: str | Path | None, key: str, per_token: bool) -> dict[tuple[str, str], dict]:
    """Rows under ``key`` in ``cache`` (a complete logprobs output) and in ``out``'s finished shards."""
    paths = []
    if cache is not None:
        paths += checked_shards(cache, schema="logprobs")[1]
    if out.is_dir():
        paths += [p for p in sorted(out.iterdir()) if ShardName.parse(p.name)]
    rows: dict[tuple[str, str], dict] = {}
    for path in paths:
        try:
            table = read_shard(path, "logprobs")
        except PipelineInputError:
            continue  # a damaged or foreign shard in `out`: its rows are recomputed
        for row in table.select(LOGPROBS.names).to_pylist():
            if row["cache_key"] == key and (not per_token or row["token_logps"] is not None):
                rows[(row["prompt_id"], row["completion_id"])] = row
    return rows


class _LazyScorer:
    """Starts the engine's scorer when first needed: a run served entirely from the cache never loads the model."""

    def __init__(self, engine: Engine, source, dtype, batch_tokens, tokenizer, options, device) -> None:
        self.args = (engine, source, dtype, batch_tokens, tokenizer, options, device)
        self.scorer = None
        self.seconds = 0.0  # spent scoring, model loading excluded: the tokens/s figure

    def load(self) -> None:
        if self.scorer is None:
            engine, source, dtype, batch_tokens, tokenizer, options, device = self.args
            # padded positions are masked out of attention and scoring: any id will do
            pad = tokenizer.pad_token_id or 0
            self.scorer = engine.scorer(
                source, dtype=dtype, batch_tokens=batch_tokens, pad_token_id=pad, device=device, options=options
            )

    def score(self, sequences, starts, *, per_token):
        self.load()
        start = time.perf_counter()
        scores = self.scorer.score(sequences, starts, per_token=per_token)
        self.seconds += time.perf_counter() - start
        return scores


def _split_cached(items, cached, per_token) -> tuple[dict[int, dict], list[tuple]]:
    """The unit's cached rows (by index in the unit), and ``(index, pid, cid, prompt, text)`` of the others."""
    hits, rest = {}, []
    for index, (pid, cid, prompt, text) in enumerate(items):
        hit = cached.get((pid, cid))
        if hit is not None:
            hits[index] = {**hit, "token_logps": hit["token_logps"] if per_token else None}
        else:
            rest.append((index, pid, cid, prompt, text))
    return hits, rest


def _write_unit(run: StageRun, unit: Unit, rows: dict[int, dict], bar, cached: int) -> None:
    """Write a unit's rows in the unit's order (dropped pairs have no row); ``cached`` rows count as progress here."""
    run.write(unit, pa.Table.from_pylist([rows[i] for i in sorted(rows)], schema=LOGPROBS))
    bar(cached)
    bar.unit_done()


@dataclass(frozen=True)
class LogprobsTask:
    """The pairs of a unit still to compute -> their rows; the model loads once per worker, on first use."""

    scorer: _LazyScorer
    tokenizer: object
    key: str
    max_length: int
    per_token: bool
    long_prompts: str
    locations: dict  # prompt_id -> (file, row) of its prompt in the input
    model: str
    needs: WorkerNeeds

    def load(self):
        """Load the model (an executor calls this only when some unit has a pair to compute)."""
        self.scorer.load()
        return self.unit_rows

    def unit_rows(self, unit: Unit, advance: Advance) -> tuple[dict[int, dict], dict]:
        """``({index in the unit: row}, counts)`` for ``unit.items = (index, pid, cid, prompt, text), ...``.

        Pairs whose prompt fills ``max_length`` get no row (``long_prompts="drop"``) or stop the run.
        """
        todo = []  # (index in unit, pid, cid, encoded pair)
        for index, pid, cid, prompt, text in unit.items:
            try:
                pair = encode_pair(self.tokenizer, prompt, text, max_length=self.max_length)
            except PromptTooLongError as exc:
                if self.long_prompts == "error":
                    file, row = self.locations[pid]
                    raise PipelineInputError(
                        f"prompt_id {pid}, completion_id {cid}: {exc} (long_prompts='drop' skips such pairs)",
                        file=file,
                        row=row,
                        column="prompt",
                    ) from None
                continue
            todo.append((index, pid, cid, pair))
        rows: dict[int, dict] = {}
        counts = {"computed": 0, "tokens_scored": 0, "seconds": 0.0}
        if todo:
            before = self.scorer.seconds
            scores = self.scorer.score(
                [p.prompt_ids + p.completion_ids for *_, p in todo],
                [len(p.prompt_ids) for *_, p in todo],
                per_token=self.per_token,
            )
            counts["seconds"] = self.scorer.seconds - before
            for j, (index, pid, cid, pair) in enumerate(todo):
                logp = scores.logps[j]
                per = scores.token_logps[j] if scores.token_logps is not None else None
                if not math.isfinite(logp) or (per is not None and not all(math.isfinite(v) for v in per)):
                    file, row = self.locations[pid]
                    raise PipelineInputError(
                        f"log-prob is {logp} for prompt_id {pid}, completion_id {cid} under model {self.model} "
                        "(NaN/inf: try dtype='float32', or check the weights)",
                        file=file,
                        row=row,
                    )
                rows[index] = {
                    "prompt_id": pid,
                    "completion_id": cid,
                    "logp": logp,
                    "num_tokens": scores.counts[j],
                    "truncated": pair.truncated,
                    "token_logps": per,
                    "cache_key": self.key,
                }
                counts["computed"] += 1
                counts["tokens_scored"] += scores.counts[j]
        advance(len(unit.items))
        return rows, counts


def _totals(run: StageRun, units) -> dict:
    rows = truncated = tokens = 0
    for unit in units:
        table = pq.read_table(run.shard_path(unit), columns=["num_tokens", "truncated"])
        rows += table.num_rows
        truncated += sum(table.column("truncated").to_pylist())
        tokens += sum(table.column("num_tokens").to_pylist())
    return {"rows": rows, "truncated": truncated, "tokens": tokens}
