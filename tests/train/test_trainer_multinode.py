"""A 2-"node" launch of ``prefpool train`` trains exactly like one process with the same global batch.

Two machines are simulated by two ``accelerate launch`` commands on this machine, each in its own
session and process group, as they would be on two hosts::

    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_machines 2 --machine_rank R \\
        --num_processes 2 --main_process_ip 127.0.0.1 --main_process_port PORT -m prefpool.cli train run.yaml

(R = 0 on one "node", 1 on the other). ``--multi_gpu`` picks accelerate's torch.distributed launcher,
which is what spans machines (``--cpu`` alone starts one process without MPI); ``ACCELERATE_USE_CPU``
makes the processes use gloo on the CPU. On GPU nodes the same command without the variable uses
NCCL. Each node runs one process with batch 1 and 2 accumulation steps: global batch 4, as the one
process with batch 4 it is compared with (per-step losses, gradient norms, final weights).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
from trainer_tables import assert_same_training, distributed_settings

from prefpool.train.config import TrainConfig
from prefpool.train.trainer import Trainer

torch.set_num_threads(1)

pytestmark = [
    pytest.mark.usefixtures("fresh_accelerate_state"),
    pytest.mark.distributed,
    pytest.mark.skipif(
        not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
        reason="needs torch.distributed with gloo",
    ),
]
TIMEOUT_S = 300  # loaded CI margin


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_command(config, *, rank: int, port: int) -> list[str]:
    """The `accelerate launch` of one of the two machines."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_machines",
        "2",
        "--machine_rank",
        str(rank),
        "--num_processes",
        "2",
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(port),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "prefpool.cli",
        "train",
        str(config),
    ]


def _launch_two_nodes(settings: dict, folder) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "run.yaml"
    config.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()))  # JSON is YAML
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    port = _free_port()
    nodes = []
    for rank in (0, 1):
        log = open(folder / f"node{rank}.log", "w")  # a file, not a pipe: a full pipe would stall the node
        cmd = node_command(config, rank=rank, port=port)
        nodes.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True), log))
    try:
        for proc, _ in nodes:
            proc.wait(timeout=TIMEOUT_S)
    finally:
        for proc, log in nodes:
            if proc.poll() is None:  # a hung rendezvous or collective: SIGTERM makes the launcher stop its worker
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)  # the node's process group (its own session)
                    proc.wait()
            log.close()
    logs = "".join((folder / f"node{r}.log").read_text()[-2000:] for r in (0, 1))
    assert [proc.returncode for proc, _ in nodes] == [0, 0], logs


def test_dpo_on_two_nodes_equals_one_process(world, tmp_path):
    Trainer(TrainConfig(**distributed_settings(world, "pairwise", "dpo", tmp_path / "one", batch_size=4))).run()
    two = distributed_settings(world, "pairwise", "dpo", tmp_path / "two", batch_size=1, gradient_accumulation_steps=2)
    _launch_two_nodes(two, tmp_path / "nodes")
    assert_same_training(tmp_path / "one", tmp_path / "two")
