"""Hopper (sm_90) forward written in Gluon: FlashAttention-3's structure by hand.

Triton's automatic warp specialisation (up to 3.9) does not build FA3's schedule for this loop
(docs/hopper.md), so this kernel states it explicitly with Gluon's Hopper primitives:

- a program owns BLOCK_M = 128 query rows of one head (a tile), split between two *consumer* warpgroups of
  64 rows (the default partition and a 4-warp worker), each with its own Q tile, scores and O accumulator in
  registers (240 of them each, by register reallocation);
- a one-warp *loader* partition (24 registers) streams K and V blocks by TMA into a 3-deep ring of
  shared-memory buffers, signalled by mbarriers (`k_ready` / `v_ready` per stage; the two consumers
  release a stage on `kv_free`, counted to 2);
- each consumer pipelines its own warpgroup (FA3's intra-warpgroup overlap): S_j = Q K_j^T is issued
  asynchronously before P_{j-1} V_{j-1}, so the tensor cores run block j-1's PV product while the warps
  compute block j's softmax. The two warpgroups are not coupled: FA3's ping-pong (taking turns to issue
  wgmmas) was built and measured, and moved nothing here (docs/hopper.md);
- one tile per program, longest first when causal; or (short non-causal sequences) a persistent grid of one
  program per SM walking tiles, the next tile's Q loading while this one finishes.

Scores stay in the log2 domain (one FMA scales and subtracts the max; exp2 is one MUFU op) like the portable
kernel, and the LSE written is the same (log2 domain, +inf for rows that see no key), so the portable
backward consumes it unchanged.

Loads and stores go through 3-D TMA descriptors over (batch, seqlen, heads * head_dim): rows past a
sequence's end are zero-filled on load and clipped on store by the hardware, per batch, so any Nq, Nk work.
Supported: fp16 / bf16, head_dim 64 or 128, causal (bottom-right, as the portable kernel) or not, GQA / MQA,
(heads, head_dim) contiguous with 16-byte-aligned rows. Everything else (score mods, windows, block masks,
other head dims, fp32) stays on the portable kernel. An e4m3 variant of the same kernel (`hopper_fwd` with
descales, the `FP8` constexpr) is compiled and tested offline, but nothing routes FP8 calls to it until it
has run on a GPU. GPU only: Triton's interpreter does not run Gluon;
CPU checks are offline compiles for sm_90 (`compile_sm90`, tests/ops/test_flash_hopper.py).
"""
from __future__ import annotations

import functools

import torch
import triton

from .common import LOG2E

try:  # Gluon is experimental: present in triton 3.6-3.9 with small API moves, absent elsewhere
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                                   warpgroup_mma, warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    HAVE_GLUON = True
except ImportError:  # pragma: no cover - depends on the installed triton
    HAVE_GLUON = False

SPLIT_M = 64        # query rows per consumer warpgroup (one m64 wgmma row block)
HEAD_DIMS = (64, 128)


def config(head_dim: int, causal: bool, n_k: int = 4096) -> dict:
    """Key block, ring depth and schedule; K + V + both Q tiles must fit 227 KB of shared memory. Picked on an
    H200 (docs/hopper.md, 2026-12-04): 3 stages beat 2 by 10-19% (the loader runs two blocks ahead). The
    persistent schedule (one program per SM walking tiles, the next tile's Q loading under this one's
    epilogue) wins only where tiles are short and all alike: non-causal, Nk <= 512 (+23% at D = 128); it lost
    2-30% causal (no global longest-first order) and 0-5% at longer Nk. Three consumer warpgroups (192-row
    tiles, FA3's choice at D = 64) against two, H100, 2026-12-06: non-causal +5% at Nk = 4096 and +12% at
    16384, -1% at 1024; causal +6% at 16384 but -3% at 4096 and -21% at 1024. Taken non-causal from
    Nk = 4096 only: causal 192-row tiles have not yet been checked against float64 on a GPU."""
    # shared memory at 3 stages: 3 x 64 KB + 32 KB = 224 KB at D = 128; at D = 64 3 x 32 KB + 16 KB with two
    # consumers, + 8 KB with three (no room for a third 64-row Q tile at D = 128)
    consumers = 3 if head_dim == 64 and not causal and n_k >= 4096 else 2
    return dict(BLOCK_N=128, STAGES=3, PERSISTENT=not causal and n_k <= 512, CONSUMERS=consumers)


def preferred(head_dim: int, n_k: int, causal: bool) -> bool:
    """Where HWATTN_FWD_KERNEL=auto takes this kernel over the portable one: where it was measured faster
    through `flash_attention` (H200, 2026-12-04, docs/hopper.md): D = 128 except short non-causal sequences
    (Nk = 512: 294 vs 351 TFLOP/s, host-bound), 1.3-1.5x at Nk = 1024, 1.25x at 16384; D = 64 from Nk = 2048
    (1.04-1.09x there; at Nk <= 1024 the portable kernel was 1.0-1.2x faster)."""
    if head_dim == 128:
        return causal or n_k > 512
    return n_k >= 2048


if HAVE_GLUON:
    # triton 3.7 renamed the TMA copies (3.9 removed the old names)
    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
    _tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global

    @gluon.jit
    def _tile(t, n_m_blocks, n_q, n_k, n_heads, group, CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr,
              BLOCK_N: gl.constexpr):
        """Tile t: query block m of head (b, h), its kv head, its number of key blocks and the first that
        needs the element mask (blocks wholly inside the sequence and left of the diagonal need none).
        A head's query blocks are consecutive tiles, longest (most keys, when causal) first, so the programs
        running at once share a head's K / V in L2."""
        bh = t // n_m_blocks
        m0 = (n_m_blocks - 1 - t % n_m_blocks) * BLOCK_M
        b = bh // n_heads
        h = bh % n_heads
        hi = n_k
        first_masked = n_k // BLOCK_N
        if CAUSAL:
            hi = gl.maximum(gl.minimum(n_k, m0 + BLOCK_M + n_k - n_q), 0)
            first_masked = gl.minimum(first_masked, gl.maximum(m0 + n_k - n_q + 1, 0) // BLOCK_N)
        return b, h, h // group, m0, gl.cdiv(hi, BLOCK_N), first_masked

    @gluon.jit
    def _load_partition(loads, CAUSAL: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                        FP8: gl.constexpr):
        """Per tile: each consumer's Q once it released the last one, then K and V block after block into the
        ring, a stage once every consumer released it. `count` numbers blocks across tiles (ring position
        and phase)."""
        (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, q_free, k_ready, v_ready, kv_free, n_tiles,
         n_m_blocks, n_q, n_k, n_heads, group) = loads
        split_m: gl.constexpr = q_desc.block_type.shape[1]
        head_dim: gl.constexpr = q_desc.block_type.shape[2]
        consumers: gl.constexpr = q_smem.type.shape[0]
        count = 0
        i_tile = 0
        for t in range(gl.program_id(0), n_tiles, gl.num_programs(0)):
            b, h, hk, m0, n_blocks, first_masked = _tile(t, n_m_blocks, n_q, n_k, n_heads, group, CAUSAL,
                                                         consumers * split_m, BLOCK_N)
            for i in gl.static_range(consumers):
                # a fresh mbarrier counts as having completed the phase before 0: the first waits pass
                mbarrier.wait(q_free.index(i), (i_tile & 1) ^ 1)
                mbarrier.expect(q_bar.index(i), q_desc.block_type.nbytes)
                _tma_load(q_desc, [b, m0 + i * split_m, h * head_dim], q_bar.index(i), q_smem.index(i))
            for j in range(n_blocks):
                stage = count % STAGES
                mbarrier.wait(kv_free.index(stage), ((count // STAGES) & 1) ^ 1)
                mbarrier.expect(k_ready.index(stage), k_desc.block_type.nbytes)
                _tma_load(k_desc, [b, j * BLOCK_N, hk * head_dim], k_ready.index(stage), k_smem.index(stage))
                mbarrier.expect(v_ready.index(stage), v_desc.block_type.nbytes)
                if FP8:  # V^T tiles: (head_dim, keys), seqlen-major
                    _tma_load(v_desc, [b, hk * head_dim, j * BLOCK_N], v_ready.index(stage), v_smem.index(stage))
                else:
                    _tma_load(v_desc, [b, j * BLOCK_N, hk * head_dim], v_ready.index(stage), v_smem.index(stage))
                count += 1
            i_tile += 1

    @gluon.jit
    def _softmax_block(s, m_i, l_i, rows, cols, n_q, n_k, qk_scale, masked, CAUSAL: gl.constexpr):
        """Online softmax of one score block (log2 domain). `masked` (runtime): the block crosses the
        sequence end or the causal diagonal and needs the element mask; the bulk of blocks skips it."""
        if masked:
            keep = cols[None, :] < n_k
            if CAUSAL:
                keep = keep & (cols[None, :] <= rows[:, None] + (n_k - n_q))
            s = gl.where(keep, s, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
        # a row with nothing visible yet keeps m = -inf; subtract 0 instead of inf - inf
        m_sub = gl.where(m_new == float("-inf"), 0.0, m_new)
        p = gl.exp2(s * qk_scale - m_sub[:, None])
        alpha = gl.exp2(m_i - m_sub)
        l_i = l_i * alpha + gl.sum(p, 1)
        return p, alpha, l_i, m_new

    @gluon.jit
    def _v_operand(v_smem, stage, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, FP8: gl.constexpr):
        """V as the B operand of P V: (keys, head_dim). Hopper's e4m3 wgmma needs it K-major (keys contiguous),
        so FP8 tiles arrive as V^T (head_dim, keys) and are read transposed."""
        if FP8:
            operand = v_smem.index(stage).reshape([HEAD_DIM, BLOCK_N]).permute((1, 0))
        else:
            operand = v_smem.index(stage).reshape([BLOCK_N, HEAD_DIM])
        return operand

    @gluon.jit
    def _consumer_partition(WG: gl.constexpr, shared, CAUSAL: gl.constexpr, BLOCK_N: gl.constexpr,
                            STAGES: gl.constexpr, PERSISTENT: gl.constexpr, FP8: gl.constexpr):
        """Warpgroup WG's 64 query rows of each tile through every key block, S_j issued before P_{j-1} V_{j-1}.
        `shared`: what every consumer gets (buffers, barriers, outputs, sizes), one tuple."""
        (q_smem, k_smem, v_smem, q_bar, q_free, k_ready, v_ready, kv_free, o_desc, o_ptr, stride_ob, stride_on,
         lse_ptr, descale_ptr, n_tiles, n_m_blocks, n_q, n_k, n_heads, group, qk_scale) = shared
        split_m: gl.constexpr = o_desc.block_type.shape[1]
        head_dim: gl.constexpr = o_desc.block_type.shape[2]
        consumers: gl.constexpr = q_smem.type.shape[0]
        dtype: gl.constexpr = q_smem.dtype       # P's, for the PV product (e4m3 under FP8)
        out_dtype: gl.constexpr = o_desc.dtype
        # wgmma's K step is 32 bytes: 16 elements at 16 bits, 32 at e4m3
        k_step: gl.constexpr = 256 // dtype.primitive_bitwidth
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, BLOCK_N, k_step])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, head_dim, k_step])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout,
                                                     k_width=32 // dtype.primitive_bitwidth)
        row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
        o_row_layout: gl.constexpr = gl.SliceLayout(1, o_layout)
        offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        zero_s = gl.zeros([split_m, BLOCK_N], gl.float32, s_layout)
        q = q_smem.index(WG).reshape([split_m, head_dim])

        count = 0
        i_tile = 0
        for t in range(gl.program_id(0), n_tiles, gl.num_programs(0)):
            b, h, hk, m0, n_blocks, first_masked = _tile(t, n_m_blocks, n_q, n_k, n_heads, group, CAUSAL,
                                                         consumers * split_m, BLOCK_N)
            rows = m0 + WG * split_m + gl.arange(0, split_m, layout=row_layout)
            tile_scale = qk_scale
            if FP8:
                # per-(batch, head) descales of Q, K, V as one (3, B, Hq) float32 tensor: Q's and K's fold into
                # the score scale, V's into the output
                plane = n_tiles // n_m_blocks
                bh_ptr = descale_ptr + b * n_heads + h
                tile_scale = qk_scale * gl.load(bh_ptr) * gl.load(bh_ptr + plane)
                out_scale = gl.load(bh_ptr + 2 * plane)
            acc = gl.zeros([split_m, head_dim], gl.float32, o_layout)
            m_i = gl.full([split_m], float("-inf"), gl.float32, row_layout)
            l_i = gl.zeros([split_m], gl.float32, row_layout)
            mbarrier.wait(q_bar.index(WG), i_tile & 1)
            if n_blocks > 0:
                stage = count % STAGES
                mbarrier.wait(k_ready.index(stage), (count // STAGES) & 1)
                s = warpgroup_mma(q, k_smem.index(stage).reshape([BLOCK_N, head_dim]).permute((1, 0)), zero_s,
                                  use_acc=False, is_async=True)
                s = warpgroup_mma_wait(0, deps=(s, ))
                p, alpha, l_i, m_i = _softmax_block(s, m_i, l_i, rows, offs_n, n_q, n_k, tile_scale,
                                                    first_masked <= 0, CAUSAL)
                p_op = gl.convert_layout(p.to(dtype), p_layout)
                for j in range(1, n_blocks):
                    prev = (count + j - 1) % STAGES
                    stage = (count + j) % STAGES
                    mbarrier.wait(k_ready.index(stage), ((count + j) // STAGES) & 1)
                    s_tok = warpgroup_mma(q, k_smem.index(stage).reshape([BLOCK_N, head_dim]).permute((1, 0)),
                                          zero_s, use_acc=False, is_async=True)
                    mbarrier.wait(v_ready.index(prev), ((count + j - 1) // STAGES) & 1)
                    acc_tok = warpgroup_mma(p_op, _v_operand(v_smem, prev, BLOCK_N, head_dim, FP8), acc,
                                            is_async=True)
                    # wgmma groups retire in order: one outstanding = S_j done, P_{j-1} V_{j-1} still running
                    s = warpgroup_mma_wait(1, deps=(s_tok, ))
                    p, alpha, l_i, m_i = _softmax_block(s, m_i, l_i, rows, j * BLOCK_N + offs_n, n_q, n_k,
                                                        tile_scale, j >= first_masked, CAUSAL)
                    acc = warpgroup_mma_wait(0, deps=(acc_tok, ))
                    mbarrier.arrive(kv_free.index(prev), count=1)
                    acc = acc * gl.convert_layout(alpha, o_row_layout)[:, None]
                    p_op = gl.convert_layout(p.to(dtype), p_layout)
                last = (count + n_blocks - 1) % STAGES
                mbarrier.wait(v_ready.index(last), ((count + n_blocks - 1) // STAGES) & 1)
                acc = warpgroup_mma(p_op, _v_operand(v_smem, last, BLOCK_N, head_dim, FP8), acc, is_async=True)
                acc = warpgroup_mma_wait(0, deps=(acc, ))
                mbarrier.arrive(kv_free.index(last), count=1)
            count += n_blocks
            i_tile += 1

            # rows that saw no key: O = 0, LSE = +inf (the portable kernel's convention)
            empty = l_i == 0.0
            lse = gl.where(empty, float("inf"), m_i + gl.log2(gl.where(empty, 1.0, l_i)))
            gl.store(lse_ptr + (b * n_heads + h).to(gl.int64) * n_q + rows, lse, mask=rows < n_q)
            inv_l = gl.convert_layout(1.0 / gl.where(empty, 1.0, l_i), o_row_layout)
            if FP8:
                inv_l = inv_l * out_scale
            o = (acc * inv_l[:, None]).to(out_dtype)
            if PERSISTENT or FP8:
                # the next tile's Q may land in this tile's buffer now (or, FP8, a 16-bit O does not fit an
                # e4m3 Q tile): O goes out from registers
                mbarrier.arrive(q_free.index(WG), count=1)
                o_rows = m0 + WG * split_m + gl.arange(0, split_m, layout=o_row_layout)
                offs_d = gl.arange(0, head_dim, layout=gl.SliceLayout(0, o_layout))
                o_ptrs = (o_ptr + b.to(gl.int64) * stride_ob + o_rows.to(gl.int64)[:, None] * stride_on
                          + h * head_dim + offs_d[None, :])
                gl.store(o_ptrs, o, mask=(o_rows < n_q)[:, None])
            else:
                # one tile per program: stage O in Q's buffer (its last wgmma retired) for a TMA store,
                # which the hardware clips at Nq
                o_smem = q_smem.index(WG)
                o_smem.reshape([split_m, head_dim]).store(o)
                fence_async_shared()
                _tma_store(o_desc, [b, m0 + WG * split_m, h * head_dim], o_smem)
                tma.store_wait(0)

    @gluon.jit
    def _fwd_kernel(q_desc, k_desc, v_desc, o_desc, o_ptr, stride_ob, stride_on, lse_ptr, descale_ptr, n_tiles,
                    n_m_blocks, n_q, n_k, n_heads, group, qk_scale, CAUSAL: gl.constexpr, BLOCK_N: gl.constexpr,
                    STAGES: gl.constexpr, PERSISTENT: gl.constexpr, FP8: gl.constexpr, CONSUMERS: gl.constexpr):
        q_smem = gl.allocate_shared_memory(q_desc.dtype, [CONSUMERS] + q_desc.block_type.shape, q_desc.layout)
        k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
        v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
        q_bar = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], mbarrier.MBarrierLayout())
        q_free = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], mbarrier.MBarrierLayout())
        k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        kv_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(CONSUMERS):
            mbarrier.init(q_bar.index(i), count=1)
            mbarrier.init(q_free.index(i), count=1)
        for i in gl.static_range(STAGES):
            mbarrier.init(k_ready.index(i), count=1)
            mbarrier.init(v_ready.index(i), count=1)
            mbarrier.init(kv_free.index(i), count=CONSUMERS)  # every consumer releases a stage

        shared = (q_smem, k_smem, v_smem, q_bar, q_free, k_ready, v_ready, kv_free, o_desc, o_ptr, stride_ob,
                  stride_on, lse_ptr, descale_ptr, n_tiles, n_m_blocks, n_q, n_k, n_heads, group, qk_scale)
        loads = (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, q_free, k_ready, v_ready, kv_free, n_tiles,
                 n_m_blocks, n_q, n_k, n_heads, group)
        # constexprs (and the functions) go into the partitions' tuples in place: bound to a name first, the
        # constexprs became tensors (3.6)
        if CONSUMERS == 3:  # 16 warps: 128 registers each at launch, re-split as 168 / 160 / 160 / 24 (D = 64)
            gl.warp_specialize([
                (_consumer_partition, (0, shared, CAUSAL, BLOCK_N, STAGES, PERSISTENT, FP8)),
                (_consumer_partition, (1, shared, CAUSAL, BLOCK_N, STAGES, PERSISTENT, FP8)),
                (_consumer_partition, (2, shared, CAUSAL, BLOCK_N, STAGES, PERSISTENT, FP8)),
                (_load_partition, (loads, CAUSAL, BLOCK_N, STAGES, FP8)),
            ], [4, 4, 1], [160, 160, 24])
        else:
            gl.warp_specialize([
                (_consumer_partition, (0, shared, CAUSAL, BLOCK_N, STAGES, PERSISTENT, FP8)),
                (_consumer_partition, (1, shared, CAUSAL, BLOCK_N, STAGES, PERSISTENT, FP8)),
                (_load_partition, (loads, CAUSAL, BLOCK_N, STAGES, FP8)),
            ], [4, 1], [240, 24])


_GL_DTYPE = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float8_e4m3fn: "float8e4nv"}


def _rows_aligned(x) -> bool:
    return not (x.data_ptr() % 16 or (x.stride(0) * x.element_size()) % 16 or (x.stride(1) * x.element_size()) % 16)


def unsupported_reason(q, k, v, causal, block_mask, mods, descale=None, out_dtype=None) -> str | None:
    """Why this kernel cannot take the call (None: it can). The caller falls back to the portable kernel.
    e4m3 inputs (the FP8 variant) come with descales, V seqlen-major as `flash_fwd` takes it, and a 16-bit
    out_dtype."""
    if not HAVE_GLUON:
        return "this triton has no Gluon Hopper API"
    if q.dtype not in _GL_DTYPE or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtype {q.dtype} (fp16 / bf16, or e4m3 with descales, only)"
    fp8 = q.dtype == torch.float8_e4m3fn
    if fp8 != (descale is not None):
        return "e4m3 inputs need descales, 16-bit ones take none"
    if fp8 and out_dtype not in (torch.bfloat16, torch.float16):
        return f"out_dtype {out_dtype} (bf16 / fp16 for e4m3 inputs)"
    if not fp8 and out_dtype not in (None, q.dtype):
        return f"out_dtype {out_dtype} other than the inputs' {q.dtype}"
    if q.shape[-1] not in HEAD_DIMS:
        return f"head_dim {q.shape[-1]} (not in {HEAD_DIMS})"
    if block_mask is not None or (mods is not None and (mods.alibi_slopes is not None or mods.softcap
                                                        or mods.rel_bias is not None or mods.window is not None)):
        return "block masks, windows and score mods run on the portable kernel"
    for x in (q, k) if fp8 else (q, k, v):
        heads, head_dim = x.shape[2], x.shape[3]
        if x.stride(3) != 1 or (heads > 1 and x.stride(2) != head_dim):
            return "(heads, head_dim) not contiguous"
        if not _rows_aligned(x):
            return "rows not 16-byte aligned (TMA)"
    if fp8:
        heads, head_dim = v.shape[2], v.shape[3]
        if v.stride(1) != 1 or (heads > 1 and v.stride(2) != head_dim * v.stride(3)) or v.data_ptr() % 16 \
                or v.stride(0) % 16 or v.stride(3) % 16:
            return "e4m3 V not seqlen-major with 16-byte-aligned rows"
    if q.device.type != "cuda" or _capability(q.device) != (9, 0):
        return "not an sm_90 GPU"
    return None


@functools.lru_cache(maxsize=None)
def _capability(device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


@functools.lru_cache(maxsize=None)
def _smem_layout(rows: int, cols: int, dtype: torch.dtype):
    # cached: building it costs ~6 us of Python a call, four times a launch, and short sequences are host-bound
    element = gl.float32 if dtype == torch.float32 else getattr(gl, _GL_DTYPE[dtype])  # fp32: the backward's dQ
    return gl.NVMMASharedLayout.get_default_for([1, rows, cols], element)


def _descriptor(x, rows, cols=None):
    """(B, N, H, D) with (H, D) contiguous, as (B, N, H * D): tiles of `rows` tokens of one head (of `cols`
    columns of it: default the whole head_dim)."""
    B, n, heads, head_dim = x.shape
    cols = cols or head_dim
    return TensorDescriptor(x, [B, n, heads * head_dim], [x.stride(0), x.stride(1), 1], [1, rows, cols],
                            _smem_layout(rows, cols, x.dtype))


def _seqlen_major_descriptor(v, cols):
    """Seqlen-major (B, N, H, D) (N contiguous) as (B, H * D, N): tiles of V^T, `cols` tokens of one head."""
    B, n, heads, head_dim = v.shape
    return TensorDescriptor(v, [B, heads * head_dim, n], [v.stride(0), v.stride(3), 1], [1, head_dim, cols],
                            _smem_layout(head_dim, cols, v.dtype))


def hopper_fwd(q, k, v, causal: bool, softmax_scale: float, cfg: dict | None = None, descale=None, out_dtype=None):
    """q (B, Nq, Hq, D), k / v (B, Nk, Hkv, D), checked by `unsupported_reason`. Returns O (B, Nq, Hq, D)
    contiguous and the log2-domain LSE (B, Hq, Nq) float32, as `forward.flash_fwd`. cfg: overrides of
    `config(D, causal, Nk)` (experiments). FP8 (e4m3 q, k, v; v seqlen-major): descale = (descale_q (B, Hq),
    descale_k (B, Hkv), descale_v (B, Hkv)) float32 and a 16-bit out_dtype, as `flash_fwd`; this variant is
    correct on an H100 but slower than the portable FP8 forward there (2026-12-06), so nothing routes to it
    (docs/hopper.md)."""
    B, n_q, n_heads, head_dim = q.shape
    n_k, n_kv_heads = k.shape[1], k.shape[2]
    group = n_heads // n_kv_heads
    o = torch.empty((B, n_q, n_heads, head_dim), device=q.device, dtype=out_dtype or q.dtype)
    lse = torch.empty((B, n_heads, n_q), device=q.device, dtype=torch.float32)
    cfg = _checked_config({**config(head_dim, causal, n_k), **(cfg or {})}, head_dim, q.element_size())
    n_m_blocks = triton.cdiv(n_q, cfg["CONSUMERS"] * SPLIT_M)
    n_tiles = n_m_blocks * B * n_heads
    n_programs = min(n_tiles, _sm_count(q.device)) if cfg["PERSISTENT"] else n_tiles
    fp8 = descale is not None
    if fp8:  # one (3, B, Hq) table: a load per factor per tile
        descale_q, descale_k, descale_v = descale
        descales = torch.stack([descale_q, descale_k.repeat_interleave(group, 1),
                                descale_v.repeat_interleave(group, 1)]).float().contiguous()
        v_desc = _seqlen_major_descriptor(v, cfg["BLOCK_N"])
    else:
        descales, v_desc = lse, _descriptor(v, cfg["BLOCK_N"])  # descales: never read
    # 12 warps in all with 2 consumers (the loader's one rounds up to a warpgroup): 168 registers each at
    # launch, which the partitions then re-split as 240 / 240 / 24; 16 warps with 3 consumers: 128 each
    _fwd_kernel[(n_programs,)](_descriptor(q, SPLIT_M), _descriptor(k, cfg["BLOCK_N"]), v_desc,
                               _descriptor(o, SPLIT_M), o, o.stride(0), o.stride(1), lse, descales, n_tiles,
                               n_m_blocks, n_q, n_k, n_heads, group, softmax_scale * LOG2E, CAUSAL=causal,
                               FP8=fp8, num_warps=4, maxnreg=_maxnreg(cfg["CONSUMERS"]), **cfg)
    return o, lse


SMEM_LIMIT = 232448  # sm_90: 227 KB of shared memory per block


def _checked_config(cfg: dict, head_dim: int, element_size: int) -> dict:
    """Refuse overrides the kernel cannot run: unknown keys, and tiles that do not fit shared memory."""
    unknown = set(cfg) - {"BLOCK_N", "STAGES", "PERSISTENT", "CONSUMERS"}
    if unknown:
        raise ValueError(f"cfg: unknown keys {sorted(unknown)} (BLOCK_N, STAGES, PERSISTENT, CONSUMERS)")
    if cfg["CONSUMERS"] not in (2, 3) or cfg["STAGES"] < 1 or cfg["BLOCK_N"] not in (64, 128):
        raise ValueError(f"cfg: CONSUMERS must be 2 or 3, STAGES >= 1 and BLOCK_N 64 or 128, got {cfg}")
    smem = (cfg["CONSUMERS"] * SPLIT_M + 2 * cfg["STAGES"] * cfg["BLOCK_N"]) * head_dim * element_size
    if smem > SMEM_LIMIT - 1024:  # barriers and alignment
        raise ValueError(f"cfg {cfg} needs {smem} B of shared memory at head_dim {head_dim}, more than sm_90's "
                         f"{SMEM_LIMIT}")
    return cfg


def _maxnreg(consumers: int) -> int:
    """Registers per thread at launch: the register file (64 K) over all warps, rounded down to 8."""
    return 65536 // ((consumers + 1) * 128) // 8 * 8


@functools.lru_cache(maxsize=None)
def _sm_count(device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def compile_gluon_sm90(fn, values, constexprs: dict, maxnreg: int, num_warps: int = 4):
    """triton.compile a Gluon kernel for sm_90 without a GPU, specialised as a launch with `values` (the
    positional arguments, tensors and descriptors included) and `constexprs` would be."""
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton._C.libtriton import native_specialize_impl
    from triton.experimental.gluon._runtime import GluonASTSource
    signature, constexprs = {}, dict(constexprs)
    for name, value in zip(fn.arg_names, values):
        signature[name] = native_specialize_impl(BaseBackend, value, False, True, True)[0]
        if signature[name] == "constexpr":  # ints equal to 1 are specialised away, as a launch does
            constexprs[name] = value
    signature.update({name: "constexpr" for name in constexprs})
    return triton.compile(GluonASTSource(fn, signature, constexprs), target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=num_warps, maxnreg=maxnreg))


def compile_sm90(head_dim: int = 128, causal: bool = False, dtype: torch.dtype = torch.bfloat16, group: int = 1,
                 cfg: dict | None = None):
    """Compile the kernel for sm_90 without a GPU (what the CPU tests can check, since the interpreter does not
    run Gluon) and return Triton's compiled kernel: `.asm["ptx"]`, `.metadata.shared`, `.metadata.num_warps`.
    Specialised as a launch on aligned lengths (multiples of 16) would be."""
    if not HAVE_GLUON:
        raise RuntimeError("this triton has no Gluon Hopper API")
    if head_dim not in HEAD_DIMS or dtype not in _GL_DTYPE:
        raise ValueError(f"compile_sm90: head_dim must be in {HEAD_DIMS} and dtype fp16 / bf16 / e4m3, got "
                         f"{head_dim}, {dtype}")
    fp8 = dtype == torch.float8_e4m3fn
    cfg = _checked_config({**config(head_dim, causal), **(cfg or {})}, head_dim, 1 if fp8 else 2)
    x = torch.empty(1, 1024, 4, head_dim, dtype=dtype)  # never read: descriptors only carry shapes and layouts
    out = torch.empty(1, 1024, 4, head_dim, dtype=torch.bfloat16 if fp8 else dtype)
    v_desc = (_seqlen_major_descriptor(torch.empty(1, 4, head_dim, 1024, dtype=dtype).permute(0, 3, 1, 2),
                                       cfg["BLOCK_N"]) if fp8 else _descriptor(x, cfg["BLOCK_N"]))
    values = [_descriptor(x, SPLIT_M), _descriptor(x, cfg["BLOCK_N"]), v_desc, _descriptor(out, SPLIT_M), out,
              out.stride(0), out.stride(1), torch.empty(1), torch.empty(1), 256, 8, 1024, 1024, 4, group, 0.1]
    # _fwd_kernel is a GluonJITFunction even under TRITON_INTERPRET=1 (the interpreter does not take Gluon)
    return compile_gluon_sm90(_fwd_kernel, values, dict(CAUSAL=causal, FP8=fp8, **cfg), _maxnreg(cfg["CONSUMERS"]))
