"""Public entry point of Linformer attention.

No custom Triton kernel here, on purpose: the two projections are batched GEMMs over the sequence (cuBLAS is at
the roofline for them) and the attention that follows has only k (default 256) keys, which SDPA's fused kernels
handle well; a fused kernel would save one write and read of the (B, k, H, D) projected K/V, a few percent.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..._checks import check_bool, check_same, check_scale, check_tensor

__all__ = ["linformer_attention"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_LAYOUT = "(batch, seqlen, heads, head_dim)"
CAUSAL_ERROR = ("Linformer is non-causal by construction: E and F mix every position of the sequence into each "
                "projected key and value, so every query would see future tokens. Use 'linear' or 'performer' "
                "for causal low-rank attention.")


def _check_proj(name: str, proj, heads: int, n_keys: int, device) -> None:
    check_tensor(name, proj, None, (torch.float16, torch.bfloat16, torch.float32, torch.float64))
    if proj.dim() not in (2, 3):
        raise ValueError(f"{name} must be (k, n) shared by all heads or (H, k, n) per head, got shape "
                         f"{tuple(proj.shape)}")
    if proj.dim() == 3 and proj.shape[0] != heads:
        raise ValueError(f"{name} per head must be (H, k, n) with H={heads}, got {tuple(proj.shape)}")
    if proj.shape[-2] <= 0:
        raise ValueError(f"{name} must project to k >= 1 rows, got k={proj.shape[-2]}")
    n = proj.shape[-1]
    if n_keys > n:
        raise ValueError(f"sequence length {n_keys} exceeds the Linformer projection's max length n={n} ({name} "
                         f"{tuple(proj.shape)}): the projections are fixed-size; build the layer with "
                         f"max_seqlen >= {n_keys} or split the sequence")
    if proj.device != device:
        raise ValueError(f"{name} is on {proj.device}, the inputs are on {device}")


def linformer_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, e_proj: torch.Tensor,
                        f_proj: torch.Tensor | None = None, key_padding_mask: torch.Tensor | None = None,
                        softmax_scale: float | None = None, causal: bool = False) -> torch.Tensor:
    """Linformer attention: softmax(Q (E K)^T * scale) (F V), low rank along the sequence.

    Args:
        q: (B, Nq, H, D) queries; float16 / bfloat16 / float32 / float64, any device PyTorch supports.
        k: (B, Nk, H, D) keys; v: (B, Nk, H, Dv) values; same dtype, device and heads as q.
        e_proj: the key projection E, (k, n) shared by all heads or (H, k, n) per head, n = the max length.
            Nk < n: the first Nk columns are used, which is exactly zero-padding K/V to n (padded positions
            contribute nothing). Nk > n raises.
        f_proj: the value projection F, same shapes; None shares E for keys and values ("key-value" sharing).
        key_padding_mask: optional (B, Nk) bool, True = a real token; masked keys/values are zeroed before the
            projection (for batches of different lengths).
        softmax_scale: score scale, default 1/sqrt(D).
        causal: must be False; True raises (Linformer cannot be causal, see the error message).

    Returns:
        O (B, Nq, H, Dv) in q's dtype. Gradients reach q, k, v, e_proj and f_proj.

    Cost: O(N k D) for the projections and O(Nq k D) for the attention, instead of O(Nq Nk D).
    """
    check_bool("causal", causal)
    if causal:
        raise ValueError(CAUSAL_ERROR)
    check_tensor("q", q, 4, SUPPORTED_DTYPES, layout=_LAYOUT)
    check_tensor("k", k, 4, SUPPORTED_DTYPES, layout=_LAYOUT)
    check_tensor("v", v, 4, SUPPORTED_DTYPES, layout=_LAYOUT)
    check_same(("q", "k", "v"), (q, k, v), "dtype")
    check_same(("q", "k", "v"), (q, k, v), "device")
    softmax_scale = check_scale("softmax_scale", softmax_scale)
    B, Nq, H, D = q.shape
    if k.shape[0] != B or v.shape[0] != B or k.shape[2] != H or v.shape[2] != H:
        raise ValueError(f"q, k, v must share batch and heads (repeat K/V heads for GQA), got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape[1] != v.shape[1] or k.shape[3] != D:
        raise ValueError(f"k must be (B, Nk, H, D={D}) and v (B, Nk, H, Dv), got k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    Nk = k.shape[1]
    if min(B, Nq, Nk, H, D, v.shape[3]) == 0:
        raise ValueError(f"q, k, v must have no empty dimension, got q {tuple(q.shape)}, k {tuple(k.shape)}")
    _check_proj("e_proj", e_proj, H, Nk, q.device)
    if f_proj is not None:
        _check_proj("f_proj", f_proj, H, Nk, q.device)
        if f_proj.shape[-2] != e_proj.shape[-2]:
            raise ValueError(f"e_proj and f_proj must project to the same k, got {e_proj.shape[-2]} and "
                             f"{f_proj.shape[-2]}")
    if key_padding_mask is not None:
        check_tensor("key_padding_mask", key_padding_mask, 2, (torch.bool,))
        if tuple(key_padding_mask.shape) != (B, Nk):
            raise ValueError(f"key_padding_mask must be (B, Nk) = {(B, Nk)}, got {tuple(key_padding_mask.shape)}")
        keep = key_padding_mask.to(q.device)[:, :, None, None].to(k.dtype)
        k, v = k * keep, v * keep
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)

    def project(proj, x):  # (k, n) / (H, k, n) on (B, N, H, D) -> (B, H, k, D)
        p = proj[..., :Nk].to(x.dtype)
        if p.dim() == 2:
            return torch.matmul(p, x.permute(0, 2, 1, 3))           # (k, N) @ (B, H, N, D)
        return torch.matmul(p.unsqueeze(0), x.permute(0, 2, 1, 3))  # (1, H, k, N) @ (B, H, N, D)

    kp = project(e_proj, k)
    vp = project(e_proj if f_proj is None else f_proj, v)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), kp, vp, scale=scale)
    return out.transpose(1, 2)
