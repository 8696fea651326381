"""The Ray executor: a stage's units on a pool of Ray actors; the driver writes every result.

Each actor (``PrefpoolUnitWorker``) loads the stage's engine once (``task.load()``)
and then runs one unit at a time; its result (an Arrow table and counters)
travels back through Ray's object store to the driver, which writes the
shard through the stage's ``StageRun``. Workers write nothing, so nodes share
no output filesystem; they do need the inputs the task names (the model
folder, a reward function's file) at the same path, e.g. on shared storage or
copied to every node.

The cluster: an already initialized Ray is used as it is (``ray.init`` in your
script; ``prefpool run`` and ``online`` start one for all their stages);
else ``address`` or ``$RAY_ADDRESS`` is connected to (checked with a TCP
connect first: ``ray.init`` on an unreachable address waits for minutes),
else a local Ray is started on this machine and shut down when the stage ends.

Resources: per actor ``task.needs`` (``resources.worker_shape``); as many
actors as ``workers``, or as the cluster holds, never more than there are
units. A run that cannot fit stops before any actor starts.

Failures:

- A worker that dies (its process killed, its node lost) loses at most its
  current unit: the unit goes back to the front of the queue and runs on the
  next free worker, and a new actor replaces the dead one. A unit that has
  been lost with ``ATTEMPTS`` workers stops the run (the unit itself kills
  them: out of memory, say).
- An exception inside a worker comes back as a value and is raised on the
  driver as the same exception (a ``UserError`` with its message, file, row
  and column; any other with the worker's traceback as its cause). As in a
  local run, the error raised is the one of the first failing unit in unit
  order: once a unit fails, no later unit is started, the earlier ones still
  run and are written, then the error is raised.
- However ``map`` ends, every actor it started is killed (``ray.kill``), and
  a Ray it started is shut down.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prefpool.pipeline.executors.base import Advance, UnitTask
from prefpool.pipeline.executors.resources import WorkerPlan, plan_workers
from prefpool.pipeline.io.errors import PipelineConfigError
from prefpool.pipeline.io.stage_run import Unit

LOG = logging.getLogger("prefpool.executors.ray")
ATTEMPTS = 3  # workers a unit may be lost with before the run stops
CONNECT_TIMEOUT_S = 5.0
WAIT_NOTE_S = 120  # a warning when no worker has reported for this long while some have not started
INSTALL = "pip install 'prefpool[ray]'"


def import_ray():
    """The ``ray`` module, or a ``UserError`` that says how to install it."""
    try:
        import ray
    except ImportError:
        raise PipelineConfigError(f"executor 'ray' needs Ray, which is not installed: {INSTALL}") from None
    return ray


# -- the cluster -----------------------------------------------------------------------------------

_state = {"scopes": 0, "started": False}


def resolve_address(address: str | None) -> tuple[str | None, str]:
    """``(address, where it came from)``; ``None``: start a local Ray."""
    if address:
        return address, "ray_address"
    env = os.environ.get("RAY_ADDRESS")
    if env:
        return env, "$RAY_ADDRESS"
    return None, "local"


def check_reachable(address: str, source: str, *, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse an address nothing answers on (a TCP connect to its host and port), within ``timeout``."""
    if address in ("auto", "local"):
        return  # ray.init resolves these itself (and fails fast when there is nothing)
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise PipelineConfigError(
            f"Ray address {address!r} ({source}) is not host:port (e.g. 10.0.0.1:6379, or ray://10.0.0.1:10001)"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise PipelineConfigError(
            f"cannot reach the Ray cluster at {address} ({source}): {exc}. Start one with `ray start --head` "
            "and use the address it prints, or unset RAY_ADDRESS to start a local Ray on this machine"
        ) from None


def _init(ray, address: str | None) -> None:
    target, source = resolve_address(address)
    if target is not None:
        check_reachable(target, source)
    start = time.perf_counter()
    try:
        # log_to_driver=False: worker output stays in the session's log folder instead of tearing the
        # progress bar; a worker's error reaches the driver anyway (see the module docstring)
        ray.init(address=target, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise PipelineConfigError(f"cannot connect to the Ray cluster at {target} ({source}): {exc}") from None
    _state["started"] = True
    seconds = time.perf_counter() - start
    what = f"connected to {target}" if target else "started a local Ray"
    LOG.info("ray: %s in %.1f s", what, seconds, extra={"timing": {"ray_start_s": seconds}})


def _shutdown_if_ours(ray) -> None:
    if _state["started"] and _state["scopes"] == 0:
        ray.shutdown()
        _state["started"] = False


@contextmanager
def ray_scope() -> Iterator[None]:
    """Keep a Ray that a stage starts alive until the scope ends: one Ray for every stage of a run."""
    _state["scopes"] += 1
    try:
        yield
    finally:
        _state["scopes"] -= 1
        if "ray" in sys.modules:
            _shutdown_if_ours(sys.modules["ray"])


@contextmanager
def connected(address: str | None) -> Iterator[Any]:
    """The ``ray`` module, initialized (see the module docstring); shut down after if started here."""
    ray = import_ray()
    if not ray.is_initialized():
        _init(ray, address)
    try:
        yield ray
    finally:
        _shutdown_if_ours(ray)


def alive_nodes(ray) -> list[dict[str, float]]:
    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


# -- the worker (runs inside a Ray actor) ---------------------------------------------------------


class WorkerError(RuntimeError):
    """The traceback of an exception raised inside a Ray worker (the cause of the exception re-raised)."""


@dataclass
class Outcome:
    value: Any = None
    advanced: int = 0  # rows or samples done, for the driver's progress display
    error: BaseException | None = None
    traceback: str = ""


def _failed(exc: Exception) -> Outcome:
    import pickle

    text = traceback.format_exc()
    try:
        pickle.dumps(exc)
    except Exception:  # an exception that cannot travel back: keep its type name and message
        exc = RuntimeError(f"{type(exc).__name__}: {exc}")
    return Outcome(error=exc, traceback=text)


class PrefpoolUnitWorker:
    """One Ray actor: ``setup`` loads the task's engine once, ``run`` runs one unit (both return an Outcome)."""

    def __init__(self, task: UnitTask) -> None:
        self.task = task
        self.runner = None
        self.setup_error: Outcome | None = None

    def setup(self) -> Outcome:
        start = time.perf_counter()
        try:
            self.runner = self.task.load()
            if "torch" in sys.modules:  # as many threads as CPUs this actor holds, not as the node has
                sys.modules["torch"].set_num_threads(max(1, self.task.needs.cpus))
        except Exception as exc:
            self.setup_error = _failed(exc)
            return self.setup_error
        return Outcome(value={"pid": os.getpid(), "seconds": time.perf_counter() - start})

    def run(self, unit: Unit) -> Outcome:
        if self.runner is None:
            return self.setup_error or Outcome(error=RuntimeError("worker used before setup"))
        done = [0]

        def advance(n: int = 1) -> None:
            done[0] += n

        try:
            value = self.runner(unit, advance)
        except Exception as exc:
            return _failed(exc)
        return Outcome(value=value, advanced=done[0])


def raise_outcome(outcome: Outcome) -> None:
    """Raise a worker's exception on the driver: the same exception, its worker traceback as the cause."""
    raise outcome.error from WorkerError(f"raised in a Ray worker:\n{outcome.traceback}")


# -- the driver ----------------------------------------------------------------------------------


class RayExecutor:
    name = "ray"

    def __init__(self, *, workers: int | None = None, address: str | None = None) -> None:
        self.workers = workers
        self.address = address
        ray = import_ray()
        target, source = resolve_address(address)
        if target is not None and not ray.is_initialized():
            check_reachable(target, source)  # before the stage reads or loads anything

    def map(
        self,
        task: UnitTask,
        units: Sequence[Unit],
        on_result: Callable[[Unit, Any], None],
        *,
        advance: Advance,
    ) -> None:
        if not units:
            return
        with connected(self.address) as ray:
            plan = plan_workers(task.needs, alive_nodes(ray), workers=self.workers, units=len(units))
            LOG.info(
                "ray: %d worker(s) of %d CPU, %d GPU for %d unit(s)",
                plan.count,
                plan.cpus,
                plan.gpus,
                len(units),
                extra={"timing": {"workers": plan.count}},
            )
            _Pool(ray, task, plan).run(units, on_result, advance)


class _Pool:
    """The actors of one ``map`` and the units in flight on them."""

    def __init__(self, ray, task: UnitTask, plan: WorkerPlan) -> None:
        self.ray = ray
        self.plan = plan
        self.actor_class = ray.remote(num_cpus=plan.cpus, num_gpus=plan.gpus, max_restarts=0, max_task_retries=0)(
            PrefpoolUnitWorker
        )
        self.task_ref = ray.put(task)  # shipped once, shared by every actor
        self.actors: list[Any] = []
        self.inflight: dict[Any, tuple[Any, Unit | None]] = {}  # ref -> (actor, unit; None: its setup)
        self.queue: deque[Unit] = deque()
        self.lost: Counter[int] = Counter()  # unit seq -> workers it was lost with
        self.failed: dict[int, Outcome] = {}  # unit seq -> its error
        self.stop_at = math.inf  # no unit after the first failed one is started
        self.born: dict[Any, float] = {}  # setup ref -> when its actor was asked for

    def run(self, units: Sequence[Unit], on_result: Callable[[Unit, Any], None], advance: Advance) -> None:
        self.queue.extend(units)
        start = time.perf_counter()
        done = 0
        try:
            for _ in range(self.plan.count):
                self._give(self._start_actor())
            while self.inflight:
                ready, _ = self.ray.wait(list(self.inflight), num_returns=1, timeout=WAIT_NOTE_S)
                if not ready:
                    self._note_waiting()
                    continue
                ref = ready[0]
                actor, unit = self.inflight.pop(ref)
                outcome = self._get(ref, actor, unit)
                if outcome is None:
                    continue  # the worker died; its unit is queued again
                if unit is None:  # setup
                    if outcome.error is not None:
                        raise_outcome(outcome)  # the engine cannot load: every worker would fail alike
                    now = time.perf_counter()
                    ready_s = now - self.born.pop(ref)
                    LOG.info(
                        "ray: worker pid %s ready %.1f s after it was asked for (engine load %.1f s)",
                        outcome.value["pid"],
                        ready_s,
                        outcome.value["seconds"],
                        extra={
                            "timing": {
                                "worker_ready_s": ready_s,
                                "engine_load_s": outcome.value["seconds"],
                                "ready_at": now,
                            }
                        },
                    )
                    continue
                if outcome.error is not None:
                    self.failed[unit.seq] = outcome
                    self.stop_at = min(self.stop_at, unit.seq)
                    self.queue = deque(u for u in self.queue if u.seq < self.stop_at)
                else:
                    on_result(unit, outcome.value)
                    advance(outcome.advanced)
                    done += 1
                    LOG.debug("ray: unit %d done", unit.seq, extra={"timing": {"unit_done_at": time.perf_counter()}})
                self._give(actor)
            if self.failed:
                raise_outcome(self.failed[min(self.failed)])
        finally:
            for actor in self.actors:
                self.ray.kill(actor, no_restart=True)
            self.actors.clear()
        seconds = time.perf_counter() - start
        LOG.info(
            "ray: %d unit(s) in %.1f s",
            done,
            seconds,
            extra={"timing": {"units": done, "units_s": seconds}},
        )

    def _note_waiting(self) -> None:
        starting = sum(1 for _, unit in self.inflight.values() if unit is None)
        if starting:  # Ray queues an actor until the cluster has room for it: say so instead of looking hung
            LOG.warning(
                "ray: %d worker(s) not ready after another %d s: still loading their engine, or queued until "
                "the cluster has %d free CPU and %d free GPU for each; waiting",
                starting,
                WAIT_NOTE_S,
                self.plan.cpus,
                self.plan.gpus,
            )

    def _start_actor(self):
        actor = self.actor_class.remote(self.task_ref)
        self.actors.append(actor)
        ref = actor.setup.remote()
        self.inflight[ref] = (actor, None)
        self.born[ref] = time.perf_counter()
        return actor

    def _give(self, actor) -> None:
        """The next unit to the actor (queued behind its setup when it has just started); an actor with
        nothing left to do is stopped at once, so its GPUs go back to the cluster while others finish."""
        if self.queue:
            unit = self.queue.popleft()
            self.inflight[actor.run.remote(unit)] = (actor, unit)
        elif actor in self.actors:
            self.actors.remove(actor)
            self.ray.kill(actor, no_restart=True)

    def _get(self, ref, actor, unit: Unit | None) -> Outcome | None:
        """The outcome of ``ref``, or None when its worker died (then its unit is queued again)."""
        from ray.exceptions import ObjectLostError, RayActorError

        try:
            return self.ray.get(ref)
        except (RayActorError, ObjectLostError) as exc:
            if actor in self.actors:
                self.actors.remove(actor)
                self.ray.kill(actor, no_restart=True)  # dead already, or alive without its result: not used again
            if unit is None:
                return None  # died while loading: the unit queued behind the setup is requeued below
            self.lost[unit.seq] += 1
            if self.lost[unit.seq] >= ATTEMPTS:
                raise RuntimeError(
                    f"unit {unit.seq} (key {unit.key[:12]}) was lost with {ATTEMPTS} Ray workers; the last "
                    f"one: {type(exc).__name__}: {exc}"
                ) from exc
            LOG.warning(
                "ray: a worker died during unit %d (%s); running the unit again on another worker (attempt %d of %d)",
                unit.seq,
                type(exc).__name__,
                self.lost[unit.seq] + 1,
                ATTEMPTS,
            )
            if unit.seq < self.stop_at:  # else the run stops at an earlier unit's error anyway
                self.queue.appendleft(unit)
                self._give(self._start_actor())  # a new actor in place of the dead one
            return None
