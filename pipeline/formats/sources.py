"""What the ``source`` of ingest names, which split of it is read, and its records.

- **A data file** (a path or an ``fsspec`` URL): one split, ``train`` (the
  name ``datasets`` gives a lone file).
- **A folder**, read recursively, split the way the Hub splits a dataset
  repository (``datasets``' own rules: ``data/train-00000-of-00002.parquet``,
  ``train/``, ``test.jsonl``, ...; a ``README.md`` whose YAML has ``configs``
  comes first, its config picked by ``subset``). A folder written by
  ``save_to_disk`` is loaded with ``datasets``; a prefpool table (a folder with
  ``.prefpool/manifest.json``, or ``manifest.json`` in the layout before, e.g. a
  ``build --kind pairwise`` output) is read through its manifest.
- **A glob**: the files it matches, split by the rules of their folder.
- **A ``datasets`` object or a Hub id**: see ``hub``.

The split read is ``split``; by default the only one, else ``train``; anything
else is an error listing the splits found. Data files that belong to no split
are listed (``ignored``), never read silently into another split.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from glob import has_magic
from pathlib import PurePosixPath

import yaml

from prefpool.core.bounded import BoundsError, load_yaml
from prefpool.pipeline.formats import hub
from prefpool.pipeline.formats.readers import SUFFIXES, Record, check_readable, file_kind, read_file
from prefpool.pipeline.io.errors import PipelineConfigError, PipelineInputError
from prefpool.pipeline.io.inside import check_resolved_inside, inside
from prefpool.pipeline.io.layout import MANIFEST, RUN_MARKER, find_meta
from prefpool.pipeline.io.manifest import file_sha256
from prefpool.pipeline.io.read import checked_shards

DEFAULT_SPLIT = "train"
SAVED_MARKERS = (("dataset_dict.json",), ("state.json", "dataset_info.json"))
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@dataclass(frozen=True)
class Source:
    """An opened source: the split chosen, and its records on demand."""

    label: str  # what the user named (config.source)
    kind: str  # file | folder | glob | dataset | hub
    split: str
    splits: tuple[str, ...]
    inputs: object | None  # the input's fingerprint for the run identity; None: hash the rows while reading
    records: Callable[[], Iterator[Record]]
    ignored: tuple[str, ...] = ()  # data files in no split


def choose_split(requested: str | None, splits: Sequence[str], where: str) -> str:
    """``requested`` if found; else the only split, else ``train``; else an error listing them."""
    if requested is not None:
        if requested not in splits:
            raise PipelineInputError(f"no split {requested!r}; splits found: {', '.join(splits)}", file=where)
        return requested
    if len(splits) == 1:
        return splits[0]
    if DEFAULT_SPLIT in splits:
        return DEFAULT_SPLIT
    raise PipelineInputError(
        f"several splits and none is {DEFAULT_SPLIT!r}: {', '.join(splits)}; pass --split NAME", file=where
    )


def looks_like_hub_id(text: str) -> bool:
    return bool(_HUB_ID.match(text)) and file_kind(text) is None and not text.endswith(tuple(SUFFIXES))


def open_source(source: object, *, split: str | None, subset: str | None, revision: str | None) -> Source:
    if hub.is_datasets_object(source):
        return hub.open_object(source, split=split, subset=subset, revision=revision)
    if not isinstance(source, (str, os.PathLike)):
        raise PipelineConfigError(
            f"source must be a path, a URL, a Hub dataset id or a datasets object, got {type(source).__name__}"
        )
    text = os.fspath(source)
    fs, path = _filesystem(text)
    try:
        is_file, is_dir = fs.isfile(path), fs.isdir(path)
    except OSError as exc:  # a URL whose server cannot be reached
        raise PipelineInputError(f"cannot reach: {exc}", file=text) from None
    if is_file:
        _no_hub_options(text, subset=subset, revision=revision)
        return _files_source(text, "file", {DEFAULT_SPLIT: [_url(fs, path)]}, (), split, fs, base=None)
    if is_dir:
        if "://" not in text and any(find_meta(path, name) for name in (MANIFEST, RUN_MARKER)):
            # a prefpool table (e.g. a build --kind pairwise output), read through its manifest
            _no_hub_options(text, subset=subset, revision=revision)
            _, shards = checked_shards(path)
            return _files_source(text, "table", {DEFAULT_SPLIT: [str(p) for p in shards]}, (), split, fs, base=path)
        if any(all(fs.isfile(f"{path}/{name}") for name in marker) for marker in SAVED_MARKERS):
            _no_hub_options(text, subset=subset, revision=revision)
            return hub.open_saved(text, split=split)
        _no_hub_options(text, subset=None, revision=revision)
        base = _url(fs, path)
        splits, ignored = folder_splits(base, subset, where=text)
        return _files_source(text, "folder", splits, ignored, split, fs, base=base)
    if has_magic(text):
        _no_hub_options(text, subset=subset, revision=revision)
        return _glob_source(text, split, fs)
    if looks_like_hub_id(text):
        return hub.open_hub(text, split=split, subset=subset, revision=revision)
    raise PipelineInputError("no such file or folder (nor a glob, nor a Hub dataset id like owner/name)", file=text)


def _filesystem(text: str):
    from fsspec.core import url_to_fs

    return url_to_fs(os.path.expanduser(text) if "://" not in text else text)


def _url(fs, path: str) -> str:
    """A path as ``datasets`` and ``fsspec.open`` take it: plain for local files, with the protocol otherwise."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else fs.unstrip_protocol(path)


def _no_hub_options(text: str, *, subset: str | None, revision: str | None) -> None:
    if revision is not None:
        raise PipelineConfigError(f"--revision applies to Hub dataset ids; {text} is a local file, folder or glob")
    if subset is not None:
        raise PipelineConfigError(
            f"--subset applies to Hub dataset ids and folders whose README.md lists configs; {text} is neither"
        )


def folder_splits(base: str, subset: str | None, *, where: str) -> tuple[dict[str, list[str]], tuple[str, ...]]:
    """Split name -> the folder's data files in it (sorted), and the data files in no split of any subset."""
    from datasets.data_files import resolve_pattern

    configs = _readme_configs(base, where)
    if configs:
        name = subset if subset is not None else _default_config(configs, where)
        if name not in configs:
            raise PipelineInputError(f"no subset {name!r}; README.md lists: {', '.join(configs)}", file=where)
        every = {n: _config_splits(base, c, where) for n, c in configs.items()}
    elif subset is not None:
        raise PipelineInputError(f"no subset {subset!r}: the folder has no README.md listing configs", file=where)
    else:
        name, every = "", {"": _config_splits(base, {}, where)}
    splits = every[name]
    if not splits:
        raise PipelineInputError(f"folder holds no {'/'.join(SUFFIXES)} files", file=where)
    known = {f for config in every.values() for files in config.values() for f in files}
    try:
        everything = resolve_pattern("**", base, allowed_extensions=list(SUFFIXES))
    except FileNotFoundError:
        everything = []
    ignored = tuple(sorted(f for f in everything if f not in known and file_kind(f) is not None))
    return splits, ignored


def _config_splits(base: str, config: dict, where: str) -> dict[str, list[str]]:
    """One config's splits: its ``data_files`` patterns, else the Hub's split naming under its ``data_dir``."""
    from datasets.data_files import DataFilesDict, EmptyDatasetError, get_data_patterns, sanitize_patterns

    card = f"{base.rstrip('/')}/README.md"
    if config.get("data_dir"):
        inside_folder(base, str(config["data_dir"]), card, "data_dir")
    root = f"{base.rstrip('/')}/{config['data_dir']}" if config.get("data_dir") else base
    try:
        if config.get("data_files") is not None:
            patterns = sanitize_patterns(config["data_files"])
            for pattern in (p for split_patterns in patterns.values() for p in split_patterns):
                inside_folder(root, str(pattern), card, "data_files pattern")
        else:
            patterns = get_data_patterns(root)
        resolved = DataFilesDict.from_patterns(patterns, base_path=root, allowed_extensions=list(SUFFIXES))
    except EmptyDatasetError:
        raise PipelineInputError(f"folder holds no {'/'.join(SUFFIXES)} files", file=where) from None
    except FileNotFoundError as exc:  # a README config's pattern matches nothing
        raise PipelineInputError(f"cannot resolve the data files: {exc}", file=where) from None
    if "://" not in base:
        for file in (f for files in resolved.values() for f in files):
            check_resolved_inside(base, file, listed_in=card, what=f"data file {file!r}")
    return {str(split): sorted(files) for split, files in resolved.items() if files}


def inside_folder(base: str, entry: str, card: str, what: str) -> None:
    """Refuse a README entry that points outside the folder (``io.inside``), for local and URL folders."""
    if "://" in base:
        inside("/", entry, listed_in=card, what=what)  # the text alone: no '..', no absolute path
    else:
        inside(base, entry, listed_in=card, what=what)


def _readme_configs(base: str, where: str) -> dict[str, dict]:
    """``configs`` from the YAML front matter of the folder's README.md (the Hub's dataset card)."""
    import fsspec

    path = f"{base.rstrip('/')}/README.md"
    fs, inner = fsspec.core.url_to_fs(path)
    if not fs.isfile(inner):
        return {}
    text = fs.read_text(inner, encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return {}
    front, sep, _ = text[3:].partition("\n---")
    if not sep:
        return {}
    try:
        card = load_yaml(front) or {}
    except yaml.YAMLError as exc:
        raise PipelineInputError(f"README.md: the YAML front matter does not parse: {exc}", file=where) from None
    except BoundsError as exc:
        raise PipelineInputError(f"README.md: the YAML front matter is {exc}", file=where) from None
    configs = card.get("configs") if isinstance(card, dict) else None
    if configs is None:
        return {}
    if not isinstance(configs, list) or not all(isinstance(c, dict) and c.get("config_name") for c in configs):
        raise PipelineInputError("README.md: 'configs' must be a list of mappings with a config_name", file=where)
    return {str(c["config_name"]): c for c in configs}


def _default_config(configs: dict[str, dict], where: str) -> str:
    marked = [name for name, c in configs.items() if c.get("default")]
    if len(configs) == 1:
        return next(iter(configs))
    if marked:
        return marked[0]
    if "default" in configs:
        return "default"
    raise PipelineInputError(
        f"several subsets and none is the default: {', '.join(configs)}; pass --subset", file=where
    )


def _glob_source(pattern: str, split: str | None, fs) -> Source:
    from datasets.data_files import resolve_pattern

    absolute = pattern if "://" in pattern else os.path.abspath(os.path.expanduser(pattern))
    try:
        matched = set(resolve_pattern(absolute, base_path="", allowed_extensions=list(SUFFIXES)))
    except FileNotFoundError:
        raise PipelineInputError(f"the glob matches no {'/'.join(SUFFIXES)} file", file=pattern) from None
    base = _glob_base(absolute)
    splits, _ = folder_splits(base, None, where=pattern)
    chosen = {name: [f for f in files if f in matched] for name, files in splits.items()}
    chosen = {name: files for name, files in chosen.items() if files}
    in_splits = {f for files in chosen.values() for f in files}
    if not chosen:
        chosen, in_splits = {DEFAULT_SPLIT: sorted(matched)}, matched
    ignored = tuple(sorted(matched - in_splits))
    return _files_source(pattern, "glob", chosen, ignored, split, fs, base=base)


def _glob_base(pattern: str) -> str:
    """The folder part of a glob before its first wildcard."""
    parts = PurePosixPath(pattern.split("://", 1)[-1]).parts
    fixed = []
    for part in parts[:-1]:
        if has_magic(part):
            break
        fixed.append(part)
    base = str(PurePosixPath(*fixed)) if fixed else "/"
    return f"{pattern.split('://', 1)[0]}://{base}" if "://" in pattern else base


def _short(file: str, base: str | None) -> str:
    """The name rows and reports give ``file``: relative to ``base``; a URL's query string (a token) dropped."""
    if "://" in file:
        file = file.split("?", 1)[0]
    if base is None:
        return PurePosixPath(file).name
    prefix = base.rstrip("/") + "/"
    return file[len(prefix) :] if file.startswith(prefix) else PurePosixPath(file).name


def _files_source(
    label: str,
    kind: str,
    splits: dict[str, list[str]],
    ignored: tuple[str, ...],
    split: str | None,
    fs,
    *,
    base: str | None,
) -> Source:
    chosen = choose_split(split, list(splits), label)
    files = splits[chosen]
    for file in files:
        check_readable(file)
    shorts = [_short(f, base) for f in files]

    def records() -> Iterator[Record]:
        for file, short in zip(files, shorts, strict=True):
            yield from read_file(file, short)

    inputs = [_fingerprint(fs, f, short) for f, short in zip(files, shorts, strict=True)]
    return Source(label, kind, chosen, tuple(splits), inputs, records, tuple(_short(f, base) for f in ignored))


def _fingerprint(fs, file: str, short: str) -> dict:
    if "://" not in file:
        return {"file": short, "bytes": os.path.getsize(file), "sha256": file_sha256(file)}
    return {"file": short, "ukey": fs.ukey(file)}
