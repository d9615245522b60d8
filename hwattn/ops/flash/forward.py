"""Forward kernel: FlashAttention-2 tiling with an online softmax.

One program owns a block of BLOCK_M query rows of one head; Q stays in registers while K/V blocks
stream through, so HBM sees Q, K, V once per query block and O once: O(N) memory, no N x N scores.
"""

import warnings

import torch
import triton
import triton.language as tl

from ..._runtime import env_choice, interpreting
from .common import PARTIAL_TILE, LOG2E, kv_ranges, mask_ranges, modded_scores, partial_keep, visible
from .block_mask import kernel_args
from .configs import autotune_enabled, autotuned, fixed_config, fwd_configs, launch_fixed
from .score_mods import score_mod_kwargs


@triton.jit
def _fwd_step(acc, l_i, m_i, q, k_ptrs, v_ptrs, rows, cols, n_q, n_k, qk_scale, tile_ptrs, range_lo, range_hi,
              BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
              PARTIAL_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
              window_left=0, window_right=0, softcap_log2=1.0, alibi_slope=0.0, rel_bias_row=None,
              WINDOW: tl.constexpr = False, SOFTCAP: tl.constexpr = False, ALIBI: tl.constexpr = False,
              REL_BIAS: tl.constexpr = False):
    """One key block through the online softmax. MASKED blocks (causal diagonal, window edges, sequence
    edge, partial blocks of a block mask) pay for bounds checks and the element mask; the bulk of blocks
    does not. PARTIAL_MASK (0: none) is how a block mask's partial block gets its element mask, from tile_ptrs
    (`common.partial_keep`). The trailing arguments (a window, score mods; off by default) are
    `common.visible`'s and `common.modded_scores`'."""
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    if MASKED:
        kt = tl.load(k_ptrs, mask=(cols[None, :] < n_k) & d_ok[:, None], other=0.0)
    elif HEAD_DIM != BLOCK_D:
        kt = tl.load(k_ptrs, mask=d_ok[:, None], other=0.0)
    else:
        kt = tl.load(k_ptrs)
    qk = tl.dot(q, kt, input_precision=DOT_PRECISION)
    if (SOFTCAP or ALIBI) or REL_BIAS:
        # modded scores come in the log2 domain, scale included; without mods the scale stays fused below
        qk, _ = modded_scores(qk, qk_scale, rows[:, None], cols[None, :], n_q, n_k, softcap_log2, alibi_slope,
                              rel_bias_row, SOFTCAP, ALIBI, REL_BIAS)
        qk_scale = 1.0
    if MASKED:
        keep = visible(rows[:, None], cols[None, :], n_q, n_k, CAUSAL, window_left, window_right, WINDOW)
        if PARTIAL_MASK:
            keep = keep & partial_keep(tile_ptrs, range_lo[:, None], range_hi[:, None], rows[:, None], cols[None, :],
                                       PARTIAL_MASK, False)
        qk = tl.where(keep, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        # a row with nothing visible yet keeps m = -inf; subtract 0 instead to avoid inf - inf
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_sub = m_new
    # scale and max subtraction in one FMA per score (qk_scale > 0, so max commutes with it)
    p = tl.math.exp2(qk * qk_scale - m_sub[:, None])
    alpha = tl.math.exp2(m_i - m_sub)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if MASKED:
        v = tl.load(v_ptrs, mask=(cols[:, None] < n_k) & d_ok[None, :], other=0.0)
    elif HEAD_DIM != BLOCK_D:
        v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
    else:
        v = tl.load(v_ptrs)
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, stride_vd, rows, lo, hi, n_q, n_k, qk_scale,
               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
               MASKED: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
               window_left=0, window_right=0, softcap_log2=1.0, alibi_slope=0.0, rel_bias_row=None,
               WINDOW: tl.constexpr = False, SOFTCAP: tl.constexpr = False, ALIBI: tl.constexpr = False,
               REL_BIAS: tl.constexpr = False):
    """Stream the contiguous key range [lo, hi) (dense attention, causal, windowed or not)."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kt_tile = offs_n[None, :] * stride_kn + offs_d[:, None]  # K^T tile: int32, small
    # stride_vd is 1 except for FP8 V, stored seqlen-major: Hopper's fp8 MMA wants P @ V's B operand K-major
    v_tile = offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        # scalar int64 offsets: at N ~ 1M rows * stride overflows int32
        acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, k_base + start_n.to(tl.int64) * stride_kn + kt_tile,
                                  v_base + start_n.to(tl.int64) * stride_vn + v_tile, rows, start_n + offs_n, n_q, n_k,
                                  qk_scale, None, None, None, BLOCK_D, HEAD_DIM, MASKED, CAUSAL, False, DOT_PRECISION,
                                  window_left, window_right, softcap_log2, alibi_slope, rel_bias_row, WINDOW, SOFTCAP,
                                  ALIBI, REL_BIAS)
    return acc, l_i, m_i


@triton.jit
def _fwd_sparse(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, rows, n_q, n_k, qk_scale,
                list_off, NUM, IDX, TILE_OF, TILES, range_lo, range_hi, row_in_tile, n_mask_cols,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
                MASK_BLOCK_M: tl.constexpr, MASK_BLOCK_N: tl.constexpr, PARTIAL: tl.constexpr,
                PARTIAL_KIND: tl.constexpr, DOT_PRECISION: tl.constexpr, softcap_log2=1.0, alibi_slope=0.0,
                rel_bias_row=None, SOFTCAP: tl.constexpr = False, ALIBI: tl.constexpr = False,
                REL_BIAS: tl.constexpr = False):
    """Stream the key blocks a block mask lists for this query block: full ones unmasked, partial ones
    with their element mask (a stored tile, or computed from range_lo / range_hi). Blocks not listed are never read."""
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kt_tile = offs_n[None, :] * stride_kn + offs_d[:, None]
    v_tile = offs_n[:, None] * stride_vn + offs_d[None, :]
    mask_tile = (row_in_tile + offs_m)[:, None] * MASK_BLOCK_N + offs_n[None, :]
    # One loop over (listed block, sub-block) pairs rather than a static loop over the sub-blocks inside the
    # loop over blocks: one step in the body, as in the dense loops (the nested form put two unrolled steps in
    # one pipelined body: 320 B of spills in the dK/dV kernel at 64x128, ptxas sm_90).
    # The block index is loaded in the step that uses it, unlike the backward walks (`common.listed_block`):
    # here the prefetching form was slower where the lists are short and scattered (H200, 10% block-sparse
    # at N = 16384: 0.60 -> 0.87 ms) for little gain on long contiguous ones (window 4096: 2.43 -> 2.35 ms).
    subs: tl.constexpr = MASK_BLOCK_N // BLOCK_N
    for j in range(0, tl.load(NUM + list_off) * subs):
        sub = j % subs
        kb = tl.load(IDX + list_off * n_mask_cols + j // subs)
        tile_ptrs = TILES + sub * BLOCK_N + mask_tile  # unused with ranges
        if PARTIAL * (PARTIAL_KIND == PARTIAL_TILE):
            tile_ptrs += tl.load(TILE_OF + list_off * n_mask_cols + kb).to(tl.int64) * (MASK_BLOCK_M * MASK_BLOCK_N)
        start_n = kb * MASK_BLOCK_N + sub * BLOCK_N
        acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, k_base + start_n.to(tl.int64) * stride_kn + kt_tile,
                                  v_base + start_n.to(tl.int64) * stride_vn + v_tile, rows, start_n + offs_n,
                                  n_q, n_k, qk_scale, tile_ptrs, range_lo, range_hi, BLOCK_D, HEAD_DIM, PARTIAL, False,
                                  PARTIAL_KIND * PARTIAL, DOT_PRECISION, 0, 0, softcap_log2, alibi_slope, rel_bias_row,
                                  False, SOFTCAP, ALIBI, REL_BIAS)
    return acc, l_i, m_i


@triton.jit
def _fwd_dense(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, stride_vd, rows, start_m, n_q, n_k, qk_scale,
               window_left, window_right, softcap_log2, alibi_slope, rel_bias_row,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
               CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
               ALIBI: tl.constexpr, REL_BIAS: tl.constexpr):
    """Every key block the query block [start_m, start_m + BLOCK_M) of dense attention sees: masked at the
    causal diagonal, the window edges and the end of the keys, unmasked where all its rows see the whole
    block; blocks outside the causal range or the window are skipped. Shared by the dense and the varlen
    kernels."""
    lo, full_lo, full_hi, hi = kv_ranges(start_m, n_q, n_k, window_left, window_right, CAUSAL, WINDOW, BLOCK_M,
                                         BLOCK_N)
    # The masked runs go first, the unmasked bulk last (the online softmax does not care about order): with a
    # masked loop after the bulk, ptxas (triton 3.6, sm_90) serialises every wgmma of the kernel, C7515 in
    # `scripts/flash_compile_check.py --wgmma`; measured on an H200 as the 8% between this kernel and a
    # minimal one (docs/hopper.md).
    if WINDOW:  # without a window lo = full_lo = 0
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, stride_vd, rows, lo,
                                   full_lo, n_q, n_k, qk_scale, BLOCK_N, BLOCK_D, HEAD_DIM, True, CAUSAL,
                                   DOT_PRECISION, window_left, window_right, softcap_log2, alibi_slope,
                                   rel_bias_row, WINDOW, SOFTCAP, ALIBI, REL_BIAS)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, stride_vd, rows, full_hi, hi,
                               n_q, n_k, qk_scale, BLOCK_N, BLOCK_D, HEAD_DIM, True, CAUSAL, DOT_PRECISION,
                               window_left, window_right, softcap_log2, alibi_slope, rel_bias_row,
                               WINDOW, SOFTCAP, ALIBI, REL_BIAS)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, stride_vd, rows, full_lo,
                               full_hi, n_q, n_k, qk_scale, BLOCK_N, BLOCK_D, HEAD_DIM, False, CAUSAL, DOT_PRECISION,
                               window_left, window_right, softcap_log2, alibi_slope, rel_bias_row,
                               WINDOW, SOFTCAP, ALIBI, REL_BIAS)
    return acc, l_i, m_i


@triton.jit
def _fwd_tile(pid_m, pid_bh, Q, K, V, O, LSE, DESCALE_Q, DESCALE_K, DESCALE_V,
              stride_qb, stride_qm, stride_qh,
              stride_kb, stride_kn, stride_kh,
              stride_vb, stride_vn, stride_vh, stride_vd,
              stride_ob, stride_om, stride_oh,
              n_q, n_k, num_heads, group_size, qk_scale, seq_bucket,
              FULL_NUM, FULL_IDX, PART_NUM, PART_IDX, PART_TILE, TILES, mask_b, mask_h, n_mask_rows, n_mask_cols,
              CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
              HAS_MASK: tl.constexpr, MASK_BLOCK_M: tl.constexpr, MASK_BLOCK_N: tl.constexpr,
              PARTIAL_KIND: tl.constexpr, HAS_DESCALE: tl.constexpr,
              SLOPES, stride_slopes_b, softcap_log2, BIAS, stride_bias_h, window_left, window_right,
              WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, REL_BIAS: tl.constexpr):
    """Query block pid_m of (batch, head) pid_bh = b * num_heads + h: the whole forward of one tile."""
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    h_kv = h // group_size  # GQA: the group's queries read the same K/V head, never repeated in memory
    if HAS_DESCALE:
        # FP8: S = (q8 k8^T) * descale_q * descale_k, so the per-head descales fold into the score scale once
        qk_scale = qk_scale * tl.load(DESCALE_Q + pid_bh) * tl.load(DESCALE_K + b * (num_heads // group_size) + h_kv)
    start_m = pid_m * BLOCK_M

    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + start_m.to(tl.int64) * stride_qm
    k_base = K + b.to(tl.int64) * stride_kb + h_kv.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + h_kv.to(tl.int64) * stride_vh
    o_base = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + start_m.to(tl.int64) * stride_om

    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    rows = start_m + offs_m
    row_ok = rows < n_q
    d_ok = offs_d < HEAD_DIM
    # Q stays in registers for the whole key loop
    q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :],
                other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # this (batch, head)'s score mods; nothing is loaded for a mod that is off
    alibi_slope = 0.0
    if ALIBI:
        alibi_slope = tl.load(SLOPES + b * stride_slopes_b + h)
    rel_bias_row = BIAS + h * stride_bias_h

    if HAS_MASK:
        # this query block's row of the block mask (B and H broadcast when the mask has size 1 there)
        mask_row = (b % mask_b) * mask_h + h % mask_h
        list_off = mask_row * n_mask_rows + start_m // MASK_BLOCK_M
        row_in_tile = start_m % MASK_BLOCK_M
        range_lo, range_hi = mask_ranges(TILES, mask_row, rows, n_q, n_k, PARTIAL_KIND, False)
        acc, l_i, m_i = _fwd_sparse(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, rows, n_q, n_k,
                                    qk_scale, list_off, FULL_NUM, FULL_IDX, PART_TILE, TILES, range_lo, range_hi,
                                    row_in_tile, n_mask_cols, BLOCK_M, BLOCK_N, BLOCK_D, HEAD_DIM, MASK_BLOCK_M,
                                    MASK_BLOCK_N, False, PARTIAL_KIND, DOT_PRECISION, softcap_log2, alibi_slope,
                                    rel_bias_row, SOFTCAP, ALIBI, REL_BIAS)
        acc, l_i, m_i = _fwd_sparse(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, rows, n_q, n_k,
                                    qk_scale, list_off, PART_NUM, PART_IDX, PART_TILE, TILES, range_lo, range_hi,
                                    row_in_tile, n_mask_cols, BLOCK_M, BLOCK_N, BLOCK_D, HEAD_DIM, MASK_BLOCK_M,
                                    MASK_BLOCK_N, True, PARTIAL_KIND, DOT_PRECISION, softcap_log2, alibi_slope,
                                    rel_bias_row, SOFTCAP, ALIBI, REL_BIAS)
    else:
        acc, l_i, m_i = _fwd_dense(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, stride_vd, rows, start_m,
                                   n_q, n_k, qk_scale, window_left, window_right, softcap_log2, alibi_slope,
                                   rel_bias_row, BLOCK_M, BLOCK_N, BLOCK_D, HEAD_DIM, CAUSAL, DOT_PRECISION,
                                   WINDOW, SOFTCAP, ALIBI, REL_BIAS)

    # deferred normalisation: divide once at the end; a row that saw no key gives 0, not 0/0
    has_keys = l_i > 0.0
    l_safe = tl.where(has_keys, l_i, 1.0)
    out = acc / l_safe[:, None]
    if HAS_DESCALE:
        out = out * tl.load(DESCALE_V + b * (num_heads // group_size) + h_kv)  # O = P (v8 * descale_v)
    # log2-domain LSE for the backward; +inf for empty rows makes their recomputed P exactly 0
    lse = tl.where(has_keys, m_i + tl.math.log2(l_safe), float("inf"))
    tl.store(LSE + pid_bh.to(tl.int64) * n_q + rows, lse, mask=row_ok)
    tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, DESCALE_Q, DESCALE_K, DESCALE_V,
                stride_qb, stride_qm, stride_qh,
                stride_kb, stride_kn, stride_kh,
                stride_vb, stride_vn, stride_vh, stride_vd,
                stride_ob, stride_om, stride_oh,
                n_q, n_k, num_heads, group_size, qk_scale, seq_bucket, n_bh,
                FULL_NUM, FULL_IDX, PART_NUM, PART_IDX, PART_TILE, TILES, mask_b, mask_h, n_mask_rows, n_mask_cols,
                CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
                HAS_MASK: tl.constexpr, MASK_BLOCK_M: tl.constexpr, MASK_BLOCK_N: tl.constexpr,
                PARTIAL_KIND: tl.constexpr, HAS_DESCALE: tl.constexpr,
                SLOPES, stride_slopes_b, softcap_log2, BIAS, stride_bias_h, window_left, window_right,
                WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, REL_BIAS: tl.constexpr,
                PERSISTENT: tl.constexpr = False):
    """One query block per program (grid (query blocks, B * Hq)), or PERSISTENT: a grid of about the GPU's
    resident programs, each walking tiles t = program, program + P, ...; tile t is query block rank t // n_bh
    of (batch, head) t % n_bh, ranked longest-first when causal, so the long tiles start first everywhere and
    the short ones fill the tail (FA3's causal-aware schedule)."""
    tl.static_assert(BLOCK_D >= HEAD_DIM)
    if HAS_MASK:
        # tiles walk the block mask in whole sub-blocks
        tl.static_assert((MASK_BLOCK_M % BLOCK_M == 0) and (MASK_BLOCK_N % BLOCK_N == 0))
    num_m_blocks = tl.cdiv(n_q, BLOCK_M)
    if PERSISTENT:
        for t in range(tl.program_id(0), num_m_blocks * n_bh, tl.num_programs(0)):
            rank = t // n_bh
            if CAUSAL:
                pid_m = num_m_blocks - 1 - rank
            else:
                pid_m = rank
            pid_bh = t % n_bh
            _fwd_tile(pid_m, pid_bh, Q, K, V, O, LSE, DESCALE_Q, DESCALE_K, DESCALE_V, stride_qb, stride_qm,
                      stride_qh, stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh, stride_vd, stride_ob,
                      stride_om, stride_oh, n_q, n_k, num_heads, group_size, qk_scale, seq_bucket, FULL_NUM, FULL_IDX,
                      PART_NUM, PART_IDX, PART_TILE, TILES, mask_b, mask_h, n_mask_rows, n_mask_cols, CAUSAL, HEAD_DIM,
                      BLOCK_D, BLOCK_M, BLOCK_N, DOT_PRECISION, HAS_MASK, MASK_BLOCK_M, MASK_BLOCK_N, PARTIAL_KIND,
                      HAS_DESCALE, SLOPES, stride_slopes_b, softcap_log2, BIAS, stride_bias_h, window_left,
                      window_right, WINDOW, SOFTCAP, ALIBI, REL_BIAS)
    else:
        if CAUSAL:
            # the last query blocks see the most keys: launch them first so the tail of the grid is short
            pid_m = num_m_blocks - 1 - tl.program_id(0)
        else:
            pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        _fwd_tile(pid_m, pid_bh, Q, K, V, O, LSE, DESCALE_Q, DESCALE_K, DESCALE_V, stride_qb, stride_qm, stride_qh,
                  stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh, stride_vd, stride_ob, stride_om,
                  stride_oh, n_q, n_k, num_heads, group_size, qk_scale, seq_bucket, FULL_NUM, FULL_IDX, PART_NUM,
                  PART_IDX, PART_TILE, TILES, mask_b, mask_h, n_mask_rows, n_mask_cols, CAUSAL, HEAD_DIM, BLOCK_D,
                  BLOCK_M, BLOCK_N, DOT_PRECISION, HAS_MASK, MASK_BLOCK_M, MASK_BLOCK_N, PARTIAL_KIND, HAS_DESCALE,
                  SLOPES, stride_slopes_b, softcap_log2, BIAS, stride_bias_h, window_left, window_right, WINDOW,
                  SOFTCAP, ALIBI, REL_BIAS)


_fwd_autotuned = None if interpreting() else autotuned(_fwd_kernel, fwd_configs)


def dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs get true fp32 products: tf32 would miss the 1e-5 bound
    return "ieee" if dtype == torch.float32 else "tf32"


def forward_kernel() -> str:
    """HWATTN_FWD_KERNEL: "auto" (default: the hand-scheduled Gluon Hopper forward of `hopper.py` on sm_90 where
    it applies and was measured faster through this API, `hopper.preferred`; this file's Triton kernel
    everywhere else, the interpreter included), "portable" (this file's kernel always) or "gluon" (the Gluon
    kernel wherever it applies: sm_90, fp16 / bf16, head_dim 64 or 128, no score mods, windows or block
    masks, TMA-aligned rows; elsewhere the portable kernel, with a warning once per reason). The backward is
    the portable one either way (it reads the same LSE). With "auto" the GPU suite passed on an H100
    (2026-12-06, docs/hopper.md)."""
    return env_choice("HWATTN_FWD_KERNEL", ("auto", "portable", "gluon"))


_FALLBACKS_SAID: set = set()


def _say_fallback(reason: str) -> None:
    if reason not in _FALLBACKS_SAID:
        _FALLBACKS_SAID.add(reason)
        warnings.warn(f"HWATTN_FWD_KERNEL=gluon: {reason}; this call runs the portable forward", stacklevel=3)


def forward_schedule() -> str:
    """HWATTN_FWD_SCHEDULE: "grid" (default: one program per query block, causal longest-first) or
    "persistent" (about as many programs as the GPU holds at once, each walking tiles longest-first:
    `_fwd_kernel`). The persistent schedule is built and tested but not yet timed on a GPU, so it is opt-in."""
    return env_choice("HWATTN_FWD_SCHEDULE", ("grid", "persistent"))


def _resident_programs(device, cfg) -> int:
    """How many forward programs to launch for the persistent schedule: the SMs times the programs one SM
    holds (one for 8 warps at 128x128 tiles with 3 stages, ~229 KB of shared memory; two for smaller tiles).
    The interpreter: 3, so that programs loop over several tiles."""
    if device.type != "cuda":
        return 3
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    big = cfg.get("BLOCK_M", 64) * cfg.get("BLOCK_N", 64) >= 128 * 128 or cfg.get("num_warps", 4) >= 8
    return sms * (1 if big else 2)


def seq_bucket(n: int) -> int:
    """Autotune key: configs are chosen per power-of-two sequence length (capped at 16384: longer
    sequences behave alike and would make each tuning run cost seconds), not per exact length."""
    return min(1 << max(n - 1, 1).bit_length(), 16384)


def flash_fwd(q, k, v, causal: bool, softmax_scale: float, block_mask=None, descale=None, out_dtype=None,
              mods=None):
    """q (B, Nq, Hq, D), k/v (B, Nk, Hkv, D), last dim contiguous. Returns O like q and the log2-domain
    LSE (B, Hq, Nq) float32 (+inf for rows that see no key). block_mask: a BlockMask (then causal=False).
    FP8 (e4m3) inputs: descale = (descale_q (B, Hq), descale_k (B, Hkv), descale_v (B, Hkv)), contiguous
    float32; v may be seqlen-major (v.stride(1) == 1, any stride along D). out_dtype: default q's dtype.
    mods: a score_mods.ScoreMods (window, ALiBi, softcap, relative bias), validated; None = none."""
    kernel = forward_kernel()
    # an explicit HWATTN_FWD_SCHEDULE=persistent asks for this file's persistent schedule: auto keeps it
    auto = kernel == "auto" and q.is_cuda and forward_schedule() == "grid"
    if descale is None and out_dtype is None and (kernel == "gluon" or auto):
        from . import hopper
        reason = hopper.unsupported_reason(q, k, v, causal, block_mask, mods)
        if reason is None and (kernel == "gluon" or hopper.preferred(q.shape[-1], k.shape[1], causal)):
            return hopper.hopper_fwd(q, k, v, causal, softmax_scale)
        if reason is not None and kernel == "gluon":
            _say_fallback(reason)
    B, n_q, n_heads, head_dim = q.shape
    n_k, n_kv_heads = k.shape[1], k.shape[2]
    if v.stride(-1) != 1 and block_mask is not None:
        raise ValueError("flash_fwd: a block mask needs v's last dim contiguous")
    o = torch.empty(q.shape, device=q.device, dtype=q.dtype if out_dtype is None else out_dtype)
    lse = torch.empty((B, n_heads, n_q), device=q.device, dtype=torch.float32)
    # 8-bit MMAs reduce over at least 32 elements
    block_d = max(32 if q.element_size() == 1 else 16, triton.next_power_of_2(head_dim))
    descale_q, descale_k, descale_v = (None, None, None) if descale is None else descale
    args = (q, k, v, o, lse, descale_q, descale_k, descale_v,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), v.stride(3),
            o.stride(0), o.stride(1), o.stride(2),
            n_q, n_k, n_heads, n_heads // n_kv_heads, softmax_scale * LOG2E, seq_bucket(max(n_q, n_k)), B * n_heads)
    mask_args, mask_meta = kernel_args(block_mask, q.device)
    args = args + mask_args
    persistent = forward_schedule() == "persistent"
    meta = dict(CAUSAL=causal, HEAD_DIM=head_dim, BLOCK_D=block_d, DOT_PRECISION=dot_precision(q.dtype), **mask_meta,
                HAS_DESCALE=descale is not None, **score_mod_kwargs(mods, q.device), PERSISTENT=persistent)

    def grid(cfg):
        if persistent:
            return (min(triton.cdiv(n_q, cfg["BLOCK_M"]) * B * n_heads, _resident_programs(q.device, cfg)), 1)
        return (triton.cdiv(n_q, cfg["BLOCK_M"]), B * n_heads)

    if _fwd_autotuned is None or not autotune_enabled():
        launch_fixed(_fwd_kernel, grid, args, meta, fixed_config("fwd", head_dim, q.dtype, mask_meta))
    else:
        _fwd_autotuned[grid](*args, **meta)
    return o, lse
