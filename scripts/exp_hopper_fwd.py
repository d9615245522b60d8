#!/usr/bin/env python
"""Experiment for issue 7 (Hopper path): what do tensor descriptors (TMA) and Triton's automatic warp
specialisation move on the forward, with everything else equal?

    python3 scripts/exp_hopper_fwd.py --out $OUT        (GPU; ~3 min)
    TRITON_INTERPRET=1 python3 scripts/exp_hopper_fwd.py --smoke     (CPU: correctness of every variant)

The kernel here is a measuring instrument, not library code: one forward (non-causal, or causal with the
diagonal block masked) whose K/V loads are either pointer tiles (what hwattn/ops/flash/forward.py does) or
device-side tensor descriptors, and whose key loop optionally asks for warp specialisation. Each variant is
timed over a few (BLOCK_M, BLOCK_N, warps, stages) configs beside hwattn.flash_attention and SDPA's cuDNN and
flash backends in the same process. Predictions (written before the run, docs/hopper.md): TMA frees the
address arithmetic and register pressure of pointer tiles (+5-10% on the forward at D=128); warp
specialisation, where triton supports it on sm_90, overlaps the softmax of one block with the loads and
matmuls of the next (+10-20%).
"""
import argparse
import csv
import os
import sys
import time

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


@triton.jit
def _scores(q, K, desc_k, kv_off, stride_n, start_n, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
            USE_TMA: tl.constexpr):
    if USE_TMA:
        kt = tl.trans(desc_k.load([start_n, 0]))
    else:
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        kt = tl.load(K + kv_off + (start_n + offs_n)[None, :].to(tl.int64) * stride_n + offs_d[:, None])
    return tl.dot(q, kt)


@triton.jit
def _inner(acc, l_i, m_i, q, K, V, desc_k, desc_v, kv_off, stride_n, lo, hi, start_m, qk_scale,
           HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
           USE_TMA: tl.constexpr, WS: tl.constexpr, PRE_S: tl.constexpr = False):
    """PRE_S: the next block's S = Q K^T is issued before this block's softmax (FA3's intra-warpgroup
    overlap, by hand: the exponentials run while the tensor cores compute the next scores; the last
    iteration recomputes the last block's scores, unused)."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = start_m + tl.arange(0, BLOCK_M)
    if PRE_S:
        qk_next = _scores(q, K, desc_k, kv_off, stride_n, lo, HEAD_DIM, BLOCK_N, USE_TMA)
    for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=WS):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        if PRE_S:
            qk = qk_next
            nxt = tl.multiple_of(tl.minimum(start_n + BLOCK_N, hi - BLOCK_N), BLOCK_N)
            qk_next = _scores(q, K, desc_k, kv_off, stride_n, nxt, HEAD_DIM, BLOCK_N, USE_TMA)
        else:
            qk = _scores(q, K, desc_k, kv_off, stride_n, start_n, HEAD_DIM, BLOCK_N, USE_TMA)
        if MASKED:
            qk = tl.where(rows[:, None] >= (start_n + offs_n)[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if USE_TMA:
            v = desc_v.load([start_n, 0])
        else:
            v = tl.load(V + kv_off + (start_n + offs_n)[:, None].to(tl.int64) * stride_n + offs_d[None, :])
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _exp_fwd(Q, K, V, O, n_ctx, num_heads, stride_b, stride_n, stride_h, qk_scale,
             CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             USE_TMA: tl.constexpr, WS: tl.constexpr, PRE_S: tl.constexpr = False):
    # square problems with n_ctx a multiple of BLOCK_M (the experiment's shapes), (B, N, H, D) contiguous
    pid_m = tl.program_id(0)
    if CAUSAL:
        pid_m = tl.num_programs(0) - 1 - pid_m  # longest rows first
    pid_bh = tl.program_id(1)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    off = b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    desc_k = None
    desc_v = None
    if USE_TMA:
        desc_q = tl.make_tensor_descriptor(Q + off, shape=[n_ctx, HEAD_DIM], strides=[stride_n, 1],
                                           block_shape=[BLOCK_M, HEAD_DIM])
        desc_k = tl.make_tensor_descriptor(K + off, shape=[n_ctx, HEAD_DIM], strides=[stride_n, 1],
                                           block_shape=[BLOCK_N, HEAD_DIM])
        desc_v = tl.make_tensor_descriptor(V + off, shape=[n_ctx, HEAD_DIM], strides=[stride_n, 1],
                                           block_shape=[BLOCK_N, HEAD_DIM])
        q = desc_q.load([start_m, 0])
    else:
        q = tl.load(Q + off + offs_m[:, None].to(tl.int64) * stride_n + offs_d[None, :])
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if CAUSAL:
        if start_m > 0:  # (PRE_S reads the range's first block before its loop)
            acc, l_i, m_i = _inner(acc, l_i, m_i, q, K, V, desc_k, desc_v, off, stride_n, 0, start_m, start_m,
                                   qk_scale, HEAD_DIM, BLOCK_M, BLOCK_N, False, USE_TMA, WS, PRE_S)
        acc, l_i, m_i = _inner(acc, l_i, m_i, q, K, V, desc_k, desc_v, off, stride_n, start_m, start_m + BLOCK_M,
                               start_m, qk_scale, HEAD_DIM, BLOCK_M, BLOCK_N, True, USE_TMA, False)
    else:
        acc, l_i, m_i = _inner(acc, l_i, m_i, q, K, V, desc_k, desc_v, off, stride_n, 0, n_ctx, start_m,
                               qk_scale, HEAD_DIM, BLOCK_M, BLOCK_N, False, USE_TMA, WS, PRE_S)
    out = (acc / l_i[:, None]).to(O.dtype.element_ty)
    if USE_TMA:
        desc_o = tl.make_tensor_descriptor(O + off, shape=[n_ctx, HEAD_DIM], strides=[stride_n, 1],
                                           block_shape=[BLOCK_M, HEAD_DIM])
        desc_o.store([start_m, 0], out)
    else:
        tl.store(O + off + offs_m[:, None].to(tl.int64) * stride_n + offs_d[None, :], out)


def _alloc(size, alignment, stream):
    return torch.empty(size, device="cuda" if torch.cuda.is_available() else "cpu", dtype=torch.int8)


def run_variant(q, k, v, causal, use_tma, ws, block_m, block_n, warps, stages, pre_s=False):
    B, N, H, D = q.shape
    o = torch.empty_like(q)
    grid = (N // block_m, B * H)
    kw = {} if os.environ.get("TRITON_INTERPRET") == "1" else dict(num_warps=warps, num_stages=stages)
    _exp_fwd[grid](q, k, v, o, N, H, q.stride(0), q.stride(1), q.stride(2), D ** -0.5 * 1.4426950408889634,
                   CAUSAL=causal, HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n, USE_TMA=use_tma, WS=ws,
                   PRE_S=pre_s, **kw)
    return o


# (TMA, warp specialisation, next S before the softmax)
MODES = {"ptr": (False, False, False), "tma": (True, False, False), "ptr_ws": (False, True, False),
         "tma_ws": (True, True, False), "ptr_pre_s": (False, False, True), "tma_pre_s": (True, False, True)}
# first the configs that matter most: 4 warps is where triton 3.6 specialises warps (docs/hopper.md)
CONFIGS = [(128, 64, 4, 3), (128, 128, 8, 3), (128, 64, 4, 4), (128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 4, 3)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "results/exp_hopper"))
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--n", default="4096,16384")
    ap.add_argument("--configs", type=int, default=len(CONFIGS), help="time only the first K configs per variant")
    ap.add_argument("--modes", default="", help="comma-separated subset of the variants (default: all)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    triton.set_allocator(_alloc)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    from hwattn.testing import rel_err
    from hwattn.reference import attention as reference
    if a.smoke:
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, 64, 2, 32, dtype=torch.float16) for _ in range(3))
        for causal in (False, True):
            ref = reference(q.double(), k.double(), v.double(), causal=causal)
            for mode, (tma, ws, pre_s) in MODES.items():
                o = run_variant(q, k, v, causal, tma, ws, 32, 16, 4, 2, pre_s)
                print(f"smoke causal={causal} {mode}: rel err {rel_err(o, ref):.2e}")
        return
    from triton.testing import do_bench
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import hwattn
    print(f"torch {torch.__version__}, triton {triton.__version__}, {torch.cuda.get_device_name()}", flush=True)
    rows = []
    D, H = 128, 16
    for N in [int(x) for x in a.n.split(",")]:
        B = max(1, 16384 // N)
        torch.manual_seed(0)
        q, k, v = (torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        for causal in (False, True):
            flops = 4 * B * H * N * N * D / (2 if causal else 1)
            ref = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), is_causal=causal).transpose(1, 2)

            def rec(name, fn, cfg=""):
                try:
                    o = fn()
                    err = rel_err(o, ref)
                    ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
                    tf = flops / ms / 1e9
                except Exception as e:  # a variant this triton cannot compile is a result, not a crash
                    err, ms, tf = float("nan"), float("nan"), float("nan")
                    print(f"  {name} {cfg}: failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}",
                          flush=True)
                rows.append(dict(n=N, b=B, causal=int(causal), variant=name, config=cfg, ms=ms, tflops=tf, err=err))
                if tf == tf:
                    print(f"  N={N} causal={int(causal)} {name:>10} {cfg:>16}: {tf:6.1f} TFLOP/s  err {err:.1e}",
                          flush=True)

            rec("hwattn", lambda: hwattn.flash_attention(q, k, v, causal=causal))
            for be, name in ((SDPBackend.CUDNN_ATTENTION, "sdpa_cudnn"), (SDPBackend.FLASH_ATTENTION, "sdpa_flash")):
                qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))

                def f(be=be, qt=qt, kt=kt, vt=vt):
                    with sdpa_kernel(be):
                        return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal).transpose(1, 2)
                rec(name, f)
            for mode, (tma, ws, pre_s) in MODES.items():
                if a.modes and mode not in a.modes.split(","):
                    continue
                for bm, bn, w, s in CONFIGS[:a.configs]:
                    rec(mode, lambda tma=tma, ws=ws, bm=bm, bn=bn, w=w, s=s, pre_s=pre_s:
                        run_variant(q, k, v, causal, tma, ws, bm, bn, w, s, pre_s), f"{bm}x{bn} w{w} s{s}")
        del q, k, v
        torch.cuda.empty_cache()
    with open(os.path.join(a.out, "exp_hopper_fwd.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("\nbest per variant (TFLOP/s):")
    for N in sorted({r["n"] for r in rows}):
        for c in (0, 1):
            best = {}
            for r in rows:
                if r["n"] == N and r["causal"] == c and r["tflops"] == r["tflops"]:
                    if r["variant"] not in best or r["tflops"] > best[r["variant"]]["tflops"]:
                        best[r["variant"]] = r
            print(f"N={N} causal={c}: " + ", ".join(f"{k} {v['tflops']:.0f} ({v['config']})" for k, v in best.items()))


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"[{time.time() - t0:.0f}s]")
