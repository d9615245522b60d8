"""Measured ceilings of a device: dense-matmul FLOP/s per dtype, copy bandwidth, the cost of one tiny op.

Measured once per device and library versions, then cached as JSON in $HWATTN_CACHE_DIR (default
~/.cache/hwattn). These are *achievable* peaks (what torch's own matmul and copy reach on random data),
not datasheet numbers: the roofline a user's op is judged against is one real code can reach. Each is the
best of several timed samples (noise from other processes only ever slows a run down).
"""
from __future__ import annotations

import datetime
import json
import os
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import torch

from .._checks import check_bool
from ._device import device_name, resolve_device, slug, synchronize
from ._timing import measure

__all__ = ["Ceilings", "ceilings", "dtype_key", "cache_dir"]

# dtype key -> label shown to people
DTYPE_LABELS = {"fp64": "float64", "fp32": "float32 (no TF32)", "tf32": "float32 as TF32",
                "fp16": "float16", "bf16": "bfloat16", "fp8": "float8 e4m3 (scaled_mm, fp32 scales)"}
_FP8 = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
             if hasattr(torch, n))
_FORMAT = 3  # bump when the measurement changes, so old cache files are not reused


def tf32_enabled() -> bool:
    """Whether float32 matmuls on CUDA currently run as TF32."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if getattr(torch.backends.cuda.matmul, "allow_tf32", False):
            return True
        return torch.get_float32_matmul_precision() != "highest"


def dtype_key(dtype: torch.dtype, device: torch.device) -> str | None:
    """The ceilings key whose matmul peak applies to `dtype` on `device` (None for non-float dtypes)."""
    if dtype == torch.float32:
        return "tf32" if device.type == "cuda" and tf32_enabled() else "fp32"
    if dtype in _FP8:
        return "fp8"
    return {torch.float64: "fp64", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype)


def cache_dir() -> Path:
    """$HWATTN_CACHE_DIR, else ~/.cache/hwattn."""
    env = os.environ.get("HWATTN_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hwattn"


def _versions() -> dict:
    try:
        triton_version = metadata.version("triton")
    except metadata.PackageNotFoundError:
        triton_version = "none"
    return {"torch": torch.__version__, "triton": triton_version}


@dataclass
class Ceilings:
    """Achievable peaks of one device.

    matmul_flops: dtype key ('fp64', 'fp32', 'tf32', 'fp16', 'bf16', 'fp8') -> FLOP/s of a large dense
        matmul. 'fp32' is float32 without TF32; it is also used as the peak of non-matmul (vector) FLOPs.
    bandwidth: bytes/s of a large device-to-device copy, counting bytes read plus bytes written.
    op_latency_s: wall time of one tiny op (a 1-element add/mul/exp/sum; median over the four ops of
        each op's best loop of 100 calls): the fixed cost each
        op pays however little work it does (Python + dispatcher, plus the kernel launch on GPU).
    kernel_latency_s: CUDA only: GPU-side duration of the kernel of a 1-element add (torch.profiler,
        median): what every kernel costs the GPU even when it does nothing.
    """
    device: str
    name: str
    matmul_flops: dict
    bandwidth: float
    op_latency_s: float
    versions: dict
    threads: int | None = None
    l2_bytes: int | None = None
    kernel_latency_s: float | None = None
    matmul_sizes: dict = field(default_factory=dict)
    measured_at: str = ""
    measure_time_s: float = 0.0
    format: int = _FORMAT
    path: str | None = None      # the cache file, when there is one (not saved in it)
    from_cache: bool = False     # loaded rather than measured now (not saved)

    def peak(self, dtype: torch.dtype | str) -> tuple[float, str]:
        """(FLOP/s, key used) of a matmul in `dtype`; falls back to fp32 when the dtype was not measured."""
        key = dtype if isinstance(dtype, str) else dtype_key(dtype, torch.device(self.device))
        if key in self.matmul_flops:
            return self.matmul_flops[key], key
        return self.matmul_flops["fp32"], "fp32"

    @property
    def vector_flops(self) -> float:
        """Peak of non-matmul FLOPs, taken as float32 matmul without tensor cores (same FMA units)."""
        return self.matmul_flops["fp32"]

    def ridge(self, dtype: torch.dtype | str) -> float:
        """FLOP/byte where the roofline turns from memory- to compute-bound for `dtype`."""
        return self.peak(dtype)[0] / self.bandwidth

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("path")
        d.pop("from_cache")
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Ceilings":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k not in ("path", "from_cache")}
        return cls(**known)


def _cache_path(device: torch.device) -> Path:
    v = _versions()
    name = device_name(device) if device.type == "cuda" else f"cpu-{_short_cpu()}-t{torch.get_num_threads()}"
    return cache_dir() / f"ceilings-{slug(name)}-torch{slug(v['torch'])}-triton{slug(v['triton'])}.json"


def _short_cpu() -> str:
    return device_name(torch.device("cpu")).split(" (")[0]


def ceilings(device=None, refresh: bool = False, cache: bool = True, quick: bool = False) -> Ceilings:
    """Measured ceilings of `device` ('cpu', 'cuda', 'cuda:N' or a torch.device), cached on disk.

    Args:
        device: the device to measure; must exist (ValueError otherwise). None: cuda if available, else cpu.
        refresh: measure again even if a cache file exists.
        cache: read and write the cache file ($HWATTN_CACHE_DIR or ~/.cache/hwattn, one file per device
            name, torch and triton version, and on CPU the torch thread count).
        quick: smaller sizes and fewer repeats (about 1 s on CPU); for tests and smoke runs.

    Measured on CPU: float64/float32/float16/bfloat16 matmul (sizes up to 1024), a 128 MiB copy, tiny ops.
    On CUDA: the same plus TF32 and float8 (torch._scaled_mm, where the GPU has it) at 8192^3, a 1 GiB copy.
    Returns a `Ceilings`; a few seconds on CPU, about 10 s on an H100.
    """
    dev = resolve_device(device)
    check_bool("refresh", refresh)
    check_bool("cache", cache)
    check_bool("quick", quick)
    path = _cache_path(dev)
    if cache and not refresh and path.exists():
        try:
            c = Ceilings.from_json(json.loads(path.read_text()))
            if c.format == _FORMAT and c.versions == _versions():
                c.device, c.path, c.from_cache = str(dev), str(path), True
                return c
        except (OSError, ValueError, TypeError, KeyError):
            pass  # unreadable or stale: measure again
    c = measure_ceilings(dev, quick=quick)
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(c.to_json(), indent=2))
            os.replace(tmp, path)
            c.path = str(path)
        except OSError as e:
            warnings.warn(f"could not write the ceilings cache {path}: {e}")
    return c


def measure_ceilings(device: torch.device, quick: bool = False) -> Ceilings:
    """Measure now, no cache (see `ceilings`)."""
    t0 = time.perf_counter()
    flops, sizes = {}, {}
    for key in _matmul_keys(device):
        try:
            rate, n = _matmul_peak(device, key, quick)
        except Exception as e:  # a dtype this build/device cannot multiply: leave it out, say why
            warnings.warn(f"hwattn diagnose: {key} matmul not measured on {device}: {type(e).__name__}: {e}")
            continue
        flops[key], sizes[key] = rate, n
    if "fp32" not in flops:
        raise RuntimeError(f"could not measure a float32 matmul on {device}")
    bandwidth = _copy_bandwidth(device, quick)
    latency = _op_latency(device)
    l2 = kernel_latency = None
    if device.type == "cuda":
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", None)
        try:
            kernel_latency = _kernel_latency(device)
        except Exception as e:  # no CUPTI: overhead falls back to idle time alone
            warnings.warn(f"hwattn diagnose: kernel latency not measured on {device}: {type(e).__name__}: {e}")
    return Ceilings(device=str(device), name=device_name(device), matmul_flops=flops, bandwidth=bandwidth,
                    op_latency_s=latency, versions=_versions(),
                    threads=torch.get_num_threads() if device.type == "cpu" else None, l2_bytes=l2,
                    kernel_latency_s=kernel_latency,
                    matmul_sizes=sizes, measured_at=datetime.datetime.now().isoformat(timespec="seconds"),
                    measure_time_s=time.perf_counter() - t0)


def _matmul_keys(device):
    if device.type == "cpu":
        return ["fp32", "fp64", "bf16", "fp16"]
    keys = ["fp32", "tf32", "fp64", "fp16", "bf16"]
    if _FP8 and hasattr(torch, "_scaled_mm") and torch.cuda.get_device_capability(device) >= (8, 9):
        keys.append("fp8")
    return keys


def _matmul_fn(device, key, n):
    gen = torch.Generator(device=device).manual_seed(n)
    if key == "fp8":
        a = torch.randn(n, n, device=device, generator=gen).to(torch.float8_e4m3fn)
        b = torch.randn(n, n, device=device, generator=gen).to(torch.float8_e4m3fn).t()  # column-major
        one = torch.ones((), device=device)
        return lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16,
                                        use_fast_accum=True)
    dtype = {"fp64": torch.float64, "fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16,
             "bf16": torch.bfloat16}[key]
    a = torch.randn(n, n, device=device, generator=gen).to(dtype)
    b = torch.randn(n, n, device=device, generator=gen).to(dtype)
    return lambda: torch.mm(a, b)


class _tf32:
    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.saved = (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
            torch.backends.cuda.matmul.allow_tf32 = self.on
            torch.set_float32_matmul_precision("high" if self.on else "highest")

    def __exit__(self, *exc):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cuda.matmul.allow_tf32 = self.saved[0]
            torch.set_float32_matmul_precision(self.saved[1])


def _matmul_peak(device, key, quick):
    """Best FLOP/s over a ladder of square sizes; stops growing once one call is long enough."""
    if device.type == "cpu":
        ladder, long_call, budget = ([256, 512] if quick else [256, 512, 1024]), 0.02, (0.05 if quick else 0.15)
    else:
        ladder, long_call, budget = ([4096] if quick else [4096, 8192]), 1.0, (0.1 if quick else 0.4)
    best, best_n = 0.0, 0
    with _tf32(key == "tf32"):
        for n in ladder:
            fn = _matmul_fn(device, key, n)
            timing = measure(fn, device=device, budget_s=budget, min_reps=3, warmup_s=0.02 if quick else 0.1,
                             flush_cache=False)
            rate = 2.0 * n**3 / min(timing.times_s)  # best sample: noise only ever slows a peak down
            if rate > best:
                best, best_n = rate, n
            if min(timing.times_s) > long_call:
                break
            del fn
    return best, best_n


def _copy_bandwidth(device, quick) -> float:
    if device.type == "cpu":
        nbytes = (64 if quick else 128) * 2**20
    else:
        nbytes = (256 if quick else 1024) * 2**20
    src = torch.empty(nbytes // 4, dtype=torch.int32, device=device).random_()
    dst = torch.empty_like(src)
    timing = measure(lambda: dst.copy_(src), device=device, budget_s=0.1 if quick else 0.3, min_reps=3,
                     flush_cache=False)
    return 2.0 * nbytes / min(timing.times_s)


def _op_latency(device, loop: int = 100, samples: int = 7) -> float:
    a = torch.randn(1, device=device)
    b = torch.randn(1, device=device)
    ops = (lambda: a + b, lambda: a * 2.0, lambda: torch.exp(a), lambda: a.sum())
    per_op = []
    for op in ops:
        for _ in range(10):
            op()
        synchronize(device)
        times = []
        for _ in range(samples):
            t0 = time.perf_counter()
            for _ in range(loop):
                op()
            synchronize(device)
            times.append((time.perf_counter() - t0) / loop)
        per_op.append(min(times))
    return statistics.median(per_op)



def _kernel_latency(device) -> float | None:
    """Median GPU duration of the kernel of a 1-element add, from torch.profiler's CUDA activity."""
    from torch.profiler import ProfilerActivity, profile
    a = torch.randn(1, device=device)
    b = torch.randn(1, device=device)
    for _ in range(10):
        a + b
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(50):
            a + b
        torch.cuda.synchronize(device)
    durations = [(e.time_range.end - e.time_range.start) * 1e-6 for e in prof.events()
                 if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    return statistics.median(durations) if durations else None
