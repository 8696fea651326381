"""The paired design of experiments/controlled/design.md: every cell of the grid, resumable, one JSON per cell.

    python experiments/controlled/paired.py --out runs/paired                      # the whole grid
    python experiments/controlled/paired.py --out runs/paired --only main --max-cells 20
    python experiments/controlled/paired.py --out runs/paired --list               # cells, done or not
    python experiments/controlled/paired.py --out runs/paired-smoke --smoke        # a tiny setting, ~1 min
    python experiments/controlled/paired_summary.py --out runs/paired

Side by side (each process one thread; the data made first, then only read):

    python experiments/controlled/paired.py --out runs/paired --prepare-only
    for d in 0 1 2; do for a in std low; do
        OMP_NUM_THREADS=1 python experiments/controlled/paired.py --out runs/paired --data-seeds $d --arms $a &
    done; done; wait

A cell (``prefpool.controlled.grid.Cell``) is one training run: data seed, training seed, β, noise arm,
method, learning rate. The data of a (data seed, arm) is made once by prefpool's own commands
(``prefpool.controlled.data.prepare_data``). Both arms share the reference model and the samples and
differ in the annotator only. The baselines' tables are derived from that data
(``prefpool.controlled.derive``). Each run is ``prefpool.train.Trainer`` from the reference, probed on
fresh samples for the held-out topics (true reward, KL to the reference) every ``probe_every`` steps.
Its result goes to ``OUT/cells/<cell id>.json``: the probe records, the MC-PO kernel's diagnostics and
whether the run is valid. A cell whose JSON exists is skipped, so a stopped run continues where it
stopped. A cell that raises leaves its traceback in ``OUT/failed/<cell id>.txt``; the sweep goes on,
exits 1 at the end, and a rerun retries it. ``onmcpo`` cells run ``prefpool.train.online`` with one LR
schedule across its rounds; round 0 samples the offline data (same prompts, reference and seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from prefpool.controlled import derive
from prefpool.controlled.data import TaskData, prepare_data
from prefpool.controlled.grid import ARMS, METHODS, RESULTS, Cell, cells, invalid_reason, methods_of
from prefpool.controlled.probe import Probe
from prefpool.controlled.task import held_out_topics, task_prompts
from prefpool.controlled.training import train_with_probe
from prefpool.train.config import TrainConfig
from prefpool.train.metrics import read_metrics

KERNEL_METRICS = ("mcpo/kernel_kl_uniform", "mcpo/chosen_drawn", "mcpo/kernel_chosen_prob", "mcpo/kernel_top_prob")


@dataclass(frozen=True)
class Settings:
    steps: int = 80
    probe_every: int = 20
    batch_size: int = 8
    n: int = 9  # samples per prompt: pools of up to 8
    max_new_tokens: int = 32
    reference_steps: int = 300
    probe_samples: int = 8  # per held-out prompt (24 prompts)
    online_rounds: int = 2


SMOKE = Settings(
    steps=4, probe_every=2, batch_size=8, n=4, max_new_tokens=16, reference_steps=30, probe_samples=1, online_rounds=2
)
SMOKE_GRID = {"data_seeds": (0,), "train_seeds": (0,), "betas": (1.0,), "arms": ("std",), "lrs": (1e-3,)}


class DataSeed:
    """The data, derived tables and probe of one data seed, made on first use."""

    def __init__(self, out: Path, seed: int, s: Settings, log) -> None:
        self.root, self.seed, self.s, self.log = out / "data" / f"d{seed}", seed, s, log
        self._data: dict[str, TaskData] = {}
        self._tables: dict[tuple[str, str], Path] = {}
        self._probe: Probe | None = None

    def data(self, arm: str) -> TaskData:
        """The arm's data: read when both of its tables are complete (then no command runs, so several
        processes may share it), else made by ``prepare_data``."""
        if arm not in self._data:
            folder = self.root / arm
            train, heldout = (folder / "data" / split / "build" / "mcpo" for split in ("train", "heldout"))
            if _has_manifest(train) and _has_manifest(heldout):
                self._data[arm] = TaskData(folder / "reference", train, heldout, folder / "pipeline.yaml", ())
                return self._data[arm]
            reference = folder / "reference"
            if arm != "std" and not reference.exists():  # the same reference model: only the labels differ
                shutil.copytree(self.data("std").reference, reference)
            s = self.s
            self._data[arm] = prepare_data(
                self.root / arm,
                seed=self.seed,
                engine="hf",
                n=s.n,
                max_new_tokens=s.max_new_tokens,
                reference_steps=s.reference_steps,
                annotator=ARMS[arm],
                log=self.log,
            )
        return self._data[arm]

    def prepare(self, arm: str, table: str | None) -> None:
        """Make the arm's data, ``table`` and the probe now; logs how long that took when it did work."""
        start, cpu_start = time.perf_counter(), time.process_time()
        made = arm not in self._data or (table is not None and (arm, table) not in self._tables) or not self._probe
        if table is not None:
            self.table(arm, table)
        self.probe_for(arm)
        if made:
            print(
                f"data d{self.seed}/{arm}" + (f", table {table}" if table else "") + f": ready in "
                f"{time.perf_counter() - start:.0f} s ({time.process_time() - cpu_start:.0f} s CPU in this process)",
                flush=True,
            )

    def probe_for(self, arm: str) -> Probe:
        """The data seed's probe (the arms' reference models are copies of one)."""
        if self._probe is None:
            self._probe = Probe(
                self.data(arm).reference,
                task_prompts(held_out_topics()),
                samples_per_prompt=self.s.probe_samples,
                max_new_tokens=self.s.max_new_tokens,
                seed=self.seed + 1000,
            )
        return self._probe

    def table(self, arm: str, name: str) -> Path:
        if (arm, name) not in self._tables:
            self._tables[(arm, name)] = self._make(arm, name)
        return self._tables[(arm, name)]

    def _make(self, arm: str, name: str) -> Path:
        data = self.data(arm)
        out = self.root / arm / "tables" / name
        if name == "mcpo":
            return data.train_table
        if _has_manifest(out):  # written last: the table is complete
            return out
        if name == "pair":
            return derive.derive_table(
                data.train_table, out, kind="pairwise", name="as_pair", transform=lambda r: derive.as_pair(r, self.seed)
            )
        if name == "garbage":
            adder = derive.GarbageAdder(data.reference, data.train_table)
            return derive.derive_table(data.train_table, out, kind="mcpo", name="garbage", transform=adder)
        if name == "garbage_only":
            return derive.derive_table(
                self.table(arm, "garbage"), out, kind="mcpo", name="garbage_only", transform=derive.garbage_only
            )
        raise KeyError(name)


def _has_manifest(folder: Path) -> bool:
    from prefpool.pipeline.io.manifest import load_manifest

    return folder.is_dir() and load_manifest(folder) is not None


def _kernel(metrics_files: list[Path]) -> dict | None:
    """Means over every step of the MC-PO kernel's diagnostics, and the KL to uniform of the last 10 steps."""
    steps = [r for path in metrics_files for r in read_metrics(path)]
    if not steps or "mcpo/kernel_kl_uniform" not in steps[0]:
        return None
    out = {name: statistics.fmean(r[name] for r in steps) for name in KERNEL_METRICS if name in steps[0]}
    out["kl_uniform_last10"] = statistics.fmean(r["mcpo/kernel_kl_uniform"] for r in steps[-10:])
    return out


def _probe_record(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "example"}


def train_cell(cell: Cell, seed_data: DataSeed, s: Settings, work: Path) -> tuple[list[dict], list[Path]]:
    method = METHODS[cell.method]
    cfg = TrainConfig(
        model=str(seed_data.data(cell.arm).reference),
        data=str(seed_data.table(cell.arm, method.table)),
        output_dir=str(work),
        beta=cell.beta,
        lr=cell.lr,
        batch_size=s.batch_size,
        max_steps=s.steps,
        seed=cell.train_seed,
        progress=False,
        overwrite=True,
        **method.overrides(),
    )
    records = train_with_probe(cfg, seed_data.probe_for(cell.arm), every=s.probe_every, log=None)
    return records, [work / "metrics.jsonl"]


def online_cell(cell: Cell, seed_data: DataSeed, s: Settings, work: Path) -> tuple[list[dict], list[Path]]:
    """OnMC-PO, ``online_rounds`` rounds of ``steps / online_rounds`` steps under one LR schedule; probed at
    the start and after every round. Round 0 samples with the data seed, as ``prepare_data`` does."""
    from transformers import AutoModelForCausalLM

    from prefpool.train.online import online, round_dir
    from prefpool.train.online_config import OnlineConfig, RoundTrainConfig

    data = seed_data.data(cell.arm)
    method = METHODS[cell.method]
    per_round = s.steps // s.online_rounds
    train = RoundTrainConfig(
        kernel=method.kernel,
        lr=cell.lr,
        beta=cell.beta,
        batch_size=s.batch_size,
        max_steps=per_round,
        seed=cell.train_seed,
        progress=False,
    )
    cfg = OnlineConfig(
        output_dir=str(work),
        reference=str(data.reference),
        prompts=str(data.train_table.parent.parent / "ingest"),
        rounds=s.online_rounds,
        n=s.n,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=s.max_new_tokens,
        seed=cell.data_seed,
        reward_fn=ARMS[cell.arm],
        max_length=s.max_new_tokens + 32,
        lr_schedule="across_rounds",
        show_progress=False,
        train=train,
    )
    online(cfg, log=None)
    probe = seed_data.probe_for(cell.arm)
    records = [{"step": 0, "train_seconds": 0.0, **probe.measure(AutoModelForCausalLM.from_pretrained(data.reference))}]
    train_seconds = 0.0
    metrics = []
    for r in range(s.online_rounds):
        model_dir = round_dir(work, r) / "train"
        train_seconds += json.loads((model_dir / "train_summary.json").read_text())["seconds"]
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        step = (r + 1) * per_round
        records.append({"step": step, "train_seconds": round(train_seconds, 3), **probe.measure(model)})
        metrics.append(model_dir / "metrics.jsonl")
    return records, metrics


def run_cell(cell: Cell, seed_data: DataSeed, s: Settings, out: Path, *, keep_runs: bool = False) -> dict:
    """Train and probe ``cell``; write ``OUT/cells/<id>.json`` atomically and return it (read back when it exists)."""
    path = out / "cells" / f"{cell.id}.json"
    if path.exists():
        return json.loads(path.read_text())
    work = out / "work" / cell.id
    if work.exists():  # a run stopped half-way: start the cell over
        shutil.rmtree(work)
    table = METHODS[cell.method].table
    seed_data.prepare(cell.arm, None if table == "online" else table)  # data, table, probe: not the cell's time
    start, cpu_start = time.perf_counter(), time.process_time()
    runner = online_cell if METHODS[cell.method].table == "online" else train_cell
    records, metrics = runner(cell, seed_data, s, work)
    kernel = _kernel(metrics)
    result = {
        "id": cell.id,
        "cell": dataclasses.asdict(cell),
        "settings": dataclasses.asdict(s),
        "records": [_probe_record(r) for r in records],
        "kernel": kernel,
        "invalid": invalid_reason(cell, kernel),
        "seconds": round(time.perf_counter() - start, 2),
        "cpu_seconds": round(time.process_time() - cpu_start, 2),  # this process's CPU time: load-independent
        "train_seconds": records[-1]["train_seconds"],
        "seconds_per_step": records[-1]["train_seconds"] / s.steps,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, path)
    if not keep_runs:
        shutil.rmtree(work)
    return result


def _check_settings(out: Path, s: Settings) -> None:
    """One OUT holds one setting: a rerun with other settings is refused (exit 2)."""
    path = out / "settings.json"
    mine = dataclasses.asdict(s)
    if path.exists():
        theirs = json.loads(path.read_text())
        if theirs != mine:
            differ = ", ".join(f"{k} ({theirs.get(k)} -> {v})" for k, v in mine.items() if theirs.get(k) != v)
            sys.exit(f"error: {out} holds cells made with other settings: {differ}; use another --out")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(mine, indent=1) + "\n")


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="+", choices=RESULTS, default=list(RESULTS), help="results whose cells run")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), help="these methods instead of --only's")
    parser.add_argument("--data-seeds", type=_ints, help="comma-separated, e.g. 0,1")
    parser.add_argument("--train-seeds", type=_ints)
    parser.add_argument("--betas", type=_floats)
    parser.add_argument("--arms", type=lambda t: tuple(t.split(",")))
    parser.add_argument("--lrs", type=_floats)
    parser.add_argument("--max-cells", type=int, help="stop after running this many cells (finished ones not counted)")
    parser.add_argument("--smoke", action="store_true", help="tiny settings and a one-point grid: a test of the wiring")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (a timing; not for the design's cells)")
    parser.add_argument("--probe-every", type=int)
    parser.add_argument("--list", action="store_true", help="print the cells and whether each is done; run nothing")
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="make the data, tables and probe the selected cells need, then stop: afterwards processes split by "
        "--data-seeds/--train-seeds/--arms/--lrs can run side by side (they only read the data)",
    )
    parser.add_argument("--keep-runs", action="store_true", help="keep each run's folder (model, metrics)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    s = SMOKE if args.smoke else Settings()
    if args.steps or args.probe_every:
        s = dataclasses.replace(s, steps=args.steps or s.steps, probe_every=args.probe_every or s.probe_every)
    grid = dict(SMOKE_GRID) if args.smoke else {}
    for key in ("data_seeds", "train_seeds", "betas", "arms", "lrs"):
        if getattr(args, key) is not None:
            grid[key] = getattr(args, key)
    unknown_arms = [a for a in grid.get("arms", ()) if a not in ARMS]
    if unknown_arms:
        parser.error(f"--arms: unknown {unknown_arms}; expected some of {', '.join(ARMS)}")
    todo = cells(methods=tuple(args.methods) if args.methods else methods_of(tuple(args.only)), **grid)
    if args.list:
        for cell in todo:
            print(f"{'done' if (args.out / 'cells' / f'{cell.id}.json').exists() else '    '}  {cell.id}")
        print(f"{len(todo)} cells")
        return

    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the `prefpool run` subprocesses too
    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    _check_settings(args.out, s)
    seeds: dict[int, DataSeed] = {}
    if args.prepare_only:
        for d, arm, table in dict.fromkeys((c.data_seed, c.arm, METHODS[c.method].table) for c in todo):
            seeds.setdefault(d, DataSeed(args.out, d, s, log=None)).prepare(arm, None if table == "online" else table)
        return
    ran, failed = 0, []
    for i, cell in enumerate(todo, 1):
        if args.max_cells is not None and ran >= args.max_cells:
            break
        if (args.out / "cells" / f"{cell.id}.json").exists():
            continue
        if cell.data_seed not in seeds:
            seeds[cell.data_seed] = DataSeed(args.out, cell.data_seed, s, log=None)
        ran += 1
        try:
            result = run_cell(cell, seeds[cell.data_seed], s, args.out, keep_runs=args.keep_runs)
        except Exception:  # one broken cell must not stop a day-long sweep: kept, reported, retried on rerun
            failed.append(cell.id)
            (args.out / "failed").mkdir(exist_ok=True)
            (args.out / "failed" / f"{cell.id}.txt").write_text(traceback.format_exc())
            print(f"[{i}/{len(todo)}] {cell.id}: FAILED, see {args.out / 'failed' / f'{cell.id}.txt'}", flush=True)
            continue
        (args.out / "failed" / f"{cell.id}.txt").unlink(missing_ok=True)
        last = result["records"][-1]
        kernel = result["kernel"] or {}
        print(
            f"[{i}/{len(todo)}] {cell.id}: reward {last['reward']:+.2f} KL {last['kl']:.2f}"
            + (f" kernel KL-to-uniform {kernel['mcpo/kernel_kl_uniform']:.3f}" if kernel else "")
            + (f" INVALID ({result['invalid']})" if result["invalid"] else "")
            + f"  {result['seconds']:.0f} s, {result['cpu_seconds']:.0f} s CPU "
            f"({result['seconds_per_step']:.2f} s/step training)",
            flush=True,
        )
    print(f"ran {ran} cells; {sum((args.out / 'cells' / f'{c.id}.json').exists() for c in todo)}/{len(todo)} done")
    if failed:
        sys.exit(f"{len(failed)} cells failed (tracebacks in {args.out / 'failed'}); a rerun retries them")


if __name__ == "__main__":
    main()
