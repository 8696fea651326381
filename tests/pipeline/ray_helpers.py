"""Helpers of the Ray executor tests: a tiny world, output comparison, and the Ray processes of a test.

Every Ray process a test starts inherits ``RAY_TMPDIR`` (a folder made for the
test), so ``ray_processes(folder)`` finds exactly them, as ``ps e`` would: by
that folder in a process's command line or environment.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from prefpool.pipeline.generate import generate
from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.io.layout import read_meta
from prefpool.pipeline.io.manifest import load_manifest
from prefpool.pipeline.io.read import read_table

WORKER_TITLE = "ray::PrefpoolUnitWorker"  # the process title of an actor (".run" while it runs a unit)
GENERATE = {"n": 2, "max_new_tokens": 12, "temperature": 1.0, "seed": 5, "batch_size": 4}
# fields of a manifest that two runs with the same inputs may differ in: when each run started
VOLATILE = ("created",)


def short_tmpdir() -> str:
    """A folder for Ray's session files: its socket paths must stay under 108 bytes, so not pytest's tmp_path."""
    return tempfile.mkdtemp(prefix="rp-", dir="/tmp")


def ray_processes(marker: str) -> list[tuple[int, str]]:
    """``(pid, command line)`` of every process but this one with ``marker`` in its command line or environment."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue  # gone, or not ours
        if marker in cmdline or marker in environ:
            found.append((int(entry.name), cmdline.strip()))
    return found


def worker_processes(marker: str) -> list[tuple[int, str]]:
    return [(pid, cmd) for pid, cmd in ray_processes(marker) if cmd.startswith(WORKER_TITLE)]


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.1)


def make_examples(folder: Path, prompts: int, *, long_prompts: tuple[int, ...] = ()) -> Path:
    """An ingest output of ``prompts`` pairwise rows; the rows in ``long_prompts`` have a 200-word prompt."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(prompts):
        prompt = f"Repeat the word {i} and say what {i} plus {i} is."
        if i in long_prompts:
            prompt = " ".join(["word"] * 200) + f" {i}"
        rows.append({"prompt": prompt, "chosen": f"{2 * i} " * (i % 5 + 1), "rejected": "a red apple " * (i % 3 + 1)})
    src = folder / "data.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ingest(src, format="pairwise", out=folder / "examples", show_progress=False).out


def make_candidates(examples: Path, model: Path, out: Path) -> Path:
    return generate(examples, model=model, out=out, show_progress=False, rows_per_unit=2, **GENERATE).out


def assert_same_output(got: Path, want: Path, *, merged: bool = False, logp_abs: float = 0.0) -> None:
    """Equal rows (Arrow equality: schema and every value, floats exactly) and equal manifests.

    Manifests: identity, shard files and row counts, summary and sidecars are equal; provenance is
    equal but for ``VOLATILE`` (the start time). A merged folder's provenance is merge's own (it
    runs no model), and its summary lists the folders it merged, so those are not compared.

    ``logp_abs``: a ``logprobs`` column ``logp`` may differ by this much (shard runs cut other units,
    so the model sees other padded batches: equal up to float rounding); every other value exactly.
    """
    a_rows, b_rows = read_table(got), read_table(want)
    if logp_abs:
        assert a_rows.schema == b_rows.schema
        diff = max(abs(x - y) for x, y in zip(a_rows["logp"].to_pylist(), b_rows["logp"].to_pylist(), strict=True))
        assert diff <= logp_abs, diff
        a_rows, b_rows = a_rows.drop_columns(["logp"]), b_rows.drop_columns(["logp"])
    assert a_rows.equals(b_rows)
    a, b = load_manifest(got).to_json(), load_manifest(want).to_json()
    assert a["identity"] == b["identity"]
    assert [(s["file"], s["rows"]) for s in a["shards"]] == [(s["file"], s["rows"]) for s in b["shards"]]
    assert a["sidecars"] == b["sidecars"]
    for name in a["sidecars"]:
        assert read_meta(got, name) == read_meta(want, name), name
    if merged:
        assert {k: v for k, v in a["summary"].items() if k != "merged_from"} == b["summary"]
        return
    assert a["summary"] == b["summary"]
    strip = {k: v for k, v in a["provenance"].items() if k not in VOLATILE}
    assert strip == {k: v for k, v in b["provenance"].items() if k not in VOLATILE}
    assert set(a["provenance"]) == set(b["provenance"])
