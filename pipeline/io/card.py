"""The Hub dataset card (``README.md``) of a pushed table, generated from the code's schema.

One card describes every split of the repo. Its YAML front matter holds what
the Hub reads (``license``, ``language``, ``task_categories``,
``size_categories``, ``source_datasets``, ``pretty_name``, ``tags``,
``configs`` with one ``data_files`` entry per split, ``dataset_info`` with the
features converted from the pyarrow schema in ``schemas.py`` by
``features_yaml``, so the card cannot disagree with the files) and a
``prefpool`` block: the table kind and, per split, its rows, the reference
cache key and its parts, the counts of dropped rows and the chain of stages
that made it (``split_entry``). That block is all ``prefpool train``/``eval``
need to read a pushed split back, and all a later push needs to rewrite the
card with one more split. The body is ``data_cards/dataset_card.md`` (package
data, ``card_template``) filled with ``string.Template``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from string import Template

import pyarrow as pa
import yaml

from prefpool.core.bounded import BoundsError, load_yaml
from prefpool.pipeline.io.card_fields import UNKNOWN_LICENSE, is_repo_id, is_split_name, size_category
from prefpool.pipeline.io.errors import PipelineInputError
from prefpool.pipeline.io.manifest import Manifest

CARD = "README.md"
TEMPLATES = "prefpool.data_cards"  # the top-level data_cards/ folder, shipped as package data
TEMPLATE = "dataset_card.md"
SPLIT_ORDER = ("train", "validation", "test")  # datasets lists splits in this order, then the others


def card_template(name: str) -> str:
    """The text of card template ``name`` in ``data_cards/`` (read as package data: works installed)."""
    return resources.files(TEMPLATES).joinpath(name).read_text(encoding="utf-8")


_DTYPES = {
    pa.string(): "string",
    pa.large_string(): "large_string",
    pa.bool_(): "bool",
    pa.int8(): "int8",
    pa.int16(): "int16",
    pa.int32(): "int32",
    pa.int64(): "int64",
    pa.float16(): "float16",
    pa.float32(): "float32",
    pa.float64(): "float64",
}


def feature_type(dtype: pa.DataType) -> dict:
    """One feature's type in the card's syntax: ``{"dtype": ...}``, ``{"list": ...}`` or ``{"struct": [...]}``."""
    if pa.types.is_struct(dtype):
        return {"struct": [{"name": f.name, **feature_type(f.type)} for f in dtype]}
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        key = "list" if pa.types.is_list(dtype) else "large_list"
        inner = feature_type(dtype.value_type)
        # the card writes a list of a plain type as `list: string`, of a struct as the field list
        value = inner["dtype"] if "dtype" in inner else inner["struct"] if "struct" in inner else inner
        return {key: value}
    for known, name in _DTYPES.items():
        if dtype.equals(known):
            return {"dtype": name}
    raise TypeError(f"no dataset-card type for pyarrow type {dtype}")


def features_yaml(schema: pa.Schema) -> list[dict]:
    """``dataset_info.features`` for ``schema``, in column order."""
    return [{"name": field.name, **feature_type(field.type)} for field in schema]


# -- one split: what its manifests say -------------------------------------------------------------


def stage_chain(manifest: Manifest) -> list[dict]:
    """The stages that made this table, this one first, then its inputs depth-first: for each its
    role, stage, table, config, source (the raw input of a first stage) and provenance."""

    def node(name: str, identity: dict, provenance: dict | None) -> dict:
        inputs = identity.get("inputs")
        first_stage = not isinstance(inputs, dict) or "identity" not in json.dumps(inputs)
        return {
            "name": name,
            "stage": identity["stage"],
            "schema": identity["schema"],
            "config": identity["config"],
            "source": inputs if first_stage else None,
            "provenance": {
                k: (provenance or {}).get(k) for k in ("prefpool", "git_revision", "created", "seed", "model")
            }
            | {"libraries": {k: v for k, v in ((provenance or {}).get("libraries") or {}).items() if v}},
        }

    chain = [node("this table", manifest.identity.to_json(), manifest.provenance)]

    def walk(name: str, obj: object) -> None:
        if isinstance(obj, dict) and isinstance(obj.get("identity"), dict) and "stage" in obj["identity"]:
            chain.append(node(name, obj["identity"], obj.get("provenance")))
            walk(name, obj["identity"].get("inputs"))
        elif isinstance(obj, dict):
            for key, value in obj.items():
                walk(key, value)
        elif isinstance(obj, list):
            for i, value in enumerate(obj):
                walk(f"{name}[{i}]", value)

    walk("inputs", manifest.identity.inputs)
    return chain


def source_info(chain: list[dict]) -> dict:
    """What the ``ingest`` stages of ``chain`` recorded about their source: Hub ids, licences, languages.

    A Hub source counts as its own ``source_datasets`` entry unless ingest was told another id, and its
    card's licence (kept in ingest's input fingerprint) counts unless ingest was told another one.
    """
    datasets, licenses, languages = [], [], []
    for node in chain:
        if node["stage"] != "ingest":
            continue
        config, source = node["config"], node["source"] if isinstance(node["source"], dict) else {}
        hub_id = str(config.get("source", "")).split("@")[0]  # "owner/name" or "owner/name@revision"
        dataset = config.get("source_dataset") or (hub_id if "hub" in source and is_repo_id(hub_id) else None)
        for value, into in ((dataset, datasets), (config.get("license") or source.get("license"), licenses)):
            if value and value not in into:
                into.append(value)
        languages += [lang for lang in config.get("language") or [] if lang not in languages]
    return {"datasets": datasets, "licenses": licenses, "languages": languages}


def split_entry(
    manifest: Manifest,
    *,
    files: int,
    num_bytes: int,
    report: dict | None,
    caches: list[tuple[str | None, dict]],
    manifest_sha256: str,
) -> dict:
    """The ``prefpool.splits.<name>`` entry of the card for a split pushed from ``manifest``'s folder.

    ``caches``: (cache key, cache parts) of the table's reference log-probs (one for a build table).
    """
    chain = stage_chain(manifest)
    key, parts = caches[0] if len(caches) == 1 else (None, None)
    return {
        "rows": manifest.total_rows,
        "bytes": num_bytes,
        "files": files,
        "cache_key": key,
        "reference_cache": parts,
        "source_manifest_sha256": manifest_sha256,
        "counts": report if report is not None else manifest.summary,
        "sources": source_info(chain),
        "stages": chain,
    }


# -- the card -------------------------------------------------------------------------------------


def split_order(names) -> list[str]:
    return [s for s in SPLIT_ORDER if s in names] + sorted(set(names) - set(SPLIT_ORDER))


def _merged(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def card_metadata(
    kind: str,
    schema: pa.Schema,
    splits: Mapping[str, dict],
    *,
    license: str | None,
    languages: list[str],
    task_categories: list[str],
    pretty_name: str,
    tags: list[str],
    prefpool_version: str,
) -> dict:
    """The card's YAML front matter for ``splits`` (name -> ``split_entry``) of a ``kind`` table.

    ``license``/``languages``: given ones win; else what the splits' sources recorded (several
    licences: ``other``, listed in the body); else ``unknown`` / no ``language`` key.
    """
    names = split_order(splits)
    sources = [splits[s]["sources"] for s in names]
    found_licenses = _merged([lic for src in sources for lic in src["licenses"]])
    if license is None:
        license = found_licenses[0] if len(found_licenses) == 1 else "other" if found_licenses else UNKNOWN_LICENSE
    languages = languages or _merged([lang for src in sources for lang in src["languages"]])
    datasets = _merged([d for src in sources for d in src["datasets"]])
    meta: dict = {"license": license}
    if languages:
        meta["language"] = languages
    meta["task_categories"] = task_categories
    meta["size_categories"] = [size_category(sum(splits[s]["rows"] for s in names))]
    if datasets:
        meta["source_datasets"] = datasets
    meta |= {
        "pretty_name": pretty_name,
        "tags": tags,
        "configs": [{"config_name": "default", "data_files": [{"split": s, "path": f"data/{s}-*"} for s in names]}],
        "dataset_info": {
            "features": features_yaml(schema),
            "splits": [{"name": s, "num_examples": splits[s]["rows"], "num_bytes": splits[s]["bytes"]} for s in names],
        },
        "prefpool": {"version": prefpool_version, "table_kind": kind, "splits": {s: splits[s] for s in names}},
    }
    return meta


def _provenance_md(chain: list[dict]) -> str:
    parts = []
    for node in chain:
        prov = node["provenance"] or {}
        lines = [f"#### `{node['stage']}` ({node['name']}, table `{node['schema']}`)", ""]
        lines.append(f"- config: `{json.dumps(node['config'], sort_keys=True)}`")
        if node["source"] is not None:
            lines.append(f"- source: `{json.dumps(node['source'], sort_keys=True)}`")
        for key in ("prefpool", "git_revision", "created", "seed"):
            lines.append(f"- {key}: `{prov.get(key)}`")
        if prov.get("model"):
            lines.append(f"- model: `{json.dumps(prov['model'], sort_keys=True)}`")
        lines.append(f"- libraries: `{json.dumps(prov.get('libraries') or {}, sort_keys=True)}`")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _source_md(meta: dict, splits: Mapping[str, dict]) -> str:
    lines = []
    datasets = meta.get("source_datasets")
    lines.append(
        f"- source datasets: {', '.join(f'`{d}`' for d in datasets)}"
        if datasets
        else "- source datasets: not recorded (pass `--source-dataset` to `prefpool ingest`)"
    )
    licenses = _merged([lic for s in splits.values() for lic in s["sources"]["licenses"]])
    lines.append(
        f"- licence: `{meta['license']}`"
        + (f" (the sources declare {', '.join(f'`{x}`' for x in licenses)})" if licenses else "")
        + (": not recorded, check the source's terms before use" if meta["license"] == UNKNOWN_LICENSE else "")
    )
    lines.append(
        f"- language: {', '.join(f'`{x}`' for x in meta['language'])}"
        if meta.get("language")
        else "- language: not recorded (pass `--language`)"
    )
    return "\n".join(lines)


def render_card(meta: dict, *, repo_id: str) -> str:
    """``README.md`` for the front matter ``meta`` (``card_metadata``)."""
    block = meta["prefpool"]
    splits: dict[str, dict] = block["splits"]
    schema_names = [f["name"] for f in meta["dataset_info"]["features"]]
    types = {
        f["name"]: json.dumps({k: v for k, v in f.items() if k != "name"}) for f in meta["dataset_info"]["features"]
    }
    rows = sum(s["rows"] for s in splits.values())
    files = sum(s["files"] for s in splits.values())
    return public_text(
        Template(card_template(TEMPLATE)).substitute(
            front_matter=yaml.safe_dump(meta, sort_keys=False, allow_unicode=True),
            pretty_name=meta["pretty_name"],
            kind=block["table_kind"],
            prefpool_version=block["version"],
            summary=f"{rows} rows in {files} Parquet file(s) under `data/`, in {len(splits)} split(s):",
            splits="\n".join(
                f"| `{name}` | {s['rows']} | {s['files']} | `{s['cache_key'] or 'not recorded'}` |"
                for name, s in splits.items()
            ),
            repo_id=repo_id,
            split_names=", ".join(splits),
            source=_source_md(meta, splits),
            columns="\n".join(f"| `{name}` | `{types[name]}` |" for name in schema_names),
            provenance="\n\n".join(
                f"### split `{name}`\n\n{_provenance_md(s['stages'])}" for name, s in splits.items()
            ),
            counts="\n\n".join(
                f"`{name}`:\n\n```json\n{json.dumps(s['counts'], indent=2, sort_keys=True)}\n```"
                for name, s in splits.items()
            ),
        )
    )


# An absolute local path (or one from the home folder): after a start, space, quote, backtick, bracket or
# "=", never inside a URL ("https://...") or a relative path ("data/train-*").
_LOCAL_PATH = re.compile(r"""(?<![\w:/.~-])(?:~|/)[^\s`'"<>(){}\[\],;|]+""")


def public_text(text: str) -> str:
    """A card's text with every absolute local path cut to its last name (``/home/me/data/uf.jsonl`` ->
    ``uf.jsonl``): a published card names files and models by name (models also by weights hash), never
    by where they lie on the machine that made them."""

    def name(match: re.Match) -> str:
        return Path(match.group(0).rstrip("/")).name or match.group(0)

    return _LOCAL_PATH.sub(name, text)


def read_card(folder: str | Path) -> dict | None:
    """The front matter of ``folder/README.md`` when it is a prefpool card (has a ``prefpool`` block), else None."""
    path = Path(folder) / CARD
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PipelineInputError(f"the card is not UTF-8 text ({exc})", file=path) from exc
    if not text.startswith("---\n") or "\n---\n" not in text[3:]:
        return None
    try:
        meta = load_yaml(text[4 : text.index("\n---\n", 3)])
    except yaml.YAMLError as exc:
        raise PipelineInputError(f"the card's YAML front matter does not parse: {exc}", file=path) from exc
    except BoundsError as exc:
        raise PipelineInputError(f"the card's YAML front matter is {exc}", file=path) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("prefpool"), dict):
        return None
    block = meta["prefpool"]
    if not isinstance(block.get("splits"), dict) or not isinstance(block.get("table_kind"), str):
        raise PipelineInputError("the card's prefpool block has no table_kind or splits", file=path)
    bad = [name for name in block["splits"] if not is_split_name(name)]
    if bad:
        raise PipelineInputError(
            f"the card's prefpool block lists the split {bad[0]!r}: a split name is letters, digits and '_' "
            "(never a path; only data/<split>-*.parquet inside the folder is read)",
            file=path,
        )
    return meta
