"""Sparse Transformer attention on the exact block-sparse kernel."""
from __future__ import annotations

import torch

from ... import masks
from ..._checks import check_tensor
from ..flash import flash_attention

__all__ = ["sparse_transformer_attention", "sparse_transformer_block_mask"]

_CACHE: dict = {}


def sparse_transformer_block_mask(pattern: str, n: int, device, stride: int = 128, block_len: int = 128,
                                  summary: int = 1, block_size: int | None = None) -> masks.BlockMask:
    """The BlockMask of a Sparse Transformer pattern for length n (cached per arguments)."""
    if pattern == "strided":
        mask_mod = masks.strided(stride)
    elif pattern == "fixed":
        mask_mod = masks.fixed(block_len, summary)
    else:
        raise ValueError(f"pattern must be 'strided' or 'fixed', got {pattern!r}")
    device = torch.device(device)
    if block_size is None:
        block_size = 128 if device.type == "cuda" else 32
    key = (pattern, n, str(device), stride, block_len, summary, block_size)
    if key not in _CACHE:
        _CACHE[key] = masks.create_block_mask(mask_mod, None, None, n, n, device=device, block_size=block_size)
    return _CACHE[key]


def sparse_transformer_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: str = "strided",
                                 stride: int = 128, block_len: int = 128, summary: int = 1,
                                 softmax_scale: float | None = None) -> torch.Tensor:
    """Sparse Transformer attention (Child et al. 2019): causal attention restricted to the union of the
    two factorised heads of a pattern, computed exactly on the block-sparse kernel (blocks the pattern
    leaves empty are never read).

    Args:
        q: (B, N, Hq, D); k, v: (B, N, Hkv, D); Nq must equal Nk (self-attention). fp16/bf16/fp32.
        pattern: "strided" (previous `stride` positions + every stride-th one; for data with a period,
            e.g. images) or "fixed" (own block of `block_len` + the last `summary` positions of every
            block; for text).
        stride, block_len, summary: the pattern's parameters (ints >= 1, summary <= block_len).
        softmax_scale: default 1/sqrt(D).

    Returns (B, N, Hq, D). Differentiable. Always causal: the patterns are defined on the past.
    """
    check_tensor("q", q, 4, layout="(batch, seqlen, heads, head_dim)")
    check_tensor("k", k, 4, layout="(batch, seqlen, heads, head_dim)")
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"Sparse Transformer attention is self-attention: q length {q.shape[1]} must equal "
                         f"k length {k.shape[1]}")
    bm = sparse_transformer_block_mask(pattern, q.shape[1], q.device, stride, block_len, summary)
    return flash_attention(q, k, v, softmax_scale=softmax_scale, block_mask=bm)
