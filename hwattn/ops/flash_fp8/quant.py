"""Quantisation for the FP8 forward: the random Hadamard rotation and per-head e4m3 scaling.

fp16 / bf16 / fp32 inputs on the GPU (or the CPU under TRITON_INTERPRET=1) go through two Triton passes with the
rotation fused in (`quant_kernels.py`); float64, and `_quantize_torch` in the tests, use the torch definition
below: on an H200 (2026-12-01) those torch ops took 1.55 ms for Q, K, V at N = 16384 (5.7 ms with the
rotation), half the attention's own 3.25 ms.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..._checks import check_bool, check_tensor
from . import quant_kernels
from .naive import E4M3_MAX, SCALE_EPS

__all__ = ["FP8QKV", "hadamard_signs", "hadamard_rotate", "quantize_fp8", "quantize_qkv_fp8"]

FP8 = torch.float8_e4m3fn
INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
GRANULARITIES = ("head", "tensor")
_LAYOUT = "(batch, seqlen, heads, head_dim)"


class FP8QKV(NamedTuple):
    """What `quantize_qkv_fp8` returns; the field names are `flash_attention_fp8`'s argument names, so
    `flash_attention_fp8(**quantized._asdict(), causal=...)` passes them all."""
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    descale_q: torch.Tensor
    descale_k: torch.Tensor
    descale_v: torch.Tensor


def _check_power_of_two(head_dim: int) -> None:
    if head_dim < 1 or head_dim & (head_dim - 1):
        raise ValueError(f"hadamard=True needs head_dim to be a power of two (fast Walsh-Hadamard transform), "
                         f"got head_dim {head_dim}; quantize without the rotation (hadamard=False)")


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return seed


def hadamard_signs(head_dim: int, seed: int = 0, device=None) -> torch.Tensor:
    """The rotation's random signs: (head_dim,) float32 of +-1, the same for a given seed on every device."""
    gen = torch.Generator().manual_seed(_check_seed(seed))
    signs = torch.randint(0, 2, (head_dim,), generator=gen).float() * 2 - 1
    return signs.to(device)


def _fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised fast Walsh-Hadamard transform along the last dim (a power of two): x @ H with H the
    Sylvester matrix, in log2(D) butterfly passes over (a, b) -> (a + b, a - b) at distance 1, 2, 4, ..."""
    d = x.shape[-1]
    y = x.reshape(-1, d)
    h = 1
    while h < d:
        y = y.view(y.shape[0], d // (2 * h), 2, h)
        y = torch.stack((y[:, :, 0] + y[:, :, 1], y[:, :, 0] - y[:, :, 1]), dim=2)
        h *= 2
    return y.reshape(x.shape)


def hadamard_rotate(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """x (..., D) -> x @ R, R = diag(signs) H / sqrt(D) orthogonal (signs from `hadamard_signs(D, seed)`).

    Rotating Q and K by the same R leaves QK^T unchanged while spreading outlier channels over all D
    channels, so one e4m3 scale per head wastes less range (FA3's incoherent processing). Computed in
    float32 (float64 for float64 input) and returned in that dtype. D must be a power of two.
    """
    check_tensor("x", x, None, INPUT_DTYPES)
    head_dim = x.shape[-1] if x.dim() else 0
    _check_power_of_two(head_dim)
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    signs = hadamard_signs(head_dim, seed, x.device).to(work)
    return _fwht(x.to(work) * signs) * (1.0 / math.sqrt(head_dim))


def _check_input(name: str, x) -> None:
    check_tensor(name, x, 4, INPUT_DTYPES, _LAYOUT)
    if torch.is_grad_enabled() and x.requires_grad:
        raise RuntimeError(f"{name} requires grad, but FP8 quantisation and the FP8 forward have no autograd: "
                           "call under torch.no_grad() / torch.inference_mode() (train with flash_attention)")
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")


def _fp8_output(x: torch.Tensor, seqlen_major: bool) -> torch.Tensor:
    """An e4m3 (B, N, H, D) tensor: contiguous, or seqlen-major inside each (batch, head): (B, H, D, N) storage
    with rows padded to 16 so the stride along D stays 16-byte aligned (vector loads) for any N. The P @ V
    MMA of the FP8 kernel reads V K-major."""
    B, n, h, d = x.shape
    if not seqlen_major:
        return torch.empty(x.shape, dtype=FP8, device=x.device)
    buf = torch.empty((B, h, d, -(-n // 16) * 16), dtype=FP8, device=x.device)
    return buf[..., :n].permute(0, 3, 1, 2)


def _quantize(x: torch.Tensor, granularity: str, rotate_seed: int | None, seqlen_major: bool):
    if not quant_kernels.kernel_supports(x, rotate_seed is not None):
        return _quantize_torch(x, granularity, rotate_seed, seqlen_major)
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = _fp8_output(x, seqlen_major)
    return out, quant_kernels.quantize(x, granularity, rotate_seed, out)


def _quantize_torch(x: torch.Tensor, granularity: str, rotate_seed: int | None, seqlen_major: bool):
    """The torch definition of `_quantize` (any dtype, any device): what the kernels compute."""
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    xw = hadamard_rotate(x, rotate_seed) if rotate_seed is not None else x.to(work)
    amax = xw.abs().amax(dim=(1, 3))  # (B, H)
    if granularity == "tensor":
        amax = amax.amax().expand_as(amax)
    scale = amax.clamp_min(SCALE_EPS) / E4M3_MAX
    # clamp: x / (amax / 448) can round a hair above 448, and e4m3fn has no inf: beyond 464 it would be NaN
    x8 = (xw / scale[:, None, :, None]).clamp_(-E4M3_MAX, E4M3_MAX).to(FP8)
    if seqlen_major:
        view = _fp8_output(x, True)
        view.copy_(x8)
        x8 = view
    return x8, scale.to(torch.float32).contiguous()


def _check_granularity(granularity) -> str:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    return granularity


def quantize_fp8(x: torch.Tensor, granularity: str = "head", hadamard: bool = False, seed: int = 0,
                 seqlen_major: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise x to FP8 e4m3 with one scale per (batch, head).

    Args:
        x: (B, N, H, D) fp16, bf16, fp32 (or fp64).
        granularity: "head" (default): scale = amax over (N, D) of each (batch, head) / 448; "tensor": one
            scale for the whole tensor (the per-tensor FP8 baseline), still returned per (batch, head).
            An all-zero head gets a tiny positive scale (amax floored at 1e-12), never 0.
        hadamard: rotate along head_dim by `hadamard_rotate(x, seed)` first (Q and K only, with the same
            seed for both: QK^T is unchanged). D must be a power of two.
        seed: the rotation's random signs.
        seqlen_major: store the result with the seqlen dim contiguous inside each (batch, head) (a strided
            (B, N, H, D) view): the layout `flash_attention_fp8` wants for V. Default: contiguous.

    Returns:
        (x8, descale): x8 (B, N, H, D) float8_e4m3fn and descale (B, H) float32 contiguous, on x's device,
        with x (rotated, if asked) ~= x8.float() * descale[:, None, :, None]: about 2^-4 relative per element.
    Not differentiable: refuses inputs that require grad while grad mode is on.
    """
    _check_input("x", x)
    _check_granularity(granularity)
    check_bool("hadamard", hadamard)
    check_bool("seqlen_major", seqlen_major)
    _check_seed(seed)
    return _quantize(x, granularity, seed if hadamard else None, seqlen_major)


def quantize_qkv_fp8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, granularity: str = "head",
                     hadamard: bool = False, seed: int = 0) -> FP8QKV:
    """Quantise attention inputs for `flash_attention_fp8`, each tensor with its own per-head scales.

    Args:
        q: (B, Nq, Hq, D); k, v: (B, Nk, Hkv, D); fp16, bf16, fp32 (or fp64), any mix.
        granularity: "head" or "tensor", as in `quantize_fp8`.
        hadamard: rotate Q and K (not V) by the same random orthogonal R = diag(signs) H / sqrt(D), which
            leaves QK^T unchanged and spreads outlier channels before quantisation; D a power of two.
        seed: the rotation's random signs.

    Returns:
        FP8QKV(q, k, v, descale_q (B, Hq), descale_k (B, Hkv), descale_v (B, Hkv)): e4m3 tensors, V stored
        seqlen-major, float32 descales: `flash_attention_fp8(**quantize_qkv_fp8(q, k, v)._asdict(), ...)`.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check_input(name, x)
    _check_granularity(granularity)
    check_bool("hadamard", hadamard)
    _check_seed(seed)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share head_dim, got q {q.shape[-1]} and k {k.shape[-1]}")
    rotate = seed if hadamard else None
    q8, dq = _quantize(q, granularity, rotate, False)
    k8, dk = _quantize(k, granularity, rotate, False)
    v8, dv = _quantize(v, granularity, None, True)
    return FP8QKV(q8, k8, v8, dq, dk, dv)
