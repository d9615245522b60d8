"""Triton kernels of (normalised) linear attention: the chunked causal form, the non-causal form, the recurrent form.

Notation (one batch row b and head h; phi = the feature map, applied inside the kernels when built in):

    q_t = phi(Q_t), k_s = phi(K_s)                    (Dk features)   v_s (Dv)
    causal:      num_t = sum_{s<=t} (q_t . k_s) v_s,   den_t = q_t . z_t + eps,   z_t = sum_{s<=t} k_s
    non-causal:  num_t = q_t S,                       den_t = q_t . z + eps,     S = sum_s k_s v_s^T, z = sum_s k_s
    o_t = num_t / den_t   (normalize=True)   or   o_t = num_t   (normalize=False)

The chunked causal form (chunk size BT = 64 on the GPU), as in flash-linear-attention:

    pass 1 (`_state_fwd_kernel`, sequential over chunks, parallel over (b, h, Dk-block, Dv-block)):
        S_c = S_0 + sum_{c' < c} K_c'^T V_c'       written for every chunk c (the state *entering* chunk c)
        z_c = z_0 + sum_{c' < c} colsum(K_c')      (fp32; the normaliser's running key sum)
    pass 2 (`_output_fwd_kernel`, parallel over (chunk, b, h, Dv-block)):
        A = tril(Q_c K_c^T)                        intra-chunk, quadratic in BT
        num = Q_c S_c + A V_c,  den = Q_c z_c + rowsum(A) + eps  (fp32)

The denominator is linear attention with v = 1, so it rides along: z_c next to S_c and rowsum(A) next to A V.
The backward pass mirrors it. With g = dO, dN_t = g_t / den_t and dd_t = -(g_t . o_t) / den_t:

    `_bwd_dd_kernel`      dd_t (fp32), one pass over o and dO
    `_state_bwd_kernel`   reverse sequential pass: dS_c = dS_final + sum_{c' > c} Q_c'^T dN_c'
                          (the gradient of the state *leaving* chunk c), dz_c likewise with dd
    `_dqk_bwd_kernel`     parallel over chunks: dA = tril(dN V^T + dd)
                          dq = dA K + dN S_c^T + dd z_c^T,   dk = dA^T Q + V dS_c^T + dz_c
    `_dv_bwd_kernel`      parallel over chunks: dv = tril(Q K^T)^T dN + K dS_c

and the feature map's chain rule is applied to dq, dk before they are stored. The non-causal form uses the same
kernels: pass 1 keeps only the final (total) state, pass 2 and the gradient kernels skip the intra-chunk term and
read that one state for every chunk.

Precision: accumulators are fp32. States are stored in bf16 for bf16 inputs (the tensor-core product would round
them to bf16 anyway) and in fp32 otherwise; fp16 inputs multiply fp32 states in tf32 (fp16's mantissa, fp32's
range: a running sum over a long sequence overflows fp16), fp32 inputs in IEEE fp32. The normaliser z and the
denominator are always fp32.
"""
from __future__ import annotations

import triton
import triton.language as tl

# Feature maps built into the kernels (applied on load, chain rule applied to dq/dk before the store).
FEATURE_IDENTITY = 0
FEATURE_ELU1 = 1  # elu(x) + 1, the Linear Transformer's map


@triton.jit
def _phi(x, FEATURE: tl.constexpr):
    """The feature map on fp32 x."""
    if FEATURE == 1:
        x = tl.where(x > 0, x + 1.0, tl.exp(tl.minimum(x, 0.0)))
    return x


@triton.jit
def _dphi(x, FEATURE: tl.constexpr):
    """d phi / dx on fp32 x (only called when FEATURE != 0)."""
    return tl.where(x > 0, 1.0, tl.exp(tl.minimum(x, 0.0)))


@triton.jit
def _load_features(ptr, mask, FEATURE: tl.constexpr):
    """Load a tile of q or k and apply the feature map; padding (rows past N, columns past D) stays 0, not phi(0)."""
    x = tl.load(ptr, mask=mask, other=0.0)
    if FEATURE != 0:
        x = tl.where(mask, _phi(x.to(tl.float32), FEATURE), 0.0).to(ptr.dtype.element_ty)
    return x


@triton.jit
def _mm(a, b, acc, F32: tl.constexpr, PREC: tl.constexpr):
    """acc += a @ b for products with a state or a gradient operand. F32 (fp16/fp32 inputs): both operands in
    fp32, multiplied in PREC (tf32 for fp16 inputs, ieee for fp32): running sums over long sequences overflow
    fp16 and dO/den underflows it. Otherwise (bf16 inputs) both in bf16, like the tensor core wants them."""
    if F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=PREC)
    else:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)


@triton.jit
def _mm_operand(x, F32: tl.constexpr):
    """x in the dtype `_mm` multiplies it in. For a tile used in several products: cast once, and keep the
    narrow copy live (a loop-invariant fp32 tile costs twice the registers of its bf16 copy)."""
    if F32:
        return x.to(tl.float32)
    else:
        return x.to(tl.bfloat16)


# ----------------------------------------------------------------------------------------------- forward


@triton.jit
def _state_fwd_kernel(
    k, v, h, z, h0, z0, ht, zt,
    s_kb, s_kn, s_kh, s_vb, s_vn, s_vh,
    T, NC,
    H, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    FEATURE: tl.constexpr, NORMALIZE: tl.constexpr, USE_H0: tl.constexpr,
    STORE_ALL: tl.constexpr, STORE_FINAL: tl.constexpr, PREC: tl.constexpr,
):
    """Pass 1: per (b, h, Dk-block, Dv-block), walk the chunks in order, storing the state entering each one
    (STORE_ALL, causal) and/or the final state in fp32 (STORE_FINAL: output_final_state, and the non-causal
    total). h: (B*H, NC, K, V), z: (B*H, NC, K); h0/ht: (B*H, K, V) fp32, z0/zt: (B*H, K) fp32."""
    i_kv = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    NV = (V + BV - 1) // BV
    i_k = i_kv // NV
    i_v = i_kv % NV
    i_b = i_bh // H
    i_h = i_bh % H
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    m_z = m_k & ((o_k * 0 + i_v) == 0)  # the normaliser z is stored by the Dv-block-0 programs

    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    b_z = tl.zeros([BK], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + i_bh * K * V + o_kv, mask=m_kv, other=0.0).to(tl.float32)
        if NORMALIZE:
            b_z += tl.load(z0 + i_bh * K + o_k, mask=m_k, other=0.0).to(tl.float32)

    rows = tl.arange(0, BT)
    # loop-carried scalar base pointers; the tile offsets are rebuilt from aranges each step (carrying 64-bit
    # pointer tiles through the loop costs registers and spills)
    p_k = k + i_b * s_kb + i_h * s_kh
    p_v = v + i_b * s_vb + i_h * s_vh
    p_h = h + i_bh * NC * K * V
    p_z = z + i_bh * NC * K
    for c in range(NC):
        if STORE_ALL:
            tl.store(p_h + o_kv, b_h.to(p_h.dtype.element_ty), mask=m_kv)
            if NORMALIZE:
                tl.store(p_z + o_k, b_z, mask=m_z)
        m_t = rows < T - c * BT
        b_k = _load_features(p_k + rows[:, None] * s_kn + o_k[None, :], m_t[:, None] & m_k[None, :], FEATURE)
        b_v = tl.load(p_v + rows[:, None] * s_vn + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)
        b_h = tl.dot(tl.trans(b_k), b_v, b_h, input_precision=PREC)
        if NORMALIZE:
            # z sums over the chunk's rows: axis 0 of the (BT, BK) tile. Not a row sum of a (BK, BT) K^T tile:
            # triton 3.6's TritonGPUOptimizeThreadLocality rewrites a last-axis sum of a loaded tile accumulated
            # across loop iterations and asserts that the loop's result has exactly one use, so fp32 inputs with
            # identity features (the tile is then the load itself) and no final-state store failed to compile.
            b_z += tl.sum(b_k.to(tl.float32), axis=0)
        p_k += BT * s_kn
        p_v += BT * s_vn
        p_h += K * V
        p_z += K
    if STORE_FINAL:
        tl.store(ht + i_bh * K * V + o_kv, b_h, mask=m_kv)
        if NORMALIZE:
            tl.store(zt + i_bh * K + o_k, b_z, mask=m_z)


@triton.jit
def _output_fwd_kernel(
    q, k, v, h, z, o, den,
    s_qb, s_qn, s_qh, s_kb, s_kn, s_kh, s_vb, s_vn, s_vh, s_ob, s_on, s_oh,
    T, NC, eps,
    H, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    FEATURE: tl.constexpr, NORMALIZE: tl.constexpr, CAUSAL: tl.constexpr, SAVE_DEN: tl.constexpr,
    F32: tl.constexpr, PREC: tl.constexpr,
):
    """Pass 2: one program per (chunk, Dv-block) x (b, h). Causal: h/z hold one state per chunk; non-causal: h/z
    hold the single total state (B*H, K, V) / (B*H, K), and the intra-chunk term is skipped. den: (B*H, T) fp32."""
    i_cv = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    NV = (V + BV - 1) // BV
    i_c = (i_cv // NV).to(tl.int64)
    i_v = i_cv % NV
    i_b = i_bh // H
    i_h = i_bh % H
    o_t = i_c * BT + tl.arange(0, BT)
    m_t = o_t < T
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    if CAUSAL:
        p_hc = h + (i_bh * NC + i_c) * K * V
        p_zc = z + (i_bh * NC + i_c) * K
    else:
        p_hc = h + i_bh * K * V
        p_zc = z + i_bh * K

    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    b_den = tl.zeros([BT], dtype=tl.float32)
    for i_k in range((K + BK - 1) // BK):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        p_q = q + i_b * s_qb + i_h * s_qh + o_t[:, None] * s_qn + o_k[None, :]
        b_q = _load_features(p_q, m_t[:, None] & m_k[None, :], FEATURE)
        b_s = tl.load(p_hc + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.0)
        b_o = _mm(b_q, b_s, b_o, F32, PREC)
        if NORMALIZE:
            b_z = tl.load(p_zc + o_k, mask=m_k, other=0.0)
            b_den += tl.sum(b_q.to(tl.float32) * b_z[None, :], axis=1)
        if CAUSAL:
            p_k = k + i_b * s_kb + i_h * s_kh + o_t[None, :] * s_kn + o_k[:, None]
            b_kt = _load_features(p_k, m_k[:, None] & m_t[None, :], FEATURE)
            b_A = tl.dot(b_q, b_kt, b_A, input_precision=PREC)
    if CAUSAL:
        b_A = tl.where(o_t[:, None] >= o_t[None, :], b_A, 0.0)
        if NORMALIZE:
            b_den += tl.sum(b_A, axis=1)
        p_v = v + i_b * s_vb + i_h * s_vh + o_t[:, None] * s_vn + o_v[None, :]
        b_v = tl.load(p_v, mask=m_t[:, None] & m_v[None, :], other=0.0)
        b_o = tl.dot(b_A.to(b_v.dtype), b_v, b_o, input_precision=PREC)
    if NORMALIZE:
        b_den = b_den + eps
        b_o = b_o / b_den[:, None]
        if SAVE_DEN:
            tl.store(den + i_bh * T + o_t, b_den, mask=m_t & ((o_t * 0 + i_v) == 0))
    p_o = o + i_b * s_ob + i_h * s_oh + o_t[:, None] * s_on + o_v[None, :]
    tl.store(p_o, b_o.to(p_o.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])


# ----------------------------------------------------------------------------------------------- backward


@triton.jit
def _bwd_dd_kernel(
    o, do, den, dd,
    s_ob, s_on, s_oh, s_db, s_dn, s_dh,
    T,
    H, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
):
    """dd_t = dL/dden_t = -(dO_t . O_t) / den_t in fp32; one program per (chunk, b, h). dd: (B*H, T)."""
    i_c = tl.program_id(0).to(tl.int64)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    o_t = i_c * BT + tl.arange(0, BT)
    m_t = o_t < T
    b_delta = tl.zeros([BT], dtype=tl.float32)
    for i_v in range((V + BV - 1) // BV):
        o_v = i_v * BV + tl.arange(0, BV)
        m = m_t[:, None] & (o_v < V)[None, :]
        b_o = tl.load(o + i_b * s_ob + i_h * s_oh + o_t[:, None] * s_on + o_v[None, :], mask=m, other=0.0)
        b_do = tl.load(do + i_b * s_db + i_h * s_dh + o_t[:, None] * s_dn + o_v[None, :], mask=m, other=0.0)
        b_delta += tl.sum(b_o.to(tl.float32) * b_do.to(tl.float32), axis=1)
    b_den = tl.load(den + i_bh * T + o_t, mask=m_t, other=1.0)
    tl.store(dd + i_bh * T + o_t, -b_delta / b_den, mask=m_t)


@triton.jit
def _state_bwd_kernel(
    q, do, den, dd, dh, dz, dht, dzt, dh0, dz0,
    s_qb, s_qn, s_qh, s_db, s_dn, s_dh,
    T, NC,
    H, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    FEATURE: tl.constexpr, NORMALIZE: tl.constexpr, USE_DHT: tl.constexpr,
    STORE_ALL: tl.constexpr, STORE_DH0: tl.constexpr, F32: tl.constexpr, PREC: tl.constexpr,
):
    """Reverse pass over the chunks: dS_c (gradient of the state leaving chunk c, fed by chunks after c) for every
    chunk (STORE_ALL, causal), and the gradient of the state entering chunk 0 in fp32 (STORE_DH0: the initial
    state's gradient, and the non-causal total)."""
    i_kv = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    NV = (V + BV - 1) // BV
    i_k = i_kv // NV
    i_v = i_kv % NV
    i_b = i_bh // H
    i_h = i_bh % H
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    m_z = m_k & ((o_k * 0 + i_v) == 0)  # dz is stored by the Dv-block-0 programs

    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    b_dz = tl.zeros([BK], dtype=tl.float32)
    if USE_DHT:
        b_dh += tl.load(dht + i_bh * K * V + o_kv, mask=m_kv, other=0.0).to(tl.float32)
        if NORMALIZE:
            b_dz += tl.load(dzt + i_bh * K + o_k, mask=m_k, other=0.0).to(tl.float32)

    last = i_bh * 0 + (NC - 1)  # int64: row offsets times strides can pass 2^31
    rows = tl.arange(0, BT)
    # scalar base pointers at the last chunk, walked backwards (see _state_fwd_kernel)
    p_q = q + i_b * s_qb + i_h * s_qh + last * BT * s_qn
    p_do = do + i_b * s_db + i_h * s_dh + last * BT * s_dn
    p_den = den + i_bh * T + last * BT
    p_dd = dd + i_bh * T + last * BT
    p_dh = dh + (i_bh * NC + last) * K * V
    p_dz = dz + (i_bh * NC + last) * K
    for i in range(NC):
        c = NC - 1 - i
        if STORE_ALL:
            tl.store(p_dh + o_kv, b_dh.to(p_dh.dtype.element_ty), mask=m_kv)
            if NORMALIZE:
                tl.store(p_dz + o_k, b_dz, mask=m_z)
        m_t = rows < T - c * BT
        b_qt = _load_features(p_q + rows[None, :] * s_qn + o_k[:, None], m_k[:, None] & m_t[None, :], FEATURE)
        b_do = tl.load(p_do + rows[:, None] * s_dn + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)
        if NORMALIZE:
            b_den = tl.load(p_den + rows, mask=m_t, other=1.0)
            b_do = b_do.to(tl.float32) / b_den[:, None]
            b_dd = tl.load(p_dd + rows, mask=m_t, other=0.0)
            b_dz += tl.sum(b_qt.to(tl.float32) * b_dd[None, :], axis=1)
        b_dh = _mm(b_qt, b_do, b_dh, F32, PREC)
        p_q -= BT * s_qn
        p_do -= BT * s_dn
        p_den -= BT
        p_dd -= BT
        p_dh -= K * V
        p_dz -= K
    if STORE_DH0:
        tl.store(dh0 + i_bh * K * V + o_kv, b_dh, mask=m_kv)
        if NORMALIZE:
            tl.store(dz0 + i_bh * K + o_k, b_dz, mask=m_z)


@triton.jit
def _dqk_bwd_kernel(
    q, k, v, do, den, dd, h, z, dh, dz, dq, dk,
    s_qb, s_qn, s_qh, s_kb, s_kn, s_kh, s_vb, s_vn, s_vh, s_db, s_dn, s_dh,
    s_dqb, s_dqn, s_dqh, s_dkb, s_dkn, s_dkh,
    T, NC,
    H, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    FEATURE: tl.constexpr, NORMALIZE: tl.constexpr, CAUSAL: tl.constexpr,
    DO_DQ: tl.constexpr, DO_DK: tl.constexpr, F32: tl.constexpr, PREC: tl.constexpr,
):
    """dq and/or dk of one (chunk, Dk-block) x (b, h). Causal computes both in one launch (they share dA);
    non-causal launches once over the query chunks (DO_DQ) and once over the key chunks (DO_DK), with T the
    length of the sequence it walks and h/z/dh/dz the single total state and its gradient."""
    i_ck = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    NK = (K + BK - 1) // BK
    i_c = (i_ck // NK).to(tl.int64)
    i_k = i_ck % NK
    i_b = i_bh // H
    i_h = i_bh % H
    o_t = i_c * BT + tl.arange(0, BT)
    m_t = o_t < T
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    if CAUSAL:
        p_hc = h + (i_bh * NC + i_c) * K * V
        p_dhc = dh + (i_bh * NC + i_c) * K * V
        p_zc = z + (i_bh * NC + i_c) * K
        p_dzc = dz + (i_bh * NC + i_c) * K
    else:
        p_hc = h + i_bh * K * V
        p_dhc = dh + i_bh * K * V
        p_zc = z + i_bh * K
        p_dzc = dz + i_bh * K

    p_q = q + i_b * s_qb + i_h * s_qh + o_t[:, None] * s_qn + o_k[None, :]
    p_k = k + i_b * s_kb + i_h * s_kh + o_t[:, None] * s_kn + o_k[None, :]
    if DO_DQ or CAUSAL:
        b_q = _load_features(p_q, m_tk, FEATURE)
    if DO_DK or CAUSAL:
        b_k = _load_features(p_k, m_tk, FEATURE)
    if NORMALIZE and (DO_DQ or CAUSAL):
        b_den = tl.load(den + i_bh * T + o_t, mask=m_t, other=1.0)
        b_dd = tl.load(dd + i_bh * T + o_t, mask=m_t, other=0.0)

    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)
    for i_v in range((V + BV - 1) // BV):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        m_kv = m_k[:, None] & m_v[None, :]
        if DO_DQ or CAUSAL:
            b_do = tl.load(do + i_b * s_db + i_h * s_dh + o_t[:, None] * s_dn + o_v[None, :], mask=m_tv, other=0.0)
            if NORMALIZE:
                b_do = b_do.to(tl.float32) / b_den[:, None]
        if DO_DK or CAUSAL:
            b_v = tl.load(v + i_b * s_vb + i_h * s_vh + o_t[:, None] * s_vn + o_v[None, :], mask=m_tv, other=0.0)
        if DO_DQ:
            b_s = tl.load(p_hc + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)
            b_dq = _mm(b_do, tl.trans(b_s), b_dq, F32, PREC)
        if DO_DK:
            b_ds = tl.load(p_dhc + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)
            b_dk = _mm(b_v, tl.trans(b_ds), b_dk, F32, PREC)
        if CAUSAL:
            b_dA = _mm(b_do, tl.trans(b_v), b_dA, F32, PREC)
    if NORMALIZE:
        if DO_DQ:
            b_dq += b_dd[:, None] * tl.load(p_zc + o_k, mask=m_k, other=0.0)[None, :]
        if DO_DK:
            b_dk += tl.load(p_dzc + o_k, mask=m_k, other=0.0)[None, :]
    if CAUSAL:
        if NORMALIZE:
            b_dA += b_dd[:, None]
        b_dA = tl.where(o_t[:, None] >= o_t[None, :], b_dA, 0.0)
        b_dq = _mm(b_dA, b_k, b_dq, F32, PREC)
        b_dk = _mm(tl.trans(b_dA), b_q, b_dk, F32, PREC)
    if DO_DQ:
        if FEATURE != 0:
            b_dq *= _dphi(tl.load(p_q, mask=m_tk, other=0.0).to(tl.float32), FEATURE)
        p_dq = dq + i_b * s_dqb + i_h * s_dqh + o_t[:, None] * s_dqn + o_k[None, :]
        tl.store(p_dq, b_dq.to(p_dq.dtype.element_ty), mask=m_tk)
    if DO_DK:
        if FEATURE != 0:
            b_dk *= _dphi(tl.load(p_k, mask=m_tk, other=0.0).to(tl.float32), FEATURE)
        p_dk = dk + i_b * s_dkb + i_h * s_dkh + o_t[:, None] * s_dkn + o_k[None, :]
        tl.store(p_dk, b_dk.to(p_dk.dtype.element_ty), mask=m_tk)


@triton.jit
def _dv_bwd_kernel(
    q, k, do, den, dh, dv,
    s_qb, s_qn, s_qh, s_kb, s_kn, s_kh, s_db, s_dn, s_dh, s_vb, s_vn, s_vh,
    T, NC,
    H, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    FEATURE: tl.constexpr, NORMALIZE: tl.constexpr, CAUSAL: tl.constexpr,
    F32: tl.constexpr, PREC: tl.constexpr,
):
    """dv of one (chunk, Dv-block) x (b, h): tril(Q K^T)^T dN + K dS_c (non-causal: K dS, over the key chunks)."""
    i_cv = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    NV = (V + BV - 1) // BV
    i_c = (i_cv // NV).to(tl.int64)
    i_v = i_cv % NV
    i_b = i_bh // H
    i_h = i_bh % H
    o_t = i_c * BT + tl.arange(0, BT)
    m_t = o_t < T
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    m_tv = m_t[:, None] & m_v[None, :]
    if CAUSAL:
        p_dhc = dh + (i_bh * NC + i_c) * K * V
    else:
        p_dhc = dh + i_bh * K * V

    b_dv = tl.zeros([BT, BV], dtype=tl.float32)
    b_At = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range((K + BK - 1) // BK):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_k = _load_features(k + i_b * s_kb + i_h * s_kh + o_t[:, None] * s_kn + o_k[None, :],
                             m_t[:, None] & m_k[None, :], FEATURE)
        b_ds = tl.load(p_dhc + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.0)
        b_dv = _mm(b_k, b_ds, b_dv, F32, PREC)
        if CAUSAL:
            b_qt = _load_features(q + i_b * s_qb + i_h * s_qh + o_t[None, :] * s_qn + o_k[:, None],
                                  m_k[:, None] & m_t[None, :], FEATURE)
            b_At = tl.dot(b_k, b_qt, b_At, input_precision=PREC)
    if CAUSAL:
        b_do = tl.load(do + i_b * s_db + i_h * s_dh + o_t[:, None] * s_dn + o_v[None, :], mask=m_tv, other=0.0)
        if NORMALIZE:
            b_den = tl.load(den + i_bh * T + o_t, mask=m_t, other=1.0)
            b_do = b_do.to(tl.float32) / b_den[:, None]
        b_At = tl.where(o_t[:, None] <= o_t[None, :], b_At, 0.0)
        b_dv = _mm(b_At, b_do, b_dv, F32, PREC)
    p_dv = dv + i_b * s_vb + i_h * s_vh + o_t[:, None] * s_vn + o_v[None, :]
    tl.store(p_dv, b_dv.to(p_dv.dtype.element_ty), mask=m_tv)


# ----------------------------------------------------------------------------------------------- recurrent


@triton.jit
def _recurrent_fwd_kernel(
    q, k, v, o, h0, z0, ht, zt,
    s_qb, s_qn, s_qh, s_kb, s_kn, s_kh, s_vb, s_vn, s_vh, s_ob, s_on, s_oh,
    T, eps,
    H, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    FEATURE: tl.constexpr, NORMALIZE: tl.constexpr, USE_H0: tl.constexpr,
):
    """Token-by-token form for decoding: S += k v^T, z += k, o = q S / (q . z + eps), all fp32 in registers.
    One program per (Dv-block) x (b, h); the whole Dk column (BK >= K) stays on chip."""
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    b_z = tl.zeros([BK], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + i_bh * K * V + o_kv, mask=m_kv, other=0.0)
        if NORMALIZE:
            b_z += tl.load(z0 + i_bh * K + o_k, mask=m_k, other=0.0)
    p_q = q + i_b * s_qb + i_h * s_qh + o_k
    p_k = k + i_b * s_kb + i_h * s_kh + o_k
    p_v = v + i_b * s_vb + i_h * s_vh + o_v
    p_o = o + i_b * s_ob + i_h * s_oh + o_v
    for _t in range(T):
        b_k = tl.where(m_k, _phi(tl.load(p_k, mask=m_k, other=0.0).to(tl.float32), FEATURE), 0.0)
        b_q = tl.where(m_k, _phi(tl.load(p_q, mask=m_k, other=0.0).to(tl.float32), FEATURE), 0.0)
        b_v = tl.load(p_v, mask=m_v, other=0.0).to(tl.float32)
        b_h += b_k[:, None] * b_v[None, :]
        b_o = tl.sum(b_q[:, None] * b_h, axis=0)
        if NORMALIZE:
            b_z += b_k
            b_o = b_o / (tl.sum(b_q * b_z, axis=0) + eps)
        tl.store(p_o, b_o.to(p_o.dtype.element_ty), mask=m_v)
        p_q += s_qn
        p_k += s_kn
        p_v += s_vn
        p_o += s_on
    tl.store(ht + i_bh * K * V + o_kv, b_h, mask=m_kv)
    if NORMALIZE:
        tl.store(zt + i_bh * K + o_k, b_z, mask=m_k & ((o_k * 0 + i_v) == 0))


# ----------------------------------------------------------------------------------------------- launchers
# Tensors arrive in the (B, N, H, D) layout with unit stride in D (the interface makes sure); kernels index them
# through the (B, N, H) strides. Launch parameters per kernel: (BK, BV, num_warps, num_stages). BK/BV are capped
# to the padded head dims. scripts/gpu_lowrank.py can overwrite CONFIGS after a sweep.

import torch  # noqa: E402

CHUNK_SIZE = 64
# Defaults: the fastest of `scripts/gpu_lowrank.py --sweep` (H200, 2026-12-02, causal, B=1, H=64, N=16k, D=128
# bf16; forward kernels judged on the normalised plus the unnormalised forward): output_fwd 8 -> 4 warps, 3
# stages (fwd 0.88 vs 1.15 ms for 128x128); dqk_bwd 4 warps, dv_bwd 64x128, state_bwd 4 stages (bwd 2.06 -> 1.99 ms).
CONFIGS = {
    "state_fwd": (64, 64, 4, 3),
    "output_fwd": (64, 128, 4, 3),
    "dd_bwd": (0, 128, 4, 1),
    "state_bwd": (64, 64, 4, 4),
    "dqk_bwd": (64, 64, 4, 2),
    "dv_bwd": (64, 128, 4, 2),
    "recurrent": (0, 64, 4, 1),
}


def _pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def _blocks(name: str, K: int, V: int, BT: int = CHUNK_SIZE, config: tuple | None = None):
    """(BK, BV, num_warps, num_stages) of kernel `name`: CONFIGS[name], or `config` (a caller's own entry, e.g.
    the Performer's at Dk = m), capped to the padded head dims."""
    bk, bv, warps, stages = CONFIGS[name] if config is None else config
    if BT >= 128:  # (BT, BT) tiles: 4 warps spill
        warps = max(warps, 8)
    return min(bk, max(16, _pow2(K))), min(bv, max(16, _pow2(V))), warps, stages


def _strides(x: torch.Tensor):
    return x.stride(0), x.stride(1), x.stride(2)


def _precision(dtype: torch.dtype):
    """(F32, PREC): see `_mm`."""
    if dtype == torch.bfloat16:
        return False, "tf32"
    return True, ("ieee" if dtype == torch.float32 else "tf32")


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Storage dtype of the per-chunk states: bf16 for bf16 inputs, fp32 otherwise."""
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


def chunk_fwd(q, k, v, causal: bool, normalize: bool, feature: int, h0, z0, output_final_state: bool,
              eps: float, chunk_size: int = CHUNK_SIZE, save_for_backward: bool = True):
    """Forward of linear attention. q (B, Nq, H, K), k (B, Nk, H, K), v (B, Nk, H, V); h0 (B*H, K, V) fp32 or
    None, z0 (B*H, K) fp32 or None. Returns o and a dict of what the backward pass and the caller need:
    den (B*H, Nq) fp32, h/z (per-chunk states when causal, the total state when not), ht/zt (final state)."""
    B, Tq, H, K = q.shape
    Tk, V = k.shape[1], v.shape[3]
    BT = chunk_size
    F32, PREC = _precision(q.dtype)
    dev = q.device
    dummy32 = torch.empty(1, device=dev, dtype=torch.float32)
    o = torch.empty(B, Tq, H, V, device=dev, dtype=q.dtype)
    den = torch.empty(B * H, Tq, device=dev, dtype=torch.float32) if (normalize and save_for_backward) else dummy32
    store_final = output_final_state or not causal
    ht = torch.empty(B * H, K, V, device=dev, dtype=torch.float32) if store_final else dummy32
    zt = torch.empty(B * H, K, device=dev, dtype=torch.float32) if (store_final and normalize) else dummy32
    NCk = triton.cdiv(Tk, BT)
    if causal:
        h = torch.empty(B * H, NCk, K, V, device=dev, dtype=state_dtype(q.dtype))
        z = torch.empty(B * H, NCk, K, device=dev, dtype=torch.float32) if normalize else dummy32
    else:
        h, z = dummy32, dummy32
    BK, BV, warps, stages = _blocks("state_fwd", K, V, BT)
    _state_fwd_kernel[(triton.cdiv(K, BK) * triton.cdiv(V, BV), B * H)](
        k, v, h, z,
        h0 if h0 is not None else dummy32, z0 if z0 is not None else dummy32, ht, zt,
        *_strides(k), *_strides(v), Tk, NCk,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, FEATURE=feature, NORMALIZE=normalize, USE_H0=h0 is not None,
        STORE_ALL=causal, STORE_FINAL=store_final, PREC=PREC, num_warps=warps, num_stages=stages)
    if not causal:
        h, z = ht, zt
    NCq = triton.cdiv(Tq, BT)
    BK, BV, warps, stages = _blocks("output_fwd", K, V, BT)
    _output_fwd_kernel[(NCq * triton.cdiv(V, BV), B * H)](
        q, k, v, h, z, o, den,
        *_strides(q), *_strides(k), *_strides(v), *_strides(o), Tq, NCq, eps,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, FEATURE=feature, NORMALIZE=normalize, CAUSAL=causal,
        SAVE_DEN=normalize and save_for_backward, F32=F32, PREC=PREC, num_warps=warps, num_stages=stages)
    return o, {"den": den, "h": h, "z": z,
               "ht": ht if output_final_state else None,
               "zt": zt if (output_final_state and normalize) else None}


def bwd_dd(o, do, den, K: int, chunk_size: int):
    """dd = -(dO . O) / den (B*H, N) fp32: the gradient of the denominator."""
    B, Tq, H, V = o.shape
    dd = torch.empty(B * H, Tq, device=o.device, dtype=torch.float32)
    _, BV, warps, stages = _blocks("dd_bwd", K, V, chunk_size)
    _bwd_dd_kernel[(triton.cdiv(Tq, chunk_size), B * H)](o, do, den, dd, *_strides(o), *_strides(do), Tq,
                                                         H=H, V=V, BT=chunk_size, BV=BV, num_warps=warps,
                                                         num_stages=stages)
    return dd


def bwd_states(q, do, den, dd, causal: bool, normalize: bool, feature: int, dht, dzt, need_dh0: bool,
               chunk_size: int, config: tuple | None = None):
    """The reverse state pass: (dh, dz) per chunk (causal) or the total (not), and the initial state's gradient
    (dh0, dz0) fp32 when asked (non-causal: the total itself). den/dd: dummies when not normalised."""
    B, Tq, H, K = q.shape
    V = do.shape[3]
    BT = chunk_size
    F32, PREC = _precision(q.dtype)
    dev = q.device
    dummy32 = torch.empty(1, device=dev, dtype=torch.float32)
    NCq = triton.cdiv(Tq, BT)
    if causal:
        dh = torch.empty(B * H, NCq, K, V, device=dev, dtype=state_dtype(q.dtype))
        dz = torch.empty(B * H, NCq, K, device=dev, dtype=torch.float32) if normalize else dummy32
        store_dh0 = need_dh0
    else:
        dh = dz = dummy32
        store_dh0 = True
    dh0 = torch.empty(B * H, K, V, device=dev, dtype=torch.float32) if store_dh0 else dummy32
    dz0 = torch.empty(B * H, K, device=dev, dtype=torch.float32) if (store_dh0 and normalize) else dummy32
    BK, BV, warps, stages = _blocks("state_bwd", K, V, BT, config)
    _state_bwd_kernel[(triton.cdiv(K, BK) * triton.cdiv(V, BV), B * H)](
        q, do, den, dd, dh, dz,
        dht if dht is not None else dummy32, dzt if dzt is not None else dummy32, dh0, dz0,
        *_strides(q), *_strides(do), Tq, NCq,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, FEATURE=feature, NORMALIZE=normalize,
        USE_DHT=dht is not None, STORE_ALL=causal, STORE_DH0=store_dh0, F32=F32, PREC=PREC,
        num_warps=warps, num_stages=stages)
    if not causal:
        dh, dz = dh0, dz0
    return dh, dz, dh0, dz0


def bwd_dv(q, k, do, den, dh, v_dtype, causal: bool, normalize: bool, feature: int, chunk_size: int,
           config: tuple | None = None):
    """dv = tril(Q K^T)^T dN + K dS_c (non-causal: K dS), (B, Nk, H, V) in v_dtype."""
    B, Tk, H, K = k.shape
    V = do.shape[3]
    BT = chunk_size
    F32, PREC = _precision(q.dtype)
    dv = torch.empty(B, Tk, H, V, device=q.device, dtype=v_dtype)
    NCk = triton.cdiv(Tk, BT)
    BK, BV, warps, stages = _blocks("dv_bwd", K, V, BT, config)
    _dv_bwd_kernel[(NCk * triton.cdiv(V, BV), B * H)](
        q, k, do, den, dh, dv, *_strides(q), *_strides(k), *_strides(do), *_strides(dv), Tk, NCk,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, FEATURE=feature, NORMALIZE=normalize, CAUSAL=causal,
        F32=F32, PREC=PREC, num_warps=warps, num_stages=stages)
    return dv


def chunk_bwd(do, q, k, v, o, saved: dict, causal: bool, normalize: bool, feature: int, dht, dzt,
              need_dh0: bool, chunk_size: int = CHUNK_SIZE):
    """Backward of `chunk_fwd`. do like o; dht (B*H, K, V) / dzt (B*H, K) fp32 gradients of the final state or
    None. Returns dq, dk, dv and the initial state's gradients dh0, dz0 (fp32, or None)."""
    B, Tq, H, K = q.shape
    Tk, V = k.shape[1], v.shape[3]
    BT = chunk_size
    F32, PREC = _precision(q.dtype)
    dev = q.device
    dummy32 = torch.empty(1, device=dev, dtype=torch.float32)
    den = saved["den"]
    dq = torch.empty(B, Tq, H, K, device=dev, dtype=q.dtype)
    dk = torch.empty(B, Tk, H, K, device=dev, dtype=k.dtype)
    NCq, NCk = triton.cdiv(Tq, BT), triton.cdiv(Tk, BT)
    if normalize:
        dd = bwd_dd(o, do, den, K, BT)
    else:
        dd = den = dummy32
    dh, dz, dh0, dz0 = bwd_states(q, do, den, dd, causal, normalize, feature, dht, dzt, need_dh0, BT)

    h, z = saved["h"], saved["z"]
    BK, BV, warps, stages = _blocks("dqk_bwd", K, V, BT)
    NK = triton.cdiv(K, BK)
    common = dict(H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, FEATURE=feature, NORMALIZE=normalize, CAUSAL=causal,
                  F32=F32, PREC=PREC, num_warps=warps, num_stages=stages)
    args = (q, k, v, do, den, dd, h, z, dh, dz, dq, dk,
            *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dq), *_strides(dk))
    if causal:
        _dqk_bwd_kernel[(NCq * NK, B * H)](*args, Tq, NCq, DO_DQ=True, DO_DK=True, **common)
    else:
        _dqk_bwd_kernel[(NCq * NK, B * H)](*args, Tq, NCq, DO_DQ=True, DO_DK=False, **common)
        _dqk_bwd_kernel[(NCk * NK, B * H)](*args, Tk, NCk, DO_DQ=False, DO_DK=True, **common)

    dv = bwd_dv(q, k, do, den, dh, v.dtype, causal, normalize, feature, BT)
    if not need_dh0:
        dh0 = dz0 = None
    elif not normalize:
        dz0 = None
    return dq, dk, dv, dh0, dz0


def recurrent_fwd(q, k, v, normalize: bool, feature: int, h0, z0, eps: float):
    """Token-by-token linear attention (no autograd): returns o (B, N, H, V) and the final state (ht, zt)."""
    B, T, H, K = q.shape
    V = v.shape[3]
    dev = q.device
    dummy32 = torch.empty(1, device=dev, dtype=torch.float32)
    BK = _pow2(K)
    BV = min(_pow2(V), max(16, CONFIGS["recurrent"][1] * 64 // max(64, BK)))
    warps = CONFIGS["recurrent"][2]
    o = torch.empty(B, T, H, V, device=dev, dtype=q.dtype)
    ht = torch.empty(B * H, K, V, device=dev, dtype=torch.float32)
    zt = torch.empty(B * H, K, device=dev, dtype=torch.float32) if normalize else dummy32
    _recurrent_fwd_kernel[(triton.cdiv(V, BV), B * H)](
        q, k, v, o, h0 if h0 is not None else dummy32, z0 if z0 is not None else dummy32, ht, zt,
        *_strides(q), *_strides(k), *_strides(v), *_strides(o), T, eps,
        H=H, K=K, V=V, BK=BK, BV=BV, FEATURE=feature, NORMALIZE=normalize, USE_H0=h0 is not None,
        num_warps=warps)
    return o, ht, (zt if normalize else None)
