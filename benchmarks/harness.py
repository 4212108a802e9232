"""Timing and printing shared by bastion's benchmark scripts (run them from the repo root).

>>> round(median_seconds(lambda: None, number=10, repeat=3), 3)
0.0
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], number: int, repeat: int) -> float:
    """Median over ``repeat`` runs of the mean time of ``number`` calls, after one warm-up."""
    fn()  # warm up: connections, allocations, first-touch page faults
    runs = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        for _ in range(number):
            fn()
        runs.append((time.perf_counter() - start) / number)
    return statistics.median(runs)


def row(name: str, seconds: float, baseline_name: str, baseline: float, unit: str = "us",
        width: int = 44) -> None:  # fmt: skip
    """One figure beside its baseline, as a ratio."""
    scale = 1e6 if unit == "us" else 1e3
    print(
        f"  {name:<{width}} {seconds * scale:10.2f} {unit}   vs {baseline_name:<22} "
        f"{baseline * scale:9.2f} {unit}   ratio {seconds / baseline:7.2f}x"
    )
