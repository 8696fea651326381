"""``plot_curves`` (``plot_run``: its path): training curves from ``metrics.jsonl`` to ``OUT/curves.png``
(matplotlib, Agg).

One panel per quantity: loss, reward margin, reward accuracy, and for MC-PO
runs the kernel entropy. Several run folders share the panels, one line each,
labelled with the folder name and loss, to compare methods on one figure.
A panel is drawn only if some run logged its quantity.

The PNG records what it was drawn from (a ``prefpool-plot`` text chunk: each
run folder's name and its ``metrics.jsonl`` sha256), written atomically: the
same plot again is a no-op, and a file that is not this plot (another PNG,
another run's metrics, anything else) is replaced only with ``overwrite``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prefpool.core.errors import ConfigError, InputError, MissingInputError, OutputExistsError
from prefpool.core.outputs import check_file
from prefpool.pipeline.io.atomic import atomic_path
from prefpool.pipeline.io.errors import PipelineInputError
from prefpool.pipeline.io.manifest import read_json_file
from prefpool.pipeline.io.out_folder import file_in_folder
from prefpool.pipeline.io.writer_lock import writes_folder

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
IDENTITY_KEY = "prefpool-plot"  # the PNG text chunk holding what the plot was drawn from


def _run_label(run_dir: Path) -> str:
    summary = run_dir / "train_summary.json"
    try:
        data = read_json_file(summary, "train summary") if summary.exists() else None
    except PipelineInputError:  # an unreadable summary only costs the label its loss name
        data = None
    loss = data.get("loss_name") if isinstance(data, dict) else None
    return f"{run_dir.name} ({loss})" if loss else run_dir.name


def _load(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise MissingInputError(f"{run_dir}: no metrics.jsonl (is it a `prefpool train` output_dir?)")
    records = read_metrics(path)
    if not records:
        raise InputError(f"{path}: no logged steps yet")
    return records


def _identity(dirs: list[Path]) -> str:
    runs = [
        {"run": d.name, "metrics_sha256": hashlib.sha256((d / "metrics.jsonl").read_bytes()).hexdigest()} for d in dirs
    ]
    return json.dumps({"runs": runs, "panels": [k for k, _ in PANELS]}, sort_keys=True)


def _drawn_from(path: Path) -> str | None:
    """The identity a PNG written by ``plot_run`` records; None for any other file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return getattr(image, "text", {}).get(IDENTITY_KEY)
    except (UnidentifiedImageError, OSError):
        return None


@dataclass(frozen=True)
class PlotSummary:
    out: Path
    up_to_date: bool  # the file already was this plot: nothing written

    def line(self) -> str:
        return f"plot: {self.out} is up to date; nothing to do" if self.up_to_date else f"plot: {self.out}"


def plot_run(
    run_dirs: str | Path | Sequence[str | Path], out: str | Path | None = None, *, overwrite: bool = False
) -> Path:
    """``plot_curves(...).out``: the PNG's path, ``OUT/curves.png``."""
    return plot_curves(run_dirs, out, overwrite=overwrite).out


@writes_folder(lambda a: a["out"], command="plot")
def plot_curves(
    run_dirs: str | Path | Sequence[str | Path], out: str | Path | None = None, *, overwrite: bool = False
) -> PlotSummary:
    """Draw training curves (loss, reward margin/accuracy, MC-PO kernel entropy) from metrics.jsonl to a PNG.

    Args:
        run_dirs: `prefpool train` output folders; several share one figure.
        out: Output folder: the figure goes to OUT/curves.png (the folder is made). Default: the first run folder.
        overwrite: Replace an existing OUT/curves.png that is not this plot of these runs' current metrics.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display; safe on servers and in tests
    import matplotlib.pyplot as plt

    dirs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(d) for d in run_dirs]
    if not dirs:
        raise ConfigError("plot_run: give at least one run folder")
    out = check_file(plot_file(dirs[0] if out is None else out))
    runs = [(_run_label(d), _load(d)) for d in dirs]
    identity = _identity(dirs)
    if out.exists():
        drawn = _drawn_from(out)
        if drawn == identity:
            return PlotSummary(out, True)  # this very plot: nothing to do
        if not overwrite:
            what = "a plot of other metrics" if drawn is not None else "a file that is not a prefpool plot"
            raise OutputExistsError(f"{out} holds {what}; pass --overwrite to replace it, or choose another --out")
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
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", metadata={IDENTITY_KEY: identity})
    plt.close(fig)
    return PlotSummary(out, False)


def plot_file(out: str | Path) -> Path:
    """``OUT/curves.png`` (``out``: a folder, or a new folder's name)."""
    return file_in_folder(out, PLOT_FILE, command="plot")
