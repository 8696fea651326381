"""Make the controlled task's preference data with prefpool's own commands.

``prepare_data`` writes, under ``out``:

- ``reference/``: a tiny Llama fit to the task's language (``task.train_reference_model``);
- ``prompts-train.jsonl`` / ``prompts-heldout.jsonl``: every prompt template for the
  training topics / the held-out topics;
- ``pipeline.yaml``, then runs it as ``prefpool run`` does, twice (training
  prompts into ``data/train``, held-out prompts into ``data/heldout`` by
  overrides): ingest the prompts, generate ``n`` samples per prompt from the
  reference (the pool), score them with the noisy ``annotator`` (true reward +
  Gumbel noise: Bradley-Terry labels), cache the reference log-probs, and build
  the ``mcpo`` table (preferred = the annotator's pick, pool = the other samples).

Each ``prefpool run`` is a subprocess, exactly the command a user would type
(the vllm engine also wants a process of its own).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from .task import held_out_topics, task_prompts, train_reference_model, train_topics

ANNOTATOR = "prefpool.controlled.task:annotator"
STAGE_NAMES = ("ingest", "generate", "score", "logprobs", "build")


@dataclass(frozen=True)
class TaskData:
    reference: Path
    train_table: Path  # data/train/build/<kind>
    heldout_table: Path
    pipeline: Path
    commands: tuple[str, ...]  # what was run, as a user would type it


def available_engine(engine: str) -> str:
    """``auto``: vllm when it is installed, else the hf engine."""
    if engine != "auto":
        return engine
    from prefpool.pipeline.engines.registry import engine_named

    return "vllm" if engine_named("vllm").installed() else "hf"


def pipeline_config(
    out: Path,
    *,
    engine: str,
    n: int,
    max_new_tokens: int,
    seed: int,
    annotator: str = ANNOTATOR,
    kinds: tuple[str, ...] = ("mcpo",),
) -> dict:
    return {
        "workdir": str(out / "data" / "train"),
        "model": str(out / "reference"),
        "ingest": {"source": str(out / "prompts-train.jsonl"), "format": "prompts"},
        "generate": {
            "n": n,
            "engine": engine,
            "temperature": 1.0,
            "top_p": 1.0,
            "max_new_tokens": max_new_tokens,
            "seed": seed,
        },
        "score": {"reward_fn": annotator},
        "logprobs": {"input_dir": "{workdir}/generate", "max_length": max_new_tokens + 32},
        "build": {"kind": list(kinds)},
    }


def _write_prompts(path: Path, prompts: list[list[dict[str, str]]]) -> None:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))


def run_prefpool(args: list[str], log=None) -> None:
    """Run ``prefpool ARGS`` in a subprocess, as a user would type it; raise with its output tail if it
    fails. ``log`` gets the command and the stages' one-line summaries."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}  # see quickstart: one thread
    if log:
        log("$ prefpool " + " ".join(args))
    done = subprocess.run([sys.executable, "-m", "prefpool.cli", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"`prefpool {' '.join(args)}` failed (exit {done.returncode}):\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    if log:  # the stages' one-line summaries; engine chatter (vLLM's log) stays out of the report
        for line in done.stdout.splitlines():
            if line.startswith(STAGE_NAMES):
                log("    " + line)


def prepare_data(
    out: str | Path,
    *,
    seed: int = 0,
    engine: str = "auto",
    n: int = 8,
    max_new_tokens: int = 32,
    reference_steps: int = 300,
    annotator: str = ANNOTATOR,
    kinds: tuple[str, ...] = ("mcpo",),
    log=print,
) -> TaskData:
    """Reference model, prompts and training tables for one seed; see the module docstring."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    reference = out / "reference"
    if not (reference / "model.safetensors").exists():
        if log:
            log(f"reference: fitting a tiny Llama to the task's language ({reference_steps} steps)")
        train_reference_model(reference, steps=reference_steps, seed=seed)
    _write_prompts(out / "prompts-train.jsonl", task_prompts(train_topics()))
    _write_prompts(out / "prompts-heldout.jsonl", task_prompts(held_out_topics()))
    config = pipeline_config(
        out,
        engine=available_engine(engine),
        n=n,
        max_new_tokens=max_new_tokens,
        seed=seed,
        annotator=annotator,
        kinds=kinds,
    )
    pipeline = out / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump(config, sort_keys=False))
    heldout = [f"workdir={out / 'data' / 'heldout'}", f"ingest.source={out / 'prompts-heldout.jsonl'}"]
    commands = (["run", str(pipeline)], ["run", str(pipeline), *heldout])
    for args in commands:
        run_prefpool(args, log)
    kind = kinds[0]
    return TaskData(
        reference,
        out / "data" / "train" / "build" / kind,
        out / "data" / "heldout" / "build" / kind,
        pipeline,
        tuple("prefpool " + " ".join(a) for a in commands),
    )
