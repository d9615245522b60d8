"""Readable references for linear attention, in the input dtype (call them on float64 copies for ground truth).

Two forms of the same function:

* `linear_attention_naive`: the quadratic form. A = phi(Q) phi(K)^T (B, H, Nq, Nk) is written out, masked
  causally if asked; O = (A V + phi(Q) S0) / (rowsum(A) + phi(Q) . z0 + eps).
* `linear_attention_recurrent_naive`: the token-by-token recurrence S += k v^T, z += k, o = q S / (q . z + eps),
  a Python loop over tokens (causal by construction).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["elu_feature_map", "linear_attention_naive", "linear_attention_recurrent_naive"]


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """The Linear Transformer's phi(x) = elu(x) + 1 (positive, so denominators stay positive)."""
    return F.elu(x) + 1.0


def _apply(feature_map, x):
    return x if feature_map is None else feature_map(x)


def linear_attention_naive(q, k, v, causal: bool = False, feature_map=elu_feature_map, normalize: bool = True,
                           initial_state=None, eps: float = 1e-6):
    """Quadratic-form linear attention.

    q (B, Nq, H, Dk), k (B, Nk, H, Dk), v (B, Nk, H, Dv); causal needs Nq == Nk. feature_map: a callable or
    None (q and k used as given). initial_state: (S0 (B, H, Dk', Dv), z0 (B, H, Dk')) when normalize, S0 alone
    otherwise, in feature space. Returns (O (B, Nq, H, Dv), final state of the same form).
    """
    qf = _apply(feature_map, q).transpose(1, 2)  # (B, H, Nq, Dk')
    kf = _apply(feature_map, k).transpose(1, 2)
    vh = v.transpose(1, 2)
    a = torch.matmul(qf, kf.transpose(-1, -2))   # (B, H, Nq, Nk), materialised
    if causal:
        nq, nk = a.shape[-2:]
        keep = torch.ones(nq, nk, dtype=torch.bool, device=a.device).tril()
        a = a.masked_fill(~keep, 0.0)
    num = torch.matmul(a, vh)
    s_final = torch.matmul(kf.transpose(-1, -2), vh)
    if normalize:
        s0, z0 = initial_state if initial_state is not None else (None, None)
        den = a.sum(-1)
        z_final = kf.sum(-2)
        if z0 is not None:
            den = den + torch.einsum("bhnd,bhd->bhn", qf, z0.to(qf.dtype))
            z_final = z_final + z0.to(qf.dtype)
    else:
        s0 = initial_state
    if s0 is not None:
        num = num + torch.matmul(qf, s0.to(qf.dtype))
        s_final = s_final + s0.to(qf.dtype)
    if normalize:
        out = num / (den + eps)[..., None]
        final = (s_final, z_final)
    else:
        out = num
        final = s_final
    return out.transpose(1, 2).to(q.dtype), final


def linear_attention_recurrent_naive(q, k, v, feature_map=elu_feature_map, normalize: bool = True,
                                     initial_state=None, eps: float = 1e-6):
    """Recurrent (causal) form, one token at a time; same arguments and returns as `linear_attention_naive`."""
    B, N, H, _ = q.shape
    qf, kf = _apply(feature_map, q), _apply(feature_map, k)
    Dk, Dv = qf.shape[-1], v.shape[-1]
    if normalize:
        s, z = initial_state if initial_state is not None else (None, None)
    else:
        s, z = initial_state, None
    s = qf.new_zeros(B, H, Dk, Dv) if s is None else s.to(qf.dtype).clone()
    z = qf.new_zeros(B, H, Dk) if z is None else z.to(qf.dtype).clone()
    outs = []
    for t in range(N):
        kt, vt, qt = kf[:, t], v[:, t].to(qf.dtype), qf[:, t]   # (B, H, D)
        s = s + kt[..., :, None] * vt[..., None, :]
        z = z + kt
        o = torch.einsum("bhk,bhkv->bhv", qt, s)
        if normalize:
            o = o / ((qt * z).sum(-1, keepdim=True) + eps)
        outs.append(o)
    out = torch.stack(outs, dim=1).to(q.dtype)
    return out, ((s, z) if normalize else s)
