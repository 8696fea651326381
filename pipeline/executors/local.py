"""The local executor: every unit in this process, in unit order (what every stage did before executors)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from prefpool.pipeline.executors.base import Advance, UnitTask
from prefpool.pipeline.io.stage_run import Unit


class LocalExecutor:
    name = "local"

    def map(
        self,
        task: UnitTask,
        units: Sequence[Unit],
        on_result: Callable[[Unit, Any], None],
        *,
        advance: Advance,
    ) -> None:
        """Load the engine once (only when there is a unit to run), then run the units in order."""
        if not units:
            return
        runner = task.load()
        for unit in units:
            on_result(unit, runner(unit, advance))
