"""Two CPU processes under accelerate's FSDP2 (full shard, gloo) train exactly like DDP / one process.

accelerate 1.15 never picks FSDP on the CPU: ``AcceleratorState`` switches to
``DistributedType.FSDP`` only from a GPU-like multi-process type (MULTI_GPU, MULTI_XPU, ...).
With ``ACCELERATE_USE_CPU=true`` plus ``ACCELERATE_USE_FSDP=true`` (or ``accelerate launch
--use_fsdp --cpu``-like configs) it stays MULTI_CPU and wraps the model in DDP, silently; without
``ACCELERATE_USE_CPU`` each process runs alone. torch's FSDP2 (``fully_shard``) itself runs on gloo,
so this file, run as a script under ``torch.distributed.run``, moves accelerate's state from
MULTI_CPU to FSDP after accelerate chose it (``_force_fsdp_on_cpu``) and runs ``prefpool train``:
``Accelerator.prepare`` then shards the model with ``fully_shard`` and the trainer goes through
accelerate's FSDP2 code paths (``no_sync``, ``clip_grad_norm_``, ``get_state_dict``, sharded
``save_state``/``load_state``). The launcher prints how much of the model each process holds, so a
run that fell back to DDP fails the test. (FSDP1 does not run on the CPU: torch's
``FullyShardedDataParallel`` rejects ``device_id=cpu``, "Inconsistent compute device and
`device_id`: cpu vs cpu:0".)

Both runs go through this file as the launched program (``_report_scoring``: how often the log-probs
came from hidden states, through the swapped head inside the sharded or DDP module's forward, and how
often from full logits: only the one-time head check may). DPO with gradient accumulation is compared
with one process at the same global batch. MC-PO with
the ``sample`` kernel is compared with DDP on two processes: each process draws from its own
generator seeded by ``(seed, process)``, so FSDP and DDP draw the same numbers while one process
would not. Its pool-scoring budget (``score_max_tokens``) packs the two processes' pools into
different numbers of forwards, which hangs a sharded model unless the trainer runs pass 1 in
lockstep (``score_pairs(lockstep=True)``). The MC-PO run also resumes from a sharded checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

torch.set_num_threads(1)

SCORE_MAX_TOKENS = 56  # step 1, prompts shared: process 0 scores its 8 answers in 4 forwards, process 1 in 6


def _force_fsdp_on_cpu() -> None:
    """After accelerate chose MULTI_CPU (gloo), switch it to FSDP with the env-built plugin."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = init


def _report_shards() -> None:
    from torch.distributed.tensor import DTensor

    from prefpool.train.trainer import Trainer

    original = Trainer.__init__

    def init(self, cfg):
        original(self, cfg)
        params = list(self.model.parameters())
        assert self.accelerator.is_fsdp2 and all(isinstance(p, DTensor) for p in params)
        local = sum(p.to_local().numel() for p in params)
        print(
            f"fsdp2 process {self.accelerator.process_index}: {local} of {sum(p.numel() for p in params)} parameters",
            flush=True,
        )

    Trainer.__init__ = init


def _report_scoring() -> None:
    """At exit, print how often each scoring path ran: log-probs from hidden states through the swapped
    head (inside the sharded/DDP module's forward), or from full logits (only the one-time check)."""
    import atexit

    from prefpool.pipeline.model import lm_head

    counts = {"hidden": 0, "logits": 0}
    for name in counts:
        real = getattr(lm_head, f"_{name}_values")

        def counted(*args, _real=real, _name=name, **kwargs):
            counts[_name] += 1
            return _real(*args, **kwargs)

        setattr(lm_head, f"_{name}_values", counted)
    rank = os.environ.get("RANK", "?")
    atexit.register(lambda: print(f"scoring process {rank}: hidden {counts['hidden']} logits {counts['logits']}"))


if __name__ == "__main__":  # launched by torch.distributed.run: one training process (FSDP2 or DDP)
    _report_scoring()
    if os.environ.get("ACCELERATE_USE_FSDP") == "true":
        _force_fsdp_on_cpu()
        _report_shards()
    from prefpool.cli import main

    sys.argv = ["prefpool", "train", *sys.argv[1:]]
    sys.exit(main())


from trainer_tables import MAX_LENGTH, assert_same_training, distributed_settings  # noqa: E402

from prefpool.pipeline.model.scoring import completion_logps, plan_scoring  # noqa: E402
from prefpool.train.config import TrainConfig  # noqa: E402
from prefpool.train.data import TrainingTable, collate  # noqa: E402
from prefpool.train.metrics import read_metrics  # noqa: E402
from prefpool.train.trainer import Trainer  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("fresh_accelerate_state"),
    pytest.mark.slow,
    pytest.mark.distributed,
    pytest.mark.skipif(
        not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
        reason="needs torch.distributed with gloo",
    ),
]


def _launch(settings: dict, folder, *, fsdp: bool) -> str:
    config = folder / "run.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()))  # JSON is YAML
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_FSDP", None)
    if fsdp:
        env.update(
            ACCELERATE_USE_FSDP="true",
            FSDP_VERSION="2",
            FSDP_RESHARD_AFTER_FORWARD="true",
            FSDP_AUTO_WRAP_POLICY="TRANSFORMER_BASED_WRAP",  # one unit per LlamaDecoderLayer
            FSDP_STATE_DICT_TYPE="SHARDED_STATE_DICT",
        )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        __file__,
        str(config),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:  # a run takes ~10 s alone; the margin is for a loaded CI machine, a hang never ends
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:  # a hung collective: SIGTERM makes torch.distributed.run stop its
        proc.terminate()  # workers (they run in their own sessions; killing the launcher orphans them)
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"timed out (a collective hung?)\n{stdout[-3000:]}{stderr[-3000:]}")
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    if fsdp:  # really sharded: each process holds about half of the parameters
        shards = sorted(re.findall(r"fsdp2 process (\d): (\d+) of (\d+) parameters", stdout))
        assert [process for process, _, _ in shards] == ["0", "1"], stdout[-3000:]
        assert all(int(local) < 0.6 * int(full) for _, local, full in shards), shards
    # Every forward took its log-probs from the hidden states, the head's sharded weight gathered inside
    # the module's forward; full logits only in the one-time check of the head.
    paths = sorted(re.findall(r"scoring process (\d): hidden (\d+) logits (\d+)", stdout))
    assert [process for process, _, _ in paths] == ["0", "1"], stdout[-3000:]
    assert all(int(hidden) > 0 and int(logits) == 1 for _, hidden, logits in paths), paths
    return stdout


def _saved_logps(folder, pairs) -> torch.Tensor:
    from transformers import AutoConfig, AutoModelForCausalLM

    assert AutoConfig.from_pretrained(folder).architectures == ["LlamaForCausalLM"]  # not FSDPLlama...
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return completion_logps(model, pairs, 0)[0]


def _scoring_forwards(world, tokenizer, batch_size: int, process: int) -> int:
    """Forwards MC-PO's pass 1 runs for this process's answers of step 1 (the ``sample`` kernel scores
    the pool and the preferred answers, prompts shared: ``scoring.plan_scoring``'s batches)."""
    table = TrainingTable(world["mcpo"], "mcpo", tokenizer, max_length=MAX_LENGTH, truncation="completion")
    batch = collate("mcpo", table.micro_batch(0, 0, 0, batch_size=batch_size, process=process, num_processes=2))
    scored = [*(p for pool in batch.pools for p in pool), *batch.chosen]
    shared, plain = plan_scoring(scored, SCORE_MAX_TOKENS, share_prompts=True)
    return 2 * len(shared) + len(plain)


def test_dpo_fsdp_with_accumulation_equals_one_process(world, tmp_path):
    """FSDP 2 processes x batch 1 x 2 accumulation steps == 1 process x batch 4; the gathered final
    model loads as a plain Llama and scores like the one-process model."""
    summary = Trainer(
        TrainConfig(**distributed_settings(world, "pairwise", "dpo", tmp_path / "one", batch_size=4))
    ).run()
    assert summary["steps"] == 3
    _launch(
        distributed_settings(world, "pairwise", "dpo", tmp_path / "two", batch_size=1, gradient_accumulation_steps=2),
        tmp_path / "cfg",
        fsdp=True,
    )
    assert_same_training(tmp_path / "one", tmp_path / "two")

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(world["model"])
    table = TrainingTable(world["pairwise"], "pairwise", tokenizer, max_length=MAX_LENGTH, truncation="completion")
    batch = collate("pairwise", table.micro_batch(0, 0, 0, batch_size=8))
    pairs = [*batch.chosen, *batch.rejected]
    one, two = _saved_logps(tmp_path / "one", pairs), _saved_logps(tmp_path / "two", pairs)
    torch.testing.assert_close(two, one, atol=1e-4, rtol=0)
    assert (two - _saved_logps(world["model"], pairs)).abs().max() > 1e-2  # trained, not the initial model


def test_mcpo_sample_kernel_fsdp_equals_ddp_and_resumes(world, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(world["model"])
    # The case lockstep exists for: the two processes score their pools in different numbers of forwards.
    assert _scoring_forwards(world, tokenizer, 2, 0) != _scoring_forwards(world, tokenizer, 2, 1)
    common = dict(batch_size=2, kernel="sample", score_max_tokens=SCORE_MAX_TOKENS)
    _launch(distributed_settings(world, "mcpo", "mcpo", tmp_path / "ddp", **common), tmp_path / "cfg-ddp", fsdp=False)
    _launch(
        distributed_settings(world, "mcpo", "mcpo", tmp_path / "fsdp", save_steps=2, **common),
        tmp_path / "cfg-fsdp",
        fsdp=True,
    )
    assert_same_training(tmp_path / "ddp", tmp_path / "fsdp")
    records = read_metrics(tmp_path / "fsdp" / "metrics.jsonl")
    # the draws of both processes were gathered: pool slots in the histogram, the preferred answer in chosen_drawn
    assert all(sum(r["mcpo/selected_hist"]) + round(r["mcpo/chosen_drawn"] * 4) == 4 for r in records)

    step2 = tmp_path / "fsdp" / "checkpoints" / "step-2"
    assert (step2 / "pytorch_model_fsdp_0" / ".metadata").exists()  # sharded (DCP), not a full file
    _launch(
        distributed_settings(world, "mcpo", "mcpo", tmp_path / "resumed", resume_from=str(step2), **common),
        tmp_path / "cfg-resumed",
        fsdp=True,
    )
    assert_same_training(tmp_path / "fsdp", tmp_path / "resumed", steps=(3,))  # same draw, same step, same weights
