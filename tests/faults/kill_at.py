"""Run the prefpool CLI in this process and SIGKILL it at a chosen point (a helper script, not a test).

    python kill_at.py MODULE:ATTR N before|after -- prefpool arguments ...

``MODULE:ATTR`` names a function (``prefpool.pipeline.push:write_text``) or a
method (``prefpool.pipeline.io.stage_run:StageRun.write``) as the code calls it;
the process sends itself SIGKILL right before or right after its ``N``-th call
returns. SIGKILL cannot be caught: no ``finally``, no flush, exactly what
``kill -9`` does, but at a point of the test's choosing instead of a race with
a poller, so each kill point is hit on every run. If the point is never
reached the process exits 3, so the test can tell it from a finished run.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys


def main() -> None:
    target, nth, when = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    args = sys.argv[sys.argv.index("--") + 1 :]
    module_name, _, path = target.partition(":")
    owner = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    real = getattr(owner, name)
    calls = 0

    def wrapper(*a, **kw):
        nonlocal calls
        calls += 1
        if when == "before" and calls == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        result = real(*a, **kw)
        if when == "after" and calls == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, name, wrapper)
    from prefpool.cli import app

    try:
        app(args=args, prog_name="prefpool", standalone_mode=False)
    except SystemExit as exc:
        sys.exit(exc.code)
    sys.exit(3)  # finished without reaching the kill point


if __name__ == "__main__":
    main()
