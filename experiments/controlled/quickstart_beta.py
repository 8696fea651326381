"""The quickstart's data at several β and training seeds: is the MC-PO kernel doing anything there?

    python experiments/controlled/quickstart_beta.py --out runs/qs-beta --betas 0.1 0.3 1 3 --seeds 0
    python experiments/controlled/quickstart_beta.py --out runs/qs-beta --betas 1 --seeds 0 1 2 \\
        --methods mcpo dpo-random mcpo-m2 uniform-m2

The data is the quickstart's (``prefpool quickstart``'s defaults: one reference model, 8 samples a prompt,
seed ``--data-seed``), made once. Each run is the quickstart's ``prefpool train`` with ``beta`` and
``seed`` (the training seed: data order and kernel draws) set, probed on fresh samples for the
held-out topics at its last step. Per run, from its ``metrics.jsonl``: the mean over steps of the
``sample`` kernel's KL to uniform over {y0} ∪ pool (``mcpo/kernel_kl_uniform``), of the rate of y0
draws (``mcpo/chosen_drawn``) and of K0 (``mcpo/kernel_chosen_prob``); the final true reward and KL.
Writes ``OUT/results.json`` and prints a table. Finished runs are kept and skipped on rerun.

Methods: ``mcpo`` (sample kernel, M = 1), ``dpo-random`` (uniform kernel, M = 1) and, for the
paper's M ablation, ``mcpo-m2``/``mcpo-m3`` and ``uniform-m2``/``uniform-m3`` (M negatives).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import transformers

from prefpool.controlled.data import prepare_data
from prefpool.controlled.probe import Probe
from prefpool.controlled.quickstart import QuickstartConfig
from prefpool.controlled.task import held_out_topics, task_prompts
from prefpool.controlled.training import train_with_probe
from prefpool.train.config import TrainConfig
from prefpool.train.metrics import read_metrics

METHODS = {
    "mcpo": {"kernel": "sample"},
    "dpo-random": {"kernel": "uniform"},
    "mcpo-m2": {"kernel": "sample", "num_negatives": 2},
    "mcpo-m3": {"kernel": "sample", "num_negatives": 3},
    "uniform-m2": {"kernel": "uniform", "num_negatives": 2},
    "uniform-m3": {"kernel": "uniform", "num_negatives": 3},
}
KERNEL_METRICS = ("mcpo/kernel_kl_uniform", "mcpo/chosen_drawn", "mcpo/kernel_chosen_prob")


def run_one(data, probe: Probe, qs: QuickstartConfig, out: Path, method: str, beta: float, seed: int) -> dict:
    folder = out / "runs" / f"{method}-beta{beta:g}-seed{seed}"
    done = folder / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    cfg = TrainConfig(
        model=str(data.reference),
        data=str(data.train_table),
        output_dir=str(folder),
        loss="mcpo",
        beta=beta,
        lr=qs.lr,
        batch_size=qs.batch_size,
        max_steps=qs.steps,
        seed=seed,
        progress=False,
        overwrite=True,
        **METHODS[method],
    )
    start = time.perf_counter()
    records = train_with_probe(cfg, probe, every=qs.steps, log=None, label=method)
    steps = read_metrics(folder / "metrics.jsonl")
    result = {
        "method": method,
        "beta": beta,
        "seed": seed,
        "reward": records[-1]["reward"],
        "reward_se": records[-1]["reward_se"],
        "kl": records[-1]["kl"],
        "kl_se": records[-1]["kl_se"],
        "seconds": round(time.perf_counter() - start, 1),
        **{name: statistics.fmean(r[name] for r in steps) for name in KERNEL_METRICS},
        "first_kl_uniform": steps[0]["mcpo/kernel_kl_uniform"],
        "last_kl_uniform": steps[-1]["mcpo/kernel_kl_uniform"],
    }
    done.write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--betas", type=float, nargs="+", default=[0.1, 0.3, 1.0, 3.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=["mcpo"], choices=list(METHODS))
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--engine", default="hf", choices=["hf", "vllm", "auto"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    transformers.utils.logging.disable_progress_bar()
    qs = QuickstartConfig(seed=args.data_seed, engine=args.engine)
    data = prepare_data(args.out, seed=qs.seed, engine=qs.engine, n=qs.n, reference_steps=qs.reference_steps, log=None)
    probe = Probe(
        data.reference, task_prompts(held_out_topics()), samples_per_prompt=qs.probe_samples, seed=qs.seed + 1000
    )
    results = []
    for beta in args.betas:
        for seed in args.seeds:
            for method in args.methods:
                r = run_one(data, probe, qs, args.out, method, beta, seed)
                results.append(r)
                print(
                    f"{method:<11} beta {beta:<4g} seed {seed}  reward {r['reward']:+.2f}  KL {r['kl']:6.2f}  "
                    f"kernel KL-to-uniform {r['mcpo/kernel_kl_uniform']:.3f} ({r['first_kl_uniform']:.3f} -> "
                    f"{r['last_kl_uniform']:.3f})  y0 draws {r['mcpo/chosen_drawn']:.3f}  K0 "
                    f"{r['mcpo/kernel_chosen_prob']:.3f}  {r['seconds']:.0f} s",
                    flush=True,
                )
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    for line in summary_lines(results):
        print(line)


# (a, b): "a - b", paired by (beta, seed)
PAIRS = [
    ("mcpo", "dpo-random"),
    ("mcpo-m2", "uniform-m2"),
    ("mcpo-m3", "uniform-m3"),
    ("mcpo-m2", "mcpo"),
    ("mcpo-m3", "mcpo"),
    ("uniform-m2", "dpo-random"),
    ("uniform-m3", "dpo-random"),
]


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):+.2f} ± {sd:.2f}"


def summary_lines(results: list[dict]) -> list[str]:
    """Per (method, beta): final true reward and KL, mean ± sd across seeds; then the paired
    differences of ``PAIRS`` (same beta and seed), their mean ± sd and how many are > 0."""
    by = {(r["method"], r["beta"], r["seed"]): r for r in results}
    lines = []
    for method, beta in dict.fromkeys((r["method"], r["beta"]) for r in results):
        rs = [r for r in results if (r["method"], r["beta"]) == (method, beta)]
        lines.append(
            f"{method:<11} beta {beta:<4g} n {len(rs)}  reward {_mean_sd([r['reward'] for r in rs])}  "
            f"KL {_mean_sd([r['kl'] for r in rs])}  kernel KL-to-uniform "
            f"{statistics.fmean(r['mcpo/kernel_kl_uniform'] for r in rs):.2f}  y0 draws "
            f"{statistics.fmean(r['mcpo/chosen_drawn'] for r in rs):.2f}"
        )
    for a, b in PAIRS:
        for beta in sorted({r["beta"] for r in results}):
            keys = sorted(s for m, bb, s in by if m == a and bb == beta and (b, beta, s) in by)
            if not keys:
                continue
            diffs = [by[(a, beta, s)]["reward"] - by[(b, beta, s)]["reward"] for s in keys]
            kl = [by[(a, beta, s)]["kl"] - by[(b, beta, s)]["kl"] for s in keys]
            lines.append(
                f"{a} - {b} (beta {beta:g}, seeds {keys}): reward {_mean_sd(diffs)} "
                f"[{', '.join(f'{d:+.2f}' for d in diffs)}], > 0 in {sum(d > 0 for d in diffs)}/{len(diffs)}; "
                f"KL {_mean_sd(kl)}"
            )
    return lines


if __name__ == "__main__":
    main()
