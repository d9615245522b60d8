"""Triton kernels computing FAVOR+ random features in one pass over x, forward and backward.

PyTorch would write the (B, N, H, m) exponent tensor u = x~ W^T and then run several elementwise passes over it
(subtract |x~|^2/2, a max, exp, scale) and as many again in the backward pass; with m = 256 features u is twice
the size of x. Here one program per (block of rows, batch*head) keeps u on chip: it reads x once and writes the
features once. The projection W (m, D) is small and stays in L2.

    forward   u = x~ W^T - |x~|^2/2;  softmax: f = exp(u - c) / sqrt(m);  relu: f = relu(x~ W^T) + kernel_eps
    backward  softmax: dx~ = (df * f) W - rowsum(df * f) x~;   relu: dx~ = (df * [x~ W^T > 0]) W;   dx = dx~ D^-1/4

c (the stabiliser) is treated as a constant in the backward pass: it cancels exactly in the normalised attention,
so its true gradient contribution is zero. The projection W gets no gradient (it is a fixed random draw).
The products with W run in fp32 operands (IEEE for fp32 inputs, tf32 otherwise): errors in u are amplified by exp.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

KIND_SOFTMAX = 0
KIND_RELU = 1
MODE_QUERY = 0        # softmax: subtract each row's max exponent
MODE_KEY = 1          # softmax: subtract a given per-(batch, head) offset
MODE_BLOCK_MAX = 2    # softmax: only write each block's max exponent (to build the key offset)

BLOCK_N = 64
BLOCK_M = 64
NUM_WARPS = 4
NUM_WARPS_BWD = 8  # the backward holds x~ and the (64, D) accumulator in fp32: 4 warps would use 255 registers


@triton.jit
def _favor_fwd_kernel(
    x, w, f, offset,
    s_xb, s_xn, s_xh, s_fb, s_fn, s_fh,
    N, NB, data_scale, ratio, kernel_eps,
    H, D: tl.constexpr, M: tl.constexpr,
    BN: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr,
    KIND: tl.constexpr, MODE: tl.constexpr, PREC: tl.constexpr,
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
    b_x = tl.load(p_x, mask=m_n[:, None] & m_d[None, :], other=0.0).to(tl.float32) * data_scale
    b_sq = tl.sum(b_x * b_x, axis=1) * 0.5

    if KIND == 0:
        if MODE == 1:
            b_c = tl.load(offset + i_bh) + tl.zeros([BN], dtype=tl.float32)
        else:
            b_c = tl.full([BN], float("-inf"), dtype=tl.float32)
            for i_m in range((M + BM - 1) // BM):
                o_m = i_m * BM + tl.arange(0, BM)
                m_m = o_m < M
                b_wt = tl.load(w + o_m[None, :] * D + o_d[:, None], mask=m_d[:, None] & m_m[None, :], other=0.0)
                b_u = tl.dot(b_x, b_wt, input_precision=PREC)
                b_u = tl.where(m_m[None, :], b_u, float("-inf"))
                b_c = tl.maximum(b_c, tl.max(b_u, axis=1) - b_sq)
    if MODE == 2:
        b_c = tl.where(m_n, b_c, float("-inf"))
        tl.store(offset + i_bh * NB + i_n, tl.max(b_c, axis=0))
    else:
        p_f = f + i_b * s_fb + i_h * s_fh + rows[:, None].to(tl.int64) * s_fn
        for i_m in range((M + BM - 1) // BM):
            o_m = i_m * BM + tl.arange(0, BM)
            m_m = o_m < M
            b_wt = tl.load(w + o_m[None, :] * D + o_d[:, None], mask=m_d[:, None] & m_m[None, :], other=0.0)
            b_u = tl.dot(b_x, b_wt, input_precision=PREC)
            if KIND == 0:
                b_f = tl.exp(b_u - (b_sq + b_c)[:, None]) * ratio
            else:
                b_f = tl.maximum(b_u, 0.0) + kernel_eps
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


def _pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def _strides(x):
    return x.stride(0), x.stride(1), x.stride(2)


def _prec(dtype):
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


def favor_fwd(x: torch.Tensor, w: torch.Tensor, kind: int, mode: int, out_dtype: torch.dtype,
              offset: torch.Tensor | None = None, kernel_eps: float = 0.0):
    """x (B, N, H, D) unit stride in D, w (m, D) fp32 contiguous. MODE_QUERY / MODE_KEY (needs offset (B*H,)
    fp32) -> features (B, N, H, m); MODE_BLOCK_MAX -> the per-(batch*head) max exponent (B*H,) fp32."""
    B, N, H, D = x.shape
    M = w.shape[0]
    BD = max(16, _pow2(D))
    NB = triton.cdiv(N, BLOCK_N)
    if mode == MODE_BLOCK_MAX:
        part = torch.empty(B * H, NB, device=x.device, dtype=torch.float32)
        _favor_fwd_kernel[(NB, B * H)](
            x, w, part, part, *_strides(x), 0, 0, 0, N, NB, D ** -0.25, M ** -0.5, kernel_eps,
            H=H, D=D, M=M, BN=BLOCK_N, BD=BD, BM=BLOCK_M, KIND=kind, MODE=mode, PREC=_prec(x.dtype),
            num_warps=NUM_WARPS)
        return part.amax(dim=1)
    f = torch.empty(B, N, H, M, device=x.device, dtype=out_dtype)
    _favor_fwd_kernel[(NB, B * H)](
        x, w, f, offset if offset is not None else f, *_strides(x), *_strides(f), N, NB, D ** -0.25,
        M ** -0.5, kernel_eps,
        H=H, D=D, M=M, BN=BLOCK_N, BD=BD, BM=BLOCK_M, KIND=kind, MODE=mode, PREC=_prec(x.dtype),
        num_warps=NUM_WARPS)
    return f


def favor_bwd(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor, df: torch.Tensor, kind: int) -> torch.Tensor:
    B, N, H, D = x.shape
    M = w.shape[0]
    dx = torch.empty(B, N, H, D, device=x.device, dtype=x.dtype)
    _favor_bwd_kernel[(triton.cdiv(N, BLOCK_N), B * H)](
        x, w, f, df, dx, *_strides(x), *_strides(f), *_strides(df), *_strides(dx), N, D ** -0.25,
        H=H, D=D, M=M, BN=BLOCK_N, BD=max(16, _pow2(D)), BM=BLOCK_M, KIND=kind, PREC=_prec(x.dtype),
        num_warps=NUM_WARPS_BWD)
    return dx

