"""How much of an op's wall time is overhead (the device waiting on the host), measured with torch.profiler.

CUDA (direct measurement)
    The op runs under torch.profiler with CUDA activity. Device busy time is the union of the kernel,
    memcpy and memset intervals of each call; idle = wall - busy, with wall the un-profiled median from
    `profile` (the profiler slows the host, not the kernels). A kernel that does almost nothing still
    occupies the GPU for a fixed time (`kernel_latency_s` in the ceilings: the duration of a 1-element
    add's kernel), which fusion would save just like the idle gaps, so
        overhead = idle + sum over kernels of min(duration, kernel_latency_s)
    (capped at wall). A loop of tiny ops is then overhead-bound even on a host fast enough to keep the GPU
    "busy" with empty kernels; a big kernel contributes one kernel latency, a few microseconds. The
    evidence also counts launches per call and the median idle gap between consecutive device intervals.
CPU (there is no separate device timeline: the thread that dispatches an op also runs its kernel)
    The profiler gives the torch ops called per call ("launches", top-level aten ops) and the share of
    wall time spent in Python between them. The rest is split with two measured numbers: `work`, the least
    time the counted FLOPs and bytes need at the measured ceilings (op by op), and `op_latency_s`, the
    cost of one tiny op (from the ceilings). The time not explained by work, `excess = wall - work`, is
    overhead when it is small per op (at most 10 tiny-op costs per launch: the ops are so small that
    their fixed cost is what you pay); when it is larger per op the ops are big but run below the
    ceilings, and only `launches * op_latency_s` is overhead (the rest is an inefficient kernel, not
    overhead). Python time between ops is overhead in both cases.
The same CPU model is the fallback on CUDA when the profiler records no device activity (no CUPTI).
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

import torch

from ._device import device_of, resolve_device, synchronize
from ._profile import Profile, _check_ceilings, check_callable, profile as run_profile

__all__ = ["Overhead", "overhead", "OVERHEAD_BOUND", "TINY_OP_FACTOR"]

OVERHEAD_BOUND = 0.5   # overhead share of wall time from which an op is called overhead-bound
TINY_OP_FACTOR = 10.0  # per-launch unexplained time up to this many tiny-op costs counts as overhead
_MARK = "hwattn.diagnose.call"  # no "::": torch ops are the events whose names have one


@dataclass
class Overhead:
    """Where the wall time of one call goes. Times are per call, in seconds.

    fraction: share of wall time that is overhead (0..1); method: how it was measured.
    launches: device kernels/memcpys (CUDA) or top-level torch ops (CPU) per call.
    busy_s / idle_fraction / idle_gap_s: CUDA only: device busy time, share of wall time the device is
        idle, median idle gap between device intervals; fixed_kernel_s: the kernels' fixed cost.
    python_fraction: share of profiled wall time spent outside torch ops (in Python), median over calls.
    work_s / per_launch_excess_s: CPU model only.
    """
    method: str
    wall_s: float
    fraction: float
    launches: float
    op_latency_s: float
    busy_s: float | None = None
    idle_fraction: float | None = None
    idle_gap_s: float | None = None
    fixed_kernel_s: float | None = None
    kernel_latency_s: float | None = None
    python_fraction: float | None = None
    work_s: float | None = None
    per_launch_excess_s: float | None = None

    @property
    def overhead_bound(self) -> bool:
        return self.fraction >= OVERHEAD_BOUND

    def evidence(self) -> str:
        pct = f"{100 * self.fraction:.0f}%"
        n = f"{self.launches:.3g}"
        if self.method == "profiler":
            gap = f" (median gap {self.idle_gap_s * 1e6:.3g} us)" if self.idle_gap_s is not None else ""
            text = (f"{100 * self.idle_fraction:.0f}% of wall time the GPU is idle between {n} launches per call"
                    f"{gap}: busy {self.busy_s * 1e6:.3g} us of {self.wall_s * 1e6:.3g} us")
            if self.fixed_kernel_s:
                text += (f"; adding each kernel's fixed cost (an empty kernel takes "
                         f"{self.kernel_latency_s * 1e6:.3g} us) overhead is {pct} of wall time")
            return text
        parts = [f"{pct} of wall time is overhead: {n} torch ops per call take {self.wall_s * 1e6:.3g} us"]
        if self.work_s is not None:
            parts.append(f"the FLOPs and bytes need {self.work_s * 1e6:.3g} us at the ceilings")
        parts.append(f"one tiny op costs {self.op_latency_s * 1e6:.3g} us here")
        if self.python_fraction is not None and self.python_fraction >= 0.05:
            parts.append(f"{100 * self.python_fraction:.0f}% of the time is Python between ops")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["overhead_bound"] = self.overhead_bound
        return d


def _profiled_calls(fn, args, kwargs, device, calls):
    from torch.profiler import ProfilerActivity, profile, record_function  # heavy import: only when used
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    synchronize(device)
    with profile(activities=activities) as prof:
        for _ in range(calls):
            with record_function(_MARK):
                fn(*args, **kwargs)
            synchronize(device)  # outside the mark: waiting is not Python time; the next call starts idle
    return prof.events()


def _top_level_ops(events, with_marks: bool = False):
    """Torch ops (names with '::': aten::mm, hwattn::flash_fwd) called directly from a marked call, not
    from inside another op; autograd.Function and Python-level records in between are looked through.
    with_marks: return (op, its mark) pairs."""
    top = []
    for e in events:
        if "::" not in e.name or e.device_type != torch.autograd.DeviceType.CPU:
            continue
        a = e.cpu_parent
        while a is not None and a.name != _MARK and "::" not in a.name:
            a = a.cpu_parent
        if a is not None and a.name == _MARK:
            top.append((e, a) if with_marks else e)
    return top


def _python_fraction(marks, top_with_marks):
    """Median over calls of the share of a call's time outside torch ops (a median: one call preempted by
    another process must not make a big op look like Python)."""
    in_ops = {}
    for op, mark in top_with_marks:
        in_ops[id(mark)] = in_ops.get(id(mark), 0.0) + op.time_range.elapsed_us()
    shares = [max(0.0, 1.0 - in_ops.get(id(m), 0.0) / m.time_range.elapsed_us())
              for m in marks if m.time_range.elapsed_us() > 0]
    return statistics.median(shares) if shares else None


def _merge(intervals):
    merged = []
    for s, e in sorted(intervals):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return merged


def overhead(fn, *args, prof: Profile | None = None, device=None, ceilings=None, calls: int | None = None,
             **kwargs) -> Overhead:
    """Measure the overhead share of fn(*args, **kwargs)'s wall time (method in the module docstring).

    Args:
        fn, *args, **kwargs: the op, as for `profile`.
        prof: its `Profile` (wall time and work); measured when None.
        device, ceilings: as for `profile`.
        calls: calls to run under the profiler (default: enough for ~0.1 s, 2 to 20).
    Returns an `Overhead`; `.overhead_bound` is fraction >= 0.5.
    """
    check_callable("fn", fn)
    if prof is not None and not isinstance(prof, Profile):
        raise TypeError(f"prof must be a hwattn.diagnose.Profile or None, got {type(prof).__name__}")
    if calls is not None and (isinstance(calls, bool) or not isinstance(calls, int) or calls < 1):
        raise ValueError(f"calls must be a positive int or None, got {calls!r}")
    dev = device_of(args, kwargs, fn) if device is None else resolve_device(device)
    c = _check_ceilings(ceilings, dev)
    if prof is None:
        prof = run_profile(fn, *args, device=dev, ceilings=c, **kwargs)
    wall = prof.time_s
    if calls is None:
        # enough calls for ~0.1 s, but few enough events to parse quickly (~30 us per event)
        calls = int(max(2, min(20, 0.1 / max(wall, 1e-9), 2000 / max(prof.n_ops or 1, 1))))
    events = _profiled_calls(fn, args, kwargs, dev, calls)
    cpu, cuda = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA
    marks = [e for e in events if e.name == _MARK and e.device_type == cpu]
    top_with_marks = _top_level_ops(events, with_marks=True)
    n_calls = max(1, len(marks))
    python_fraction = _python_fraction(marks, top_with_marks)
    if dev.type == "cuda":
        # kernels, memcpys, memsets; not the GPU-timeline copy of our own record_function mark
        device_events = [e for e in events if e.device_type == cuda and e.name != _MARK
                         and not getattr(e, "is_user_annotation", False)]
        if device_events:
            return _cuda_overhead(device_events, marks, wall, c.op_latency_s, c.kernel_latency_s)
        method = "dispatch model (no device events recorded)"
    else:
        method = "dispatch model"
    launches = len(top_with_marks) / n_calls
    work = prof.work_time_s
    excess = max(0.0, wall - work)
    if launches < 1:
        overhead_s = (python_fraction or 0.0) * wall
        per_launch = None
    else:
        per_launch = excess / launches
        overhead_s = excess if per_launch <= TINY_OP_FACTOR * c.op_latency_s else launches * c.op_latency_s
        overhead_s = max(overhead_s, (python_fraction or 0.0) * wall)
    fraction = min(1.0, overhead_s / wall) if wall > 0 else 0.0
    return Overhead(method=method, wall_s=wall, fraction=fraction, launches=launches,
                    op_latency_s=c.op_latency_s, python_fraction=python_fraction, work_s=work,
                    per_launch_excess_s=per_launch)


def _cuda_overhead(device_events, marks, wall, op_latency, kernel_latency) -> Overhead:
    intervals = [(e.time_range.start, e.time_range.end) for e in device_events]
    marks = sorted(marks, key=lambda e: e.time_range.start)
    n_calls = max(1, len(marks))
    merged = _merge(intervals)
    busy_total = sum(e - s for s, e in merged) * 1e-6
    # idle gaps between device intervals of the same call (a call's device work starts after its mark)
    starts = [m.time_range.start for m in marks] + [float("inf")]
    gaps = []
    for i in range(len(marks)):
        inside = [iv for iv in merged if starts[i] <= iv[0] < starts[i + 1]]
        gaps += [(b[0] - a[1]) * 1e-6 for a, b in zip(inside, inside[1:])]
    busy = busy_total / n_calls
    idle = max(0.0, wall - busy)
    fixed = 0.0
    if kernel_latency:
        fixed = sum(min((e - s) * 1e-6, kernel_latency) for s, e in intervals) / n_calls
    fraction = min(1.0, (idle + fixed) / wall) if wall > 0 else 0.0
    return Overhead(method="profiler", wall_s=wall, fraction=fraction, launches=len(device_events) / n_calls,
                    op_latency_s=op_latency, busy_s=busy, idle_fraction=idle / wall if wall > 0 else 0.0,
                    idle_gap_s=statistics.median(gaps) if gaps else None, fixed_kernel_s=fixed,
                    kernel_latency_s=kernel_latency)
