"""Per-step training metrics: reduce a step's per-example metrics, measure memory, append JSONL lines."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import torch

from prefpool.core.errors import InputError
from prefpool.core.secrets import redact
from prefpool.pipeline.io.atomic import write_text


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
    """``metrics.jsonl``: one JSON object per logged step; a resumed run drops lines after its start step.

    The file is (re)started atomically; a line cut short by a kill (the last one) is dropped on resume.
    Records are redacted like every file prefpool writes.
    """

    def __init__(self, path: Path, *, resume_step: int | None) -> None:
        self.path = path
        if resume_step is None:
            write_text(path, "")
        elif path.exists():
            lines = path.read_text(errors="replace").splitlines()  # a damaged line is dropped, as one cut short
            kept = [line for line in lines if _step_of(line, resume_step)]
            write_text(path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(redact(record)) + "\n")


def _step_of(line: str, resume_step: int) -> bool:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return False  # cut short by a kill
    return isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= resume_step


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl``; a line that is not a JSON object is an ``InputError`` naming it."""
    records = []
    for number, line in enumerate(Path(path).read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(
                f"{path}, line {number}: not a JSON record ({exc.msg}): not a metrics.jsonl line"
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise InputError(f"{path}, line {number}: a metrics record must be a JSON object with an integer 'step'")
        records.append(record)
    return records
