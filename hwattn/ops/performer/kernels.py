"""Triton kernels of Performer (FAVOR+): the feature map alone, and attention with the feature map fused in.

Features (x~ = x D^-1/4, W (m, D) the random projection; the kernels take W' = W D^-1/4, so u = x W'^T = x~ W^T):

    softmax  f = exp(u - |x~|^2/2 - c) / sqrt(m)         relu  f = relu(u) + kernel_eps
    backward softmax: dx = (df*f) W' - rowsum(df*f) x D^-1/2;   relu: dx = (df*[u > 0]) W'

c, the stabiliser (per query row its max exponent; for keys the max over the sequence and the features of each
(batch, head)), is a constant in the backward pass: it cancels exactly in the normalised attention, so its
gradient contribution is zero. W gets no gradient (a fixed random draw).

1. `favor_fwd` / `favor_bwd`: the features as a (B, N, H, m) tensor (the public `favor_features`, decoding, heads
   above FUSED_MAX_DIM). One program per (64 rows, batch*head) keeps u on chip: x read once, features written once.

2. `fused_fwd` / `fused_bwd`: Performer attention (`performer_attention`), the chunked linear attention of
   `linear_attn.kernels` (same passes and notation; read its docstring first) with Dk = m, where the kernels that
   need phi(q), phi(k) compute them from the raw (BT, D) tiles instead of reading them:

   forward   key stabiliser: `_favor_fwd_kernel` MODE_BLOCK_MAX over k (one 16-bit product: it is only a bound)
             `_favor_state_fwd_kernel`: the state pass on raw k (each program loads its slice of W' once)
             `_favor_output_fwd_kernel`: the output pass on raw q (the query stabiliser from a first pass over W',
             compute only) and phi(k): read back where pass 1 saved it (training), else recomputed from k
   backward  dd, the reverse state pass and dv: the linear core's own kernels on the features saved by the
             forward pass (identity feature map);
             `_favor_dqk_kernel`: dq and dk with the feature map's backward folded in: per feature block
             d phi = (the linear core's dq/dk terms), then straight through the chain rule into (BT, D) fp32
             accumulators, so d phi(q), d phi(k) never leave the chip.

   Why the features are saved (training only, bf16 for bf16 inputs: 2x the bytes of q or k each) rather than
   recomputed in the backward pass: every kernel that needs them needs both phi(q) and phi(k) of its chunk, and a
   (BT, m) block costs 2 16-bit products (W' split, below) of BT x D x m; at D = 128, m = 256 recomputing them
   in the three backward kernels (registers force dq, dk and dv into separate programs) is ~12 projections, about
   as many FLOPs as the rest of the backward pass, where reading them back costs 2 x 2 bytes per token and
   feature. What fusion still saves against the unfused path (features first, then linear attention): the
   separate feature kernels (the query kernel's second projection, a tf32 key max, 1 CTA per SM), the forward
   kernels' reads of phi(k) (they read k), and in the backward pass the round trip of d phi(q), d phi(k)
   (written, then read with phi and x by the feature backward kernel): ~14 of ~50 tensor-sized passes.

   Registers: the projection's result feeds further products, and for such "chained" dots Triton lays the warps
   along the rows only (warpsPerCTA = [num_warps, 1], 16 rows a warp): 8 warps on a 64-token chunk would hold and
   compute every tile twice, so these kernels run 4 warps per 64 tokens (CONFIGS). A (64, 128) fp32 accumulator is
   then 64 registers a thread, which is why dq and dk share a program but dv (linear core) does not.

Precision of the products with W: exp turns an absolute error in u into a relative error of the feature, so u
needs more than bf16 (a single bf16 W' gave 5e-3 output error at D = 128, half of bf16's tolerance). 16-bit
inputs are exact in their own type; the feature kernels and fp16 inputs split W' into two copies of that type
with hi + lo = W' (to ~2^-16 relative): u = x hi^T + x lo^T, two 16-bit tensor-core products. bf16 inputs in the
fused attention (BF16_PROJECTION = "fp16") use one fp16 product instead, x 2^-8 times W' 2^8 (`_proj_input`):
W' to 2^-11 like tf32, at the 16-bit rate, half the split's products (the forward pass is compute-bound).
fp32 inputs use W' in fp32, IEEE. The linear core's products
follow `linear_attn.kernels._mm` (bf16 operands for bf16 inputs; fp32 operands, tf32 for fp16 and IEEE for fp32
inputs), and the features are rounded to that dtype once, so that the numerator, the denominator and the saved
copy see the same values: bf16 for bf16 inputs, fp32 for fp16 (they span e^-20..1, beyond fp16's range) and fp32
inputs. The stabilisers, z, the denominator and all accumulators are fp32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._runtime import launch_fewer_stages
from ..linear_attn import kernels as lin
from ..linear_attn.kernels import _mm, _mm_operand, _pow2, _precision, _strides, state_dtype

KIND_SOFTMAX = 0
KIND_RELU = 1
MODE_QUERY = 0        # softmax: subtract each row's max exponent
MODE_KEY = 1          # softmax: subtract a given per-(batch, head) offset
MODE_BLOCK_MAX = 2    # softmax: only write each block's max exponent (to build the key offset)

BLOCK_N = 64
BLOCK_M = 64
NUM_WARPS = 4
NUM_WARPS_BWD = 8  # the backward holds x~ and the (64, D) accumulator in fp32: 4 warps would use 255 registers

# Launch parameters of the fused kernels: (BK feature block, BV value block, num_warps at 64-token chunks,
# num_stages); BV = 0: all of Dv in one block (`_favor_dqk_kernel` holds the chunk's dO and V whole). num_warps
# scales with the chunk (8 at 128 tokens), never 8 warps on 64 tokens (the "chained dots" of the module docstring).
# Chosen from an offline sm_90 compile (ptxas -v, triton 3.9) at D = Dv = 128, m = 256, bf16, chunk 64: 248, 242
# and 248 registers a thread, no spills, 2 CTAs per SM (docs/lowrank.md).
# (BK, BV, warps, stages) at 64-token chunks. Stages from `scripts/gpu_lowrank.py --performer-sweep` (H200,
# 2026-12-01, N = 16384, H = 64, D = 128, m = 256, bf16): 3 stages moved the output pass 2.87 -> 2.50 ms and
# dq/dk 5.13 -> 3.97 ms (backward total) over 2 and 1: their feature loops wait on loads otherwise.
CONFIGS = {
    "favor_state_fwd": (64, 128, 4, 3),
    "favor_output_fwd": (32, 128, 4, 3),
    "favor_dqk": (16, 0, 4, 3),
    # The linear core's kernels on the saved features, at Dk = m (256) rather than the core's D = 128, so with
    # entries of their own. --performer-sweep (H200, 2026-12-02, same shape): the reverse state pass with all of
    # Dv in one block (64 x 128, 3 stages) 3.94 -> 3.47 ms backward (the core's 64 x 64: twice the programs, each
    # reading the same features); dv: its core config (64 x 128, 2 stages; 3 stages within 0.3%).
    "favor_state_bwd": (64, 128, 4, 3),
    "favor_dv": lin.CONFIGS["dv_bwd"],
}
# The key stabiliser pass (`_favor_fwd_kernel` MODE_BLOCK_MAX): (rows a program, feature block, warps, stages).
# Its products feed only a max (no chained dots), so it may run 8 warps on 128 rows; in the same sweep 64 or 128
# rows, 4 or 8 warps all gave forward times within 0.2% (2.498-2.503 ms), so the original launch stays.
KEY_MAX_CONFIG = (BLOCK_N, BLOCK_M, NUM_WARPS, 3)
# Which of dq, dk one `_favor_dqk_kernel` program accumulates (causal). Each is a (BT, D) fp32 tile held across
# the feature loop (64 registers a thread at D = 128, 4 warps per 64 tokens); ("qk",) shares dA and the loads of
# the features (with BK = 16 it fits: BK = 32 spills), ("q", "k") reads them twice with ~170 registers.
DQK_GROUPS = ("qk",)
FUSED_MAX_DIM = 128  # the fused kernels hold (BT, D) and (BT, Dv) fp32 accumulators; larger heads use the unfused path


# ----------------------------------------------------------------------------------------------- shared helpers


@triton.jit
def _load_wt(w_hi, w_lo, o_m, m_m, o_d, m_d, D: tl.constexpr, SPLIT: tl.constexpr):
    """The (BD, BM) tile W'[o_m]^T of both halves (the lo half only when SPLIT; otherwise hi twice)."""
    p = o_m[None, :] * D + o_d[:, None]
    msk = m_d[:, None] & m_m[None, :]
    wt_hi = tl.load(w_hi + p, mask=msk, other=0.0)
    if SPLIT:
        wt_lo = tl.load(w_lo + p, mask=msk, other=0.0)
    else:
        wt_lo = wt_hi
    return wt_hi, wt_lo


@triton.jit
def _proj_input(x, X16: tl.constexpr):
    """The x operand of the products with W'. X16 (bf16 inputs, fused path): x 2^-8 in fp16, exact for
    2^-6 <= |x| < 1.7e7 (bf16's 8 significant bits fit fp16's 11; below, fp16 subnormals keep an absolute error
    <= 2^-17; above, it saturates instead of overflowing to inf); W' comes as fp16 W' 2^8, so the scales cancel."""
    if X16:  # one return: triton's compiler wants a single return type even across constexpr branches
        x = tl.minimum(tl.maximum(x.to(tl.float32) * 0.00390625, -65504.0), 65504.0).to(tl.float16)
    return x


@triton.jit
def _project(x, wt_hi, wt_lo, SPLIT: tl.constexpr, PREC: tl.constexpr):
    """u = x W'^T (fp32) of a raw (R, BD) tile x in its storage dtype: x hi^T + x lo^T (SPLIT) or x W'^T."""
    u = tl.dot(x, wt_hi, input_precision=PREC)
    if SPLIT:
        u = tl.dot(x, wt_lo, u, input_precision=PREC)
    return u


@triton.jit
def _sq(x, sq_scale):
    """|x~|^2 / 2 per row of a raw tile (sq_scale = D^-1/2 / 2), fp32."""
    xf = x.to(tl.float32)
    return tl.sum(xf * xf, axis=1) * sq_scale


@triton.jit
def _features(u, sub, valid, ratio, kernel_eps, KIND: tl.constexpr):
    """Features from u (R, BM) fp32. softmax: exp(u - sub) / sqrt(m), sub (R,) = |x~|^2/2 + the stabiliser;
    relu: relu(u) + kernel_eps. Entries outside `valid` (rows past N, features past m) are 0."""
    if KIND == 0:
        f = tl.exp(u - sub[:, None]) * ratio
    else:
        f = tl.maximum(u, 0.0) + kernel_eps
    return tl.where(valid, f, 0.0)


@triton.jit
def _chain(g, f, kernel_eps, w, acc, rs, KIND: tl.constexpr, F32: tl.constexpr, PREC: tl.constexpr):
    """The feature map's backward for one feature block: g = d loss / d f (R, BM), f the block's features (fp32),
    w = W'_blk (BM, BD). softmax: acc += (g*f) W'_blk and rs += rowsum(g*f) (for the |x~|^2/2 term, which the
    caller applies); relu: acc += (g*[u > 0]) W'_blk, where u > 0 exactly when f = relu(u) + kernel_eps > kernel_eps."""
    if KIND == 0:
        p = g * f
        rs += tl.sum(p, axis=1)
    else:
        p = tl.where(f > kernel_eps, g, 0.0)
    return _mm(p, w, acc, F32, PREC), rs


# ----------------------------------------------------------------------------------------------- features alone


@triton.jit
def _favor_fwd_kernel(
    x, w_hi, w_lo, f, offset,
    s_xb, s_xn, s_xh, s_fb, s_fn, s_fh,
    N, NB, sq_scale, ratio, kernel_eps,
    H, D: tl.constexpr, M: tl.constexpr,
    BN: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr,
    KIND: tl.constexpr, MODE: tl.constexpr, SPLIT: tl.constexpr, X16: tl.constexpr, PREC: tl.constexpr,
):
    i_n = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    rows = i_n * BN + tl.arange(0, BN)
    m_n = rows < N
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    p_x = x + i_b * s_xb + i_h * s_xh + rows[:, None].to(tl.int64) * s_xn + o_d[None, :]
    b_x = tl.load(p_x, mask=m_n[:, None] & m_d[None, :], other=0.0)
    b_sq = _sq(b_x, sq_scale)
    b_x = _proj_input(b_x, X16)

    b_c = tl.zeros([BN], dtype=tl.float32)
    if KIND == 0:
        if MODE == 1:
            b_c += tl.load(offset + i_bh)
        else:
            # the row max needs every feature before the first exp: a first pass over W (compute, no bytes)
            b_c = tl.full([BN], float("-inf"), dtype=tl.float32)
            for i_m in range((M + BM - 1) // BM):
                o_m = i_m * BM + tl.arange(0, BM)
                m_m = o_m < M
                wt_hi, wt_lo = _load_wt(w_hi, w_lo, o_m, m_m, o_d, m_d, D, SPLIT)
                b_u = tl.where(m_m[None, :], _project(b_x, wt_hi, wt_lo, SPLIT, PREC), float("-inf"))
                b_c = tl.maximum(b_c, tl.max(b_u, axis=1) - b_sq)
    if MODE == 2:
        b_c = tl.where(m_n, b_c, float("-inf"))
        tl.store(offset + i_bh * NB + i_n, tl.max(b_c, axis=0))
    else:
        p_f = f + i_b * s_fb + i_h * s_fh + rows[:, None].to(tl.int64) * s_fn
        for i_m in range((M + BM - 1) // BM):
            o_m = i_m * BM + tl.arange(0, BM)
            m_m = o_m < M
            wt_hi, wt_lo = _load_wt(w_hi, w_lo, o_m, m_m, o_d, m_d, D, SPLIT)
            b_u = _project(b_x, wt_hi, wt_lo, SPLIT, PREC)
            b_f = _features(b_u, b_sq + b_c, m_n[:, None] & m_m[None, :], ratio, kernel_eps, KIND)
            tl.store(p_f + o_m[None, :], b_f.to(f.dtype.element_ty), mask=m_n[:, None] & m_m[None, :])


@triton.jit
def _favor_bwd_kernel(
    x, w, f, df, dx,
    s_xb, s_xn, s_xh, s_fb, s_fn, s_fh, s_gb, s_gn, s_gh, s_db, s_dn, s_dh,
    N, data_scale,
    H, D: tl.constexpr, M: tl.constexpr,
    BN: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr,
    KIND: tl.constexpr, PREC: tl.constexpr,
):
    """dx of `favor_fwd`'s features from df; w is the fp32 W (unscaled), products in fp32 operands (PREC)."""
    i_n = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    rows = i_n * BN + tl.arange(0, BN)
    m_n = rows < N
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    m_nd = m_n[:, None] & m_d[None, :]
    rows64 = rows[:, None].to(tl.int64)
    b_x = tl.load(x + i_b * s_xb + i_h * s_xh + rows64 * s_xn + o_d[None, :], mask=m_nd, other=0.0)
    b_x = b_x.to(tl.float32) * data_scale
    b_acc = tl.zeros([BN, BD], dtype=tl.float32)
    b_rs = tl.zeros([BN], dtype=tl.float32)
    for i_m in range((M + BM - 1) // BM):
        o_m = i_m * BM + tl.arange(0, BM)
        m_m = o_m < M
        m_nm = m_n[:, None] & m_m[None, :]
        b_w = tl.load(w + o_m[:, None] * D + o_d[None, :], mask=m_m[:, None] & m_d[None, :], other=0.0)
        b_df = tl.load(df + i_b * s_gb + i_h * s_gh + rows64 * s_gn + o_m[None, :], mask=m_nm, other=0.0)
        b_df = b_df.to(tl.float32)
        if KIND == 0:
            b_f = tl.load(f + i_b * s_fb + i_h * s_fh + rows64 * s_fn + o_m[None, :], mask=m_nm, other=0.0)
            b_p = b_f.to(tl.float32) * b_df
            b_rs += tl.sum(b_p, axis=1)
        else:
            b_u = tl.dot(b_x, tl.trans(b_w), input_precision=PREC)
            b_p = tl.where(b_u > 0, b_df, 0.0)
        b_acc = tl.dot(b_p, b_w, b_acc, input_precision=PREC)
    if KIND == 0:
        b_acc -= b_rs[:, None] * b_x
    p_dx = dx + i_b * s_db + i_h * s_dh + rows64 * s_dn + o_d[None, :]
    tl.store(p_dx, (b_acc * data_scale).to(dx.dtype.element_ty), mask=m_nd)


# ----------------------------------------------------------------------------------------------- fused attention


@triton.jit
def _favor_state_fwd_kernel(
    k, v, w_hi, w_lo, koff, h, z, ht, zt, fk,
    s_kb, s_kn, s_kh, s_vb, s_vn, s_vh, s_fb, s_fn, s_fh,
    T, NC, sq_scale, ratio, kernel_eps,
    H, D: tl.constexpr, M: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    KIND: tl.constexpr, STORE_ALL: tl.constexpr, STORE_FINAL: tl.constexpr, SAVE: tl.constexpr,
    SPLIT: tl.constexpr, X16: tl.constexpr, F32: tl.constexpr, PREC: tl.constexpr,
):
    """Pass 1 (`linear_attn.kernels._state_fwd_kernel`) on raw keys: per (b, h, feature block, Dv block), walk the
    chunks, computing the chunk's feature block phi(K_c) on chip; the program's slice of W' is loaded once.
    h: (B*H, NC, M, V), z: (B*H, NC, M) (STORE_ALL, causal); ht, zt: the total in fp32 (STORE_FINAL).
    SAVE (training): phi(k) (B, T, H, M) for the backward pass, written by the Dv-block-0 programs."""
    i_kv = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    NV = (V + BV - 1) // BV
    i_k = i_kv // NV
    i_v = i_kv % NV
    i_b = i_bh // H
    i_h = i_bh % H
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    o_d = tl.arange(0, BD)
    m_k = o_k < M
    m_v = o_v < V
    m_d = o_d < D
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    m_z = m_k & ((o_k * 0 + i_v) == 0)  # z (and phi(k)) are stored by the Dv-block-0 programs
    wt_hi, wt_lo = _load_wt(w_hi, w_lo, o_k, m_k, o_d, m_d, D, SPLIT)
    c = 0.0
    if KIND == 0:
        c = tl.load(koff + i_bh)

    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    b_z = tl.zeros([BK], dtype=tl.float32)
    rows = tl.arange(0, BT)
    p_k = k + i_b * s_kb + i_h * s_kh
    p_v = v + i_b * s_vb + i_h * s_vh
    p_h = h + i_bh * NC * M * V
    p_z = z + i_bh * NC * M
    p_f = fk + i_b * s_fb + i_h * s_fh
    for i_c in range(NC):
        if STORE_ALL:
            tl.store(p_h + o_kv, b_h.to(p_h.dtype.element_ty), mask=m_kv)
            tl.store(p_z + o_k, b_z, mask=m_z)
        m_t = rows < T - i_c * BT
        b_x = tl.load(p_k + rows[:, None] * s_kn + o_d[None, :], mask=m_t[:, None] & m_d[None, :], other=0.0)
        b_f = _features(_project(_proj_input(b_x, X16), wt_hi, wt_lo, SPLIT, PREC), _sq(b_x, sq_scale) + c,
                        m_t[:, None] & m_k[None, :], ratio, kernel_eps, KIND)
        b_f = _mm_operand(b_f, F32)  # rounded once: z, the state and the saved copy all see the same features
        if SAVE:
            tl.store(p_f + rows[:, None] * s_fn + o_k[None, :], b_f.to(p_f.dtype.element_ty),
                     mask=m_t[:, None] & m_z[None, :])
        b_v = tl.load(p_v + rows[:, None] * s_vn + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)
        b_h = _mm(tl.trans(b_f), b_v, b_h, F32, PREC)
        b_z += tl.sum(b_f.to(tl.float32), axis=0)  # over the chunk's rows: axis 0 (_state_fwd_kernel, triton 3.6)
        p_k += BT * s_kn
        p_v += BT * s_vn
        p_f += BT * s_fn
        p_h += M * V
        p_z += M
    if STORE_FINAL:
        tl.store(ht + i_bh * M * V + o_kv, b_h, mask=m_kv)
        tl.store(zt + i_bh * M + o_k, b_z, mask=m_z)


@triton.jit
def _favor_output_fwd_kernel(
    q, k, v, w_hi, w_lo, koff, h, z, o, den, fq, fk,
    s_qb, s_qn, s_qh, s_kb, s_kn, s_kh, s_vb, s_vn, s_vh, s_ob, s_on, s_oh, s_fb, s_fn, s_fh, s_gb, s_gn, s_gh,
    T, NC, eps, sq_scale, ratio, kernel_eps,
    H, D: tl.constexpr, M: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    KIND: tl.constexpr, CAUSAL: tl.constexpr, SAVE: tl.constexpr, SPLIT: tl.constexpr, X16: tl.constexpr,
    F32: tl.constexpr, PREC: tl.constexpr,
):
    """Pass 2 (`linear_attn.kernels._output_fwd_kernel`) on raw q, k: one program per (chunk, Dv block) x (b, h)
    walks the feature blocks, computing phi(Q_c) block by block. SAVE (training): den (B*H, T) fp32 and phi(q)
    (B, T, H, M) for the backward pass (written by the Dv-block-0 programs). phi(K_c) for the intra-chunk term:
    causal and SAVE, read back from fk, where pass 1 has just saved it (2 bytes a feature against 2 products of
    BT x D x m to recompute it: on the H200 the forward was compute-bound); otherwise recomputed from k."""
    i_cv = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    NV = (V + BV - 1) // BV
    i_c = (i_cv // NV).to(tl.int64)
    i_v = i_cv % NV
    i_b = i_bh // H
    i_h = i_bh % H
    o_t = i_c * BT + tl.arange(0, BT)
    m_t = o_t < T
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    m_td = m_t[:, None] & m_d[None, :]
    if CAUSAL:
        p_hc = h + (i_bh * NC + i_c) * M * V
        p_zc = z + (i_bh * NC + i_c) * M
    else:
        p_hc = h + i_bh * M * V
        p_zc = z + i_bh * M
    m_save = m_t & ((o_t * 0 + i_v) == 0)
    p_f = i_b * s_fb + i_h * s_fh + o_t[:, None] * s_fn  # row offsets into the saved features

    b_xq = tl.load(q + i_b * s_qb + i_h * s_qh + o_t[:, None] * s_qn + o_d[None, :], mask=m_td, other=0.0)
    b_subq = _sq(b_xq, sq_scale)
    b_xq = _proj_input(b_xq, X16)
    if KIND == 0:
        # The query stabiliser, each row's max exponent, from a first pass over W' with one 16-bit product (hi
        # only: compute, no bytes). Any per-row constant cancels; being within e^(2^-8 |u|) of the exact max keeps
        # the features <= ~1/sqrt(m). A fixed constant rather than a running max (flash attention's rescaling)
        # because the features are stored for the backward pass as they are computed.
        b_m = tl.full([BT], float("-inf"), dtype=tl.float32)
        for i_k in range((M + BK - 1) // BK):
            o_k = i_k * BK + tl.arange(0, BK)
            m_k = o_k < M
            wt_hi, wt_lo = _load_wt(w_hi, w_lo, o_k, m_k, o_d, m_d, D, False)
            b_u = tl.where(m_k[None, :], _project(b_xq, wt_hi, wt_lo, False, PREC), float("-inf"))
            b_m = tl.maximum(b_m, tl.max(b_u, axis=1))
        b_subq = b_m  # exp(u - |x~|^2/2 - (max u - |x~|^2/2)) = exp(u - max u)
    LOAD_FK: tl.constexpr = CAUSAL and SAVE
    p_g = fk + i_b * s_gb + i_h * s_gh + o_t[:, None] * s_gn
    if CAUSAL and not LOAD_FK:
        b_xk = tl.load(k + i_b * s_kb + i_h * s_kh + o_t[:, None] * s_kn + o_d[None, :], mask=m_td, other=0.0)
        b_subk = _sq(b_xk, sq_scale)
        b_xk = _proj_input(b_xk, X16)
        if KIND == 0:
            b_subk += tl.load(koff + i_bh)
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    b_den = tl.zeros([BT], dtype=tl.float32)
    for i_k in range((M + BK - 1) // BK):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < M
        m_tk = m_t[:, None] & m_k[None, :]
        wt_hi, wt_lo = _load_wt(w_hi, w_lo, o_k, m_k, o_d, m_d, D, SPLIT)
        b_fq = _features(_project(b_xq, wt_hi, wt_lo, SPLIT, PREC), b_subq, m_tk, ratio, kernel_eps, KIND)
        # rounded once to the products' dtype: numerator, denominator and the saved copy see the same features
        # (rounding then acts like a slightly different feature map instead of a numerator/denominator mismatch)
        b_fq = _mm_operand(b_fq, F32)
        b_s = tl.load(p_hc + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.0)
        b_o = _mm(b_fq, b_s, b_o, F32, PREC)
        b_den += tl.sum(b_fq.to(tl.float32) * tl.load(p_zc + o_k, mask=m_k, other=0.0)[None, :], axis=1)
        if SAVE:
            tl.store(fq + p_f + o_k[None, :], b_fq.to(fq.dtype.element_ty), mask=m_save[:, None] & m_k[None, :])
        if LOAD_FK:
            b_fk = tl.load(p_g + o_k[None, :], mask=m_tk, other=0.0)
            b_A = _mm(b_fq, tl.trans(b_fk), b_A, F32, PREC)
        elif CAUSAL:
            b_fk = _features(_project(b_xk, wt_hi, wt_lo, SPLIT, PREC), b_subk, m_tk, ratio, kernel_eps, KIND)
            b_A = _mm(b_fq, tl.trans(b_fk), b_A, F32, PREC)
    if CAUSAL:
        b_A = tl.where(o_t[:, None] >= o_t[None, :], b_A, 0.0)
        b_den += tl.sum(b_A, axis=1)
        b_v = tl.load(v + i_b * s_vb + i_h * s_vh + o_t[:, None] * s_vn + o_v[None, :],
                      mask=m_t[:, None] & m_v[None, :], other=0.0)
        b_o = _mm(b_A, b_v, b_o, F32, PREC)
    b_den = b_den + eps
    b_o = b_o / b_den[:, None]
    if SAVE:
        tl.store(den + i_bh * T + o_t, b_den, mask=m_save)
    p_o = o + i_b * s_ob + i_h * s_oh + o_t[:, None] * s_on + o_v[None, :]
    tl.store(p_o, b_o.to(p_o.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])


@triton.jit
def _favor_dqk_kernel(
    q, k, fq, fk, v, do, w, den, dd, h, z, dh, dz, dq, dk,
    s_qb, s_qn, s_qh, s_kb, s_kn, s_kh, s_fb, s_fn, s_fh, s_gb, s_gn, s_gh, s_vb, s_vn, s_vh, s_db, s_dn, s_dh,
    s_dqb, s_dqn, s_dqh, s_dkb, s_dkn, s_dkh,
    T, NC, sq_scale, kernel_eps,
    H, D: tl.constexpr, M: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    KIND: tl.constexpr, CAUSAL: tl.constexpr, DO_Q: tl.constexpr, DO_K: tl.constexpr,
    F32: tl.constexpr, PREC: tl.constexpr,
):
    """dq and/or dk of one chunk x (b, h): `linear_attn.kernels._dqk_bwd_kernel` on the saved features with the
    feature map's backward folded in. Per feature block (the program walks all of them)

        d phi(q) = dA phi(k) + dN S^T + dd z^T,   d phi(k) = dA^T phi(q) + V dS^T + dz,   dA = tril(dN V^T + dd)

    goes through the chain rule (`_chain`) into a (BT, D) fp32 accumulator at once: the feature gradients never
    leave the chip. Non-causal: no intra-chunk terms, h/z/dh/dz the totals, launched over the query chunks (DO_Q)
    and over the key chunks (DO_K). BV >= V: all of Dv in one block. w: W' (the hi half) (M, D)."""
    i_c = tl.program_id(0).to(tl.int64)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    o_t = i_c * BT + tl.arange(0, BT)
    m_t = o_t < T
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    o_v = tl.arange(0, BV)
    m_v = o_v < V
    m_td = m_t[:, None] & m_d[None, :]
    m_tv = m_t[:, None] & m_v[None, :]
    if CAUSAL:
        p_hc = h + (i_bh * NC + i_c) * M * V
        p_dhc = dh + (i_bh * NC + i_c) * M * V
        p_zc = z + (i_bh * NC + i_c) * M
        p_dzc = dz + (i_bh * NC + i_c) * M
    else:
        p_hc = h + i_bh * M * V
        p_dhc = dh + i_bh * M * V
        p_zc = z + i_bh * M
        p_dzc = dz + i_bh * M
    p_fq = fq + i_b * s_fb + i_h * s_fh + o_t[:, None] * s_fn
    p_fk = fk + i_b * s_gb + i_h * s_gh + o_t[:, None] * s_gn

    if DO_Q or CAUSAL:
        # dN = dO / den is never formed: dN X = diag(1/den) (dO X), so dO goes into the products as loaded (from
        # shared memory, no register copy) and the rows are scaled in fp32 afterwards
        b_do = tl.load(do + i_b * s_db + i_h * s_dh + o_t[:, None] * s_dn + o_v[None, :], mask=m_tv, other=0.0)
        b_rden = 1.0 / tl.load(den + i_bh * T + o_t, mask=m_t, other=1.0)
        b_dd = tl.load(dd + i_bh * T + o_t, mask=m_t, other=0.0)
    if DO_K or CAUSAL:
        b_v = tl.load(v + i_b * s_vb + i_h * s_vh + o_t[:, None] * s_vn + o_v[None, :], mask=m_tv, other=0.0)
    if CAUSAL:
        b_dA = _mm(b_do, tl.trans(b_v), tl.zeros([BT, BT], dtype=tl.float32), F32, PREC)
        b_dA = b_dA * b_rden[:, None] + b_dd[:, None]
        b_dA = _mm_operand(tl.where(o_t[:, None] >= o_t[None, :], b_dA, 0.0), F32)  # cast once, used per block

    b_dxq = tl.zeros([BT, BD], dtype=tl.float32)
    b_rsq = tl.zeros([BT], dtype=tl.float32)
    b_dxk = tl.zeros([BT, BD], dtype=tl.float32)
    b_rsk = tl.zeros([BT], dtype=tl.float32)
    for i_k in range((M + BK - 1) // BK):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < M
        m_tk = m_t[:, None] & m_k[None, :]
        m_kv = m_k[:, None] & m_v[None, :]
        b_w = tl.load(w + o_k[:, None] * D + o_d[None, :], mask=m_k[:, None] & m_d[None, :], other=0.0)
        if DO_Q or CAUSAL:
            b_fq = tl.load(p_fq + o_k[None, :], mask=m_tk, other=0.0)
        if DO_K or CAUSAL:
            b_fk = tl.load(p_fk + o_k[None, :], mask=m_tk, other=0.0)
        if DO_Q:
            b_s = tl.load(p_hc + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)
            b_g = _mm(b_do, tl.trans(b_s), tl.zeros([BT, BK], dtype=tl.float32), F32, PREC) * b_rden[:, None]
            b_g += b_dd[:, None] * tl.load(p_zc + o_k, mask=m_k, other=0.0)[None, :]
            if CAUSAL:
                b_g = _mm(b_dA, b_fk, b_g, F32, PREC)
            b_dxq, b_rsq = _chain(b_g, b_fq.to(tl.float32), kernel_eps, b_w, b_dxq, b_rsq, KIND, F32, PREC)
        if DO_K:
            b_ds = tl.load(p_dhc + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)
            b_g = _mm(b_v, tl.trans(b_ds), tl.zeros([BT, BK], dtype=tl.float32), F32, PREC)
            b_g += tl.load(p_dzc + o_k, mask=m_k, other=0.0)[None, :]
            if CAUSAL:
                b_g = _mm(tl.trans(b_dA), b_fq, b_g, F32, PREC)
            b_dxk, b_rsk = _chain(b_g, b_fk.to(tl.float32), kernel_eps, b_w, b_dxk, b_rsk, KIND, F32, PREC)
    sq2 = 2.0 * sq_scale  # D^-1/2: the gradient of |x~|^2/2 is x D^-1/2
    if DO_Q:
        p_xq = q + i_b * s_qb + i_h * s_qh + o_t[:, None] * s_qn + o_d[None, :]
        if KIND == 0:
            b_dxq -= b_rsq[:, None] * (tl.load(p_xq, mask=m_td, other=0.0).to(tl.float32) * sq2)
        p_dq = dq + i_b * s_dqb + i_h * s_dqh + o_t[:, None] * s_dqn + o_d[None, :]
        tl.store(p_dq, b_dxq.to(p_dq.dtype.element_ty), mask=m_td)
    if DO_K:
        p_xk = k + i_b * s_kb + i_h * s_kh + o_t[:, None] * s_kn + o_d[None, :]
        if KIND == 0:
            b_dxk -= b_rsk[:, None] * (tl.load(p_xk, mask=m_td, other=0.0).to(tl.float32) * sq2)
        p_dk = dk + i_b * s_dkb + i_h * s_dkh + o_t[:, None] * s_dkn + o_d[None, :]
        tl.store(p_dk, b_dxk.to(p_dk.dtype.element_ty), mask=m_td)


# ----------------------------------------------------------------------------------------------- launchers


def _prec(dtype):
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


def split_projection(w: torch.Tensor, dtype: torch.dtype):
    """W' = W D^-1/4 for inputs of `dtype`: 16-bit dtypes get (hi, lo) in that dtype with hi + lo = W' (to ~2^-16
    relative), float32 gets (W', W') in fp32 (lo unused). w: (m, D), any float dtype; returns contiguous tensors."""
    ws = w.detach().float() * w.shape[1] ** -0.25
    if dtype == torch.float32:
        ws = ws.contiguous()
        return ws, ws
    hi = ws.to(dtype)
    return hi.contiguous(), (ws - hi.float()).to(dtype).contiguous()


# bf16 inputs in the fused path: "fp16" multiplies x 2^-8 (exact in fp16 over 2^-6 <= |x| < 1.7e7) by W' 2^8 in
# fp16, one product with W' to 2^-11 (the tf32 accuracy the first version had, at the 16-bit rate; output error
# ~1e-3 of bf16's 1e-2 in a float64 simulation); "split" the two bf16 products of W' = hi + lo (to ~2^-16). The
# forward pass is compute-bound (H200, 2026-12-01: 2.99 ms for ~0.74 TFLOP with "split"), and the products with W
# are ~3/4 of its FLOPs.
BF16_PROJECTION = "fp16"


def fused_projection(w: torch.Tensor, dtype: torch.dtype):
    """The projection operands of the fused kernels for inputs of `dtype`: (w_hi, w_lo, SPLIT, X16, w_chain).
    w_chain: W' in the products' dtype for the feature map's backward (`_chain`)."""
    if dtype == torch.bfloat16 and BF16_PROJECTION == "fp16":
        ws = w.detach().float() * w.shape[1] ** -0.25
        w16 = (ws * 256.0).to(torch.float16).contiguous()
        return w16, w16, False, True, ws.to(torch.bfloat16).contiguous()
    w_hi, w_lo = split_projection(w, dtype)
    return w_hi, w_lo, _split(dtype), False, w_hi


def _split(dtype) -> bool:
    return dtype != torch.float32


def favor_fwd(x: torch.Tensor, w_hi: torch.Tensor, w_lo: torch.Tensor, kind: int, mode: int, out_dtype: torch.dtype,
              offset: torch.Tensor | None = None, kernel_eps: float = 0.0, split: bool | None = None,
              x16: bool = False):
    """x (B, N, H, D) unit stride in D; (w_hi, w_lo) from `split_projection(w, x.dtype)` (or `fused_projection`
    with its split and x16). MODE_QUERY / MODE_KEY (needs offset (B*H,) fp32) -> features (B, N, H, m) of
    out_dtype; MODE_BLOCK_MAX -> the per-(batch*head) max exponent (B*H,) fp32. split=False: one product with
    w_hi only (enough for a stabiliser); default: both halves for 16-bit x."""
    B, N, H, D = x.shape
    M = w_hi.shape[0]
    BD = max(16, _pow2(D))
    split = _split(x.dtype) if split is None else split
    common = dict(H=H, D=D, M=M, BD=BD, KIND=kind, MODE=mode, SPLIT=split, X16=x16, PREC=_prec(x.dtype))
    if mode == MODE_BLOCK_MAX:
        bn, bm, warps, stages = KEY_MAX_CONFIG
        bm = min(bm, max(16, _pow2(M)))
        NB = triton.cdiv(N, bn)
        part = torch.empty(B * H, NB, device=x.device, dtype=torch.float32)
        launch_fewer_stages(_favor_fwd_kernel, (NB, B * H), x, w_hi, w_lo, part, part, *_strides(x), 0, 0, 0, N,
                            NB, 0.5 / D ** 0.5, M ** -0.5, kernel_eps, BN=bn, BM=bm, num_warps=warps,
                            num_stages=stages, **common)
        return part.amax(dim=1)
    NB = triton.cdiv(N, BLOCK_N)
    common.update(BN=BLOCK_N, BM=BLOCK_M, num_warps=NUM_WARPS)
    f = torch.empty(B, N, H, M, device=x.device, dtype=out_dtype)
    _favor_fwd_kernel[(NB, B * H)](x, w_hi, w_lo, f, offset if offset is not None else f, *_strides(x),
                                   *_strides(f), N, NB, 0.5 / D ** 0.5, M ** -0.5, kernel_eps, **common)
    return f


def favor_bwd(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor, df: torch.Tensor, kind: int) -> torch.Tensor:
    """dx of `favor_fwd`'s features; w: the (m, D) fp32 projection (unscaled), contiguous."""
    B, N, H, D = x.shape
    M = w.shape[0]
    dx = torch.empty(B, N, H, D, device=x.device, dtype=x.dtype)
    _favor_bwd_kernel[(triton.cdiv(N, BLOCK_N), B * H)](
        x, w, f, df, dx, *_strides(x), *_strides(f), *_strides(df), *_strides(dx), N, D ** -0.25,
        H=H, D=D, M=M, BN=BLOCK_N, BD=max(16, _pow2(D)), BM=BLOCK_M, KIND=kind, PREC=_prec(x.dtype),
        num_warps=NUM_WARPS_BWD)
    return dx


def _fused_blocks(name: str, M: int, V: int, BT: int):
    bk, bv, warps, stages = CONFIGS[name]
    warps = max(4, warps * BT // 64)
    if BT > 64:  # 128-token chunks double every tile: 3 stages of the state pass need 256-288 KB (sm_90 has 227)
        stages = min(stages, 2)
    bk = min(bk, max(16, _pow2(M)))
    bv = max(16, _pow2(V)) if bv == 0 else min(bv, max(16, _pow2(V)))
    return bk, bv, warps, stages


def fused_fwd(q, k, v, proj, kind: int, causal: bool, eps: float, kernel_eps: float, chunk_size: int,
              save_for_backward: bool):
    """Performer attention forward, features fused (module docstring). q (B, Nq, H, D), k (B, Nk, H, D),
    v (B, Nk, H, V), all one dtype, unit stride in the last dim; proj = fused_projection(w, q.dtype)[:4].
    Returns o (B, Nq, H, V) in q's dtype and what the backward pass needs: the per-chunk states h, z (causal) or
    the total state (not), and when saving, den (B*H, Nq) fp32 and the features fq (B, Nq, H, m), fk (B, Nk, H, m)
    (bf16 for bf16 inputs, fp32 otherwise)."""
    w_hi, w_lo, SPLIT, X16 = proj
    B, Tq, H, D = q.shape
    Tk, V = k.shape[1], v.shape[3]
    M = w_hi.shape[0]
    BT = chunk_size
    BD = max(16, _pow2(D))
    F32, PREC = _precision(q.dtype)
    dev = q.device
    dummy32 = torch.empty(1, device=dev, dtype=torch.float32)
    scal = dict(sq_scale=0.5 / D ** 0.5, ratio=M ** -0.5, kernel_eps=kernel_eps)
    # the key stabiliser: one 16-bit product is enough for a constant that only has to keep exp in range
    koff = (favor_fwd(k, w_hi, w_lo, KIND_SOFTMAX, MODE_BLOCK_MAX, torch.float32, split=False, x16=X16)
            if kind == KIND_SOFTMAX else dummy32)
    fdt = torch.bfloat16 if q.dtype == torch.bfloat16 else torch.float32  # fp16 cannot hold the features' range
    fq = torch.empty(B, Tq, H, M, device=dev, dtype=fdt) if save_for_backward else dummy32
    fk = torch.empty(B, Tk, H, M, device=dev, dtype=fdt) if save_for_backward else dummy32
    NCk = triton.cdiv(Tk, BT)
    if causal:
        h = torch.empty(B * H, NCk, M, V, device=dev, dtype=state_dtype(q.dtype))
        z = torch.empty(B * H, NCk, M, device=dev, dtype=torch.float32)
        ht = zt = dummy32
    else:
        h = z = dummy32
        ht = torch.empty(B * H, M, V, device=dev, dtype=torch.float32)
        zt = torch.empty(B * H, M, device=dev, dtype=torch.float32)
    BK, BV, warps, stages = _fused_blocks("favor_state_fwd", M, V, BT)
    launch_fewer_stages(_favor_state_fwd_kernel, (triton.cdiv(M, BK) * triton.cdiv(V, BV), B * H),
        k, v, w_hi, w_lo, koff, h, z, ht, zt, fk, *_strides(k), *_strides(v), *_fstrides(fk), Tk, NCk, **scal,
        H=H, D=D, M=M, V=V, BT=BT, BD=BD, BK=BK, BV=BV, KIND=kind, STORE_ALL=causal, STORE_FINAL=not causal,
        SAVE=save_for_backward, SPLIT=SPLIT, X16=X16, F32=F32, PREC=PREC, num_warps=warps, num_stages=stages)
    if not causal:
        h, z = ht, zt
    o = torch.empty(B, Tq, H, V, device=dev, dtype=q.dtype)
    den = torch.empty(B * H, Tq, device=dev, dtype=torch.float32) if save_for_backward else dummy32
    NCq = triton.cdiv(Tq, BT)
    BK, BV, warps, stages = _fused_blocks("favor_output_fwd", M, V, BT)
    launch_fewer_stages(_favor_output_fwd_kernel, (NCq * triton.cdiv(V, BV), B * H),
        q, k, v, w_hi, w_lo, koff, h, z, o, den, fq, fk,
        *_strides(q), *_strides(k), *_strides(v), *_strides(o), *_fstrides(fq), *_fstrides(fk), Tq, NCq, eps, **scal,
        H=H, D=D, M=M, V=V, BT=BT, BD=BD, BK=BK, BV=BV, KIND=kind, CAUSAL=causal, SAVE=save_for_backward,
        SPLIT=SPLIT, X16=X16, F32=F32, PREC=PREC, num_warps=warps, num_stages=stages)
    return o, {"den": den, "fq": fq, "fk": fk, "h": h, "z": z}


def _fstrides(f):
    return _strides(f) if f.dim() == 4 else (0, 0, 0)


def fused_bwd(do, q, k, v, o, w_chain, saved: dict, kind: int, causal: bool, kernel_eps: float, chunk_size: int):
    """Backward of `fused_fwd`: dq, dk, dv (in the inputs' dtype). do like o, unit stride in the last dim;
    w_chain = fused_projection(w, q.dtype)[4]: W' for the chain rule's products.
    The state pass and dv are the linear core's kernels on the saved features (identity feature map); dq and dk
    come from `_favor_dqk_kernel`, the feature map's backward fused in."""
    B, Tq, H, D = q.shape
    Tk, V = k.shape[1], v.shape[3]
    M = w_chain.shape[0]
    BT = chunk_size
    F32, PREC = _precision(q.dtype)
    den, fq, fk = saved["den"], saved["fq"], saved["fk"]
    NCq, NCk = triton.cdiv(Tq, BT), triton.cdiv(Tk, BT)
    dd = lin.bwd_dd(o, do, den, M, BT)
    dh, dz, _, _ = lin.bwd_states(fq, do, den, dd, causal, True, lin.FEATURE_IDENTITY, None, None, False, BT,
                                  config=CONFIGS["favor_state_bwd"])
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    BK, BV, warps, stages = _fused_blocks("favor_dqk", M, V, BT)
    args = (q, k, fq, fk, v, do, w_chain, den, dd, saved["h"], saved["z"], dh, dz, dq, dk,
            *_strides(q), *_strides(k), *_strides(fq), *_strides(fk), *_strides(v), *_strides(do), *_strides(dq),
            *_strides(dk))
    common = dict(H=H, D=D, M=M, V=V, BT=BT, BD=max(16, _pow2(D)), BK=BK, BV=BV, KIND=kind, CAUSAL=causal,
                  F32=F32, PREC=PREC, num_warps=warps, num_stages=stages)
    if causal:
        for group in DQK_GROUPS:
            launch_fewer_stages(_favor_dqk_kernel, (NCq, B * H), *args, Tq, NCq, 0.5 / D ** 0.5, kernel_eps,
                                DO_Q="q" in group, DO_K="k" in group, **common)
    else:  # the query side needs nothing of the keys' chunks and vice versa
        launch_fewer_stages(_favor_dqk_kernel, (NCq, B * H), *args, Tq, NCq, 0.5 / D ** 0.5, kernel_eps,
                            DO_Q=True, DO_K=False, **common)
        launch_fewer_stages(_favor_dqk_kernel, (NCk, B * H), *args, Tk, NCk, 0.5 / D ** 0.5, kernel_eps,
                            DO_Q=False, DO_K=True, **common)
    dv = lin.bwd_dv(fq, fk, do, den, dh, v.dtype, causal, True, lin.FEATURE_IDENTITY, BT, config=CONFIGS["favor_dv"])
    return dq, dk, dv
