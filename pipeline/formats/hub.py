"""Sources that ``datasets`` opens: a ``Dataset``/``DatasetDict``/``IterableDataset`` object, a folder
written by ``save_to_disk``, and a Hub dataset id (with ``subset`` and ``revision``).

``datasets`` is imported here only, and only for these sources: it is slow to
import. A Hub dataset is loaded the way ``datasets.load_dataset`` loads it
(downloaded once into the local cache, then read from there, also offline).
Rows are named ``<dataset>:<subset>:<split>`` and their 0-based index in the
split, since a loaded dataset no longer knows which file a row came from.
Every failure of the Hub is a ``PipelineInputError`` saying what to do: with
no network (or ``HF_HUB_OFFLINE=1``) and no cached copy, that the dataset
needs one or the other.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

from prefpool.pipeline.formats.readers import BATCH_ROWS, Record
from prefpool.pipeline.io.errors import PipelineConfigError, PipelineInputError

if TYPE_CHECKING:
    from prefpool.pipeline.formats.sources import Source

_OBJECT_TYPES = ("Dataset", "DatasetDict", "IterableDataset", "IterableDatasetDict")


def is_datasets_object(obj: object) -> bool:
    """Whether ``obj`` is a ``datasets`` dataset (without importing ``datasets`` for anything else)."""
    if not type(obj).__module__.startswith("datasets"):
        return False
    import datasets

    return isinstance(obj, tuple(getattr(datasets, name) for name in _OBJECT_TYPES))


def open_object(
    obj: object,
    *,
    split: str | None,
    subset: str | None = None,
    revision: str | None = None,
    label: str | None = None,
    name: str | None = None,
    inputs: object | None = None,
) -> Source:
    """A ``datasets`` object: a dict of splits (choose one) or one split."""
    import datasets

    from prefpool.pipeline.formats.sources import Source, choose_split

    label = label or f"<datasets.{type(obj).__name__}>"
    if subset is not None or revision is not None:
        raise PipelineConfigError("--subset and --revision choose what to load from the Hub; this dataset is loaded")
    if isinstance(obj, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        splits = [str(s) for s in obj]
        if not splits:
            raise PipelineInputError("the dataset has no splits", file=label)
        chosen = choose_split(split, splits, label)
        dataset = obj[chosen]
    else:
        splits = [str(obj.split) if obj.split is not None else "train"]
        chosen = choose_split(split, splits, label)
        dataset = obj
    name = name or dataset.info.dataset_name or "dataset"
    where = f"{name}:{chosen}"
    if inputs is None and isinstance(dataset, datasets.Dataset):
        inputs = {"dataset": where, "fingerprint": dataset._fingerprint}
    return Source(label, "dataset", chosen, tuple(splits), inputs, lambda: _rows(dataset, where))


def _rows(dataset, where: str) -> Iterator[Record]:
    import datasets

    if isinstance(dataset, datasets.Dataset):
        row = 0
        for batch in dataset.with_format("arrow").iter(batch_size=BATCH_ROWS):
            for data in batch.to_pylist():
                yield Record(where, where, row, None, data)
                row += 1
        return
    for row, data in enumerate(dataset):
        yield Record(where, where, row, None, data)


def open_saved(folder: str, *, split: str | None) -> Source:
    """A folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    import datasets

    try:
        obj = datasets.load_from_disk(folder)
    except (FileNotFoundError, datasets.exceptions.DatasetsError) as exc:
        raise PipelineInputError(f"looks like a save_to_disk folder but does not load: {exc}", file=folder) from None
    return open_object(obj, split=split, label=folder)


def open_hub(repo_id: str, *, split: str | None, subset: str | None, revision: str | None) -> Source:
    """A Hub dataset, ``datasets.load_dataset(repo_id, subset, revision=revision)[split]``."""
    import datasets

    from prefpool.pipeline.formats.sources import choose_split

    where = repo_id + (f"@{revision}" if revision else "")
    with _hub_errors(repo_id):
        subsets = datasets.get_dataset_config_names(repo_id, revision=revision)
        if subset is None and len(subsets) > 1:
            subset = datasets.get_dataset_default_config_name(repo_id, revision=revision)
            if subset is None:
                raise PipelineInputError(
                    f"several subsets and none is the default: {', '.join(subsets)}; pass --subset", file=where
                )
        if subset is not None and subset not in subsets:
            raise PipelineInputError(f"no subset {subset!r}; the dataset has: {', '.join(subsets)}", file=where)
        builder = datasets.load_dataset_builder(repo_id, name=subset, revision=revision)
        splits = [str(s) for s in (builder.info.splits or builder.config.data_files or {})]
        chosen = choose_split(split, splits or ["train"], where)
        builder.download_and_prepare()
        dataset = builder.as_dataset(split=chosen)
    name = f"{where}:{builder.config.name}"
    inputs = {"hub": f"{name}:{chosen}", "fingerprint": dataset._fingerprint}
    declared = dataset.info.license  # the licence its card declares: the card `push` writes carries it
    if isinstance(declared, str) and declared:
        inputs["license"] = declared
    source = open_object(dataset, split=chosen, label=where, name=name, inputs=inputs)
    return replace(source, kind="hub", splits=tuple(splits) or source.splits)


@contextmanager
def _hub_errors(repo_id: str) -> Iterator[None]:
    import datasets
    from huggingface_hub.errors import HfHubHTTPError

    start = f"{repo_id} is not a local file, folder or glob, and loading it as a Hub dataset failed"
    try:
        yield
    except ConnectionError as exc:
        why = (
            "HF_HUB_OFFLINE is set and no copy is in the local cache"
            if datasets.config.HF_HUB_OFFLINE
            else "the Hub could not be reached and no copy is in the local cache"
        )
        raise PipelineInputError(f"{start}: it needs the network or a local cache ({why}): {exc}") from None
    except datasets.exceptions.DatasetNotFoundError as exc:
        raise PipelineInputError(
            f"{start}: no such dataset (a private or gated one needs `hf auth login`): {exc}"
        ) from None
    except (datasets.exceptions.DatasetsError, FileNotFoundError, HfHubHTTPError) as exc:
        raise PipelineInputError(f"{start}: {type(exc).__name__}: {exc}") from None
