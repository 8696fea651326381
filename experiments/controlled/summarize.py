"""Tables (mean ± std over seeds) and plots of the controlled-task experiments.

    python experiments/controlled/summarize.py --out runs/experiments [--write experiments/controlled/results.md]

Reads ``OUT/seed-*/runs/<experiment>/<run>/probe.jsonl`` (made by ``run.py``)
and prints one markdown table per experiment: the final true reward and KL to
the reference of fresh samples for the held-out topics, the training time, and
the true reward at equal wall time (interpolated at the shortest run's training
time in that experiment). Plots go to ``OUT/figures/``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from prefpool.controlled.report import markdown_table, plot_probe_curves

ORDER = {
    "kernels": ["sample", "uniform", "max-margin", "max", "min", "expectation"],
    "pool_size": ["M1", "M2", "M4", "M8"],
    "garbage": ["dpo-garbage", "dpo-random", "mcpo"],
    "mpo": ["mpo", "mpo-tau0", "dpo", "ipo"],
    "online": ["offline-mcpo", "onmcpo"],
}
LABELS = {
    "kernels": {
        "sample": "MC-PO, sample kernel",
        "uniform": "DPO, random rejected (uniform)",
        "max-margin": "DPO, max-margin rejected (lowest true reward)",
        "max": "MC-PO, max kernel",
        "min": "MC-PO, min kernel",
        "expectation": "MC-PO, expectation (listwise)",
    },
    "garbage": {
        "dpo-garbage": "DPO, garbage as rejected",
        "dpo-random": "DPO, random rejected",
        "mcpo": "MC-PO, sample kernel",
    },
    "mpo": {"mpo": "MPO (tau 0.1)", "mpo-tau0": "MPO without the tau term", "dpo": "DPO", "ipo": "IPO"},
    "online": {"offline-mcpo": "MC-PO offline", "onmcpo": "OnMC-PO, 2 rounds"},
}


def load_runs(out: Path) -> dict[str, dict[str, dict[int, list[dict]]]]:
    """experiment -> run -> seed -> probe records, of the runs that reached their last step."""
    settings = json.loads((out / "settings.json").read_text())
    runs: dict = {}
    for path in sorted(out.glob("seed-*/runs/*/*/probe.jsonl")):
        seed = int(path.parts[-5].split("-")[1])
        experiment, name = path.parts[-3], path.parts[-2]
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        steps = settings["long_steps"] if experiment == "mpo" else settings["steps"]
        if records and records[-1]["step"] >= steps:
            runs.setdefault(experiment, {}).setdefault(name, {})[seed] = records
    # shared runs: M=8 is kernels/sample; offline MC-PO of the online experiment too
    if "kernels" in runs and "sample" in runs["kernels"]:
        if "pool_size" in runs:
            runs["pool_size"]["M8"] = runs["kernels"]["sample"]
        if "online" in runs:
            runs["online"]["offline-mcpo"] = runs["kernels"]["sample"]
    return runs


def mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0


def fmt(values: list[float], digits: int = 2, sign: bool = True) -> str:
    mean, std = mean_std(values)
    return f"{mean:{'+' if sign else ''}.{digits}f} ± {std:.{digits}f}" if values else "-"


def at_time(records: list[dict], seconds: float, key: str = "reward") -> float:
    """``key`` linearly interpolated at ``seconds`` of training time."""
    for a, b in zip(records, records[1:], strict=False):
        if a["train_seconds"] <= seconds <= b["train_seconds"]:
            span = b["train_seconds"] - a["train_seconds"]
            w = 0.0 if span == 0 else (seconds - a["train_seconds"]) / span
            return a[key] + w * (b[key] - a[key])
    return records[-1][key]


def at_step(records: list[dict], step: int) -> dict | None:
    return next((r for r in records if r["step"] == step), None)


def averaged(by_seed: dict[int, list[dict]]) -> list[dict]:
    """Seed-mean records at the steps every seed has; *_se = std over seeds / sqrt(seeds)."""
    steps = sorted(set.intersection(*({r["step"] for r in recs} for recs in by_seed.values())))
    out = []
    for step in steps:
        rows = [at_step(recs, step) for recs in by_seed.values()]
        record = {"step": step}
        for key in ("reward", "kl", "train_seconds"):
            mean, std = mean_std([r[key] for r in rows])
            record[key], record[f"{key}_se"] = mean, std / math.sqrt(len(rows))
        out.append(record)
    return out


def experiment_table(experiment: str, runs: dict[str, dict[int, list[dict]]]) -> str:
    order = ORDER.get(experiment, sorted(runs))
    names = [n for n in order if n in runs] + [n for n in sorted(runs) if n not in order]
    equal_time = min(recs[-1]["train_seconds"] for n in names for recs in runs[n].values())
    rows = []
    for name in names:
        by_seed = runs[name]
        finals = [recs[-1] for recs in by_seed.values()]
        label = LABELS.get(experiment, {}).get(name, name)
        rows.append(
            [
                label,
                len(by_seed),
                finals[0]["step"],
                fmt([f["reward"] for f in finals]),
                fmt([f["kl"] for f in finals], sign=False),
                fmt([at_time(recs, equal_time) for recs in by_seed.values()]),
                f"{mean_std([f['train_seconds'] for f in finals])[0]:.1f}",
            ]
        )
    header = [
        "run",
        "seeds",
        "steps",
        "true reward",
        "KL to reference",
        f"true reward at {equal_time:.1f} s",
        "training s",
    ]
    return markdown_table(header, rows)


def kl_trajectory_table(runs: dict[str, dict[int, list[dict]]], names: list[str]) -> str:
    steps = [r["step"] for r in averaged(runs[names[0]])]
    rows = []
    for name in names:
        avg = {r["step"]: r for r in averaged(runs[name])}
        rows.append([name] + [f"{avg[s]['kl']:.2f} / {avg[s]['reward']:+.2f}" if s in avg else "-" for s in steps])
    return markdown_table(["KL / true reward at step"] + [str(s) for s in steps], rows)


def frontier_plot(runs: dict[str, dict[int, list[dict]]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    colors = {"dpo-random": "tab:blue", "mcpo": "tab:orange", "mpo": "tab:green"}
    for method, color in colors.items():
        xs, ys = [], []
        for name, by_seed in runs.items():
            if name.split("_beta")[0] != method:
                continue
            for r in averaged(by_seed)[1:]:
                xs.append(r["kl"])
                ys.append(r["reward"])
        ax.scatter(xs, ys, s=14, color=color, label=method, alpha=0.8)
    ax.set(
        xscale="symlog",
        xlabel="KL(policy ‖ reference), nats (symlog)",
        ylabel="true reward of fresh samples",
        title="reward-KL frontier: every probe point, every beta (seed means)",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def kernel_entropy_table(out: Path, last: int = 10) -> str:
    """The MC-PO kernel's entropy (``mcpo/entropy`` in the trainer's metrics.jsonl), mean over the
    last ``last`` steps, per seed, for every run that logged it; and log(pool width), a uniform pick's."""
    found: dict[str, dict[int, tuple[float, float]]] = {}
    for path in sorted(out.glob("seed-*/runs/*/*/metrics.jsonl")):
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        tail = [r for r in records[-last:] if r.get("mcpo/entropy") is not None]
        if not tail:
            continue
        seed, run = int(path.parts[-5].split("-")[1]), f"{path.parts[-3]}/{path.parts[-2]}"
        entropy = sum(r["mcpo/entropy"] for r in tail) / len(tail)
        found.setdefault(run, {})[seed] = (entropy, math.log(max(r["mcpo/num_candidates"] for r in tail)))
    rows = [
        [run, ", ".join(f"{by_seed[s][0]:.3f}" for s in sorted(by_seed)), f"{max(v[1] for v in by_seed.values()):.3f}"]
        for run, by_seed in sorted(found.items())
    ]
    return markdown_table(["run", f"kernel entropy, last {last} steps, per seed (nats)", "log(pool width)"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/experiments"))
    parser.add_argument("--write", type=Path, default=None, help="Also write the tables to this markdown file.")
    parser.add_argument("--figures", type=Path, default=None, help="Plot folder (default OUT/figures).")
    args = parser.parse_args()
    runs = load_runs(args.out)
    figures = args.figures or args.out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    parts = []
    for experiment in ("kernels", "pool_size", "garbage", "mpo", "online", "frontier"):
        if experiment not in runs:
            continue
        parts.append(f"### {experiment}\n\n" + experiment_table(experiment, runs[experiment]))
        if experiment == "mpo":
            parts.append(kl_trajectory_table(runs[experiment], [n for n in ORDER["mpo"] if n in runs["mpo"]]))
        if experiment == "frontier":
            frontier_plot(runs[experiment], figures / "frontier.png")
        else:
            curves = {
                LABELS.get(experiment, {}).get(n, n): averaged(by_seed) for n, by_seed in runs[experiment].items()
            }
            plot_probe_curves(
                curves, figures / f"{experiment}.png", title=f"{experiment}: seed means, band = ± std error over seeds"
            )
    parts.append("### MC-PO kernel entropy\n\n" + kernel_entropy_table(args.out))
    text = "\n".join(parts)
    print(text)
    if args.write:
        args.write.write_text(text)


if __name__ == "__main__":
    main()
