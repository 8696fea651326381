"""Peak resident memory of one call, as the kernel counts it (Linux).

Used by the benchmarks, each variant in a fresh subprocess so that no
allocator cache or high-water mark is shared. ``reset_peak`` writes ``5`` to
``/proc/self/clear_refs`` (Linux >= 4.0), which sets ``VmHWM`` to the current
RSS; ``PeakMemory`` then reports ``VmHWM_after - VmRSS_before``: the most
resident memory the measured code added on top of what existed before. It
sees torch's allocations, which ``tracemalloc`` does not. Torch's CPU
allocator returns large blocks to the OS on free, so freed temporaries do not
hide in the figure. Without ``clear_refs`` it falls back to ``ru_maxrss``,
which is exact only when the measured code sets a new process high-water mark,
and says so in ``method``.
"""

from __future__ import annotations

import resource


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """``with PeakMemory() as m: ...``; then ``m.extra_mib`` and ``m.method``."""

    def __enter__(self) -> PeakMemory:
        self.exact = reset_peak()
        self.method = "VmHWM after clear_refs" if self.exact else "ru_maxrss (clear_refs unavailable)"
        self.before_kib = status_kib("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        peak = status_kib("VmHWM") if self.exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.extra_mib = (peak - self.before_kib) / 1024
