"""Public entry points of the exact kernel and the autograd wiring."""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..._checks import check_bool, check_same, check_scale, check_tensor
from ..._runtime import check_kernel_device, custom_op
from .backward import flash_bwd
from .block_mask import BlockMask
from .common import LN2
from .forward import flash_fwd
from .score_mods import ScoreMods, check_score_mods, resolve_window

__all__ = ["flash_attention", "sdpa"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


# The kernels are registered as custom ops so torch.compile treats them as opaque calls (no graph breaks,
# no tracing into Triton launches); plain eager calls skip the dispatcher (`_runtime.custom_op`). The
# autograd.Function below wires them together.
# Score mods cross the op boundary as plain arguments: optional tables, the softcap (0.0 = off) and the
# resolved window ([] = none, else [left, right]).
def _mods(alibi_slopes, softcap, rel_bias, window, rel_bias_grad=False):
    return ScoreMods(alibi_slopes=alibi_slopes, softcap=softcap, rel_bias=rel_bias,
                     window=tuple(window) if window else None, rel_bias_grad=rel_bias_grad)


@custom_op("hwattn::flash_fwd")
def _flash_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, softmax_scale: float,
                  mask_tensors: list[torch.Tensor], mask_ints: list[int], alibi_slopes: Optional[torch.Tensor],
                  softcap: float, rel_bias: Optional[torch.Tensor], window: list[int]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    return flash_fwd(q, k, v, causal, softmax_scale, BlockMask.from_op_args(mask_tensors, mask_ints),
                     mods=_mods(alibi_slopes, softcap, rel_bias, window))


@_flash_fwd_op.op.register_fake
def _(q, k, v, causal, softmax_scale, mask_tensors, mask_ints, alibi_slopes, softcap, rel_bias, window):
    B, n_q, n_heads, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty((B, n_heads, n_q), dtype=torch.float32)


@custom_op("hwattn::flash_bwd")
def _flash_bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                  lse: torch.Tensor, causal: bool, softmax_scale: float, mask_tensors: list[torch.Tensor],
                  mask_ints: list[int], alibi_slopes: Optional[torch.Tensor], softcap: float,
                  rel_bias: Optional[torch.Tensor], window: list[int], rel_bias_grad: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv, drel_bias = flash_bwd(do, q, k, v, o, lse, causal, softmax_scale,
                                      BlockMask.from_op_args(mask_tensors, mask_ints),
                                      mods=_mods(alibi_slopes, softcap, rel_bias, window, rel_bias_grad))
    # an op returns tensors only: "no d rel_bias" is an empty one
    return dq, dk, dv, q.new_empty(0, dtype=torch.float32) if drel_bias is None else drel_bias


@_flash_bwd_op.op.register_fake
def _(do, q, k, v, o, lse, causal, softmax_scale, mask_tensors, mask_ints, alibi_slopes, softcap, rel_bias, window,
      rel_bias_grad):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format),
            torch.empty_like(rel_bias) if rel_bias_grad else q.new_empty(0, dtype=torch.float32))


class FlashAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, softmax_scale, mask_tensors, mask_ints, alibi_slopes=None, softcap=0.0,
                rel_bias=None, window=()):
        window = list(window)
        o, lse = _flash_fwd_op(q, k, v, causal, softmax_scale, mask_tensors, mask_ints, alibi_slopes, softcap,
                               rel_bias, window)
        ctx.save_for_backward(q, k, v, o, lse, alibi_slopes, rel_bias, *mask_tensors)
        ctx.mask_ints = mask_ints
        ctx.causal = causal
        ctx.softmax_scale = softmax_scale
        ctx.softcap = softcap
        ctx.window = window
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    def backward(ctx, do, _dlse):
        q, k, v, o, lse, alibi_slopes, rel_bias, *mask_tensors = ctx.saved_tensors
        if do.stride(-1) != 1:
            do = do.contiguous()
        rel_bias_grad = rel_bias is not None and ctx.needs_input_grad[9]
        dq, dk, dv, drel_bias = _flash_bwd_op(do, q, k, v, o, lse, ctx.causal, ctx.softmax_scale, mask_tensors,
                                              ctx.mask_ints, alibi_slopes, ctx.softcap, rel_bias, ctx.window,
                                              rel_bias_grad)
        return dq, dk, dv, None, None, None, None, None, None, drel_bias if rel_bias_grad else None, None


def _validate(q, k, v, layout: str):
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, x, 4, SUPPORTED_DTYPES, layout)
    check_same(("q", "k", "v"), (q, k, v), "dtype")
    check_same(("q", "k", "v"), (q, k, v), "device")


def _check_shapes(q, k, v):
    """Shapes in the (B, N, H, D) layout."""
    B, n_q, n_heads, head_dim = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if k.shape[0] != B:
        raise ValueError(f"k/v batch ({k.shape[0]}) must equal q's ({B})")
    if k.shape[3] != head_dim:
        raise ValueError(f"k/v head_dim ({k.shape[3]}) must equal q's ({head_dim})")
    if n_q < 1 or k.shape[1] < 1:
        raise ValueError(f"sequence lengths must be >= 1, got q {n_q} and k/v {k.shape[1]}")
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be in [1, {MAX_HEAD_DIM}], got {head_dim}")
    n_kv = k.shape[2]
    if n_kv < 1 or n_heads % n_kv != 0:
        raise ValueError(f"q heads ({n_heads}) must be a multiple of k/v heads ({n_kv}) (GQA/MQA)")
    if B < 1 or n_heads < 1:
        raise ValueError(f"batch and heads must be >= 1, got batch {B}, heads {n_heads}")


def _last_dim_contiguous(x):
    return x if x.stride(-1) == 1 else x.contiguous()


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                    softmax_scale: float | None = None, return_lse: bool = False,
                    block_mask: BlockMask | None = None, window: tuple[int, int] | None = None,
                    alibi_slopes: torch.Tensor | None = None, softcap: float | None = None,
                    rel_bias: torch.Tensor | None = None):
    """Exact attention, IO-aware (FlashAttention-2 algorithm), forward and backward in Triton.

    Args:
        q: (B, Nq, Hq, D) queries; fp16, bf16 or fp32 (fp32 computes with true fp32 products, slower).
        k: (B, Nk, Hkv, D) keys. Hq must be a multiple of Hkv (GQA; Hkv = 1 is MQA); K/V are never
            repeated in memory and dK/dV are summed over each query group.
        v: (B, Nk, Hkv, D) values.
        causal: mask the future, aligned bottom-right when Nq != Nk (as flash_attn >= 2.1): query i sees
            key j iff j <= i + Nk - Nq. Query rows that see no key (Nq > Nk) output zeros, with zero grads.
        softmax_scale: scale of QK^T before the softmax, > 0; default 1/sqrt(D).
        return_lse: also return the log-sum-exp of the scaled scores, natural log, (B, Hq, Nq) float32
            (-inf for rows that see no key). Not differentiable.
        block_mask: a `BlockMask` from `create_block_mask(mask_mod, ...)` (see `hwattn.masks` for causal,
            sliding window, document, prefix-LM and Sparse Transformer patterns). Key blocks the mask
            leaves empty are never read, forward and backward, so cost follows the kept fraction. Built for
            (B or 1, Hq or 1, Nq, Nk) on q's device; excludes `causal=True` and `window` (put them in the
            mask); combines with the score mods below. A mask that is packed documents runs on the varlen
            kernels, one that is a single band (causal, a sliding window) as that `window`: the same mask,
            faster (`BlockMask.documents` / `BlockMask.window`; set them to None to walk the blocks).
        window: (left, right) sliding window, flash_attn's `window_size`: query i sees key j iff
            i + Nk - Nq - left <= j <= i + Nk - Nq + right; -1 = unbounded on that side; default None =
            (-1, -1), no window. With causal=True the right side is 0 (right must be 0 or -1). Key blocks
            outside the window are skipped, forward and backward: cost follows the window.

    Score mods, applied inside the kernel to the scaled score s = q.k * softmax_scale of query i and key j,
    in this order, forward and backward (flash_attn's conventions; all off by default, no cost when off):
        softcap: float > 0: s = softcap * tanh(s / softcap) (Gemma-2 style; bounds the logits, so large
            ones stay finite). None or 0 = off. The gradient flows through tanh.
        alibi_slopes: (Hq,) or (B, Hq) float32 on q's device: adds -slope[b, h] * |i + Nk - Nq - j|. Fixed
            slopes: refused if they require grad (no gradient flows to them).
        rel_bias: (Hq, Nq + Nk - 1) or (1, Nq + Nk - 1) float32 on q's device, a relative-position bias
            table: adds rel_bias[h, j - i + Nq - 1] (entry Nq - 1 is the diagonal j = i; (1, ...) is shared
            by all heads). Differentiable: d rel_bias (float32) is summed in the dQ pass with fp32 atomics,
            so its last bits vary run to run (dq, dk, dv stay deterministic). No N x N tensor is formed.
    The LSE (and return_lse) is that of the modded scores.

    The backward is deterministic. HWATTN_BWD=atomic opts into FlashAttention-2's schedule (dQ added with fp32
    atomics by the dK/dV programs; not deterministic, measured ~20% slower on an H200, never taken under
    torch.use_deterministic_algorithms(True)); HWATTN_BWD=fused / split force one launch or two.

    Any Nq, Nk >= 1 and head_dim 1..256 (non-powers of two are padded inside the kernel); any strides
    (a tensor whose last dim is not contiguous is copied once). q, k, v must share dtype and device.
    On CPU tensors the same Triton kernels run in the interpreter when TRITON_INTERPRET=1 (slow; for
    testing), otherwise a RuntimeError says so. No silent fallback.

    Returns:
        out (B, Nq, Hq, D) in q's dtype, and lse when return_lse=True.
    """
    _validate(q, k, v, "(batch, seqlen, heads, head_dim)")
    check_bool("causal", causal)
    check_bool("return_lse", return_lse)
    softmax_scale = check_scale("softmax_scale", softmax_scale)
    _check_shapes(q, k, v)
    check_kernel_device("flash_attention", q, k, v)
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(q.shape[-1])
    elif softmax_scale <= 0:
        raise ValueError(f"softmax_scale must be > 0, got {softmax_scale}")
    B, n_q, n_heads = q.shape[:3]
    n_k = k.shape[1]
    mods = check_score_mods(alibi_slopes, softcap, rel_bias, batch=B, n_heads=n_heads, n_q=n_q, n_k=n_k,
                            device=q.device)
    if window is not None and block_mask is not None:
        raise ValueError("window with a block_mask: put the window into the mask_mod instead "
                         "(hwattn.masks.sliding_window, combined with and_masks)")
    causal, kernel_window = resolve_window(window, causal, n_q + n_k)
    mask_tensors, mask_ints = [], []
    if block_mask is not None:
        if not isinstance(block_mask, BlockMask):
            raise TypeError(f"block_mask must be a hwattn BlockMask (create_block_mask), got {type(block_mask).__name__}")
        if causal:
            raise ValueError("causal=True with a block_mask: put causality into the mask_mod instead "
                             "(e.g. hwattn.masks.causal() combined with and_masks)")
        block_mask.check_for(q.shape[0], q.shape[2], q.shape[1], k.shape[1])
        if block_mask.tiles.device != q.device:
            raise ValueError(f"block_mask is on {block_mask.tiles.device} but q is on {q.device}: build it with "
                             f"device=q.device")
        if block_mask.documents is not None:
            routed = _documents_on_varlen(q, k, v, block_mask.documents, softmax_scale, return_lse, mods)
            if routed is not None:
                return routed
        if block_mask.window is not None:
            # one band: the window kernels compute each block's key range, no lists to walk (same mask)
            causal, kernel_window = resolve_window(block_mask.window, False, n_q + n_k)
        else:
            mask_tensors, mask_ints = block_mask.to_op_args()
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    out, lse2 = FlashAttentionFunction.apply(q, k, v, causal, softmax_scale, mask_tensors, mask_ints,
                                             mods.alibi_slopes, mods.softcap, mods.rel_bias,
                                             kernel_window or ())
    if not return_lse:
        return out
    # the kernels keep LSE in the log2 domain with +inf for empty rows (so recomputed P is 0); users get ln
    lse = torch.where(torch.isinf(lse2), torch.full_like(lse2, float("-inf")), lse2 * LN2)
    return out, lse


def _documents_on_varlen(q, k, v, documents, softmax_scale, return_lse, mods):
    """A packed-documents block mask (`block_mask.Documents`) run as a varlen batch: every (batch row, document)
    is one sequence of `flash_attention_varlen`, on views of q, k, v (no copy). None (take the block walk)
    where that cannot be a view (the batch and sequence dims do not merge) or a score mod has no varlen form
    (a relative-position table)."""
    from .varlen import flash_attention_varlen
    B, n = q.shape[:2]
    if mods.rel_bias is not None or any(x.shape[0] > 1 and x.stride(0) != n * x.stride(1) for x in (q, k, v)):
        return None
    cu, max_len, doc_batch = documents.varlen_args(B, q.device)
    slopes = mods.alibi_slopes
    if slopes is not None and slopes.dim() == 2:  # (B, Hq): one row per document, its batch row's
        slopes = slopes[doc_batch]
    out = flash_attention_varlen(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), cu, cu, max_len, max_len,
                                 causal=documents.causal, softmax_scale=softmax_scale, return_lse=return_lse,
                                 alibi_slopes=slopes, softcap=mods.softcap or None)
    if not return_lse:
        return out.view(q.shape)
    out, lse = out
    return out.view(q.shape), lse.view(q.shape[2], B, n).transpose(0, 1).contiguous()


def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask=None, dropout_p: float = 0.0,
         is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> torch.Tensor:
    """Drop-in for torch.nn.functional.scaled_dot_product_attention, running hwattn's kernel.

    Args:
        query: (B, Hq, Nq, D); key/value: (B, Hkv, Nk, D) (torch SDPA's layout). fp16/bf16/fp32.
        attn_mask: must be None (arbitrary masks: see hwattn's block masks); anything else raises.
        dropout_p: must be 0.0 (dropout is not supported); anything else raises.
        is_causal: SDPA semantics: the mask is aligned top-left, query i sees key j iff j <= i, also when
            Nq != Nk. Rows that see no key give zeros (SDPA's math backend gives NaN there).
        scale: default 1/sqrt(D).
        enable_gqa: as in SDPA: Hq != Hkv is only accepted when True.

    Returns (B, Hq, Nq, D). Differentiable.
    """
    _validate(query, key, value, "(batch, heads, seqlen, head_dim)")
    if attn_mask is not None:
        raise ValueError("attn_mask: hwattn.sdpa supports only attn_mask=None; for masks use hwattn's block masks")
    if not isinstance(dropout_p, (int, float)) or dropout_p != 0.0:
        raise ValueError(f"dropout_p: hwattn.sdpa supports only 0.0, got {dropout_p!r}")
    check_bool("is_causal", is_causal)
    check_bool("enable_gqa", enable_gqa)
    if query.shape[1] != key.shape[1] and not enable_gqa:
        raise ValueError(f"query has {query.shape[1]} heads but key/value {key.shape[1]}: pass enable_gqa=True "
                         "(as torch SDPA requires)")
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))
    n_q, n_k = q.shape[1], k.shape[1]
    if is_causal and n_q > n_k:
        # Top-left alignment: rows i >= Nk see all keys, i.e. the causal mask is j <= i. Bottom-right
        # causal on the same inputs would shift it; pad nothing, instead split: rows [0, Nk) are exact
        # bottom-right causal on a square problem, rows [Nk, Nq) attend to everything.
        head = flash_attention(q[:, :n_k], k, v, causal=True, softmax_scale=scale)
        tail = flash_attention(q[:, n_k:], k, v, causal=False, softmax_scale=scale)
        out = torch.cat([head, tail], dim=1)
    elif is_causal and n_q < n_k:
        # Top-left: query i sees keys [0, i]; keys >= Nq are never visible, so drop them and run square causal.
        out = flash_attention(q, k[:, :n_q], v[:, :n_q], causal=True, softmax_scale=scale)
    else:
        out = flash_attention(q, k, v, causal=is_causal, softmax_scale=scale)
    return out.transpose(1, 2)
