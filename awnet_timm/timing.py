"""Interleaved wall-clock timing: ratios between workloads measured in the same process."""
import statistics
import time
from typing import Callable, Dict

import torch

__all__ = ['median_times']


def _sync(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def median_times(
        workloads: Dict[str, Callable[[], object]],
        device: torch.device,
        repeats: int = 10,
        warmup: int = 2,
) -> Dict[str, float]:
    """Median seconds per call of each workload, run in turn so all see the same machine state."""
    for _ in range(warmup):
        for fn in workloads.values():
            fn()
    times = {name: [] for name in workloads}
    for _ in range(repeats):
        for name, fn in workloads.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
