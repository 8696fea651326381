"""Checkpoints (``output_dir/checkpoints/step-N``): written with a record of their files, checked before
use, and loaded without running code from them.

A checkpoint holds accelerate's ``save_state`` files (``model.safetensors``; ``optimizer.bin``,
``scheduler.bin`` and ``random_states_{p}.pkl``, torch pickles of tensors and numbers), each
process's MC-PO kernel generator (``kernel_generator_{p}.safetensors``) and ``trainer_state.json``:
step, epoch, data position, the config, and the size and sha256 of every other file. That JSON is
written last, atomically: it marks the checkpoint complete.

Nothing prefpool saves is an object pickle: its own state is JSON and safetensors, and nothing is
registered with accelerate's checkpointing (accelerate unpickles registered objects with
``weights_only=False``). The pickles accelerate writes are read only by torch's weights-only
unpickler; a file it refuses (it names a callable to run) is a ``CheckpointError``, before anything of
the checkpoint is used.

On resume the newest checkpoint whose files match their record is taken; a newer one that does not
(a file cut short, changed or missing) is named and skipped. A checkpoint the user names
(``resume_from``) is used only when intact.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from prefpool.core.errors import InputError, OutputError, UserError
from prefpool.core.outputs import os_error_message
from prefpool.pipeline.io.atomic import write_json
from prefpool.pipeline.io.manifest import file_sha256

STATE_NAME = "trainer_state.json"
POSITION = ("step", "epoch", "micro_batch")  # where a resumed run continues: optimizer steps, epoch, micro-batch


class CheckpointError(InputError):
    """A checkpoint that cannot be used: damaged, incomplete, or holding a pickle that would run code."""


def generator_file(folder: Path, process: int) -> Path:
    return folder / f"kernel_generator_{process}.safetensors"


def save_generator(folder: Path, process: int, generator: torch.Generator) -> None:
    from safetensors.torch import save_file

    save_file({"state": generator.get_state()}, str(generator_file(folder, process)))


def read_generator_state(folder: Path, process: int) -> torch.Tensor:
    """Process ``process``'s kernel generator state from ``folder`` (safetensors: no code is read)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = generator_file(folder, process)
    try:
        return load_file(str(path))["state"]
    except (OSError, SafetensorError, KeyError) as exc:
        raise CheckpointError(f"{path}: not the kernel generator's state ({exc}); the checkpoint is damaged") from None


def load_generator(folder: Path, process: int, generator: torch.Generator) -> None:
    state = read_generator_state(folder, process)
    path = generator_file(folder, process)
    try:
        generator.set_state(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: not a generator state this torch takes ({exc})") from None


def file_record(folder: Path) -> dict[str, dict]:
    """``relative path -> {size, sha256}`` of every file in ``folder`` but ``trainer_state.json``."""
    record = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != STATE_NAME):
        record[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    return record


def write_state(folder: Path, info: dict) -> None:
    """Write ``trainer_state.json`` (``info`` plus the file record): the checkpoint is complete."""
    write_json(folder / STATE_NAME, {**info, "files": file_record(folder)})


def read_state(folder: Path) -> dict:
    """The checked ``trainer_state.json`` of an intact checkpoint; ``CheckpointError`` says what is wrong."""
    path = folder / STATE_NAME
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder} is not a checkpoint (no {STATE_NAME})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({exc}); the checkpoint is damaged") from None
    if not isinstance(info, dict) or not isinstance(info.get("files"), dict):
        raise CheckpointError(
            f"{path}: no record of the checkpoint's files (made by an older prefpool, or damaged); "
            "it cannot be checked, so it is not used"
        )
    for key in POSITION:
        value = info.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise CheckpointError(f"{path}: {key} is {value!r}, not a count; the checkpoint is damaged")
    for name, want in info["files"].items():
        file = folder / name
        if not isinstance(want, dict) or ".." in Path(name).parts or Path(name).is_absolute():
            raise CheckpointError(f"{path}: the entry {name!r} is not a file record; the checkpoint is damaged")
        if not file.is_file():
            raise CheckpointError(f"{folder}: {name} is missing")
        size = file.stat().st_size
        if size != want.get("size"):
            raise CheckpointError(f"{folder}: {name} holds {size} bytes, {want.get('size')} were written (cut short?)")
        if file_sha256(file) != want.get("sha256"):
            raise CheckpointError(f"{folder}: {name} differs from what was written (sha256)")
    return info


def checkpoints(work: Path) -> list[Path]:
    """The complete checkpoints (a ``trainer_state.json``) under ``work/checkpoints``, newest first."""
    from .run_folder import CHECKPOINTS

    folder = work / CHECKPOINTS
    found = [p for p in folder.glob("step-*") if (p / STATE_NAME).is_file()] if folder.is_dir() else []
    return sorted((p for p in found if p.name[5:].isdigit()), key=lambda p: int(p.name[5:]), reverse=True)


def newest_intact(work: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint whose files match their record, and why each newer one was skipped."""
    skipped = []
    for folder in checkpoints(work):
        try:
            read_state(folder)
        except CheckpointError as exc:
            skipped.append(str(exc))
            continue
        return folder, skipped
    return None, skipped


def check_pickles(folder: Path) -> None:
    """Refuse a checkpoint holding a pickle that would run code, before anything of it is loaded.

    Every ``.bin``/``.pkl``/``.pt`` file is read as accelerate reads it (``weights_only=True``, numpy's
    arrays allowed); accelerate swallows a refused RNG file, so all are checked here. A sharded (FSDP)
    checkpoint's ``.metadata``, which torch.distributed.checkpoint reads with plain ``pickle.load``, may
    name only that package's metadata classes and torch's plain types (``_DcpMetadataUnpickler``).
    """
    from accelerate.utils.other import load

    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            if path.name == ".metadata":
                with open(path, "rb") as handle:
                    _DcpMetadataUnpickler(handle).load()
            elif path.suffix in (".bin", ".pkl", ".pt"):
                load(path, map_location="cpu")
        except pickle.UnpicklingError as exc:
            lines = [line.strip() for line in str(exc).splitlines()]
            first = next((line for line in lines if "Unsupported global" in line), "the weights-only reader refused it")
            raise CheckpointError(
                f"{path}: holds a pickle that cannot be loaded safely ({first}); prefpool runs no code "
                "from a checkpoint. Resume from a checkpoint prefpool wrote, or start the run again"
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{path}: not a readable torch file ({exc}); the checkpoint is damaged") from None


class _DcpMetadataUnpickler(pickle.Unpickler):
    """torch.distributed.checkpoint's ``.metadata``: classes of its ``metadata`` module, and torch's
    ``Size``, dtypes, layouts and memory formats; any other global (a function to call) is refused."""

    PLAIN = {
        ("collections", "OrderedDict"),
        ("copyreg", "_reconstructor"),
        ("builtins", "object"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),  # a layout by its name
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("pathlib", "PosixPath"),  # the checkpoint id
        ("pathlib", "PurePosixPath"),
    }
    CALLABLE = {("copyreg", "_reconstructor"), ("torch.serialization", "_get_layout")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.PLAIN or module == "torch.distributed.checkpoint.metadata":
            found = super().find_class(module, name)
            if isinstance(found, type) or (module, name) in self.CALLABLE:
                return found
        if module == "torch" and isinstance(
            getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)
        ):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name} in a checkpoint's .metadata")


@contextmanager
def full_disk_reported(folder: Path, needed: int) -> Iterator[None]:
    """Turn a write under ``folder`` that failed on a full disk (``full_disk``) into its ``OutputError``;
    any other error passes unchanged."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        error = full_disk(exc, folder, needed)
        if error is None:
            raise
        raise error from exc


def full_disk(exc: BaseException, folder: Path, needed: int) -> OutputError | None:
    """The ``OutputError`` for a checkpoint write that failed because the disk is full, else None.

    torch's writer reports a full disk as a ``RuntimeError`` ("file write failed") and safetensors as
    its own error, neither with an errno: a failed write where less than ``needed`` bytes are free is
    taken for a full disk.
    """
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return OutputError(os_error_message(exc, folder))
    try:
        free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
    except OSError:
        return None
    if free >= needed:
        return None
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
    return OutputError(f"{os_error_message(full, folder)} ({free} bytes free, about {needed} needed)")
