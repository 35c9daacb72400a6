"""Timing helpers: alternating runs and medians.

The development machine is shared and noisy, so the frameworks under comparison take turns
(A, B, A, B, ...) within one process: a burst of load from elsewhere hits both, and the
median of per-step ratios cancels most of it.
"""

import statistics
import time
from collections.abc import Callable, Sequence


def timed(run: Callable[[], object]) -> float:
    """Seconds ``run`` takes; ``run`` must wait for its device work before returning."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def alternate(runs: dict[str, Callable[[int], object]], count: int) -> dict[str, list[float]]:
    """Calls each of ``runs`` with the index 0..count-1, in turns; their seconds by name."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for index in range(count):
        for name, run in runs.items():
            seconds[name].append(timed(lambda run=run, index=index: run(index)))
    return seconds


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Median of the per-turn ratios: each pair ran back to back, under the same load."""
    return median([a / b for a, b in zip(numerators, denominators, strict=True)])
