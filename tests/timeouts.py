"""Timeouts for subprocesses, simulated pods and other waits, stretched when the machine is
busy: a 2-core CI runner with another job on it is slow, not broken."""

import os

# However busy the machine, a run this many times over its budget is stuck, not slow.
MAX_STRETCH = 8


def scaled_timeout(seconds: float) -> float:
    """``seconds`` times the 1-minute load per CPU (at least 1, at most MAX_STRETCH), read now:
    call it when the wait starts, not at import."""
    load_per_cpu = os.getloadavg()[0] / (os.cpu_count() or 1)
    return seconds * min(MAX_STRETCH, max(1.0, load_per_cpu))
