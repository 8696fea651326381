"""The verdict tables and plots of the paired design (experiments/controlled/design.md), from its cell JSONs.

    python experiments/controlled/paired_summary.py --out runs/paired [--write PATH] [--figures DIR]

Reads ``OUT/cells/*.json`` (made by ``paired.py``). For every method, seed pair, β and noise arm, the
probe points of its valid runs over every learning rate form its reward-KL frontier, read at the
matched KLs (``prefpool.controlled.stats.reward_at_kl``). For every comparison of ``grid.COMPARISONS``,
arm, β and KL: the paired differences over the seed pairs where both frontiers reach that KL, their
clustered bootstrap interval and sign test (``verdict.read``). Then the verdict per comparison and arm
(``verdict.verdict``), and per result the conjunction of its primary comparisons. Writes markdown
(stdout, or ``--write``) and one plot per result (``OUT/figures/paired_<result>.png`` or ``--figures``).
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from prefpool.controlled.grid import ARMS, COMPARISONS, MATCHED_KL, NULL_BETA, PAIRWISE, RESULTS, Comparison
from prefpool.controlled.report import markdown_table
from prefpool.controlled.stats import Point, reward_at_kl
from prefpool.controlled.verdict import NOT_TESTABLE, REPRODUCED, Reading, Verdict, read, verdict

TITLES = {
    "main": "Main comparison: MC-PO against DPO with a random negative and every pairwise loss",
    "kernel": "Kernel ablation: sample against uniform, max and min",
    "noise": "Noise robustness: a garbage answer in every pool",
    "m": "M ablation: M = 1, 2, 3 sampled negatives, sample and uniform",
    "online": "OnMC-PO (one LR schedule across rounds) against offline MC-PO",
}
Key = tuple[str, int, int, float, str]  # (method, data seed, train seed, beta, arm)


def load_cells(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]


class Frontiers:
    """The probe points of every (method, seed pair, β, arm), over the valid runs of every learning rate."""

    def __init__(self, results: Iterable[dict]) -> None:
        self.points: dict[Key, list[Point]] = defaultdict(list)
        self.runs: dict[Key, int] = defaultdict(int)
        self.invalid: dict[Key, int] = defaultdict(int)
        self.kernel_kl: dict[tuple[str, float, str], list[float]] = defaultdict(list)
        for r in results:
            c = r["cell"]
            key = (c["method"], c["data_seed"], c["train_seed"], c["beta"], c["arm"])
            self.runs[key] += 1
            if r["kernel"]:
                self.kernel_kl[(c["method"], c["beta"], c["arm"])].append(r["kernel"]["mcpo/kernel_kl_uniform"])
            if r["invalid"]:
                self.invalid[key] += 1
                continue
            self.points[key] += [(rec["kl"], rec["reward"]) for rec in r["records"]]

    def pairs(self) -> list[tuple[int, int]]:
        return sorted({(d, t) for (_, d, t, _, _) in self.runs})

    def betas(self) -> list[float]:
        return sorted({b for (_, _, _, b, _) in self.runs})

    def arms(self) -> list[str]:
        return [a for a in ARMS if any(k[4] == a for k in self.runs)]

    def at(self, method: str, pair: tuple[int, int], beta: float, arm: str, kl: float) -> float | None:
        return reward_at_kl(self.points.get((method, *pair, beta, arm), []), kl)

    def difference(self, c: Comparison, pair: tuple[int, int], beta: float, arm: str, kl: float) -> float | None:
        values = [self.at(m, pair, beta, arm, kl) for m in c.methods()]
        if any(v is None for v in values):
            return None
        diff = values[0] - values[1]
        return diff if c.c is None else diff - (values[2] - values[3])


def readings(f: Frontiers, c: Comparison, arm: str, beta: float) -> list[Reading]:
    """One reading per matched KL: the paired differences over the seed pairs, clustered by data seed."""
    out = []
    for kl in MATCHED_KL:
        diffs, clusters = [], []
        for pair in f.pairs():
            d = f.difference(c, pair, beta, arm, kl)
            if d is not None:
                diffs.append(d)
                clusters.append(pair[0])
        out.append(read(diffs, clusters))
    return out


def comparison_verdict(f: Frontiers, c: Comparison, arm: str) -> tuple[Verdict, dict[float, list[Reading]]]:
    by_beta = {beta: readings(f, c, arm, beta) for beta in f.betas()}
    test = [r for beta, rs in by_beta.items() if beta != NULL_BETA for r in rs]
    null = by_beta.get(NULL_BETA) if c.null_control else None
    return verdict(test, null), by_beta


def result_outcome(verdicts: list[Verdict]) -> str:
    """A result's verdict in one arm: reproduced when every primary comparison is, not testable when one is not
    testable, else not reproduced."""
    if any(v.outcome == NOT_TESTABLE for v in verdicts):
        return NOT_TESTABLE
    if all(v.outcome == REPRODUCED for v in verdicts):
        return REPRODUCED
    return "not reproduced"


def across_arms(std: str, low: str | None) -> str:
    """What the two noise arms together say."""
    if low is None:
        return f"{std} (today's labels; low-noise arm not run)"
    if std == REPRODUCED and low == REPRODUCED:
        return "reproduced with both annotators"
    if std != REPRODUCED and low == REPRODUCED:
        return "reproduced with low-noise labels only: false negatives in today's labels hide it"
    if std == REPRODUCED:
        return "reproduced with today's labels only"
    if NOT_TESTABLE in (std, low):
        return f"today's labels: {std}; low noise: {low}"
    return "not reproduced with either annotator: the kernel does not help here"


def summarize(results: list[dict], figures: Path | None = None, links_from: Path | None = None) -> tuple[str, dict]:
    """Markdown of every table, and ``{result: {arm: outcome}}``; plots into ``figures`` when given, linked
    relative to ``links_from`` (the folder the markdown is written to) when given."""
    f = Frontiers(results)
    lines = [f"{len(results)} cells; seed pairs {f.pairs()}; β {f.betas()}; arms {f.arms()}", ""]
    outcomes: dict[str, dict[str, str]] = {}
    for result in RESULTS:
        comparisons = [c for c in COMPARISONS if c.result == result]
        if not any(
            f.runs.get((c.a, *p, b, a)) for c in comparisons for p in f.pairs() for b in f.betas() for a in ARMS
        ):
            continue
        lines += [f"### {TITLES[result]}", ""]
        rows, verdict_rows, primary, plotted = [], [], defaultdict(list), []
        for c in comparisons:
            for arm in f.arms():
                v, by_beta = comparison_verdict(f, c, arm)
                for beta, rs in by_beta.items():
                    rows.append(
                        [c.label, arm, f"{beta:g}" + (" (null)" if beta == NULL_BETA else ""), *(r.cell() for r in rs)]
                    )
                    if c.b not in PAIRWISE:  # 17 lines more would hide the rest: the tables hold them
                        plotted.append((c, arm, beta, rs))
                upper = "-" if v.largest_high is None else f"{v.largest_high:+.2f}"
                verdict_rows.append([c.label, "primary" if c.primary else "", arm, v.outcome, v.reason, upper])
                if c.primary:
                    primary[arm].append(v)
        header = ["comparison", "arm", "β", *(f"KL {k:g}" for k in MATCHED_KL)]
        lines += [markdown_table(header, rows), ""]
        lines += [markdown_table(["comparison", "", "arm", "verdict", "why", "largest upper end"], verdict_rows), ""]
        outcomes[result] = {arm: result_outcome(vs) for arm, vs in primary.items()}
        std, low = outcomes[result].get("std", NOT_TESTABLE), outcomes[result].get("low")
        lines += [f"**Verdict ({result}):** {across_arms(std, low)}.", ""]
        if figures is not None:
            plot_result(result, plotted, figures / f"paired_{result}.png")
            methods = list(dict.fromkeys(m for c in comparisons for m in c.methods()))
            plot_frontiers(f, result, methods, figures / f"paired_{result}_frontier.png")
            plots = ((f"paired_{result}.png", result), (f"paired_{result}_frontier.png", f"{result}, frontiers"))
            for name, alt in plots:
                link = figures / name if links_from is None else Path(os.path.relpath(figures / name, links_from))
                lines += [f"![{alt}]({link.as_posix()})", ""]
    lines += validity_lines(f)
    return "\n".join(lines) + "\n", outcomes


def validity_lines(f: Frontiers) -> list[str]:
    rows = []
    for (method, beta, arm), kls in sorted(f.kernel_kl.items()):
        invalid = sum(n for (m, _, _, b, a), n in f.invalid.items() if (m, b, a) == (method, beta, arm))
        runs = sum(n for (m, _, _, b, a), n in f.runs.items() if (m, b, a) == (method, beta, arm))
        rows.append([method, f"{beta:g}", arm, f"{sum(kls) / len(kls):.3f}", f"{min(kls):.3f}", f"{invalid} of {runs}"])
    if not rows:
        return []
    header = ["method", "β", "arm", "kernel KL to uniform, mean", "min", "invalid runs"]
    return [
        "### The kernel's KL to uniform (mean over each run's steps) and invalid runs",
        "",
        markdown_table(header, rows),
    ]


def plot_result(result: str, plotted: list, out: Path) -> Path:
    """Per arm, the mean paired difference and its interval against the matched KL; a line per comparison and β."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(arm for _, arm, _, _ in plotted))
    fig, axes = plt.subplots(1, len(arms), figsize=(6 * len(arms), 4), squeeze=False)
    for ax, arm in zip(axes[0], arms, strict=True):
        lines = [p for p in plotted if p[1] == arm]
        for i, (c, _arm, beta, rs) in enumerate(lines):
            # side by side within ±8 % of the matched KL, however many lines there are
            shift = 1 + 0.16 * (i / (len(lines) - 1) - 0.5) if len(lines) > 1 else 1
            xs = [k * shift for k, r in zip(MATCHED_KL, rs, strict=True) if r.mean is not None]
            got = [r for r in rs if r.mean is not None]
            if not got:
                continue
            means = [r.mean for r in got]
            err = [[r.mean - r.low for r in got], [r.high - r.mean for r in got]]
            ax.errorbar(xs, means, yerr=err, marker="o", ms=3, capsize=2, label=f"{c.label}, β {beta:g}")
        ax.axhline(0, color="gray", lw=0.8)
        ax.set(xscale="log", xlabel="matched KL to the reference, nats", ylabel="paired reward difference", title=arm)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.suptitle(TITLES[result], fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


FRONTIER_GRID = tuple(k / 20 for k in range(61))  # 0 to 3 nats


def plot_frontiers(f: Frontiers, result: str, methods: list[str], out: Path) -> Path:
    """Per arm and β, each method's reward at KL k (the frontier reading) averaged over the seed pairs,
    drawn where every pair with a valid run reaches k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(arm, beta) for arm in f.arms() for beta in f.betas()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
    for ax, (arm, beta) in zip(axes[0], panels, strict=True):
        for method in methods:
            pairs = [p for p in f.pairs() if f.points.get((method, *p, beta, arm))]
            xs, ys = [], []
            for k in FRONTIER_GRID:
                values = [f.at(method, p, beta, arm, k) for p in pairs]
                if values and all(v is not None for v in values):
                    xs.append(k)
                    ys.append(sum(values) / len(values))
            if xs:
                ax.plot(xs, ys, label=f"{method} ({len(pairs)} pairs)")
        for k in MATCHED_KL:
            ax.axvline(k, color="gray", lw=0.6, ls=":")
        ax.set(xlabel="KL to the reference, nats", ylabel="true reward (frontier)", title=f"{arm}, β {beta:g}")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.suptitle(TITLES[result] + ": mean frontier over seed pairs", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--write", type=Path, help="also write the markdown here")
    parser.add_argument("--figures", type=Path, help="plot folder (default OUT/figures)")
    args = parser.parse_args(argv)
    results = load_cells(args.out)
    if not results:
        raise SystemExit(f"error: no cell results in {args.out / 'cells'}; run paired.py first")
    text, _ = summarize(results, args.figures or args.out / "figures", args.write.parent if args.write else None)
    print(text)
    if args.write:
        args.write.write_text(text)


if __name__ == "__main__":
    main()
