"""Experiment (issue 7, the backward half): a Gluon Hopper backward in the forward's structure, not yet run on a GPU.

Two kernels, as the portable "split" schedule (deterministic: no atomics), each warp-specialised like
hwattn/ops/flash/hopper.py: a one-warp TMA loader partition and two consumer warpgroups.

- dK/dV: a program owns 128 keys of one kv head (64 per consumer warpgroup, K and V resident in shared
  memory) and walks the query blocks of every query head of its group (GQA sums in registers). Per 32-row
  query block (64 spilled at D = 128) the loader brings Q and dO into a ring; each consumer issues
  S^T = K Q^T and dP^T = V dO^T back to back, waits for S^T only, forms P^T = exp2(S^T - LSE) (log2 domain,
  the forward's LSE), issues dV += P^T dO while dP^T finishes, then dS^T = P^T (dP^T - delta) and
  dK += dS^T Q. Diagonal (masked) query blocks are walked first, the bulk after.
- dQ: a program owns 128 query rows (64 per consumer) and walks key blocks: S = Q K^T and dP = dO V^T back to
  back, P, dS = P (dP - delta), dQ += dS K, that last wgmma left running under the next block's S and dP.
delta = rowsum(dO * O) comes from the portable backward's preprocess kernel.

    python scripts/exp_gluon_bwd.py --compile            # CPU: sm_90 compile + ptxas spills (no GPU)
    python scripts/exp_gluon_bwd.py --check --bench      # GPU: float64 check, then TFLOP/s vs the portable
                                                         # backward and SDPA cuDNN in the same process

Status (H100, 2026-12-06, docs/hopper.md): correct against float64 (8 of 8 cases), but 0.69-1.01x the portable
backward's TFLOP/s (e.g. D = 128, N = 4096: 377 vs 429, cuDNN 515), so it is not wired into hwattn. Likely
cause, not profiled: the 32-row query blocks of dK/dV (N = 32 wgmmas, a ring round trip per 32 rows).
"""
import argparse
import math
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from hwattn.ops.flash import hopper, hopper_bwd  # noqa: E402
from hwattn.ops.flash.common import LOG2E  # noqa: E402

from triton.experimental import gluon  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from triton.experimental.gluon.language.nvidia.hopper import (mbarrier, warpgroup_mma, warpgroup_mma_init,  # noqa: E402
                                                               warpgroup_mma_wait)

_tma_load = hopper._tma_load


SPLIT = 64  # rows (keys in dK/dV, queries in dQ) per consumer warpgroup


# ----------------------------------------------------------------------------------------------- dK / dV
_dkdv_load = hopper_bwd._load_partition   # the one-launch kernel's loader: K, V once, then Q, dO per block


@gluon.jit
def _dkdv_block(dk, dv, k, v, q_smem, do_smem, qdo_ready, qdo_free, keys, offs_m, zero_s, lse_ptr, delta_ptr, row_base,
                i, count, n_q, n_k, qk_scale, MASKED: gl.constexpr, STAGES: gl.constexpr):
    """One block of query rows into this warpgroup's dK, dV. MASKED: the block straddles the causal diagonal."""
    block_m: gl.constexpr = q_smem.type.shape[2]
    head_dim: gl.constexpr = q_smem.type.shape[3]
    dtype: gl.constexpr = q_smem.dtype
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=dk.type.layout, k_width=2)
    stage = count % STAGES
    rows = i * block_m + offs_m
    # rows past Nq: LSE +inf makes their P exactly 0 (their Q and dO tiles are TMA zero-fill)
    lse = gl.load(lse_ptr + row_base + rows, mask=rows < n_q, other=float("inf"))
    delta = gl.load(delta_ptr + row_base + rows, mask=rows < n_q, other=0.0)
    mbarrier.wait(qdo_ready.index(stage), (count // STAGES) & 1)
    q = q_smem.index(stage).reshape([block_m, head_dim])
    do = do_smem.index(stage).reshape([block_m, head_dim])
    st_tok = warpgroup_mma(k, q.permute((1, 0)), zero_s, use_acc=False, is_async=True)
    dpt_tok = warpgroup_mma(v, do.permute((1, 0)), zero_s, use_acc=False, is_async=True)
    st = warpgroup_mma_wait(1, deps=(st_tok, ))
    pt = gl.exp2(st * qk_scale - lse[None, :])
    if MASKED:
        pt = gl.where(rows[None, :] + (n_k - n_q) >= keys[:, None], pt, 0.0)
    dv_tok = warpgroup_mma(gl.convert_layout(pt.to(dtype), a_layout), do, dv, is_async=True)
    # retire in issue order: one outstanding = dP^T done, dV still running
    dpt = warpgroup_mma_wait(1, deps=(dpt_tok, ))
    dst = pt * (dpt - delta[None, :])
    dk_tok = warpgroup_mma(gl.convert_layout(dst.to(dtype), a_layout), q, dk, is_async=True)
    dv, dk = warpgroup_mma_wait(0, deps=(dv_tok, dk_tok))
    mbarrier.arrive(qdo_free.index(stage), count=1)
    return dk, dv


@gluon.jit
def _dkdv_consume(WG: gl.constexpr, shared, CAUSAL: gl.constexpr, STAGES: gl.constexpr):
    (q_smem, do_smem, k_smem, v_smem, kv_bar, qdo_ready, qdo_free, dk_ptr, dv_ptr, stride_b, stride_n, lse_ptr,
     delta_ptr, b, hk, n0, group, first_block, mid, n_q_blocks, n_q, n_k, n_heads, qk_scale,
     softmax_scale) = shared
    split_n: gl.constexpr = k_smem.type.shape[2]
    head_dim: gl.constexpr = k_smem.type.shape[3]
    block_m: gl.constexpr = q_smem.type.shape[2]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, block_m, 16])
    kv_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                        instr_shape=[16, head_dim, 16])
    keys = n0 + WG * split_n + gl.arange(0, split_n, layout=gl.SliceLayout(1, s_layout))
    offs_m = gl.arange(0, block_m, layout=gl.SliceLayout(0, s_layout))
    zero_s = gl.zeros([split_n, block_m], gl.float32, s_layout)
    dk = gl.zeros([split_n, head_dim], gl.float32, kv_layout)
    dv = gl.zeros([split_n, head_dim], gl.float32, kv_layout)
    mbarrier.wait(kv_bar.index(WG), 0)
    k = k_smem.index(WG).reshape([split_n, head_dim])
    v = v_smem.index(WG).reshape([split_n, head_dim])
    # the blocks on the diagonal (masked) first, then the bulk; `count` numbers blocks for the ring
    count = 0
    for hg in range(group):
        row_base = (b * n_heads + hk * group + hg).to(gl.int64) * n_q
        for i in range(first_block, mid):
            dk, dv = _dkdv_block(dk, dv, k, v, q_smem, do_smem, qdo_ready, qdo_free, keys, offs_m, zero_s, lse_ptr,
                                 delta_ptr, row_base, i, count, n_q, n_k, qk_scale, CAUSAL, STAGES)
            count += 1
        for i in range(mid, n_q_blocks):
            dk, dv = _dkdv_block(dk, dv, k, v, q_smem, do_smem, qdo_ready, qdo_free, keys, offs_m, zero_s, lse_ptr,
                                 delta_ptr, row_base, i, count, n_q, n_k, qk_scale, False, STAGES)
            count += 1
    hopper_bwd._store_dkdv(dk, dv, dk_ptr, dv_ptr, stride_b, stride_n, b, hk, n0, n_k, softmax_scale, WG)


@gluon.jit
def _dkdv_kernel(q_desc, do_desc, k_desc, v_desc, dk_ptr, dv_ptr, stride_b, stride_n, lse_ptr, delta_ptr, n_q, n_k,
                 n_heads, n_kv_heads, group, qk_scale, softmax_scale, CAUSAL: gl.constexpr, STAGES: gl.constexpr):
    split_n: gl.constexpr = k_desc.block_type.shape[1]
    block_m: gl.constexpr = q_desc.block_type.shape[1]
    n0, b, hk, n_q_blocks, first_block, mid = hopper_bwd._key_program(n_q, n_k, n_kv_heads, split_n, block_m,
                                                                       CAUSAL)

    q_smem = gl.allocate_shared_memory(q_desc.dtype, [STAGES] + q_desc.block_type.shape, q_desc.layout)
    do_smem = gl.allocate_shared_memory(do_desc.dtype, [STAGES] + do_desc.block_type.shape, do_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [2] + k_desc.block_type.shape, k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [2] + v_desc.block_type.shape, v_desc.layout)
    kv_bar = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    qdo_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    qdo_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(kv_bar.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(qdo_ready.index(i), count=1)
        mbarrier.init(qdo_free.index(i), count=2)
    # the shared arguments as one tuple; constexprs in place (bound to a name, they became tensors: 3.6)
    shared = (q_smem, do_smem, k_smem, v_smem, kv_bar, qdo_ready, qdo_free, dk_ptr, dv_ptr, stride_b, stride_n,
              lse_ptr, delta_ptr, b, hk, n0, group, first_block, mid, n_q_blocks, n_q, n_k, n_heads, qk_scale,
              softmax_scale)
    gl.warp_specialize([
        (_dkdv_consume, (0, shared, CAUSAL, STAGES)),
        (_dkdv_consume, (1, shared, CAUSAL, STAGES)),
        (_dkdv_load, (q_desc, do_desc, k_desc, v_desc, q_smem, do_smem, k_smem, v_smem, kv_bar, qdo_ready, qdo_free,
                      b, hk, n0, group, first_block, n_q_blocks, STAGES)),
    ], [4, 1], [240, 24])


# ----------------------------------------------------------------------------------------------------- dQ
@gluon.jit
def _dq_load(q_desc, do_desc, k_desc, v_desc, q_smem, do_smem, k_smem, v_smem, q_bar, kv_ready, kv_free,
             b, h, hk, m0, n_blocks, STAGES: gl.constexpr):
    split_m: gl.constexpr = q_desc.block_type.shape[1]
    head_dim: gl.constexpr = q_desc.block_type.shape[2]
    block_n: gl.constexpr = k_desc.block_type.shape[1]
    for i in gl.static_range(2):
        mbarrier.expect(q_bar.index(i), q_desc.block_type.nbytes + do_desc.block_type.nbytes)
        _tma_load(q_desc, [b, m0 + i * split_m, h * head_dim], q_bar.index(i), q_smem.index(i))
        _tma_load(do_desc, [b, m0 + i * split_m, h * head_dim], q_bar.index(i), do_smem.index(i))
    for j in range(n_blocks):
        stage = j % STAGES
        mbarrier.wait(kv_free.index(stage), ((j // STAGES) & 1) ^ 1)
        mbarrier.expect(kv_ready.index(stage), k_desc.block_type.nbytes + v_desc.block_type.nbytes)
        _tma_load(k_desc, [b, j * block_n, hk * head_dim], kv_ready.index(stage), k_smem.index(stage))
        _tma_load(v_desc, [b, j * block_n, hk * head_dim], kv_ready.index(stage), v_smem.index(stage))


@gluon.jit
def _dq_consume(WG: gl.constexpr, shared, CAUSAL: gl.constexpr, STAGES: gl.constexpr):
    (q_smem, do_smem, k_smem, v_smem, q_bar, kv_ready, kv_free, dq_ptr, stride_b, stride_n, lse_ptr, delta_ptr, b,
     h, m0, n_blocks, first_masked, n_q, n_k, n_heads, qk_scale, softmax_scale) = shared
    split_m: gl.constexpr = q_smem.type.shape[2]
    head_dim: gl.constexpr = q_smem.type.shape[3]
    block_n: gl.constexpr = k_smem.type.shape[2]
    dtype: gl.constexpr = q_smem.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, block_n, 16])
    dq_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                        instr_shape=[16, head_dim, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=dq_layout, k_width=2)
    rows = m0 + WG * split_m + gl.arange(0, split_m, layout=gl.SliceLayout(1, s_layout))
    offs_n = gl.arange(0, block_n, layout=gl.SliceLayout(0, s_layout))
    row_base = (b * n_heads + h).to(gl.int64) * n_q
    lse = gl.load(lse_ptr + row_base + rows, mask=rows < n_q, other=float("inf"))
    delta = gl.load(delta_ptr + row_base + rows, mask=rows < n_q, other=0.0)
    zero_s = gl.zeros([split_m, block_n], gl.float32, s_layout)
    dq = gl.zeros([split_m, head_dim], gl.float32, dq_layout)
    mbarrier.wait(q_bar.index(WG), 0)
    q = q_smem.index(WG).reshape([split_m, head_dim])
    do = do_smem.index(WG).reshape([split_m, head_dim])
    # dQ_j's wgmma runs under block j+1's S and dP: it is waited for (and K_j's stage released) one block late
    dq_tok = warpgroup_mma_init(dq)
    for j in range(n_blocks):
        stage = j % STAGES
        mbarrier.wait(kv_ready.index(stage), (j // STAGES) & 1)
        k = k_smem.index(stage).reshape([block_n, head_dim])
        v = v_smem.index(stage).reshape([block_n, head_dim])
        s_tok = warpgroup_mma(q, k.permute((1, 0)), zero_s, use_acc=False, is_async=True)
        dp_tok = warpgroup_mma(do, v.permute((1, 0)), zero_s, use_acc=False, is_async=True)
        # retire in issue order: two outstanding = the previous dQ done, S and dP still running
        dq = warpgroup_mma_wait(2, deps=(dq_tok, ))
        mbarrier.arrive(kv_free.index((j + STAGES - 1) % STAGES), count=1, pred=j > 0)
        s = warpgroup_mma_wait(1, deps=(s_tok, ))
        p = gl.exp2(s * qk_scale - lse[:, None])
        if j >= first_masked:
            cols = j * block_n + offs_n
            keep = cols[None, :] < n_k
            if CAUSAL:
                keep = keep & (cols[None, :] <= rows[:, None] + (n_k - n_q))
            p = gl.where(keep, p, 0.0)
        dp = warpgroup_mma_wait(0, deps=(dp_tok, ))
        ds = p * (dp - delta[:, None])
        dq_tok = warpgroup_mma(gl.convert_layout(ds.to(dtype), a_layout), k, dq, is_async=True)
    dq = warpgroup_mma_wait(0, deps=(dq_tok, ))
    mbarrier.arrive(kv_free.index((n_blocks + STAGES - 1) % STAGES), count=1, pred=n_blocks > 0)
    out_rows = m0 + WG * split_m + gl.arange(0, split_m, layout=gl.SliceLayout(1, dq_layout))
    offs_d = gl.arange(0, head_dim, layout=gl.SliceLayout(0, dq_layout))
    offs = b.to(gl.int64) * stride_b + out_rows.to(gl.int64)[:, None] * stride_n + h * head_dim + offs_d[None, :]
    gl.store(dq_ptr + offs, (dq * softmax_scale).to(dtype), mask=(out_rows < n_q)[:, None])


@gluon.jit
def _dq_kernel(q_desc, do_desc, k_desc, v_desc, dq_ptr, stride_b, stride_n, lse_ptr, delta_ptr, n_q, n_k, n_heads,
               group, qk_scale, softmax_scale, CAUSAL: gl.constexpr, STAGES: gl.constexpr):
    split_m: gl.constexpr = q_desc.block_type.shape[1]
    block_n: gl.constexpr = k_desc.block_type.shape[1]
    m0 = (gl.num_programs(0) - 1 - gl.program_id(0)) * (2 * split_m)  # causal: longest first
    bh = gl.program_id(1)
    b = bh // n_heads
    h = bh % n_heads
    hi = n_k
    first_masked = n_k // block_n
    if CAUSAL:
        hi = gl.maximum(gl.minimum(n_k, m0 + 2 * split_m + n_k - n_q), 0)
        first_masked = gl.minimum(first_masked, gl.maximum(m0 + n_k - n_q + 1, 0) // block_n)
    n_blocks = gl.cdiv(hi, block_n)

    q_smem = gl.allocate_shared_memory(q_desc.dtype, [2] + q_desc.block_type.shape, q_desc.layout)
    do_smem = gl.allocate_shared_memory(do_desc.dtype, [2] + do_desc.block_type.shape, do_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    kv_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    kv_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(q_bar.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(kv_ready.index(i), count=1)
        mbarrier.init(kv_free.index(i), count=2)
    shared = (q_smem, do_smem, k_smem, v_smem, q_bar, kv_ready, kv_free, dq_ptr, stride_b, stride_n, lse_ptr,
              delta_ptr, b, h, m0, n_blocks, first_masked, n_q, n_k, n_heads, qk_scale, softmax_scale)
    gl.warp_specialize([
        (_dq_consume, (0, shared, CAUSAL, STAGES)),
        (_dq_consume, (1, shared, CAUSAL, STAGES)),
        (_dq_load, (q_desc, do_desc, k_desc, v_desc, q_smem, do_smem, k_smem, v_smem, q_bar, kv_ready, kv_free,
                    b, h, h // group, m0, n_blocks, STAGES)),
    ], [4, 1], [240, 24])


# --------------------------------------------------------------------------------------------------- host
DQ_BLOCK_N = 64
DKDV_BLOCK_M = 32   # query rows per dK/dV step: 64 spilled 84 B (488 B causal) at D = 128, ptxas sm_90a

STAGES = 3


def gluon_bwd(do, q, k, v, o, lse2, causal, softmax_scale):
    """dq, dk, dv for the forward's O and log2-domain LSE (hopper.hopper_fwd's or the portable kernel's).
    Same support as hopper.unsupported_reason (checked by the caller), do with q's layout."""
    B, n_q, n_heads, head_dim = q.shape
    n_k, n_kv_heads = k.shape[1], k.shape[2]
    delta = hopper_bwd.bwd_delta(o, do)
    dq = torch.empty((B, n_q, n_heads, head_dim), device=q.device, dtype=q.dtype)
    dk = torch.empty((B, n_k, n_kv_heads, head_dim), device=q.device, dtype=q.dtype)
    dv = torch.empty_like(dk)
    qk_scale = softmax_scale * LOG2E
    group = n_heads // n_kv_heads
    d = hopper._descriptor
    _dkdv_kernel[(triton.cdiv(n_k, 2 * SPLIT), B * n_kv_heads)](
        d(q, DKDV_BLOCK_M), d(do, DKDV_BLOCK_M), d(k, SPLIT), d(v, SPLIT), dk, dv, dk.stride(0), dk.stride(1), lse2,
        delta, n_q, n_k, n_heads, n_kv_heads, group, qk_scale, softmax_scale, CAUSAL=causal, STAGES=STAGES,
        num_warps=4, maxnreg=168)
    _dq_kernel[(triton.cdiv(n_q, 2 * SPLIT), B * n_heads)](
        d(q, SPLIT), d(do, SPLIT), d(k, DQ_BLOCK_N), d(v, DQ_BLOCK_N), dq, dq.stride(0), dq.stride(1), lse2, delta,
        n_q, n_k, n_heads, group, qk_scale, softmax_scale, CAUSAL=causal, STAGES=STAGES, num_warps=4, maxnreg=168)
    return dq, dk, dv


# -------------------------------------------------------------------------------------------- the checks
def compile_offline(only=None, head_dims=(128, 64)):
    """The kernels for sm_90 on the installed triton, no GPU; ptxas -v of each (spills decide the tiles)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from flash_compile_check import ptxas_report
    for head_dim in head_dims:
        for causal in (False, True):
            x = torch.empty(1, 1024, 4, head_dim, dtype=torch.bfloat16)
            d = hopper._descriptor
            compile_split = lambda fn, values: hopper.compile_gluon_sm90(  # noqa: E731
                fn, values, dict(CAUSAL=causal, STAGES=STAGES), maxnreg=168)
            kernels = {
                "dkdv": lambda: compile_split(_dkdv_kernel, [
                    d(x, DKDV_BLOCK_M), d(x, DKDV_BLOCK_M), d(x, SPLIT), d(x, SPLIT), x, x, x.stride(0), x.stride(1),
                    torch.empty(1), torch.empty(1), 1024, 1024, 4, 2, 2, 0.1, 0.1]),
                "dq": lambda: compile_split(_dq_kernel, [
                    d(x, SPLIT), d(x, SPLIT), d(x, DQ_BLOCK_N), d(x, DQ_BLOCK_N), x, x.stride(0), x.stride(1),
                    torch.empty(1), torch.empty(1), 1024, 1024, 4, 2, 0.1, 0.1]),
                "fused": lambda: hopper_bwd.compile_sm90(head_dim, causal, group=2),
            }
            for name, build in kernels.items():
                if only and name not in only:
                    continue
                k = build()
                regs, spill, serialised = ptxas_report(k.asm["ptx"])
                print(f"{name} D={head_dim} causal={causal}: {regs} registers, shared {k.metadata.shared} B, warps "
                      f"{k.metadata.num_warps}, wgmma {k.asm['ptx'].count('wgmma.mma_async')}, spill stores "
                      f"{spill} B, serialised {serialised or 'no'}", flush=True)


VARIANTS = {"split": lambda *a: gluon_bwd(*a), "fused": lambda *a: hopper_bwd.hopper_bwd(*a)}


def check(variants=("split", "fused")):
    from hwattn import reference
    from hwattn.testing import rel_err
    failures = 0
    for B, n_q, n_k, H, Hk, D, causal, dtype in [
            (2, 1000, 1000, 4, 4, 128, False, torch.bfloat16), (2, 1000, 1000, 4, 4, 128, True, torch.bfloat16),
            (1, 777, 1500, 8, 2, 128, True, torch.bfloat16), (1, 1500, 777, 8, 2, 128, True, torch.bfloat16),
            (2, 513, 1025, 8, 1, 64, False, torch.bfloat16), (1, 2048, 2048, 4, 4, 64, True, torch.bfloat16),
            (2, 1, 300, 4, 4, 128, True, torch.bfloat16), (2, 300, 1, 4, 4, 128, True, torch.bfloat16),
            (1, 4096, 4096, 4, 2, 128, True, torch.float16), (1, 3000, 3000, 2, 2, 64, False, torch.float16)]:
        torch.manual_seed(n_q + n_k)
        q = torch.randn(B, n_q, H, D, device="cuda", dtype=dtype)
        k = torch.randn(B, n_k, Hk, D, device="cuda", dtype=dtype)
        v = torch.randn_like(k)
        do = torch.randn_like(q)
        scale = 1 / math.sqrt(D)
        o, lse2 = hopper.hopper_fwd(q, k, v, causal, scale)
        q64, k64, v64 = (x.double().requires_grad_() for x in (q, k, v))
        ref = reference.attention(q64, k64, v64, causal=causal)
        ref.backward(do.double())
        bound = 1e-2 if dtype == torch.bfloat16 else 2e-3
        for name in variants:
            dq, dk, dv = VARIANTS[name](do, q, k, v, o, lse2, causal, scale)
            errs = [rel_err(a, r.grad) for a, r in ((dq, q64), (dk, k64), (dv, v64))]
            ok = all(e <= bound for e in errs)
            failures += not ok
            print("OK " if ok else "BAD", name, (B, n_q, n_k, H, Hk, D, causal, str(dtype)[6:]), "dq/dk/dv",
                  [f"{e:.2e}" for e in errs], flush=True)
    return failures


def bench(variants=("split", "fused"), head_dims=(128, 64), lengths=(1024, 4096, 16384)):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F
    from hwattn.ops.flash.backward import flash_bwd
    for D in head_dims:
        for n in lengths:
            for causal in (False, True):
                B, H = 16384 // n, 2048 // D
                q, k, v, do = (torch.randn(B, n, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
                scale = 1 / math.sqrt(D)
                o, lse2 = hopper.hopper_fwd(q, k, v, causal, scale)
                qh, kh, vh = (x.transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    oh = F.scaled_dot_product_attention(qh, kh, vh, is_causal=causal)
                doh = do.transpose(1, 2).contiguous()
                flops = 2.5 * 4.0 * B * H * n * n * D / (2 if causal else 1)
                fns = {name: (lambda name=name: VARIANTS[name](do, q, k, v, o, lse2, causal, scale))
                       for name in variants}
                fns.update({"portable": lambda: flash_bwd(do, q, k, v, o, lse2, causal, scale),
                       "cudnn": lambda: torch.autograd.grad(oh, (qh, kh, vh), doh, retain_graph=True)})
                row = {}
                for name, fn in fns.items():
                    fn()
                    row[name] = round(flops / triton.testing.do_bench(fn) / 1e9, 1)
                print(dict(D=D, N=n, causal=causal, **row), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--compile", action="store_true")
    p.add_argument("--check", action="store_true")
    p.add_argument("--bench", action="store_true")
    p.add_argument("--only", default="", help="kernels to compile: dkdv,dq,fused (default all)")
    p.add_argument("--d", default="128,64", help="head dims")
    p.add_argument("--n", default="1024,4096,16384", help="sequence lengths (bench)")
    p.add_argument("--variants", default="split,fused", help="Gluon backwards to check / time: split,fused")
    a = p.parse_args()
    if a.compile:
        compile_offline(a.only.split(",") if a.only else None, tuple(int(x) for x in a.d.split(",")))
    variants = a.variants.split(",")
    bad = check(variants) if a.check else 0
    if a.bench:
        bench(variants, tuple(int(x) for x in a.d.split(",")), tuple(int(x) for x in a.n.split(",")))
    sys.exit(1 if bad else 0)
