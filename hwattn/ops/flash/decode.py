"""Split-KV decoding (flash-decoding) on the exact kernel's inner loop.

A decode step has few queries (Nq = 1..16 new tokens) and a long KV cache, so the dense kernel's grid
(query blocks x heads) would leave most SMs idle and each program would stream the whole cache alone.
Here the cache is cut into `num_splits` chunks and each program owns one (batch, kv head, split):

  * GQA-aware: the Nq * group query rows of one K/V head are stacked as the M dimension of one tile
    (row r = query i * group + head g), so each K/V block is read once for the whole group, not once per
    query head. With more than 64 stacked rows (e.g. Nq = 16, group 8) the rows are cut into tiles of 64
    and each tile reads the split again.
  * The loop over the split's key blocks is the dense forward's `_fwd_inner`, unchanged: the stacked row
    r passes its query index i = r // group as the row position for the causal mask, so the element mask,
    online softmax, the block bookkeeping (`kv_ranges`) and the score mods are shared, not copied.
  * Each split writes its normalised partial output and its LSE; a second small kernel merges the splits
    with the LSE weights (out = sum_s exp(lse_s - lse) out_s). With one split the first kernel writes the
    final output directly and the merge is skipped.

Forward only: there is no backward (decoding is inference); `flash_decode` refuses inputs that require
grad while grad mode is on, instead of returning an output that silently drops gradients.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..._checks import check_bool, check_same, check_scale, check_tensor
from ..._runtime import check_kernel_device, interpreting
from .common import LN2, LOG2E, kv_ranges
from .forward import _fwd_inner, dot_precision
from .interface import MAX_HEAD_DIM, SUPPORTED_DTYPES
from .score_mods import ScoreMods, check_score_mods, resolve_window, score_mod_kwargs
from .varlen import HostCheckCache

__all__ = ["flash_decode", "choose_num_splits"]

MAX_NEW_TOKENS = 16
MAX_SPLITS = 256
MAX_ROWS_PER_TILE = 64  # stacked query rows per program; more would spill the accumulator out of registers


@triton.jit
def _decode_split_kernel(Q, K, V, SEQLENS, O_PART, LSE_PART, O, LSE,
                         stride_qb, stride_qm, stride_qh,
                         stride_kb, stride_kn, stride_kh,
                         stride_vb, stride_vn, stride_vh,
                         stride_ob, stride_om, stride_oh,
                         n_q, num_kv_heads, group_size, num_splits, qk_scale,
                         CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SINGLE_SPLIT: tl.constexpr,
                         DOT_PRECISION: tl.constexpr,
                         SLOPES, stride_slopes_b, softcap_log2, BIAS, stride_bias_h, window_left, window_right,
                         WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, REL_BIAS: tl.constexpr):
    split = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_bkv = tl.program_id(2)
    b = pid_bkv // num_kv_heads
    h_kv = pid_bkv % num_kv_heads
    n_rows = n_q * group_size
    n_k = tl.load(SEQLENS + b)

    # stacked rows: r = i * group + g is query i of head h_kv * group + g
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    r = pid_m * BLOCK_M + offs_m
    row_ok = r < n_rows
    d_ok = offs_d < HEAD_DIM
    qi = r // group_size
    h = h_kv * group_size + r % group_size
    q_ptrs = (Q + b.to(tl.int64) * stride_qb + qi.to(tl.int64)[:, None] * stride_qm
              + h.to(tl.int64)[:, None] * stride_qh + offs_d[None, :])
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    k_base = K + b.to(tl.int64) * stride_kb + h_kv.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + h_kv.to(tl.int64) * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # ALiBi: the stacked rows belong to different heads, so the slope is a column, one per row
    alibi_slope = 0.0
    if ALIBI:
        alibi_slope = tl.load(SLOPES + b * stride_slopes_b + h, mask=row_ok, other=0.0)[:, None]

    # Keys the tile's rows need, from its first query index (the most restricted row); the tile spans at
    # most BLOCK_M query indices, so the ranges cover its last row too (the element masks sort out the rest).
    first_query = (pid_m * BLOCK_M) // group_size
    lo, full_lo, full_hi, hi = kv_ranges(first_query, n_q, n_k, window_left, window_right, CAUSAL, WINDOW,
                                         BLOCK_M, BLOCK_N)
    # This split's share of those keys, whole blocks; every split of a sequence gets equal work.
    chunk = tl.cdiv(tl.cdiv(hi - lo, num_splits), BLOCK_N) * BLOCK_N
    lo_s = lo + split * chunk
    hi_s = tl.minimum(lo_s + chunk, hi)
    # window: masked run, unmasked bulk, masked run; without one lo = full_lo = 0 and the bulk comes first, as
    # before windows existed (decode tiles are too short for wgmma: the order of the forward does not apply)
    if WINDOW:
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, 1, qi, lo_s,
                                   tl.minimum(hi_s, full_lo), n_q, n_k, qk_scale, BLOCK_N, BLOCK_D, HEAD_DIM, True,
                                   CAUSAL, DOT_PRECISION, window_left, window_right, softcap_log2, alibi_slope, BIAS,
                                   WINDOW, SOFTCAP, ALIBI, REL_BIAS)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, 1, qi,
                               tl.maximum(lo_s, full_lo), tl.minimum(hi_s, full_hi), n_q, n_k, qk_scale, BLOCK_N,
                               BLOCK_D, HEAD_DIM, False, CAUSAL, DOT_PRECISION, window_left, window_right,
                               softcap_log2, alibi_slope, BIAS, WINDOW, SOFTCAP, ALIBI, REL_BIAS)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, 1, qi,
                               tl.maximum(lo_s, full_hi), hi_s, n_q, n_k, qk_scale, BLOCK_N, BLOCK_D, HEAD_DIM, True,
                               CAUSAL, DOT_PRECISION, window_left, window_right, softcap_log2, alibi_slope, BIAS,
                               WINDOW, SOFTCAP, ALIBI, REL_BIAS)

    has_keys = l_i > 0.0
    l_safe = tl.where(has_keys, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(has_keys, m_i + tl.math.log2(l_safe), float("-inf"))  # log2 domain
    if SINGLE_SPLIT:
        o_ptrs = (O + b.to(tl.int64) * stride_ob + qi.to(tl.int64)[:, None] * stride_om
                  + h.to(tl.int64)[:, None] * stride_oh + offs_d[None, :])
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
        # LSE is (B, Hq, Nq)
        tl.store(LSE + (b * num_kv_heads * group_size + h).to(tl.int64) * n_q + qi, lse, mask=row_ok)
    else:
        # partials are (B * Hkv, splits, n_rows, HEAD_DIM) float32 and (B * Hkv, splits, n_rows)
        part_row = (pid_bkv * num_splits + split).to(tl.int64) * n_rows + r
        tl.store(O_PART + part_row[:, None] * HEAD_DIM + offs_d[None, :], out, mask=row_ok[:, None] & d_ok[None, :])
        tl.store(LSE_PART + part_row, lse, mask=row_ok)


@triton.jit
def _decode_merge_kernel(O_PART, LSE_PART, O, LSE, stride_ob, stride_om, stride_oh,
                         n_q, num_kv_heads, group_size, num_splits,
                         HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
    """out = sum_s 2^(lse_s - lse) out_s with lse = log2 sum_s 2^lse_s, streamed over the splits with a
    running max; splits that saw no key (lse_s = -inf) weigh 0, rows no split saw give 0 and lse -inf."""
    pid_bkv = tl.program_id(0)
    pid_r = tl.program_id(1)
    b = pid_bkv // num_kv_heads
    h_kv = pid_bkv % num_kv_heads
    n_rows = n_q * group_size
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = r < n_rows
    mask = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    m = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    l = tl.zeros([BLOCK_R], dtype=tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    for s in range(0, num_splits):
        part_row = (pid_bkv * num_splits + s).to(tl.int64) * n_rows + r
        lse_s = tl.load(LSE_PART + part_row, mask=row_ok, other=float("-inf"))
        o_s = tl.load(O_PART + part_row[:, None] * HEAD_DIM + offs_d[None, :], mask=mask, other=0.0)
        m_new = tl.maximum(m, lse_s)
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m - m_sub)
        w = tl.math.exp2(lse_s - m_sub)
        l = l * alpha + w
        acc = acc * alpha[:, None] + w[:, None] * o_s
        m = m_new
    has_keys = l > 0.0
    l_safe = tl.where(has_keys, l, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(has_keys, m + tl.math.log2(l_safe), float("-inf"))
    qi = r // group_size
    h = h_kv * group_size + r % group_size
    o_ptrs = (O + b.to(tl.int64) * stride_ob + qi.to(tl.int64)[:, None] * stride_om
              + h.to(tl.int64)[:, None] * stride_oh + offs_d[None, :])
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=mask)
    tl.store(LSE + (b * num_kv_heads * group_size + h).to(tl.int64) * n_q + qi, lse, mask=row_ok)


def _fixed_decode_config(head_dim: int) -> dict:
    """The split kernel's launch config. There is no autotuner: the split loop only streams K/V, this config was
    the fastest or within 0.3% of it at every full-cache length `scripts/gpu_varlen_decode.py --decode-sweep`
    tried (H200, 2026-12-02), and the autotuner's pick, timed on the first call, once cost 336 against 254 us at
    a 32k cache (the same session's fixed config)."""
    if interpreting():
        return {"BLOCK_N": 16}
    if head_dim <= 128:  # the --decode-sweep's best at one program per SM (choose_num_splits)
        return {"BLOCK_N": 64, "num_warps": 4, "num_stages": 4}
    return {"BLOCK_N": 32, "num_warps": 4, "num_stages": 2}


_SM_COUNT: dict = {}
_checked = HostCheckCache()


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 8  # the interpreter: any small number exercises the split path
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def choose_num_splits(num_programs: int, max_cache_len: int, num_sms: int, min_keys_per_split: int = 512,
                      equal_lengths: bool = True, programs_per_sm: int = 16) -> int:
    """How many splits of the cache per (batch, kv head, row tile).

    Decoding is bound by reading the cache; every split of a sequence does the same share of that sequence.
    Equal lengths: about one program per SM, in one wave. Measured on an H200 (B = 8, Hkv = 8, D = 128: 64
    programs on 132 SMs, full caches 32k-128k, `scripts/gpu_varlen_decode.py --decode-sweep`, 2026-12-02):
    2 splits with 64-key blocks and 4 stages (one program per SM, 128 KB of K/V in flight) read at
    4290-4480 GB/s, the fastest or within 0.3% of it; ~16 programs per SM (33 splits: each program ramps its
    pipeline up and down) was 3-8% slower. Unequal lengths: the programs of the longest sequence would set
    the time of that one wave (lengths in [L/2, L]: 477 us against 396 us at 64k, same session), so then aim
    for ~`programs_per_sm` programs per SM, several waves that even the load out. Never below
    `min_keys_per_split` keys a split (the pipeline's ramp-up), never above MAX_SPLITS.
    """
    if equal_lengths:
        wanted = num_sms // max(1, num_programs)  # one wave, at most one program an SM
    else:
        wanted = -(-programs_per_sm * num_sms // max(1, num_programs))
    most = max(1, max_cache_len // min_keys_per_split)
    return max(1, min(wanted, most, MAX_SPLITS))


def decode_fwd(q, k_cache, v_cache, cache_seqlens, causal: bool, softmax_scale: float, num_splits: int,
               mods: ScoreMods | None = None, config: dict | None = None):
    """Inputs validated, last dim contiguous. Returns O (B, Nq, Hq, D) like q and the log2-domain LSE
    (B, Hq, Nq) float32 (-inf on rows that see no key). mods: window, ALiBi, softcap (no rel_bias).
    config: {"BLOCK_N", "num_warps", "num_stages"} for the split kernel instead of the fixed default
    (benchmarks and sweeps)."""
    B, n_q, n_heads, head_dim = q.shape
    n_kv_heads = k_cache.shape[2]
    group = n_heads // n_kv_heads
    n_rows = n_q * group
    block_m = min(MAX_ROWS_PER_TILE, max(16, triton.next_power_of_2(n_rows)))
    m_tiles = triton.cdiv(n_rows, block_m)
    block_d = max(16, triton.next_power_of_2(head_dim))
    o = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    lse = torch.empty((B, n_heads, n_q), device=q.device, dtype=torch.float32)
    single = num_splits == 1
    if single:
        o_part = lse_part = lse  # unused placeholders
    else:
        o_part = torch.empty((B * n_kv_heads, num_splits, n_rows, head_dim), device=q.device, dtype=torch.float32)
        lse_part = torch.empty((B * n_kv_heads, num_splits, n_rows), device=q.device, dtype=torch.float32)
    args = (q, k_cache, v_cache, cache_seqlens, o_part, lse_part, o, lse,
            q.stride(0), q.stride(1), q.stride(2),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
            o.stride(0), o.stride(1), o.stride(2),
            n_q, n_kv_heads, group, num_splits, softmax_scale * LOG2E)
    meta = dict(CAUSAL=causal, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=block_m, SINGLE_SPLIT=single,
                DOT_PRECISION=dot_precision(q.dtype), **score_mod_kwargs(mods, q.device))
    grid = (num_splits, m_tiles, B * n_kv_heads)
    _decode_split_kernel[grid](*args, **meta, **(config or _fixed_decode_config(head_dim)))
    if not single:
        block_r = 16
        _decode_merge_kernel[(B * n_kv_heads, triton.cdiv(n_rows, block_r))](
            o_part, lse_part, o, lse, o.stride(0), o.stride(1), o.stride(2), n_q, n_kv_heads, group, num_splits,
            HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_R=block_r)
    return o, lse


def flash_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor,
                 softmax_scale: float | None = None, num_splits: int | None = None, return_lse: bool = False,
                 causal: bool = True, window: tuple[int, int] | None = None,
                 alibi_slopes: torch.Tensor | None = None, softcap: float | None = None):
    """Attention of a few new query tokens over a long KV cache, split across programs (flash-decoding).

    Args:
        q: (B, Nq, Hq, D) the new queries, 1 <= Nq <= 16; fp16, bf16 or fp32.
        k_cache: (B, max_cache_len, Hkv, D) keys; only the first cache_seqlens[b] positions of batch b are
            read. Hq must be a multiple of Hkv (GQA/MQA): the group's query rows share one read of K/V.
        v_cache: (B, max_cache_len, Hkv, D) values, same shape as k_cache.
        cache_seqlens: (B,) int32 on q's device, valid lengths in [0, max_cache_len]. The new tokens are
            the last Nq positions of the valid part (their keys already written there), as in
            flash_attn_with_kvcache(..., cache_seqlens=..., causal=True) without k/v arguments.
        softmax_scale: scale of QK^T before the softmax, > 0; default 1/sqrt(D).
        num_splits: how many chunks each sequence's cache is cut into (1..256); default: a heuristic from
            B * Hkv, the longest cache length, whether all lengths are equal (one wave of about one program
            per SM) or not (several waves), and the GPU's SM count (`choose_num_splits`).
        return_lse: also return the natural-log log-sum-exp (B, Hq, Nq) float32 (-inf on rows that see
            no key).
        causal: default True: query i (of Nq) sees key j iff j <= i + cache_seqlens[b] - Nq (bottom-right,
            flash_attn). False: every query sees the whole valid cache.
        window: (left, right) sliding window as in `flash_attention` (flash_attn's `window_size`, -1 =
            unbounded): query i sees key j iff i + L - Nq - left <= j <= i + L - Nq + right with
            L = cache_seqlens[b]; with causal=True right must be 0 or -1. Key blocks outside it are not read,
            so a windowed decode step reads O(window) of the cache.
        alibi_slopes: (Hq,) or (B, Hq) float32: adds -slope * |i + L - Nq - j| to the scaled scores.
        softcap: > 0: scaled scores s become softcap * tanh(s / softcap) (Gemma-2); None / 0 = off.

    Rows that see no key (cache_seqlens[b] = 0, or causal with cache_seqlens[b] < Nq) give zeros. Any
    strides on q and the caches (a last dim that is not contiguous is copied once: avoid that for a
    cache). cache_seqlens is checked on the host: one small device-to-host copy (a synchronisation) the
    first time a cache_seqlens tensor is seen or after it changed; later calls with the same unmodified
    tensor (the other layers of the same step) reuse that check.

    Forward only: no autograd. Inputs that require grad while grad mode is on are refused; use
    `flash_attention` to train, or call this under torch.no_grad() / torch.inference_mode().

    Returns:
        out (B, Nq, Hq, D) in q's dtype, and lse when return_lse=True.
    """
    layout_q, layout_kv = "(batch, new_tokens, heads, head_dim)", "(batch, max_cache_len, kv_heads, head_dim)"
    check_tensor("q", q, 4, SUPPORTED_DTYPES, layout_q)
    check_tensor("k_cache", k_cache, 4, SUPPORTED_DTYPES, layout_kv)
    check_tensor("v_cache", v_cache, 4, SUPPORTED_DTYPES, layout_kv)
    check_same(("q", "k_cache", "v_cache"), (q, k_cache, v_cache), "dtype")
    check_same(("q", "k_cache", "v_cache"), (q, k_cache, v_cache), "device")
    check_bool("causal", causal)
    check_bool("return_lse", return_lse)
    softmax_scale = check_scale("softmax_scale", softmax_scale)
    B, n_q, n_heads, head_dim = q.shape
    mods = check_score_mods(alibi_slopes, softcap, None, batch=B, n_heads=n_heads, n_q=None, n_k=None,
                            device=q.device)
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache and v_cache must have the same shape {layout_kv}, got {tuple(k_cache.shape)} "
                         f"and {tuple(v_cache.shape)}")
    if k_cache.shape[0] != B:
        raise ValueError(f"k_cache/v_cache batch ({k_cache.shape[0]}) must equal q's ({B})")
    if k_cache.shape[3] != head_dim:
        raise ValueError(f"k_cache/v_cache head_dim ({k_cache.shape[3]}) must equal q's ({head_dim})")
    if not 1 <= n_q <= MAX_NEW_TOKENS:
        raise ValueError(f"q must hold 1..{MAX_NEW_TOKENS} new tokens (dim 1), got {n_q}; for longer chunks "
                         "use flash_attention or flash_attention_varlen")
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be in [1, {MAX_HEAD_DIM}], got {head_dim}")
    max_len, n_kv_heads = k_cache.shape[1], k_cache.shape[2]
    causal, kernel_window = resolve_window(window, causal, max_len + n_q)
    mods = ScoreMods(alibi_slopes=mods.alibi_slopes, softcap=mods.softcap, window=kernel_window)
    if B < 1 or max_len < 1:
        raise ValueError(f"batch and max_cache_len must be >= 1, got batch {B}, max_cache_len {max_len}")
    if n_heads < 1 or n_kv_heads < 1 or n_heads % n_kv_heads != 0:
        raise ValueError(f"q heads ({n_heads}) must be a positive multiple of k_cache/v_cache heads ({n_kv_heads}) "
                         "(GQA/MQA)")
    check_tensor("cache_seqlens", cache_seqlens, 1, (torch.int32,), "(batch,)")
    if cache_seqlens.shape[0] != B:
        raise ValueError(f"cache_seqlens must have shape ({B},) (one length per batch element), got "
                         f"{tuple(cache_seqlens.shape)}")
    if cache_seqlens.device != q.device:
        raise ValueError(f"cache_seqlens is on {cache_seqlens.device} but q is on {q.device}; they must share "
                         "one device")
    if num_splits is not None:
        if isinstance(num_splits, bool) or not isinstance(num_splits, int):
            raise TypeError(f"num_splits must be an int or None, got {type(num_splits).__name__}")
        if not 1 <= num_splits <= MAX_SPLITS:
            raise ValueError(f"num_splits must be in [1, {MAX_SPLITS}], got {num_splits}")
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k_cache, v_cache)):
        raise RuntimeError("flash_decode is forward-only (no autograd), but an input requires grad: call it "
                           "under torch.no_grad() / torch.inference_mode(), or use flash_attention to train")
    known = _checked.get((cache_seqlens,), max_len)
    if known is None:
        lengths = cache_seqlens.cpu()
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 0 or hi > max_len:
            bad = int(lengths[(lengths < 0) | (lengths > max_len)][0])
            raise ValueError(f"cache_seqlens must lie in [0, max_cache_len={max_len}], got {bad}")
        _checked.put((cache_seqlens,), max_len, (lo, hi))
    else:
        lo, hi = known
    check_kernel_device("flash_decode", q, k_cache, v_cache)
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(head_dim)
    elif softmax_scale <= 0:
        raise ValueError(f"softmax_scale must be > 0, got {softmax_scale}")
    if num_splits is None:
        n_rows = n_q * (n_heads // n_kv_heads)
        m_tiles = -(-n_rows // min(MAX_ROWS_PER_TILE, max(16, triton.next_power_of_2(n_rows))))
        num_splits = choose_num_splits(B * n_kv_heads * m_tiles, max(hi, 1), _sm_count(q.device),
                                       equal_lengths=lo == hi)
    q, k_cache, v_cache = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k_cache, v_cache))
    out, lse2 = decode_fwd(q, k_cache, v_cache, cache_seqlens, causal, softmax_scale, num_splits, mods)
    if not return_lse:
        return out
    return out, lse2 * LN2  # -inf stays -inf
