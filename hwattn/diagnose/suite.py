"""The labelled suite: ops whose verdict is known, to check the diagnosis on a device.

    copy            y.copy_(x), large                     -> memory-bound
    elementwise     x * 2, large                          -> memory-bound
    matmul          a @ b, large and square               -> compute-bound
    tiny-op loop    200 x (x * 1.0001 + 0.0001), 16 elements -> overhead-bound
Sizes: CPU 64 MiB tensors and a 1024^2 float32 matmul; CUDA 1 GiB tensors and an 8192^2 bfloat16 matmul.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ._device import resolve_device

__all__ = ["Case", "labelled_suite", "run_suite"]


@dataclass
class Case:
    name: str
    expected: str
    fn: object
    args: tuple


def _tiny_loop(x, iterations: int = 200):
    for _ in range(iterations):
        x = x * 1.0001 + 0.0001
    return x


def labelled_suite(device=None) -> list:
    """The suite's cases for `device` (default: cuda if available, else cpu; fresh random inputs each call)."""
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    gen = torch.Generator(device=dev).manual_seed(torch.seed() % 2**31)
    numel = 2**28 if cuda else 2**24
    side, mm_dtype = (8192, torch.bfloat16) if cuda else (1024, torch.float32)
    x = torch.randn(numel, device=dev, generator=gen)
    y = torch.empty_like(x)
    a = torch.randn(side, side, device=dev, generator=gen).to(mm_dtype)
    b = torch.randn(side, side, device=dev, generator=gen).to(mm_dtype)
    small = torch.randn(16, device=dev, generator=gen)
    mib = x.nbytes // 2**20
    return [
        Case(f"copy {mib} MiB", "memory-bound", lambda dst, src: dst.copy_(src), (y, x)),
        Case(f"elementwise x*2, {mib} MiB", "memory-bound", lambda t: t * 2.0, (x,)),
        Case(f"matmul {side}^3 {str(mm_dtype).replace('torch.', '')}", "compute-bound", torch.matmul, (a, b)),
        Case("tiny-op loop 200 x (x*1.0001 + 0.0001), 16 elements", "overhead-bound", _tiny_loop, (small,)),
    ]


def run_suite(device=None, ceilings=None, show: bool = True, budget_s: float | None = None):
    """Diagnose every case of the labelled suite. Returns [(case, report, verdict_is_right)]."""
    from ._profile import _check_ceilings
    from ._verdict import report
    from .._checks import check_bool
    dev = resolve_device(device)
    check_bool("show", show)
    c = _check_ceilings(ceilings, dev)
    results = []
    for case in labelled_suite(dev):
        rep = report(case.fn, *case.args, name=case.name, device=dev, ceilings=c, show=False, budget_s=budget_s)
        results.append((case, rep, rep.verdict.label == case.expected))
    if show:
        from . import _format as fmt
        console = fmt.console()
        console.print(fmt.reports_table([r for _, r, _ in results], title=f"Labelled suite on {c.name}"))
        for case, rep, ok in results:
            mark = "[green]right[/green]" if ok else f"[red]WRONG (expected {case.expected})[/red]"
            console.print(f"{mark}  {fmt._escape(case.name)}: {fmt._escape(str(rep.verdict))}")
    return results
