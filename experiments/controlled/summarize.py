"""Tables (mean ± std over seeds) and plots of the controlled-task experiments.

    python experiments/controlled/summarize.py --out runs/experiments [--write experiments/controlled/results.md]

Reads ``OUT/seed-*/runs/<experiment>/<run>/probe.jsonl`` (made by ``run.py``)
and prints one markdown table per experiment: the final true reward and KL to
the reference of fresh samples for the held-out topics, the training time, and
the true reward at equal wall time (interpolated at the shortest run's training
time in that experiment). Then the MC-PO kernel's diagnostics from each run's
``metrics.jsonl`` (the trainer logs them every step), and for the beta sweep
(``frontier``) the reward-KL frontier read at matched KL: per seed, the best
true reward of any probe point (any beta, any step) whose KL is at most k.
Plots go to ``OUT/figures/`` (or ``--figures``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from prefpool.controlled.report import markdown_table, plot_probe_curves

# Kernels of the beta sweep (run.py's FRONTIER_KERNELS), and MPO beside them.
FRONTIER_METHODS = ["sample", "sample_pool", "uniform", "rao_blackwell", "listwise", "mpo"]
MATCHED_KL = (1.0, 2.0, 5.0, 10.0, 20.0)
DIAGNOSTICS = {  # metrics.jsonl key -> column
    "mcpo/kernel_kl_uniform": "KL(K ‖ uniform)",
    "mcpo/kernel_top_prob": "top prob",
    "mcpo/kernel_chosen_prob": "K_0",
    "mcpo/chosen_drawn": "y_0 drawn",
    "mcpo/pool_reward_std": "β·std(log-ratio)",
    "mcpo/entropy": "entropy",
}
ORDER = {
    "kernels": ["sample", "sample_pool", "uniform", "max-margin", "max", "min", "listwise", "rao_blackwell"],
    "pool_size": ["M1", "M2", "M4", "M8"],
    "garbage": ["dpo-garbage", "dpo-random", "mcpo"],
    "mpo": ["mpo", "mpo-tau0", "dpo", "ipo"],
    "online": ["offline-mcpo", "onmcpo"],
}
LABELS = {
    "kernels": {
        "sample": "MC-PO, sample kernel (paper's: {y0} ∪ pool)",
        "sample_pool": "MC-PO, sample_pool (pool only)",
        "uniform": "DPO, random rejected (uniform)",
        "max-margin": "DPO, max-margin rejected (lowest true reward)",
        "max": "MC-PO, max kernel",
        "min": "MC-PO, min kernel",
        "listwise": "MC-PO, listwise",
        "rao_blackwell": "MC-PO, rao_blackwell",
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
    # shared runs: M=8 is kernels/sample; offline MC-PO of the online experiment too; the beta sweep
    # at the default beta is the kernels experiment (run.py does not rerun it)
    kernels = runs.get("kernels", {})
    if "sample" in kernels:
        if "pool_size" in runs:
            runs["pool_size"]["M8"] = kernels["sample"]
        if "online" in runs:
            runs["online"]["offline-mcpo"] = kernels["sample"]
    if "frontier" in runs:
        for kernel in FRONTIER_METHODS:
            if kernel in kernels:
                runs["frontier"].setdefault(f"{kernel}_beta{settings['beta']}", kernels[kernel])
    return runs


def load_diagnostics(out: Path, last: int = 10) -> dict[str, dict[str, dict[int, dict[str, float]]]]:
    """experiment -> run -> seed -> the kernel diagnostics (``DIAGNOSTICS``) averaged over the last
    ``last`` logged steps of ``metrics.jsonl``, plus ``log_support`` (log of the kernel's support
    size: pool width, + 1 for the kernels that can draw y0), for every run that logged them."""
    found: dict = {}
    for path in sorted(out.glob("seed-*/runs/*/*/metrics.jsonl")):
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        tail = [r for r in records[-last:] if r.get("mcpo/kernel_kl_uniform") is not None]
        if not tail:
            continue
        seed, experiment, name = int(path.parts[-5].split("-")[1]), path.parts[-3], path.parts[-2]
        values = {key: sum(r[key] for r in tail) / len(tail) for key in DIAGNOSTICS}
        # KL to uniform = log|support| - entropy, so the support size is recovered from the two
        values["log_support"] = values["mcpo/kernel_kl_uniform"] + values["mcpo/entropy"]
        found.setdefault(experiment, {}).setdefault(name, {})[seed] = values
    return found


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


def _beta(name: str) -> float:
    return float(name.split("_beta")[1])


def _method(name: str) -> str:
    return name.split("_beta")[0]


def _frontier_names(runs: dict[str, dict[int, list[dict]]]) -> list[str]:
    return sorted(
        (n for n in runs if _method(n) in FRONTIER_METHODS),
        key=lambda n: (FRONTIER_METHODS.index(_method(n)), _beta(n)),
    )


def best_reward_within(records: list[dict], kl: float) -> float:
    """The highest true reward among ``records`` whose KL is at most ``kl`` (step 0, KL 0, always is)."""
    return max(r["reward"] for r in records if r["kl"] <= kl)


def matched_kl_table(runs: dict[str, dict[int, list[dict]]]) -> str:
    """Per method: mean ± std over seeds of the best true reward reached within each KL budget, over
    every probe point of every beta (each method has the same number of points per seed)."""
    rows = []
    for method in FRONTIER_METHODS:
        names = [n for n in _frontier_names(runs) if _method(n) == method]
        if not names:
            continue
        seeds = sorted(set.intersection(*(set(runs[n]) for n in names)))
        cells = []
        for kl in MATCHED_KL:
            cells.append(fmt([best_reward_within([r for n in names for r in runs[n][s]], kl) for s in seeds]))
        rows.append([method, len(seeds), len(names), *cells])
    header = ["method", "seeds", "betas", *(f"best reward, KL ≤ {k:g}" for k in MATCHED_KL)]
    return markdown_table(header, rows)


def frontier_table(runs: dict[str, dict[int, list[dict]]], diagnostics: dict[str, dict[int, dict]]) -> str:
    """Per method and beta: final true reward and KL (mean ± std over seeds) and the kernel's
    diagnostics over the last 10 steps (seed means)."""
    rows = []
    for name in _frontier_names(runs):
        finals = [recs[-1] for recs in runs[name].values()]
        diag = diagnostics.get(name, {})
        cells = [
            f"{sum(d[key] for d in diag.values()) / len(diag):.3f}" if diag else "-"
            for key in ("mcpo/kernel_kl_uniform", "mcpo/kernel_top_prob", "mcpo/chosen_drawn", "mcpo/pool_reward_std")
        ]
        rows.append(
            [
                _method(name),
                f"{_beta(name):g}",
                fmt([f["reward"] for f in finals]),
                fmt([f["kl"] for f in finals], sign=False),
                *cells,
            ]
        )
    header = [
        "method",
        "β",
        "true reward",
        "KL to reference",
        "KL(K ‖ uniform)",
        "top prob",
        "y_0 drawn",
        "β·std(log-ratio)",
    ]
    return markdown_table(header, rows)


def diagnostics_table(diagnostics: dict[str, dict[str, dict[int, dict[str, float]]]], experiments: list[str]) -> str:
    """Every MC-PO run's kernel diagnostics over its last 10 steps: mean ± std over seeds."""
    rows = []
    for experiment in experiments:
        for name, by_seed in sorted(diagnostics.get(experiment, {}).items()):
            values = list(by_seed.values())
            rows.append(
                [f"{experiment}/{name}", len(values), f"{sum(v['log_support'] for v in values) / len(values):.3f}"]
                + [fmt([v[key] for v in values], digits=3, sign=False) for key in DIAGNOSTICS]
            )
    return markdown_table(["run", "seeds", "log|support|", *DIAGNOSTICS.values()], rows)


def frontier_plot(runs: dict[str, dict[int, list[dict]]], diagnostics: dict[str, dict[int, dict]], out: Path) -> Path:
    """Left: every probe point (seed means) of every beta, per method, and the seed-mean best reward
    within a KL budget (lines). Right: the kernel's KL to uniform and top probability against beta."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_kl, ax_top) = plt.subplots(1, 3, figsize=(15, 4.4), gridspec_kw={"width_ratios": [1.6, 1, 1]})
    colors = dict(zip(FRONTIER_METHODS, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    budgets = [0.5, 1, 2, 3, 5, 7, 10, 15, 20, 30, 50]
    for method in FRONTIER_METHODS:
        names = [n for n in _frontier_names(runs) if _method(n) == method]
        if not names:
            continue
        points = [r for n in names for r in averaged(runs[n])[1:]]
        ax.scatter([r["kl"] for r in points], [r["reward"] for r in points], s=10, alpha=0.5, color=colors[method])
        seeds = sorted(set.intersection(*(set(runs[n]) for n in names)))
        envelope = [
            mean_std([best_reward_within([r for n in names for r in runs[n][s]], k) for s in seeds])[0] for k in budgets
        ]
        ax.plot(budgets, envelope, color=colors[method], label=method)
        if method == "mpo":
            continue
        betas = [_beta(n) for n in names if n in diagnostics]
        for axis, key in ((ax_kl, "mcpo/kernel_kl_uniform"), (ax_top, "mcpo/kernel_top_prob")):
            means = [mean_std([d[key] for d in diagnostics[n].values()])[0] for n in names if n in diagnostics]
            axis.plot(betas, means, marker="o", color=colors[method], label=method)
    ax.set(
        xscale="symlog",
        xlabel="KL(policy ‖ reference), nats (symlog)",
        ylabel="true reward of fresh samples",
        title="points: every probe, every β (seed means); lines: best reward within KL",
    )
    ax_kl.set(xscale="log", xlabel="β", ylabel="nats", title="kernel KL to uniform, last 10 steps")
    ax_top.set(xscale="log", xlabel="β", ylabel="max_i K_i", title="kernel top probability, last 10 steps")
    for axis in (ax, ax_kl, ax_top):
        axis.grid(alpha=0.3)
        axis.title.set_fontsize(9)
    ax.legend(fontsize=8)
    ax_kl.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/experiments"))
    parser.add_argument("--write", type=Path, default=None, help="Also write the tables to this markdown file.")
    parser.add_argument("--figures", type=Path, default=None, help="Plot folder (default OUT/figures).")
    args = parser.parse_args()
    runs = load_runs(args.out)
    diagnostics = load_diagnostics(args.out)
    beta = json.loads((args.out / "settings.json").read_text())["beta"]
    for kernel in FRONTIER_METHODS:  # the sweep's runs at the default beta are the kernels experiment's
        if kernel in diagnostics.get("kernels", {}):
            diagnostics.setdefault("frontier", {}).setdefault(f"{kernel}_beta{beta}", diagnostics["kernels"][kernel])
    figures = args.figures or args.out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    parts = []
    for experiment in ("kernels", "pool_size", "garbage", "mpo", "online", "frontier"):
        if experiment not in runs:
            continue
        if experiment == "frontier":
            parts.append("### frontier: matched KL\n\n" + matched_kl_table(runs[experiment]))
            parts.append(frontier_table(runs[experiment], diagnostics.get("frontier", {})))
            frontier_plot(runs[experiment], diagnostics.get("frontier", {}), figures / "frontier.png")
            continue
        parts.append(f"### {experiment}\n\n" + experiment_table(experiment, runs[experiment]))
        if experiment == "mpo":
            parts.append(kl_trajectory_table(runs[experiment], [n for n in ORDER["mpo"] if n in runs["mpo"]]))
        curves = {LABELS.get(experiment, {}).get(n, n): averaged(by_seed) for n, by_seed in runs[experiment].items()}
        plot_probe_curves(
            curves, figures / f"{experiment}.png", title=f"{experiment}: seed means, band = ± std error over seeds"
        )
    parts.append(
        "### MC-PO kernel diagnostics (last 10 steps; mean ± std over seeds)\n\n"
        + diagnostics_table(diagnostics, ["kernels", "pool_size", "garbage"])
    )
    text = "\n".join(parts)
    print(text)
    if args.write:
        args.write.write_text(text)


if __name__ == "__main__":
    main()
