"""Triton kernels for `quant.py`: per-(batch, head) e4m3 quantisation, the Hadamard rotation fused in.

Two passes over x, each one program per (BLOCK_N rows, batch * head):
    1. amax: rotate the tile (optional) and write its max |value|;      (a tiny torch amax then gives the scale)
    2. cast: rotate again, divide by the scale, clamp to +-448, store e4m3 in any output layout (V seqlen-major).
The rotation is a tensor-core product with the (D, D) Sylvester matrix: its entries are +-1 and a sign flip of a
16-bit input is exact, so `(x * signs) @ H` accumulates exact products in fp32, like the float32 fast
Walsh-Hadamard transform of `quant.py` up to the order of the fp32 sums. Recomputing it in pass 2 costs
2 D FLOPs per element on tensor cores; storing the rotated tensor would cost 4 bytes per element of traffic.
Memory-bound: ~2 reads and one 1-byte write per element (the torch version makes ~10 passes with a rotation).
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from ..._runtime import interpreting
from .naive import E4M3_MAX, SCALE_EPS, hadamard_matrix

BLOCK_N = 64


@triton.jit
def _rotated_tile(X, SIGNS, HMAT, s_xb, s_xn, s_xh, b, h, rows, n, inv_sqrt_d,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, ROTATE: tl.constexpr, DOT_F32: tl.constexpr):
    """The (BLOCK_N, BLOCK_D) fp32 tile of x (rotated when ROTATE); rows past n and columns past HEAD_DIM are 0."""
    offs_d = tl.arange(0, BLOCK_D)
    ok = (rows[:, None] < n) & (offs_d[None, :] < HEAD_DIM)
    x = tl.load(X + b.to(tl.int64) * s_xb + h.to(tl.int64) * s_xh + rows[:, None].to(tl.int64) * s_xn
                + offs_d[None, :], mask=ok, other=0.0)
    if ROTATE:  # BLOCK_D == HEAD_DIM, a power of two
        flipped = x.to(tl.float32) * tl.load(SIGNS + offs_d)[None, :]
        hmat = tl.load(HMAT + offs_d[:, None] * BLOCK_D + offs_d[None, :])
        if DOT_F32:  # fp32 inputs, and the interpreter (whose bf16 dot is wrong): true fp32 products
            y = tl.dot(flipped, hmat.to(tl.float32), input_precision="ieee")
        else:  # 16-bit inputs: the flipped tile is exact in its own type, products exact, fp32 sums
            y = tl.dot(flipped.to(hmat.dtype), hmat)
        y = y * inv_sqrt_d
    else:
        y = x.to(tl.float32)
    return y


@triton.jit
def _amax_kernel(X, SIGNS, HMAT, AMAX, s_xb, s_xn, s_xh, n, num_heads, inv_sqrt_d,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, ROTATE: tl.constexpr,
                 DOT_F32: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    y = _rotated_tile(X, SIGNS, HMAT, s_xb, s_xn, s_xh, pid_bh // num_heads, pid_bh % num_heads, rows, n,
                      inv_sqrt_d, HEAD_DIM, BLOCK_D, ROTATE, DOT_F32)
    tl.store(AMAX + pid_bh.to(tl.int64) * tl.num_programs(0) + pid_n, tl.max(tl.max(tl.abs(y), 1), 0))


@triton.jit
def _cast_kernel(X, SIGNS, HMAT, SCALE, OUT, s_xb, s_xn, s_xh, s_ob, s_on, s_oh, s_od, n, num_heads, inv_sqrt_d,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, ROTATE: tl.constexpr,
                 DOT_F32: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    y = _rotated_tile(X, SIGNS, HMAT, s_xb, s_xn, s_xh, b, h, rows, n, inv_sqrt_d, HEAD_DIM, BLOCK_D, ROTATE,
                      DOT_F32)
    # the torch path's IEEE division (div_rn: Triton's `/` is the approximate div.full.f32 on the GPU, which
    # moved a few elements per million by one e4m3 step), then the clamp: e4m3fn has no inf
    y = tl.minimum(tl.maximum(tl.math.div_rn(y, tl.load(SCALE + pid_bh)), -448.0), 448.0)
    tl.store(OUT + b.to(tl.int64) * s_ob + h.to(tl.int64) * s_oh + rows[:, None].to(tl.int64) * s_on
             + offs_d[None, :].to(tl.int64) * s_od, y.to(OUT.dtype.element_ty),
             mask=(rows[:, None] < n) & (offs_d[None, :] < HEAD_DIM))


@functools.lru_cache(maxsize=16)
def _rotation_operands(d: int, dtype: torch.dtype, device: torch.device, seed: int):
    from .quant import hadamard_signs
    signs = hadamard_signs(d, seed, device).contiguous()
    return signs, hadamard_matrix(d, torch.float32).to(device=device, dtype=dtype).contiguous()


def kernel_supports(x: torch.Tensor, rotate: bool) -> bool:
    """The kernels take fp16, bf16, fp32 on a GPU, or on the CPU under the interpreter; float64 goes through
    torch, and so does a rotation whose (D, D) matrix would not fit in shared memory (fp32 inputs need it in
    fp32: 256 KB at D = 256; 16-bit inputs: 128 KB)."""
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32) or not (x.is_cuda or interpreting()):
        return False
    return not rotate or x.shape[-1] <= (128 if x.dtype == torch.float32 else 256)


def quantize(x: torch.Tensor, granularity: str, rotate_seed: int | None, out: torch.Tensor):
    """x (B, N, H, D), unit stride in D -> writes e4m3 into `out` (any (B, N, H, D) strides), returns the
    descale (B, H) float32. Same definition as `quant._quantize_torch`."""
    B, n, H, D = x.shape
    block_d = max(16, triton.next_power_of_2(D))
    rotate = rotate_seed is not None
    dot_f32 = x.dtype == torch.float32 or interpreting()
    if rotate:
        signs, hmat = _rotation_operands(D, torch.float32 if dot_f32 else x.dtype, x.device, rotate_seed)
    else:
        signs = hmat = x  # unused
    grid = (triton.cdiv(n, BLOCK_N), B * H)
    meta = dict(HEAD_DIM=D, BLOCK_D=block_d, BLOCK_N=BLOCK_N, ROTATE=rotate, DOT_F32=dot_f32)
    if not interpreting():
        meta.update(num_warps=4)
    common = (x, signs, hmat)
    strides = (x.stride(0), x.stride(1), x.stride(2))
    inv_sqrt_d = 1.0 / math.sqrt(D)
    part = torch.empty(B * H, grid[0], device=x.device, dtype=torch.float32)
    _amax_kernel[grid](*common, part, *strides, n, H, inv_sqrt_d, **meta)
    amax = part.amax(dim=1).view(B, H)
    if granularity == "tensor":
        amax = amax.amax().expand(B, H)
    scale = (amax.clamp_min(SCALE_EPS) / E4M3_MAX).contiguous()
    _cast_kernel[grid](*common, scale, out, *strides, out.stride(0), out.stride(1), out.stride(2), out.stride(3),
                       n, H, inv_sqrt_d, **meta)
    return scale
