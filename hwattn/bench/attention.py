"""Exact attention throughput: hwattn against SDPA's cuDNN / flash / efficient backends, compiled
FlexAttention and the naive five steps, over the standard grid (B*N = 16384 tokens, H*D = 2048)."""
from __future__ import annotations

import csv
import math
import os
from dataclasses import asdict, dataclass, field

import torch

from .memory import peak_extra_bytes
from .providers import PROVIDERS

ALL_PROVIDERS = ["hwattn", "sdpa_cudnn", "sdpa_flash", "sdpa_efficient", "flex", "naive"]
# valid for --providers, not part of "all"
EXTRA_PROVIDERS = ["hwattn_split", "hwattn_fused", "hwattn_persistent", "hwattn_atomic", "hwattn_gluon", "hwattn_portable",
                   "hwattn_auto", "hwattn_gluon_bwd", "fa4"]
NAIVE_MAX_BYTES = 24 * 2**30  # the naive provider materialises S and P; skip it where they would not fit


@dataclass
class Config:
    d: int
    n: int
    causal: bool
    tokens: int = 16384
    hidden: int = 2048

    @property
    def batch(self):
        return max(1, self.tokens // self.n)

    @property
    def heads(self):
        return self.hidden // self.d

    def flops_fwd(self):
        f = 4.0 * self.batch * self.heads * self.n * self.n * self.d
        return f / 2 if self.causal else f


@dataclass
class Result:
    provider: str
    d: int
    n: int
    causal: int
    batch: int
    heads: int
    fwd_ms: float = float("nan")
    bwd_ms: float = float("nan")
    fwd_tflops: float = float("nan")
    bwd_tflops: float = float("nan")
    peak_mem_mb: float = float("nan")
    error: str = ""


def grid(quick: bool, ds=(64, 128), ns=None, causals=(False, True)):
    if ns is None:
        ns = (1024, 4096) if quick else (512, 1024, 2048, 4096, 8192, 16384)
    return [Config(d=d, n=n, causal=c) for d in ds for n in ns for c in causals]


def _timer(device):
    if device.type == "cuda":
        import triton.testing

        def bench(fn):
            return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
        return bench
    import time

    def bench_cpu(fn, reps=3):
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return sorted(times)[len(times) // 2]
    return bench_cpu


def run_one(provider: str, cfg: Config, device, dtype, modes=("fwd", "bwd")) -> Result:
    res = Result(provider, cfg.d, cfg.n, int(cfg.causal), cfg.batch, cfg.heads)
    if provider == "naive":
        s_bytes = cfg.batch * cfg.heads * cfg.n * cfg.n * torch.finfo(dtype).bits // 8
        if 4 * s_bytes > NAIVE_MAX_BYTES:
            res.error = f"skipped: S and P need ~{4 * s_bytes / 2**30:.0f} GiB"
            return res
    torch.manual_seed(0)
    shape = (cfg.batch, cfg.n, cfg.heads, cfg.d)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    bench = _timer(device)
    env = getattr(PROVIDERS[provider], "env", {})
    saved_env = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        fn = PROVIDERS[provider](q, k, v, cfg.causal)
        inputs = getattr(fn, "inputs", (q, k, v))
        out = fn()
        do = torch.randn_like(out)
        if "bwd" in modes:
            # compile and autotune the backward too before anything is timed, so that no timing runs right
            # after an autotuning burst (a failing backward is reported by its own timing below)
            try:
                torch.autograd.grad(out, inputs, do, retain_graph=True)
            except Exception:  # noqa: BLE001
                pass
        if device.type == "cuda":
            torch.cuda.synchronize()
        if "fwd" in modes:
            with torch.no_grad():
                res.fwd_ms = bench(fn)
            res.fwd_tflops = cfg.flops_fwd() / res.fwd_ms / 1e9
        if "bwd" in modes:
            out = fn()

            def backward():
                torch.autograd.grad(out, inputs, do, retain_graph=True)
            res.bwd_ms = bench(backward)
            res.bwd_tflops = 2.5 * cfg.flops_fwd() / res.bwd_ms / 1e9
            del out

            def fwd_bwd():
                torch.autograd.grad(fn(), inputs, do)
            res.peak_mem_mb = peak_extra_bytes(fwd_bwd, device) / 2**20
    except Exception as e:  # one provider failing must not end the run; the table says why
        res.error = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return res


def best_of(a: Result, b: Result) -> Result:
    """Two timing rounds of one provider and config merged: the faster median of each mode (clock and
    ordering noise only ever slows a run down); an error stands only if no round succeeded."""
    out = Result(**asdict(a))
    for mode in ("fwd", "bwd"):
        if not getattr(a, f"{mode}_ms") <= getattr(b, f"{mode}_ms"):  # also when a's is NaN
            if not math.isnan(getattr(b, f"{mode}_ms")):
                setattr(out, f"{mode}_ms", getattr(b, f"{mode}_ms"))
                setattr(out, f"{mode}_tflops", getattr(b, f"{mode}_tflops"))
    if math.isnan(out.peak_mem_mb):
        out.peak_mem_mb = b.peak_mem_mb
    out.error = a.error if (a.error and b.error) else ""
    return out


def write_csv(results, path):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(results[0]).keys()))
        w.writeheader()
        for r in results:
            w.writerow(asdict(r))


def geomean(xs):
    xs = [x for x in xs if x == x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def plot(results, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = sorted({(r.d, r.causal) for r in results})
    fig, axes = plt.subplots(2, len(keys), figsize=(4.2 * len(keys), 7), squeeze=False)
    for col, (d, causal) in enumerate(keys):
        for row, mode in enumerate(("fwd", "bwd")):
            ax = axes[row][col]
            for prov in dict.fromkeys(r.provider for r in results):
                pts = sorted((r.n, getattr(r, f"{mode}_tflops")) for r in results
                             if r.provider == prov and r.d == d and r.causal == causal)
                pts = [(n, t) for n, t in pts if t == t]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=prov,
                            linewidth=2.5 if prov == "hwattn" else 1.2)
            ax.set_xscale("log", base=2)
            ax.set_title(f"{mode}, D={d}, {'causal' if causal else 'full'}")
            ax.set_xlabel("sequence length N")
            ax.set_ylabel("TFLOP/s")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
