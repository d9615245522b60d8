"""Registers "performer": FAVOR+ (Choromanski et al. 2021) on the linear-attention core."""
from __future__ import annotations

import torch

from ... import registry
from ..._checks import check_bool
from ..linear_attn.interface import linear_attention, linear_attention_recurrent
from .interface import (DEFAULT_EPS, DEFAULT_KERNEL_EPS, DEFAULT_NB_FEATURES, _check_kernel, _check_positive_int,
                        draw_projection, favor_features, key_offset, performer_attention)


class PerformerAttention(torch.nn.Module):
    """Performer attention with its random projection as a buffer (saved in the state dict, no gradient).

    Args:
        head_dim: D. nb_features: m (default 256). causal: prefix-sum form.
        kernel: "softmax" (FAVOR+ positive features, default) or "relu".
        orthogonal: block-orthogonal (default) or iid Gaussian projection rows.
        seed: seed of the first draw; draw i (i = 0, 1, ...) uses seed + i, so a run's sequence of
            projections is reproducible.
        redraw_interval: redraw every this many forward calls in training mode (None: only on `redraw()`).

    forward(q, k, v): (B, N, H, D) -> (B, N, H, D).
    step(q, k, v, state): decoding; state (S, z, key_offset) for the softmax kernel, (S, z) for relu. The keys'
        stabiliser is a running max: when a new key raises it, the carried S and z are rescaled by
        exp(old - new), so the features never overflow and the result equals the parallel form's.
    redraw(seed=None): draw a new projection (the next seed in the sequence, or the one given).
    """

    def __init__(self, head_dim: int, causal: bool, nb_features: int = DEFAULT_NB_FEATURES,
                 kernel: str = "softmax", orthogonal: bool = True, seed: int = 0,
                 redraw_interval: int | None = None, kernel_eps: float = DEFAULT_KERNEL_EPS,
                 eps: float = DEFAULT_EPS):
        super().__init__()
        _check_positive_int("head_dim", head_dim)
        _check_positive_int("nb_features", nb_features)
        _check_kernel(kernel)
        if redraw_interval is not None:
            _check_positive_int("redraw_interval", redraw_interval)
        self.head_dim, self.nb_features, self.kernel = head_dim, nb_features, kernel
        self.causal = check_bool("causal", causal)
        self.orthogonal = check_bool("orthogonal", orthogonal)
        self.seed, self.redraw_interval = seed, redraw_interval
        self.kernel_eps, self.eps = kernel_eps, eps
        self.draws = 0
        self.calls = 0
        self.register_buffer("projection", draw_projection(nb_features, head_dim, seed, orthogonal))

    def _apply(self, fn, *args, **kwargs):
        # Follow device moves but keep the projection's float32 values: a module-wide .half()/.to(bf16) would
        # round W, and exp() turns that into percent-level feature errors. The kernels use W in fp32 anyway.
        w = self.projection
        super()._apply(fn, *args, **kwargs)
        self.projection = w.to(self.projection.device)
        return self

    @torch.no_grad()
    def redraw(self, seed: int | None = None) -> None:
        if seed is None:
            self.draws += 1
            seed = self.seed + self.draws
        w = draw_projection(self.nb_features, self.head_dim, seed, self.orthogonal)
        self.projection.copy_(w.to(self.projection.device))

    def forward(self, q, k, v):
        if self.training and self.redraw_interval is not None:
            if self.calls and self.calls % self.redraw_interval == 0:
                self.redraw()
            self.calls += 1
        return performer_attention(q, k, v, self.projection, causal=self.causal, kernel=self.kernel,
                                   kernel_eps=self.kernel_eps, eps=self.eps)

    def step(self, q, k, v, state=None):
        w = self.projection
        qf, _ = favor_features(q, w, True, self.kernel, self.kernel_eps)
        core_state = None
        if self.kernel == "softmax":
            offset = key_offset(k, w)
            if state is not None:
                s, z, old = state
                offset = torch.maximum(offset, old)
                rescale = torch.exp(old - offset)                  # <= 1: the features' scale moved down
                core_state = (s * rescale[..., None, None], z * rescale[..., None])
            kf, _ = favor_features(k, w, False, self.kernel, self.kernel_eps, key_offset=offset)
        else:
            core_state = state
            kf, _ = favor_features(k, w, False, self.kernel, self.kernel_eps)
        vf = v.to(kf.dtype)
        if self.causal:
            out, (s, z) = linear_attention_recurrent(qf, kf, vf, initial_state=core_state, feature_map=None,
                                                     eps=self.eps)
        else:
            out, (s, z) = linear_attention(qf, kf, vf, causal=False, feature_map=None, initial_state=core_state,
                                           output_final_state=True, eps=self.eps)
        new_state = (s, z, offset) if self.kernel == "softmax" else (s, z)
        return out.to(q.dtype), new_state

    def extra_repr(self) -> str:
        return (f"head_dim={self.head_dim}, nb_features={self.nb_features}, kernel={self.kernel!r}, "
                f"causal={self.causal}, orthogonal={self.orthogonal}, seed={self.seed}")


def build(head_dim: int, num_heads: int, num_kv_heads: int | None = None, max_seqlen: int | None = None,
          causal: bool = True, nb_features: int = DEFAULT_NB_FEATURES, kernel: str = "softmax",
          orthogonal: bool = True, seed: int = 0, redraw_interval: int | None = None) -> PerformerAttention:
    return PerformerAttention(head_dim, causal, nb_features=nb_features, kernel=kernel, orthogonal=orthogonal,
                              seed=seed, redraw_interval=redraw_interval)


registry.register(registry.Method(
    name="performer", build=build, exact=False, supports_decode=True,
    summary="Performer FAVOR+ (positive orthogonal random features, fused Triton feature kernels) on the "
            "linear-attention core",
    options={"nb_features": "number of random features m, default 256",
             "kernel": "'softmax' (FAVOR+, default) or 'relu'",
             "orthogonal": "block-orthogonal projection (default True) or iid",
             "seed": "seed of the first projection draw (draw i uses seed + i)",
             "redraw_interval": "redraw every n training forward calls (default: only on redraw())"}))
