"""The input formats ingest understands, by name (``auto``: told from the first record, see ``detect``).

Each format is a module with ``resolve(first_record, columns) -> columns`` (fill
in detected column names, or raise ``MissingColumn``) and
``parse(record, columns) -> ParsedRow`` (or raise ``BadRow``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prefpool.pipeline.formats import hh_rlhf, pairwise, prompts, ranked, ultrafeedback
from prefpool.pipeline.formats.rows import Columns, ParsedRow
from prefpool.pipeline.io.errors import PipelineConfigError

AUTO = "auto"


@dataclass(frozen=True)
class Format:
    name: str
    resolve: Callable[[dict, Columns], Columns]
    parse: Callable[[dict, Columns], ParsedRow]


FORMATS: dict[str, Format] = {
    module_name: Format(module_name, module.resolve, module.parse)
    for module_name, module in {
        "pairwise": pairwise,
        "hh-rlhf": hh_rlhf,
        "ranked": ranked,
        "ultrafeedback": ultrafeedback,
        "prompts": prompts,
    }.items()
}


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise PipelineConfigError(f"unknown format {name!r}; choose one of {[AUTO, *FORMATS]}") from None
