"""Wall-clock timing: ratios between workloads measured in the same process, and the time a process spent stopped."""
import statistics
import threading
import time
from typing import Callable, Dict

import torch

__all__ = ['median_times', 'StoppedClock']


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


class StoppedClock:
    """ Seconds this process has spent stopped (`kill -STOP` until `kill -CONT`) since it was made, apart from the time
    it ran slowly: a daemon thread wakes every `tick` seconds, and a wake-up later than `gap` seconds, over which the
    process used under a quarter of a core, was a stop. A busy machine slows a process without stopping it (its
    heartbeat still wakes), so a throughput forecast that leaves out the stopped seconds still counts the busy ones.
    Use as a context manager, or call `close()`.
    """

    def __init__(self, tick: float = 0.5, gap: float = 5.0):
        self.tick, self.gap = tick, gap
        self._stopped = 0.0
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name='stopped-clock', daemon=True)
        self._thread.start()

    def _run(self):
        wall, cpu = time.monotonic(), time.process_time()
        while not self._done.wait(self.tick):
            now, used = time.monotonic(), time.process_time()
            if now - wall > self.gap and used - cpu < 0.25 * (now - wall):
                with self._lock:
                    self._stopped += now - wall - self.tick
            wall, cpu = now, used

    def seconds(self) -> float:
        with self._lock:
            return self._stopped

    def close(self):
        self._done.set()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
