"""Registers the exact methods: "flash" (the Triton kernel) and "naive" (the five-step reference)."""
from __future__ import annotations

import torch

from ... import registry
from ...reference import attention as reference_attention


class ExactAttention(torch.nn.Module):
    """Exact softmax attention through `fn`, with a KV cache for decoding.

    forward(q, k, v): q (B, N, Hq, D), k/v (B, N, Hkv, D) -> (B, N, Hq, D).
    step(q, k, v, state): appends k/v (B, n_new, Hkv, D) to the cache in `state` (None = empty) and attends
    the new queries to the whole cache, causally aligned bottom-right (the last query sees every key).
    """

    def __init__(self, fn, causal: bool, softmax_scale: float | None = None):
        super().__init__()
        self.fn = fn
        self.causal = causal
        self.softmax_scale = softmax_scale

    def forward(self, q, k, v):
        return self.fn(q, k, v, causal=self.causal, softmax_scale=self.softmax_scale)

    def step(self, q, k, v, state=None):
        if state is not None:
            k = torch.cat([state[0], k], dim=1)
            v = torch.cat([state[1], v], dim=1)
        out = self.fn(q, k, v, causal=self.causal, softmax_scale=self.softmax_scale)
        return out, (k, v)


def _flash(q, k, v, causal, softmax_scale):
    from .interface import flash_attention
    return flash_attention(q, k, v, causal=causal, softmax_scale=softmax_scale)


def _naive(q, k, v, causal, softmax_scale):
    return reference_attention(q, k, v, causal=causal, softmax_scale=softmax_scale)


def _builder(fn):
    def build(head_dim: int, num_heads: int, num_kv_heads: int | None = None, max_seqlen: int | None = None,
              causal: bool = True, softmax_scale: float | None = None):
        return ExactAttention(fn, causal=causal, softmax_scale=softmax_scale)
    return build


registry.register(registry.Method(
    name="flash", build=_builder(_flash), exact=True, supports_decode=True, supports_gqa=True,
    summary="exact attention, FlashAttention-2 algorithm in Triton (tiled, online softmax, O(N) memory)",
    options={"softmax_scale": "score scale, default 1/sqrt(head_dim)"}))

registry.register(registry.Method(
    name="naive", build=_builder(_naive), exact=True, supports_decode=True, supports_gqa=True,
    summary="exact attention, the vanilla five steps in PyTorch (materialises the N x N scores)",
    options={"softmax_scale": "score scale, default 1/sqrt(head_dim)"}))
