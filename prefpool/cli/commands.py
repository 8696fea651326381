"""Every ``prefpool`` command, and the Python function or config class behind it.

A stage command is made from its function (``params``): options, types,
defaults and help are the function's own. Config-file commands (``run``,
``train``, ``online``) take a YAML file and ``key=value`` overrides; their
keys are the config dataclass's fields, listed in ``--help``.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from .app import call, echo, register
from .docstrings import summary
from .params import argument_lines, click_params, dataclass_params, function_params, python_values


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _line(result: Any) -> str:
    return result.line() if hasattr(result, "line") else json.dumps(result, indent=2)


def function_command(
    name: str,
    target: str,
    *,
    arguments: tuple[str, ...] = (),
    short: Mapping[str, str] | None = None,
    rename: Mapping[str, str] | None = None,
    parsers: Mapping[str, Callable[[str], Any]] | None = None,
    skip: tuple[str, ...] = (),
    report: Callable[[Any, dict], str] | None = None,
) -> click.Command:
    """A command whose parameters are ``target``'s (``"module:function"``)."""
    fn = _load(target)
    params = function_params(fn, skip)

    def callback(wait: bool, **values: Any) -> None:
        kwargs = python_values(values, params, parsers)
        with _waiting(wait):
            result = call(fn, **kwargs)
        echo(report(result, kwargs) if report else _line(result))

    doc = summary(fn)
    extra = argument_lines(params, arguments)
    return click.Command(
        name,
        callback=callback,
        params=[
            *click_params(params, command=name, arguments=arguments, short=short, rename=rename, parsers=parsers),
            _wait_option(),
        ],
        help=f"{doc}\n\n{extra}" if extra else doc,
        short_help=doc,
    )


WAIT_HELP = (
    "When another prefpool process is writing the output folder, wait for it to finish instead of stopping "
    "with an error (exit 2) that names it."
)


def _wait_option() -> click.Option:
    return click.Option(["--wait", "wait"], is_flag=True, default=False, help=WAIT_HELP)


def _waiting(wait: bool):
    from prefpool.pipeline.io.writer_lock import waiting_for_writers

    return waiting_for_writers(wait)


def _engine_args(text: str) -> dict | None:
    from prefpool.pipeline.engines.engine_args import parse_engine_args

    return call(parse_engine_args, text)


PROGRESS = {"show_progress": "progress"}


def ingest() -> click.Command:
    return function_command(
        "ingest",
        "prefpool.pipeline.ingest:ingest",
        arguments=("source",),
        short={"format": "-f", "out": "-o"},
        rename=PROGRESS,
    )


def generate() -> click.Command:
    return function_command(
        "generate",
        "prefpool.pipeline.generate:generate",
        arguments=("input_dir",),
        short={"model": "-m", "n": "-n", "out": "-o"},
        rename=PROGRESS,
        parsers={"engine_args": _engine_args},
    )


def score() -> click.Command:
    return function_command(
        "score", "prefpool.pipeline.score:score", arguments=("input_dir",), short={"out": "-o"}, rename=PROGRESS
    )


def logprobs() -> click.Command:
    return function_command(
        "logprobs",
        "prefpool.pipeline.logprobs:logprobs",
        arguments=("input_dir",),
        short={"model": "-m", "out": "-o"},
        rename=PROGRESS,
        parsers={"engine_args": _engine_args},
    )


def build() -> click.Command:
    return function_command("build", "prefpool.pipeline.build:build", short={"out": "-o"})


def push() -> click.Command:
    return function_command(
        "push",
        "prefpool.pipeline.push:push",
        arguments=("source",),
        short={"out": "-o"},
        rename={"tags": "tag", "task_categories": "task_category"},
    )


def _merge_line(manifest: Any, kwargs: dict) -> str:
    return f"merge: {manifest.total_rows} rows from {len(kwargs['dirs'])} shard runs -> {kwargs['out']}"


def merge() -> click.Command:
    return function_command(
        "merge", "prefpool.pipeline.merge:merge", arguments=("dirs",), short={"out": "-o"}, report=_merge_line
    )


def eval_() -> click.Command:
    return function_command(
        "eval",
        "prefpool.train.evaluate:evaluate",
        short={"model": "-m", "data": "-d", "out": "-o"},
        skip=("tokenizer",),
        rename=PROGRESS,
        report=_eval_line,
    )


def plot() -> click.Command:
    return function_command(
        "plot",
        "prefpool.train.plot:plot_curves",
        arguments=("run_dirs",),
        short={"out": "-o"},
    )


def _eval_line(summary: dict, kwargs: dict) -> str:
    text = json.dumps(summary, indent=2)
    if kwargs.get("out") is not None:
        from prefpool.train.evaluate import EVAL_FILE

        text += f"\neval: written to {Path(kwargs['out']) / EVAL_FILE}"
    return text


def quickstart() -> click.Command:
    from prefpool.controlled.quickstart import QuickstartConfig, run_quickstart
    from prefpool.core.config import build_dataclass

    params = dataclass_params(QuickstartConfig)

    def callback(wait: bool, **values: Any) -> None:
        cfg = call(build_dataclass, QuickstartConfig, python_values(values, params), source="command line")
        with _waiting(wait):
            call(run_quickstart, cfg)

    return click.Command(
        "quickstart",
        callback=callback,
        params=[
            *click_params(params, command="quickstart", short={"out_dir": "-o"}, rename={"out_dir": "out"}),
            _wait_option(),
        ],
        help=summary(run_quickstart),
        short_help=summary(run_quickstart),
    )


PROGRESS_HELP = (
    "Progress on stderr: a bar on a terminal, else a plain line every $PREFPOOL_PROGRESS_SECONDS (30) seconds "
    "with done/total, rate and ETA (Slurm, nohup). Default: on."
)


def _progress_option() -> click.Option:
    return click.Option(["--progress/--no-progress", "progress"], default=None, help=PROGRESS_HELP)


def _config_command(
    name: str,
    help_text: str,
    config_cls: str,
    run: Callable[..., None],
    *,
    progress_key: str,
    options: tuple[click.Option, ...] = (),
) -> click.Command:
    """``prefpool NAME CONFIG.yaml [key=value ...]``: the YAML's keys are ``config_cls``'s fields.

    ``--progress/--no-progress`` sets the key ``progress_key`` (after the overrides: the flag wins).
    ``options``: the command's own flags, passed to ``run`` as keyword arguments.
    """

    def callback(config: Path, overrides: tuple[str, ...], progress: bool | None, wait: bool, **flags: Any) -> None:
        from prefpool.core.config import load_config

        cls = _load(config_cls)
        flag = [f"{progress_key}={str(progress).lower()}"] if progress is not None else []
        cfg = call(load_config, cls, config, [*overrides, *flag])
        with _waiting(wait):
            run(cfg, **flags)

    def keys() -> str:
        from prefpool.core.config import config_help

        rows = config_help(_load(config_cls))
        return "Keys (YAML or key=value):\n\n" + "\n\n".join(f"{n} (default {d}): {h}" for n, d, h in rows)

    def aliases() -> str:
        from prefpool.core.config import alias_help

        rows = alias_help(_load(config_cls))
        return "\n\n".join(f"{n}: {note}" for n, note in rows)

    class ConfigCommand(click.Command):
        def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
            with formatter.section("Config keys"):
                formatter.write_text(keys())
            other = aliases()
            if other:
                with formatter.section(
                    "TRL DPOConfig names: mapped to the keys above, or refused with the reason given"
                ):
                    formatter.write_text(other)

    return ConfigCommand(
        name,
        callback=callback,
        params=[
            click.Argument(["config"], type=click.Path(path_type=Path)),
            click.Argument(["overrides"], nargs=-1),
            _progress_option(),
            _wait_option(),
            *options,
        ],
        help=help_text,
        short_help=help_text.split("\n")[0],
    )


def train() -> click.Command:
    def run(cfg: Any, estimate_memory: bool) -> None:
        if estimate_memory:
            from prefpool.train.memory_estimate import estimate_memory as estimate

            echo(call(estimate, cfg).report())
            return
        from prefpool.train.trainer import train as run_train

        result = call(run_train, cfg)
        if result.get("status") == "done earlier":
            echo(
                f"train: {result['output_dir']} already holds a finished run of these settings "
                f"({result['steps']} steps); nothing to do (overwrite=true trains it again)"
            )
            return
        echo(
            f"train: {result['steps']} steps, final loss {_number(result['final_loss'], '.4f')}, "
            f"step-0 diff {_number(result['step0_max_abs_diff'], '.3g')} nats -> {result['output_dir']}"
        )

    return _config_command(
        "train",
        "Preference-train a policy on a `build` table with cached reference log-probs (no reference model).\n\n"
        "CONFIG: training YAML; OVERRIDES: key=value, e.g. lr=1e-6 max_steps=100.",
        "prefpool.train.config:TrainConfig",
        run,
        progress_key="progress",
        options=(
            click.Option(
                ["--estimate-memory"],
                is_flag=True,
                help="Print the memory floor of a step by part (weights, gradients, optimizer state, "
                "activations, log-prob head) from the model's shapes and the table's real tokens, then exit: "
                "no weight is loaded, nothing is written.",
            ),
        ),
    )


def _number(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def online() -> click.Command:
    def run(cfg: Any) -> None:
        from prefpool.train.online import online as run_online

        call(run_online, cfg, log=echo)

    return _config_command(
        "online",
        "OnMC-PO: rounds of generate (current policy) -> score -> reference log-probs -> build mcpo -> train.\n\n"
        "Rerun to resume. CONFIG: online YAML; OVERRIDES: key=value, e.g. rounds=3 train.lr=1e-6.",
        "prefpool.train.online_config:OnlineConfig",
        run,
        progress_key="show_progress",
    )


def run() -> click.Command:
    def callback(config: Path, overrides: tuple[str, ...], progress: bool | None, wait: bool) -> None:
        from prefpool.pipeline.run import run_pipeline

        with _waiting(wait):
            call(run_pipeline, config, list(overrides), log=echo, progress=progress)

    return click.Command(
        "run",
        callback=callback,
        params=[
            click.Argument(["config"], type=click.Path(path_type=Path)),
            click.Argument(["overrides"], nargs=-1),
            _progress_option(),
            _wait_option(),
        ],
        help="Run the stages of a pipeline YAML in order; rerun to resume (see configs/README.md).\n\n"
        "CONFIG: pipeline YAML (workdir, model, one section per stage); OVERRIDES: section.key=value, "
        "e.g. generate.n=8.",
        short_help="Run the stages of a pipeline YAML in order; rerun to resume.",
    )


for _name, _factory in {
    "ingest": "ingest",
    "generate": "generate",
    "score": "score",
    "logprobs": "logprobs",
    "build": "build",
    "push": "push",
    "merge": "merge",
    "run": "run",
    "train": "train",
    "eval": "eval_",
    "plot": "plot",
    "online": "online",
    "quickstart": "quickstart",
}.items():
    register(_name, f"{__name__}:{_factory}")
