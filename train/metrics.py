"""Per-step training metrics: reduce a step's per-example metrics, measure memory, append JSONL lines."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import torch


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated GPU memory on CUDA; the process's RSS high-water mark on CPU, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def reduce_step(losses: torch.Tensor, metrics: dict[str, torch.Tensor]) -> dict:
    """Means of the per-example ``losses`` ``(N,)`` and ``metrics`` (each ``(N,)``) over one optimizer step.

    ``mcpo/selected`` becomes ``mcpo/selected_hist``, a histogram of the picked pool slots (one bin per
    slot of the widest pool); draws of the preferred answer itself (index -1, the paper's kernel) are
    not in it: ``mcpo/chosen_drawn`` is their rate.
    """
    record: dict[str, object] = {"loss": losses.double().mean().item()}
    for name, values in metrics.items():
        if name == "mcpo/selected":
            width = int(metrics["mcpo/num_candidates"].max()) if "mcpo/num_candidates" in metrics else 0
            picks = values.long().cpu()
            record["mcpo/selected_hist"] = torch.bincount(picks[picks >= 0], minlength=width).tolist()
            continue
        record[name] = values.double().mean().item()
    return record


def tracker_scalars(record: dict) -> dict[str, float]:
    """The numeric values of a ``metrics.jsonl`` record, for the trackers (which take scalars only).

    ``step`` is the x axis, not a scalar; lists (``mcpo/selected_hist``), ``None`` (``grad_norm``
    without clipping) and booleans are left out. Values are the same floats metrics.jsonl holds.
    """
    return {
        name: value
        for name, value in record.items()
        if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


class MetricsLog:
    """``metrics.jsonl``: one JSON object per logged step; a resumed run drops lines after its start step."""

    def __init__(self, path: Path, *, resume_step: int | None) -> None:
        self.path = path
        if resume_step is None:
            path.write_text("")
        elif path.exists():
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]
