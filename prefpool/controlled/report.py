"""Plots and a markdown table for runs probed on the controlled task."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def plot_probe_curves(runs: Mapping[str, Sequence[dict]], out: str | Path, *, title: str = "") -> Path:
    """True reward and KL(π‖π_ref) of fresh samples against training steps, and reward against KL;
    one line per run (shaded: ± one standard error). Returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_k, ax_f) = plt.subplots(1, 3, figsize=(13, 3.8))
    for name, records in runs.items():
        steps = [r["step"] for r in records]
        for ax, key in ((ax_r, "reward"), (ax_k, "kl")):
            mean = [r[key] for r in records]
            se = [r[f"{key}_se"] for r in records]
            (line,) = ax.plot(steps, mean, marker="o", ms=3, label=name)
            ax.fill_between(
                steps,
                [m - s for m, s in zip(mean, se, strict=True)],
                [m + s for m, s in zip(mean, se, strict=True)],
                color=line.get_color(),
                alpha=0.2,
            )
        ax_f.plot([r["kl"] for r in records], [r["reward"] for r in records], marker="o", ms=3, label=name)
    ax_r.set(xlabel="training step", ylabel="true reward of fresh samples", title="reward")
    ax_k.set(xlabel="training step", ylabel="KL(policy ‖ reference), nats", title="KL to the reference")
    ax_f.set(xlabel="KL(policy ‖ reference), nats", ylabel="true reward", title="reward against KL")
    for ax in (ax_r, ax_k, ax_f):
        ax.grid(alpha=0.3)
    ax_r.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
