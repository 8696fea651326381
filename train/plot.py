"""``plot_run(run_dirs, out)``: training curves from ``metrics.jsonl`` to ``OUT/curves.png`` (matplotlib, Agg).

One panel per quantity: loss, reward margin, reward accuracy, and for MC-PO
runs the kernel entropy. Several run folders share the panels, one line each,
labelled with the folder name and loss, to compare methods on one figure.
A panel is drawn only if some run logged its quantity.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from prefpool.core.errors import ConfigError, InputError, MissingInputError
from prefpool.pipeline.io.atomic import atomic_path
from prefpool.pipeline.io.out_folder import file_in_folder

from .metrics import read_metrics

# (metrics.jsonl key, panel title); the order of the panels.
PANELS: tuple[tuple[str, str], ...] = (
    ("loss", "loss"),
    ("rewards/margins", "reward margin (chosen - rejected)"),
    ("rewards/accuracies", "reward accuracy"),
    ("mcpo/entropy", "MC-PO kernel entropy (nats)"),
)
PANEL_SIZE = (4.0, 3.0)  # inches, one panel
DPI = 100
PLOT_FILE = "curves.png"  # what `plot --out FOLDER` writes into FOLDER


def _run_label(run_dir: Path) -> str:
    summary = run_dir / "train_summary.json"
    loss = json.loads(summary.read_text()).get("loss_name") if summary.exists() else None
    return f"{run_dir.name} ({loss})" if loss else run_dir.name


def _load(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise MissingInputError(f"{run_dir}: no metrics.jsonl (is it a `prefpool train` output_dir?)")
    records = read_metrics(path)
    if not records:
        raise InputError(f"{path}: no logged steps yet")
    return records


def plot_run(run_dirs: str | Path | Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Draw training curves (loss, reward margin/accuracy, MC-PO kernel entropy) from metrics.jsonl to a PNG.

    Returns the PNG's path, ``OUT/curves.png``.

    Args:
        run_dirs: `prefpool train` output folders; several share one figure.
        out: Output folder: the figure goes to OUT/curves.png (the folder is made; the file replaced). Default: the
            first run folder.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display; safe on servers and in tests
    import matplotlib.pyplot as plt

    dirs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(d) for d in run_dirs]
    if not dirs:
        raise ConfigError("plot_run: give at least one run folder")
    target = plot_file(dirs[0] if out is None else out)
    runs = [(_run_label(d), _load(d)) for d in dirs]
    panels = [(key, title) for key, title in PANELS if any(key in r for _, records in runs for r in records)]

    fig, axes = plt.subplots(
        1, len(panels), figsize=(PANEL_SIZE[0] * len(panels), PANEL_SIZE[1]), dpi=DPI, squeeze=False
    )
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        for label, records in runs:
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, marker="." if len(points) < 30 else None, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return target


def plot_file(out: str | Path) -> Path:
    """``OUT/curves.png`` (``out``: a folder, or a new folder's name)."""
    return file_in_folder(out, PLOT_FILE, command="plot")
