"""What an executor is given (a task and the units still to do) and what it promises back.

A stage cuts its rows into units and asks its ``StageRun`` which are still to
do; then it hands those units and a *task* to an executor:

- ``task.load()`` loads what the units need (a generation engine, a reward
  model, a reference model) and returns a *runner*; an executor calls it once
  per worker, so a worker loads its engine once and runs many units;
- ``runner(unit, advance) -> result`` turns one unit into its result (a table
  and counters); it calls ``advance(n)`` as rows or samples finish;
- ``task.needs`` says what one worker needs (GPUs, CPUs), for the Ray executor.

The executor calls ``on_result(unit, result)`` in the process that called the
stage (the *driver*) as each unit finishes, and the stage writes the result
there, through its ``StageRun``. Workers never write output files, so the
atomic writes, skip-if-done and refuse-on-conflict of ``StageRun`` hold for
every executor, and a cluster needs no shared filesystem for outputs.

Errors: ``map`` raises the error of the first failing unit *in unit order*
(what a local run, which runs the units in order, raises), after writing the
units before it; units after it may or may not have been written (each one
complete, or not at all).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from prefpool.pipeline.io.errors import PipelineConfigError
from prefpool.pipeline.io.stage_run import Unit

EXECUTORS = ("local", "ray")
ExecutorName = Literal["local", "ray"]

Advance = Callable[[int], None]


@dataclass(frozen=True)
class WorkerNeeds:
    """The resources of one worker (one Ray actor) of a stage.

    ``gpus``: GPUs the engine runs on (vLLM: tensor x pipeline parallel size).
    ``gpu_optional``: on a cluster without any GPU the worker runs on the CPU
    instead (the hf engines; vLLM's CPU build); otherwise ``gpus`` is required.
    ``why``: what asked for the GPUs, for error messages.
    """

    cpus: int = 1
    gpus: int = 0
    gpu_optional: bool = False
    why: str = ""


class Runner(Protocol):
    def __call__(self, unit: Unit, advance: Advance) -> Any:
        """The result of one unit (sent back to the driver: it must pickle)."""
        ...


class UnitTask(Protocol):
    """A stage's per-unit work; it must pickle (a Ray executor ships it to every worker)."""

    needs: WorkerNeeds

    def load(self) -> Runner:
        """Load the engine (once per worker) and return the runner of units."""
        ...


class Executor(Protocol):
    name: str

    def map(
        self,
        task: UnitTask,
        units: Sequence[Unit],
        on_result: Callable[[Unit, Any], None],
        *,
        advance: Advance,
    ) -> None:
        """Run ``task`` on every unit; ``on_result(unit, result)`` on the driver as each one finishes.

        ``advance(n)``: rows (or samples) done, for the progress display.
        """
        ...


def make_executor(name: str, *, workers: int | None = None, address: str | None = None) -> Executor:
    """The executor a stage's ``executor`` argument names, checked before any work starts.

    ``workers`` and ``address`` are the Ray executor's; the local executor ignores them,
    so a pipeline file can switch between the two with one ``executor=`` override.
    """
    if name not in EXECUTORS:
        raise PipelineConfigError(f"executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
    if workers is not None and workers < 1:
        raise PipelineConfigError(f"workers must be >= 1, got {workers}")
    if name == "local":
        from prefpool.pipeline.executors.local import LocalExecutor

        return LocalExecutor()
    from prefpool.pipeline.executors.ray import RayExecutor

    return RayExecutor(workers=workers, address=address)
