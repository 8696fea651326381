"""The Hub dataset card (``README.md``) of a pipeline table, generated from the code's schema.

The YAML front matter's ``dataset_info.features`` is converted from the
pyarrow schema in ``schemas.py`` (``features_yaml``), so the card cannot
disagree with the files. The body is ``data_cards/dataset_card.md`` filled
with ``string.Template``; the "how it was made" section walks the chain of
manifests stored in each stage's ``inputs``.
"""

from __future__ import annotations

import json
from pathlib import Path
from string import Template

import pyarrow as pa
import yaml

from prefpool.pipeline.io.manifest import Manifest

TEMPLATE = Path(__file__).resolve().parents[2] / "data_cards" / "dataset_card.md"

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


def front_matter(
    schema: pa.Schema, *, split: str, pretty_name: str, license: str, tags: list[str], num_rows: int, num_bytes: int
) -> str:
    meta = {
        "license": license,
        "pretty_name": pretty_name,
        "tags": tags,
        "configs": [{"config_name": "default", "data_files": [{"split": split, "path": f"data/{split}-*"}]}],
        "dataset_info": {
            "features": features_yaml(schema),
            "splits": [{"name": split, "num_examples": num_rows, "num_bytes": num_bytes}],
        },
    }
    return yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)


def stage_chain(manifest: Manifest) -> list[dict]:
    """The stages that made this table, this one first, then its inputs depth-first."""
    chain = [{"name": "this table", "identity": manifest.identity.to_json(), "provenance": manifest.provenance}]

    def walk(name: str, obj: object) -> None:
        if isinstance(obj, dict) and isinstance(obj.get("identity"), dict) and "stage" in obj["identity"]:
            chain.append({"name": name, "identity": obj["identity"], "provenance": obj.get("provenance")})
            walk(name, obj["identity"].get("inputs"))
        elif isinstance(obj, dict):
            for key, value in obj.items():
                walk(key, value)
        elif isinstance(obj, list):
            for i, value in enumerate(obj):
                walk(f"{name}[{i}]", value)

    walk("inputs", manifest.identity.inputs)
    return chain


def _provenance_md(chain: list[dict]) -> str:
    parts = []
    for node in chain:
        ident, prov = node["identity"], node["provenance"] or {}
        inputs = ident.get("inputs")
        source = inputs if not isinstance(inputs, dict) or "identity" not in json.dumps(inputs) else None
        lines = [f"### `{ident['stage']}` ({node['name']}, table `{ident['schema']}`)", ""]
        lines.append(f"- config: `{json.dumps(ident['config'], sort_keys=True)}`")
        if source is not None:
            lines.append(f"- source: `{json.dumps(source, sort_keys=True)}`")
        for key in ("prefpool", "git_revision", "created", "seed"):
            lines.append(f"- {key}: `{prov.get(key)}`")
        if prov.get("model"):
            lines.append(f"- model: `{json.dumps(prov['model'], sort_keys=True)}`")
        libs = {k: v for k, v in (prov.get("libraries") or {}).items() if v}
        lines.append(f"- libraries: `{json.dumps(libs, sort_keys=True)}`")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def render_card(
    manifest: Manifest,
    schema: pa.Schema,
    *,
    repo_id: str,
    split: str,
    license: str,
    pretty_name: str,
    tags: list[str],
    num_bytes: int,
    files: int,
    report: dict | None,
) -> str:
    columns = "\n".join(f"| `{f.name}` | `{f.type}` |" for f in schema)
    return Template(TEMPLATE.read_text()).substitute(
        front_matter=front_matter(
            schema,
            split=split,
            pretty_name=pretty_name,
            license=license,
            tags=tags,
            num_rows=manifest.total_rows,
            num_bytes=num_bytes,
        ),
        pretty_name=pretty_name,
        kind=manifest.identity.schema,
        prefpool_version=manifest.provenance.get("prefpool"),
        rows=manifest.total_rows,
        files=files,
        repo_id=repo_id,
        split=split,
        columns=columns,
        provenance=_provenance_md(stage_chain(manifest)),
        report=json.dumps(report or manifest.summary, indent=2, sort_keys=True),
    )
