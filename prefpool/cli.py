"""The `prefpool` command line: a thin layer over plain Python functions.

Each command parses its options and calls one function that can be used from
Python with the same arguments; no logic lives here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="prefpool",
    help="Offline preference optimization: candidate pools, cached reference log-probs, MC-PO/MPO/DPO training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """prefpool: offline preference optimization of language models."""


def _fail(exc: Exception) -> typer.Exit:
    """Report a user-fixable pipeline error without a traceback: exit code 2."""
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code=2)


@app.command()
def ingest(
    source: Annotated[
        str, typer.Argument(help="A .jsonl/.json/.parquet/.csv file, a folder of them, or a Hub dataset id.")
    ],
    format: Annotated[str, typer.Option("--format", "-f", help="pairwise | hh-rlhf | ranked | prompts")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (shards, manifest.json, report.json).")],
    split: Annotated[str, typer.Option(help="Hub dataset split.")] = "train",
    config_name: Annotated[str | None, typer.Option(help="Hub dataset config name.")] = None,
    prompt_column: Annotated[str | None, typer.Option(help="Prompt column (default: detected).")] = None,
    chosen_column: Annotated[str, typer.Option(help="pairwise/hh-rlhf: chosen column.")] = "chosen",
    rejected_column: Annotated[str, typer.Option(help="pairwise/hh-rlhf: rejected column.")] = "rejected",
    answers_column: Annotated[str | None, typer.Option(help="ranked: answer list column (default: detected).")] = None,
    text_key: Annotated[str | None, typer.Option(help="ranked: text key in each answer (default: detected).")] = None,
    rank_key: Annotated[str, typer.Option(help="ranked: rank key in each answer.")] = "rank",
    score_key: Annotated[str, typer.Option(help="ranked: score key in each answer.")] = "score",
    model_key: Annotated[
        str | None, typer.Option(help="ranked: generator key in each answer (default: detected).")
    ] = None,
    shard: Annotated[
        str | None, typer.Option(help="Run only shard i/N (by prompt_id hash); combine with `prefpool merge`.")
    ] = None,
    strict: Annotated[bool, typer.Option(help="Stop at the first bad row instead of dropping it.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output made with different settings.")] = False,
) -> None:
    """Read preference data into the `examples` table (Parquet shards + manifest + report)."""
    from prefpool.pipeline.ingest import ingest as run_ingest
    from prefpool.pipeline.io.errors import PipelineError

    try:
        summary = run_ingest(
            source,
            format=format,
            out=out,
            split=split,
            config_name=config_name,
            prompt_column=prompt_column,
            chosen_column=chosen_column,
            rejected_column=rejected_column,
            answers_column=answers_column,
            text_key=text_key,
            rank_key=rank_key,
            score_key=score_key,
            model_key=model_key,
            strict=strict,
            overwrite=overwrite,
            shard=shard,
        )
    except PipelineError as exc:
        raise _fail(exc) from None
    typer.echo(summary.line())


@app.command()
def merge(
    dirs: Annotated[list[Path], typer.Argument(help="Output folders of the --shard i/N runs, one per i.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Merged output folder.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing, different output.")] = False,
) -> None:
    """Combine `--shard i/N` outputs into one folder equal to an unsharded run."""
    from prefpool.pipeline.io.errors import PipelineError
    from prefpool.pipeline.merge import merge as run_merge

    try:
        manifest = run_merge(dirs, out, overwrite=overwrite)
    except PipelineError as exc:
        raise _fail(exc) from None
    typer.echo(f"merge: {manifest.total_rows} rows from {len(dirs)} shard runs -> {out}")


@app.command()
def quickstart(
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder: REPORT.md, curves.png, data, runs.")] = Path(
        "runs/quickstart"
    ),
    seed: Annotated[
        int, typer.Option(help="Seeds the reference model, the samples, the data order and the kernel.")
    ] = 0,
    engine: Annotated[str, typer.Option(help="Generation engine: auto (vllm when installed) | hf | vllm.")] = "auto",
    steps: Annotated[int, typer.Option(help="Training steps per method.")] = 80,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier quickstart folder at --out.")] = False,
) -> None:
    """The main job on a controlled task with a known reward: pools, cached reference log-probs,
    DPO and MC-PO trained without a reference model, evaluated; a report with plots (CPU, minutes)."""
    from prefpool.controlled.quickstart import QuickstartConfig, run_quickstart

    try:
        run_quickstart(QuickstartConfig(out_dir=str(out), seed=seed, engine=engine, steps=steps, overwrite=overwrite))
    except FileExistsError as exc:
        raise _fail(exc) from None


@app.command()
def build(
    kind: Annotated[str, typer.Option("--kind", help="pairwise | mcpo | mpo")],
    examples: Annotated[Path, typer.Option(help="`examples` folder (from ingest).")],
    logprobs: Annotated[list[Path], typer.Option(help="`logprobs` folder; repeat for several.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (shards, manifest.json, report.json).")],
    candidates: Annotated[
        Path | None, typer.Option(help="`candidates` folder: mcpo pool / mpo reference samples.")
    ] = None,
    scores: Annotated[
        list[Path] | None,
        typer.Option(help="`scores` folder (from `prefpool score`): rank by these scores; repeat for several."),
    ] = None,
    rank_by: Annotated[str, typer.Option(help="rank (lower is better) | score (higher is better).")] = "rank",
    pair_mode: Annotated[
        str, typer.Option(help="Pairs derived from ranks: best-vs-rest | all (ties skipped).")
    ] = "best-vs-rest",
    best_ties: Annotated[
        str, typer.Option(help="Tie for best: first (lowest answer index) | drop (the row).")
    ] = "first",
    missing: Annotated[str, typer.Option(help="A text with no reference log-prob: error | drop.")] = "error",
    max_pool: Annotated[int | None, typer.Option(help="Keep the first N pool members / reference samples.")] = None,
    empty_pool: Annotated[str, typer.Option(help="A row with an empty pool: drop | error.")] = "drop",
    label: Annotated[float, typer.Option(help="mpo: preference label of every pair.")] = 1.0,
    shard: Annotated[
        str | None, typer.Option(help="Build only shard i/N (by prompt_id hash); combine with `prefpool merge`.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output made with different settings.")] = False,
) -> None:
    """Join examples (+ candidates) with reference log-probs into a training table."""
    from prefpool.pipeline.build import build as run_build
    from prefpool.pipeline.io.errors import PipelineError

    try:
        summary = run_build(
            kind,
            examples=examples,
            logprobs=logprobs,
            out=out,
            candidates=candidates,
            scores=scores or None,
            rank_by=rank_by,
            pair_mode=pair_mode,
            best_ties=best_ties,
            missing=missing,
            max_pool=max_pool,
            empty_pool=empty_pool,
            label=label,
            overwrite=overwrite,
            shard=shard,
        )
    except PipelineError as exc:
        raise _fail(exc) from None
    typer.echo(summary.line())


@app.command()
def push(
    folder: Annotated[Path, typer.Argument(help="A `build` output folder.")],
    repo_id: Annotated[str, typer.Option("--repo-id", help="Hub dataset repo, e.g. me/my-pairs.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only write the Hub folder (needs --out).")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Where to write the Hub folder.")] = None,
    private: Annotated[bool, typer.Option(help="Create the repo as private.")] = False,
    license: Annotated[str, typer.Option(help="License id for the card.")] = "other",
    split: Annotated[str, typer.Option(help="Split name of the data files.")] = "train",
) -> None:
    """Write data/<split>-*.parquet + README.md (dataset card) and upload them to the Hub."""
    from prefpool.pipeline.io.errors import PipelineError
    from prefpool.pipeline.push import push as run_push

    try:
        summary = run_push(
            folder, repo_id=repo_id, dry_run=dry_run, out=out, private=private, license=license, split=split
        )
    except PipelineError as exc:
        raise _fail(exc) from None
    where = f"uploaded to {summary.repo_id}" if summary.uploaded else f"written to {summary.folder}"
    typer.echo(f"push: {summary.rows} rows in {len(summary.files)} files, {where}")


@app.command()
def logprobs(
    input_dir: Annotated[Path, typer.Argument(help="An `examples` (ingest) or `candidates` (generate) output folder.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Reference model: a local save_pretrained folder.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder (logprobs shards, manifest.json, report.json).")
    ],
    engine: Annotated[str, typer.Option(help="Scoring engine: hf | vllm.")] = "hf",
    max_length: Annotated[
        int | None,
        typer.Option(
            help="Max prompt + completion tokens; longer completions are cut at the tail. "
            "Default: the model's context (max_position_embeddings)."
        ),
    ] = None,
    batch_tokens: Annotated[int, typer.Option(help="Token budget of one padded batch (rows x longest row).")] = 16384,
    dtype: Annotated[str, typer.Option(help="float32 | bfloat16 | float16.")] = "float32",
    per_token: Annotated[bool, typer.Option(help="Also store per-token log-probs.")] = False,
    long_prompts: Annotated[str, typer.Option(help="A prompt that fills max_length: drop (counted) | error.")] = "drop",
    shard: Annotated[
        str | None, typer.Option(help="Run only shard i/N (by prompt_id hash); combine with `prefpool merge`.")
    ] = None,
    cache: Annotated[
        Path | None, typer.Option(help="A previous logprobs output whose rows (same cache key) are reused.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing output made with another model or settings.")
    ] = False,
    engine_args: Annotated[
        str | None,
        typer.Option(
            help="vllm only: vllm.LLM options, a JSON object, e.g. '{\"tensor_parallel_size\": 2}'; "
            "merged over $PREFPOOL_VLLM_ARGS."
        ),
    ] = None,
) -> None:
    """Reference log-probs of every (prompt, completion) pair: the `logprobs` table."""
    from prefpool.pipeline.engines.engine_args import parse_engine_args
    from prefpool.pipeline.io.errors import PipelineError
    from prefpool.pipeline.logprobs import logprobs as run_logprobs

    try:
        summary = run_logprobs(
            input_dir,
            model=model,
            out=out,
            engine=engine,
            max_length=max_length,
            batch_tokens=batch_tokens,
            dtype=dtype,
            per_token=per_token,
            long_prompts=long_prompts,
            shard=shard,
            overwrite=overwrite,
            cache=cache,
            engine_args=parse_engine_args(engine_args),
        )
    except PipelineError as exc:
        raise _fail(exc) from None
    typer.echo(summary.line())


@app.command()
def generate(
    input_dir: Annotated[Path, typer.Argument(help="An `examples` (ingest) output folder; only its prompts are used.")],
    model: Annotated[str, typer.Option("--model", "-m", help="A local save_pretrained folder with a chat template.")],
    n: Annotated[int, typer.Option("--n", "-n", help="Samples per prompt.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder (candidates shards, manifest.json, report.json).")
    ],
    engine: Annotated[str, typer.Option(help="Generation engine: hf | vllm.")] = "hf",
    temperature: Annotated[float | None, typer.Option(help="0 = greedy. Default: generation_config, else 1.0.")] = None,
    top_p: Annotated[
        float | None, typer.Option(help="Nucleus mass in (0, 1]. Default: generation_config, else 1.0.")
    ] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Default: generation_config, else 256.")] = None,
    seed: Annotated[
        int, typer.Option(help="Global seed; each sample's seed is a hash of (seed, prompt_id, index).")
    ] = 0,
    batch_size: Annotated[
        int, typer.Option(help="Sequences (prompt x sample) decoded together; does not change samples.")
    ] = 16,
    device: Annotated[str, typer.Option(help="torch device for the hf engine.")] = "cpu",
    shard: Annotated[
        str | None, typer.Option(help="Run only shard i/N (by prompt_id hash); combine with `prefpool merge`.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing output made with another model or settings.")
    ] = False,
    engine_args: Annotated[
        str | None,
        typer.Option(
            help="vllm only: vllm.LLM options, a JSON object, e.g. '{\"tensor_parallel_size\": 2}'; "
            "merged over $PREFPOOL_VLLM_ARGS."
        ),
    ] = None,
) -> None:
    """N sampled completions per prompt with the model's chat template: the `candidates` table."""
    from prefpool.pipeline.engines.engine_args import parse_engine_args
    from prefpool.pipeline.generate import generate as run_generate
    from prefpool.pipeline.io.errors import PipelineError

    try:
        summary = run_generate(
            input_dir,
            model=model,
            out=out,
            n=n,
            engine=engine,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=seed,
            batch_size=batch_size,
            device=device,
            shard=shard,
            overwrite=overwrite,
            engine_args=parse_engine_args(engine_args),
        )
    except PipelineError as exc:
        raise _fail(exc) from None
    typer.echo(summary.line())


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML: workdir, model, and one section per stage.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="section.key=value, e.g. generate.n=8.")] = None,
) -> None:
    """Run the stages of a pipeline YAML in order; rerun to resume (see configs/README.md)."""
    from prefpool.core.config import ConfigError
    from prefpool.pipeline.io.errors import PipelineError
    from prefpool.pipeline.run import run_pipeline

    try:
        run_pipeline(config, overrides or [], log=typer.echo)
    except (PipelineError, ConfigError) as exc:
        raise _fail(exc) from None


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="Training YAML (keys: see prefpool.train.config.TrainConfig).")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value, e.g. lr=1e-6 max_steps=100.")] = None,
) -> None:
    """Preference-train a policy on a `build` table with cached reference log-probs (no reference model)."""
    from prefpool.core.config import load_config
    from prefpool.pipeline.io.errors import PipelineError
    from prefpool.train.config import TrainConfig
    from prefpool.train.trainer import Step0MismatchError
    from prefpool.train.trainer import train as run_train

    try:
        summary = run_train(load_config(TrainConfig, config, overrides or []))
    # ValueError covers ConfigError, CacheMismatchError and settings that do not fit the table.
    except (PipelineError, Step0MismatchError, ValueError) as exc:
        raise _fail(exc) from None
    typer.echo(
        f"train: {summary['steps']} steps, final loss {summary['final_loss']}, "
        f"step-0 diff {summary['step0_max_abs_diff']} -> {summary['output_dir']}"
    )


@app.command(name="eval")
def eval_(
    model: Annotated[str, typer.Option("--model", "-m", help="Policy: a local save_pretrained folder.")],
    data: Annotated[
        Path, typer.Option("--data", "-d", help="A held-out `build` output folder (pairwise, mcpo or mpo).")
    ],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the JSON summary here.")] = None,
    max_length: Annotated[
        int | None, typer.Option(help="Default: the reference cache's, read from the manifests.")
    ] = None,
    beta: Annotated[float, typer.Option(help="Scales the reported margins only; ranks do not depend on it.")] = 0.1,
    tie_atol: Annotated[float, typer.Option(help="Log-ratios within this many nats tie (a tie is not a win).")] = 1e-4,
    reward_fn: Annotated[
        str | None, typer.Option(help="module:function(prompt messages, completion) -> float.")
    ] = None,
    ref_model: Annotated[
        str | None, typer.Option(help="With --reward-fn: win-rate against this model's samples.")
    ] = None,
    num_samples: Annotated[int, typer.Option(help="With --reward-fn: samples per prompt.")] = 1,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="With --reward-fn. Default: generation_config, else 256.")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help="With --reward-fn. Default: generation_config, else 1.0.")
    ] = None,
    seed: Annotated[int, typer.Option(help="With --reward-fn: sample seeds, shared by both models.")] = 0,
    max_prompts: Annotated[
        int | None, typer.Option(help="With --reward-fn: sample for the first N prompts only.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, ... Default: cuda when available.")] = None,
) -> None:
    """Implicit-reward ranking metrics on a held-out build table (+ sampled reward / win-rate)."""
    import json

    from prefpool.pipeline.io.errors import PipelineError
    from prefpool.train.evaluate import evaluate

    try:
        summary = evaluate(
            model,
            data,
            out=out,
            max_length=max_length,
            beta=beta,
            tie_atol=tie_atol,
            reward_fn=reward_fn,
            ref_model=ref_model,
            num_samples=num_samples,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
            max_prompts=max_prompts,
            device=device,
        )
    except (PipelineError, ValueError) as exc:
        raise _fail(exc) from None
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def score(
    input_dir: Annotated[Path, typer.Argument(help="An `examples` (ingest) or `candidates` (generate) output folder.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder (scores shards, manifest.json, report.json).")
    ],
    reward_fn: Annotated[
        str | None,
        typer.Option(
            help="module:function or path/file.py:function; called as f(prompt messages, completion) -> float."
        ),
    ] = None,
    reward_model: Annotated[
        str | None, typer.Option(help="A one-label sequence-classification model folder (save_pretrained).")
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Reward model: sequences per forward pass; does not change values.")
    ] = 16,
    shard: Annotated[
        str | None, typer.Option(help="Run only shard i/N (by prompt_id hash); combine with `prefpool merge`.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output made with another scorer.")] = False,
) -> None:
    """A reward for every (prompt, completion): the `scores` table (rank by it with `build --scores`)."""
    from prefpool.pipeline.io.errors import PipelineError
    from prefpool.pipeline.score import score as run_score

    try:
        summary = run_score(
            input_dir,
            out=out,
            reward_fn=reward_fn,
            reward_model=reward_model,
            batch_size=batch_size,
            shard=shard,
            overwrite=overwrite,
        )
    except PipelineError as exc:
        raise _fail(exc) from None
    typer.echo(summary.line())


@app.command()
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(help="`prefpool train` output folders; several share one figure.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="PNG to write (default: FIRST_RUN_DIR/curves.png).")
    ] = None,
) -> None:
    """Draw training curves (loss, reward margin/accuracy, MC-PO kernel entropy) from metrics.jsonl to a PNG."""
    from prefpool.train.plot import plot_run

    try:
        written = plot_run(run_dirs, out or run_dirs[0] / "curves.png")
    except (OSError, ValueError) as exc:
        raise _fail(exc) from None
    typer.echo(f"plot: {written}")


@app.command()
def online(
    config: Annotated[Path, typer.Argument(help="Online YAML (keys: see prefpool.train.online_config.OnlineConfig).")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value, e.g. rounds=3 train.lr=1e-6.")] = None,
) -> None:
    """OnMC-PO: rounds of generate (current policy) -> score -> reference log-probs -> build mcpo -> train.

    Rerun to resume."""
    from prefpool.core.config import load_config
    from prefpool.pipeline.io.errors import PipelineError
    from prefpool.train.online import online as run_online
    from prefpool.train.online_config import OnlineConfig
    from prefpool.train.trainer import Step0MismatchError

    try:
        run_online(load_config(OnlineConfig, config, overrides or []), log=typer.echo)
    # ValueError covers ConfigError, CacheMismatchError and settings that do not fit.
    except (PipelineError, Step0MismatchError, ValueError) as exc:
        raise _fail(exc) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
