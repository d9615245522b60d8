"""Registers "linear": the Linear Transformer (Katharopoulos et al. 2020), phi = elu + 1."""
from __future__ import annotations

import torch

from ... import registry
from ..._checks import check_bool
from .interface import DEFAULT_EPS, linear_attention, linear_attention_recurrent


class LinearAttention(torch.nn.Module):
    """Linear Transformer attention as a module (no parameters).

    forward(q, k, v): (B, N, H, D) each -> (B, N, H, D).
    step(q, k, v, state): the new tokens (B, n_new, H, D) with the carried state (None = empty) -> (out, state).
    Causal modules decode with the recurrent kernel (token t sees the state plus new tokens <= t); non-causal ones
    let every new query see the state plus all new keys (like a KV cache with a non-causal exact method).
    The state is (S (B, H, D, D), z (B, H, D)) in fp32.
    """

    def __init__(self, causal: bool, feature_map="elu+1", eps: float = DEFAULT_EPS):
        super().__init__()
        self.causal = check_bool("causal", causal)
        self.feature_map = feature_map
        self.eps = eps

    def forward(self, q, k, v):
        return linear_attention(q, k, v, causal=self.causal, feature_map=self.feature_map, eps=self.eps)

    def step(self, q, k, v, state=None):
        if self.causal:
            return linear_attention_recurrent(q, k, v, initial_state=state, feature_map=self.feature_map,
                                              eps=self.eps)
        return linear_attention(q, k, v, causal=False, feature_map=self.feature_map, initial_state=state,
                                output_final_state=True, eps=self.eps)

    def extra_repr(self) -> str:
        return f"causal={self.causal}, feature_map={self.feature_map!r}, eps={self.eps}"


def build(head_dim: int, num_heads: int, num_kv_heads: int | None = None, max_seqlen: int | None = None,
          causal: bool = True, feature_map="elu+1", eps: float = DEFAULT_EPS) -> LinearAttention:
    return LinearAttention(causal=causal, feature_map=feature_map, eps=eps)


registry.register(registry.Method(
    name="linear", build=build, exact=False, supports_decode=True,
    summary="Linear Transformer (elu+1 features), chunked Triton kernels, O(N) time, recurrent decoding",
    options={"feature_map": "'elu+1' (default), 'identity' or a callable on (B, N, H, D)",
             "eps": "added to the fp32 denominator, default 1e-6"}))
