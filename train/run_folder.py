"""What a training run may do with its ``output_dir``: decided before anything is loaded or written.

A run never destroys an earlier result. ``plan_run_folder`` looks at the folder:

- absent or empty: the run writes there;
- a finished run (``train_summary.json``) of the same settings (``run_identity``:
  the config without ``RUN_CONTROL``: ``output_dir``, so a moved folder is still the
  same run, and ``resume``, ``resume_from``, ``overwrite``, ``progress``): ``train()``
  returns its summary and writes nothing;
- a finished run of other settings, or an unfinished one (checkpoints or metrics,
  no summary) without ``resume``: refused, naming ``resume: true`` / ``overwrite: true``;
- ``resume``: an unfinished run continues in place (the trainer loads its newest intact checkpoint),
  with the settings it was started with (``check_resumed_settings``: another loss, beta, kernel, lr,
  ... is refused; only ``RESUME_FREE`` may change);
- ``overwrite: true``: the new run is made in a sibling staging folder and swapped in
  only once it is complete, so a refused, failed or killed run leaves every file of
  the earlier one byte-identical;
- a non-empty folder that holds no training run is never replaced.

The trainer writes only after all its checks (cache key, step-0) have passed
(``Trainer.commit``): first ``train_run.json`` (this run's identity), then
metrics, checkpoints, the model and its card, and ``train_summary.json`` last.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from prefpool.core.errors import ConfigError, OutputExistsError
from prefpool.core.outputs import check_folder, writing
from prefpool.core.secrets import redact
from prefpool.pipeline.io.atomic import write_json
from prefpool.pipeline.io.errors import PipelineInputError
from prefpool.pipeline.io.manifest import read_json_file
from prefpool.pipeline.io.swap import real_folder
from prefpool.pipeline.io.swap import swap_in as swap_folder_in

from .config import TrainConfig

RUN_MARKER = "train_run.json"
SUMMARY_NAME = "train_summary.json"
CHECKPOINTS = "checkpoints"
METRICS_NAME = "metrics.jsonl"
# Where and how a run is driven, not what it computes: a rerun (or a moved folder) differing only in
# these is the same run.
RUN_CONTROL = ("output_dir", "resume", "resume_from", "overwrite", "progress")
# What a resumed run may change: how often it logs and checkpoints, where it reports, where it runs
# (``online`` leaves these out of its identity too). Any other setting decides the rest of the run's
# steps (and what its model card names), so it must stay.
RESUME_FREE = ("logging_steps", "save_steps", "save_total_limit", "report_to", "tracker_project", "device")


def run_identity(cfg: TrainConfig) -> dict:
    """The settings that decide a run's result, as stored in ``train_run.json`` (secrets redacted)."""
    data = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUN_CONTROL}
    return json.loads(json.dumps(redact(data)))


@dataclass(frozen=True)
class RunFolder:
    out: Path  # the output_dir the user named
    work: Path  # where this run writes: out, or a staging folder swapped in at the end
    finished: dict | None  # the summary of a finished run of these settings: nothing to do
    wipe: bool  # work must be emptied first (a staging folder of another attempt)

    @property
    def staged(self) -> bool:
        return self.work != self.out


def staging_folder(out: Path) -> Path:
    return out.parent / f".{out.name}.train-staging"


def _read(path: Path, what: str) -> object:
    try:
        return read_json_file(path, what)
    except PipelineInputError:
        return None


def _ours(folder: Path) -> bool:
    return any((folder / name).exists() for name in (RUN_MARKER, SUMMARY_NAME, CHECKPOINTS, METRICS_NAME))


def _has_progress(folder: Path) -> bool:
    metrics = folder / METRICS_NAME
    return (folder / CHECKPOINTS).is_dir() or (metrics.is_file() and metrics.stat().st_size > 0)


def check_resumed_settings(recorded: object, cfg: TrainConfig, *, where: str) -> None:
    """Refuse to resume a run whose recorded settings (``train_run.json``, a checkpoint's ``config``)
    differ from ``cfg`` in anything but ``RUN_CONTROL`` and ``RESUME_FREE``."""
    if not isinstance(recorded, dict):
        raise ConfigError(f"resume: {where} does not record the run's settings; it cannot be checked, so not resumed")
    skip = RUN_CONTROL + RESUME_FREE
    theirs = json.loads(json.dumps(redact({k: v for k, v in recorded.items() if k not in skip})))
    mine = {k: v for k, v in run_identity(cfg).items() if k not in skip}
    changed = [
        f"{k}: {theirs.get(k)!r} -> {mine.get(k)!r}"
        for k in sorted(set(theirs) | set(mine))
        if theirs.get(k) != mine.get(k)
    ]
    if changed:
        raise ConfigError(
            f"resume: the run in {where} was trained with other settings ({'; '.join(changed)}); resume it with "
            "its own settings, or pass overwrite: true to train these from the start (the old run is kept "
            "until the new one has finished)"
        )


def _differences(old: object, new: dict) -> str:
    if not isinstance(old, dict):
        return "its settings are not recorded"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(keys) + " differ" if keys else "the same settings"


def plan_run_folder(cfg: TrainConfig) -> RunFolder:
    """Decide what this run does with ``cfg.output_dir`` (see the module docstring); raises when refused."""
    out = real_folder(check_folder(cfg.output_dir, option="output_dir"))  # a link: written at its target
    mine = run_identity(cfg)
    if not out.exists() or not any(out.iterdir()):
        return RunFolder(out, out, None, False)
    if not _ours(out):
        raise OutputExistsError(
            f"output_dir {out} is not empty and holds no prefpool training run: not writing into it; "
            "choose a new (or empty) output_dir"
        )
    theirs = _read(out / RUN_MARKER, RUN_MARKER)
    if (out / SUMMARY_NAME).is_file():
        summary = _read(out / SUMMARY_NAME, SUMMARY_NAME)
        if theirs == mine and isinstance(summary, dict):
            return RunFolder(out, out, summary, False)
        if not cfg.overwrite:
            raise OutputExistsError(
                f"output_dir {out} holds a finished training run ({_differences(theirs, mine)}); pass "
                "overwrite: true to replace it (it is kept until the new run has finished), or choose "
                "another output_dir"
            )
        return _staged(out, mine, cfg.resume)
    if cfg.resume or cfg.resume_from:
        if isinstance(theirs, dict):
            check_resumed_settings(theirs, cfg, where=str(out / RUN_MARKER))
        return RunFolder(out, out, None, False)
    if cfg.overwrite:
        return _staged(out, mine, False)
    if not _has_progress(out):
        return RunFolder(out, out, None, False)  # a run that stopped before its first step: nothing to keep
    raise OutputExistsError(
        f"output_dir {out} holds an unfinished training run (checkpoints or metrics, no {SUMMARY_NAME}); "
        "pass resume: true to continue it, or overwrite: true to replace it (kept until the new run has "
        "finished), or choose another output_dir"
    )


def _staged(out: Path, mine: dict, resume: bool) -> RunFolder:
    staging = staging_folder(out)
    # resume an interrupted replacement of these settings; any other staging folder is an abandoned attempt
    same = staging.is_dir() and _read(staging / RUN_MARKER, RUN_MARKER) == mine
    return RunFolder(out, staging, None, not (resume and same))


def start_folder(plan: RunFolder, identity: dict) -> None:
    """Make the work folder and write ``train_run.json``: the run has passed its checks (main process)."""
    with writing(plan.work):
        if plan.wipe:
            shutil.rmtree(plan.work, ignore_errors=True)
        plan.work.mkdir(parents=True, exist_ok=True)
    write_json(plan.work / RUN_MARKER, identity)


def swap_in(plan: RunFolder) -> None:
    """Replace ``out`` by the complete staging folder (main process, after the summary is written)."""
    if not plan.staged:
        return
    swap_folder_in(plan.work, plan.out)
