"""The controlled-task experiments of RESULTS.md: run them (resumable), one seed at a time.

    python experiments/controlled/run.py --seeds 0 1 2 --out runs/experiments
    python experiments/controlled/summarize.py --out runs/experiments

Per seed: a reference model and data made by prefpool's own commands
(``prefpool.controlled.data.prepare_data``: ingest -> generate 9 samples per
prompt -> score with the noisy annotator -> logprobs -> build mcpo), once with
the Bradley-Terry annotator (``std``) and once with a near-deterministic one
(``sharp``, for the MPO experiment); derived tables for the baselines
(``prefpool.controlled.derive``); then every run below, trained by
``prefpool.train.Trainer`` (no reference model) and probed on fresh samples for
the held-out topics (true reward, KL to the reference) every ``--probe-every``
steps. A finished run (its ``probe.jsonl`` reaches the last step) is skipped on
rerun, so an interrupted sweep continues where it stopped.

Experiments (name: runs):

- ``kernels``: MC-PO's kernels on the full pools (up to 8): ``sample`` (the
  paper's, over the preferred answer and the pool), ``sample_pool`` (the same
  softmax over the pool alone), ``uniform`` (= DPO, random rejected), ``max``,
  ``min``, ``listwise``, ``rao_blackwell``; and DPO with the max-margin
  rejected answer (lowest true reward in the pool).
- ``pool_size``: the sample kernel with pools cut to M = 1, 2, 4 (M = 8 is
  ``kernels/sample``).
- ``garbage``: one garbage answer added to every pool: DPO using it as the
  rejected answer, DPO random (uniform kernel), MC-PO (sample kernel).
- ``mpo``: near-deterministic labels (``sharp``), pairs = preferred vs one fixed
  random pool member: MPO (tau; its reference samples are every sample the
  generate stage drew for the prompt, i.i.d. from the reference), MPO without
  the tau term, DPO, IPO, all at MPO's learning rate; trained ``--long-steps``
  steps to see whether the KL stays bounded.
- ``online``: OnMC-PO (``prefpool.train.online``), 2 rounds of half the steps,
  the second round's pool sampled from the first round's policy; against
  offline MC-PO (``kernels/sample``) at equal total steps.
- ``frontier``: beta in --betas for the kernels in ``FRONTIER_KERNELS`` and MPO
  (at its learning rate); the runs at beta = ``Settings.beta`` are the
  ``kernels`` experiment's (same table, seed and settings), not rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers

from prefpool.controlled import derive
from prefpool.controlled.data import TaskData, prepare_data
from prefpool.controlled.probe import Probe
from prefpool.controlled.task import held_out_topics, task_prompts
from prefpool.controlled.training import PROBE_LOG, train_with_probe
from prefpool.pipeline.build import build
from prefpool.train.config import TrainConfig

EXPERIMENTS = ("kernels", "pool_size", "garbage", "mpo", "online", "frontier")
KERNELS = ("sample", "sample_pool", "uniform", "max", "min", "listwise", "rao_blackwell")
FRONTIER_KERNELS = ("sample", "sample_pool", "uniform", "rao_blackwell", "listwise")
SHARP = "prefpool.controlled.task:sharp_annotator"


@dataclass
class Settings:
    steps: int = 80
    long_steps: int = 240
    probe_every: int = 20
    batch_size: int = 8
    lr: float = 5e-4
    mpo_lr: float = 2e-3  # MPO's gradient is bounded (it rewards p, not log p): it needs a larger step
    beta: float = 0.1
    tau: float = 0.1
    betas: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0)
    probe_samples: int = 8
    n: int = 9


@dataclass
class Run:
    experiment: str
    name: str
    table: str  # key of Seed.tables
    overrides: dict = field(default_factory=dict)
    long: bool = False


def planned_runs(s: Settings) -> list[Run]:
    runs = [Run("kernels", k, "mcpo", {"kernel": k}) for k in KERNELS]
    runs.append(Run("kernels", "max-margin", "max_margin", {"kernel": "uniform"}))
    runs += [Run("pool_size", f"M={m}", f"pool{m}", {"kernel": "sample"}) for m in (1, 2, 4)]
    runs += [
        Run("garbage", "dpo-garbage", "garbage_only", {"kernel": "uniform"}),
        Run("garbage", "dpo-random", "garbage", {"kernel": "uniform"}),
        Run("garbage", "mcpo", "garbage", {"kernel": "sample"}),
    ]
    # One learning rate (MPO's) for all four: the question is whether the KL stays bounded.
    runs += [
        Run("mpo", "mpo", "sharp_mpo", {"loss": "mpo", "tau": s.tau, "lr": s.mpo_lr}, long=True),
        Run("mpo", "mpo-tau0", "sharp_mpo", {"loss": "mpo", "tau": 0.0, "lr": s.mpo_lr}, long=True),
        Run("mpo", "dpo", "sharp_pairwise", {"loss": "dpo", "lr": s.mpo_lr}, long=True),
        Run("mpo", "ipo", "sharp_pairwise", {"loss": "ipo", "lr": s.mpo_lr}, long=True),
    ]
    for b in s.betas:
        if b != s.beta:  # at the default beta these are the kernels experiment's runs
            runs += [Run("frontier", f"{k} beta={b}", "mcpo", {"kernel": k, "beta": b}) for k in FRONTIER_KERNELS]
        runs.append(Run("frontier", f"mpo beta={b}", "mpo", {"loss": "mpo", "beta": b, "tau": s.tau, "lr": s.mpo_lr}))
    return runs


def _slug(name: str) -> str:
    return name.replace(" ", "_").replace("=", "")


class Seed:
    """The data, derived tables and probe of one seed."""

    def __init__(self, out: Path, seed: int, s: Settings, log) -> None:
        self.out, self.seed, self.s, self.log = out, seed, s, log
        self.std: TaskData = prepare_data(out / "std", seed=seed, engine="hf", n=s.n, log=log)
        sharp_ref = out / "sharp" / "reference"
        if not sharp_ref.exists():  # the same reference model: only the labels differ
            shutil.copytree(self.std.reference, sharp_ref)
        self.sharp: TaskData = prepare_data(out / "sharp", seed=seed, engine="hf", n=s.n, annotator=SHARP, log=log)
        self.probe = Probe(
            self.std.reference, task_prompts(held_out_topics()), samples_per_prompt=s.probe_samples, seed=seed + 1000
        )
        self._tables: dict[str, Path] = {}

    def table(self, key: str) -> Path:
        if key not in self._tables:
            self._tables[key] = self._make(key)
        return self._tables[key]

    def _make(self, key: str) -> Path:
        tables = self.out / "tables"
        if key == "mcpo":
            return self.std.train_table
        if key.startswith("pool"):
            train = self.std.train_table.parent.parent  # data/train
            return build(
                "mcpo",
                examples=train / "ingest",
                logprobs=train / "logprobs",
                out=tables / key,
                candidates=train / "generate",
                scores=train / "score",
                max_pool=int(key[4:]),
            ).out
        if key == "max_margin":
            return derive.derive_table(
                self.std.train_table, tables / key, kind="mcpo", name="max_margin", transform=derive.max_margin
            )
        if key == "garbage":
            adder = derive.GarbageAdder(self.std.reference, self.std.train_table)
            return derive.derive_table(self.std.train_table, tables / key, kind="mcpo", name="garbage", transform=adder)
        if key == "garbage_only":
            return derive.derive_table(
                self.table("garbage"), tables / key, kind="mcpo", name="garbage_only", transform=derive.garbage_only
            )
        if key in ("mpo", "sharp_mpo"):
            data = self.std if key == "mpo" else self.sharp
            samples = self.reference_samples(data)
            return derive.derive_table(
                data.train_table,
                tables / key,
                kind="mpo",
                name="as_mpo(iid reference samples)",
                transform=lambda r: derive.as_mpo(r, self.seed, samples),
            )
        if key == "sharp_pairwise":
            return derive.derive_table(
                self.sharp.train_table,
                tables / key,
                kind="pairwise",
                name="as_pair",
                transform=lambda r: derive.as_pair(r, self.seed),
            )
        raise KeyError(key)

    def reference_samples(self, data: TaskData) -> dict:
        """The generate stage's samples (i.i.d. from the reference) of every training prompt."""
        train = data.train_table.parent.parent  # data/train
        return derive.reference_samples(train / "generate", train / "logprobs")

    def run(self, run: Run) -> list[dict]:
        s = self.s
        folder = self.out / "runs" / run.experiment / _slug(run.name)
        steps = s.long_steps if run.long else s.steps
        done = _finished(folder, steps)
        if done is not None:
            return done
        overrides = {"loss": "mcpo", "beta": s.beta, **run.overrides}
        overrides.setdefault("lr", s.lr)
        cfg = TrainConfig(
            model=str(self.std.reference),
            data=str(self.table(run.table)),
            output_dir=str(folder),
            batch_size=s.batch_size,
            max_steps=steps,
            seed=self.seed,
            progress=False,
            **overrides,
        )
        every = s.probe_every * (3 if run.long else 1)
        return train_with_probe(cfg, self.probe, every=every, log=self.log, label=f"{run.experiment}/{run.name}")

    def online(self) -> list[dict]:
        """OnMC-PO: 2 rounds of steps/2; probe records at the start and after each round."""
        from transformers import AutoModelForCausalLM

        from prefpool.controlled.data import ANNOTATOR
        from prefpool.train.online import online, round_dir
        from prefpool.train.online_config import OnlineConfig, RoundTrainConfig

        s = self.s
        folder = self.out / "runs" / "online" / "onmcpo"
        done = _finished(folder, s.steps)
        if done is not None:
            return done
        train = RoundTrainConfig(
            kernel="sample",
            lr=s.lr,
            beta=s.beta,
            batch_size=s.batch_size,
            max_steps=s.steps // 2,
            seed=self.seed,
            progress=False,
        )
        cfg = OnlineConfig(
            output_dir=str(folder / "work"),
            reference=str(self.std.reference),
            prompts=str(self.std.train_table.parent.parent / "ingest"),
            rounds=2,
            n=s.n,
            temperature=1.0,
            top_p=1.0,
            max_new_tokens=32,
            seed=self.seed,
            reward_fn=ANNOTATOR,
            max_length=64,
            show_progress=False,
            train=train,
        )
        start = time.perf_counter()
        online(cfg, log=self.log)
        seconds = time.perf_counter() - start
        records = [
            {
                "step": 0,
                "train_seconds": 0.0,
                **self.probe.measure(AutoModelForCausalLM.from_pretrained(self.std.reference)),
            }
        ]
        train_s = 0.0
        for r in range(2):
            model_dir = round_dir(cfg.output_dir, r) / "train"
            train_s += json.loads((model_dir / "train_summary.json").read_text())["seconds"]
            model = AutoModelForCausalLM.from_pretrained(model_dir)
            records.append(
                {
                    "step": (r + 1) * (s.steps // 2),
                    "train_seconds": round(train_s, 3),
                    "online_seconds": round(seconds, 1),
                    **self.probe.measure(model),
                }
            )
        folder.mkdir(parents=True, exist_ok=True)
        (folder / PROBE_LOG).write_text("".join(json.dumps(r) + "\n" for r in records))
        return records


def _finished(folder: Path, steps: int) -> list[dict] | None:
    path = folder / PROBE_LOG
    if not path.exists():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return records if records and records[-1]["step"] >= steps else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/experiments"))
    parser.add_argument("--only", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS))
    parser.add_argument("--steps", type=int, default=Settings.steps)
    parser.add_argument("--long-steps", type=int, default=Settings.long_steps)
    parser.add_argument("--probe-every", type=int, default=Settings.probe_every)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the `prefpool run` subprocesses too
    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    s = Settings(steps=args.steps, long_steps=args.long_steps, probe_every=args.probe_every)
    (args.out).mkdir(parents=True, exist_ok=True)
    (args.out / "settings.json").write_text(json.dumps(s.__dict__, indent=2) + "\n")
    for seed in args.seeds:
        start = time.perf_counter()
        seed_run = Seed(args.out / f"seed-{seed}", seed, s, print)
        for run in planned_runs(s):
            if run.experiment in args.only:
                seed_run.run(run)
        if "online" in args.only:
            seed_run.online()
        print(f"seed {seed}: done in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
