"""The readable definition of the FP8 forward, materialising every matrix (run it on float64 for ground truth).

    R      = diag(signs) H / sqrt(D)            (optional: "incoherent processing", FA3 section 3.3)
    Q', K' = Q R, K R                           (QK^T is unchanged: R R^T = I; V is not rotated)
    x8     = e4m3(x / s),  s = max(amax, eps) / 448   per (batch, head): descale = s
    O      = softmax(scale * (q8 s_q)(k8 s_k)^T) (v8 s_v)

The kernel computes the last line with S = q8 k8^T accumulated exactly (fp8 products are exact in fp32),
the descales folded into the softmax scale and the output, and P rounded to e4m3 before the P @ V product:
that rounding is its only error beyond what quantisation already put into the inputs.

H here is the Sylvester Hadamard matrix built explicitly; `quant.py` applies the same rotation with a fast
Walsh-Hadamard transform (D log D per row instead of D^2).
"""
from __future__ import annotations

import math

import torch

from ...reference import attention

__all__ = ["hadamard_matrix", "rotation_matrix", "quantize", "dequantize", "attention_fp8", "fp8_pipeline"]

E4M3_MAX = 448.0  # largest finite float8_e4m3fn
SCALE_EPS = 1e-12  # amax floor: an all-zero head gets a tiny positive scale instead of 0 / 0


def hadamard_matrix(d: int, dtype=torch.float64) -> torch.Tensor:
    """Sylvester's (d, d) Hadamard matrix, H_2n = [[H_n, H_n], [H_n, -H_n]], unnormalised; d a power of 2."""
    if d < 1 or d & (d - 1):
        raise ValueError(f"d must be a power of two, got {d}")
    h = torch.ones(1, 1, dtype=dtype)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def rotation_matrix(signs: torch.Tensor) -> torch.Tensor:
    """R = diag(signs) H / sqrt(D): orthogonal, spreads a channel's energy evenly over all D channels."""
    d = signs.shape[0]
    return torch.diag(signs.to(torch.float64)) @ hadamard_matrix(d) / math.sqrt(d)


def quantize(x: torch.Tensor, signs: torch.Tensor | None = None, granularity: str = "head"):
    """x (B, N, H, D) -> (x8 e4m3 (B, N, H, D), descale float32 (B, H)) with x ~= x8 * descale[b, h],
    after rotating by rotation_matrix(signs) when signs (D,) of +-1 are given. granularity "head": one
    scale per (batch, head); "tensor": one for the whole tensor (broadcast to (B, H))."""
    x = x.double()
    if signs is not None:
        x = x @ rotation_matrix(signs)
    amax = x.abs().amax(dim=(1, 3))  # (B, H)
    if granularity == "tensor":
        amax = amax.amax().expand_as(amax)
    scale = amax.clamp_min(SCALE_EPS) / E4M3_MAX
    x8 = (x / scale[:, None, :, None]).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return x8, scale.float()


def dequantize(x8: torch.Tensor, descale: torch.Tensor) -> torch.Tensor:
    """x8 (B, N, H, D) e4m3, descale (B, H) -> float64 (B, N, H, D): the values the kernel computes with."""
    return x8.double() * descale.double()[:, None, :, None]


def attention_fp8(q8, k8, v8, descale_q, descale_k, descale_v, causal: bool = False,
                  softmax_scale: float | None = None, return_lse: bool = False):
    """Exact float64 attention of the dequantised inputs: what the FP8 kernel computes, less P's rounding.
    q8 (B, Nq, Hq, D), k8/v8 (B, Nk, Hkv, D); descale_q (B, Hq), descale_k/v (B, Hkv)."""
    return attention(dequantize(q8, descale_q), dequantize(k8, descale_k), dequantize(v8, descale_v),
                     causal=causal, softmax_scale=softmax_scale, return_lse=return_lse)


def fp8_pipeline(q, k, v, signs: torch.Tensor | None = None, causal: bool = False,
                 softmax_scale: float | None = None, granularity: str = "head"):
    """The whole pipeline on high-precision inputs: rotate Q and K (if signs), quantise Q, K, V, and attend
    exactly in float64. softmax_scale defaults to 1/sqrt(D) of the unrotated inputs (rotation keeps D)."""
    q8, dq = quantize(q, signs, granularity)
    k8, dk = quantize(k, signs, granularity)
    v8, dv = quantize(v, None, granularity)
    return attention_fp8(q8, k8, v8, dq, dk, dv, causal=causal, softmax_scale=softmax_scale)
