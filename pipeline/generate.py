"""The ``generate`` stage: N sampled completions per prompt -> the ``candidates`` table.

Makes candidate pools for MC-PO and the reference samples of MPO. Reads the
prompts of an ``examples`` table (answers are ignored), renders each with the
model's chat template, and draws ``n`` completions per prompt.

Determinism: sample ``i`` of a prompt is drawn from its own RNG stream seeded
with ``sample_seed(seed, prompt_id, i)``, so a resumed, re-sharded or
re-batched run draws the same samples (the ``batch_size`` and the device are not
part of the run's identity; a different dtype or model is).

Sampling parameters: ``temperature``, ``top_p`` and ``max_new_tokens`` left as
None take the model's ``generation_config.json`` value, else 1.0 / 1.0 / 256.
``temperature=0`` means greedy decoding (all ``n`` samples are then equal).
Generation stops at any eos id of the tokenizer or of ``generation_config``
(their union). Other ``generation_config`` sampling fields (``top_k``,
``repetition_penalty``, ...) are not applied; the manifest lists them as ignored.

Per sample: ``text`` is the decoded completion without the eos that stopped it
(special tokens skipped); ``num_tokens`` counts the completion tokens without
that eos; ``finish_reason`` is "stop" (an eos was drawn) or "length"
(``max_new_tokens`` tokens drawn, no eos).

Bad input: an input with no prompts, or a prompt the chat template rejects, is
an error (``PipelineInputError`` naming the file, row and column). A prompt
whose tokens leave fewer than ``max_new_tokens`` positions of the model's
context (``max_position_embeddings``, or vllm's ``max_model_len`` when that
engine option is smaller) is dropped and counted in ``report.json`` (reason
``prompt_too_long``, with the first few prompt ids). A ``max_new_tokens`` that
leaves no room for any prompt in that context is refused up front
(``PipelineConfigError`` naming both numbers), instead of dropping every prompt.

Engine options: ``engine_args`` (vllm only; see ``engine_args`` for why they
are not part of the run's identity and which ones are refused).

Executors: ``executor="ray"`` runs the units on Ray actors, each loading the
engine once (see ``executors.ray``); a worker holds ``tensor_parallel_size x
pipeline_parallel_size`` GPUs for vllm (none on a cluster without GPUs: the
CPU build), one for the hf engine on ``device="cuda"``, else one CPU. The
rows, shards and manifest are the local run's: the samples depend only on
their seeds, and the driver writes every shard. Neither the executor nor the
worker count is part of the run's identity, so a run may resume under another.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyarrow as pa

from prefpool.pipeline.engines.engine import Engine
from prefpool.pipeline.engines.engine_args import context_limit
from prefpool.pipeline.engines.generation import Generator, Request
from prefpool.pipeline.engines.registry import EngineName, document_engines, engine_named
from prefpool.pipeline.engines.sampling import SamplingParams, sample_seed
from prefpool.pipeline.executors.base import Advance, ExecutorName, WorkerNeeds, make_executor
from prefpool.pipeline.io.errors import PipelineConfigError, PipelineInputError
from prefpool.pipeline.io.ids import ShardSpec
from prefpool.pipeline.io.progress import announce, progress, summary_line
from prefpool.pipeline.io.read import checked_shards
from prefpool.pipeline.io.schemas import CANDIDATES
from prefpool.pipeline.io.shards import read_shard
from prefpool.pipeline.io.stage_run import StageRun, Unit, plan_units
from prefpool.pipeline.io.writer_lock import writes_folder
from prefpool.pipeline.model.info import (
    APPLIED_KEYS,
    NOT_SAMPLING_KEYS,
    ModelInfo,
    load_model_info,
)

STAGE = "generate"
ROWS_PER_UNIT = 64  # prompts per shard file: the unit of resuming
DEFAULT_MAX_NEW_TOKENS = 256
EXAMPLES_PER_REASON = 5


@dataclass(frozen=True)
class PromptRow:
    prompt_id: str
    prompt: list[dict[str, str]]
    tokens: tuple[int, ...]


@dataclass(frozen=True)
class GenerateSummary:
    out: Path
    rows_written: int
    rows_dropped: int
    samples: int
    tokens_generated: int  # this invocation only (0 when everything was already done)
    units_written: int
    units_skipped: int
    seconds: float

    def line(self) -> str:
        rate = self.tokens_generated / self.seconds if self.seconds > 0 else 0.0
        return summary_line(
            STAGE,
            rows=self.rows_written,
            seconds=self.seconds,
            out=self.out,
            samples=self.samples,
            dropped=self.rows_dropped,
            new_tokens=self.tokens_generated,
            tokens_per_s=f"{rate:.0f}",
            units_written=self.units_written,
            units_skipped=self.units_skipped,
        )


@writes_folder(lambda a: a["out"], command="generate")
@document_engines
def generate(
    input_dir: str | Path,
    *,
    model: str | Path,
    out: str | Path,
    n: int,
    engine: EngineName = "hf",
    temperature: float | None = None,
    top_p: float | None = None,
    max_new_tokens: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    shard: str | ShardSpec | None = None,
    overwrite: bool = False,
    rows_per_unit: int = ROWS_PER_UNIT,
    device: str = "auto",
    show_progress: bool | None = None,
    engine_args: dict | None = None,
    executor: ExecutorName = "local",
    workers: int | None = None,
    ray_address: str | None = None,
) -> GenerateSummary:
    """N sampled completions per prompt with the model's chat template: the `candidates` table.

    Only the prompts of the ``examples`` table in ``input_dir`` are used. Each
    sample is drawn with its own seed, derived from (seed, prompt_id, sample
    index), so re-batched, resumed and re-sharded runs draw the same samples.

    Args:
        input_dir: An `examples` (ingest) output folder; only its prompts are used.
        model: A local save_pretrained folder, a .gguf file or a Hub id (from the local HF cache when there); it needs
            a chat template.
        out: Output folder (candidates shards; manifest.json and report.json in its .prefpool/).
        n: Samples per prompt.
        engine: Generation engine: {engines}.
        temperature: 0 = greedy. Default: generation_config, else 1.0.
        top_p: Nucleus mass in (0, 1]. Default: generation_config, else 1.0.
        max_new_tokens: Default: generation_config, else 256.
        seed: Global seed; each sample's seed is a hash of (seed, prompt_id, index).
        batch_size: Sequences (prompt x sample) decoded together; does not change samples.
        shard: Run only shard i/N of the input (rows whose prompt_id hashes to bucket i); join the N outputs with
            `prefpool merge`.
        overwrite: Replace an existing output made with another model or settings.
        rows_per_unit: Rows per work unit: one shard file each, the unit of resuming. Does not change the rows.
        device: hf engine: auto (CUDA when present, else CPU) | cpu | cuda | cuda:N | mps.
        show_progress: Progress on stderr: a bar on a terminal, else a line every $PREFPOOL_PROGRESS_SECONDS (30).
        engine_args: vllm only: vllm.LLM options, a JSON object, e.g. '{"tensor_parallel_size": 2}'; merged over
            $PREFPOOL_VLLM_ARGS. On the CPU none is needed: prefpool sets the KV cache size from the free memory
            (and what else vLLM needs there) and prints what it set; a value given here wins.
        executor: Where the units run: local (this process) | ray (Ray actors, each loading the engine once; this
            process writes every shard). Does not change the rows.
        workers: ray: number of actors. Default: as many as the cluster's CPUs/GPUs hold.
        ray_address: ray: the cluster to use. Default: $RAY_ADDRESS, else start a local Ray on this machine.
    """
    start = time.perf_counter()
    _check_counts(n, batch_size)
    spec = ShardSpec.parse(shard)
    backend = engine_named(engine)
    options = backend.generator_options(engine_args)
    device = backend.device(device)
    pool = make_executor(executor, workers=workers, address=ray_address)
    announce("generate", f"loading {model} ({engine} engine); progress follows", enabled=show_progress)
    info = load_model_info(model)
    params, sampling = resolve_params(info, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    context = context_limit(info.max_position_embeddings, options)
    _check_room(params, sampling, info, options, context)
    prompts, inputs = read_prompts(input_dir)
    config = {
        "engine": backend.name,
        "n": n,
        "seed": seed,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_new_tokens": params.max_new_tokens,
        "eos_token_ids": list(params.eos_token_ids),
        "dtype": info.dtype,
        "model": info.fingerprint,
        "too_long_prompts": "drop",
    }
    provenance = {
        **info.describe(),
        "engine": backend.name,
        "device": device,
        "sampling": sampling,
        "engine_args": options,
    }
    run = StageRun(
        out,
        stage=STAGE,
        schema="candidates",
        config=config,
        inputs=inputs,
        shard=spec,
        rows_per_unit=rows_per_unit,
        overwrite=overwrite,
        seed=seed,
        model=provenance,
        sources=[input_dir],
    )
    owned = sorted((p for p in prompts if spec.owns(p[0])), key=lambda p: p[0])
    rows, dropped = _render(owned, info, params.max_new_tokens, context)
    units = plan_units(rows, key_of=lambda r: r.prompt_id, rows_per_unit=rows_per_unit)
    task = GenerateTask(
        info=info,
        engine=backend,
        batch_size=batch_size,
        device=device,
        options=options,
        params=params,
        n=n,
        seed=seed,
        needs=backend.generator_needs(device, options),
    )
    tokens = _generate_pending(run, units, task, pool, show_progress)
    report = _report(owned, rows, dropped, n, _finish_counts(run, units))
    counts = {k: report[k] for k in ("rows_read", "rows_dropped", "samples", "finish_reasons")}
    run.finish(sidecars={"report.json": report}, summary=counts)
    return GenerateSummary(
        out=run.out,
        rows_written=len(rows),
        rows_dropped=report["rows_dropped"],
        samples=len(rows) * n,
        tokens_generated=tokens,
        units_written=run.units_written,
        units_skipped=run.units_skipped,
        seconds=time.perf_counter() - start,
    )


def _check_counts(n: int, batch_size: int) -> None:
    if n < 1:
        raise PipelineConfigError(f"n must be >= 1, got {n}")
    if batch_size < 1:
        raise PipelineConfigError(f"batch_size must be >= 1, got {batch_size}")


def _check_room(params: SamplingParams, sampling: dict, info: ModelInfo, options: dict, context: int | None) -> None:
    """Refuse a ``max_new_tokens`` that leaves no room for any prompt in the model's context."""
    if context is not None and params.max_new_tokens >= context:
        raise PipelineConfigError(
            f"max_new_tokens={params.max_new_tokens} (from the {sampling['source']['max_new_tokens']}) leaves no "
            f"room for a prompt in the model's context of {context} tokens "
            f"(config.max_position_embeddings={info.max_position_embeddings}"
            + (f", max_model_len={options['max_model_len']}" if "max_model_len" in options else "")
            + f"): prompt + max_new_tokens must fit; pass max_new_tokens < {context}"
        )


def _generate_pending(run: StageRun, units: list[Unit], task: GenerateTask, pool, show_progress: bool | None) -> int:
    """Generate and write the units not yet done; the completion tokens drawn."""
    todo = run.pending(units)
    tokens = 0
    if not todo:
        return tokens
    total = sum(len(u.items) for u in todo) * task.n
    with progress("generate", total, enabled=show_progress, unit="samples", units=len(todo)) as bar:

        def write(unit: Unit, result: tuple[pa.Table, int]) -> None:
            nonlocal tokens
            run.write(unit, result[0])
            tokens += result[1]
            bar.unit_done()

        pool.map(task, todo, write, advance=bar)
    return tokens


def _report(owned: list, rows: list[PromptRow], dropped: dict[str, list[str]], n: int, finish: dict[str, int]) -> dict:
    """``report.json``: rows read, written and dropped (by reason, with a few ids), samples, finish reasons."""
    return {
        "rows_read": len(owned),
        "rows_written": len(rows),
        "rows_dropped": sum(len(v) for v in dropped.values()),
        "dropped_rows": {reason: len(ids) for reason, ids in sorted(dropped.items())},
        "examples": [
            {"reason": reason, "prompt_id": pid}
            for reason, ids in sorted(dropped.items())
            for pid in ids[:EXAMPLES_PER_REASON]
        ],
        "samples": len(rows) * n,
        "finish_reasons": finish,
    }


def resolve_params(
    info: ModelInfo, *, temperature: float | None, top_p: float | None, max_new_tokens: int | None
) -> tuple[SamplingParams, dict]:
    """The parameters actually used, and a record of where each came from (for the manifest)."""
    gen = info.generation_config
    defaults = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": DEFAULT_MAX_NEW_TOKENS}
    given = {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens}
    used, source = {}, {}
    for key, value in given.items():
        if value is not None:
            used[key], source[key] = value, "argument"
        elif gen.get(key) is not None:
            used[key], source[key] = gen[key], "generation_config"
        else:
            used[key], source[key] = defaults[key], "default"
    params = SamplingParams(
        temperature=float(used["temperature"]),
        top_p=float(used["top_p"]),
        max_new_tokens=int(used["max_new_tokens"]),
        eos_token_ids=info.eos_token_ids,
    )
    record = {
        **used,
        "source": source,
        "eos_token_ids": list(info.eos_token_ids),
        "pad_token_id": info.pad_token_id,
        "max_position_embeddings": info.max_position_embeddings,
        "generation_config": gen,
        "ignored_generation_config": {
            k: v for k, v in gen.items() if k not in APPLIED_KEYS and k not in NOT_SAMPLING_KEYS
        },
    }
    return params, record


def read_prompts(input_dir: str | Path) -> tuple[list[tuple[str, list, str, int]], dict]:
    """(prompt_id, messages, file, row) of every input row, and the input's fingerprint.

    The fingerprint hashes the prompt ids (content hashes of the prompts), so it
    does not change when the same examples are re-ingested or merged.
    """
    _, paths = checked_shards(input_dir, schema="examples")
    prompts = []
    seen: dict[str, tuple[str, int]] = {}
    for path in paths:
        table = read_shard(path, "examples").select(["prompt_id", "prompt"])
        for row, (pid, messages) in enumerate(
            zip(table.column("prompt_id").to_pylist(), table.column("prompt").to_pylist(), strict=True)
        ):
            if pid in seen:
                raise PipelineInputError(
                    f"duplicate prompt_id {pid} (first at {seen[pid][0]} row {seen[pid][1]})",
                    file=path,
                    row=row,
                    column="prompt_id",
                )
            seen[pid] = (str(path), row)
            prompts.append((pid, messages, str(path), row))
    if not prompts:
        raise PipelineInputError("the examples table has no rows: no prompts to generate from", file=input_dir)
    digest = hashlib.sha256("\n".join(sorted(seen)).encode("utf-8")).hexdigest()
    return prompts, {"schema": "examples", "rows": len(prompts), "prompt_ids_sha256": digest}


def _render(
    prompts: list[tuple[str, list, str, int]], info: ModelInfo, max_new_tokens: int, context: int | None
) -> tuple[list[PromptRow], dict[str, list[str]]]:
    limit = (info.max_position_embeddings if context is None else context) - max_new_tokens
    rows, dropped = [], {}
    for pid, messages, file, row in prompts:
        try:
            tokens = info.render(messages)
        except Exception as exc:  # the template raises whatever its author chose
            raise PipelineInputError(
                f"the chat template rejects this prompt: {exc}", file=file, row=row, column="prompt"
            ) from None
        if len(tokens) > limit:
            dropped.setdefault("prompt_too_long", []).append(pid)
            continue
        rows.append(PromptRow(pid, messages, tuple(tokens)))
    return rows, dropped


@dataclass(frozen=True)
class GenerateTask:
    """A unit of prompts -> its candidates table; ``load`` starts the engine's generator (once per worker)."""

    info: ModelInfo
    engine: Engine
    batch_size: int
    device: str
    options: dict
    params: SamplingParams
    n: int
    seed: int
    needs: WorkerNeeds

    def load(self):
        generator = self.engine.generator(
            self.info, batch_size=self.batch_size, device=self.device, options=self.options
        )
        return partial(generate_unit, engine=generator, info=self.info, params=self.params, n=self.n, seed=self.seed)


def generate_unit(
    unit: Unit[PromptRow],
    advance: Advance,
    *,
    engine: Generator,
    info: ModelInfo,
    params: SamplingParams,
    n: int,
    seed: int,
) -> tuple[pa.Table, int]:
    """``(candidates table, completion tokens)`` of one unit; ``advance(1)`` per sample."""
    requests = [Request(row.tokens, sample_seed(seed, row.prompt_id, i)) for row in unit.items for i in range(n)]
    completions = engine.generate(requests, params, on_done=lambda _tokens: advance(1))
    out, tokens = [], 0
    for r, row in enumerate(unit.items):
        samples = []
        for i in range(n):
            request, completion = requests[r * n + i], completions[r * n + i]
            tokens += len(completion.token_ids)
            samples.append(
                {
                    "text": info.decode(list(completion.token_ids)),
                    "seed": request.seed,
                    "finish_reason": completion.finish_reason,
                    "num_tokens": len(completion.token_ids),
                }
            )
        out.append({"prompt_id": row.prompt_id, "prompt": row.prompt, "samples": samples})
    return pa.Table.from_pylist(out, schema=CANDIDATES), tokens


def _finish_counts(run: StageRun, units: list[Unit]) -> dict[str, int]:
    """Finish reasons over the whole output, resumed units included."""
    counts: Counter[str] = Counter()
    for unit in units:
        samples = read_shard(run.shard_path(unit), "candidates").column("samples").to_pylist()
        counts.update(s["finish_reason"] for row in samples for s in row)
    return dict(sorted(counts.items()))
