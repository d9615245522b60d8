"""`hwattn demo`, the main job: what the library is for, in a few minutes on any machine.

1. The tiled Triton kernel computes exact attention: outputs and all three gradients against the float64
   five-step reference, on shapes that break naive kernels (odd lengths, Nq != Nk, GQA, causal).
2. It is IO-aware: peak memory of the naive five steps grows as N^2 (S and P are written out), the
   tiled kernel's as N (only O and the log-sum-exp). Measured, tabulated, plotted, slopes fitted.
"""
from __future__ import annotations

import argparse
import math
import os
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="results/demo", help="directory for demo_memory.csv / demo_memory.png")
    p.add_argument("--max-n", type=int, default=None,
                   help="longest sequence in the memory sweep (default 2048 on CPU, 16384 on GPU)")


def _fit_slope(ns, ys):
    xs, zs = [math.log(n) for n in ns], [math.log(y) for y in ys]
    mx, mz = sum(xs) / len(xs), sum(zs) / len(zs)
    return sum((x - mx) * (z - mz) for x, z in zip(xs, zs)) / sum((x - mx) ** 2 for x in xs)


def main(args) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from . import flash_attention
    from ._runtime import interpreting
    from .bench.memory import peak_extra_bytes
    from .reference import attention as reference
    from .testing import TOLERANCE, rel_err

    console = Console(width=None if Console().is_terminal else 130)
    if args.max_n is not None and args.max_n < 64:
        raise SystemExit(f"--max-n must be >= 64, got {args.max_n}")
    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    if not on_gpu and not interpreting():
        raise SystemExit("No GPU: set TRITON_INTERPRET=1 to run the Triton kernels on the CPU (./run.sh demo does)")
    dtype = torch.bfloat16 if on_gpu else torch.float16  # the interpreter's bf16 dot is wrong; fp16 is right
    where = torch.cuda.get_device_name() if on_gpu else "CPU (Triton interpreter)"
    console.rule(f"hwattn demo on {where}")

    # 1. correctness -------------------------------------------------------------------------------
    t0 = time.time()
    table = Table(title=f"exact: ||x - ref|| / ||ref|| against float64 five steps ({str(dtype)[6:]}, bound "
                        f"{TOLERANCE[dtype]:.0e})")
    for col in ("B", "Nq", "Nk", "Hq/Hkv", "D", "causal", "out", "dQ", "dK", "dV", "ok"):
        table.add_column(col, justify="right")
    shapes = [(2, 100, 100, 4, 4, 64, False), (1, 257, 257, 4, 2, 80, True), (1, 67, 190, 8, 2, 128, True),
              (2, 190, 67, 4, 1, 32, True)]
    all_ok = True
    for B, nq, nk, hq, hkv, d, causal in shapes:
        torch.manual_seed(nq * 1000 + nk)
        q = torch.randn(B, nq, hq, d, device=device, dtype=dtype, requires_grad=True)
        k = torch.randn(B, nk, hkv, d, device=device, dtype=dtype, requires_grad=True)
        v = torch.randn(B, nk, hkv, d, device=device, dtype=dtype, requires_grad=True)
        out = flash_attention(q, k, v, causal=causal)
        do = torch.randn_like(out)
        grads = torch.autograd.grad(out, (q, k, v), do)
        x64 = [x.detach().double().requires_grad_() for x in (q, k, v)]
        ref = reference(*x64, causal=causal)
        ref_grads = torch.autograd.grad(ref, x64, do.double())
        errs = [rel_err(out, ref)] + [rel_err(g, r) for g, r in zip(grads, ref_grads)]
        ok = all(e <= TOLERANCE[dtype] for e in errs)
        all_ok &= ok
        table.add_row(str(B), str(nq), str(nk), f"{hq}/{hkv}", str(d), "yes" if causal else "no",
                      *(f"{e:.1e}" for e in errs), "[green]yes[/]" if ok else "[red]NO[/]")
    console.print(table)
    console.print(f"[dim]({time.time() - t0:.1f}s)[/]")

    # 2. memory: naive O(N^2) against tiled O(N) --------------------------------------------------------
    t0 = time.time()
    max_n = args.max_n or (16384 if on_gpu else 2048)
    ns = [n for n in (256, 512, 1024, 2048, 4096, 8192, 16384) if n <= max_n]
    heads, d = (16, 128) if on_gpu else (2, 64)
    # fwd+bwd on the GPU; forward only on the CPU, where the interpreter makes the backward slow
    with_backward = on_gpu
    rows = []
    for n in ns:
        torch.manual_seed(n)
        q, k, v = (torch.randn(1, n, heads, d, device=device, dtype=dtype, requires_grad=with_backward)
                   for _ in range(3))

        def run(fn):
            def go():
                out = fn(q, k, v)
                if with_backward:
                    torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
            return go
        naive = peak_extra_bytes(run(lambda q, k, v: reference(q, k, v, causal=True)), device)
        tiled = peak_extra_bytes(run(lambda q, k, v: flash_attention(q, k, v, causal=True)), device)
        rows.append((n, naive, tiled))
    mem = Table(title=f"peak extra memory of causal attention {'fwd+bwd' if with_backward else 'forward'}, "
                      f"B=1, H={heads}, D={d}, {str(dtype)[6:]}")
    for col in ("N", "naive five steps", "hwattn (tiled)", "naive / tiled"):
        mem.add_column(col, justify="right")
    for n, a, b in rows:
        mem.add_row(str(n), f"{a / 2**20:.1f} MiB", f"{b / 2**20:.2f} MiB", f"{a / b:.0f}x")
    console.print(mem)
    slope_naive = _fit_slope([r[0] for r in rows], [r[1] for r in rows])
    slope_tiled = _fit_slope([r[0] for r in rows], [r[2] for r in rows])
    console.print(f"memory grows as N^{slope_naive:.2f} for the naive five steps and N^{slope_tiled:.2f} for the "
                  f"tiled kernel [dim]({time.time() - t0:.1f}s)[/]")

    os.makedirs(args.out, exist_ok=True)
    csv_path = os.path.join(args.out, "demo_memory.csv")
    with open(csv_path, "w") as f:
        f.write("n,naive_bytes,tiled_bytes\n")
        for n, a, b in rows:
            f.write(f"{n},{a},{b}\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.loglog([r[0] for r in rows], [r[1] / 2**20 for r in rows], "o-", label=f"naive five steps (~N^{slope_naive:.1f})")
    ax.loglog([r[0] for r in rows], [r[2] / 2**20 for r in rows], "s-", label=f"hwattn tiled (~N^{slope_tiled:.1f})")
    ax.set_xlabel("sequence length N")
    ax.set_ylabel("peak extra memory (MiB)")
    ax.set_title(f"causal attention, H={heads}, D={d}, {where}", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    png_path = os.path.join(args.out, "demo_memory.png")
    fig.savefig(png_path, dpi=110)
    console.print(f"wrote {csv_path} and {png_path}")
    if not all_ok:
        console.print("[red]some errors exceed the bound[/]")
        return 1
    return 0
