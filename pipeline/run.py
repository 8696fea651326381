"""``prefpool run``: the stages of one YAML file, chained through a work folder.

The file has one section per stage (``ingest``, ``generate``, ``score``,
``logprobs``, ``build``, ``push``; any subset, always run in that order) whose keys are that
stage function's keyword arguments, plus these top-level keys::

    workdir: runs/tiny          # required: each stage writes to workdir/<stage>
    model: runs/tiny-llama      # optional: `model` of generate and logprobs
    executor: ray               # optional: `executor` of generate, score and logprobs (local | ray)
    ray_address: 10.0.0.1:6379  # optional: their `ray_address` (default $RAY_ADDRESS, else a local Ray)
    ingest:   {source: data.jsonl, format: ranked}
    generate: {n: 4, max_new_tokens: 64}
    logprobs: {}
    build:    {kind: [mcpo, pairwise]}
    push:     {repo_id: me/pairs, dry_run: true, source: "{workdir}/build/mcpo"}

Defaults, each replaced by a key given in the section:

- ``out`` is ``workdir/<stage>``.
- A stage's inputs are the outputs of the stages before it *in the file*:
  generate reads ingest's examples; score reads generate's candidates, else
  ingest's examples; logprobs scores every table made before
  it (examples and candidates); build joins ingest's examples with every
  logprobs output, and for ``mcpo`` (the pool) and ``mpo`` (reference samples)
  generate's candidates (``candidates: null`` makes an mcpo pool from the
  ranked answers instead), and for ``pairwise`` and ``mcpo`` score's output
  (``scores``, plus ``candidates`` when score read generate's samples); push
  publishes the build output.
- ``model`` is the top-level ``model``.
- ``executor`` and ``ray_address`` of generate, score and logprobs are the
  top-level ones. ingest, build and push always run in this process (they
  read and write whole tables and load no model: Ray would only add start-up
  time); an ``executor`` key in their sections is refused. When any stage
  runs on Ray, one Ray (connected or started) serves every stage of the run;
  all of them must name the same ``ray_address``.

Two keys fan out: a list in ``logprobs.input_dir`` or ``build.kind`` runs the
stage once per item, into ``out/<item folder name>`` and ``out/<kind>``. The
default logprobs input is such a list, so its outputs are
``workdir/logprobs/ingest`` and ``workdir/logprobs/generate``. When build
makes several tables, push needs its ``source`` set; ``{workdir}`` in any
string value is replaced by the work folder, so ``workdir=...`` overrides
still move everything.

Overrides are ``section.key=value`` (``generate.n=8``, ``workdir=/tmp/x``),
applied before any check. Unknown keys, missing required keys and wrongly
typed values are ``ConfigError``s naming the file and the section.

Every stage resumes or returns at once when its output is complete, so
rerunning the same command after a crash continues where it stopped; ``push``
keeps a record in its folder (``.prefpool/push.json``) for the same purpose.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefpool.core.config import ConfigError, apply_overrides, check_kwargs, coerce, read_yaml
from prefpool.core.secrets import redact_text

STAGES = ("ingest", "generate", "score", "logprobs", "build", "push")
TOP_KEYS = ("workdir", "model", "executor", "ray_address")
# Stages whose `model` defaults to the top-level one.
MODEL_STAGES = ("generate", "logprobs")
# Stages whose units may run on Ray (`executor`, `workers`, `ray_address`); the others run here.
RAY_STAGES = ("generate", "score", "logprobs")
EXECUTOR_KEYS = ("executor", "workers", "ray_address")


@dataclass(frozen=True)
class StageCall:
    """One call of a stage function: ``label`` is e.g. ``build[mcpo]`` for a fanned-out run."""

    stage: str
    label: str
    kwargs: dict[str, Any]


def stage_function(stage: str) -> Callable[..., Any]:
    """The plain function behind ``stage`` (imported lazily: generate pulls in transformers)."""
    if stage == "ingest":
        from prefpool.pipeline.ingest import ingest as fn
    elif stage == "generate":
        from prefpool.pipeline.generate import generate as fn
    elif stage == "score":
        from prefpool.pipeline.score import score as fn
    elif stage == "logprobs":
        from prefpool.pipeline.logprobs import logprobs as fn
    elif stage == "build":
        from prefpool.pipeline.build import build as fn
    elif stage == "push":
        from prefpool.pipeline.push import push as fn
    else:
        raise KeyError(stage)
    return fn


def plan_pipeline(data: Mapping[str, Any], *, source: str, progress: bool | None = None) -> list[StageCall]:
    """Check a pipeline mapping (overrides already applied) and resolve every stage call's arguments.

    ``progress`` (``--progress/--no-progress``): the ``show_progress`` of every stage that has one and
    whose section does not set it."""
    unknown = [k for k in data if k not in TOP_KEYS and k not in STAGES]
    if unknown:
        known = TOP_KEYS + STAGES
        named = [
            f"{k!r}" + (f" (did you mean {n[0]!r}?)" if (n := difflib.get_close_matches(str(k), known, 1)) else "")
            for k in unknown
        ]
        noun = "key" if len(unknown) == 1 else "keys"
        raise ConfigError(f"{source}: unknown top-level {noun} {', '.join(named)}; known keys: {', '.join(known)}")
    workdir = data.get("workdir")
    if not isinstance(workdir, str) or not workdir:
        raise ConfigError(f"{source}: top-level key 'workdir' (a folder for the stage outputs) is required")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise ConfigError(f"{source}: model: expected a path string, got {model!r}")
    executor = data.get("executor")
    if executor is not None and executor not in ("local", "ray"):
        raise ConfigError(f"{source}: executor: expected local or ray, got {executor!r}")
    ray_address = data.get("ray_address")
    if ray_address is not None and not isinstance(ray_address, str):
        raise ConfigError(f"{source}: ray_address: expected host:port, got {ray_address!r}")
    present = [s for s in STAGES if s in data]
    if not present:
        raise ConfigError(f"{source}: no stage section; give at least one of {', '.join(STAGES)}")

    root = Path(workdir)
    outputs: dict[str, list[Path]] = {}  # stage -> its output folders, in call order
    calls: list[StageCall] = []
    for stage in present:
        where = f"{source}, section {stage!r}"
        section = data[stage] if data[stage] is not None else {}
        if not isinstance(section, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {stage} arguments, got {section!r}")
        fn = stage_function(stage)
        local_only = sorted(set(section) & set(EXECUTOR_KEYS)) if stage not in RAY_STAGES else []
        if local_only:
            raise ConfigError(
                f"{where}: {local_only[0]}: {stage} runs in this process (it reads and writes whole tables and "
                f"loads no model); only {', '.join(RAY_STAGES)} run on Ray"
            )
        check_kwargs(fn, section, source=where)
        if "rows_per_unit" in section:
            from prefpool.pipeline.io.errors import PipelineConfigError
            from prefpool.pipeline.io.stage_run import check_rows_per_unit

            try:
                check_rows_per_unit(section["rows_per_unit"])
            except PipelineConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        kw = {k: _expand(v, workdir) for k, v in section.items()}
        kw.setdefault("out", str(root / stage))
        if stage in MODEL_STAGES and model is not None:
            kw.setdefault("model", model)
        if progress is not None and "show_progress" in inspect.signature(fn).parameters:
            kw.setdefault("show_progress", progress)
        if stage in RAY_STAGES:
            for key, value in (("executor", executor), ("ray_address", ray_address)):
                if value is not None:
                    kw.setdefault(key, value)
        stage_calls = _defaults(stage, kw, outputs, where)
        for call in stage_calls:
            _check_call(fn, call, where)
        outputs[stage] = [Path(c.kwargs["out"]) for c in stage_calls]
        if stage == "score":  # which table was scored decides what build needs with it
            outputs["score_input"] = [Path(stage_calls[0].kwargs["input_dir"])]
        calls.extend(stage_calls)
    addresses = {c.kwargs.get("ray_address") for c in calls if c.kwargs.get("executor") == "ray"}
    if len(addresses) > 1:
        raise ConfigError(
            f"{source}: the stages on Ray name different clusters ({', '.join(sorted(map(str, addresses)))}); "
            "one run uses one Ray: set the top-level ray_address"
        )
    return calls


def _defaults(stage: str, kw: dict[str, Any], outputs: dict[str, list[Path]], where: str) -> list[StageCall]:
    """Fill a section's inputs from earlier outputs and fan it out into calls."""
    if stage == "generate" and "ingest" in outputs:
        kw.setdefault("input_dir", str(outputs["ingest"][0]))
    if stage == "score":
        earlier = outputs.get("generate") or outputs.get("ingest")
        if earlier:
            kw.setdefault("input_dir", str(earlier[0]))
    if stage == "logprobs":
        earlier = [str(p) for s in ("ingest", "generate") for p in outputs.get(s, [])]
        if earlier:
            kw.setdefault("input_dir", earlier)
        if isinstance(kw.get("input_dir"), list):
            return _fan_out(stage, kw, "input_dir", [Path(p).name for p in kw["input_dir"]], where)
    if stage == "build":
        if "ingest" in outputs:
            kw.setdefault("examples", str(outputs["ingest"][0]))
        if "logprobs" in outputs:
            kw.setdefault("logprobs", [str(p) for p in outputs["logprobs"]])
        kinds = kw.get("kind")
        calls = (
            _fan_out(stage, kw, "kind", [str(k) for k in kinds], where)
            if isinstance(kinds, list)
            else [StageCall(stage, stage, kw)]
        )
        from prefpool.pipeline.kinds import KINDS  # the kinds load torch (their losses): only for a build

        # a kind that reads a candidates table gets generate's; one whose samples a scores table can rank
        # gets score's output (and generate's candidates, when score read them)
        if "generate" in outputs and "candidates" not in kw:
            for call in calls:
                if (kind := KINDS.get(call.kwargs.get("kind"))) is not None and kind.candidates is not None:
                    call.kwargs["candidates"] = str(outputs["generate"][0])
        if "score" in outputs and "scores" not in kw:
            scored = outputs["score"][0]
            for call in calls:
                if (kind := KINDS.get(call.kwargs.get("kind"))) is not None and kind.ranks_samples:
                    call.kwargs["scores"] = str(scored)
                    if "generate" in outputs and outputs["score_input"] == outputs["generate"][:1]:
                        call.kwargs.setdefault("candidates", str(outputs["generate"][0]))
        return calls
    if stage == "push" and "build" in outputs and "source" not in kw:
        built = outputs["build"]
        if len(built) > 1:
            raise ConfigError(
                f"{where}: build makes {len(built)} tables ({', '.join(map(str, built))}); "
                "set push's 'source' to one of them (e.g. \"{workdir}/build/mcpo\")"
            )
        kw["source"] = str(built[0])
    return [StageCall(stage, stage, kw)]


def _fan_out(stage: str, kw: dict[str, Any], key: str, names: list[str], where: str) -> list[StageCall]:
    """One call per item of the list ``kw[key]``, writing to ``out/<name>``."""
    if not names:
        raise ConfigError(f"{where}: {key}: the list is empty")
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ConfigError(f"{where}: {key}: two items would write to the same folder {dup!r}")
    return [
        StageCall(stage, f"{stage}[{name}]", {**kw, key: item, "out": str(Path(kw["out"]) / name)})
        for name, item in zip(names, kw[key], strict=True)
    ]


def _check_call(fn: Callable[..., Any], call: StageCall, where: str) -> None:
    """Refuse missing required arguments and values of the wrong type, naming the section."""

    hints = typing.get_type_hints(fn)
    for name, param in inspect.signature(fn).parameters.items():
        if name not in call.kwargs:
            if param.default is inspect.Parameter.empty:
                raise ConfigError(f"{where}: missing required key {name!r} (no earlier stage in the file provides it)")
            continue
        call.kwargs[name] = coerce(hints[name], call.kwargs[name], source=where, key=name)


def _expand(value: Any, workdir: str) -> Any:
    if isinstance(value, str):
        return value.replace("{workdir}", workdir)
    if isinstance(value, list):
        return [_expand(v, workdir) for v in value]
    if isinstance(value, Mapping):
        return {k: _expand(v, workdir) for k, v in value.items()}
    return value


def load_pipeline(path: str | Path, overrides: Sequence[str] = (), *, progress: bool | None = None) -> list[StageCall]:
    """Read ``path``, apply ``section.key=value`` overrides, and plan the stage calls."""
    return plan_pipeline(apply_overrides(read_yaml(path), overrides), source=str(path), progress=progress)


def run_pipeline(
    path: str | Path,
    overrides: Sequence[str] = (),
    *,
    log: Callable[[str], None] | None = print,
    progress: bool | None = None,
) -> list[tuple[StageCall, Any]]:
    """Run the stages of ``path`` in order; ``log`` gets each stage's one-line summary.

    Every call is planned and checked before the first stage runs, so a typo in
    the last section fails at once. Returns ``(call, summary)`` per stage call.
    """
    calls = load_pipeline(path, overrides, progress=progress)
    results = []
    with _one_ray(calls):
        for call in calls:
            if call.stage == "push":
                summary, line = _push(call.kwargs)
            else:
                summary = stage_function(call.stage)(**call.kwargs)
                line = summary.line()
            if log is not None:
                shown = line if call.label == call.stage else line.replace(f"{call.stage}:", f"{call.label}:", 1)
                log(redact_text(shown))
            results.append((call, summary))
    return results


def _one_ray(calls: list[StageCall]):
    """A scope in which the Ray the first Ray stage starts serves the later ones (shut down at its end)."""
    if not any(c.kwargs.get("executor") == "ray" for c in calls):
        return contextlib.nullcontext()
    from prefpool.pipeline.executors.ray import ray_scope

    return ray_scope()


def _push(kwargs: dict[str, Any]) -> tuple[Any, str]:
    """Run push; it keeps its own record next to its folder, so a rerun of the same push is a no-op."""
    from prefpool.pipeline.push import push

    summary = push(**kwargs)
    return summary, summary.line()
