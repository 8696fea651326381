"""How many workers of which size a Ray cluster holds: pure functions of the cluster's nodes.

A node is the ``Resources`` mapping Ray reports for it (``{"CPU": 16.0, "GPU": 8.0, ...}``).
One worker is one actor; it must fit on one node (its engine runs in one process).
Everything here is checked before the first actor starts, so a run that cannot
fit fails at once with the numbers, instead of waiting for resources that never come.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from prefpool.pipeline.executors.base import WorkerNeeds
from prefpool.pipeline.io.errors import PipelineConfigError

Node = Mapping[str, float]


@dataclass(frozen=True)
class WorkerPlan:
    count: int  # actors to start
    cpus: int  # per actor
    gpus: int  # per actor
    room: int  # actors of this size the cluster holds


def worker_shape(needs: WorkerNeeds, nodes: Sequence[Node]) -> tuple[int, int]:
    """``(cpus, gpus)`` of one worker on this cluster; refused when no node can hold one."""
    most_gpus = int(max((n.get("GPU", 0.0) for n in nodes), default=0.0))
    most_cpus = int(max((n.get("CPU", 0.0) for n in nodes), default=0.0))
    gpus = needs.gpus
    if gpus and not any(n.get("GPU", 0.0) for n in nodes) and needs.gpu_optional:
        gpus = 0  # a cluster without GPUs: the engine runs on the CPU
    if gpus > most_gpus:
        raise PipelineConfigError(
            f"each worker needs {gpus} GPU(s) ({needs.why}), but the largest node of the Ray cluster has "
            f"{most_gpus}: lower the parallel size, or add nodes with {gpus} GPUs"
        )
    if needs.cpus > most_cpus:
        raise PipelineConfigError(
            f"each worker needs {needs.cpus} CPU(s), but the largest node of the Ray cluster has {most_cpus}"
        )
    return needs.cpus, gpus


def room_for(nodes: Sequence[Node], cpus: int, gpus: int) -> int:
    """Workers of ``cpus`` CPUs and ``gpus`` GPUs the nodes hold together (each worker on one node)."""
    room = 0
    for node in nodes:
        fit = math.floor(node.get("CPU", 0.0) / cpus) if cpus else math.inf
        if gpus:
            fit = min(fit, math.floor(node.get("GPU", 0.0) / gpus))
        room += 0 if fit == math.inf else int(fit)
    return room


def plan_workers(needs: WorkerNeeds, nodes: Sequence[Node], *, workers: int | None, units: int) -> WorkerPlan:
    """Actors to start: ``workers`` (refused beyond what the cluster holds) or as many as it holds,
    never more than there are units to run."""
    cpus, gpus = worker_shape(needs, nodes)
    room = room_for(nodes, cpus, gpus)
    if workers is not None and workers > room:
        totals = {key: sum(n.get(key, 0.0) for n in nodes) for key in ("CPU", "GPU")}
        raise PipelineConfigError(
            f"workers={workers}, but the Ray cluster ({len(nodes)} node(s), {totals['CPU']:g} CPUs, "
            f"{totals['GPU']:g} GPUs) holds {room} worker(s) of {cpus} CPU and {gpus} GPU each: "
            f"pass workers <= {room}, or leave it unset"
        )
    count = min(workers if workers is not None else room, units)
    return WorkerPlan(count=max(count, 1), cpus=cpus, gpus=gpus, room=room)
