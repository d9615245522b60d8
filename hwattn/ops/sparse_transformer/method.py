"""Registers "sparse_transformer" in the method registry."""
from __future__ import annotations

import torch

from ... import registry
from .interface import sparse_transformer_attention


class SparseTransformerAttention(torch.nn.Module):
    def __init__(self, pattern="strided", stride=128, block_len=128, summary=1, softmax_scale=None):
        super().__init__()
        self.options = dict(pattern=pattern, stride=stride, block_len=block_len, summary=summary,
                            softmax_scale=softmax_scale)

    def forward(self, q, k, v):
        return sparse_transformer_attention(q, k, v, **self.options)


def _build(head_dim: int, num_heads: int, num_kv_heads: int | None = None, max_seqlen: int | None = None,
           causal: bool = True, pattern: str = "strided", stride: int = 128, block_len: int = 128,
           summary: int = 1, softmax_scale: float | None = None):
    if not causal:
        raise ValueError("sparse_transformer is causal by construction (its patterns look at the past); "
                         "use causal=True")
    return SparseTransformerAttention(pattern, stride, block_len, summary, softmax_scale)


registry.register(registry.Method(
    name="sparse_transformer", build=_build, exact=False, supports_causal=True, supports_noncausal=False,
    supports_gqa=True,
    summary="Sparse Transformer (Child et al. 2019) strided/fixed patterns on the block-sparse exact kernel",
    options={"pattern": "'strided' or 'fixed'", "stride": "strided: local window and stride",
             "block_len": "fixed: block length", "summary": "fixed: summary columns per block"}))
