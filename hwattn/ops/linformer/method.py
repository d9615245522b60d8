"""Registers "linformer": learned sequence projections E, F (Wang et al. 2020). Non-causal, fixed max length."""
from __future__ import annotations

import math

import torch

from ... import registry
from ..._checks import check_bool, check_scale
from .interface import CAUSAL_ERROR, linformer_attention

SHARING_MODES = ("none", "headwise", "key-value")
DEFAULT_K = 256


class LinformerAttention(torch.nn.Module):
    """Linformer attention with its own projections.

    sharing: "none" - E and F per head, (H, k, n) each; "headwise" (default) - one E and one F shared by all
    heads, (k, n) each; "key-value" - a single (k, n) projection used for both keys and values and all heads.
    Projections start as N(0, 1/n) entries, so a projected key has the scale of one key.

    forward(q, k, v, key_padding_mask=None): (B, N, H, D) with N <= max_seqlen -> (B, N, H, D).
    """

    def __init__(self, num_heads: int, max_seqlen: int, k: int | None = None, sharing: str = "headwise",
                 softmax_scale: float | None = None, seed: int | None = None):
        super().__init__()
        for name, val in (("num_heads", num_heads), ("max_seqlen", max_seqlen)):
            if isinstance(val, bool) or not isinstance(val, int) or val <= 0:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        if k is None:
            k = min(DEFAULT_K, max_seqlen)
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise ValueError(f"k (projected length) must be a positive int, got {k!r}")
        if k > max_seqlen:
            raise ValueError(f"k (projected length) must be <= max_seqlen ({max_seqlen}), got {k}: a projection to "
                             "more rows than tokens is not low rank")
        if sharing not in SHARING_MODES:
            raise ValueError(f"sharing must be one of {SHARING_MODES}, got {sharing!r}")
        self.num_heads, self.max_seqlen, self.k, self.sharing = num_heads, max_seqlen, k, sharing
        self.softmax_scale = check_scale("softmax_scale", softmax_scale)
        shape = (num_heads, k, max_seqlen) if sharing == "none" else (k, max_seqlen)
        gen = None if seed is None else torch.Generator().manual_seed(int(seed))
        std = 1.0 / math.sqrt(max_seqlen)
        self.e_proj = torch.nn.Parameter(torch.randn(shape, generator=gen) * std)
        self.f_proj = None if sharing == "key-value" else torch.nn.Parameter(torch.randn(shape, generator=gen) * std)

    def forward(self, q, k, v, key_padding_mask=None):
        return linformer_attention(q, k, v, self.e_proj, self.f_proj, key_padding_mask=key_padding_mask,
                                   softmax_scale=self.softmax_scale)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, max_seqlen={self.max_seqlen}, k={self.k}, sharing={self.sharing!r}"


def build(head_dim: int, num_heads: int, num_kv_heads: int | None = None, max_seqlen: int | None = None,
          causal: bool = False, k: int | None = None, sharing: str = "headwise",
          softmax_scale: float | None = None, seed: int | None = None) -> LinformerAttention:
    check_bool("causal", causal)
    if causal:
        raise ValueError(CAUSAL_ERROR)
    if max_seqlen is None:
        raise ValueError("linformer needs max_seqlen: its projections E, F are (k, max_seqlen) matrices")
    return LinformerAttention(num_heads, max_seqlen, k=k, sharing=sharing, softmax_scale=softmax_scale, seed=seed)


registry.register(registry.Method(
    name="linformer", build=build, exact=False, supports_causal=False, max_seqlen_fixed=True,
    summary="Linformer: learned k x n projections of K and V along the sequence (O(N k) time), non-causal",
    options={"k": "projected length, default min(256, max_seqlen)",
             "sharing": "'none' (per head), 'headwise' (default) or 'key-value'",
             "softmax_scale": "score scale, default 1/sqrt(head_dim)",
             "seed": "seed of the projections' initialisation (default: torch's global RNG)"}))
