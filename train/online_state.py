"""``online_state.json``: which steps of which rounds an online run has finished.

Written atomically (``pipeline.atomic.write_json``) after every completed step,
so a killed run leaves either the old or the new state, never half of one. It
records the config identity and the hashes of the frozen reference and the
initial policy: a rerun with other settings, or after one of those folders
changed, is refused instead of mixing data from two setups.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefpool.core.config import ConfigError
from prefpool.core.outputs import writing
from prefpool.core.secrets import redact
from prefpool.pipeline.io.atomic import write_json
from prefpool.pipeline.io.manifest import read_json_file

STATE_NAME = "online_state.json"
VERSION = 1


class OnlineState:
    """The state file of ``output_dir``; ``done(r, step)`` / ``mark(r, step, record)``."""

    def __init__(self, output_dir: Path, identity: dict, hashes: dict[str, str]) -> None:
        self.path = output_dir / STATE_NAME
        # tuples -> lists, as read back from disk; secrets redacted, as written (a new token is the same run)
        identity = json.loads(json.dumps(redact(identity)))
        if self.path.exists():
            data = read_json_file(self.path, STATE_NAME)
            if not isinstance(data, dict) or not isinstance(data.get("steps"), dict):
                raise ConfigError(
                    f"{self.path}: not an online state file (a JSON object with 'steps'); it was damaged: "
                    "remove it to start the run again, or use another output_dir"
                )
            _refuse_other_run(self.path, data, identity, hashes)
            self.data = data
        else:
            with writing(output_dir):
                output_dir.mkdir(parents=True, exist_ok=True)
            self.data = {"version": VERSION, "identity": identity, "hashes": hashes, "steps": {}}
            write_json(self.path, self.data)

    def done(self, round_: int | None, step: str) -> dict[str, Any] | None:
        """The record of a completed step, or None."""
        return self.data["steps"].get(_key(round_, step))

    def mark(self, round_: int | None, step: str, record: dict[str, Any]) -> None:
        self.data["steps"][_key(round_, step)] = record
        write_json(self.path, self.data)


def _key(round_: int | None, step: str) -> str:
    return step if round_ is None else f"round-{round_}/{step}"


def _refuse_other_run(path: Path, data: dict, identity: dict, hashes: dict[str, str]) -> None:
    if data.get("version") != VERSION:
        raise ConfigError(f"{path}: state version {data.get('version')!r}, expected {VERSION}")
    old = data.get("identity")
    differ = _differences(old, identity)
    if differ:
        raise ConfigError(
            f"{path.parent} holds an online run made with other settings ({', '.join(differ)}); "
            "rerun with the same config (only `rounds` may change, and not under lr_schedule: across_rounds) or use "
            "another output_dir"
        )
    changed = [k for k, v in hashes.items() if (data.get("hashes") or {}).get(k) != v]
    if changed:
        raise ConfigError(
            f"{path.parent}: the {' and '.join(changed)} model's weights changed since this run "
            "started (weights_sha256 differs); its data was made with the old weights"
        )


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += _differences(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')} ({old!r} -> {new!r})"]
