"""Horace He's experiment as one Triton kernel: read x once, apply y = y * a + b `repeat` times in
registers, write y once. Bytes are fixed (4 read + 4 written per element), FLOPs are 2 * repeat per element,
so the runtime shows where the roofline turns from memory- to compute-bound."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._checks import check_tensor
from .._runtime import check_kernel_device

__all__ = ["repeated_fma", "FMA_A", "FMA_B"]

FMA_A, FMA_B = 0.999, 0.001  # a contraction towards 1: no overflow however many repeats


@triton.jit
def _repeated_fma_kernel(x_ptr, y_ptr, numel, repeat, a, b, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    y = tl.load(x_ptr + offs, mask=mask)
    for _ in range(repeat):  # a runtime loop: one compiled kernel serves every repeat count
        y = y * a + b
    tl.store(y_ptr + offs, y, mask=mask)


def repeated_fma(x: torch.Tensor, repeat: int) -> torch.Tensor:
    """y = x, then `repeat` times y = y * 0.999 + 0.001, in one kernel. x: contiguous 1-D float32.

    CUDA, or CPU with TRITON_INTERPRET=1 (slow). Returns a new tensor like x.
    """
    check_tensor("x", x, 1, (torch.float32,), "(numel,)")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 0:
        raise ValueError(f"repeat must be an int >= 0, got {repeat!r}")
    if not x.is_contiguous():
        raise ValueError("x must be contiguous")
    check_kernel_device("repeated_fma", x)
    y = torch.empty_like(x)
    block = 1024
    _repeated_fma_kernel[(triton.cdiv(x.numel(), block),)](x, y, x.numel(), repeat, FMA_A, FMA_B, BLOCK=block)
    return y
