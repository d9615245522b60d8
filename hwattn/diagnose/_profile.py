"""profile(fn, *args): time a callable, count (or take) its FLOPs and bytes, place it on the roofline."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ._device import device_of, resolve_device
from ._timing import measure
from ._ceilings import Ceilings, ceilings as measured_ceilings, dtype_key
from .counting import _flat_tensors, count

__all__ = ["Profile", "profile", "check_callable", "check_count"]


def check_callable(name: str, fn) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be callable (a function, a module or a lambda), got "
                        f"{type(fn).__name__} ({fn!r:.80})")


def check_count(name: str, value) -> float | None:
    """None, or a finite number >= 0 (FLOPs, bytes)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or None, got {type(value).__name__} ({value!r})")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


def _check_ceilings(c, device):
    if c is None:
        return measured_ceilings(device)
    if not isinstance(c, Ceilings):
        raise TypeError(f"ceilings must be a hwattn.diagnose.Ceilings or None, got {type(c).__name__}")
    if resolve_device(c.device).type != device.type:
        raise ValueError(f"ceilings were measured on {c.device}, but the op runs on {device}")
    return c


@dataclass
class Profile:
    """One op measured against the device's ceilings. Times in seconds, rates per second.

    flops / bytes: what the roofline uses (the caller's numbers when given, else counted: bytes are then
    max(bytes_min, bytes_ops), see hwattn.diagnose.counting). compute_time_s = FLOPs at the measured
    peak, memory_time_s = bytes at the measured copy bandwidth; the larger is the roofline bound.
    work_time_s: the least time the work needs at the ceilings, op by op (used for overhead).
    """
    name: str
    device: str
    dtype: str | None
    peak_key: str
    time_s: float
    spread: float
    samples: int
    flops: float
    bytes: float
    flops_source: str
    bytes_source: str
    bytes_min: int | None
    bytes_ops: int | None
    n_ops: int | None
    peak_flops: float
    bandwidth: float
    compute_time_s: float
    memory_time_s: float
    work_time_s: float

    @property
    def achieved_flops(self) -> float:
        return self.flops / self.time_s

    @property
    def achieved_bandwidth(self) -> float:
        return self.bytes / self.time_s

    @property
    def intensity(self) -> float:
        """FLOPs per byte (0 for an op without FLOPs, inf for one without bytes)."""
        if self.bytes == 0:
            return math.inf if self.flops else 0.0
        return self.flops / self.bytes

    @property
    def ridge(self) -> float:
        return self.peak_flops / self.bandwidth

    @property
    def bound(self) -> str:
        """'memory' or 'compute': which roof is lower at this op's intensity."""
        return "memory" if self.memory_time_s >= self.compute_time_s else "compute"

    @property
    def bound_time_s(self) -> float:
        return max(self.compute_time_s, self.memory_time_s)

    @property
    def attainable_flops(self) -> float:
        """The roofline at this op's intensity: min(peak, intensity * bandwidth)."""
        return min(self.peak_flops, self.intensity * self.bandwidth)

    @property
    def roofline_fraction(self) -> float:
        """Roofline bound time / measured time: 1.0 = at the ceiling."""
        return self.bound_time_s / self.time_s if self.time_s > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("achieved_flops", "achieved_bandwidth", "intensity", "ridge", "bound", "bound_time_s",
                  "attainable_flops", "roofline_fraction"):
            d[k] = getattr(self, k)
        return d


def _first_float_dtype(args, kwargs, fn):
    for t in _flat_tensors([list(args), kwargs]):
        if t.is_floating_point():
            return t.dtype
    if isinstance(fn, torch.nn.Module):
        for p in fn.parameters():
            if p.is_floating_point():
                return p.dtype
    return None


def profile(fn, *args, flops=None, bytes=None, name: str | None = None, device=None,
            ceilings: Ceilings | None = None, budget_s: float | None = None, dtype: torch.dtype | None = None,
            **kwargs) -> Profile:
    """Time fn(*args, **kwargs) and place it on the roofline of the device it runs on.

    Args:
        fn: any callable (function, nn.Module, lambda) taking tensors on one device.
        *args, **kwargs: passed to fn (keyword arguments that are not profile's own).
        flops: FLOPs of one call; counted with torch.utils.flop_counter (+ vector FLOPs) when None.
            Ops outside torch's dispatcher (raw Triton launches) are invisible: pass flops for them.
        bytes: bytes one call must move; when None, max(bytes_min, bytes_ops) as counted
            (inputs read once + outputs written once, or per aten op for unfused eager code).
        name: label in tables and plots (default: fn's name).
        device: 'cpu' / 'cuda' / 'cuda:N'; default: the device of the first tensor argument (else cpu).
        ceilings: measured ceilings of that device; measured (or loaded from cache) when None.
        budget_s: seconds of timed calls (default 0.3 on CPU, 0.5 on GPU; at least 5 calls).
        dtype: the dtype whose matmul peak applies when flops are given (default: the counted op's dtype,
            else the first floating tensor argument's; float32 on CUDA means TF32 when TF32 is enabled).

    Timing: warm-up, then the median of per-call times (CUDA events on GPU, each call from an idle GPU with
    a flushed L2; grouped perf_counter calls on CPU). Returns a `Profile`.
    """
    check_callable("fn", fn)
    flops = check_count("flops", flops)
    bytes = check_count("bytes", bytes)
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str or None, got {type(name).__name__}")
    if budget_s is not None:
        budget_s = check_count("budget_s", budget_s)
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype or None, got {type(dtype).__name__}")
    dev = device_of(args, kwargs, fn) if device is None else resolve_device(device)
    c = _check_ceilings(ceilings, dev)
    label = name or getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__

    counts = count(fn, *args, **kwargs)
    counts.output = None
    timing = measure(fn, args, kwargs, dev, budget_s=budget_s or (0.3 if dev.type == "cpu" else 0.5))

    op_dtype = dtype or counts.dtype or _first_float_dtype(args, kwargs, fn)
    key = (dtype_key(op_dtype, dev) if op_dtype is not None else None) or "fp32"
    peak, key = c.peak(key)
    if flops is None:
        total_flops, flops_source = float(counts.flops), "counted"
        compute_time = counts.compute_time(c, dev)
        if total_flops > 0 and compute_time > 0:
            peak = total_flops / compute_time  # matmul and vector FLOPs mixed: their effective peak
    else:
        total_flops, flops_source = flops, "given"
        compute_time = flops / peak
    if bytes is None:
        total_bytes = float(max(counts.bytes_min, counts.bytes_ops))
        bytes_source = "counted per op" if counts.bytes_ops > counts.bytes_min else "counted in+out"
    else:
        total_bytes, bytes_source = bytes, "given"
    memory_time = total_bytes / c.bandwidth
    work = max(counts.work_time(c, dev), compute_time, memory_time)
    return Profile(name=label, device=str(dev), dtype=str(op_dtype).replace("torch.", "") if op_dtype else None,
                   peak_key=key, time_s=timing.median_s, spread=timing.spread, samples=len(timing.times_s),
                   flops=total_flops, bytes=total_bytes, flops_source=flops_source, bytes_source=bytes_source,
                   bytes_min=counts.bytes_min, bytes_ops=counts.bytes_ops, n_ops=counts.n_ops,
                   peak_flops=peak, bandwidth=c.bandwidth, compute_time_s=compute_time,
                   memory_time_s=memory_time, work_time_s=work)
