"""Packed variable-length batches (flash_attn's varlen layout) on the exact kernel's inner loops.

Sequences are concatenated along the token axis: q is (total_q, Hq, D), k/v (total_k, Hkv, D), and
sequence b owns rows [cu_seqlens_q[b], cu_seqlens_q[b + 1]) of q and [cu_seqlens_k[b], cu_seqlens_k[b + 1])
of k/v. No padding is stored or computed.

The kernels here only do the per-sequence bookkeeping (where a sequence starts, how long it is; programs
past a sequence's end exit at once) and then call the same `_fwd_dense`, `_dkdv_dense`, `_dq_dense` (the key
/ query block ranges under causality or a window, and the inner loops) as the dense kernel: with the same
block sizes a sequence gives bit-for-bit the numbers of a dense call on that sequence alone.
"""
from __future__ import annotations

import math
import weakref
from typing import Optional

import torch
import triton
import triton.language as tl

from ..._checks import check_bool, check_same, check_scale, check_tensor
from ..._runtime import check_kernel_device, custom_op, interpreting
from .backward import _dkdv_dense, _dq_dense, backward_schedule
from .common import LN2, LOG2E, q_ranges
from .configs import _prune, autotune_enabled, configs, fixed_config, launch_fixed, tuning_options
from .forward import _fwd_dense, dot_precision, seq_bucket
from .interface import MAX_HEAD_DIM, SUPPORTED_DTYPES
from .score_mods import ScoreMods, check_score_mods, resolve_window, score_mod_kwargs

__all__ = ["flash_attention_varlen"]


class HostCheckCache:
    """Remembers what the host check of small index tensors (cu_seqlens, cache_seqlens) found, per tensor
    object and version, so that a model passing the same tensor to every layer synchronises with the device
    once per step, not once per layer. An entry is used only while the very same tensor objects are alive
    and unmodified (their version counters unchanged: any in-place write, through any view, bumps them)."""

    def __init__(self, size: int = 16):
        self.size = size
        self._entries: dict = {}

    @staticmethod
    def _versions(tensors):
        try:
            return tuple(t._version for t in tensors)
        except RuntimeError:  # inference-mode tensors track no version: never cache them
            return None

    def get(self, tensors, extra):
        entry = self._entries.get(tuple(id(t) for t in tensors))
        if entry is None:
            return None
        refs, versions, entry_extra, result = entry
        if (entry_extra == extra and all(r() is t for r, t in zip(refs, tensors))
                and versions is not None and versions == self._versions(tensors)):
            return result
        return None

    def put(self, tensors, extra, result):
        versions = self._versions(tensors)
        if versions is None:
            return
        if len(self._entries) >= self.size:
            self._entries.pop(next(iter(self._entries)))
        self._entries[tuple(id(t) for t in tensors)] = (tuple(weakref.ref(t) for t in tensors), versions, extra,
                                                         result)


_checked = HostCheckCache()


@triton.jit
def _sequence(CU, b, LENGTHS_16: tl.constexpr):
    """(first row, length) of sequence b. LENGTHS_16: the host check saw every length, hence every first row,
    a multiple of 16; said to the compiler, it knows what the dense kernels learn from Triton's specialisation
    of their integer sizes, and builds the row masks per group of 16 rows instead of per row (the dK/dV
    kernel, at 255 registers, was 38% slower than the dense one without it: H200, 2026-12-02)."""
    start = tl.load(CU + b)
    length = tl.load(CU + b + 1) - start
    if LENGTHS_16:
        start = tl.multiple_of(start, 16)
        length = tl.multiple_of(length, 16)
    return start, length


@triton.jit
def _varlen_preprocess(O, DO, LSE, DELTA_ROWS, LSE_ROWS, CU_Q, CU_ROWS, stride_om, stride_oh, stride_dom, stride_doh,
                       total_q, rows_stride, num_heads, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                       BLOCK_M: tl.constexpr, LENGTHS_16: tl.constexpr):
    """delta = rowsum(dO * O) per query row, written where the backward kernels read it: row r of sequence b
    at CU_ROWS[b] + r of (heads, rows_stride). Unless LENGTHS_16, each sequence's rows are padded there to a
    multiple of 16 (`_varlen_dkdv_kernel` says why) and the LSE is copied into the same layout; pad rows get
    delta 0 and LSE +inf (their recomputed P is exactly 0)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    q_start, n_q = _sequence(CU_Q, b, LENGTHS_16)
    n_rows = tl.cdiv(n_q, 16) * 16
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if pid_m * BLOCK_M >= n_rows:
        return
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = rows < n_q
    mask = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    first = q_start.to(tl.int64) + rows
    o = tl.load(O + first[:, None] * stride_om + h * stride_oh + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + first[:, None] * stride_dom + h * stride_doh + offs_d[None, :], mask=mask, other=0.0)
    out_rows = h.to(tl.int64) * rows_stride + tl.load(CU_ROWS + b) + rows
    tl.store(DELTA_ROWS + out_rows, tl.sum(o.to(tl.float32) * do.to(tl.float32), 1), mask=rows < n_rows)
    if not LENGTHS_16:
        lse = tl.load(LSE + h.to(tl.int64) * total_q + first, mask=row_ok, other=float("inf"))
        tl.store(LSE_ROWS + out_rows, lse, mask=rows < n_rows)


@triton.jit
def _varlen_fwd_kernel(Q, K, V, O, LSE, CU_Q, CU_K,
                       stride_qm, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_om, stride_oh,
                       total_q, num_heads, group_size, qk_scale, max_seqlen_q, seq_bucket,
                       CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
                       SLOPES, stride_slopes_b, softcap_log2, BIAS, stride_bias_h, window_left, window_right,
                       WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, REL_BIAS: tl.constexpr,
                       LENGTHS_16: tl.constexpr = False):
    """The dense forward kernel with the batch index replaced by a sequence: grid (query blocks of the
    longest sequence, sequences * heads); programs past their sequence's end return at once. The score mod
    arguments are the dense kernel's (REL_BIAS is never on here: one table cannot fit every length)."""
    if CAUSAL:
        # longest-running blocks first, as in the dense kernel
        pid_m = tl.cdiv(max_seqlen_q, BLOCK_M) - 1 - tl.program_id(0)
    else:
        pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    q_start, n_q = _sequence(CU_Q, b, LENGTHS_16)
    start_m = pid_m * BLOCK_M
    if start_m >= n_q:
        return
    k_start, n_k = _sequence(CU_K, b, LENGTHS_16)
    h_kv = h // group_size

    q_base = Q + (q_start + start_m).to(tl.int64) * stride_qm + h.to(tl.int64) * stride_qh
    k_base = K + k_start.to(tl.int64) * stride_kn + h_kv.to(tl.int64) * stride_kh
    v_base = V + k_start.to(tl.int64) * stride_vn + h_kv.to(tl.int64) * stride_vh
    o_base = O + (q_start + start_m).to(tl.int64) * stride_om + h.to(tl.int64) * stride_oh

    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    rows = start_m + offs_m
    row_ok = rows < n_q
    d_ok = offs_d < HEAD_DIM
    q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :],
                other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    alibi_slope = 0.0
    if ALIBI:
        alibi_slope = tl.load(SLOPES + b * stride_slopes_b + h)
    acc, l_i, m_i = _fwd_dense(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, 1, rows, start_m, n_q, n_k,
                               qk_scale, window_left, window_right, softcap_log2, alibi_slope, BIAS, BLOCK_M, BLOCK_N,
                               BLOCK_D, HEAD_DIM, CAUSAL, DOT_PRECISION, WINDOW, SOFTCAP, ALIBI, REL_BIAS)

    has_keys = l_i > 0.0
    l_safe = tl.where(has_keys, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(has_keys, m_i + tl.math.log2(l_safe), float("inf"))  # +inf: recomputed P is exactly 0
    # LSE is (heads, total_q), flash_attn's varlen layout
    tl.store(LSE + h.to(tl.int64) * total_q + q_start + rows, lse, mask=row_ok)
    tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])


# The three backward kernels (dK/dV, dQ, and both in one launch) share one argument list:
#   Q, K, V, DO, LSE_ROWS, DELTA_ROWS, DQ, DK, DV, CU_Q, CU_K, CU_ROWS, Q_TAIL, DO_TAIL, <the strides of q, k,
#   v, dO, dQ, dK, dV>, rows_stride, tail_b, tail_start, <sizes>, <tiles and flags>, <score mods>.

@triton.jit
def _varlen_dkdv_program(pid_n, pid_kv, Q, K, V, DO, LSE_ROWS, DELTA_ROWS, DK, DV, CU_Q, CU_K, CU_ROWS, Q_TAIL,
                         DO_TAIL, stride_qm, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_dom,
                         stride_doh, stride_dkn, stride_dkh, stride_dvn, stride_dvh, rows_stride, tail_b, tail_start,
                         num_kv_heads, group_size, qk_scale, softmax_scale,
                         CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
                         SLOPES, stride_slopes_b, softcap_log2, BIAS, window_left, window_right,
                         WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, REL_BIAS: tl.constexpr,
                         LENGTHS_16: tl.constexpr):
    """dK, dV per key block of a sequence, summed over the query heads of its group. LSE_ROWS / DELTA_ROWS
    are `_varlen_preprocess`'s (heads, rows_stride) rows, sequence b's from CU_ROWS[b].

    The loop reads query tiles with a row mask rows < n_q. With n_q a multiple of 16 known to the compiler
    (LENGTHS_16) the mask is built per group of 16 rows; for any other length it was built per row, and the
    kernel ran at 0.74x the dense one's speed (H200, 2026-12-02). So for other lengths the loop runs on the
    sequence padded to n_q16 = 16 * ceil(n_q / 16) rows: the extra rows' q and dO are the next sequence's
    (finite), their LSE in the padded row layout is +inf, so their P and dS are exactly 0; the keys are
    padded by as much (n_k + pad) so that the causal / window diagonal, at n_k - n_q, stays where it was
    (keys past n_k only feed dK / dV rows that are never stored). Sequences b >= tail_b, whose padded rows
    would run past the end of q, read q and dO from Q_TAIL / DO_TAIL instead: rows tail_start.. of q and dO
    copied with q's and dO's strides, then 16 zero rows. (Taking the exact lengths there instead, a second
    copy of the loops in the kernel, made ptxas serialise the wgmmas.)"""
    b = pid_kv // num_kv_heads
    h_kv = pid_kv % num_kv_heads
    k_start, n_k = _sequence(CU_K, b, LENGTHS_16)
    start_n = pid_n * BLOCK_N
    if start_n < n_k:
        q_start, n_q = _sequence(CU_Q, b, LENGTHS_16)
        row_start = tl.multiple_of(tl.load(CU_ROWS + b), 16)  # both row layouts start sequences at multiples of 16
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        cols = start_n + offs_n
        kv_mask = (cols[:, None] < n_k) & (offs_d[None, :] < HEAD_DIM)
        first_key = (k_start + start_n).to(tl.int64)
        k_base = K + first_key * stride_kn + h_kv.to(tl.int64) * stride_kh
        v_base = V + first_key * stride_vn + h_kv.to(tl.int64) * stride_vh
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

        q_seq = Q + q_start.to(tl.int64) * stride_qm
        do_seq = DO + q_start.to(tl.int64) * stride_dom
        n_q_run = n_q  # the loop's lengths: padded unless LENGTHS_16; k, v loads and dK, dV stores keep n_k
        n_k_run = n_k
        if not LENGTHS_16:
            if b >= tail_b:
                q_seq = Q_TAIL + (q_start - tail_start).to(tl.int64) * stride_qm
                do_seq = DO_TAIL + (q_start - tail_start).to(tl.int64) * stride_dom
            pad = tl.cdiv(n_q, 16) * 16 - n_q
            n_q_run = tl.multiple_of(n_q + pad, 16)
            n_k_run = n_k + pad
        lo, full_lo, full_hi, hi = q_ranges(start_n, n_q_run, n_k_run, window_left, window_right, CAUSAL, WINDOW,
                                            BLOCK_M, BLOCK_N)
        for g in range(0, group_size):
            h = h_kv * group_size + g
            row_base = h.to(tl.int64) * rows_stride + row_start
            alibi_slope = 0.0
            if ALIBI:
                alibi_slope = tl.load(SLOPES + b * stride_slopes_b + h)
            dk, dv = _dkdv_dense(dk, dv, k, v, q_seq + h.to(tl.int64) * stride_qh,
                                 do_seq + h.to(tl.int64) * stride_doh, LSE_ROWS + row_base, DELTA_ROWS + row_base,
                                 stride_qm, stride_dom, cols, lo, full_lo, full_hi, hi, n_q_run, n_k_run, qk_scale,
                                 window_left, window_right, softcap_log2, alibi_slope, BIAS, BLOCK_M, BLOCK_D,
                                 HEAD_DIM, CAUSAL, DOT_PRECISION, WINDOW, SOFTCAP, ALIBI, REL_BIAS)

        dk = dk * softmax_scale
        dk_base = DK + first_key * stride_dkn + h_kv.to(tl.int64) * stride_dkh
        dv_base = DV + first_key * stride_dvn + h_kv.to(tl.int64) * stride_dvh
        tl.store(dk_base + offs_n[:, None] * stride_dkn + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=kv_mask)
        tl.store(dv_base + offs_n[:, None] * stride_dvn + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _varlen_dq_program(pid_m, pid_bh, Q, K, V, DO, LSE_ROWS, DELTA_ROWS, DQ, CU_Q, CU_K, CU_ROWS, stride_qm,
                       stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_dom, stride_doh, stride_dqm,
                       stride_dqh, rows_stride, num_heads, group_size, qk_scale, softmax_scale,
                       CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
                       SLOPES, stride_slopes_b, softcap_log2, BIAS, window_left, window_right, DBIAS,
                       WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, REL_BIAS: tl.constexpr,
                       REL_BIAS_GRAD: tl.constexpr, LENGTHS_16: tl.constexpr):
    """dQ of query block pid_m of query head pid_bh (= b * Hq + h) of a sequence."""
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    q_start, n_q = _sequence(CU_Q, b, LENGTHS_16)
    start_m = pid_m * BLOCK_M
    if start_m < n_q:
        k_start, n_k = _sequence(CU_K, b, LENGTHS_16)
        h_kv = h // group_size
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        rows = start_m + offs_m
        row_ok = rows < n_q
        mask = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
        first_row = (q_start + start_m).to(tl.int64)
        q = tl.load(Q + first_row * stride_qm + h.to(tl.int64) * stride_qh + offs_m[:, None] * stride_qm
                    + offs_d[None, :], mask=mask, other=0.0)
        do = tl.load(DO + first_row * stride_dom + h.to(tl.int64) * stride_doh + offs_m[:, None] * stride_dom
                     + offs_d[None, :], mask=mask, other=0.0)
        row_base = h.to(tl.int64) * rows_stride + tl.multiple_of(tl.load(CU_ROWS + b), 16)
        lse = tl.load(LSE_ROWS + row_base + rows, mask=row_ok, other=float("inf"))
        delta = tl.load(DELTA_ROWS + row_base + rows, mask=row_ok, other=0.0)
        k_base = K + k_start.to(tl.int64) * stride_kn + h_kv.to(tl.int64) * stride_kh
        v_base = V + k_start.to(tl.int64) * stride_vn + h_kv.to(tl.int64) * stride_vh
        dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        alibi_slope = 0.0
        if ALIBI:
            alibi_slope = tl.load(SLOPES + b * stride_slopes_b + h)
        dq = _dq_dense(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, rows, start_m, n_q, n_k,
                       qk_scale, window_left, window_right, softcap_log2, alibi_slope, BIAS, DBIAS, BLOCK_M, BLOCK_N,
                       BLOCK_D, HEAD_DIM, CAUSAL, DOT_PRECISION, WINDOW, SOFTCAP, ALIBI, REL_BIAS, REL_BIAS_GRAD)
        dq = dq * softmax_scale
        tl.store(DQ + first_row * stride_dqm + h.to(tl.int64) * stride_dqh + offs_m[:, None] * stride_dqm
                 + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=mask)


@triton.jit
def _varlen_dkdv_kernel(Q, K, V, DO, LSE_ROWS, DELTA_ROWS, DQ, DK, DV, CU_Q, CU_K, CU_ROWS, Q_TAIL, DO_TAIL,
                        stride_qm, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_dom, stride_doh,
                        stride_dqm, stride_dqh, stride_dkn, stride_dkh, stride_dvn, stride_dvh,
                        rows_stride, tail_b, tail_start, num_heads, num_kv_heads, group_size, qk_scale,
                        softmax_scale, max_seqlen_q, seq_bucket,
                        CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
                        SLOPES, stride_slopes_b, softcap_log2, BIAS, stride_bias_h, window_left, window_right, DBIAS,
                        WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, REL_BIAS: tl.constexpr,
                        REL_BIAS_GRAD: tl.constexpr, LENGTHS_16: tl.constexpr = False):
    """Grid (key blocks of the longest sequence, sequences * K/V heads)."""
    _varlen_dkdv_program(tl.program_id(0), tl.program_id(1), Q, K, V, DO, LSE_ROWS, DELTA_ROWS, DK, DV, CU_Q, CU_K,
                         CU_ROWS, Q_TAIL, DO_TAIL, stride_qm, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
                         stride_dom, stride_doh, stride_dkn, stride_dkh, stride_dvn, stride_dvh, rows_stride, tail_b,
                         tail_start, num_kv_heads, group_size, qk_scale, softmax_scale, CAUSAL, HEAD_DIM, BLOCK_D,
                         BLOCK_M, BLOCK_N, DOT_PRECISION, SLOPES, stride_slopes_b, softcap_log2, BIAS, window_left,
                         window_right, WINDOW, SOFTCAP, ALIBI, REL_BIAS, LENGTHS_16)


@triton.jit
def _varlen_dq_kernel(Q, K, V, DO, LSE_ROWS, DELTA_ROWS, DQ, DK, DV, CU_Q, CU_K, CU_ROWS, Q_TAIL, DO_TAIL,
                      stride_qm, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_dom, stride_doh,
                      stride_dqm, stride_dqh, stride_dkn, stride_dkh, stride_dvn, stride_dvh,
                      rows_stride, tail_b, tail_start, num_heads, num_kv_heads, group_size, qk_scale,
                      softmax_scale, max_seqlen_q, seq_bucket,
                      CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
                      SLOPES, stride_slopes_b, softcap_log2, BIAS, stride_bias_h, window_left, window_right, DBIAS,
                      WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, REL_BIAS: tl.constexpr,
                      REL_BIAS_GRAD: tl.constexpr, LENGTHS_16: tl.constexpr = False):
    """Grid (query blocks of the longest sequence, sequences * query heads); causal: longest first."""
    pid_m = tl.program_id(0)
    if CAUSAL:
        pid_m = tl.cdiv(max_seqlen_q, BLOCK_M) - 1 - pid_m
    _varlen_dq_program(pid_m, tl.program_id(1), Q, K, V, DO, LSE_ROWS, DELTA_ROWS, DQ, CU_Q, CU_K, CU_ROWS,
                       stride_qm, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_dom, stride_doh,
                       stride_dqm, stride_dqh, rows_stride, num_heads, group_size, qk_scale, softmax_scale, CAUSAL,
                       HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, DOT_PRECISION, SLOPES, stride_slopes_b, softcap_log2,
                       BIAS, window_left, window_right, DBIAS, WINDOW, SOFTCAP, ALIBI, REL_BIAS, REL_BIAS_GRAD,
                       LENGTHS_16)


@triton.jit
def _varlen_bwd_fused_kernel(Q, K, V, DO, LSE_ROWS, DELTA_ROWS, DQ, DK, DV, CU_Q, CU_K, CU_ROWS, Q_TAIL, DO_TAIL,
                             stride_qm, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_dom,
                             stride_doh, stride_dqm, stride_dqh, stride_dkn, stride_dkh, stride_dvn, stride_dvh,
                             rows_stride, tail_b, tail_start, num_heads, num_kv_heads, group_size, qk_scale,
                             softmax_scale, max_seqlen_q, seq_bucket,
                             CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                             BLOCK_M1: tl.constexpr, BLOCK_N1: tl.constexpr, BLOCK_M2: tl.constexpr,
                             BLOCK_N2: tl.constexpr, DOT_PRECISION: tl.constexpr,
                             SLOPES, stride_slopes_b, softcap_log2, BIAS, stride_bias_h, window_left, window_right,
                             DBIAS, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
                             REL_BIAS: tl.constexpr, REL_BIAS_GRAD: tl.constexpr, LENGTHS_16: tl.constexpr = False):
    """The dense `_bwd_fused_kernel`'s schedule per sequence: program (j, b * Hkv + h_kv) computes dK, dV of key
    block j of sequence b, then dQ of its query block j for every query head of the group (causal: the two
    halves balance, see there)."""
    j = tl.program_id(0)
    pid_kv = tl.program_id(1)
    _varlen_dkdv_program(j, pid_kv, Q, K, V, DO, LSE_ROWS, DELTA_ROWS, DK, DV, CU_Q, CU_K, CU_ROWS, Q_TAIL, DO_TAIL,
                         stride_qm, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_dom, stride_doh,
                         stride_dkn, stride_dkh, stride_dvn, stride_dvh, rows_stride, tail_b, tail_start,
                         num_kv_heads, group_size, qk_scale, softmax_scale, CAUSAL, HEAD_DIM, BLOCK_D, BLOCK_M1,
                         BLOCK_N1, DOT_PRECISION, SLOPES, stride_slopes_b, softcap_log2, BIAS, window_left,
                         window_right, WINDOW, SOFTCAP, ALIBI, REL_BIAS, LENGTHS_16)
    b = pid_kv // num_kv_heads
    h_first = (pid_kv % num_kv_heads) * group_size
    for g in range(0, group_size):
        _varlen_dq_program(j, b * num_heads + h_first + g, Q, K, V, DO, LSE_ROWS, DELTA_ROWS, DQ, CU_Q, CU_K,
                           CU_ROWS, stride_qm, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_dom,
                           stride_doh, stride_dqm, stride_dqh, rows_stride, num_heads, group_size, qk_scale,
                           softmax_scale, CAUSAL, HEAD_DIM, BLOCK_D, BLOCK_M2, BLOCK_N2, DOT_PRECISION, SLOPES,
                           stride_slopes_b, softcap_log2, BIAS, window_left, window_right, DBIAS, WINDOW, SOFTCAP,
                           ALIBI, REL_BIAS, REL_BIAS_GRAD, LENGTHS_16)


def _autotuned(kernel, kind):
    """The dense kernels' config tables and pruning, keyed on this kernel's own arguments (newer Triton
    refuses autotune keys that are not kernel arguments, so the dense kernels' key list is not reused)."""
    extra = tuning_options()
    return triton.autotune(configs=configs(kind), key=["seq_bucket", "HEAD_DIM", "CAUSAL", "DOT_PRECISION", "WINDOW",
                                                       "SOFTCAP", "ALIBI", "LENGTHS_16"],
                           prune_configs_by={"early_config_prune": _prune}, **extra)(kernel)


_fwd_autotuned = None if interpreting() else _autotuned(_varlen_fwd_kernel, "fwd")
_dkdv_autotuned = None if interpreting() else _autotuned(_varlen_dkdv_kernel, "dkdv")
_dq_autotuned = None if interpreting() else _autotuned(_varlen_dq_kernel, "dq")
_fused_autotuned = None if interpreting() else _autotuned(_varlen_bwd_fused_kernel, "fused")


def _launch(kernel, tuned, kind, grid_of, args, meta, head_dim, dtype):
    if tuned is None or not autotune_enabled():
        launch_fixed(kernel, grid_of, args, meta, fixed_config(kind, head_dim, dtype))
    else:
        tuned[grid_of](*args, **meta)


def varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int, max_seqlen_k: int, causal: bool,
               softmax_scale: float, mods: ScoreMods | None = None, lengths_16: bool = False):
    """q (total_q, Hq, D), k/v (total_k, Hkv, D), last dim contiguous, inputs already validated; mods: the
    window, ALiBi and softcap (no rel_bias); lengths_16: every q and k length is a multiple of 16 (checked by
    the caller: the kernels rely on it). Returns O like q (contiguous) and the log2-domain LSE (Hq, total_q)
    float32, +inf on rows that see no key."""
    total_q, n_heads, head_dim = q.shape
    n_kv_heads = k.shape[1]
    batch = cu_seqlens_q.numel() - 1
    o = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    lse = torch.empty((n_heads, total_q), device=q.device, dtype=torch.float32)
    if total_q == 0 or max_seqlen_q == 0:
        return o, lse
    args = (q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), o.stride(0), o.stride(1),
            total_q, n_heads, n_heads // n_kv_heads, softmax_scale * LOG2E, max_seqlen_q,
            seq_bucket(max(max_seqlen_q, max_seqlen_k)))
    meta = dict(CAUSAL=causal, HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
                DOT_PRECISION=dot_precision(q.dtype), LENGTHS_16=lengths_16, **score_mod_kwargs(mods, q.device))
    _launch(_varlen_fwd_kernel, _fwd_autotuned, "fwd",
            lambda cfg: (triton.cdiv(max_seqlen_q, cfg["BLOCK_M"]), batch * n_heads), args, meta, head_dim, q.dtype)
    return o, lse


def _padded_tail(x, start: int):
    """Rows start.. of x (tokens, heads, head_dim), then 16 rows of zeros, in a new buffer with x's strides
    (the kernel reads both with one set of strides)."""
    shape = (x.shape[0] - start + 16, *x.shape[1:])
    size = 1 + sum((n - 1) * st for n, st in zip(shape, x.stride()))
    tail = x.new_zeros(size).as_strided(shape, x.stride())
    tail[:x.shape[0] - start].copy_(x[start:])
    return tail


def varlen_bwd(do, q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int, max_seqlen_k: int,
               causal: bool, softmax_scale: float, mods: ScoreMods | None = None, lengths_16: bool = False,
               q_tail: tuple[int, int] | None = None):
    """Gradients of varlen_fwd (lse is its log2-domain LSE; lengths_16 as there; q_tail: `_check_cu_seqlens`'
    (tail_b, first row of tail_b); None: every sequence reads from the tail copy, i.e. q and dO are copied
    whole). Returns dq, dk, dv (contiguous)."""
    total_q, n_heads, head_dim = q.shape
    n_kv_heads = k.shape[1]
    batch = cu_seqlens_q.numel() - 1
    dq = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    dk = torch.empty(k.shape, device=k.device, dtype=k.dtype)
    dv = torch.empty(v.shape, device=v.device, dtype=v.dtype)
    block_d = max(16, triton.next_power_of_2(head_dim))
    # delta (and, unless every length is a multiple of 16, the LSE) in the backward's row layout:
    # sequence b from row_start[b], padded to a multiple of 16 rows (`_varlen_dkdv_kernel` says why)
    tail_b, tail_start = q_tail if q_tail is not None else (0, 0)
    q_tail_rows, do_tail_rows = q, do  # placeholders unless a sequence overruns
    if lengths_16:
        row_start, rows_stride, lse_rows = cu_seqlens_q, total_q, lse
    else:
        if tail_b < batch:
            # a broadcast (stride-0) view would make a buffer with its strides alias itself
            q, do = (x if min(x.stride()) > 0 else x.contiguous() for x in (q, do))
            q_tail_rows, do_tail_rows = _padded_tail(q, tail_start), _padded_tail(do, tail_start)
        lengths = cu_seqlens_q[1:] - cu_seqlens_q[:-1]
        row_start = torch.zeros_like(cu_seqlens_q)
        row_start[1:] = torch.cumsum((lengths + 15) // 16 * 16, 0)
        rows_stride = (total_q + 15 * batch + 15) // 16 * 16  # >= the padded total: no device->host copy
        lse_rows = torch.empty((n_heads, rows_stride), device=q.device, dtype=torch.float32)
    delta_rows = torch.empty_like(lse_rows)
    if total_q > 0 and max_seqlen_q > 0:
        pre_block = 64
        _varlen_preprocess[(triton.cdiv(max_seqlen_q, pre_block), batch * n_heads)](
            o, do, lse, delta_rows, lse_rows, cu_seqlens_q, row_start, o.stride(0), o.stride(1), do.stride(0),
            do.stride(1), total_q, rows_stride, n_heads, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=pre_block,
            LENGTHS_16=lengths_16)
    qk_scale = softmax_scale * LOG2E
    bucket = seq_bucket(max(max_seqlen_q, max_seqlen_k))
    meta = dict(CAUSAL=causal, HEAD_DIM=head_dim, BLOCK_D=block_d, DOT_PRECISION=dot_precision(q.dtype),
                LENGTHS_16=lengths_16, **score_mod_kwargs(mods, q.device, with_grad_args=True))
    args = (q, k, v, do, lse_rows, delta_rows, dq, dk, dv, cu_seqlens_q, cu_seqlens_k, row_start, q_tail_rows,
            do_tail_rows, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0),
            do.stride(1), dq.stride(0), dq.stride(1), dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1),
            rows_stride, tail_b, tail_start, n_heads, n_kv_heads, n_heads // n_kv_heads, qk_scale, softmax_scale,
            max_seqlen_q, bucket)
    # the dense kernel's choice (HWATTN_BWD; auto: one launch when causal); no atomic-dQ schedule here
    if backward_schedule(causal, None, mods, windowed_fused=False) == "fused":
        if max(max_seqlen_q, max_seqlen_k) > 0:
            _launch(_varlen_bwd_fused_kernel, _fused_autotuned, "fused",
                    lambda cfg: (max(triton.cdiv(max_seqlen_k, cfg["BLOCK_N1"]),
                                     triton.cdiv(max_seqlen_q, cfg["BLOCK_M2"])), batch * n_kv_heads),
                    args, meta, head_dim, q.dtype)
        return dq, dk, dv
    if max_seqlen_k > 0:
        _launch(_varlen_dkdv_kernel, _dkdv_autotuned, "dkdv",
                lambda cfg: (triton.cdiv(max_seqlen_k, cfg["BLOCK_N"]), batch * n_kv_heads), args, meta, head_dim,
                q.dtype)
    if max_seqlen_q > 0:
        _launch(_varlen_dq_kernel, _dq_autotuned, "dq",
                lambda cfg: (triton.cdiv(max_seqlen_q, cfg["BLOCK_M"]), batch * n_heads), args, meta, head_dim,
                q.dtype)
    return dq, dk, dv


def _mods(alibi_slopes, softcap, window):
    return ScoreMods(alibi_slopes=alibi_slopes, softcap=softcap, window=tuple(window) if window else None)


# Custom ops, as for the dense kernel: torch.compile sees opaque calls, not Triton launches. The score mods
# cross as plain arguments: optional slopes, the softcap (0.0 = off), the resolved window ([] = none).
@custom_op("hwattn::flash_varlen_fwd")
def _varlen_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                   cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, causal: bool,
                   softmax_scale: float, alibi_slopes: Optional[torch.Tensor], softcap: float, window: list[int],
                   lengths_16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, softmax_scale,
                      _mods(alibi_slopes, softcap, window), lengths_16)


@_varlen_fwd_op.op.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, softmax_scale, alibi_slopes, softcap,
      window, lengths_16):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32))


@custom_op("hwattn::flash_varlen_bwd")
def _varlen_bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                   lse: torch.Tensor, cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, max_seqlen_q: int,
                   max_seqlen_k: int, causal: bool, softmax_scale: float, alibi_slopes: Optional[torch.Tensor],
                   softcap: float, window: list[int], lengths_16: bool, q_tail: list[int]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return varlen_bwd(do, q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                      softmax_scale, _mods(alibi_slopes, softcap, window), lengths_16, tuple(q_tail))


@_varlen_bwd_op.op.register_fake
def _(do, q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, softmax_scale,
      alibi_slopes, softcap, window, lengths_16, q_tail):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


class FlashAttentionVarlenFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, softmax_scale,
                alibi_slopes=None, softcap=0.0, window=(), lengths_16=False, q_tail=None):
        window = list(window)
        o, lse = _varlen_fwd_op(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                                softmax_scale, alibi_slopes, softcap, window, lengths_16)
        ctx.save_for_backward(q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k, alibi_slopes)
        ctx.args = (max_seqlen_q, max_seqlen_k, causal, softmax_scale)
        ctx.mods = (softcap, window, lengths_16, list(q_tail or (cu_seqlens_q.numel() - 1, q.shape[0])))
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    def backward(ctx, do, _dlse):
        q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k, alibi_slopes = ctx.saved_tensors
        if do.stride(-1) != 1:
            do = do.contiguous()
        dq, dk, dv = _varlen_bwd_op(do, q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k, *ctx.args, alibi_slopes,
                                    *ctx.mods)
        return dq, dk, dv, None, None, None, None, None, None, None, None, None, None, None


_LAYOUT = "(total_tokens, heads, head_dim)"


def _check_max_seqlen(name: str, value, actual: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < actual:
        raise ValueError(f"{name} ({value}) is smaller than the longest sequence in the batch ({actual}); it must "
                         "be >= every length in the cu_seqlens")
    return value


def _check_cu_seqlens(q, k, cu_seqlens_q, cu_seqlens_k) -> tuple[int, int, bool, tuple[int, int]]:
    """Validates the offsets (one device->host copy) and returns the longest q and k sequence lengths, whether
    every length is a multiple of 16, and (tail_b, its first row): the first sequence whose query rows padded
    to a multiple of 16 would run past the end of q (batch, total_q if none; `_varlen_dkdv_kernel`)."""
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        check_tensor(name, cu, 1, (torch.int32,), "(batch + 1,)")
        if cu.device != q.device:
            raise ValueError(f"{name} is on {cu.device} but q is on {q.device}; they must share one device")
        if cu.numel() < 2:
            raise ValueError(f"{name} must hold batch + 1 >= 2 offsets, got {cu.numel()}")
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must describe the same number of sequences, got "
                         f"{cu_seqlens_q.numel() - 1} and {cu_seqlens_k.numel() - 1}")
    tensors, totals = (cu_seqlens_q, cu_seqlens_k), (q.shape[0], k.shape[0])
    known = _checked.get(tensors, totals)
    if known is not None:
        return known
    host = torch.cat([cu_seqlens_q, cu_seqlens_k]).cpu().long()
    longest, lengths_16 = [], True
    for name, cu, total, tensor_name in ((("cu_seqlens_q", host[:cu_seqlens_q.numel()], q.shape[0], "q")),
                                         (("cu_seqlens_k", host[cu_seqlens_q.numel():], k.shape[0], "k/v"))):
        if int(cu[0]) != 0:
            raise ValueError(f"{name} must start at 0, got {int(cu[0])}")
        lengths = cu[1:] - cu[:-1]
        if (lengths < 0).any():
            i = int(torch.nonzero(lengths < 0)[0])
            raise ValueError(f"{name} must be non-decreasing, got {int(cu[i])} then {int(cu[i + 1])} at "
                             f"positions {i}, {i + 1}")
        if int(cu[-1]) != total:
            raise ValueError(f"{name} must end at the number of {tensor_name} tokens ({total}), got {int(cu[-1])}")
        longest.append(int(lengths.max()))
        lengths_16 = lengths_16 and bool((lengths % 16 == 0).all())
        if tensor_name == "q":
            overrun = torch.nonzero((cu[:-1] + (lengths + 15) // 16 * 16 > total) & (lengths > 0))
            tail_b = int(overrun[0]) if overrun.numel() else lengths.numel()  # later non-empty ones overrun too
            q_tail = (tail_b, int(cu[tail_b]))
    result = (longest[0], longest[1], lengths_16, q_tail)
    _checked.put(tensors, totals, result)
    return result


def flash_attention_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                           cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, causal: bool = False,
                           softmax_scale: float | None = None, return_lse: bool = False,
                           window: tuple[int, int] | None = None, alibi_slopes: torch.Tensor | None = None,
                           softcap: float | None = None):
    """Exact attention over a packed batch of variable-length sequences (flash_attn_varlen_func's layout),
    forward and backward in Triton, on the same inner loops as `flash_attention`.

    Args:
        q: (total_q, Hq, D) the queries of all sequences, concatenated; fp16, bf16 or fp32.
        k: (total_k, Hkv, D) the keys, concatenated the same way. Hq must be a multiple of Hkv (GQA/MQA;
            K/V are never repeated in memory, dK/dV are summed over each query group).
        v: (total_k, Hkv, D) the values.
        cu_seqlens_q: (batch + 1,) int32 on q's device: sequence b's queries are rows
            [cu_seqlens_q[b], cu_seqlens_q[b + 1]) of q. Starts at 0, non-decreasing, ends at total_q.
        cu_seqlens_k: (batch + 1,) int32, the same for k/v (ends at total_k). Same batch as cu_seqlens_q.
        max_seqlen_q: int >= the longest query sequence (sizes the grid; larger is allowed but launches
            idle programs).
        max_seqlen_k: int >= the longest key sequence.
        causal: mask the future within each sequence, aligned bottom-right as flash_attn >= 2.1: query i of
            sequence b sees key j iff j <= i + n_k(b) - n_q(b). Rows that see no key (n_q > n_k) output
            zeros with zero gradients.
        softmax_scale: scale of QK^T before the softmax, > 0; default 1/sqrt(D).
        return_lse: also return the log-sum-exp of the scaled scores, natural log, (Hq, total_q) float32
            (flash_attn's varlen layout; -inf on rows that see no key). Not differentiable.
        window: (left, right) sliding window within each sequence, flash_attn's `window_size`: query i of
            sequence b sees key j iff i + n_k(b) - n_q(b) - left <= j <= i + n_k(b) - n_q(b) + right; -1 =
            unbounded on that side; default None = (-1, -1). With causal=True the right side is 0 (right
            must be 0 or -1). Key blocks outside the window are skipped, forward and backward.
        alibi_slopes: (Hq,) or (batch, Hq) float32 on q's device: adds -slope[b, h] * |i + n_k(b) - n_q(b) - j|
            to the scaled score, as `flash_attention` (fixed slopes; refused if they require grad).
        softcap: float > 0: scaled scores s become softcap * tanh(s / softcap), as `flash_attention`;
            None or 0 = off. (The relative-position table of `flash_attention` is not offered here: its
            length depends on the sequence lengths.)

    Sequences of length 0 (in q, k or both) are allowed: they produce no rows, or rows of zeros. Head dims
    1..256. Any strides on the first two dims (a last dim that is not contiguous is copied once). q, k, v
    and the cu_seqlens share one device. The cu_seqlens are validated on the host: one small
    device-to-host copy (a synchronisation) the first time a cu_seqlens tensor is seen; later calls with
    the same, unmodified tensors (e.g. every layer of a model) reuse that check. On CPU the kernels run in Triton's interpreter when
    TRITON_INTERPRET=1. No dropout.

    Returns:
        out (total_q, Hq, D) in q's dtype, and lse when return_lse=True.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, x, 3, SUPPORTED_DTYPES, _LAYOUT)
    check_same(("q", "k", "v"), (q, k, v), "dtype")
    check_same(("q", "k", "v"), (q, k, v), "device")
    check_bool("causal", causal)
    check_bool("return_lse", return_lse)
    softmax_scale = check_scale("softmax_scale", softmax_scale)
    total_q, n_heads, head_dim = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape {_LAYOUT}, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if k.shape[2] != head_dim:
        raise ValueError(f"k/v head_dim ({k.shape[2]}) must equal q's ({head_dim})")
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be in [1, {MAX_HEAD_DIM}], got {head_dim}")
    n_kv_heads = k.shape[1]
    if n_heads < 1 or n_kv_heads < 1 or n_heads % n_kv_heads != 0:
        raise ValueError(f"q heads ({n_heads}) must be a positive multiple of k/v heads ({n_kv_heads}) (GQA/MQA)")
    longest_q, longest_k, lengths_16, q_tail = _check_cu_seqlens(q, k, cu_seqlens_q, cu_seqlens_k)
    max_seqlen_q = _check_max_seqlen("max_seqlen_q", max_seqlen_q, longest_q)
    max_seqlen_k = _check_max_seqlen("max_seqlen_k", max_seqlen_k, longest_k)
    mods = check_score_mods(alibi_slopes, softcap, None, batch=cu_seqlens_q.numel() - 1, n_heads=n_heads, n_q=None,
                            n_k=None, device=q.device, batch_name="batch")
    causal, kernel_window = resolve_window(window, causal, max_seqlen_q + max_seqlen_k)
    check_kernel_device("flash_attention_varlen", q, k, v)
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(head_dim)
    elif softmax_scale <= 0:
        raise ValueError(f"softmax_scale must be > 0, got {softmax_scale}")
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    out, lse2 = FlashAttentionVarlenFunction.apply(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                                   causal, softmax_scale, mods.alibi_slopes, mods.softcap,
                                                   kernel_window or (), lengths_16, q_tail)
    if not return_lse:
        return out
    lse = torch.where(torch.isinf(lse2), torch.full_like(lse2, float("-inf")), lse2 * LN2)
    return out, lse
