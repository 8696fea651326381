"""The fault table: bad inputs, bad settings and machine faults, one row per case, for every command.

A row gives the command line (a function of the world and the test's own
folder ``T``), the exit code, text the message must hold (and text it must
not: a token, a Hub traceback), an optional set-up that makes a broken input
or an earlier output in ``T``, and an optional fault injected into the
process (no space left, a read-only disk, a write that fails half-way).

The runner (``test_fault_table``) asserts for every row: the exit code; the
message; no traceback; every file of the world and of ``T`` byte-identical
afterwards (nothing written, nothing half-written, no ``run.json``, no
temporary or staging file), unless the row names what may appear (``leaves``).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prefpool.pipeline.io.layout import MANIFEST, META_DIR, RUN_MARKER, meta_path

W = dict  # the world: name -> path (fault_world.build_world)
TOKEN = "hf_" + "Xy9" * 12  # shaped like a Hugging Face access token


@dataclass(frozen=True)
class Case:
    name: str
    args: Callable[[W, Path], list]
    expect: tuple[str, ...]
    code: int = 2
    setup: Callable[[W, Path], None] | None = None
    fault: Callable[[object, Path], None] | None = None  # (monkeypatch, T)
    absent: tuple[str, ...] = ("Traceback", "Repo id must be")
    leaves: tuple[str, ...] = field(default=())  # T-relative glob patterns allowed to appear (resumable work)


# -- set-ups: broken inputs and earlier outputs in T ----------------------------------------------------


def copy(name: str, to: str) -> Callable[[W, Path], None]:
    def setup(w: W, t: Path) -> None:
        src = w[name]
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, t / to)

    return setup


def copies(*steps: Callable[[W, Path], None]) -> Callable[[W, Path], None]:
    def setup(w: W, t: Path) -> None:
        for step in steps:
            step(w, t)

    return setup


def write(rel: str, data: str | bytes) -> Callable[[W, Path], None]:
    def setup(w: W, t: Path) -> None:
        path = t / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)

    return setup


def edit(rel: str, change: Callable[[bytes], bytes]) -> Callable[[W, Path], None]:
    def setup(w: W, t: Path) -> None:
        path = t / rel
        path.write_bytes(change(path.read_bytes()))

    return setup


def first_shard(rel: str) -> Callable[[W, Path], None]:
    """Truncate the first Parquet shard of the folder ``rel`` to half its size."""

    def setup(w: W, t: Path) -> None:
        shard = sorted((t / rel).glob("part-*.parquet"))[0]
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])

    return setup


def remove_first_shard(rel: str) -> Callable[[W, Path], None]:
    def setup(w: W, t: Path) -> None:
        sorted((t / rel).glob("part-*.parquet"))[0].unlink()

    return setup


def flip_a_byte(rel: str) -> Callable[[W, Path], None]:
    """Change one byte in the middle of the first shard: same size, other sha256."""

    def setup(w: W, t: Path) -> None:
        shard = sorted((t / rel).glob("part-*.parquet"))[0]
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))

    return setup


def other_online_state(w: W, t: Path) -> None:
    (t / "run").mkdir()
    state = {"version": 1, "identity": {"n": 99}, "hashes": {}, "steps": {}}
    (t / "run" / "online_state.json").write_text(json.dumps(state))


# -- faults injected into the process -------------------------------------------------------------------


def _under(path: object, root: Path) -> bool:
    try:
        return Path(os.fsdecode(path)).resolve().is_relative_to(root.resolve())
    except (TypeError, ValueError):
        return False


def _writes(mode: str) -> bool:
    return any(c in mode for c in "wax+")


def refuse_writes(code: int) -> Callable[[object, Path], None]:
    """Every file opened for writing and every folder made under T fails with ``code`` (ENOSPC: a full
    disk; EROFS: a read-only one; EACCES: no permission), as the kernel would refuse them."""

    def fault(monkeypatch, t: Path) -> None:
        import builtins
        import io

        real_open, real_mkdir = io.open, os.mkdir

        def open_(file, mode="r", *args, **kwargs):
            if _writes(mode) and _under(file, t):
                raise OSError(code, os.strerror(code), os.fsdecode(file))
            return real_open(file, mode, *args, **kwargs)

        def mkdir(path, *args, **kwargs):
            if _under(path, t) and not Path(os.fsdecode(path)).exists():
                raise OSError(code, os.strerror(code), os.fsdecode(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(io, "open", open_)
        monkeypatch.setattr(builtins, "open", open_)
        monkeypatch.setattr(os, "mkdir", mkdir)

    return fault


def shard_write_fails(at: int, code: int = errno.ENOSPC) -> Callable[[object, Path], None]:
    """The ``at``-th Parquet shard write (1-based) fails half-way with ``code``: earlier shards succeed."""

    def fault(monkeypatch, t: Path) -> None:
        from prefpool.pipeline.io import shards

        real, calls = shards._write_parquet, []

        def write(tmp, table, rows):
            calls.append(tmp)
            if len(calls) == at:
                tmp.write_bytes(b"PAR1 half")  # what a full disk leaves: part of a file, under the temp name
                raise OSError(code, os.strerror(code), str(tmp))
            return real(tmp, table, rows)

        monkeypatch.setattr(shards, "_write_parquet", write)

    return fault


# -- set-ups of the trust boundaries: planted paths, a held lock, unbounded input -------------------------


def edit_manifest(rel: str, change: Callable[[dict], None]) -> Callable[[W, Path], None]:
    def setup(w: W, t: Path) -> None:
        path = meta_path(t / rel, MANIFEST)
        obj = json.loads(path.read_text())
        change(obj)
        path.write_text(json.dumps(obj))

    return setup


_HELD_LOCKS: list[int] = []  # file descriptors kept open: the lock stays held for the test's command


def hold_lock(rel: str) -> Callable[[W, Path], None]:
    """Another writer (an open file description of this process) holds the output lock of ``T/rel``."""

    def setup(w: W, t: Path) -> None:
        import fcntl

        from prefpool.pipeline.io.writer_lock import lock_path

        path = lock_path(t / rel)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        os.write(fd, json.dumps({"pid": 4242, "host": "elsewhere", "command": "ingest", "started": "x"}).encode())
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _HELD_LOCKS.append(fd)

    return setup


def alias_bomb(head: str) -> str:
    """``head`` then 21 lines whose anchors alias each other: 9**19 strings once expanded."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 20)]
    return head + "\n".join([*lines, "bomb: *a19"]) + "\n"


# -- set-ups: checkpoints and training tables a user was handed ------------------------------------------


class Payload:
    """Unpickling this creates the file ``marker``: the code a planted pickle would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def truncate_checkpoints(rel: str, name: str) -> Callable[[W, Path], None]:
    """Cut ``name`` to half its size in every checkpoint of the run folder ``rel``."""

    def setup(w: W, t: Path) -> None:
        for path in (t / rel / "checkpoints").glob(f"step-*/{name}"):
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return setup


def crafted_pickle(rel: str, name: str) -> Callable[[W, Path], None]:
    """The newest checkpoint's ``name`` replaced by a payload pickle, its recorded size and sha256 with it,
    so only the weights-only reader stands between the file and the code (its marker, ``T/ran``, would
    be a file written under T)."""

    def setup(w: W, t: Path) -> None:
        import hashlib

        import torch

        folder = max((t / rel / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))
        torch.save({"state": Payload(t / "ran")}, folder / name)
        data = (folder / name).read_bytes()
        state = json.loads((folder / "trainer_state.json").read_text())
        state["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        (folder / "trainer_state.json").write_text(json.dumps(state))

    return setup


def non_finite_reference(rel: str, column: str) -> Callable[[W, Path], None]:
    """Every value of ``column`` in the pushed folder ``rel``'s Parquet files set to NaN."""

    def setup(w: W, t: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        for shard in (t / rel / "data").glob("*.parquet"):
            table = pq.read_table(shard)
            index = table.schema.get_field_index(column)
            nan = pa.array([float("nan")] * table.num_rows, pa.float64())
            pq.write_table(table.set_column(index, table.schema.field(column), nan), shard)

    return setup


def empty_table(rel: str) -> Callable[[W, Path], None]:
    """A valid pairwise build table with 0 rows: a shard ``i/64`` that no prompt hashes to (an unsharded build
    that makes no row is refused at build time)."""

    def setup(w: W, t: Path) -> None:
        from prefpool.pipeline.build import build

        for index in range(64):
            made = build("pairwise", examples=w["ingest"], logprobs=w["lp_ex"], out=t / rel, shard=f"{index}/64")
            if made.rows_written == 0:
                return
            shutil.rmtree(t / rel)
        raise AssertionError("every shard holds a row")

    return setup


def checkpoint_write_fails(step: int, code: int = errno.ENOSPC) -> Callable[[object, Path], None]:
    """Writing checkpoint ``step``'s torch files (optimizer, scheduler) fails half-way with ``code``."""

    def fault(monkeypatch, t: Path) -> None:
        import accelerate.checkpointing as checkpointing

        real = checkpointing.save

        def save(obj, path, *args, **kwargs):
            if Path(path).parent.name == f"step-{step}":
                Path(path).write_bytes(b"PK half")  # what a full disk leaves
                raise OSError(code, os.strerror(code), str(path))
            return real(obj, path, *args, **kwargs)

        monkeypatch.setattr(checkpointing, "save", save)

    return fault


# -- the table ------------------------------------------------------------------------------------------


def ingest(*extra):
    return lambda w, t: ["ingest", w["source"], "-f", "ranked", *extra]


def train(*extra):
    base = ["train", "/dev/null", "loss=dpo", "batch_size=2", "max_steps=2", "lr=1e-3", "progress=false"]
    return lambda w, t: [
        *base,
        f"model={w['model']}",
        f"data={w['pairwise']}",
        f"output_dir={t / 'run'}",
        *[e(w, t) if callable(e) else e for e in extra],
    ]


def online(*extra):
    def args(w, t):
        cfg = {
            "output_dir": str(t / "run"),
            "reference": str(w["model"]),
            "prompts": str(w["ingest"]),
            "rounds": 1,
            "n": 2,
            "max_new_tokens": 4,
            "max_length": 64,
            "reward_fn": f"{w['reward_length']}:reward",
            "show_progress": False,
            "train": {"batch_size": 2, "max_steps": 1, "progress": False},
        }
        config = t.parent / f"{t.name}-online.yaml"  # beside T: T itself must stay unchanged
        config.write_text(json.dumps(cfg))
        return ["online", config, *[e(w, t) if callable(e) else e for e in extra]]

    return args


def at(w_key: str, *rest: str):
    return lambda w, t: f"{w[w_key]}{''.join(rest)}"


CASES: list[Case] = [
    # ingest
    Case(
        "ingest: --out is a file", lambda w, t: [*ingest()(w, t), "-o", t / "f"], ("is a file",), setup=write("f", "x")
    ),
    Case(
        "ingest: --out holds other files",
        lambda w, t: [*ingest()(w, t), "-o", t / "o"],
        ("holds no prefpool output",),
        setup=write("o/notes.txt", "mine"),
    ),
    Case(
        "ingest: --out holds a run with other settings",
        lambda w, t: [*ingest("--strict")(w, t), "-o", t / "o"],
        ("config.strict", "--overwrite"),
        setup=copy("ingest", "o"),
    ),
    Case(
        "ingest: --out holds an unreadable run.json beside shards",
        lambda w, t: [*ingest("--strict")(w, t), "-o", t / "o"],
        ("cannot be read", "run.json"),
        setup=copies(
            copy("ingest", "o"),
            lambda w, t: meta_path(t / "o", MANIFEST).unlink(),
            write(f"o/{META_DIR}/{RUN_MARKER}", "{x"),
        ),
    ),
    Case(
        "ingest: --rows-per-unit 0",
        lambda w, t: [*ingest("--rows-per-unit", "0")(w, t), "-o", t / "o"],
        ("rows_per_unit",),
    ),
    Case("ingest: --shard 3/2", lambda w, t: [*ingest("--shard", "3/2")(w, t), "-o", t / "o"], ("3/2",)),
    Case(
        "ingest: a column the format needs is missing",
        lambda w, t: ["ingest", t / "d.jsonl", "-f", "pairwise", "-o", t / "o"],
        ("missing column",),
        setup=write("d.jsonl", json.dumps({"question": "q", "good": "a"}) + "\n"),
    ),
    Case(
        "ingest: the source does not exist",
        lambda w, t: ["ingest", t / "no" / "such.jsonl", "-f", "pairwise", "-o", t / "o"],
        ("no such file or folder",),
    ),
    Case(
        "ingest: --out is the source folder",
        lambda w, t: ["ingest", t / "src", "-f", "ranked", "-o", t / "src", "--overwrite"],
        ("also an input",),
        setup=copies(write("src/a.jsonl", ""), lambda w, t: shutil.copy2(w["source"], t / "src" / "a.jsonl")),
    ),
    Case(
        "ingest: no space left on the device",
        lambda w, t: [*ingest()(w, t), "-o", t / "o"],
        ("no space left", "free some space"),
        fault=refuse_writes(errno.ENOSPC),
    ),
    Case(
        "ingest: a read-only file system",
        lambda w, t: [*ingest()(w, t), "-o", t / "o"],
        ("read-only",),
        fault=refuse_writes(errno.EROFS),
    ),
    Case(
        "ingest: permission denied",
        lambda w, t: [*ingest()(w, t), "-o", t / "o"],
        ("permission denied", "writable"),
        fault=refuse_writes(errno.EACCES),
    ),
    Case(
        "ingest: the disk fills up on the first shard (no run.json left)",
        lambda w, t: [*ingest()(w, t), "-o", t / "o"],
        ("no space left",),
        fault=shard_write_fails(1),
    ),
    Case(
        "ingest: the disk fills up on the third shard (two finished shards kept for the rerun)",
        lambda w, t: [*ingest("--rows-per-unit", "2")(w, t), "-o", t / "o"],
        ("no space left",),
        fault=shard_write_fails(3),
        leaves=(
            "o",
            f"o/{META_DIR}",
            f"o/{META_DIR}/{RUN_MARKER}",
            "o/part-00000-of-00001-00000.parquet",
            "o/part-00000-of-00001-00001.parquet",
        ),
    ),
    # generate
    Case(
        "generate: the model folder does not exist",
        lambda w, t: ["generate", w["ingest"], "-m", t / "none", "-n", "2", "-o", t / "g"],
        ("no such folder; expected a local model folder",),
    ),
    Case(
        "generate: the model folder has no tokenizer",
        lambda w, t: ["generate", w["ingest"], "-m", w["model_no_tokenizer"], "-n", "2", "-o", t / "g"],
        ("no tokenizer files",),
    ),
    Case(
        "generate: the tokenizer has no chat template",
        lambda w, t: ["generate", w["ingest"], "-m", w["model_no_chat_template"], "-n", "2", "-o", t / "g"],
        ("no chat template",),
    ),
    Case(
        "generate: the model folder has no weights",
        lambda w, t: ["generate", w["ingest"], "-m", w["model_no_weights"], "-n", "2", "-o", t / "g"],
        ("no *.safetensors or *.bin weights",),
    ),
    Case(
        "generate: the input is not an examples table",
        lambda w, t: ["generate", w["lp_ex"], "-m", w["model"], "-n", "2", "-o", t / "g"],
        ("holds a 'logprobs' table, expected 'examples'",),
    ),
    Case(
        "generate: the input folder has no manifest",
        lambda w, t: ["generate", t / "in", "-m", w["model"], "-n", "2", "-o", t / "g"],
        ("no manifest.json",),
        setup=write("in/part-00000-of-00001-00000.parquet", "x"),
    ),
    Case(
        "generate: the manifest is JSON but not an object",
        lambda w, t: ["generate", t / "in", "-m", w["model"], "-n", "2", "-o", t / "g"],
        ("a JSON list, not an object",),
        setup=copies(copy("ingest", "in"), write(f"in/{META_DIR}/{MANIFEST}", "[1, 2]")),
    ),
    Case(
        "generate: the manifest is cut short",
        lambda w, t: ["generate", t / "in", "-m", w["model"], "-n", "2", "-o", t / "g"],
        ("not UTF-8 JSON",),
        setup=copies(copy("ingest", "in"), edit(f"in/{META_DIR}/{MANIFEST}", lambda b: b[: len(b) // 2])),
    ),
    Case(
        "generate: a shard is truncated",
        lambda w, t: ["generate", t / "in", "-m", w["model"], "-n", "2", "-o", t / "g"],
        ("truncated",),
        setup=copies(copy("ingest", "in"), first_shard("in")),
    ),
    Case(
        "generate: a shard is missing",
        lambda w, t: ["generate", t / "in", "-m", w["model"], "-n", "2", "-o", t / "g"],
        ("shard listed in the manifest is missing",),
        setup=copies(copy("ingest", "in"), remove_first_shard("in")),
    ),
    Case(
        "generate: the chat template rejects a prompt's role",
        lambda w, t: ["generate", w["ingest_bad_role"], "-m", w["model"], "-n", "2", "-o", t / "g"],
        ("row 0", "column 'prompt'", "narrator"),
    ),
    Case(
        "generate: -n 0",
        lambda w, t: ["generate", w["ingest"], "-m", w["model"], "-n", "0", "-o", t / "g"],
        ("n must be >= 1",),
    ),
    Case(
        "generate: max_new_tokens fills the context",
        lambda w, t: ["generate", w["ingest"], "-m", w["model"], "-n", "1", "--max-new-tokens", "600", "-o", t / "g"],
        ("leaves no room",),
    ),
    Case(
        "generate: engine options with the hf engine",
        lambda w, t: ["generate", w["ingest"], "-m", w["model"], "-n", "1", "--engine-args", '{"seed": 1}', "-o", t],
        ("takes none",),
    ),
    Case(
        "generate: engine options that are not JSON, with a token in them",
        lambda w, t: [
            *["generate", w["ingest"], "-m", w["model"], "-n", "1", "--engine", "vllm", "-o", t / "g"],
            *["--engine-args", '{"hf_token": "' + TOKEN + '", '],
        ],
        ("not valid JSON",),
        absent=("Traceback", TOKEN),
    ),
    Case(
        "generate: a reserved engine option beside a token",
        lambda w, t: [
            *["generate", w["ingest"], "-m", w["model"], "-n", "1", "--engine", "vllm", "-o", t / "g"],
            *["--engine-args", json.dumps({"hf_token": TOKEN, "dtype": "float16"})],
        ],
        ("'dtype'",),
        absent=("Traceback", TOKEN),
    ),
    Case(
        "generate: --out is the input folder",
        lambda w, t: ["generate", w["ingest"], "-m", w["model"], "-n", "2", "-o", w["ingest"], "--overwrite"],
        ("also an input",),
    ),
    Case(
        "generate: --out holds a run with other settings",
        lambda w, t: [
            *["generate", w["ingest"], "-m", w["model"], "-n", "2", "--max-new-tokens", "6"],
            *["--temperature", "1.0", "--seed", "1", "-o", t / "g"],
        ],
        ("config.n", "--overwrite"),
        setup=copy("generate", "g"),
    ),
    # score
    Case(
        "score: both a reward function and a reward model",
        lambda w, t: ["score", w["generate"], "--reward-fn", "m:f", "--reward-model", w["model"], "-o", t / "s"],
        ("exactly one",),
    ),
    *[
        Case(
            f"score: the reward function {what}",
            lambda w, t, name=name: ["score", w["generate"], "--reward-fn", f"{w[f'reward_{name}']}:reward", "-o", t],
            expect,
        )
        for name, what, expect in [
            ("raises", "raises", ("raised KeyError", "prompt_id", "row", "column 'samples'")),
            ("syntax", "has a syntax error", ("SyntaxError",)),
            ("import_fails", "imports a missing module", ("ModuleNotFoundError", "importing")),
            ("not_callable", "is not a function", ("not a callable",)),
            ("nan", "returns NaN", ("score is nan", "row")),
            ("inf", "returns -inf", ("score is -inf",)),
            ("text", "returns text", ("score is 'good'",)),
            ("none", "returns None", ("score is None",)),
            ("boolean", "returns a bool", ("score is True",)),
        ]
    ],
    Case(
        "score: the reward module cannot be imported",
        lambda w, t: ["score", w["generate"], "--reward-fn", "no_such_module_here:reward", "-o", t / "s"],
        ("cannot import module",),
    ),
    Case(
        "score: the reward model folder does not exist",
        lambda w, t: ["score", w["generate"], "--reward-model", t / "none", "-o", t / "s"],
        ("no such folder; expected a local model folder",),
    ),
    Case(
        "score: --out is the input folder",
        lambda w, t: ["score", w["generate"], "--reward-fn", f"{w['reward_length']}:reward", "-o", w["generate"]],
        ("also an input",),
    ),
    Case(
        "score: --out holds another scorer's scores",
        lambda w, t: ["score", w["generate"], "--reward-fn", f"{w['reward_boolean']}:reward", "-o", t / "s"],
        ("config.scorer", "--overwrite"),
        setup=copy("score", "s"),
    ),
    # logprobs
    Case(
        "logprobs: the tokenizer has no chat template",
        lambda w, t: ["logprobs", w["ingest"], "-m", w["model_no_chat_template"], "-o", t / "lp"],
        ("no chat template",),
    ),
    Case(
        "logprobs: the chat template rejects a prompt's role",
        lambda w, t: ["logprobs", w["ingest_bad_role"], "-m", w["model"], "-o", t / "lp"],
        ("row 0", "column 'prompt'", "narrator"),
    ),
    Case(
        "logprobs: the model folder does not exist",
        lambda w, t: ["logprobs", w["ingest"], "-m", t / "none", "-o", t / "lp"],
        ("no such folder; expected a local model folder",),
    ),
    Case(
        "logprobs: the model folder has no tokenizer",
        lambda w, t: ["logprobs", w["ingest"], "-m", w["model_no_tokenizer"], "-o", t / "lp"],
        ("no tokenizer files",),
    ),
    Case(
        "logprobs: the model folder has no weights",
        lambda w, t: ["logprobs", w["ingest"], "-m", w["model_no_weights"], "-o", t / "lp"],
        ("needs config.json and *.safetensors",),
    ),
    Case(
        "logprobs: max_length beyond the model's context",
        lambda w, t: ["logprobs", w["ingest"], "-m", w["model"], "--max-length", "4096", "-o", t / "lp"],
        ("beyond the model's context",),
    ),
    Case(
        "logprobs: a prompt fills max_length with --long-prompts error",
        lambda w, t: [
            *["logprobs", w["ingest"], "-m", w["model"], "--max-length", "4", "--long-prompts", "error"],
            *["-o", t / "lp"],
        ],
        ("no completion token", "row", "long_prompts='drop'"),
    ),
    Case(
        "logprobs: --out holds log-probs of another max_length",
        lambda w, t: ["logprobs", w["ingest"], "-m", w["model"], "--max-length", "48", "-o", t / "lp"],
        ("different max_length", "--overwrite"),
        setup=copy("lp_ex", "lp"),
    ),
    Case(
        "logprobs: --cache is not a logprobs output",
        lambda w, t: ["logprobs", w["ingest"], "-m", w["model"], "--cache", w["ingest"], "-o", t / "lp"],
        ("expected 'logprobs'",),
    ),
    Case(
        "logprobs: --batch-tokens 0",
        lambda w, t: ["logprobs", w["ingest"], "-m", w["model"], "--batch-tokens", "0", "-o", t / "lp"],
        ("batch_tokens >= 1",),
    ),
    # build
    *[
        Case(
            f"build: --kind mpo --label {label}",
            lambda w, t, label=label: [
                *["build", "--kind", "mpo", "--examples", w["ingest"], "--candidates", w["generate"]],
                *["--logprobs", w["lp_ex"], "--logprobs", w["lp_gen"], "--label", label, "-o", t / "b"],
            ],
            ("[0, 1]",),
        )
        for label in ("2", "nan", "-0.1", "inf")
    ],
    Case(
        "build: answers without a reference log-prob",
        lambda w, t: ["build", "--kind", "pairwise", "--examples", w["ingest"], "--logprobs", w["lp_gen"], "-o", t],
        ("no reference log-prob",),
    ),
    Case(
        "build: --logprobs is not a logprobs output",
        lambda w, t: ["build", "--kind", "pairwise", "--examples", w["ingest"], "--logprobs", w["ingest"], "-o", t],
        ("expected 'logprobs'",),
    ),
    Case(
        "build: log-probs under two cache keys",
        lambda w, t: [
            *["build", "--kind", "pairwise", "--examples", w["ingest"], "--logprobs", w["lp_ex"]],
            *["--logprobs", w["lp_other_length"], "-o", t / "b"],
        ],
        ("different cache keys",),
    ),
    Case(
        "build: --kind mpo without candidates",
        lambda w, t: ["build", "--kind", "mpo", "--examples", w["ingest"], "--logprobs", w["lp_ex"], "-o", t / "b"],
        ("needs --candidates",),
    ),
    Case(
        "build: --max-pool 0",
        lambda w, t: [
            *["build", "--kind", "mcpo", "--examples", w["ingest"], "--logprobs", w["lp_ex"], "--max-pool", "0"],
            *["-o", t / "b"],
        ],
        ("max_pool must be >= 1",),
    ),
    Case(
        "build: --scores is not a scores output",
        lambda w, t: [
            *["build", "--kind", "mcpo", "--examples", w["ingest"], "--logprobs", w["lp_ex"], "--scores", w["lp_ex"]],
            *["-o", t / "b"],
        ],
        ("expected 'scores'",),
    ),
    Case(
        "build: --out is one of its inputs",
        lambda w, t: [
            *["build", "--kind", "pairwise", "--examples", w["ingest"], "--logprobs", w["lp_ex"]],
            *["-o", w["lp_ex"], "--overwrite"],
        ],
        ("also an input",),
    ),
    Case(
        "build: --out holds another table",
        lambda w, t: ["build", "--kind", "mcpo", "--examples", w["ingest"], "--logprobs", w["lp_ex"], "-o", t / "b"],
        ("different settings", "--overwrite"),
        setup=copy("pairwise", "b"),
    ),
    # push
    *[
        Case(
            f"push: repo id {repo!r}",
            lambda w, t, repo=repo: ["push", w["mcpo"], "--repo-id", repo, "--dry-run", "-o", t / "h"],
            ("not a valid Hub repo id",),
        )
        for repo in ("not a/valid//id", "me/bad--name", "me/-x", "a/b/c")
    ],
    Case(
        "push: --dry-run without --out",
        lambda w, t: ["push", w["mcpo"], "--repo-id", "me/x", "--dry-run"],
        ("needs --out",),
    ),
    Case(
        "push: --out holds other files",
        lambda w, t: ["push", w["mcpo"], "--repo-id", "me/prefs", "--dry-run", "-o", t / "h", "--overwrite"],
        ("not replacing it",),
        setup=write("h/notes.txt", "mine"),
    ),
    Case(
        "push: --out is a file",
        lambda w, t: ["push", w["mcpo"], "--repo-id", "me/prefs", "--dry-run", "-o", t / "f"],
        ("is a file",),
        setup=write("f", "x"),
    ),
    Case(
        "push: the same push again is a no-op",
        lambda w, t: ["push", w["mcpo"], "--repo-id", "me/prefs", "--dry-run", "-o", t / "hub"],
        ("up to date", "nothing to do"),
        code=0,
        setup=copy("hub", "hub"),  # its record, .prefpool/push.json, comes with it
    ),
    Case(
        "push: other settings over an earlier push",
        lambda w, t: ["push", w["mcpo"], "--repo-id", "me/prefs", "--dry-run", "--license", "mit", "-o", t / "hub"],
        ("other settings", "--overwrite"),
        setup=copy("hub", "hub"),  # its record, .prefpool/push.json, comes with it
    ),
    Case(
        "push: --split with a dash",
        lambda w, t: ["push", w["mcpo"], "--repo-id", "me/x", "--dry-run", "--split", "a-b", "-o", t / "h"],
        ("is not a split name",),
    ),
    Case(
        "push: a source shard differs from its manifest",
        lambda w, t: ["push", t / "mcpo", "--repo-id", "me/x", "--dry-run", "-o", t / "h"],
        ("sha256 differs",),
        setup=copies(copy("mcpo", "mcpo"), flip_a_byte("mcpo")),
    ),
    Case(
        "push: no space left on the device",
        lambda w, t: ["push", w["mcpo"], "--repo-id", "me/x", "--dry-run", "-o", t / "h"],
        ("no space left",),
        fault=refuse_writes(errno.ENOSPC),
    ),
    # merge
    Case(
        "merge: folders of different runs",
        lambda w, t: ["merge", w["shard0"], w["mcpo"], "-o", t / "m"],
        ("is not a shard of the same run",),
    ),
    Case("merge: a shard missing", lambda w, t: ["merge", w["shard0"], "-o", t / "m"], ("exactly once",)),
    Case(
        "merge: --out is a file",
        lambda w, t: ["merge", w["shard0"], w["shard1"], "-o", t / "f"],
        ("is a file",),
        setup=write("f", "x"),
    ),
    Case(
        "merge: a folder without manifest",
        lambda w, t: ["merge", w["shard0"], t / "e", "-o", t / "m"],
        ("no manifest.json",),
        setup=write("e/x", ""),
    ),
    Case(
        "merge: --out holds another run",
        lambda w, t: ["merge", w["shard0"], w["shard1"], "-o", t / "m"],
        ("different settings", "--overwrite"),
        setup=copy("pairwise", "m"),
    ),
    Case(
        "merge: --out is one of the inputs",
        lambda w, t: ["merge", w["shard0"], w["shard1"], "-o", w["shard0"], "--overwrite"],
        ("also an input",),
    ),
    # run
    Case(
        "run: the YAML is not UTF-8",
        lambda w, t: ["run", t / "p.yaml"],
        ("not UTF-8",),
        setup=write("p.yaml", b"a: \xff\n"),
    ),
    Case("run: the YAML is a folder", lambda w, t: ["run", t], ("a folder, not a config file",)),
    Case("run: no such YAML", lambda w, t: ["run", t / "none.yaml"], ("no such config file",)),
    Case(
        "run: an unknown top-level key",
        lambda w, t: ["run", t / "p.yaml"],
        ("unknown top-level key 'ingset'",),
        setup=write("p.yaml", "workdir: w\ningset: {}\n"),
    ),
    Case(
        "run: a list at the top level",
        lambda w, t: ["run", t / "p.yaml"],
        ("must be a mapping",),
        setup=write("p.yaml", "- a\n"),
    ),
    Case("run: YAML syntax", lambda w, t: ["run", t / "p.yaml"], ("not valid YAML",), setup=write("p.yaml", "a: [1\n")),
    Case(
        "run: an override without '='",
        lambda w, t: ["run", t / "p.yaml", "generate.n"],
        ("expected key=value",),
        setup=write("p.yaml", "workdir: w\n"),
    ),
    # train
    Case(
        "train: the model folder does not exist",
        train(lambda w, t: f"model={t / 'none'}"),
        ("no such folder; expected a local model folder",),
    ),
    Case(
        "train: the model folder has no tokenizer",
        train(lambda w, t: f"model={w['model_no_tokenizer']}"),
        ("no tokenizer files",),
    ),
    Case("train: the data folder does not exist", train(lambda w, t: f"data={t / 'none'}"), ("not a local folder",)),
    Case("train: a loss that does not fit the table", train("loss=mcpo"), ("does not fit",)),
    Case("train: an unknown key", train("lrr=1"), ("unknown key 'lrr'",)),
    Case("train: a value of the wrong type", train("lr=fast"), ("expected float",)),
    Case(
        "train: the policy's chat template is not the cache's",
        train(lambda w, t: f"model={w['model_other_template']}"),
        ("tokenizer_sha256", "chat template"),
    ),
    Case(
        "train: the cached values are another model's (step-0)",
        train(lambda w, t: f"data={w['pairwise_relabelled']}"),
        ("step-0 check",),
    ),
    Case(
        "train: a finished run with other settings in output_dir",
        train("lr=0.5"),
        ("holds a finished training run", "lr differ", "overwrite: true"),
        setup=copy("train_done", "run"),
    ),
    Case(
        "train: the same finished run again is a no-op",
        train("resume=true"),
        ("nothing to do",),
        code=0,
        setup=copy("train_done", "run"),
    ),
    Case(
        "train: an unfinished run without resume",
        train("max_steps=4", "save_steps=1"),
        ("unfinished", "resume: true"),
        setup=copy("train_unfinished", "run"),
    ),
    Case("train: output_dir is a file", train(), ("is a file",), setup=write("run", "x")),
    Case(
        "train: output_dir holds other files",
        train("overwrite=true"),
        ("holds no prefpool training run",),
        setup=write("run/notes.txt", "mine"),
    ),
    Case(
        "train: resume_from is not a checkpoint",
        train(lambda w, t: f"resume_from={w['ingest']}"),
        ("is not a checkpoint",),
        leaves=("run", "run/*"),
    ),
    Case("train: max_length other than the cache's", train("max_length=48"), ("max_length (cache 64, here 48)",)),
    Case("train: a batch larger than the table", train("batch_size=64"), ("fewer than one optimizer step",)),
    Case("train: no space left on the device", train(), ("no space left",), fault=refuse_writes(errno.ENOSPC)),
    Case("train: a read-only file system", train(), ("read-only",), fault=refuse_writes(errno.EROFS)),
    # train: numbers that break the math, checkpoints and tables a user was handed
    Case("train: beta is not a number", train("beta=.nan"), ("command line: beta: must be a finite number",)),
    Case("train: a negative beta", train("beta=-0.5"), ("command line: beta: must be > 0, got -0.5",)),
    Case("train: an infinite lr", train("lr=.inf"), ("command line: lr: must be a finite number, got inf",)),
    Case(
        "train: label_smoothing of 0.5 or more", train("label_smoothing=0.7"), ("label_smoothing: must be in [0, 0.5)",)
    ),
    Case("train: an infinite nll_alpha", train("nll_alpha=.inf"), ("nll_alpha: must be a finite number",)),
    Case("train: a negative max_grad_norm", train("max_grad_norm=-1"), ("max_grad_norm: must be > 0",)),
    Case("train: a negative save_total_limit", train("save_total_limit=-1"), ("save_total_limit: must be >= 1",)),
    Case(
        "train: the disk fills while checkpointing",
        train("save_steps=1"),
        ("no space left on the device",),
        fault=checkpoint_write_fails(2),
        leaves=("run", "run/*"),  # the run so far (step-1 intact, step-2 incomplete): resume continues it
    ),
    Case(
        "train: resume with another loss",
        train("loss=ipo", "beta=0.5", "max_steps=4", "save_steps=1", "resume=true"),
        ("trained with other settings", "loss: 'dpo' -> 'ipo'", "beta: 0.1 -> 0.5"),
        setup=copy("train_unfinished", "run"),
    ),
    Case(
        "train: resume with every checkpoint's optimizer.bin cut short",
        train("max_steps=4", "save_steps=1", "resume=true"),
        ("no intact checkpoint", "optimizer.bin holds", "overwrite: true"),
        setup=copies(copy("train_unfinished", "run"), truncate_checkpoints("run", "optimizer.bin")),
    ),
    Case(
        "train: resume from an optimizer.bin carrying a pickle",
        train("max_steps=4", "save_steps=1", "resume=true"),
        ("optimizer.bin: holds a pickle that cannot be loaded safely", "runs no code"),
        setup=copies(copy("train_unfinished", "run"), crafted_pickle("run", "optimizer.bin")),
    ),
    Case(
        "train: a reference column of NaN",
        lambda w, t: train("loss=mcpo", f"data={t / 'hub'}", f"output_dir={t / 'run'}")(w, t),
        ("column 'ref_preferred_logp': a NaN or infinite reference log-prob",),
        setup=copies(copy("hub", "hub"), non_finite_reference("hub", "ref_preferred_logp")),
    ),
    # eval
    Case(
        "eval: the model folder does not exist",
        lambda w, t: ["eval", "-m", t / "none", "-d", w["pairwise"], "--device", "cpu"],
        ("no such folder; expected a local model folder",),
    ),
    Case(
        "eval: the data folder does not exist",
        lambda w, t: ["eval", "-m", w["model"], "-d", t / "none", "--device", "cpu"],
        ("not a local folder",),
    ),
    Case(
        "eval: the data is not a training table",
        lambda w, t: ["eval", "-m", w["model"], "-d", w["ingest"], "--device", "cpu"],
        ("not a build table",),
    ),
    Case(
        "eval: the model's chat template is not the cache's",
        lambda w, t: ["eval", "-m", w["model_other_template"], "-d", w["pairwise"], "--device", "cpu"],
        ("tokenizer_sha256", "chat template"),
    ),
    Case(
        "eval: the reference's own values are another model's (step-0)",
        lambda w, t: ["eval", "-m", w["model"], "-d", w["pairwise_relabelled"], "--device", "cpu"],
        ("step-0 check",),
    ),
    Case(
        "eval: --out is a file",
        lambda w, t: ["eval", "-m", w["model"], "-d", w["pairwise"], "-o", t / "f", "--device", "cpu"],
        ("is a file", "--out is a folder"),
        setup=write("f", "x"),
    ),
    Case(
        "eval: --out named like the old JSON file",
        lambda w, t: ["eval", "-m", w["model"], "-d", w["pairwise"], "-o", t / "e.json", "--device", "cpu"],
        ("--out is a folder", "not a .json file"),
    ),
    Case(
        "eval: --out holds a file that is no eval result",
        lambda w, t: ["eval", "-m", w["model"], "-d", w["pairwise"], "-o", t / "e", "--device", "cpu"],
        ("no eval result", "--overwrite"),
        setup=write("e/eval.json", "my notes"),
    ),
    Case(
        "eval: --out holds another model's evaluation",
        lambda w, t: ["eval", "-m", w["model"], "-d", w["pairwise"], "-o", t / "e", "--device", "cpu"],
        ("another evaluation", "--overwrite"),
        setup=copy("eval", "e"),
    ),
    Case(
        "eval: the same evaluation again is a no-op",
        lambda w, t: ["eval", "-m", w["train_done"], "-d", w["pairwise"], "-o", t / "e", "--device", "cpu"],
        ('"status": "done earlier"',),
        code=0,
        setup=copy("eval", "e"),
    ),
    Case(
        "eval: the reward function raises",
        lambda w, t: [
            *["eval", "-m", w["model"], "-d", w["pairwise"], "--device", "cpu", "--max-new-tokens", "3"],
            *["--reward-fn", f"{w['reward_raises']}:reward"],
        ],
        ("raised KeyError", "prompt_id", "sample 0"),
    ),
    Case(
        "eval: the reward module cannot be imported",
        lambda w, t: ["eval", "-m", w["model"], "-d", w["pairwise"], "--reward-fn", "no_such_mod:f", "--device", "cpu"],
        ("cannot import module",),
    ),
    Case(
        "eval: a negative tie tolerance",
        lambda w, t: ["eval", "-m", w["model"], "-d", w["pairwise"], "--tie-atol", "-1", "--device", "cpu"],
        ("tie_atol",),
    ),
    Case(
        "eval: the reference model folder does not exist",
        lambda w, t: [
            *["eval", "-m", w["model"], "-d", w["pairwise"], "--device", "cpu"],
            *["--reward-fn", f"{w['reward_length']}:reward", "--ref-model", t / "none"],
        ],
        ("ref_model", "no such folder; expected a local model folder"),
    ),
    # plot
    Case("plot: the run folder does not exist", lambda w, t: ["plot", t / "none"], ("no metrics.jsonl",)),
    Case(
        "plot: metrics.jsonl holds a broken line",
        lambda w, t: ["plot", t / "run", "-o", t / "c"],
        ("line 3", "not a JSON record"),
        setup=copies(copy("train_done", "run"), edit("run/metrics.jsonl", lambda b: b + b"{oops\n")),
    ),
    Case(
        "plot: metrics.jsonl is empty",
        lambda w, t: ["plot", t / "run", "-o", t / "c"],
        ("no logged steps",),
        setup=write("run/metrics.jsonl", ""),
    ),
    Case(
        "plot: --out is a file",
        lambda w, t: ["plot", w["train_done"], "-o", t / "f"],
        ("is a file", "--out is a folder"),
        setup=write("f", "x"),
    ),
    Case(
        "plot: --out is a file that is not a plot",
        lambda w, t: ["plot", w["train_done"], "-o", t / "c"],
        ("not a prefpool plot", "--overwrite"),
        setup=write("c/curves.png", "my picture"),
    ),
    Case(
        "plot: the same plot again is a no-op",
        lambda w, t: ["plot", w["train_done"], "-o", t / "c"],
        ("up to date",),
        code=0,
        setup=copy("plot", "c"),
    ),
    Case(
        "eval: a table with no rows",
        lambda w, t: ["eval", "-m", w["model"], "-d", t / "empty", "--device", "cpu"],
        ("the table holds no rows",),
        setup=empty_table("empty"),
    ),
    # online
    Case(
        "online: the reference folder does not exist",
        online(lambda w, t: f"reference={t / 'none'}"),
        ("no such folder; expected a local model folder",),
    ),
    Case("online: two scorers", online(lambda w, t: f"reward_model={w['model']}"), ("exactly one of reward_fn",)),
    Case("online: n = 1", online("n=1"), ("n: must be >= 2",)),
    Case("online: output_dir is a file", online(), ("is a file",), setup=write("run", "x")),
    Case("online: an unknown training key", online("train.lrr=1"), ("train.lrr",)),
    Case(
        "online: a damaged state file",
        online(),
        ("online_state.json", "not UTF-8 JSON"),
        setup=write("run/online_state.json", "{x"),
    ),
    Case("online: a state file of other settings", online(), ("other settings",), setup=other_online_state),
    # quickstart and the command line itself
    Case(
        "quickstart: --out is not empty",
        lambda w, t: ["quickstart", "--out", t / "q"],
        ("not empty",),
        setup=write("q/notes.txt", "mine"),
    ),
    Case("cli: an unknown command", lambda w, t: ["ingets"], ("No such command",)),
    Case("cli: an unknown option", lambda w, t: ["ingest", w["source"], "--fromat", "x"], ("No such option",)),
    # trust at the boundaries: paths inside their folder, one writer, URL credentials, bounded input
    Case(
        "merge: a manifest lists a sidecar outside the folder",
        lambda w, t: ["merge", t / "s0", t / "s1", "-o", t / "m"],
        ("sidecars", "may list only report.json"),
        setup=copies(
            copy("shard0", "s0"),
            copy("shard1", "s1"),
            edit_manifest("s0", lambda m: m["sidecars"].append("../../victim/settings.json")),
            edit_manifest("s1", lambda m: m["sidecars"].append("../../victim/settings.json")),
        ),
    ),
    Case(
        "build: a manifest lists a shard outside its folder",
        lambda w, t: ["build", "--kind", "pairwise", "--examples", t / "ex", "--logprobs", w["lp_ex"], "-o", t / "b"],
        ("manifest.json", "'../elsewhere/part-00000-of-00001-00000.parquet'", "not a shard file name"),
        setup=copies(
            copy("ingest", "ex"),
            copy("ingest", "elsewhere"),
            edit_manifest("ex", lambda m: m["shards"][0].update(file="../elsewhere/part-00000-of-00001-00000.parquet")),
        ),
    ),
    Case(
        "ingest: a README's data_files point outside the folder",
        lambda w, t: ["ingest", t / "repo", "-f", "pairwise", "-o", t / "o"],
        ("README.md", "data_files pattern '../private/*.jsonl'", "not a path inside"),
        setup=copies(
            write("repo/data/train.jsonl", json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n"),
            write("private/rows.jsonl", json.dumps({"prompt": "secret", "chosen": "a", "rejected": "b"}) + "\n"),
            write(
                "repo/README.md",
                "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: ../private/*.jsonl\n"
                "---\n",
            ),
        ),
    ),
    Case(
        "eval: a pushed card names a split outside the folder",
        lambda w, t: ["eval", "-m", w["train_done"], "-d", t / "hub", "--split", "../../outside/train"],
        ("README.md", "split '../../outside/train'", "never a path"),
        setup=copies(
            copy("hub", "hub"),
            edit("hub/README.md", lambda b: b.replace(b"\n    train:\n", b"\n    ../../outside/train:\n", 1)),
        ),
    ),
    Case(
        "ingest: --out is being written by another process",
        lambda w, t: [*ingest()(w, t), "-o", t / "o"],
        ("is being written by pid 4242 on host elsewhere", "`prefpool ingest`", "--wait"),
        setup=hold_lock("o"),
    ),
    Case(
        "ingest: a damaged run.json and no shard yet",
        lambda w, t: [*ingest()(w, t), "-o", t / "o"],
        ("cannot be read", "run.json", "--overwrite"),
        setup=write(f"o/{META_DIR}/{RUN_MARKER}", "{x"),
    ),
    Case(
        "run: rows_per_unit 0",
        lambda w, t: ["run", t / "p.yaml"],
        ("p.yaml, section 'ingest'", "rows_per_unit"),
        setup=lambda w, t: (t / "p.yaml").write_text(
            f"workdir: {t / 'w'}\ningest:\n  source: {w['source']}\n  format: ranked\n  rows_per_unit: 0\n"
        ),
    ),
    Case(
        "ingest: --strict and every score infinite",
        lambda w, t: ["ingest", t / "inf.jsonl", "-f", "ranked", "--strict", "-o", t / "o"],
        ("every score is NaN or infinite",),
        setup=write(
            "inf.jsonl",
            '{"prompt": "p", "answers": [{"text": "a", "score": Infinity}, {"text": "b", "score": -Infinity}]}\n',
        ),
        absent=("Traceback", "unranked"),
    ),
    Case(
        "ingest: a URL with a password that cannot be reached",
        lambda w, t: ["ingest", "http://alice:PASSWORDforAlice9@127.0.0.1:9/x.jsonl?sig=SIGNATUREabc", "-o", t / "o"],
        ("http://<redacted>@127.0.0.1:9/x.jsonl",),
        absent=("Traceback", "PASSWORDforAlice9", "SIGNATUREabc"),
    ),
    Case(
        "ingest: a JSON line nested 100,000 arrays deep",
        lambda w, t: ["ingest", t / "deep.jsonl", "-f", "pairwise", "-o", t / "o"],
        ("deep.jsonl, row 0 (0-based), line 1", "nested more than 100 levels"),
        setup=write("deep.jsonl", '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}\n"),
        absent=("Traceback", "RecursionError"),
    ),
    Case(
        "run: a YAML alias bomb in engine_args",
        lambda w, t: ["run", t / "p.yaml"],
        ("p.yaml: the YAML is", "aliases (*name) expand to more than"),
        setup=write("p.yaml", alias_bomb("workdir: w\ngenerate:\n  engine_args: {}\n")),
    ),
    Case(
        "train: a YAML alias bomb in the config",
        lambda w, t: ["train", t / "t.yaml"],
        ("t.yaml: the YAML is", "aliases (*name) expand"),
        setup=write("t.yaml", alias_bomb("")),
    ),
    # one writer per output: every command that writes a folder is refused while another process holds it
    *[
        Case(
            f"{name}: its output folder is being written by another process",
            args,
            ("is being written by pid 4242 on host elsewhere", "--wait"),
            setup=hold_lock(folder),
        )
        for name, folder, args in [
            ("generate", "g", lambda w, t: ["generate", w["ingest"], "-m", w["model"], "-n", "2", "-o", t / "g"]),
            (
                "score",
                "s",
                lambda w, t: ["score", w["generate"], "--reward-fn", f"{w['reward_length']}:reward", "-o", t / "s"],
            ),
            ("logprobs", "l", lambda w, t: ["logprobs", w["ingest"], "-m", w["model"], "-o", t / "l"]),
            (
                "build",
                "b",
                lambda w, t: [
                    "build",
                    "--kind",
                    "pairwise",
                    "--examples",
                    w["ingest"],
                    "--logprobs",
                    w["lp_ex"],
                    "-o",
                    t / "b",
                ],
            ),
            ("push", "h", lambda w, t: ["push", w["mcpo"], "--repo-id", "me/prefs", "--dry-run", "-o", t / "h"]),
            ("merge", "m", lambda w, t: ["merge", w["shard0"], w["shard1"], "-o", t / "m"]),
            ("train", "run", train()),
            ("online", "run", online()),
            (
                "eval",
                "e",
                lambda w, t: ["eval", "-m", w["train_done"], "-d", w["pairwise"], "--device", "cpu", "-o", t / "e"],
            ),
            ("plot", "c", lambda w, t: ["plot", w["train_done"], "-o", t / "c"]),
            ("quickstart", "q", lambda w, t: ["quickstart", "--out", t / "q"]),
        ]
    ],
]
