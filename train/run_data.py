"""What a training run reads before its model: the model reference, the table, its tokenizer and cache keys.

``open_run_data(cfg)`` is the one set-up of ``train`` (``Trainer``) and
``train --estimate-memory`` (``memory_estimate``): both tokenize the table
exactly as the reference cache did (the cache's ``max_length`` unless the
config gives one, the config's ``truncation``), so the floor is computed on
the tokens the run trains on.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefpool.pipeline.kinds.source import TableSource, open_table
from prefpool.pipeline.model.folder import check_model, load_tokenizer
from prefpool.pipeline.model.source import ModelSource

from .cache_check import cache_parts
from .config import TrainConfig
from .data import TrainingTable
from .kinds import TrainKind, train_kind


@dataclass(frozen=True)
class RunData:
    source: ModelSource
    data: TableSource
    spec: TrainKind
    tokenizer: object
    cache: dict  # the table's reference-cache key parts (``cache_check.cache_parts``)
    max_length: int  # the tokenization's: the config's, else the cache's

    @property
    def kind(self) -> str:
        return self.data.kind

    def table(self, cfg: TrainConfig) -> TrainingTable:
        """Every row tokenized with the cache's settings (the slow part: after the cache checks)."""
        return TrainingTable(
            self.data,
            self.kind,
            self.tokenizer,
            max_length=self.max_length,
            truncation=cfg.truncation,
            with_samples=self.spec.needs_samples(cfg),
            loss=cfg.loss,
        )


def open_run_data(cfg: TrainConfig) -> RunData:
    """Check the model reference (before the table is read), open the table, check that the loss fits
    its kind, load the tokenizer and read the cache's key parts."""
    source = check_model(cfg.model)
    data = open_table(cfg.data, split=cfg.data_split)  # a build folder, a pushed folder or Hub id
    cfg.check_table(data.kind)
    spec = train_kind(data.kind)
    tokenizer = load_tokenizer(source)
    cache = cache_parts(data)
    return RunData(
        source=source,
        data=data,
        spec=spec,
        tokenizer=tokenizer,
        cache=cache,
        max_length=cfg.max_length if cfg.max_length is not None else int(cache["max_length"]),
    )
