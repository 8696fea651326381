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
    source: Annotated[str, typer.Argument(help="A .jsonl/.json/.parquet/.csv file, a folder of them, or a Hub dataset id.")],
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
    model_key: Annotated[str | None, typer.Option(help="ranked: generator key in each answer (default: detected).")] = None,
    shard: Annotated[str | None, typer.Option(help="Run only shard i/N (by prompt_id hash); combine with `prefpool merge`.")] = None,
    strict: Annotated[bool, typer.Option(help="Stop at the first bad row instead of dropping it.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output made with different settings.")] = False,
) -> None:
    """Read preference data into the `examples` table (Parquet shards + manifest + report)."""
    from prefpool.pipeline.errors import PipelineError
    from prefpool.pipeline.ingest import ingest as run_ingest

    try:
        summary = run_ingest(
            source, format=format, out=out, split=split, config_name=config_name,
            prompt_column=prompt_column, chosen_column=chosen_column, rejected_column=rejected_column,
            answers_column=answers_column, text_key=text_key, rank_key=rank_key, score_key=score_key,
            model_key=model_key, strict=strict, overwrite=overwrite, shard=shard,
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
    from prefpool.pipeline.errors import PipelineError
    from prefpool.pipeline.merge import merge as run_merge

    try:
        manifest = run_merge(dirs, out, overwrite=overwrite)
    except PipelineError as exc:
        raise _fail(exc) from None
    typer.echo(f"merge: {manifest.total_rows} rows from {len(dirs)} shard runs -> {out}")


@app.command()
def quickstart(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the tiny model, metrics and summary go.")] = Path("runs/quickstart"),
    steps: Annotated[int, typer.Option(help="Training steps per kernel.")] = 40,
    seed: Annotated[int, typer.Option(help="Seed for the model, the data order and the kernel's draws.")] = 0,
) -> None:
    """MC-PO (sample kernel) against DPO with a random negative on a tiny local model, on the CPU."""
    from prefpool.quickstart import QuickstartConfig, run_quickstart

    run_quickstart(QuickstartConfig(out_dir=str(out), steps=steps, seed=seed))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
