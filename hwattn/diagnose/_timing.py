"""Timing a callable properly: warm-up, synchronisation, median over repeats, CUDA events on GPU.

On CUDA every timed call starts from an idle, synchronised GPU with a cold L2 (a 256 MiB buffer is
zeroed first, as triton.testing.do_bench does), so the time includes the host's launch overhead and
memory-bound ops cannot hide in cache. On CPU, calls shorter than `min_sample_s` are grouped and the
group is divided by its length (timer resolution); caches are not flushed there.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch

from ._device import synchronize

_FLUSH_BYTES = 256 * 2**20
_flush_buffers: dict = {}


@dataclass
class Timing:
    median_s: float
    times_s: list  # per-call times, one per sample
    calls_per_sample: int

    @property
    def spread(self) -> float:
        """(p75 - p25) / median: how noisy the samples were."""
        if len(self.times_s) < 4:
            return 0.0
        q = statistics.quantiles(self.times_s, n=4)
        return (q[2] - q[0]) / self.median_s if self.median_s > 0 else 0.0


def _flush(device: torch.device) -> None:
    if device.type != "cuda":
        return
    buf = _flush_buffers.get(device)
    if buf is None:
        buf = _flush_buffers[device] = torch.empty(_FLUSH_BYTES // 4, dtype=torch.int32, device=device)
    buf.zero_()


def _once(fn, args, kwargs, device):
    out = fn(*args, **kwargs)
    synchronize(device)
    return out


def measure(fn, args=(), kwargs=None, device: torch.device = torch.device("cpu"), budget_s: float = 0.5,
            min_reps: int = 5, max_reps: int = 200, warmup_s: float = 0.05, flush_cache: bool = True,
            min_sample_s: float = 2e-4) -> Timing:
    """Median time of fn(*args, **kwargs) in seconds, within about `budget_s` of timed work.

    At least `min_reps` samples are taken even if that exceeds the budget (a slow op costs min_reps calls).
    """
    kwargs = kwargs or {}
    # warm-up: at least one call (compilation, allocator, autotuning), then up to warmup_s of calls
    t0 = time.perf_counter()
    _once(fn, args, kwargs, device)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    estimate = first
    n = 0
    while n < 2 or (time.perf_counter() - t0 < warmup_s and n < 50):
        t1 = time.perf_counter()
        _once(fn, args, kwargs, device)
        estimate = time.perf_counter() - t1
        n += 1
        if estimate > warmup_s:
            break
    reps = int(max(min_reps, min(max_reps, budget_s / max(estimate, 1e-7))))
    if device.type == "cuda":
        return _measure_cuda(fn, args, kwargs, device, reps, flush_cache)
    inner = max(1, math.ceil(min_sample_s / max(estimate, 1e-9)))
    reps = max(min_reps, min(reps // inner, max_reps))
    times = []
    for _ in range(reps):
        t1 = time.perf_counter()
        for _ in range(inner):
            fn(*args, **kwargs)
        times.append((time.perf_counter() - t1) / inner)
    return Timing(statistics.median(times), times, inner)


def _measure_cuda(fn, args, kwargs, device, reps, flush_cache) -> Timing:
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    with torch.cuda.device(device):
        for i in range(reps):
            if flush_cache:
                _flush(device)
            # an idle GPU at the start event: the measured time then includes the host's launch overhead
            torch.cuda.synchronize(device)
            starts[i].record()
            fn(*args, **kwargs)
            ends[i].record()
        torch.cuda.synchronize(device)
    times = [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends)]
    return Timing(statistics.median(times), times, 1)
