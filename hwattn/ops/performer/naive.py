"""Readable references for Performer's FAVOR+ (Choromanski et al. 2021), in PyTorch, float64-capable.

Softmax kernel, positive random features. With x~ = x * D^(-1/4) (so that q~ . k~ = q . k / sqrt(D)) and
w_1..w_m the rows of the projection W (m, D):

    phi(x)_j = exp(w_j . x~ - |x~|^2 / 2 - c) / sqrt(m),      E_w[phi(q) . phi(k)] = exp(q . k / sqrt(D)) e^(-c_q-c_k)/m

The stabiliser c cancels between numerator and denominator of the normalised attention, so any constant per
query row (queries: the row's max exponent) and any constant shared by all keys of a (batch, head) (keys: the max
exponent over the whole sequence and all features) gives the same attention; it only keeps exp() in range.

ReLU kernel (the paper's generalised attention): phi(x)_j = relu(w_j . x~) + kernel_eps.

The projection W is block-orthogonal Gaussian: blocks of D orthonormal rows (QR of a Gaussian matrix, signs fixed
so the draw is Haar-uniform), each row rescaled by the norm of an independent Gaussian D-vector so that every
row is marginally N(0, I_D) as in the iid estimator, but rows within a block are exactly orthogonal (lower variance).
"""
from __future__ import annotations

import torch

from ..linear_attn.naive import linear_attention_naive

__all__ = ["draw_projection_naive", "favor_features_naive", "performer_attention_naive"]


def draw_projection_naive(nb_features: int, dim: int, seed: int, orthogonal: bool = True) -> torch.Tensor:
    """(nb_features, dim) float32 projection from a CPU generator seeded with `seed` (same draw on any machine)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    if not orthogonal:
        return torch.randn(nb_features, dim, generator=gen, dtype=torch.float64).float()
    blocks = []
    for start in range(0, nb_features, dim):
        g = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
        qmat, rmat = torch.linalg.qr(g)
        qmat = qmat * torch.sign(torch.diagonal(rmat))[None, :]    # Haar-uniform orthogonal matrix
        blocks.append(qmat.T[: min(dim, nb_features - start)])     # rows are orthonormal
    w = torch.cat(blocks, dim=0)
    norms = torch.randn(nb_features, dim, generator=gen, dtype=torch.float64).norm(dim=1)
    return (w * norms[:, None]).float()


def favor_features_naive(x: torch.Tensor, projection: torch.Tensor, is_query: bool, kernel: str = "softmax",
                         kernel_eps: float = 1e-3, key_offset: torch.Tensor | None = None):
    """Features of x (B, N, H, D) -> (B, N, H, m) in x's dtype (compute in x's dtype: pass float64 for truth).

    Softmax kernel: queries subtract their row max; keys subtract `key_offset` (B, H) if given, else the max over
    the sequence and all features of each (batch, head). Returns (features, offset used for keys or None).
    """
    d = x.shape[-1]
    xs = x * d ** -0.25
    u = torch.einsum("bnhd,md->bnhm", xs, projection.to(x.dtype))
    if kernel == "relu":
        return torch.relu(u) + kernel_eps, None
    u = u - (xs * xs).sum(-1, keepdim=True) / 2
    if is_query:
        c = u.amax(dim=-1, keepdim=True).detach()
        offset = None
    else:
        offset = u.amax(dim=(1, 3)).detach() if key_offset is None else key_offset.to(u.dtype)  # (B, H)
        c = offset[:, None, :, None]
    m = projection.shape[0]
    return torch.exp(u - c) * m ** -0.5, offset


def performer_attention_naive(q, k, v, projection, causal: bool = False, kernel: str = "softmax",
                              kernel_eps: float = 1e-3, eps: float = 1e-12):
    """Performer attention: FAVOR+ features, then normalised linear attention (quadratic form). (B, N, H, D)."""
    qf, _ = favor_features_naive(q, projection, True, kernel, kernel_eps)
    kf, _ = favor_features_naive(k, projection, False, kernel, kernel_eps)
    out, _ = linear_attention_naive(qf, kf, v.to(qf.dtype), causal=causal, feature_map=None, eps=eps)
    return out.to(q.dtype)
