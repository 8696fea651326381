"""The local executor: every unit in this process, in unit order (what every stage did before executors)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from prefpool.pipeline.executors.base import Advance, UnitTask
from prefpool.pipeline.io.stage_run import Unit

LOG = logging.getLogger("prefpool.executors.local")


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
        start = time.perf_counter()
        runner = task.load()
        now = time.perf_counter()
        seconds = now - start
        LOG.info(
            "local: engine loaded in %.1f s", seconds, extra={"timing": {"engine_load_s": seconds, "ready_at": now}}
        )
        for unit in units:
            on_result(unit, runner(unit, advance))
            LOG.debug("local: unit %d done", unit.seq, extra={"timing": {"unit_done_at": time.perf_counter()}})
