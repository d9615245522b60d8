"""Hopper (sm_90) backward written in Gluon: FlashAttention-3's schedule, one launch, five block matmuls.

A program owns 128 keys of one kv head (64 per consumer warpgroup: K and V resident in shared memory, the
warpgroup's dK and dV in registers, 240 of them each by register reallocation) and walks the query blocks of
every query head of its group, 64 rows a step; a one-warp loader partition streams Q and dO by TMA into a
ring of shared-memory stages (as the forward of `hopper.py` streams K and V). Per step each warpgroup:

- issues S = Q K^T and dP = dO V^T for its 64 keys back to back (S as (queries, keys), so the LSE and delta
  are two registers a thread; as (keys, queries) they were 32 and spilled);
- forms P = exp2(S - LSE) (log2 domain: the forward's LSE) while dP finishes, stores P to shared memory and
  issues dV += P^T dO (P^T a transposed shared-memory operand);
- forms dS = P (dP - delta), stores it to a double-buffered shared tile both warpgroups read (mbarriers
  `ds_ready` / `ds_free`, two arrivals each), issues dK += dS^T Q;
- once the other warpgroup's dS is there, issues its half of dQ_i (head_dim split between the two):
  dQ_i[:, half] = dS_i K[:, half] over all 128 keys, and adds it to a float32 dQ in global memory by a TMA
  reduce-add (FA3's way; the adds from many programs make dQ non-deterministic in its last bits).

dQ is then cast to the inputs' dtype (one elementwise pass); delta = rowsum(dO O) comes from the portable
backward's preprocess kernel. Five block matmuls per (query block, key block) instead of the portable split
schedule's seven. Causal: bottom-right (the portable kernel's convention), the diagonal blocks walked first.
Same support as the forward (`hopper.unsupported_reason`): fp16 / bf16, head_dim 64 / 128, GQA / MQA, any
Nq, Nk (TMA zero-fills and clips), no score mods, windows or block masks. GPU only: the interpreter does not
run Gluon; the CPU checks compile it for sm_90 (`compile_sm90`, tests/ops/test_flash_hopper.py).
"""
from __future__ import annotations

import torch
import triton

from . import hopper
from .backward import bwd_delta
from .common import LOG2E

if hopper.HAVE_GLUON:
    from triton._C.libtriton import ir as _ir
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language._core import builtin as _builtin
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                                   warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

SPLIT_N = 64    # keys per consumer warpgroup
BLOCK_M = 64    # query rows per step (FA3's choice at D = 128)


def preferred(head_dim: int, n_k: int, causal: bool) -> bool:
    """Where HWATTN_BWD_KERNEL=auto takes this kernel over the portable backward: nowhere until it has been
    timed beside it on a GPU (docs/hopper.md)."""
    return False


def stages(head_dim: int) -> int:
    """Q / dO ring depth: 3 stages at D = 128 would need 245 KB of shared memory (227 KB on sm_90)."""
    return 2 if head_dim > 64 else 3


if hopper.HAVE_GLUON:
    _tma_load = hopper._tma_load
    _cta_barrier = getattr(gl, "thread_barrier", None) or gl.barrier   # renamed by 3.9

    @_builtin
    def _tma_reduce_add(tensor_desc, coord, src, _semantic=None):
        """TMA reduce-add of a shared-memory tile into global memory (cp.reduce.async.bulk.tensor .add):
        triton 3.9 calls it tma.async_atomic_add; 3.6 has the op but no Python wrapper."""
        coord = _semantic._convert_to_ir_values(coord, require_i64=False)
        _semantic.builder.create_async_tma_reduce(_ir.DESCRIPTOR_REDUCE_KIND.ADD, tensor_desc.handle, coord, src.handle)

    @gluon.jit
    def _key_program(n_q, n_k, n_kv_heads, SPLIT: gl.constexpr, BLOCK: gl.constexpr, CAUSAL: gl.constexpr):
        """This program's 2 x SPLIT keys (from n0) of batch b, kv head hk, and its query blocks: it walks
        [first_block, n_q_blocks), the blocks before `mid` straddling the causal diagonal (query i sees key j
        iff j <= i + Nk - Nq: blocks before first_block see none of these keys, blocks from mid on all)."""
        n0 = gl.program_id(0) * (2 * SPLIT)   # causal: key block 0 sees the most queries and launches first
        bh = gl.program_id(1)
        n_q_blocks = gl.cdiv(n_q, BLOCK)
        first_block = 0
        first_full = 0
        if CAUSAL:
            first_block = gl.maximum(n0 - (n_k - n_q), 0) // BLOCK
            first_full = gl.cdiv(gl.maximum(n0 + 2 * SPLIT - 1 - (n_k - n_q), 0), BLOCK)
        mid = gl.minimum(gl.maximum(first_full, first_block), n_q_blocks)
        return n0, bh // n_kv_heads, bh % n_kv_heads, n_q_blocks, first_block, mid

    @gluon.jit
    def _store_dkdv(dk, dv, dk_ptr, dv_ptr, stride_b, stride_n, b, hk, n0, n_k, softmax_scale, WG: gl.constexpr):
        """This warpgroup's dK (scaled) and dV rows, keys past Nk dropped."""
        split_n: gl.constexpr = dk.type.shape[0]
        head_dim: gl.constexpr = dk.type.shape[1]
        key_rows = n0 + WG * split_n + gl.arange(0, split_n, layout=gl.SliceLayout(1, dk.type.layout))
        offs_d = gl.arange(0, head_dim, layout=gl.SliceLayout(0, dk.type.layout))
        offs = b.to(gl.int64) * stride_b + key_rows.to(gl.int64)[:, None] * stride_n + hk * head_dim + offs_d[None, :]
        ok = (key_rows < n_k)[:, None]
        gl.store(dk_ptr + offs, (dk * softmax_scale).to(dk_ptr.dtype.element_ty), mask=ok)
        gl.store(dv_ptr + offs, dv.to(dv_ptr.dtype.element_ty), mask=ok)

    @gluon.jit
    def _load_partition(q_desc, do_desc, k_desc, v_desc, q_smem, do_smem, k_smem, v_smem, kv_bar, qdo_ready,
                        qdo_free, b, hk, n0, group, first_block, n_q_blocks, STAGES: gl.constexpr):
        """K and V of both warpgroups once, then Q and dO of every query block of every head of the group."""
        split_n: gl.constexpr = k_desc.block_type.shape[1]
        head_dim: gl.constexpr = k_desc.block_type.shape[2]
        block_m: gl.constexpr = q_desc.block_type.shape[1]
        for wg in gl.static_range(2):
            mbarrier.expect(kv_bar.index(wg), k_desc.block_type.nbytes + v_desc.block_type.nbytes)
            _tma_load(k_desc, [b, n0 + wg * split_n, hk * head_dim], kv_bar.index(wg), k_smem.index(wg))
            _tma_load(v_desc, [b, n0 + wg * split_n, hk * head_dim], kv_bar.index(wg), v_smem.index(wg))
        count = 0
        for hg in range(group):
            h = hk * group + hg
            for i in range(first_block, n_q_blocks):
                stage = count % STAGES
                mbarrier.wait(qdo_free.index(stage), ((count // STAGES) & 1) ^ 1)
                mbarrier.expect(qdo_ready.index(stage), q_desc.block_type.nbytes + do_desc.block_type.nbytes)
                _tma_load(q_desc, [b, i * block_m, h * head_dim], qdo_ready.index(stage), q_smem.index(stage))
                _tma_load(do_desc, [b, i * block_m, h * head_dim], qdo_ready.index(stage), do_smem.index(stage))
                count += 1

    @gluon.jit
    def _block_step(dk, dv, k, v, k_smem, q_smem, do_smem, p_smem, ds_smem, dq_smem, qdo_ready, qdo_free, ds_ready,
                    ds_free, dq_desc, b, h, keys, offs_m, zero_s, zero_dq, lse_ptr, delta_ptr, row_base, i, count, mid,
                    n_q, n_k, qk_scale, softmax_scale, WG: gl.constexpr, CAUSAL: gl.constexpr, STAGES: gl.constexpr):
        """Query block i against this warpgroup's 64 keys: dK, dV updated and returned, dQ_i's share added."""
        block_m: gl.constexpr = q_smem.type.shape[2]
        head_dim: gl.constexpr = q_smem.type.shape[3]
        split_n: gl.constexpr = k_smem.type.shape[2]
        dtype: gl.constexpr = q_smem.dtype
        stage = count % STAGES
        buf = count % 2
        rows = i * block_m + offs_m
        lse = gl.load(lse_ptr + row_base + rows, mask=rows < n_q, other=float("inf"))
        delta = gl.load(delta_ptr + row_base + rows, mask=rows < n_q, other=0.0)
        mbarrier.wait(qdo_ready.index(stage), (count // STAGES) & 1)
        q = q_smem.index(stage).reshape([block_m, head_dim])
        do = do_smem.index(stage).reshape([block_m, head_dim])
        s_tok = warpgroup_mma(q, k.permute((1, 0)), zero_s, use_acc=False, is_async=True)
        dp_tok = warpgroup_mma(do, v.permute((1, 0)), zero_s, use_acc=False, is_async=True)
        s = warpgroup_mma_wait(1, deps=(s_tok, ))
        p = gl.exp2(s * qk_scale - lse[:, None])
        if CAUSAL:
            if i < mid:   # the block straddles the diagonal
                p = gl.where(rows[:, None] + (n_k - n_q) >= keys[None, :], p, 0.0)
        p_smem.index(WG).store(p.to(dtype))   # its last reader, the previous block's dV, was waited for
        fence_async_shared()
        _cta_barrier()
        dv_tok = warpgroup_mma(p_smem.index(WG).permute((1, 0)), do, dv, is_async=True)
        dp = warpgroup_mma_wait(1, deps=(dp_tok, ))
        ds = (p * (dp - delta[:, None])).to(dtype)
        # dS of these 64 keys for both warpgroups' dQ, once the buffer's readers of two blocks ago are done
        mbarrier.wait(ds_free.index(buf), ((count // 2) & 1) ^ 1)
        ds_smem.index(2 * buf + WG).store(ds)
        fence_async_shared()
        _cta_barrier()
        mbarrier.arrive(ds_ready.index(buf), count=1)
        dk_tok = warpgroup_mma(ds_smem.index(2 * buf + WG).permute((1, 0)), q, dk, is_async=True)
        mbarrier.wait(ds_ready.index(buf), (count // 2) & 1)
        # dQ_i[:, this warpgroup's half of head_dim] = sum over both warpgroups' keys of dS K
        half: gl.constexpr = head_dim // 2
        dq_tok = warpgroup_mma(ds_smem.index(2 * buf),
                               k_smem.index(0).reshape([split_n, head_dim]).slice(WG * half, half, dim=1), zero_dq,
                               use_acc=False, is_async=True)
        dq_tok = warpgroup_mma(ds_smem.index(2 * buf + 1),
                               k_smem.index(1).reshape([split_n, head_dim]).slice(WG * half, half, dim=1), dq_tok,
                               is_async=True)
        dv, dk, dq = warpgroup_mma_wait(0, deps=(dv_tok, dk_tok, dq_tok))
        mbarrier.arrive(qdo_free.index(stage), count=1)
        mbarrier.arrive(ds_free.index(buf), count=1)
        # into the float32 dQ by a TMA reduce-add (rows past Nq clipped by the descriptor), once the previous
        # block's reduce has read the tile
        tma.store_wait(0)
        _cta_barrier()
        dq_smem.index(WG).reshape([block_m, half]).store(dq * softmax_scale)
        fence_async_shared()
        _cta_barrier()
        _tma_reduce_add(dq_desc, [b, i * block_m, h * head_dim + WG * half], dq_smem.index(WG))
        return dk, dv

    @gluon.jit
    def _consumer_partition(WG: gl.constexpr, shared, CAUSAL: gl.constexpr, STAGES: gl.constexpr):
        (q_smem, do_smem, k_smem, v_smem, p_smem, ds_smem, dq_smem, kv_bar, qdo_ready, qdo_free, ds_ready, ds_free,
         dk_ptr, dv_ptr, dq_desc, stride_b, stride_n, lse_ptr, delta_ptr, b, hk, n0, group, first_block, mid,
         n_q_blocks, n_q, n_k, n_heads, qk_scale, softmax_scale) = shared
        split_n: gl.constexpr = k_smem.type.shape[2]
        head_dim: gl.constexpr = k_smem.type.shape[3]
        block_m: gl.constexpr = q_smem.type.shape[2]
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, split_n, 16])
        kv_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                            instr_shape=[16, head_dim, 16])
        dq_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                            instr_shape=[16, head_dim // 2, 16])
        keys = n0 + WG * split_n + gl.arange(0, split_n, layout=gl.SliceLayout(0, s_layout))
        offs_m = gl.arange(0, block_m, layout=gl.SliceLayout(1, s_layout))
        zero_s = gl.zeros([block_m, split_n], gl.float32, s_layout)
        zero_dq = gl.zeros([block_m, head_dim // 2], gl.float32, dq_layout)
        dk = gl.zeros([split_n, head_dim], gl.float32, kv_layout)
        dv = gl.zeros([split_n, head_dim], gl.float32, kv_layout)
        mbarrier.wait(kv_bar.index(0), 0)
        mbarrier.wait(kv_bar.index(1), 0)   # dQ reads both halves of K
        k = k_smem.index(WG).reshape([split_n, head_dim])
        v = v_smem.index(WG).reshape([split_n, head_dim])
        count = 0
        for hg in range(group):
            h = hk * group + hg
            row_base = (b * n_heads + h).to(gl.int64) * n_q
            # one loop, the diagonal blocks (i < mid) first: two specialised loops spilled 340 B causal, this ~190
            for i in range(first_block, n_q_blocks):
                dk, dv = _block_step(dk, dv, k, v, k_smem, q_smem, do_smem, p_smem, ds_smem, dq_smem, qdo_ready,
                                     qdo_free, ds_ready, ds_free, dq_desc, b, h, keys, offs_m, zero_s, zero_dq,
                                     lse_ptr, delta_ptr, row_base, i, count, mid, n_q, n_k, qk_scale, softmax_scale,
                                     WG, CAUSAL, STAGES)
                count += 1
        tma.store_wait(0)
        _store_dkdv(dk, dv, dk_ptr, dv_ptr, stride_b, stride_n, b, hk, n0, n_k, softmax_scale, WG)

    @gluon.jit
    def _bwd_kernel(q_desc, do_desc, k_desc, v_desc, dq_desc, dk_ptr, dv_ptr, stride_b, stride_n, lse_ptr, delta_ptr,
                    n_q, n_k, n_heads, n_kv_heads, group, qk_scale, softmax_scale, CAUSAL: gl.constexpr,
                    STAGES: gl.constexpr):
        split_n: gl.constexpr = k_desc.block_type.shape[1]
        block_m: gl.constexpr = q_desc.block_type.shape[1]
        n0, b, hk, n_q_blocks, first_block, mid = _key_program(n_q, n_k, n_kv_heads, split_n, block_m, CAUSAL)
        q_smem = gl.allocate_shared_memory(q_desc.dtype, [STAGES] + q_desc.block_type.shape, q_desc.layout)
        do_smem = gl.allocate_shared_memory(do_desc.dtype, [STAGES] + do_desc.block_type.shape, do_desc.layout)
        k_smem = gl.allocate_shared_memory(k_desc.dtype, [2] + k_desc.block_type.shape, k_desc.layout)
        v_smem = gl.allocate_shared_memory(v_desc.dtype, [2] + v_desc.block_type.shape, v_desc.layout)
        ds_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        p_smem = gl.allocate_shared_memory(q_desc.dtype, [2, block_m, split_n], ds_layout)   # [warpgroup]
        ds_smem = gl.allocate_shared_memory(q_desc.dtype, [4, block_m, split_n], ds_layout)  # [buffer, warpgroup]
        dq_smem = gl.allocate_shared_memory(dq_desc.dtype, [2] + dq_desc.block_type.shape, dq_desc.layout)
        kv_bar = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        qdo_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        qdo_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        ds_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        ds_free = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(2):
            mbarrier.init(kv_bar.index(i), count=1)
            mbarrier.init(ds_ready.index(i), count=2)
            mbarrier.init(ds_free.index(i), count=2)
        for i in gl.static_range(STAGES):
            mbarrier.init(qdo_ready.index(i), count=1)
            mbarrier.init(qdo_free.index(i), count=2)
        shared = (q_smem, do_smem, k_smem, v_smem, p_smem, ds_smem, dq_smem, kv_bar, qdo_ready, qdo_free, ds_ready,
                  ds_free, dk_ptr, dv_ptr, dq_desc, stride_b, stride_n, lse_ptr, delta_ptr, b, hk, n0, group,
                  first_block, mid, n_q_blocks, n_q, n_k, n_heads, qk_scale, softmax_scale)
        gl.warp_specialize([
            (_consumer_partition, (0, shared, CAUSAL, STAGES)),
            (_consumer_partition, (1, shared, CAUSAL, STAGES)),
            (_load_partition, (q_desc, do_desc, k_desc, v_desc, q_smem, do_smem, k_smem, v_smem, kv_bar, qdo_ready,
                               qdo_free, b, hk, n0, group, first_block, n_q_blocks, STAGES)),
        ], [4, 1], [240, 24])


def hopper_bwd(do, q, k, v, o, lse2, causal: bool, softmax_scale: float, n_stages: int | None = None):
    """dq, dk, dv for the forward's O and log2-domain LSE (B, Hq, Nq) (`hopper.hopper_fwd`'s or the portable
    kernel's); q, k, v, do (B, N, H, D) as `hopper.unsupported_reason` accepts them (checked by the caller),
    do with q's layout. dq, dk, dv contiguous in the inputs' dtype. n_stages: the Q / dO ring depth
    (experiments; default `stages(D)`)."""
    B, n_q, n_heads, head_dim = q.shape
    n_k, n_kv_heads = k.shape[1], k.shape[2]
    delta = bwd_delta(o, do)
    # float32, zeroed: the programs' TMA reduce-adds land here, tiles of 64 rows and half a head (a warpgroup's)
    dq_acc = torch.zeros((B, n_q, n_heads, head_dim), device=q.device, dtype=torch.float32)
    dk = torch.empty((B, n_k, n_kv_heads, head_dim), device=q.device, dtype=q.dtype)
    dv = torch.empty_like(dk)
    d = hopper._descriptor
    n_stages = n_stages or stages(head_dim)
    _bwd_kernel[(triton.cdiv(n_k, 2 * SPLIT_N), B * n_kv_heads)](
        d(q, BLOCK_M), d(do, BLOCK_M), d(k, SPLIT_N), d(v, SPLIT_N), d(dq_acc, BLOCK_M, head_dim // 2), dk, dv,
        dk.stride(0), dk.stride(1), lse2, delta, n_q, n_k, n_heads, n_kv_heads, n_heads // n_kv_heads,
        softmax_scale * LOG2E, softmax_scale, CAUSAL=causal, STAGES=n_stages, num_warps=4, maxnreg=168)
    return dq_acc.to(q.dtype), dk, dv


def compile_sm90(head_dim: int = 128, causal: bool = False, dtype: torch.dtype = torch.bfloat16, group: int = 1):
    """Compile the kernel for sm_90 without a GPU and return Triton's compiled kernel (`.asm["ptx"]`,
    `.metadata.shared`), specialised as a launch on aligned lengths would be (the CPU tests' check)."""
    if not hopper.HAVE_GLUON:
        raise RuntimeError("this triton has no Gluon Hopper API")
    if head_dim not in hopper.HEAD_DIMS or dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"compile_sm90: head_dim must be in {hopper.HEAD_DIMS} and dtype fp16 / bf16, got "
                         f"{head_dim}, {dtype}")
    x = torch.empty(1, 1024, 4 * group, head_dim, dtype=dtype)  # never read: descriptors carry shapes only
    kv = torch.empty(1, 1024, 4, head_dim, dtype=dtype)
    d = hopper._descriptor
    values = [d(x, BLOCK_M), d(x, BLOCK_M), d(kv, SPLIT_N), d(kv, SPLIT_N),
              d(torch.empty(1, 1024, 4 * group, head_dim), BLOCK_M, head_dim // 2), kv, kv, kv.stride(0), kv.stride(1),
              torch.empty(1), torch.empty(1), 1024, 1024, 4 * group, 4, group, 0.1, 0.1]
    return hopper.compile_gluon_sm90(_bwd_kernel, values, dict(CAUSAL=causal, STAGES=stages(head_dim)), maxnreg=168)
