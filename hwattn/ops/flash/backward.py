"""Backward kernels: recompute P from the saved LSE instead of storing it (FlashAttention-2).

    delta = rowsum(dO * O)                  (per query row, before any dK/dV step reads it)
    dV = P^T dO,  dS = P * (dO V^T - delta),  dK = scale * dS^T Q    (parallel over key blocks)
    dQ = scale * dS K                                               (parallel over query blocks)

The split schedule needs no pass for delta: its dQ programs run first and each computes its block's delta from
O and the dO tile it loads anyway, for the dK/dV programs after it (H200: the pass read O and dO once, 36 us
of 1.8 ms at N = 2048). The one-launch and atomic schedules keep the preprocess launch: their dK/dV programs
read every query block's delta from the start (docs/flash_status.md has the flag-passing variant that was
measured slower).

dQ gets its own pass instead of atomic adds: results are deterministic run to run, at the price of
recomputing QK^T and dO V^T once more (7 block matmuls instead of 5).

Score mods (common.modded_scores) are recomputed in both passes exactly as the forward applied them, so P
matches the saved LSE; softcap multiplies dS by 1 - tanh^2. A relative-position table's gradient,
d rel_bias[h, j - i + Nq - 1] = sum of dS[i, j] over its diagonal, is added with fp32 atomics from the dQ
pass (one table row per head, O(Nq + Nk) memory): the only gradient whose summation order varies.
"""
import warnings

import torch
import triton
import triton.language as tl

from ..._runtime import env_choice, interpreting
from .common import (PARTIAL_TILE, LOG2E, accumulate_rel_bias_grad, kv_ranges, listed_block, mask_ranges,
                     modded_scores, partial_keep, q_ranges, two_runs, visible)
from .block_mask import kernel_args, launch_order
from .configs import autotune_enabled, autotuned, configs, fixed_config, launch_fixed
from .forward import dot_precision, seq_bucket
from .score_mods import score_mod_kwargs


@triton.jit
def _bwd_preprocess(O, DO, DELTA, stride_ob, stride_om, stride_oh, stride_dob, stride_dom, stride_doh,
                    n_q, num_heads, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < n_q) & (offs_d[None, :] < HEAD_DIM)
    rows64 = rows.to(tl.int64)
    o = tl.load(O + b.to(tl.int64) * stride_ob + h * stride_oh + rows64[:, None] * stride_om + offs_d[None, :],
                mask=mask, other=0.0)
    do = tl.load(DO + b.to(tl.int64) * stride_dob + h * stride_doh + rows64[:, None] * stride_dom + offs_d[None, :],
                 mask=mask, other=0.0)
    tl.store(DELTA + pid_bh.to(tl.int64) * n_q + rows, _row_delta(o, do), mask=rows < n_q)


@triton.jit
def _row_delta(o, do):
    """delta = rowsum(dO * O) of a query block in fp32: one definition for the preprocess and the dQ programs,
    so the schedules that compute it in either place give the same bits."""
    return tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)


@triton.jit
def _dkdv_step(dk, dv, k, v, qt_ptrs, do_ptrs, lse_ptrs, delta_ptrs, rows, cols, n_q, n_k, qk_scale, tile_ptrs,
               range_lo, range_hi,
               BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
               PARTIAL_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
               window_left=0, window_right=0, softcap_log2=1.0, alibi_slope=0.0, rel_bias_row=None,
               WINDOW: tl.constexpr = False, SOFTCAP: tl.constexpr = False, ALIBI: tl.constexpr = False,
               REL_BIAS: tl.constexpr = False, dq_ptrs=None, softmax_scale=1.0, ATOMIC_DQ: tl.constexpr = False):
    """One query block's contribution to dK, dV of a key block. Tiles are transposed (keys x queries)
    so dV = P^T dO and dK = dS^T Q need no transposes. The trailing arguments (a window, score mods; off by
    default) are `common.visible`'s and `common.modded_scores`'. With ATOMIC_DQ the same dS also gives this
    block's share of dQ, added to the fp32 rows at dq_ptrs."""
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    row_ok = rows < n_q
    # rows past n_q load q = dO = 0 and lse = +inf, so their P and dS are exactly 0
    qt = tl.load(qt_ptrs, mask=row_ok[None, :] & d_ok[:, None], other=0.0)
    if BLOCK_D < 128:
        lse = tl.load(lse_ptrs, mask=row_ok, other=float("inf"))
    qkt = tl.dot(k, qt, input_precision=DOT_PRECISION)
    # dO V^T does not need P: issued before the exp2, ptxas runs its wgmmas under the exponentials (SASS, sm_90,
    # triton 3.6: the MUFU.EX2s interleave with its HGMMAs) and needs fewer registers across the step (window
    # dK/dV spills 140 -> 112 B, fused 112 -> 36 B; H200: window backward -9%, docs/flash_status.md)
    do = tl.load(do_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
    if (SOFTCAP or ALIBI) or REL_BIAS:
        # the forward's modded scores, recomputed (log2 domain, scale included): P matches the saved LSE
        qkt, dcap = modded_scores(qkt, qk_scale, rows[None, :], cols[:, None], n_q, n_k, softcap_log2, alibi_slope,
                                  rel_bias_row, SOFTCAP, ALIBI, REL_BIAS)
        qk_scale = 1.0
    # Where the LSE and delta are read moves ptxas's spills in this loop (H200 timings: docs/flash_status.md,
    # 2026-12-03). At D >= 128 the LSE is read here, where it is used (loaded with q^T it stays in registers
    # across the wgmmas; sm_90, triton 3.6: causal dK/dV spills 76 -> 0 B, one-launch causal 60 -> 48; causal
    # backward +3-4%), and without a window delta with it (one-launch causal 48 -> 0 B, varlen causal 296 -> 168;
    # no time change measurable; with a window this raised them, 20 -> 72). At D = 64 the early LSE read was
    # 1-3% faster.
    if BLOCK_D >= 128:
        lse = tl.load(lse_ptrs, mask=row_ok, other=float("inf"))
        if not WINDOW:
            delta = tl.load(delta_ptrs, mask=row_ok, other=0.0)
    pt = tl.math.exp2(qkt * qk_scale - lse[None, :])
    if MASKED:
        if CAUSAL and not (WINDOW or ATOMIC_DQ):
            # the causal bound alone: a key past n_k only feeds its own dK / dV row, never stored (its
            # column of dS would reach dQ with ATOMIC_DQ). One compare per score, and ptxas spills 132 B
            # in this kernel instead of 184 (sm_90, triton 3.6)
            keep = rows[None, :] >= cols[:, None] - (n_k - n_q)
        else:
            keep = visible(rows[None, :], cols[:, None], n_q, n_k, CAUSAL, window_left, window_right, WINDOW)
        if PARTIAL_MASK:
            keep = keep & partial_keep(tile_ptrs, range_lo[:, None], range_hi[:, None], rows[None, :], cols[:, None],
                                       PARTIAL_MASK, True)
        pt = tl.where(keep, pt, 0.0)
    dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
    if (BLOCK_D < 128) or WINDOW:
        delta = tl.load(delta_ptrs, mask=row_ok, other=0.0)
    dst = pt * (dpt - delta[None, :])
    if SOFTCAP:
        dst = dst * dcap  # chain rule through softcap * tanh(s / softcap)
    dst = dst.to(qt.dtype)
    dk = tl.dot(dst, tl.trans(qt), dk, input_precision=DOT_PRECISION)
    if ATOMIC_DQ:
        # FlashAttention-2's schedule: dQ += scale * dS K here (5 block matmuls in all, not 7), fp32 atomic
        # adds into a zeroed buffer; relaxed: nothing reads it before the kernel ends
        dq = tl.dot(tl.trans(dst), k, input_precision=DOT_PRECISION) * softmax_scale
        tl.atomic_add(dq_ptrs, dq, mask=row_ok[:, None] & d_ok[None, :], sem="relaxed")
    return dk, dv


@triton.jit
def _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qm, stride_dom, cols, lo, hi,
                n_q, n_k, qk_scale, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
                MASKED: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
                window_left=0, window_right=0, softcap_log2=1.0, alibi_slope=0.0, rel_bias_row=None,
                WINDOW: tl.constexpr = False, SOFTCAP: tl.constexpr = False, ALIBI: tl.constexpr = False,
                REL_BIAS: tl.constexpr = False, dq_base=None, stride_dqm=0, softmax_scale=1.0,
                ATOMIC_DQ: tl.constexpr = False, lo2=0, hi2=0, TWO_RUNS: tl.constexpr = False):
    """Accumulate one query head's contribution to dK, dV of a key block over query rows [lo, hi), and with
    TWO_RUNS then over [lo2, hi2) in the same loop (`two_runs`)."""
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    qt_tile = offs_m[None, :] * stride_qm + offs_d[:, None]
    do_tile = offs_m[:, None] * stride_dom + offs_d[None, :]
    dq_tile = offs_m[:, None] * stride_dqm + offs_d[None, :]  # used with ATOMIC_DQ only
    end, jump = two_runs(lo, hi, lo2, hi2, BLOCK_M, TWO_RUNS)
    for start_m in range(lo, end, BLOCK_M):
        if TWO_RUNS:
            start_m = tl.where(start_m < jump, start_m, start_m - jump + lo2)
        start_m = tl.multiple_of(start_m, BLOCK_M)
        rows = start_m + offs_m
        dq_ptrs = None
        if ATOMIC_DQ:
            dq_ptrs = dq_base + start_m.to(tl.int64) * stride_dqm + dq_tile
        dk, dv = _dkdv_step(dk, dv, k, v, q_base + start_m.to(tl.int64) * stride_qm + qt_tile,
                            do_base + start_m.to(tl.int64) * stride_dom + do_tile, lse_base + rows,
                            delta_base + rows, rows, cols, n_q, n_k, qk_scale, None, None, None,
                            BLOCK_D, HEAD_DIM, MASKED, CAUSAL, False, DOT_PRECISION,
                            window_left, window_right, softcap_log2, alibi_slope, rel_bias_row,
                            WINDOW, SOFTCAP, ALIBI, REL_BIAS, dq_ptrs, softmax_scale, ATOMIC_DQ)
    return dk, dv


@triton.jit
def _dkdv_sparse(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qm, stride_dom, cols, n_q, n_k,
                 qk_scale, list_off, NUM, IDX, TILE_OF, TILES, range_lo, range_hi, col_in_tile, n_mask_rows,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
                 MASK_BLOCK_M: tl.constexpr, MASK_BLOCK_N: tl.constexpr, PARTIAL: tl.constexpr,
                 PARTIAL_KIND: tl.constexpr, DOT_PRECISION: tl.constexpr, softcap_log2=1.0, alibi_slope=0.0,
                 rel_bias_row=None, SOFTCAP: tl.constexpr = False, ALIBI: tl.constexpr = False,
                 REL_BIAS: tl.constexpr = False, dq_base=None, stride_dqm=0, softmax_scale=1.0,
                 ATOMIC_DQ: tl.constexpr = False):
    """The query blocks a block mask lists for this key block (its transposed lists)."""
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    qt_tile = offs_m[None, :] * stride_qm + offs_d[:, None]
    do_tile = offs_m[:, None] * stride_dom + offs_d[None, :]
    dq_tile = offs_m[:, None] * stride_dqm + offs_d[None, :]  # used with ATOMIC_DQ only
    mask_tile = offs_m[None, :] * MASK_BLOCK_N + (col_in_tile + offs_n)[:, None]  # transposed read
    # one loop over (listed block, sub-block) pairs, one step in its body (`_fwd_sparse`)
    subs: tl.constexpr = MASK_BLOCK_M // BLOCK_M
    n_pairs = tl.load(NUM + list_off) * subs
    qb = listed_block(IDX, list_off * n_mask_rows, 0, n_pairs, subs)
    for j in range(0, n_pairs):
        sub = j % subs
        tile_ptrs = TILES + sub * BLOCK_M * MASK_BLOCK_N + mask_tile  # unused with ranges
        if PARTIAL * (PARTIAL_KIND == PARTIAL_TILE):
            tile_ptrs += tl.load(TILE_OF + list_off * n_mask_rows + qb).to(tl.int64) * (MASK_BLOCK_M * MASK_BLOCK_N)
        start_m = qb * MASK_BLOCK_M + sub * BLOCK_M
        rows = start_m + offs_m
        dq_ptrs = None
        if ATOMIC_DQ:
            dq_ptrs = dq_base + start_m.to(tl.int64) * stride_dqm + dq_tile
        dk, dv = _dkdv_step(dk, dv, k, v, q_base + start_m.to(tl.int64) * stride_qm + qt_tile,
                            do_base + start_m.to(tl.int64) * stride_dom + do_tile, lse_base + rows,
                            delta_base + rows, rows, cols, n_q, n_k, qk_scale, tile_ptrs, range_lo, range_hi,
                            BLOCK_D, HEAD_DIM, PARTIAL, False, PARTIAL_KIND * PARTIAL, DOT_PRECISION,
                            0, 0, softcap_log2, alibi_slope, rel_bias_row, False, SOFTCAP, ALIBI, REL_BIAS,
                            dq_ptrs, softmax_scale, ATOMIC_DQ)
        qb = listed_block(IDX, list_off * n_mask_rows, j + 1, n_pairs, subs)
    return dk, dv


@triton.jit
def _dkdv_dense(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qm, stride_dom, cols, lo, full_lo,
                full_hi, hi, n_q, n_k, qk_scale, window_left, window_right, softcap_log2, alibi_slope, rel_bias_row,
                BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
                DOT_PRECISION: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
                REL_BIAS: tl.constexpr, dq_base=None, stride_dqm=0, softmax_scale=1.0,
                ATOMIC_DQ: tl.constexpr = False):
    """One query head's rows that see the key block, as `common.q_ranges` cut them: the unmasked bulk
    [full_lo, full_hi), then masked [lo, full_lo) and [full_hi, hi) (empty without a window). The order is
    ptxas's: here the bulk must come first, in the forward and dQ passes last (`forward._fwd_dense`), or
    every wgmma of the kernel is serialised (`scripts/flash_compile_check.py --wgmma`, triton 3.6, sm_90).
    Shared by the dense and the varlen kernels."""
    dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qm, stride_dom, cols, full_lo,
                         full_hi, n_q, n_k, qk_scale, BLOCK_M, BLOCK_D, HEAD_DIM, False, CAUSAL, DOT_PRECISION,
                         window_left, window_right, softcap_log2, alibi_slope, rel_bias_row,
                         WINDOW, SOFTCAP, ALIBI, REL_BIAS, dq_base, stride_dqm,
                         softmax_scale, ATOMIC_DQ)
    # the masked run(s): [lo, full_lo), and with a window also [full_hi, hi), as one loop
    dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qm, stride_dom, cols, lo,
                         full_lo, n_q, n_k, qk_scale, BLOCK_M, BLOCK_D, HEAD_DIM, True, CAUSAL, DOT_PRECISION,
                         window_left, window_right, softcap_log2, alibi_slope, rel_bias_row,
                         WINDOW, SOFTCAP, ALIBI, REL_BIAS, dq_base, stride_dqm,
                         softmax_scale, ATOMIC_DQ, full_hi, hi, WINDOW)
    return dk, dv


@triton.jit
def _dkdv_program(pid_n, pid_bh, Q, K, V, DO, LSE, DELTA, DK, DV,
                     stride_qb, stride_qm, stride_qh, stride_kb, stride_kn, stride_kh,
                     stride_vb, stride_vn, stride_vh, stride_dob, stride_dom, stride_doh,
                     stride_dkb, stride_dkn, stride_dkh, stride_dvb, stride_dvn, stride_dvh,
                     n_q, n_k, num_heads, num_kv_heads, group_size, qk_scale, softmax_scale, seq_bucket,
                     FULL_NUM, FULL_IDX, PART_NUM, PART_IDX, PART_TILE, TILES, mask_b, mask_h, n_mask_cols,
                     n_mask_rows,
                     CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
                     HAS_MASK: tl.constexpr, MASK_BLOCK_M: tl.constexpr, MASK_BLOCK_N: tl.constexpr,
                     PARTIAL_KIND: tl.constexpr,
                     SLOPES, stride_slopes_b, softcap_log2, BIAS, stride_bias_h, window_left, window_right,
                     WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, REL_BIAS: tl.constexpr,
                     DQ_ACC=None, stride_dqab=0, stride_dqam=0, stride_dqah=0, ATOMIC_DQ: tl.constexpr = False):
    """dK, dV of key block pid_n of K/V head pid_bh (= b * Hkv + h_kv), summed over its query group (and,
    with ATOMIC_DQ, this key block's share of dQ added to DQ_ACC)."""
    if HAS_MASK:
        tl.static_assert((MASK_BLOCK_M % BLOCK_M == 0) and (MASK_BLOCK_N % BLOCK_N == 0))
    b = pid_bh // num_kv_heads
    h_kv = pid_bh % num_kv_heads
    start_n = pid_n * BLOCK_N
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    cols = start_n + offs_n
    kv_mask = (cols[:, None] < n_k) & (offs_d[None, :] < HEAD_DIM)
    k_base = K + b.to(tl.int64) * stride_kb + h_kv.to(tl.int64) * stride_kh + start_n.to(tl.int64) * stride_kn
    v_base = V + b.to(tl.int64) * stride_vb + h_kv.to(tl.int64) * stride_vh + start_n.to(tl.int64) * stride_vn
    k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    lo, full_lo, full_hi, hi = q_ranges(start_n, n_q, n_k, window_left, window_right, CAUSAL, WINDOW, BLOCK_M,
                                        BLOCK_N)
    # GQA: the whole query group of this K/V head accumulates here, so dK/dV need no atomics or reduction
    for g in range(0, group_size):
        h = h_kv * group_size + g
        q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
        do_base = DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
        row_base = (b * num_heads + h).to(tl.int64) * n_q
        alibi_slope = 0.0
        if ALIBI:
            alibi_slope = tl.load(SLOPES + b * stride_slopes_b + h)
        rel_bias_row = BIAS + h * stride_bias_h
        dq_base = None
        if ATOMIC_DQ:
            dq_base = DQ_ACC + b.to(tl.int64) * stride_dqab + h.to(tl.int64) * stride_dqah
        if HAS_MASK:
            # this key block's column of the block mask: the query blocks that read it
            mask_row = (b % mask_b) * mask_h + h % mask_h
            list_off = mask_row * n_mask_cols + start_n // MASK_BLOCK_N
            col_in_tile = start_n % MASK_BLOCK_N
            range_lo, range_hi = mask_ranges(TILES, mask_row, cols, n_q, n_k, PARTIAL_KIND, True)
            dk, dv = _dkdv_sparse(dk, dv, k, v, q_base, do_base, LSE + row_base, DELTA + row_base, stride_qm,
                                  stride_dom, cols, n_q, n_k, qk_scale, list_off, FULL_NUM, FULL_IDX, PART_TILE, TILES,
                                  range_lo, range_hi,
                                  col_in_tile, n_mask_rows, BLOCK_M, BLOCK_N, BLOCK_D, HEAD_DIM, MASK_BLOCK_M,
                                  MASK_BLOCK_N, False, PARTIAL_KIND, DOT_PRECISION, softcap_log2, alibi_slope,
                                  rel_bias_row, SOFTCAP, ALIBI, REL_BIAS, dq_base, stride_dqam, softmax_scale,
                                  ATOMIC_DQ)
            dk, dv = _dkdv_sparse(dk, dv, k, v, q_base, do_base, LSE + row_base, DELTA + row_base, stride_qm,
                                  stride_dom, cols, n_q, n_k, qk_scale, list_off, PART_NUM, PART_IDX, PART_TILE, TILES,
                                  range_lo, range_hi,
                                  col_in_tile, n_mask_rows, BLOCK_M, BLOCK_N, BLOCK_D, HEAD_DIM, MASK_BLOCK_M,
                                  MASK_BLOCK_N, True, PARTIAL_KIND, DOT_PRECISION, softcap_log2, alibi_slope,
                                  rel_bias_row, SOFTCAP, ALIBI, REL_BIAS, dq_base, stride_dqam, softmax_scale,
                                  ATOMIC_DQ)
        else:
            dk, dv = _dkdv_dense(dk, dv, k, v, q_base, do_base, LSE + row_base, DELTA + row_base, stride_qm,
                                 stride_dom, cols, lo, full_lo, full_hi, hi, n_q, n_k, qk_scale, window_left,
                                 window_right, softcap_log2, alibi_slope, rel_bias_row, BLOCK_M, BLOCK_D, HEAD_DIM,
                                 CAUSAL, DOT_PRECISION, WINDOW, SOFTCAP, ALIBI, REL_BIAS, dq_base, stride_dqam,
                                 softmax_scale, ATOMIC_DQ)

    dk = dk * softmax_scale
    dk_base = DK + b.to(tl.int64) * stride_dkb + h_kv.to(tl.int64) * stride_dkh + start_n.to(tl.int64) * stride_dkn
    dv_base = DV + b.to(tl.int64) * stride_dvb + h_kv.to(tl.int64) * stride_dvh + start_n.to(tl.int64) * stride_dvn
    tl.store(dk_base + offs_n[:, None] * stride_dkn + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(dv_base + offs_n[:, None] * stride_dvn + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _in_launch_order(pid, BLOCK_ORDER, SUBS: tl.constexpr):
    """Program pid's block under a block mask: mask blocks in BLOCK_ORDER (longest first,
    `BlockMask.key_block_order` / `query_block_order`), SUBS kernel blocks each. Without it a document mask's
    longest key blocks could start last (a list scheduling of the document mask of scripts/gpu_masks.py on 132
    SMs: 3.6% (dK/dV) and 5.0% (dQ) over the ideal in grid order, 0.02% longest first)."""
    return tl.load(BLOCK_ORDER + pid // SUBS) * SUBS + pid % SUBS


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, DQ_ACC, stride_dqab, stride_dqam, stride_dqah,
                     stride_qb, stride_qm, stride_qh, stride_kb, stride_kn, stride_kh,
                     stride_vb, stride_vn, stride_vh, stride_dob, stride_dom, stride_doh,
                     stride_dkb, stride_dkn, stride_dkh, stride_dvb, stride_dvn, stride_dvh,
                     n_q, n_k, num_heads, num_kv_heads, group_size, qk_scale, softmax_scale, seq_bucket,
                     FULL_NUM, FULL_IDX, PART_NUM, PART_IDX, PART_TILE, TILES, mask_b, mask_h, n_mask_cols,
                     n_mask_rows, BLOCK_ORDER,
                     CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
                     HAS_MASK: tl.constexpr, MASK_BLOCK_M: tl.constexpr, MASK_BLOCK_N: tl.constexpr,
                     PARTIAL_KIND: tl.constexpr,
                     SLOPES, stride_slopes_b, softcap_log2, BIAS, stride_bias_h, window_left, window_right,
                     WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, REL_BIAS: tl.constexpr,
                     ATOMIC_DQ: tl.constexpr):
    """dK, dV per key block; with ATOMIC_DQ also dQ (fp32 atomics into DQ_ACC), and no dQ pass follows."""
    # causal: key block 0 sees the most queries, so the launch order is already longest first
    pid_n = tl.program_id(0)
    if HAS_MASK:
        pid_n = _in_launch_order(pid_n, BLOCK_ORDER, MASK_BLOCK_N // BLOCK_N)
        if pid_n * BLOCK_N >= n_k:
            return
    _dkdv_program(pid_n, tl.program_id(1), Q, K, V, DO, LSE, DELTA, DK, DV, stride_qb, stride_qm,
                  stride_qh, stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh, stride_dob, stride_dom,
                  stride_doh, stride_dkb, stride_dkn, stride_dkh, stride_dvb, stride_dvn, stride_dvh, n_q, n_k,
                  num_heads, num_kv_heads, group_size, qk_scale, softmax_scale, seq_bucket, FULL_NUM, FULL_IDX,
                  PART_NUM, PART_IDX, PART_TILE, TILES, mask_b, mask_h, n_mask_cols, n_mask_rows, CAUSAL, HEAD_DIM,
                  BLOCK_D, BLOCK_M, BLOCK_N, DOT_PRECISION, HAS_MASK, MASK_BLOCK_M, MASK_BLOCK_N, PARTIAL_KIND, SLOPES,
                  stride_slopes_b, softcap_log2, BIAS, stride_bias_h, window_left, window_right, WINDOW, SOFTCAP,
                  ALIBI, REL_BIAS, DQ_ACC, stride_dqab, stride_dqam, stride_dqah, ATOMIC_DQ)


@triton.jit
def _dq_step(dq, q, do, lse, delta, kt_ptrs, vt_ptrs, rows, cols, n_q, n_k, qk_scale, tile_ptrs, range_lo, range_hi,
             BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
             PARTIAL_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
             window_left=0, window_right=0, softcap_log2=1.0, alibi_slope=0.0, rel_bias_row=None, drel_bias_row=None,
             WINDOW: tl.constexpr = False, SOFTCAP: tl.constexpr = False, ALIBI: tl.constexpr = False,
             REL_BIAS: tl.constexpr = False, REL_BIAS_GRAD: tl.constexpr = False):
    """One key block's contribution to dQ of a query block (and, with REL_BIAS_GRAD, to d rel_bias)."""
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    if MASKED:
        kv_mask = (cols[None, :] < n_k) & d_ok[:, None]
        kt = tl.load(kt_ptrs, mask=kv_mask, other=0.0)
        vt = tl.load(vt_ptrs, mask=kv_mask, other=0.0)
    elif HEAD_DIM != BLOCK_D:
        kt = tl.load(kt_ptrs, mask=d_ok[:, None], other=0.0)
        vt = tl.load(vt_ptrs, mask=d_ok[:, None], other=0.0)
    else:
        kt = tl.load(kt_ptrs)
        vt = tl.load(vt_ptrs)
    qk = tl.dot(q, kt, input_precision=DOT_PRECISION)
    dp = tl.dot(do, vt, input_precision=DOT_PRECISION)  # before the exp2, as in `_dkdv_step`
    if (SOFTCAP or ALIBI) or REL_BIAS:
        qk, dcap = modded_scores(qk, qk_scale, rows[:, None], cols[None, :], n_q, n_k, softcap_log2, alibi_slope,
                                 rel_bias_row, SOFTCAP, ALIBI, REL_BIAS)
        qk_scale = 1.0
    p = tl.math.exp2(qk * qk_scale - lse[:, None])
    if MASKED:
        keep = visible(rows[:, None], cols[None, :], n_q, n_k, CAUSAL, window_left, window_right, WINDOW)
        if PARTIAL_MASK:
            keep = keep & partial_keep(tile_ptrs, range_lo[:, None], range_hi[:, None], rows[:, None], cols[None, :],
                                       PARTIAL_MASK, False)
        p = tl.where(keep, p, 0.0)
    ds = p * (dp - delta[:, None])
    if REL_BIAS_GRAD:
        if MASKED:
            real = keep
        else:
            real = cols[None, :] < n_k  # always true in an unmasked block, but shaped as the tile
        accumulate_rel_bias_grad(drel_bias_row, ds, rows[:, None], cols[None, :], n_q, n_k, real)
    if SOFTCAP:
        ds = ds * dcap  # chain rule through softcap * tanh(s / softcap)
    return tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision=DOT_PRECISION)


@triton.jit
def _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, rows, lo, hi, n_q, n_k, qk_scale,
              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
              MASKED: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
              window_left=0, window_right=0, softcap_log2=1.0, alibi_slope=0.0, rel_bias_row=None, drel_bias_row=None,
              WINDOW: tl.constexpr = False, SOFTCAP: tl.constexpr = False, ALIBI: tl.constexpr = False,
              REL_BIAS: tl.constexpr = False, REL_BIAS_GRAD: tl.constexpr = False, lo2=0, hi2=0,
              TWO_RUNS: tl.constexpr = False):
    """dQ over key blocks [lo, hi) (and with TWO_RUNS then [lo2, hi2), in the same loop: `two_runs`)."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kt_tile = offs_n[None, :] * stride_kn + offs_d[:, None]
    vt_tile = offs_n[None, :] * stride_vn + offs_d[:, None]
    end, jump = two_runs(lo, hi, lo2, hi2, BLOCK_N, TWO_RUNS)
    for start_n in range(lo, end, BLOCK_N):
        if TWO_RUNS:
            start_n = tl.where(start_n < jump, start_n, start_n - jump + lo2)
        start_n = tl.multiple_of(start_n, BLOCK_N)
        dq = _dq_step(dq, q, do, lse, delta, k_base + start_n.to(tl.int64) * stride_kn + kt_tile,
                      v_base + start_n.to(tl.int64) * stride_vn + vt_tile, rows, start_n + offs_n, n_q, n_k,
                      qk_scale, None, None, None, BLOCK_D, HEAD_DIM, MASKED, CAUSAL, False, DOT_PRECISION,
                      window_left, window_right, softcap_log2, alibi_slope, rel_bias_row, drel_bias_row,
                      WINDOW, SOFTCAP, ALIBI, REL_BIAS, REL_BIAS_GRAD)
    return dq


@triton.jit
def _dq_sparse(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, rows, n_q, n_k, qk_scale,
               list_off, NUM, IDX, TILE_OF, TILES, range_lo, range_hi, row_in_tile, n_mask_cols,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
               MASK_BLOCK_M: tl.constexpr, MASK_BLOCK_N: tl.constexpr, PARTIAL: tl.constexpr,
               PARTIAL_KIND: tl.constexpr, DOT_PRECISION: tl.constexpr, softcap_log2=1.0, alibi_slope=0.0,
               rel_bias_row=None, drel_bias_row=None, SOFTCAP: tl.constexpr = False, ALIBI: tl.constexpr = False,
               REL_BIAS: tl.constexpr = False, REL_BIAS_GRAD: tl.constexpr = False):
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kt_tile = offs_n[None, :] * stride_kn + offs_d[:, None]
    vt_tile = offs_n[None, :] * stride_vn + offs_d[:, None]
    mask_tile = (row_in_tile + offs_m)[:, None] * MASK_BLOCK_N + offs_n[None, :]
    subs: tl.constexpr = MASK_BLOCK_N // BLOCK_N  # one loop over (block, sub-block) pairs: `_fwd_sparse`
    n_pairs = tl.load(NUM + list_off) * subs
    kb = listed_block(IDX, list_off * n_mask_cols, 0, n_pairs, subs)
    for j in range(0, n_pairs):
        sub = j % subs
        tile_ptrs = TILES + sub * BLOCK_N + mask_tile  # unused with ranges
        if PARTIAL * (PARTIAL_KIND == PARTIAL_TILE):
            tile_ptrs += tl.load(TILE_OF + list_off * n_mask_cols + kb).to(tl.int64) * (MASK_BLOCK_M * MASK_BLOCK_N)
        start_n = kb * MASK_BLOCK_N + sub * BLOCK_N
        dq = _dq_step(dq, q, do, lse, delta, k_base + start_n.to(tl.int64) * stride_kn + kt_tile,
                      v_base + start_n.to(tl.int64) * stride_vn + vt_tile, rows, start_n + offs_n, n_q, n_k, qk_scale,
                      tile_ptrs, range_lo, range_hi, BLOCK_D, HEAD_DIM, PARTIAL, False, PARTIAL_KIND * PARTIAL,
                      DOT_PRECISION, 0, 0,
                      softcap_log2, alibi_slope, rel_bias_row, drel_bias_row, False, SOFTCAP, ALIBI, REL_BIAS,
                      REL_BIAS_GRAD)
        kb = listed_block(IDX, list_off * n_mask_cols, j + 1, n_pairs, subs)
    return dq


@triton.jit
def _dq_dense(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, rows, start_m, n_q, n_k, qk_scale,
              window_left, window_right, softcap_log2, alibi_slope, rel_bias_row, drel_bias_row,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
              CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
              ALIBI: tl.constexpr, REL_BIAS: tl.constexpr, REL_BIAS_GRAD: tl.constexpr):
    """The key blocks the forward visited for this query block (`common.kv_ranges`), same cuts, masked runs
    first (`forward._fwd_dense` says why). Shared by the dense and the varlen kernels."""
    lo, full_lo, full_hi, hi = kv_ranges(start_m, n_q, n_k, window_left, window_right, CAUSAL, WINDOW, BLOCK_M,
                                         BLOCK_N)
    # the masked run(s) as one loop: [full_hi, hi), and with a window [lo, full_lo) before it (without a window
    # that run is empty: lo = full_lo = 0)
    masked_lo, masked_hi = full_hi, hi
    if WINDOW:
        masked_lo, masked_hi = lo, full_lo
    dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, rows, masked_lo, masked_hi, n_q, n_k,
                   qk_scale, BLOCK_N, BLOCK_D, HEAD_DIM, True, CAUSAL, DOT_PRECISION,
                   window_left, window_right, softcap_log2, alibi_slope, rel_bias_row, drel_bias_row,
                   WINDOW, SOFTCAP, ALIBI, REL_BIAS, REL_BIAS_GRAD, full_hi, hi, WINDOW)
    dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, rows, full_lo, full_hi, n_q, n_k,
                   qk_scale, BLOCK_N, BLOCK_D, HEAD_DIM, False, CAUSAL, DOT_PRECISION,
                   window_left, window_right, softcap_log2, alibi_slope, rel_bias_row, drel_bias_row,
                   WINDOW, SOFTCAP, ALIBI, REL_BIAS, REL_BIAS_GRAD)
    return dq


@triton.jit
def _dq_program(pid_m, pid_bh, Q, K, V, DO, LSE, DELTA, DQ, O, stride_ob, stride_om, stride_oh,
                   stride_qb, stride_qm, stride_qh, stride_kb, stride_kn, stride_kh,
                   stride_vb, stride_vn, stride_vh, stride_dob, stride_dom, stride_doh,
                   stride_dqb, stride_dqm, stride_dqh,
                   n_q, n_k, num_heads, group_size, qk_scale, softmax_scale, seq_bucket,
                   FULL_NUM, FULL_IDX, PART_NUM, PART_IDX, PART_TILE, TILES, mask_b, mask_h, n_mask_rows,
                   n_mask_cols,
                   CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
                   HAS_MASK: tl.constexpr, MASK_BLOCK_M: tl.constexpr, MASK_BLOCK_N: tl.constexpr,
                   PARTIAL_KIND: tl.constexpr,
                   SLOPES, stride_slopes_b, softcap_log2, BIAS, stride_bias_h, window_left, window_right, DBIAS,
                   WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, REL_BIAS: tl.constexpr,
                   REL_BIAS_GRAD: tl.constexpr, DELTA_FROM_O: tl.constexpr):
    """dQ of query block pid_m of query head pid_bh (= b * Hq + h); with DELTA_FROM_O it also computes this
    block's delta from O and the dO tile it loads anyway, and stores it for the dK/dV pass that follows."""
    if HAS_MASK:
        tl.static_assert((MASK_BLOCK_M % BLOCK_M == 0) and (MASK_BLOCK_N % BLOCK_N == 0))
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    h_kv = h // group_size
    start_m = pid_m * BLOCK_M
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    rows = start_m + offs_m
    row_ok = rows < n_q
    mask = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + start_m.to(tl.int64) * stride_qm
                + offs_m[:, None] * stride_qm + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh + start_m.to(tl.int64) * stride_dom
                 + offs_m[:, None] * stride_dom + offs_d[None, :], mask=mask, other=0.0)
    row_base = pid_bh.to(tl.int64) * n_q
    lse = tl.load(LSE + row_base + rows, mask=row_ok, other=float("inf"))
    if DELTA_FROM_O:
        o = tl.load(O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + start_m.to(tl.int64) * stride_om
                    + offs_m[:, None] * stride_om + offs_d[None, :], mask=mask, other=0.0)
        delta = _row_delta(o, do)
        tl.store(DELTA + row_base + rows, delta, mask=row_ok)
    else:
        delta = tl.load(DELTA + row_base + rows, mask=row_ok, other=0.0)
    k_base = K + b.to(tl.int64) * stride_kb + h_kv.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + h_kv.to(tl.int64) * stride_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    alibi_slope = 0.0
    if ALIBI:
        alibi_slope = tl.load(SLOPES + b * stride_slopes_b + h)
    rel_bias_row = BIAS + h * stride_bias_h
    drel_bias_row = DBIAS + h * stride_bias_h  # d rel_bias has rel_bias's shape and strides

    if HAS_MASK:
        mask_row = (b % mask_b) * mask_h + h % mask_h
        list_off = mask_row * n_mask_rows + start_m // MASK_BLOCK_M
        row_in_tile = start_m % MASK_BLOCK_M
        range_lo, range_hi = mask_ranges(TILES, mask_row, rows, n_q, n_k, PARTIAL_KIND, False)
        dq = _dq_sparse(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, rows, n_q, n_k, qk_scale,
                        list_off, FULL_NUM, FULL_IDX, PART_TILE, TILES, range_lo, range_hi, row_in_tile, n_mask_cols,
                        BLOCK_M, BLOCK_N, BLOCK_D, HEAD_DIM, MASK_BLOCK_M, MASK_BLOCK_N, False, PARTIAL_KIND,
                        DOT_PRECISION,
                        softcap_log2, alibi_slope, rel_bias_row, drel_bias_row, SOFTCAP, ALIBI, REL_BIAS,
                        REL_BIAS_GRAD)
        dq = _dq_sparse(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, rows, n_q, n_k, qk_scale,
                        list_off, PART_NUM, PART_IDX, PART_TILE, TILES, range_lo, range_hi, row_in_tile, n_mask_cols,
                        BLOCK_M, BLOCK_N, BLOCK_D, HEAD_DIM, MASK_BLOCK_M, MASK_BLOCK_N, True, PARTIAL_KIND,
                        DOT_PRECISION,
                        softcap_log2, alibi_slope, rel_bias_row, drel_bias_row, SOFTCAP, ALIBI, REL_BIAS,
                        REL_BIAS_GRAD)
    else:
        dq = _dq_dense(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, rows, start_m, n_q, n_k,
                       qk_scale, window_left, window_right, softcap_log2, alibi_slope, rel_bias_row, drel_bias_row,
                       BLOCK_M, BLOCK_N, BLOCK_D, HEAD_DIM, CAUSAL, DOT_PRECISION, WINDOW, SOFTCAP, ALIBI, REL_BIAS,
                       REL_BIAS_GRAD)
    dq = dq * softmax_scale
    tl.store(DQ + b.to(tl.int64) * stride_dqb + h.to(tl.int64) * stride_dqh + start_m.to(tl.int64) * stride_dqm
             + offs_m[:, None] * stride_dqm + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, O, stride_ob, stride_om, stride_oh,
                   stride_qb, stride_qm, stride_qh, stride_kb, stride_kn, stride_kh,
                   stride_vb, stride_vn, stride_vh, stride_dob, stride_dom, stride_doh,
                   stride_dqb, stride_dqm, stride_dqh,
                   n_q, n_k, num_heads, group_size, qk_scale, softmax_scale, seq_bucket,
                   FULL_NUM, FULL_IDX, PART_NUM, PART_IDX, PART_TILE, TILES, mask_b, mask_h, n_mask_rows,
                   n_mask_cols, BLOCK_ORDER,
                   CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
                   HAS_MASK: tl.constexpr, MASK_BLOCK_M: tl.constexpr, MASK_BLOCK_N: tl.constexpr,
                   PARTIAL_KIND: tl.constexpr,
                   SLOPES, stride_slopes_b, softcap_log2, BIAS, stride_bias_h, window_left, window_right, DBIAS,
                   WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, REL_BIAS: tl.constexpr,
                   REL_BIAS_GRAD: tl.constexpr, DELTA_FROM_O: tl.constexpr):
    pid_m = tl.program_id(0)
    if CAUSAL:
        pid_m = tl.cdiv(n_q, BLOCK_M) - 1 - pid_m  # the last query blocks see the most keys: first
    if HAS_MASK:
        pid_m = _in_launch_order(pid_m, BLOCK_ORDER, MASK_BLOCK_M // BLOCK_M)
        if pid_m * BLOCK_M >= n_q:
            return
    _dq_program(pid_m, tl.program_id(1), Q, K, V, DO, LSE, DELTA, DQ, O, stride_ob, stride_om, stride_oh, stride_qb,
                stride_qm, stride_qh, stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh, stride_dob,
                stride_dom, stride_doh, stride_dqb, stride_dqm, stride_dqh, n_q, n_k, num_heads, group_size, qk_scale,
                softmax_scale, seq_bucket, FULL_NUM, FULL_IDX, PART_NUM, PART_IDX, PART_TILE, TILES, mask_b, mask_h,
                n_mask_rows, n_mask_cols, CAUSAL, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, DOT_PRECISION, HAS_MASK,
                MASK_BLOCK_M, MASK_BLOCK_N, PARTIAL_KIND, SLOPES, stride_slopes_b, softcap_log2, BIAS, stride_bias_h,
                window_left, window_right, DBIAS, WINDOW, SOFTCAP, ALIBI, REL_BIAS, REL_BIAS_GRAD, DELTA_FROM_O)


@triton.jit
def _fused_blocks(pid, n_kv_blocks, n_q_blocks, CAUSAL: tl.constexpr, ORDER: tl.constexpr):
    """(key block, query block) of one-launch program pid (per K/V head); -1 where it has none.
    paired (ORDER 0): both pid. halves (ORDER 1), non-causal: the dK/dV programs first (4 block matmuls a step
    against dQ's 3), then the dQ programs; causal: the two lists interleaved, each longest first (key block 0
    sees every query, the last query block every key), so the block scheduler's greedy fill ends on the
    shortest programs."""
    kv_block = pid
    q_block = pid
    if ORDER == 1:
        if CAUSAL:
            kv_block = tl.where(pid % 2 == 0, pid // 2, -1)
            q_block = tl.where(pid % 2 == 1, n_q_blocks - 1 - pid // 2, -1)
        else:
            kv_block = tl.where(pid < n_kv_blocks, pid, -1)
            q_block = tl.where(pid < n_kv_blocks, -1, pid - n_kv_blocks)
    return kv_block, q_block


@triton.jit
def _bwd_fused_kernel(Q, K, V, DO, LSE, DELTA, DQ, DK, DV,
                      stride_qb, stride_qm, stride_qh, stride_kb, stride_kn, stride_kh,
                      stride_vb, stride_vn, stride_vh, stride_dob, stride_dom, stride_doh,
                      stride_dqb, stride_dqm, stride_dqh,
                      stride_dkb, stride_dkn, stride_dkh, stride_dvb, stride_dvn, stride_dvh,
                      n_q, n_k, num_heads, num_kv_heads, group_size, qk_scale, softmax_scale, seq_bucket,
                      KFULL_NUM, KFULL_IDX, KPART_NUM, KPART_IDX, KPART_TILE, KTILES, kmask_b, kmask_h, kn_mask_cols,
                      kn_mask_rows,
                      FULL_NUM, FULL_IDX, PART_NUM, PART_IDX, PART_TILE, TILES, mask_b, mask_h, n_mask_rows,
                      n_mask_cols,
                      CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                      BLOCK_M1: tl.constexpr, BLOCK_N1: tl.constexpr, BLOCK_M2: tl.constexpr, BLOCK_N2: tl.constexpr,
                      DOT_PRECISION: tl.constexpr,
                      HAS_MASK: tl.constexpr, MASK_BLOCK_M: tl.constexpr, MASK_BLOCK_N: tl.constexpr,
                      PARTIAL_KIND: tl.constexpr,
                      SLOPES, stride_slopes_b, softcap_log2, BIAS, stride_bias_h, window_left, window_right, DBIAS,
                      WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, REL_BIAS: tl.constexpr,
                      REL_BIAS_GRAD: tl.constexpr, ORDER: tl.constexpr):
    """The whole backward in one launch; ORDER (a tuning parameter, `configs.fused_order`) says which program
    does what (`_fused_blocks`). paired: program (j, b * Hkv + h_kv) computes dK, dV of key block j and then dQ
    of query block j for every query head of the group; with causal masking the two halves balance (key block
    j's dK/dV visit the query blocks after the diagonal, query block j's dQ the key blocks before it), so with
    BLOCK_N1 == BLOCK_M2 every program does the same work. halves: each program does one of the two, twice the
    programs at about half the work each, launched longest first, so the last wave is shorter."""
    kv_block, q_block = _fused_blocks(tl.program_id(0), tl.cdiv(n_k, BLOCK_N1), tl.cdiv(n_q, BLOCK_M2), CAUSAL,
                                      ORDER)
    pid_kv = tl.program_id(1)
    j = kv_block
    if (kv_block >= 0) & (kv_block * BLOCK_N1 < n_k):
        _dkdv_program(j, pid_kv, Q, K, V, DO, LSE, DELTA, DK, DV, stride_qb, stride_qm, stride_qh, stride_kb,
                      stride_kn, stride_kh, stride_vb, stride_vn, stride_vh, stride_dob, stride_dom, stride_doh,
                      stride_dkb, stride_dkn, stride_dkh, stride_dvb, stride_dvn, stride_dvh, n_q, n_k, num_heads,
                      num_kv_heads, group_size, qk_scale, softmax_scale, seq_bucket, KFULL_NUM, KFULL_IDX, KPART_NUM,
                      KPART_IDX, KPART_TILE, KTILES, kmask_b, kmask_h, kn_mask_cols, kn_mask_rows, CAUSAL, HEAD_DIM,
                      BLOCK_D, BLOCK_M1, BLOCK_N1, DOT_PRECISION, HAS_MASK, MASK_BLOCK_M, MASK_BLOCK_N, PARTIAL_KIND,
                      SLOPES, stride_slopes_b, softcap_log2, BIAS, stride_bias_h, window_left, window_right, WINDOW,
                      SOFTCAP, ALIBI, REL_BIAS)
    j = q_block
    if (q_block >= 0) & (q_block * BLOCK_M2 < n_q):
        b = pid_kv // num_kv_heads
        h_first = (pid_kv % num_kv_heads) * group_size
        for g in range(0, group_size):
            # delta comes from the preprocess here (DELTA_FROM_O off: the O arguments are placeholders)
            _dq_program(j, b * num_heads + h_first + g, Q, K, V, DO, LSE, DELTA, DQ, DQ, 0, 0, 0, stride_qb, stride_qm,
                        stride_qh, stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh, stride_dob,
                        stride_dom, stride_doh, stride_dqb, stride_dqm, stride_dqh, n_q, n_k, num_heads, group_size,
                        qk_scale, softmax_scale, seq_bucket, FULL_NUM, FULL_IDX, PART_NUM, PART_IDX, PART_TILE, TILES,
                        mask_b, mask_h, n_mask_rows, n_mask_cols, CAUSAL, HEAD_DIM, BLOCK_D, BLOCK_M2, BLOCK_N2,
                        DOT_PRECISION, HAS_MASK, MASK_BLOCK_M, MASK_BLOCK_N, PARTIAL_KIND, SLOPES, stride_slopes_b,
                        softcap_log2, BIAS, stride_bias_h, window_left, window_right, DBIAS, WINDOW, SOFTCAP, ALIBI,
                        REL_BIAS, REL_BIAS_GRAD, False)


_dkdv_autotuned = None if interpreting() else autotuned(_bwd_dkdv_kernel, lambda: configs("dkdv"))
_dkdv_atomic_autotuned = None if interpreting() else autotuned(_bwd_dkdv_kernel, lambda: configs("dkdv_atomic"),
                                                               zeroed=("DQ_ACC",))
_dq_autotuned = None if interpreting() else autotuned(_bwd_dq_kernel, lambda: configs("dq"))
_fused_autotuned = None if interpreting() else autotuned(_bwd_fused_kernel, lambda: configs("fused", orders=True))


BACKWARD_SCHEDULES = ("auto", "fused", "split", "atomic")


def backward_schedule(causal: bool, block_mask, mods=None, windowed_fused: bool = True, head_dim=None) -> str:
    """Which backward launch shape, from HWATTN_BWD:
      fused:  one launch (_bwd_fused_kernel): program j does key block j's dK/dV, then query block j's dQ;
      split:  dK/dV, then dQ (two launches, each with its own tuned tiles);
      atomic: one dK/dV launch that also adds dQ with fp32 atomics (FlashAttention-2's own schedule, 5 block
              matmuls instead of 7); dQ's summation order over key blocks then varies from run to run;
      auto (default): fused for dense causal attention, split otherwise (measured on an H200, 2026-12-01,
              docs/hopper.md: dense causal fused 1.00-1.04x the split speed, dense non-causal 0.88-0.92x;
              re-timed 2026-12-02 after the wgmma fix, docs/flash_status.md: kept; ninth session, after dO V^T
              moved before the exponentials: D = 128 with fixed configs fused 1.00-1.03x split non-causal, but
              autotuned at D = 64 (what users get) 0.93-0.95x, so still split there). Block masks, H200
              2026-12-02 after the sparse walks became one loop: fused 1.02x split with the fixed configs, but
              0.98-1.00x with autotuning (the default), so split. A window argument (no block mask): fused,
              after its dK/dV loop's loads were fixed (`common.q_window_bounds`; H200 2026-12-02, window 4096 at
              N = 32768: fused 6.70-6.75 ms kernel against split 7.04-7.12, 6.91 vs 7.33 in gpu_masks.py) unless
              windowed_fused is False (the varlen kernels: not measured there). Plain dense non-causal attention
              with 64 < head_dim <= 128 (one 128-wide head tile; head_dim given): fused since 2026-12-03 (H200,
              D = 128, autotuned, three rounds, the same run as FlexAttention: 388 / 413 / 412 / 422 TFLOP/s
              against split's 377 / 397 / 404 / 409 at N = 2048 .. 16384; D = 64 stays split, 0.93-0.95x there
              in the ninth session; D = 80 / 96 share D = 128's tiles and were not timed).
    The atomic schedule is opt-in and never taken under torch.use_deterministic_algorithms(True) (it falls back
    to split, with a warning) nor with a learnable rel_bias, whose gradient the dQ pass sums."""
    mode = env_choice("HWATTN_BWD", BACKWARD_SCHEDULES)
    if mode == "atomic":
        if torch.are_deterministic_algorithms_enabled():
            warnings.warn("HWATTN_BWD=atomic adds dQ with atomics, which is not deterministic; "
                          "torch.use_deterministic_algorithms(True) is on, so the split backward runs instead")
            return "split"
        if mods is not None and mods.rel_bias_grad:
            return "split"  # d rel_bias is summed in the dQ pass
        return "atomic"
    if mode == "auto":
        windowed = windowed_fused and mods is not None and mods.window is not None
        plain = mods is None or (mods.alibi_slopes is None and mods.softcap == 0 and mods.rel_bias is None)
        wide = head_dim is not None and 64 < head_dim <= 128 and plain
        return "fused" if (causal or windowed or wide) and block_mask is None else "split"
    return mode


def _fused_programs(n_q, n_k, cfg, causal) -> int:
    """Programs per K/V head of the one-launch backward in cfg's ORDER (`_fused_blocks`)."""
    n_kv_blocks, n_q_blocks = triton.cdiv(n_k, cfg["BLOCK_N1"]), triton.cdiv(n_q, cfg["BLOCK_M2"])
    if cfg["ORDER"] == 0:
        return max(n_kv_blocks, n_q_blocks)
    return 2 * max(n_kv_blocks, n_q_blocks) if causal else n_kv_blocks + n_q_blocks


def _launch(kernel, tuned, kind, grid_of, args, meta, head_dim, dtype, orders=False):
    """orders: the kernel takes a program order (the dense one launch), fixed like its tiles when not tuning."""
    if tuned is None or not autotune_enabled():
        launch_fixed(kernel, grid_of, args, meta, fixed_config(kind, head_dim, dtype, meta, orders=orders))
    else:
        tuned[grid_of](*args, **meta)


def bwd_delta(o, do):
    """delta = rowsum(dO * O), (B, Hq, Nq) float32, by the preprocess kernel."""
    B, n_q, n_heads, head_dim = o.shape
    delta = torch.empty((B, n_heads, n_q), device=o.device, dtype=torch.float32)
    pre_block = 64
    _bwd_preprocess[(triton.cdiv(n_q, pre_block), B * n_heads)](
        o, do, delta, o.stride(0), o.stride(1), o.stride(2), do.stride(0), do.stride(1), do.stride(2),
        n_q, n_heads, HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)), BLOCK_M=pre_block)
    return delta


def backward_kernel() -> str:
    """HWATTN_BWD_KERNEL: "portable" (default: this file's Triton kernels, in the HWATTN_BWD schedule), "gluon"
    (the one-launch Gluon Hopper backward of `hopper_bwd.py`, FA3's five-matmul schedule, wherever it applies:
    sm_90, fp16 / bf16, head_dim 64 or 128, no score mods, windows or block masks, TMA-aligned rows; elsewhere
    the portable kernels, with a warning once per reason) or "auto" (the Gluon one where `hopper_bwd.preferred`
    says it was measured faster). Its dQ is summed by TMA reduce-adds, so its last bits vary from run to run:
    under torch.use_deterministic_algorithms(True) the portable backward runs instead."""
    return env_choice("HWATTN_BWD_KERNEL", ("portable", "gluon", "auto"))


_BWD_FALLBACKS_SAID: set = set()


def _hopper_bwd_reason(q, k, v, causal, block_mask, mods) -> str | None:
    from . import hopper
    reason = hopper.unsupported_reason(q, k, v, causal, block_mask, mods)
    if reason is None and torch.are_deterministic_algorithms_enabled():
        reason = "deterministic algorithms are on (its dQ adds vary in order)"
    return reason


def _tma_ready(do):
    """dO as the Gluon backward's TMA descriptors take it: (heads, head_dim) contiguous, 16-byte-aligned rows."""
    from . import hopper
    ok = do.stride(3) == 1 and (do.shape[2] == 1 or do.stride(2) == do.shape[3]) and hopper._rows_aligned(do)
    return do if ok else do.contiguous()


def flash_bwd(do, q, k, v, o, lse, causal: bool, softmax_scale: float, block_mask=None, mods=None):
    """Gradients of flash_fwd (same block_mask and score mods). lse is flash_fwd's log2-domain LSE.
    Returns dq, dk, dv (contiguous) and d rel_bias (float32, rel_bias's shape; None unless mods asks for it).
    On sm_90 HWATTN_BWD_KERNEL may route it to the Gluon Hopper backward (`backward_kernel`)."""
    kernel = backward_kernel()
    if kernel == "gluon" or (kernel == "auto" and q.is_cuda):
        from . import hopper_bwd
        reason = _hopper_bwd_reason(q, k, v, causal, block_mask, mods)
        if reason is None and (kernel == "gluon" or hopper_bwd.preferred(q.shape[-1], k.shape[1], causal)):
            return (*hopper_bwd.hopper_bwd(_tma_ready(do), q, k, v, o, lse, causal, softmax_scale), None)
        if reason is not None and kernel == "gluon" and reason not in _BWD_FALLBACKS_SAID:
            _BWD_FALLBACKS_SAID.add(reason)
            warnings.warn(f"HWATTN_BWD_KERNEL=gluon: {reason}; this call runs the portable backward", stacklevel=2)
    B, n_q, n_heads, head_dim = q.shape
    n_k, n_kv_heads = k.shape[1], k.shape[2]
    block_d = max(16, triton.next_power_of_2(head_dim))

    dq = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    dk = torch.empty(k.shape, device=k.device, dtype=k.dtype)
    dv = torch.empty(v.shape, device=v.device, dtype=v.dtype)
    qk_scale = softmax_scale * LOG2E
    bucket = seq_bucket(max(n_q, n_k))
    meta = dict(CAUSAL=causal, HEAD_DIM=head_dim, BLOCK_D=block_d, DOT_PRECISION=dot_precision(q.dtype))
    common = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
              v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2))

    by_key_args, mask_meta = kernel_args(block_mask, q.device, by_key_blocks=True)
    by_query_args, _ = kernel_args(block_mask, q.device)
    meta.update(mask_meta)
    # d rel_bias is summed with atomics in the dQ pass (zeroed here; autotuning re-zeroes it per trial)
    drel_bias = torch.zeros_like(mods.rel_bias) if mods is not None and mods.rel_bias_grad else None
    sizes = (n_q, n_k, n_heads, n_kv_heads, n_heads // n_kv_heads, qk_scale, softmax_scale, bucket)
    schedule = backward_schedule(causal, block_mask, mods, head_dim=head_dim)
    # delta = rowsum(dO * O), (B, Hq, Nq) fp32: the split schedule's dQ programs write it, the others read it
    delta = torch.empty((B, n_heads, n_q), device=q.device, dtype=torch.float32) if schedule == "split" else \
        bwd_delta(o, do)
    if schedule == "fused":
        args = (q, k, v, do, lse, delta, dq, dk, dv, *common, dq.stride(0), dq.stride(1), dq.stride(2),
                dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2), *sizes,
                *by_key_args, *by_query_args)
        _launch(_bwd_fused_kernel, _fused_autotuned, "fused",
                lambda cfg: (_fused_programs(n_q, n_k, cfg, causal), B * n_kv_heads),
                args, {**meta, **score_mod_kwargs(mods, q.device, drel_bias, with_grad_args=True)}, head_dim, q.dtype,
                orders=True)
        return dq, dk, dv, drel_bias

    atomic = schedule == "atomic"
    # under a block mask programs walk whole mask blocks in launch_order; those past the end return at once
    blocks_k = (lambda cfg: triton.cdiv(n_k, cfg["BLOCK_N"])) if block_mask is None else \
        (lambda cfg: block_mask.key_block_order.numel() * (block_mask.block_n // cfg["BLOCK_N"]))
    blocks_q = (lambda cfg: triton.cdiv(n_q, cfg["BLOCK_M"])) if block_mask is None else \
        (lambda cfg: block_mask.query_block_order.numel() * (block_mask.block_m // cfg["BLOCK_M"]))
    if not atomic:
        # dQ first: its programs write delta (every query block has one: the grid covers them all)
        dq_args = (q, k, v, do, lse, delta, dq, o, o.stride(0), o.stride(1), o.stride(2), *common, dq.stride(0),
                   dq.stride(1), dq.stride(2), n_q, n_k, n_heads, n_heads // n_kv_heads, qk_scale, softmax_scale,
                   bucket)
        _launch(_bwd_dq_kernel, _dq_autotuned, "dq", lambda cfg: (blocks_q(cfg), B * n_heads),
                dq_args + by_query_args + (launch_order(block_mask, q.device),),
                {**meta, **score_mod_kwargs(mods, q.device, drel_bias, with_grad_args=True), "DELTA_FROM_O": True},
                head_dim, q.dtype)
    # the atomic schedule's dQ: fp32, zeroed, (B, Nq, Hq, D) contiguous; otherwise a placeholder never touched
    dq_acc = torch.zeros(q.shape, device=q.device, dtype=torch.float32) if atomic else dq
    dkdv_args = (q, k, v, do, lse, delta, dk, dv, dq_acc, dq_acc.stride(0), dq_acc.stride(1), dq_acc.stride(2),
                 *common, dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2), *sizes)
    _launch(_bwd_dkdv_kernel, _dkdv_atomic_autotuned if atomic else _dkdv_autotuned,
            "dkdv_atomic" if atomic else "dkdv",
            lambda cfg: (blocks_k(cfg), B * n_kv_heads),
            dkdv_args + by_key_args + (launch_order(block_mask, q.device, by_key_blocks=True),),
            {**meta, **score_mod_kwargs(mods, q.device), "ATOMIC_DQ": atomic}, head_dim, q.dtype)
    if atomic:
        dq.copy_(dq_acc)
    return dq, dk, dv, drel_bias
