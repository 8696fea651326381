"""``manifest.json`` (in the output's ``.prefpool/``, see ``layout``): the last file a stage writes,
and the proof its output is complete.

A folder without a manifest is an unfinished run. The manifest records the run's
identity (stage, config, input fingerprint, shard, unit size), every shard with
its row count, size and sha256, and the provenance of the run; readers check the
files against it before trusting them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from prefpool.core.secrets import redact
from prefpool.pipeline.io.atomic import write_json
from prefpool.pipeline.io.errors import PipelineInputError
from prefpool.pipeline.io.layout import MANIFEST, SIDECARS, find_meta, meta_path, read_json_file
from prefpool.pipeline.io.shards import ShardName

FORMAT_VERSION = 1


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ShardEntry:
    file: str  # name within the folder
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class RunIdentity:
    """Everything that decides a run's output; equal identities may share (resume) shards."""

    stage: str
    schema: str
    config: dict
    inputs: object  # fingerprint of the input (file hashes, hub revision, upstream manifest)
    shard: str  # "i/N"
    rows_per_unit: int

    def to_json(self) -> dict:
        # A JSON round trip, so identities compare equal to ones loaded from disk; secrets redacted, so a
        # new token (an engine option, say) neither changes the identity nor is ever written with it.
        return json.loads(json.dumps(redact(asdict(self)), ensure_ascii=False))

    def differences(self, other: RunIdentity) -> list[str]:
        """Names of the fields (``config.<key>`` for config keys) that differ."""
        mine, theirs = self.to_json(), other.to_json()
        diffs = []
        for key in mine:
            if key == "config":
                keys = sorted(set(mine["config"]) | set(theirs["config"]))
                diffs += [f"config.{k}" for k in keys if mine["config"].get(k) != theirs["config"].get(k)]
            elif mine[key] != theirs[key]:
                diffs.append(key)
        return diffs


@dataclass(frozen=True)
class Manifest:
    identity: RunIdentity
    shards: tuple[ShardEntry, ...]
    provenance: dict
    sidecars: tuple[str, ...] = ()  # other files of the output in .prefpool/, e.g. report.json
    summary: dict = field(default_factory=dict)

    @property
    def total_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def to_json(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "stage": self.identity.stage,
            "schema": self.identity.schema,
            "identity": self.identity.to_json(),
            "total_rows": self.total_rows,
            "shards": [asdict(s) for s in self.shards],
            "sidecars": list(self.sidecars),
            "summary": self.summary,
            "provenance": self.provenance,
        }

    @classmethod
    def from_json(cls, obj: dict) -> Manifest:
        return cls(
            identity=RunIdentity(**obj["identity"]),
            shards=tuple(ShardEntry(**s) for s in obj["shards"]),
            provenance=obj["provenance"],
            sidecars=tuple(obj.get("sidecars", ())),
            summary=obj.get("summary", {}),
        )


def write_manifest(folder: Path, manifest: Manifest) -> None:
    meta_path(folder, MANIFEST).parent.mkdir(exist_ok=True)
    write_json(meta_path(folder, MANIFEST), manifest.to_json())


IDENTITY_FIELDS = tuple(f.name for f in fields(RunIdentity))
SHARD_FIELDS = tuple(f.name for f in fields(ShardEntry))


def check_identity(obj: object, path: Path) -> dict:
    """``obj`` (read from ``path``) as a run identity's JSON: a mapping with exactly its fields."""
    if not isinstance(obj, dict) or set(obj) != set(IDENTITY_FIELDS) or not isinstance(obj.get("config"), dict):
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise PipelineInputError(
            f"not a run identity (expected a JSON object with keys {', '.join(IDENTITY_FIELDS)}; got {got}): "
            "the folder was not written by prefpool, or was damaged",
            file=path,
        )
    return obj


def load_manifest(folder: str | Path) -> Manifest | None:
    """The folder's manifest (``.prefpool/manifest.json``, or ``manifest.json`` at the top in a folder
    written before that layout), or None when there is none (an unfinished run)."""
    path = find_meta(folder, MANIFEST)
    if path is None:
        return None
    obj = read_json_file(path, "manifest")
    hint = "rerun the stage that made this folder (with --overwrite), or point to another folder"
    if not isinstance(obj, dict):
        raise PipelineInputError(f"unreadable manifest: a JSON {type(obj).__name__}, not an object; {hint}", file=path)
    if obj.get("format_version") != FORMAT_VERSION:
        raise PipelineInputError(
            f"unreadable manifest: format_version {obj.get('format_version')!r}, expected {FORMAT_VERSION}; {hint}",
            file=path,
        )
    check_identity(obj.get("identity"), path)
    shards = obj.get("shards")
    if not isinstance(shards, list) or not all(isinstance(s, dict) and set(s) == set(SHARD_FIELDS) for s in shards):
        raise PipelineInputError(
            f"unreadable manifest: 'shards' must list {', '.join(SHARD_FIELDS)}; {hint}", file=path
        )
    for entry in shards:
        if not isinstance(entry["file"], str) or ShardName.parse(entry["file"]) is None:
            raise PipelineInputError(
                f"unreadable manifest: shard {entry['file']!r} is not a shard file name of this folder "
                f"(part-IIIII-of-NNNNN-UUUUU.parquet, no folder part): a path outside the folder is never read; {hint}",
                file=path,
            )
    sidecars = obj.get("sidecars", [])
    if not isinstance(sidecars, list) or any(name not in SIDECARS for name in sidecars):
        raise PipelineInputError(
            f"unreadable manifest: sidecars {sidecars!r}; a manifest may list only {', '.join(SIDECARS)} "
            f"(a path outside the folder is never read or written); {hint}",
            file=path,
        )
    if not isinstance(obj.get("provenance"), dict) or not isinstance(obj.get("summary", {}), dict):
        raise PipelineInputError(f"unreadable manifest: 'provenance' and 'summary' must be objects; {hint}", file=path)
    return Manifest.from_json(obj)
