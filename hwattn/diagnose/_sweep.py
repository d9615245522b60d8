"""Horace He's intensity sweep: change an op's FLOPs while holding its bytes (or the reverse) and watch
whether runtime follows compute, bytes, or neither.

Built-in families (all measured with the same timing as `profile`):
    "intensity"  C = A @ B with A (M, K), B (K, N), M = N fixed, K growing: FLOPs = 2MNK grow with K while
                 bytes (MK + KN + MN) * itemsize stay dominated by the MN output. Runtime flat -> not
                 compute-bound (bytes or overhead set it); runtime proportional to K -> compute-bound. The K
                 where it turns is the measured ridge point.
    "bytes"      the reverse: FLOPs 2MNK held fixed while K shrinks and M = N grow, so bytes grow.
                 Runtime following bytes -> memory-bound; flat -> compute-bound (or overhead).
    "fma"        the essay's own experiment, CUDA: one Triton kernel reads x, applies y = y * a + b
                 `value` times in registers and writes y: bytes fixed (read + write), FLOPs = 2 * value
                 per element. (Runs on CPU only in the Triton interpreter, for tests.)
    callable     any family: value -> (fn, args, flops, bytes).
`scale_sweep(fn, *args)` is the essay's overhead test: scale the inputs and see if runtime follows the work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from . import _format as fmt
from ._device import device_of, resolve_device
from ._profile import _check_ceilings, check_callable
from ._timing import measure
from .counting import count

__all__ = ["Sweep", "SweepPoint", "Segment", "sweep", "scale_sweep", "FOLLOWS_ELASTICITY"]

FOLLOWS_ELASTICITY = 0.5  # runtime "follows" a quantity when d log(time) / d log(quantity) >= this
_DRIVER_DOMINANCE = 1.5   # a segment is driven by FLOPs (bytes) when their log-change is 1.5x the other's
_MIN_CHANGE = math.log(1.1)


@dataclass
class SweepPoint:
    value: float
    flops: float
    bytes: float
    time_s: float

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else math.inf


@dataclass
class Segment:
    """Between two consecutive points: what changed, and whether runtime followed it."""
    start: SweepPoint
    end: SweepPoint
    driver: str      # 'flops', 'bytes', 'both' (scaled together) or 'none'
    elasticity: float  # d log(time) / d log(driver)
    follows: str     # 'compute', 'bytes', 'work' (flops and bytes together) or 'neither'

    def describe(self) -> str:
        t = self.end.time_s / self.start.time_s
        f = self.end.flops / self.start.flops if self.start.flops else math.nan
        b = self.end.bytes / self.start.bytes if self.start.bytes else math.nan
        return f"time x{t:.2g} while FLOPs x{f:.2g}, bytes x{b:.2g}"


@dataclass
class Sweep:
    family: str
    device: str
    points: list
    segments: list = field(default_factory=list)
    ridge: float | None = None  # the ceilings' ridge for the family's dtype, for comparison

    @property
    def follows(self) -> str:
        """The one label all segments share, or 'mixed'."""
        labels = {s.follows for s in self.segments}
        return labels.pop() if len(labels) == 1 else "mixed"

    def runs(self):
        """Consecutive segments with the same label, as (label, first point, last point, segments)."""
        out = []
        for s in self.segments:
            if out and out[-1][0] == s.follows:
                out[-1][2] = s.end
                out[-1][3].append(s)
            else:
                out.append([s.follows, s.start, s.end, [s]])
        return [tuple(r) for r in out]

    @property
    def knee_intensity(self) -> float | None:
        """Intensity (FLOP/byte) where runtime switches between following compute and following bytes
        or nothing: the measured ridge point, when the sweep crosses it."""
        runs = self.runs()
        for a, b in zip(runs, runs[1:]):
            if "compute" in (a[0], b[0]) and a[0] != b[0]:
                return a[2].intensity
        return None

    def summary(self) -> str:
        parts = []
        for label, first, last, segs in self.runs():
            t = last.time_s / first.time_s
            f = last.flops / first.flops if first.flops else math.nan
            b = last.bytes / first.bytes if first.bytes else math.nan
            what = {"compute": "runtime follows FLOPs (compute-bound)",
                    "bytes": "runtime follows bytes (memory-bound)",
                    "work": "runtime follows the work (memory- or compute-bound, not overhead)",
                    "neither": "runtime follows neither"}[label]
            if label == "neither":
                driver = segs[0].driver
                what += {"flops": " (flat while FLOPs grow: bytes or overhead set it)",
                         "bytes": " (flat while bytes grow: compute or overhead sets it)",
                         "both": " (flat while the work grows: overhead-bound)"}.get(driver, "")
            parts.append(f"{first.value:g}->{last.value:g} (intensity {fmt.intensity(first.intensity)}->"
                         f"{fmt.intensity(last.intensity)} FLOP/byte): {what}; time x{t:.2g}, FLOPs x{f:.2g}, "
                         f"bytes x{b:.2g}")
        knee = self.knee_intensity
        if knee is not None:
            parts.append(f"measured knee ~{knee:.3g} FLOP/byte" +
                         (f" (ceilings' ridge {self.ridge:.3g})" if self.ridge else ""))
        return "; ".join(parts)


def _label(p0: SweepPoint, p1: SweepPoint) -> Segment:
    def dlog(a, b):
        return math.log(b / a) if a > 0 and b > 0 else 0.0
    rf, rb, rt = dlog(p0.flops, p1.flops), dlog(p0.bytes, p1.bytes), dlog(p0.time_s, p1.time_s)
    if abs(rf) >= _DRIVER_DOMINANCE * abs(rb) and abs(rf) >= _MIN_CHANGE:
        driver, r, yes = "flops", rf, "compute"
    elif abs(rb) >= _DRIVER_DOMINANCE * abs(rf) and abs(rb) >= _MIN_CHANGE:
        driver, r, yes = "bytes", rb, "bytes"
    elif max(abs(rf), abs(rb)) >= _MIN_CHANGE:
        driver, r, yes = "both", max(rf, rb, key=abs), "work"
    else:
        return Segment(p0, p1, "none", 0.0, "neither")
    e = rt / r
    return Segment(p0, p1, driver, e, yes if e >= FOLLOWS_ELASTICITY else "neither")


def _matmul_point(device, dtype, m, n, k, gen):
    a = torch.randn(m, k, device=device, generator=gen).to(dtype)
    b = torch.randn(k, n, device=device, generator=gen).to(dtype)
    e = a.element_size()
    return torch.mm, (a, b), 2.0 * m * n * k, float(e * (m * k + k * n + m * n))


def _defaults(family, device):
    cpu = device.type == "cpu"
    if family == "intensity":
        return [2**i for i in range(0, 10)] if cpu else [2**i for i in range(4, 14)]
    if family == "bytes":
        return [512, 256, 128, 64, 32, 16, 8] if cpu else [4096, 2048, 1024, 512, 256, 128, 64]
    if family == "fma":
        return [2**i for i in range(0, 11)] if not cpu else [1, 4]
    raise ValueError(family)


def _family(family, device, dtype, size):
    gen = torch.Generator(device=device).manual_seed(0)
    cpu = device.type == "cpu"
    if family == "intensity":
        side = size or (1024 if cpu else 8192)
        return lambda k: _matmul_point(device, dtype, side, side, int(k), gen)
    if family == "bytes":
        total = 2.0 * (512**3 if cpu else 8192 * 8192 * 4096) if size is None else 2.0 * size**3
        def point(k):
            side = max(1, round(math.sqrt(total / (2.0 * k))))
            return _matmul_point(device, dtype, side, side, int(k), gen)
        return point
    if family == "fma":
        from ._fma import repeated_fma
        numel = size or (2**12 if cpu else 2**26)
        x = torch.randn(numel, device=device, generator=gen, dtype=torch.float32)
        return lambda r: (lambda: repeated_fma(x, int(r)), (), 2.0 * int(r) * numel, 2.0 * x.nbytes)
    raise ValueError(family)


def sweep(family="intensity", values=None, *, device=None, dtype: torch.dtype | None = None,
          size: int | None = None, ceilings=None, budget_s: float | None = None) -> Sweep:
    """Run an intensity sweep and say whether runtime follows compute, bytes, or neither.

    Args:
        family: "intensity" (FLOPs grow, bytes held), "bytes" (bytes grow, FLOPs held), "fma" (Horace He's
            repeated multiply-add in one Triton kernel), or a callable value -> (fn, args, flops, bytes).
        values: the knob per point (K for the matmul families, repeats for fma); defaults per family/device.
        device: 'cpu' or 'cuda[:N]' (default: cuda if available, else cpu).
        dtype: matmul dtype (default float32 on CPU, bfloat16 on CUDA).
        size: M = N for "intensity"; the cube root of FLOPs/2 for "bytes"; elements for "fma".
        ceilings: to print the ceilings' ridge point beside the measured knee (optional).
        budget_s: timing budget per point (default 0.1 s CPU, 0.2 s GPU).
    Returns a `Sweep` (points, labelled segments, `.follows`, `.knee_intensity`, `.summary()`).
    """
    dev = resolve_device(device)
    if dtype is None:
        dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"size must be a positive int or None, got {size!r}")
    if isinstance(family, str):
        if family not in ("intensity", "bytes", "fma"):
            raise ValueError(f"family must be 'intensity', 'bytes', 'fma' or a callable, got {family!r}")
        make = _family(family, dev, dtype, size)
        name = family
        values = _defaults(family, dev) if values is None else values
    else:
        check_callable("family", family)
        if values is None:
            raise ValueError("values are required when family is a callable")
        make, name = family, getattr(family, "__name__", "custom")
    values = list(values)
    if len(values) < 2:
        raise ValueError(f"values must have at least 2 points, got {values!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"values must be positive numbers, got {v!r}")
    budget = budget_s if budget_s is not None else (0.1 if dev.type == "cpu" else 0.2)
    points = []
    for v in values:
        fn, args, flops, nbytes = make(v)
        timing = measure(fn, args, device=dev, budget_s=budget, min_reps=3)
        points.append(SweepPoint(float(v), float(flops), float(nbytes), timing.median_s))
        del fn, args
    ridge = None
    if ceilings is not None:
        c = _check_ceilings(ceilings, dev)
        ridge = c.ridge("fp32" if name == "fma" else dtype)
    return Sweep(name, str(dev), points, [_label(a, b) for a, b in zip(points, points[1:])], ridge)


def _scale(t: torch.Tensor, factor: int) -> torch.Tensor:
    return torch.cat([t] * factor, dim=0) if factor > 1 else t


def scale_sweep(fn, *args, factors=(1, 2, 4, 8), scale_args=(0,), device=None, budget_s: float | None = None,
                **kwargs) -> Sweep:
    """The essay's overhead test: grow the inputs and see whether runtime grows with the work.

    The positional tensor arguments listed in `scale_args` (default: the first) are repeated `factor`
    times along dim 0; FLOPs and bytes are counted per point. Runtime that follows the work means the op
    is memory- or compute-bound; runtime that stays flat means overhead-bound.
    Returns a `Sweep` whose segments are labelled 'work' or 'neither'.
    """
    check_callable("fn", fn)
    factors = list(factors)
    if len(factors) < 2 or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in factors):
        raise ValueError(f"factors must be at least 2 positive ints, got {factors!r}")
    for i in scale_args:
        if not isinstance(i, int) or not 0 <= i < len(args) or not isinstance(args[i], torch.Tensor):
            raise ValueError(f"scale_args must index tensor arguments of fn, got {i!r} for {len(args)} args")
    dev = device_of(args, kwargs, fn) if device is None else resolve_device(device)
    budget = budget_s if budget_s is not None else (0.1 if dev.type == "cpu" else 0.2)
    points = []
    for f in factors:
        scaled = tuple(_scale(a, f) if i in scale_args else a for i, a in enumerate(args))
        c = count(fn, *scaled, **kwargs)
        timing = measure(fn, scaled, kwargs, dev, budget_s=budget, min_reps=3)
        points.append(SweepPoint(float(f), float(c.flops), float(max(c.bytes_min, c.bytes_ops)), timing.median_s))
    name = getattr(fn, "__name__", type(fn).__name__)
    return Sweep(f"scale {name}", str(dev), points, [_label(a, b) for a, b in zip(points, points[1:])])
