"""Shared helpers for benchmark scripts: interleaved timing and a machine description."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable


def machine() -> dict:
    import torch

    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": "cpu",
    }
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    return info


def interleaved(candidates: dict[str, Callable[[], None]], repeats: int, sync: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Time each candidate `repeats` times, alternating between them so that drifts in the
    machine's load (other processes, clocks) hit every candidate alike."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            sync()
            start = time.perf_counter()
            run()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)
