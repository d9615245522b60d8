"""Public entry points of the FP8 (e4m3) forward: the exact kernel's forward run on quantised Q, K, V.

The kernel is `hwattn.ops.flash.forward._fwd_kernel` itself, not a copy: with HAS_DESCALE it folds
descale_q * descale_k into the softmax scale, multiplies the output by descale_v, and, since P is cast to
V's dtype before P @ V, both matmuls run on fp8 tensor cores (as FlashAttention-3). Forward only.
"""
from __future__ import annotations

import math

import torch

from ..._checks import check_bool, check_same, check_scale, check_tensor
from ..._runtime import check_kernel_device
from ..flash.common import LN2
from ..flash.forward import flash_fwd
from ..flash.interface import _check_shapes
from ..flash.varlen import HostCheckCache
from .quant import FP8, GRANULARITIES, INPUT_DTYPES, quantize_qkv_fp8

__all__ = ["flash_attention_fp8", "flash_attention_fp8_from"]

OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_LAYOUT = "(batch, seqlen, heads, head_dim)"
_checked = HostCheckCache()  # descales found finite and > 0, so a reused descale is checked once


def _seqlen_major(v: torch.Tensor) -> torch.Tensor:
    """V with the seqlen dim contiguous inside each (batch, head), as `quantize_fp8(seqlen_major=True)` stores
    it: the B operand of the fp8 P @ V MMA must be K-major on Hopper. Other layouts are copied once."""
    if v.stride(1) == 1:
        return v
    B, n, h, d = v.shape
    buf = torch.empty((B, h, d, -(-n // 16) * 16), dtype=v.dtype, device=v.device)
    view = buf[..., :n].permute(0, 3, 1, 2)
    view.copy_(v)
    return view


def _check_descale(name: str, descale, shape: tuple[int, int], device) -> torch.Tensor:
    if descale is None:
        return torch.ones(shape, dtype=torch.float32, device=device)
    check_tensor(name, descale, 2, (torch.float32,), "(batch, heads)")
    if tuple(descale.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} (one factor per batch and head), got "
                         f"{tuple(descale.shape)}")
    if descale.device != device:
        raise ValueError(f"{name} is on {descale.device} but q is on {device}; they must share one device")
    if torch.is_grad_enabled() and descale.requires_grad:
        raise RuntimeError(f"{name} requires grad, but the FP8 forward has no autograd")
    return descale.contiguous()


def _check_descale_values(names, descales) -> None:
    """The softmax's running max assumes a positive score scale: a zero, negative or non-finite descale
    would give wrong numbers silently. One host sync per new descale tensor (cached by object and version)."""
    if _checked.get(descales, None) is not None:
        return
    ok = torch.stack([torch.isfinite(d).all() & (d > 0).all() for d in descales]).cpu()
    for name, good in zip(names, ok.tolist()):
        if not good:
            raise ValueError(f"{name} must be finite and > 0 everywhere (it multiplies the e4m3 values back "
                             "to their scale)")
    _checked.put(descales, None, True)


def _check_options(causal, return_lse, softmax_scale, out_dtype, head_dim: int) -> float:
    """Validates the options both entry points share; returns the softmax scale."""
    check_bool("causal", causal)
    check_bool("return_lse", return_lse)
    softmax_scale = check_scale("softmax_scale", softmax_scale)
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype must be one of {', '.join(str(d).replace('torch.', '') for d in OUT_DTYPES)}, "
                        f"got {out_dtype!r}")
    if softmax_scale is None:
        return 1.0 / math.sqrt(head_dim)
    if softmax_scale <= 0:
        raise ValueError(f"softmax_scale must be > 0, got {softmax_scale}")
    return softmax_scale


def _attend(q, k, v, descales, causal, softmax_scale, out_dtype, return_lse):
    """Validated e4m3 inputs and float32 (B, H) descales -> the kernel's output (and the natural-log LSE)."""
    check_kernel_device("flash_attention_fp8", q, k, v)
    q, k = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k))
    out, lse2 = flash_fwd(q, k, _seqlen_major(v), causal, softmax_scale, descale=descales, out_dtype=out_dtype)
    if not return_lse:
        return out
    # the kernel keeps LSE in the log2 domain with +inf for empty rows; users get ln and -inf
    lse = torch.where(torch.isinf(lse2), torch.full_like(lse2, float("-inf")), lse2 * LN2)
    return out, lse


def flash_attention_fp8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                        softmax_scale: float | None = None, descale_q: torch.Tensor | None = None,
                        descale_k: torch.Tensor | None = None, descale_v: torch.Tensor | None = None,
                        out_dtype: torch.dtype = torch.bfloat16, return_lse: bool = False):
    """Exact attention of FP8 (e4m3) inputs with per-head descale factors; forward only.

    Computes softmax(softmax_scale * (q descale_q)(k descale_k)^T) (v descale_v) with both matmuls on fp8
    inputs and fp32 accumulation: QK^T is exact, the softmax runs in fp32, and P is rounded to e4m3 for
    P @ V (its one rounding beyond the inputs'; about 2-3% relative error on the output on top of the
    inputs' own quantisation error). Quantise with `quantize_qkv_fp8`, which also offers the Hadamard
    rotation of Q and K; `flash_attention_fp8_from` does both in one call.

    Args:
        q: (B, Nq, Hq, D) float8_e4m3fn queries.
        k: (B, Nk, Hkv, D) float8_e4m3fn keys. Hq must be a multiple of Hkv (GQA; Hkv = 1 is MQA).
        v: (B, Nk, Hkv, D) float8_e4m3fn values, best stored seqlen-major (v.stride(1) == 1, as
            `quantize_fp8(..., seqlen_major=True)` / `quantize_qkv_fp8` emit): Hopper's fp8 MMA needs the
            P @ V operand K-major. Any other layout is copied into that one first.
        causal: mask the future, aligned bottom-right when Nq != Nk (as `flash_attention`): query i sees key j
            iff j <= i + Nk - Nq; rows that see no key output zeros.
        softmax_scale: scale of the (dequantised) QK^T, > 0; default 1/sqrt(D).
        descale_q: (B, Hq) float32 on q's device, q's true values are q * descale_q[b, h]; default all ones.
        descale_k: (B, Hkv) float32, likewise for k; default all ones.
        descale_v: (B, Hkv) float32, likewise for v; default all ones.
            Descales must be finite and > 0 (checked once per tensor: one host sync, cached while the same
            unmodified tensor is passed again).
        out_dtype: dtype of the output: bfloat16 (default), float16 or float32.
        return_lse: also return the log-sum-exp of the scaled scores, natural log, (B, Hq, Nq) float32
            (-inf for rows that see no key).

    Any Nq, Nk >= 1 and head_dim 1..256. q and k are used with their last dim contiguous (else copied).
    Not differentiable: inputs that require grad are refused while grad mode is on (train in bf16 with
    `flash_attention`). On CPU tensors the kernel runs in the Triton interpreter when TRITON_INTERPRET=1.

    Returns:
        out (B, Nq, Hq, D) in out_dtype, and lse when return_lse=True.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, x, 4, None, _LAYOUT)
        if x.dtype != FP8:
            raise TypeError(f"{name} has dtype {str(x.dtype).replace('torch.', '')}, but flash_attention_fp8 needs "
                            "float8_e4m3fn: quantise with hwattn.quantize_qkv_fp8, or call flash_attention_fp8_from "
                            "with high-precision inputs")
    check_same(("q", "k", "v"), (q, k, v), "device")
    softmax_scale = _check_options(causal, return_lse, softmax_scale, out_dtype, q.shape[-1])
    _check_shapes(q, k, v)
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
        raise RuntimeError("flash_attention_fp8 is forward-only (no autograd), but an input requires grad: call it "
                           "under torch.no_grad() / torch.inference_mode(), or use flash_attention to train")
    B, _, n_heads, _ = q.shape
    n_kv = k.shape[2]
    names = ("descale_q", "descale_k", "descale_v")
    given = (descale_q, descale_k, descale_v)
    descales = tuple(_check_descale(name, d, shape, q.device) for name, d, shape in
                     zip(names, given, ((B, n_heads), (B, n_kv), (B, n_kv))))
    passed = [(name, d) for name, d, g in zip(names, descales, given) if g is not None]
    if passed:
        _check_descale_values(*zip(*passed))
    return _attend(q, k, v, descales, causal, softmax_scale, out_dtype, return_lse)


def flash_attention_fp8_from(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                             softmax_scale: float | None = None, hadamard: bool = False, seed: int = 0,
                             granularity: str = "head", out_dtype: torch.dtype | None = None,
                             return_lse: bool = False):
    """FP8 attention of high-precision inputs: `quantize_qkv_fp8` then `flash_attention_fp8`, forward only.

    Args:
        q: (B, Nq, Hq, D) queries; fp16, bf16 or fp32.
        k: (B, Nk, Hkv, D) keys; Hq a multiple of Hkv (GQA/MQA).
        v: (B, Nk, Hkv, D) values.
        causal: as in `flash_attention_fp8` (bottom-right aligned).
        softmax_scale: default 1/sqrt(D).
        hadamard: rotate Q and K by one random orthogonal Hadamard matrix before quantising (FA3's
            incoherent processing): QK^T is unchanged, outlier channels are spread over all of head_dim, so
            the per-head scale fits the bulk of the values better. D must be a power of two. V is not rotated.
        seed: the rotation's random signs (ignored without hadamard).
        granularity: "head" (one scale per batch and head) or "tensor" (one per tensor).
        out_dtype: output dtype; default q's dtype (bfloat16 for fp32 inputs: the FP8 path's accuracy is
            far below fp32's, pass torch.float32 explicitly to get it anyway).
        return_lse: also return the natural-log LSE (B, Hq, Nq) float32.

    The quantisation costs a few elementwise passes over Q, K, V per call; quantise once with
    `quantize_qkv_fp8` and call `flash_attention_fp8` when the same inputs are reused (e.g. a KV cache).

    Returns:
        out (B, Nq, Hq, D), and lse when return_lse=True.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, x, 4, INPUT_DTYPES[:3], _LAYOUT)
    check_same(("q", "k", "v"), (q, k, v), "device")
    check_bool("hadamard", hadamard)
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if out_dtype is None:
        out_dtype = q.dtype if q.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    softmax_scale = _check_options(causal, return_lse, softmax_scale, out_dtype, q.shape[-1])
    _check_shapes(q, k, v)
    check_kernel_device("flash_attention_fp8_from", q, k, v)
    quantized = quantize_qkv_fp8(q, k, v, granularity=granularity, hadamard=hadamard, seed=seed)
    # the descales are amax / 448 with amax floored at 1e-12: > 0 by construction, no host check needed
    return _attend(*quantized[:3], quantized[3:], causal, softmax_scale, out_dtype, return_lse)
