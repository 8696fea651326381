"""``--device``: one meaning in every command that loads a model.

``auto`` (every command's default) is the first CUDA device when torch sees
one, else the CPU. An explicit ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` is used
as given, after checking that this machine has it, so a typo or a missing GPU
stops the command before any model is loaded instead of failing deep inside torch.
"""

from __future__ import annotations

import re

from prefpool.core.errors import ConfigError

DEVICES = "auto, cpu, cuda, cuda:N or mps"
_PATTERN = re.compile(r"auto|cpu|mps|cuda(?::(?P<index>\d+))?")


def parse_device(device: str | None = "auto", *, what: str = "device") -> str:
    """``device`` checked for spelling only (for an engine that places itself, like vLLM): auto, cpu, ..."""
    name = "auto" if device is None else str(device).strip().lower()
    if _PATTERN.fullmatch(name) is None:
        raise ConfigError(f"{what}: {device!r} is not a device; expected {DEVICES}")
    return name


def resolve_device(device: str | None = "auto", *, what: str = "device") -> str:
    """The torch device string for ``device`` (``None`` means ``auto``); ``what`` names the option in errors."""
    import torch

    name = parse_device(device, what=what)
    match = _PATTERN.fullmatch(name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{what}: {device!r} asked for, but torch sees no CUDA device on this machine "
                f"(torch {torch.__version__}); use --device cpu, or auto (CUDA when present)"
            )
        index = match["index"]
        if index is not None and int(index) >= torch.cuda.device_count():
            raise ConfigError(
                f"{what}: {device!r} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s) "
                "(numbered from 0; CUDA_VISIBLE_DEVICES decides which)"
            )
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"{what}: 'mps' asked for, but torch sees no Apple GPU on this machine")
    return name
