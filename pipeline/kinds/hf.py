"""Any build table as a ``datasets.Dataset`` in TRL's column names, carrying what it was made from.

``table_dataset(data)`` takes a build folder, a pushed folder or a Hub id
(``source.open_table``), decodes each row by its kind's spec and writes it in the
kind's TRL view (``TableKind.to_trl``): ``prompt``, ``chosen``, ``rejected``
(conversational), ``ref_chosen_logps``, ``ref_rejected_logps`` for every kind,
plus ``pool``/``ref_pool_logps`` (mcpo) or ``label``/``ref_samples`` (mpo). The
features are the kind's ``trl_schema``, so an empty table has them too.

The dataset's ``info.description`` records the table kind, where it came from
and its reference caches (``table_info`` reads them back): the TRL plug-ins
check the cache key against the trainer's settings from there. It survives
``map``, ``select``, ``shuffle``, ``train_test_split`` and ``save_to_disk``.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import get_kind
from .source import TableSource, open_table

INFO_PREFIX = "prefpool table: "


def describe(table: TableSource) -> str:
    """The ``info.description`` of ``table``'s dataset: a readable line, then the JSON ``table_info`` reads."""
    record = {
        "kind": table.kind,
        "location": table.location,
        "split": table.split,
        "rows": table.rows,
        "caches": [[key, parts] for key, parts in table.caches],
    }
    return INFO_PREFIX + json.dumps(record, sort_keys=True)


def table_info(dataset) -> dict | None:
    """What ``table_dataset`` recorded in ``dataset.info.description`` (None for another dataset)."""
    description = getattr(getattr(dataset, "info", None), "description", "") or ""
    if not description.startswith(INFO_PREFIX):
        return None
    record = json.loads(description[len(INFO_PREFIX) :])
    record["caches"] = [tuple(c) for c in record["caches"]]
    return record


def table_dataset(data: str | Path | TableSource, *, split: str | None = None):
    """The build table ``data`` as a ``datasets.Dataset`` in TRL's column names (see the module docstring)."""
    from datasets import Dataset, DatasetInfo, Features

    table = open_table(data, split=split)
    kind = get_kind(table.kind)
    rows = [kind.to_trl(kind.decode(row)) for row in table.read().to_pylist()]
    features = Features.from_arrow_schema(kind.trl_schema)
    return Dataset.from_list(rows, info=DatasetInfo(description=describe(table), features=features))
