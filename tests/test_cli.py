"""The command line: built from the functions' own signatures and docstrings, one error path."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from prefpool import __version__
from prefpool.cli import app
from prefpool.cli.app import COMMANDS
from prefpool.cli.docstrings import argument_help
from prefpool.cli.params import click_params, function_params


def test_every_command_builds_and_every_option_has_help():
    ctx = click.Context(app)
    for name in COMMANDS:
        command = app.get_command(ctx, name)
        assert command is not None and command.help, name
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} {param.opts}"


def test_options_come_from_the_stage_signature():
    """A stage's option list is its function's keyword parameters: nothing declared twice."""
    from prefpool.pipeline.logprobs import logprobs

    command = app.get_command(click.Context(app), "logprobs")
    names = {p.name for p in command.params}
    assert names == {p.name for p in function_params(logprobs)} | {"wait"}  # --wait: every writing command's
    by_name = {p.name: p for p in command.params}
    assert list(by_name["dtype"].type.choices) == ["float32", "bfloat16", "float16"]  # Literal -> choice
    assert by_name["max_length"].help == argument_help(logprobs)["max_length"]
    assert "--progress" in by_name["show_progress"].opts  # renamed flag


def test_a_parameter_without_help_is_refused_when_the_command_is_built():
    def stage(source: str, *, out: str, undocumented: int = 3) -> None:
        """Do a thing.

        Args:
            source: The input.
            out: The output.
        """

    with pytest.raises(TypeError, match="'undocumented' has no help text"):
        click_params(function_params(stage), command="stage", arguments=("source",))


def test_docstring_args_with_continuation_lines():
    def f(a: int, b: int) -> None:
        """Summary.

        Args:
            a: First line
                and its continuation.
            b (int): Second.

        Returns:
            nothing: not an argument.
        """

    assert argument_help(f) == {"a": "First line and its continuation.", "b": "Second."}


def test_version_and_python_dash_m():
    assert CliRunner().invoke(app, ["--version"]).output.strip() == f"prefpool, version {__version__}"
    out = subprocess.run([sys.executable, "-m", "prefpool", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and __version__ in out.stdout


def test_user_error_exits_2_without_traceback_and_debug_shows_it(tmp_path):
    missing = tmp_path / "nope"
    args = [
        "build",
        "--kind",
        "pairwise",
        "--examples",
        str(missing),
        "--logprobs",
        str(missing),
        "--out",
        str(tmp_path / "o"),
    ]
    plain = subprocess.run([sys.executable, "-m", "prefpool", *args], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2
    assert plain.stderr.startswith("error: ") and "Traceback" not in plain.stderr
    debug = subprocess.run(
        [sys.executable, "-m", "prefpool", "--debug", *args], capture_output=True, text=True, timeout=120
    )
    # --debug adds the traceback; a user error still exits 2, as the option's help says
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "PipelineInputError" in debug.stderr
    assert debug.stderr.rstrip().splitlines()[-1].startswith("error: ")


def test_a_programming_error_keeps_its_traceback(tmp_path, monkeypatch):
    """A builtin ValueError is not the user's fault: it must not be turned into exit 2."""
    import functools

    import prefpool.pipeline.build as build_module

    @functools.wraps(build_module.build)  # the same signature and docstring, so the same options
    def broken(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(build_module, "build", broken)
    app.commands.pop("build", None)  # rebuild the command around the patched function
    try:
        result = CliRunner().invoke(app, ["build", "--kind", "mcpo", "--examples", "e", "--logprobs", "l", "-o", "o"])
    finally:
        app.commands.pop("build", None)
    assert result.exit_code == 1 and isinstance(result.exception, ValueError), result.output


def test_float_overrides_as_the_help_writes_them(tmp_path):
    from prefpool.core.config import load_config
    from prefpool.train.config import TrainConfig

    cfg = load_config(TrainConfig, None, ["model=m", "data=d", "output_dir=o", "lr=1e-6", "beta=.5"])
    assert cfg.lr == 1e-6 and cfg.beta == 0.5


def test_train_help_lists_the_config_keys():
    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0
    for key in ("model", "data", "output_dir", "loss", "kernel", "step0_tolerance"):
        assert f"{key} (default" in result.output


def test_engine_args_json_is_parsed_and_checked(tmp_path):
    result = CliRunner().invoke(app, ["logprobs", str(tmp_path), "-m", "m", "-o", "o", "--engine-args", "[1]"])
    assert result.exit_code == 2 and "must be a JSON object" in result.output
    assert json.loads('{"a": 1}') == {"a": 1}


def test_out_is_a_folder_in_every_command_and_its_help_says_what_lands_inside():
    ctx = click.Context(app)
    for name in COMMANDS:
        for param in app.get_command(ctx, name).params:
            if isinstance(param, click.Option) and "--out" in param.opts:
                assert param.help.startswith(("Output folder", "Report folder")), (name, param.help)


def test_progress_flags_on_every_command_that_reports_progress():
    ctx = click.Context(app)
    for name in ("ingest", "generate", "score", "logprobs", "run", "train", "online"):
        flags = [p for p in app.get_command(ctx, name).params if "--progress" in getattr(p, "opts", [])]
        assert flags and flags[0].secondary_opts == ["--no-progress"], name
