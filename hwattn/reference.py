"""The vanilla five steps of attention, materialising S and P: the oracle for every test.

    S = Q K^T            (B, H, Nq, Nk), written out
    P = softmax(S * scale)                written out
    O = P V

Any dtype (float64 included); the arithmetic runs in the input dtype, so calling it on float64 copies
gives the ground truth the kernels are measured against. It is also the "naive" provider in benchmarks.
"""
from __future__ import annotations

import math

import torch

from ._checks import check_bool, check_scale, check_tensor

__all__ = ["attention", "causal_mask", "window_mask", "alibi_bias", "relative_position_bias"]

_LAYOUT = "(batch, seqlen, heads, head_dim)"


def causal_mask(nq: int, nk: int, align: str = "bottom_right", device=None) -> torch.Tensor:
    """Boolean (nq, nk) mask, True where query i may attend key j.

    align="bottom_right" (flash_attn >= 2.1): j <= i + nk - nq, so the last query sees every key.
    align="top_left" (torch SDPA is_causal): j <= i.
    """
    if align not in ("bottom_right", "top_left"):
        raise ValueError(f"align must be 'bottom_right' or 'top_left', got {align!r}")
    shift = nk - nq if align == "bottom_right" else 0
    i = torch.arange(nq, device=device)[:, None]
    j = torch.arange(nk, device=device)[None, :]
    return j <= i + shift


def window_mask(nq: int, nk: int, left: int, right: int, device=None) -> torch.Tensor:
    """Boolean (nq, nk) sliding-window mask, flash_attn's window_size=(left, right), bottom-right aligned:
    True iff i + nk - nq - left <= j <= i + nk - nq + right; -1 = unbounded on that side."""
    d = torch.arange(nk, device=device)[None, :] - (torch.arange(nq, device=device)[:, None] + nk - nq)
    keep = torch.ones(nq, nk, dtype=torch.bool, device=device)
    if left >= 0:
        keep &= d >= -left
    if right >= 0:
        keep &= d <= right
    return keep


def alibi_bias(slopes: torch.Tensor, nq: int, nk: int) -> torch.Tensor:
    """ALiBi as flash_attn adds it: -slope * |i + nk - nq - j|. slopes (H,) or (B, H) -> (1 or B, H, nq, nk),
    in slopes' dtype."""
    dist = (torch.arange(nq, device=slopes.device)[:, None] + nk - nq - torch.arange(nk, device=slopes.device)[None, :])
    per_head = slopes[None] if slopes.dim() == 1 else slopes
    return -per_head[:, :, None, None] * dist.abs().to(slopes.dtype)


def relative_position_bias(table: torch.Tensor, nq: int, nk: int) -> torch.Tensor:
    """The dense bias of a relative-position table (H or 1, nq + nk - 1): entry [h, j - i + nq - 1] at
    (i, j) -> (1, H or 1, nq, nk). A gather, so gradients flow back into the table."""
    offset = torch.arange(nk, device=table.device)[None, :] - torch.arange(nq, device=table.device)[:, None] + nq - 1
    return table[:, offset][None]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
              softmax_scale: float | None = None, causal_align: str = "bottom_right",
              mask: torch.Tensor | None = None, bias: torch.Tensor | None = None,
              return_lse: bool = False, softcap: float | None = None):
    """Reference attention in the (B, N, H, D) layout.

    Args:
        q: (B, Nq, Hq, D) queries.
        k: (B, Nk, Hkv, D) keys; Hq must be a multiple of Hkv (GQA/MQA: K/V heads are repeated).
        v: (B, Nk, Hkv, Dv) values.
        causal: apply a causal mask aligned as `causal_align` says.
        softmax_scale: defaults to 1/sqrt(D).
        causal_align: "bottom_right" (flash_attn) or "top_left" (torch SDPA).
        mask: optional boolean tensor broadcastable to (B, Hq, Nq, Nk); True = attend.
        bias: optional float tensor broadcastable to (B, Hq, Nq, Nk), added to the scaled scores (after
            the softcap: `alibi_bias`, `relative_position_bias` build the score mods' biases).
        softcap: optional > 0: scaled scores s become softcap * tanh(s / softcap) (before the bias).
        return_lse: also return the natural-log log-sum-exp (B, Hq, Nq) in float32 (float64 for float64).

    Rows with nothing to attend to give zeros (and lse = -inf), not NaN.
    Returns O (B, Nq, Hq, Dv) in q's dtype, and the lse when asked.
    """
    check_tensor("q", q, 4, layout=_LAYOUT)
    check_tensor("k", k, 4, layout=_LAYOUT)
    check_tensor("v", v, 4, layout=_LAYOUT)
    check_bool("causal", causal)
    softmax_scale = check_scale("softmax_scale", softmax_scale)
    B, Nq, Hq, D = q.shape
    if k.shape[0] != B or v.shape[0] != B or k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must be (B, Nk, Hkv, D) with B={B}, got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape[3] != D:
        raise ValueError(f"k head_dim must equal q's ({D}), got {k.shape[3]}")
    Hkv = k.shape[2]
    if Hq % Hkv != 0:
        raise ValueError(f"q heads ({Hq}) must be a multiple of k/v heads ({Hkv})")
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)

    qh = q.transpose(1, 2)                                   # (B, Hq, Nq, D)
    kh = k.transpose(1, 2).repeat_interleave(Hq // Hkv, 1)    # (B, Hq, Nk, D)
    vh = v.transpose(1, 2).repeat_interleave(Hq // Hkv, 1)
    s = torch.matmul(qh, kh.transpose(-1, -2)) * scale        # step 3: S, materialised
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    if bias is not None:
        s = s + bias.to(s.dtype)
    allowed = None
    if causal:
        allowed = causal_mask(Nq, k.shape[1], causal_align, device=q.device)
    if mask is not None:
        allowed = mask if allowed is None else (allowed & mask)
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    row_max = s.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    e = torch.exp(s - row_max)
    denom = e.sum(dim=-1, keepdim=True)
    p = e / torch.where(denom > 0, denom, torch.ones_like(denom))  # step 4: P, materialised
    o = torch.matmul(p, vh)                                   # step 5
    out = o.transpose(1, 2).to(q.dtype)
    if not return_lse:
        return out
    lse = (row_max + torch.log(denom)).squeeze(-1)
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return out, lse.to(lse_dtype)
