"""Timing and peak-memory measurement of a step function, without host syncs inside the timed loop.

`measure(step, device, warmup, iters)` runs `warmup` untimed steps (compilation, allocator and
autotuning warm-up), then times `iters` steps as one window: the device is synchronised only before
and after the window, so a step that syncs by itself (`.item()`, `bool(tensor)`) shows up as lost
throughput instead of being hidden by the harness.

Peak memory: on CUDA `torch.cuda.max_memory_allocated` over the timed window: weights, optimiser
state and activations (tensors only, not the caching allocator's reserve); on CPU the growth of the process RSS above its level before the
workload was built (`rss_base`), sampled every 2 ms by a thread during the timed window: an estimate,
since the allocator may keep pages freed by an earlier case (the figure then reads low).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass
class Timing:
    """`step_s`: mean seconds per step over the window; `warmup_s`: wall time of the warm-up steps
    (includes `torch.compile` compilation); `peak_memory_gb`: see module doc; `memory_kind` says which."""

    iters: int
    total_s: float
    step_s: float
    warmup_s: float
    peak_memory_gb: float | None
    memory_kind: str

    def to_dict(self) -> dict:
        return asdict(self)


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    except (OSError, ValueError, IndexError):
        return 0


class _RSSPeak:
    """Background sampler of the process RSS (CPU peak-memory estimate)."""

    def __init__(self, base: int | None = None, interval_s: float = 0.002):
        self.base, self.interval_s, self.peak, self._stop = base, interval_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval_s)

    def __enter__(self) -> _RSSPeak:
        self.base = rss_bytes() if self.base is None else self.base
        self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    step: Callable[[], object],
    device: torch.device | str,
    *,
    warmup: int = 1,
    iters: int = 3,
    rss_base: int | None = None,
) -> Timing:
    """Time `iters` calls of `step()` after `warmup` calls (see module doc).

    `rss_base`: CPU only, the RSS before the workload was built (so weights, optimiser state and
    activations all count); default the RSS when the timed window starts.
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    device = torch.device(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    synchronize(device)
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(iters):
            step()
        synchronize(device)
        total = time.perf_counter() - start
        peak, kind = torch.cuda.max_memory_allocated(device) / 2**30, "cuda max_memory_allocated"
    else:
        with _RSSPeak(rss_base) as rss:
            start = time.perf_counter()
            for _ in range(iters):
                step()
            total = time.perf_counter() - start
        peak, kind = max(rss.peak - rss.base, 0) / 2**30, "cpu RSS growth (estimate)"
    return Timing(iters, total, total / iters, warmup_s, peak, kind)
