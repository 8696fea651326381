"""Two CPU processes (DDP over gloo) train exactly like one process with the same global batch.

Launch: ``ACCELERATE_USE_CPU=true python -m torch.distributed.run --standalone --nproc_per_node 2
-m prefpool.cli train run.yaml``. (``accelerate launch --cpu --num_processes 2`` starts ONE
process unless an MPI hostfile is given; ``accelerate launch --multi_gpu`` starts two processes
that each believe they are alone, because accelerate picks the gloo/MULTI_CPU backend only when
told to use the CPU.)

Process ``p`` of 2 with batch ``B`` takes rows ``p*B .. (p+1)*B`` of each global micro-batch, so
2 x batch 2 and 1 x batch 4 step on the same rows; DDP averages gradients of ``sum / B``, which
equals one process's ``sum / 2B``. Per-step losses and final weights agree to float32 rounding of
the gradient all-reduce.

MC-PO is compared with the ``max`` kernel: the ``sample`` kernel's draws come from one generator
per process, seeded per process, so one process drawing for 4 rows and two drawing for 2 rows
each use different random numbers (and must: two processes with one seed would draw the same
numbers for different rows). ``test_kernel_seeds_differ_per_process`` covers that part.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from trainer_tables import assert_same_training, distributed_settings

from prefpool.train.config import TrainConfig
from prefpool.train.metrics import read_metrics
from prefpool.train.trainer import Trainer, kernel_seed

torch.set_num_threads(1)

pytestmark = [
    pytest.mark.usefixtures("fresh_accelerate_state"),
    pytest.mark.distributed,
    pytest.mark.skipif(
        not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
        reason="needs torch.distributed with gloo",
    ),
]


def _launch_two_processes(settings: dict, folder) -> None:
    config = folder / "run.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()))  # JSON is YAML
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "prefpool.cli",
        "train",
        str(config),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)  # loaded CI margin
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _one_process(settings: dict) -> None:
    summary = Trainer(TrainConfig(**settings)).run()
    assert summary["steps"] == 3


def test_dpo_two_processes_with_accumulation_equal_one_process(world, tmp_path):
    """2 processes x batch 1 x 2 accumulation steps == 1 process x batch 4 (slicing, no_sync, gather)."""
    _one_process(distributed_settings(world, "pairwise", "dpo", tmp_path / "one", batch_size=4))
    _launch_two_processes(
        distributed_settings(world, "pairwise", "dpo", tmp_path / "two", batch_size=1, gradient_accumulation_steps=2),
        tmp_path / "cfg",
    )
    assert_same_training(tmp_path / "one", tmp_path / "two")


def test_mcpo_max_kernel_two_processes_equal_one_process(world, tmp_path):
    _one_process(distributed_settings(world, "mcpo", "mcpo", tmp_path / "one", batch_size=4, kernel="max"))
    _launch_two_processes(
        distributed_settings(world, "mcpo", "mcpo", tmp_path / "two", batch_size=2, kernel="max"), tmp_path / "cfg"
    )
    assert_same_training(tmp_path / "one", tmp_path / "two")
    hists = [r["mcpo/selected_hist"] for r in read_metrics(tmp_path / "two" / "metrics.jsonl")]
    assert all(sum(h) == 4 for h in hists)  # the picks of both processes were gathered


def test_kernel_seeds_differ_per_process():
    """Distinct seeds are not enough: the CPU generator (mt19937) keeps only a seed's low 32 bits, so
    ``seed + 1 + (p << 32)`` gave every CPU process one stream. The streams themselves must differ."""
    assert kernel_seed(0, 0) == 1  # process 0 draws as a single process does (seed + 1)
    low_bits = {kernel_seed(seed, process) % 2**32 for seed in range(50) for process in range(64)}
    assert len(low_bits) == 50 * 64  # no two (seed, process) share a CPU stream
    streams = {
        tuple(torch.rand(8, generator=torch.Generator().manual_seed(kernel_seed(seed, process))).tolist())
        for seed in range(3)
        for process in range(4)
    }
    assert len(streams) == 12
    assert all(0 <= kernel_seed(2**64 - 2, p) < 2**64 for p in range(4))  # manual_seed's range
