"""Readable reference for Linformer (Wang et al. 2020), in the input dtype (float64-capable).

    K' = E K,  V' = F V            E, F: (k, n) learned projections along the *sequence*, n = the fixed max length
    O  = softmax(Q K'^T * scale) V'                  (B, H, Nq, k) scores: linear in N for fixed k

A sequence of N < n tokens is the first N rows of a zero-padded length-n input, so E K_padded = E[:, :N] K: padded
positions contribute nothing. A key_padding_mask zeroes masked rows of K and V before the projection.
"""
from __future__ import annotations

import torch

from ...reference import attention

__all__ = ["linformer_attention_naive"]


def _project(proj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(k, n) or (H, k, n) projection applied along x's sequence axis: x (B, N, H, D) -> (B, k, H, D)."""
    n_tok = x.shape[1]
    p = proj[..., :n_tok].to(x.dtype)
    if p.dim() == 2:
        return torch.einsum("kn,bnhd->bkhd", p, x)
    return torch.einsum("hkn,bnhd->bkhd", p, x)


def linformer_attention_naive(q, k, v, e_proj, f_proj=None, key_padding_mask=None, softmax_scale=None):
    """q (B, Nq, H, D), k/v (B, Nk, H, D/Dv), e_proj/f_proj (k, n) or (H, k, n) with n >= Nk; f_proj=None shares
    E for keys and values. key_padding_mask: (B, Nk) bool, True = a real token. Returns (B, Nq, H, Dv)."""
    if key_padding_mask is not None:
        keep = key_padding_mask[:, :, None, None].to(k.dtype)
        k, v = k * keep, v * keep
    kp = _project(e_proj, k)
    vp = _project(e_proj if f_proj is None else f_proj, v)
    return attention(q, kp, vp, causal=False, softmax_scale=softmax_scale)
