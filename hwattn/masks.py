"""Mask functions for block-sparse attention, and the BlockMask built from them.

A mask_mod is `mask_mod(b, h, q_idx, kv_idx) -> bool tensor` (True = attend), elementwise over broadcast
index tensors, as in FlexAttention. Build a BlockMask once per shape and pass it to
`hwattn.flash_attention(q, k, v, block_mask=...)`:

    mask = and_masks(causal(), sliding_window(left=4096))
    bm = create_block_mask(mask, B=None, H=None, seq_len_q=N, seq_len_k=N, device="cuda")
    out = hwattn.flash_attention(q, k, v, block_mask=bm)

Indices are absolute positions. For Nq != Nk, `causal(offset=Nk - Nq)` is flash_attn's bottom-right
alignment and `causal()` SDPA's top-left.
"""
from __future__ import annotations

import torch

from .ops.flash.block_mask import BlockMask, create_block_mask

__all__ = ["BlockMask", "create_block_mask", "and_masks", "or_masks", "causal", "sliding_window", "document",
           "prefix_lm", "strided", "fixed", "full"]


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def and_masks(*mods):
    """Attend where every mask_mod attends."""
    if not mods or not all(callable(m) for m in mods):
        raise TypeError("and_masks needs one or more callables")

    def mask_mod(b, h, q, kv):
        out = mods[0](b, h, q, kv)
        for m in mods[1:]:
            out = out & m(b, h, q, kv)
        return out
    return mask_mod


def or_masks(*mods):
    """Attend where any mask_mod attends."""
    if not mods or not all(callable(m) for m in mods):
        raise TypeError("or_masks needs one or more callables")

    def mask_mod(b, h, q, kv):
        out = mods[0](b, h, q, kv)
        for m in mods[1:]:
            out = out | m(b, h, q, kv)
        return out
    return mask_mod


def full():
    return lambda b, h, q, kv: torch.ones_like(q >= kv)


def causal(offset: int = 0):
    """Key kv visible to query q iff kv <= q + offset (offset = Nk - Nq: bottom-right alignment)."""
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError(f"offset must be an int, got {type(offset).__name__}")
    return lambda b, h, q, kv: kv <= q + offset


def sliding_window(left: int, right: int = 0):
    """Local attention: query q sees keys in [q - left, q + right]. With right=0 it is causal."""
    _check_int("left", left, 0)
    _check_int("right", right, 0)
    return lambda b, h, q, kv: (kv >= q - left) & (kv <= q + right)


def document(doc_ids: torch.Tensor, doc_ids_k: torch.Tensor | None = None):
    """Packed sequences: attend only within the same document. doc_ids (B, Nq) int (ids per token, e.g.
    0,0,0,1,1,2,...); doc_ids_k (B, Nk) defaults to doc_ids. Combine with causal() for causal LMs."""
    if not isinstance(doc_ids, torch.Tensor) or doc_ids.dim() != 2 or doc_ids.dtype.is_floating_point:
        raise ValueError(f"doc_ids must be an integer tensor (B, N), got "
                         f"{getattr(doc_ids, 'shape', type(doc_ids).__name__)}")
    ids_k = doc_ids if doc_ids_k is None else doc_ids_k
    if not isinstance(ids_k, torch.Tensor) or ids_k.dim() != 2 or ids_k.shape[0] != doc_ids.shape[0]:
        raise ValueError("doc_ids_k must be an integer tensor (B, Nk) with doc_ids' batch size")

    def mask_mod(b, h, q, kv):
        bq = b.clamp_max(doc_ids.shape[0] - 1)
        return doc_ids[bq, q.clamp_max(doc_ids.shape[1] - 1)] == ids_k[bq, kv.clamp_max(ids_k.shape[1] - 1)]
    return mask_mod


def prefix_lm(prefix_lengths):
    """Prefix-LM: every query sees the whole prefix (bidirectional) and is causal after it. prefix_lengths:
    an int, or a (B,) integer tensor of per-sequence prefix lengths."""
    if isinstance(prefix_lengths, int) and not isinstance(prefix_lengths, bool):
        _check_int("prefix_lengths", prefix_lengths, 0)
        return lambda b, h, q, kv: (kv < prefix_lengths) | (kv <= q)
    if not isinstance(prefix_lengths, torch.Tensor) or prefix_lengths.dim() != 1:
        raise ValueError("prefix_lengths must be an int or a (B,) integer tensor")
    return lambda b, h, q, kv: (kv < prefix_lengths[b]) | (kv <= q)


def strided(stride: int):
    """Sparse Transformer strided pattern (Child et al. 2019), causal: a query attends to the previous
    `stride` positions (local head) and to every stride-th position before it (strided head); the union
    of the two factorised heads."""
    _check_int("stride", stride, 1)
    return lambda b, h, q, kv: (kv <= q) & (((q - kv) < stride) | (((q - kv) % stride) == 0))


def fixed(block_len: int, summary: int = 1):
    """Sparse Transformer fixed pattern, causal: a query attends within its block of `block_len` and to
    the last `summary` positions of every block (the summary columns)."""
    _check_int("block_len", block_len, 1)
    _check_int("summary", summary, 1)
    if summary > block_len:
        raise ValueError(f"summary ({summary}) must be <= block_len ({block_len})")
    return lambda b, h, q, kv: (kv <= q) & (((q // block_len) == (kv // block_len)) |
                                           ((kv % block_len) >= block_len - summary))
