"""GPU check of packed varlen attention and split-KV decoding (issue 4): correctness in bf16, then timings.

    python3 scripts/gpu_varlen_decode.py --out $OUT          # H100, torch 2.11 + triton 3.6; < 120 s
    python3 scripts/gpu_varlen_decode.py --smoke --out /tmp/x   # tiny CPU dry run of this script (interpreter)

Sections (each guarded: a failure is printed and the rest go on; a time budget skips what would not fit):
  1. correctness, bf16, against float64 references on the GPU: flash_attention_varlen (out, lse, dq, dk, dv;
     causal and not; GQA 4; lengths 1, non-block multiples) and flash_decode (Nq 1/4/16, GQA 1/4/8, random
     cache lengths incl. 0 and 1, splits heuristic/1/7).
  2. varlen timings, bf16, H=16, D=128, fwd and fwd+bwd, causal and not: packed equal lengths vs the dense
     kernel on the same (B, N) (same FLOPs: the varlen bookkeeping overhead), and packed random lengths
     (same total tokens) vs the dense kernel at (B, N) and vs a Python loop of dense calls per sequence;
     flash_attn's varlen function too if it is installed. Both our kernels with the fixed GPU configs
     (HWATTN_AUTOTUNE=0: same tiles for dense and varlen, and no tuning time); --autotune to tune both.
  3. decode timings, B=8, Hq=32, Hkv=8, D=128, Nq=1, bf16, cache 32k/64k/128k: achieved bandwidth (bytes of
     K/V read / time) vs the measured copy bandwidth (torch copy_ of 2 GiB: (read + write) / time); hwattn
     autotuned and fixed config, the kernel launch alone (no host check), SDPA (enable_gqa, every backend that
     accepts it, on the cache views and on a contiguous (B, H, L, D) copy; fastest reported), and with random
     valid lengths in [L/2, L]: hwattn vs SDPA with a boolean mask and SDPA per batch element on slices.
     A num_splits sweep at 128k checks the heuristic.
Writes correctness.csv, varlen.csv, decode.csv, splits.csv and varlen_decode.png under --out; prints tables.
"""
import argparse
import csv
import math
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

T0 = time.time()
DEVICE = "cuda"
DTYPE = None
SMOKE = False
DEADLINE = None
SWEEP = False           # --decode-sweep
SWEEP_SPLITS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 33, 48, 66)


def elapsed():
    return time.time() - T0


def log(*a):
    print(f"[{elapsed():6.1f}s]", *a, flush=True)


def time_left(margin=0.0):
    return DEADLINE - time.time() - margin


def guarded(name):
    def deco(fn):
        def run(*a, **kw):
            try:
                return fn(*a, **kw)
            except Exception:
                log(f"!! {name} failed:")
                traceback.print_exc()
                sys.stdout.flush()
                return None
        return run
    return deco


def bench(fn, rep=60):
    if SMOKE:  # no GPU: wall clock of one call after a warm-up, only to exercise the code
        fn()
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    from triton.testing import do_bench
    return do_bench(fn, warmup=10, rep=rep, return_mode="median")


def try_bench(name, fn, errors, rep=60):
    try:
        return bench(fn, rep)
    except Exception as e:  # one peer failing must not stop the others
        errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        return float("nan")


def write_csv(path, rows):
    if not rows:
        return
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def cu_of(lengths):
    import torch
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return torch.tensor(cu, dtype=torch.int32, device=DEVICE)


# --------------------------------------------------------------------------------------------- correctness

@guarded("varlen correctness")
def check_varlen(rows):
    import torch
    from hwattn.ops.flash.varlen import flash_attention_varlen
    from hwattn.reference import attention as reference
    from hwattn.testing import TOLERANCE, rel_err
    torch.manual_seed(0)
    lq = [1, 300, 129, 1000, 64] if not SMOKE else [1, 30, 17]
    for causal in (False, True):
        lk = lq if not causal else ([5, 300, 200, 1000, 1] if not SMOKE else [5, 30, 1])
        hkv, group, d = 2, 4, 128 if not SMOKE else 32
        q = torch.randn(sum(lq), hkv * group, d, device=DEVICE).to(DTYPE).requires_grad_()
        k = torch.randn(sum(lk), hkv, d, device=DEVICE).to(DTYPE).requires_grad_()
        v = torch.randn(sum(lk), hkv, d, device=DEVICE).to(DTYPE).requires_grad_()
        cq, ck = cu_of(lq), cu_of(lk)
        out, lse = flash_attention_varlen(q, k, v, cq, ck, max(lq), max(lk), causal=causal, return_lse=True)
        do = torch.randn_like(out)
        grads = torch.autograd.grad(out, (q, k, v), do)
        x64 = [x.detach().double().requires_grad_() for x in (q, k, v)]
        outs, lses = [], []
        for b in range(len(lq)):
            qs = x64[0][sum(lq[:b]):sum(lq[:b + 1])][None]
            ks, vs = (x[sum(lk[:b]):sum(lk[:b + 1])][None] for x in x64[1:])
            o, l = reference(qs, ks, vs, causal=causal, return_lse=True)
            outs.append(o[0])
            lses.append(l[0])
        ref, ref_lse = torch.cat(outs), torch.cat(lses, 1)
        ref_grads = torch.autograd.grad(ref, x64, do.double())
        fin = torch.isfinite(ref_lse)
        errs = {"out": rel_err(out, ref), "lse": rel_err(lse[fin], ref_lse[fin]),
                **{n: rel_err(g, r) for n, g, r in zip(("dq", "dk", "dv"), grads, ref_grads)}}
        lse_inf_ok = bool(torch.equal(torch.isinf(lse), torch.isinf(ref_lse)))
        bound = TOLERANCE[DTYPE]
        ok = all(e <= bound for e in errs.values()) and lse_inf_ok
        rows.append({"what": "varlen", "case": f"{'causal' if causal else 'full'} lq={lq} lk={lk} g{group} d{d}",
                     **{k: f"{e:.2e}" for k, e in errs.items()}, "bound": bound, "pass": ok})
        log(f"varlen {'causal' if causal else 'full'}: " + ", ".join(f"{k} {e:.1e}" for k, e in errs.items())
            + f" (bound {bound:.0e}) {'PASS' if ok else 'FAIL'}")


@guarded("decode correctness")
def check_decode(rows):
    import torch
    from hwattn.ops.flash.decode import flash_decode
    from hwattn.reference import attention as reference
    from hwattn.testing import TOLERANCE, rel_err
    torch.manual_seed(1)
    B, L, hkv, d = 4, (3000 if not SMOKE else 70), 2, (128 if not SMOKE else 32)
    for n_q, group in ((1, 4), (4, 8), (16, 4)):
        q = torch.randn(B, n_q, hkv * group, d, device=DEVICE).to(DTYPE)
        k = torch.randn(B, L, hkv, d, device=DEVICE).to(DTYPE)
        v = torch.randn(B, L, hkv, d, device=DEVICE).to(DTYPE)
        lens = torch.randint(2, L, (B,), dtype=torch.int32)
        lens[0], lens[1], lens[-1] = 1, 0, L
        lens = lens.to(DEVICE)
        ref = torch.zeros(B, n_q, hkv * group, d, dtype=torch.float64, device=DEVICE)
        for b, n in enumerate(lens.tolist()):
            if n:
                ref[b] = reference(q[b:b + 1].double(), k[b:b + 1, :n].double(), v[b:b + 1, :n].double(),
                                   causal=True)[0]
        for splits in (None, 1, 7):
            out = flash_decode(q, k, v, lens, num_splits=splits)
            err = rel_err(out, ref)
            ok = err <= TOLERANCE[DTYPE]
            rows.append({"what": "decode", "case": f"nq{n_q} g{group} splits={splits} lens={lens.tolist()}",
                         "out": f"{err:.2e}", "bound": TOLERANCE[DTYPE], "pass": ok})
            log(f"decode nq{n_q} g{group} splits={splits}: out {err:.1e} {'PASS' if ok else 'FAIL'}")


# --------------------------------------------------------------------------------------------- varlen timing

def random_lengths(total, lo, hi, gen):
    import torch
    lengths = []
    while sum(lengths) < total:
        lengths.append(int(torch.randint(lo, hi + 1, (1,), generator=gen)))
    lengths[-1] -= sum(lengths) - total
    if lengths[-1] < 1:
        lengths.pop()
        lengths[-1] += total - sum(lengths)
    return lengths


def with_env(name, value, fn):
    """fn with os.environ[name] = value while it runs (a whole fwd+bwd step: the backward reads it)."""
    def call(*a):
        old = os.environ.get(name)
        os.environ[name] = value
        try:
            return fn(*a)
        finally:
            if old is None:
                os.environ.pop(name)
            else:
                os.environ[name] = old
    return call


@guarded("varlen timing")
def time_varlen(rows, shapes, errors):
    import torch
    from hwattn.ops.flash import flash_attention
    from hwattn.ops.flash.varlen import flash_attention_varlen
    try:
        from flash_attn import flash_attn_varlen_func
    except Exception as e:
        flash_attn_varlen_func = None
        log(f"flash_attn not available ({type(e).__name__}); skipping that peer")
    H, D = (16, 128) if not SMOKE else (2, 32)
    gen = torch.Generator().manual_seed(0)
    for B, N in shapes:
        total = B * N
        rand_lens = random_lengths(total, max(1, N // 8), 2 * N - N // 8, gen)
        for causal in (False, True):
            for mode in ("fwd", "fwd+bwd"):
                if time_left() < 45:  # keep time for the decode section
                    log("varlen: time budget reached, skipping the rest")
                    return
                mult = 1.0 if mode == "fwd" else 3.5

                def flops(lengths):
                    return sum(4 * H * n * n * D * (0.5 if causal else 1.0) for n in lengths) * mult

                def make(lengths):
                    q, k, v = (torch.randn(sum(lengths), H, D, device=DEVICE, dtype=DTYPE, requires_grad=True)
                               for _ in range(3))
                    return q, k, v, cu_of(lengths), max(lengths)

                def runner(fn, q, k, v):
                    if mode == "fwd":
                        return lambda: fn(q, k, v)
                    do = torch.randn_like(q)

                    def step():
                        out = fn(q, k, v)
                        torch.autograd.grad(out, (q, k, v), do)
                    return step

                results = {}
                # dense (B, N) and packed equal lengths: same FLOPs
                qd, kd, vd = (torch.randn(B, N, H, D, device=DEVICE, dtype=DTYPE, requires_grad=True)
                              for _ in range(3))
                results["dense (B,N)"] = (try_bench("dense", runner(
                    lambda q, k, v: flash_attention(q, k, v, causal=causal), qd, kd, vd), errors), flops([N] * B))
                q, k, v, cu, mx = make([N] * B)
                results["varlen equal"] = (try_bench("varlen equal", runner(
                    lambda q, k, v: flash_attention_varlen(q, k, v, cu, cu, mx, mx, causal=causal), q, k, v), errors),
                    flops([N] * B))
                if flash_attn_varlen_func is not None:
                    results["flash_attn varlen equal"] = (try_bench("flash_attn varlen equal", runner(
                        lambda q, k, v: flash_attn_varlen_func(q, k, v, cu, cu, mx, mx, causal=causal), q, k, v),
                        errors), flops([N] * B))
                q, k, v, cu, mx = make(rand_lens)
                results["varlen random"] = (try_bench("varlen random", runner(
                    lambda q, k, v: flash_attention_varlen(q, k, v, cu, cu, mx, mx, causal=causal), q, k, v), errors),
                    flops(rand_lens))
                if mode == "fwd+bwd" and causal:  # the default backward is one launch here: the two-launch one too
                    results["varlen random, split bwd"] = (try_bench("varlen random split", with_env(
                        "HWATTN_BWD", "split", runner(lambda q, k, v: flash_attention_varlen(
                            q, k, v, cu, cu, mx, mx, causal=causal), q, k, v)), errors), flops(rand_lens))
                if flash_attn_varlen_func is not None:
                    results["flash_attn varlen random"] = (try_bench("flash_attn varlen random", runner(
                        lambda q, k, v: flash_attn_varlen_func(q, k, v, cu, cu, mx, mx, causal=causal), q, k, v),
                        errors), flops(rand_lens))
                bounds = cu.tolist()

                def dense_loop(q, k, v):
                    return torch.cat([flash_attention(q[None, s:e], k[None, s:e], v[None, s:e], causal=causal)[0]
                                      for s, e in zip(bounds[:-1], bounds[1:])])
                results["dense loop random"] = (try_bench("dense loop", runner(dense_loop, q, k, v), errors),
                                                flops(rand_lens))
                del qd, kd, vd, q, k, v
                base = results["dense (B,N)"]
                base_tf = base[1] / base[0] / 1e9 if base[0] == base[0] else float("nan")
                for name, (ms, fl) in results.items():
                    tf = fl / ms / 1e9 if ms == ms else float("nan")
                    rows.append({"B": B, "N": N, "total_tokens": total, "H": H, "D": D,
                                 "causal": causal, "mode": mode, "provider": name, "ms": round(ms, 4),
                                 "tflops": round(tf, 1), "vs_dense_tflops": round(tf / base_tf, 3),
                                 "n_seqs": B if "equal" in name or "dense (" in name else len(rand_lens)})
                log(f"varlen B={B} N={N} {'causal' if causal else 'full'} {mode}: "
                    + ", ".join(f"{n} {fl / ms / 1e9:.0f} TF/s" for n, (ms, fl) in results.items()))


@guarded("varlen profile")
def profile_varlen(B, N, causal):
    """Per-kernel CUDA time (torch.profiler) of one fwd+bwd, dense (B, N) against varlen with B equal lengths:
    which kernel the varlen gap sits in."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from hwattn.ops.flash import flash_attention
    from hwattn.ops.flash.varlen import flash_attention_varlen
    H, D = 16, 128
    cu = cu_of([N] * B)
    dense = [torch.randn(B, N, H, D, device=DEVICE, dtype=DTYPE, requires_grad=True) for _ in range(3)]
    packed = [torch.randn(B * N, H, D, device=DEVICE, dtype=DTYPE, requires_grad=True) for _ in range(3)]
    for name, fn, xs in (("dense", lambda q, k, v: flash_attention(q, k, v, causal=causal), dense),
                         ("varlen", lambda q, k, v: flash_attention_varlen(q, k, v, cu, cu, N, N, causal=causal),
                          packed)):
        do = torch.randn_like(xs[0])
        for _ in range(2):
            torch.autograd.grad(fn(*xs), xs, do)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                torch.autograd.grad(fn(*xs), xs, do)
            torch.cuda.synchronize()
        parts = []
        for e in prof.key_averages():
            t = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
            if t > 0:
                parts.append((t / 3 / 1e3, e.key))
        parts.sort(reverse=True)
        log(f"profile {name} B={B} N={N} {'causal' if causal else 'full'} fwd+bwd: "
            + ", ".join(f"{k[:40]} {ms:.3f} ms" for ms, k in parts[:6]))


# --------------------------------------------------------------------------------------------- decode timing

@guarded("copy bandwidth")
def copy_bandwidth():
    import torch
    n = (2 << 30) if not SMOKE else (1 << 20)
    x = torch.empty(n, dtype=torch.uint8, device=DEVICE)
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x), rep=100)
    del x, y
    return 2 * n / (ms * 1e-3) / 1e9  # GB/s, read + write


# (BLOCK_N, num_warps, num_stages) that --decode-sweep times against num_splits (flash_decode itself runs one fixed
# config: hwattn/ops/flash/decode.py `_fixed_decode_config`)
DECODE_CONFIGS = [(64, 4, 3), (64, 4, 4), (128, 4, 3), (128, 8, 3), (32, 4, 4), (64, 2, 4)]


def _decode_fits(block_n, num_stages, head_dim, itemsize=2):
    block_d = max(16, 1 << (head_dim - 1).bit_length())
    return 2 * block_n * block_d * itemsize * num_stages <= 160 * 1024  # K and V stages in shared memory


def sweep_decode(rows, L, lens, tag, counts, heuristic, nbytes, qkv, errors):
    """Every DECODE_CONFIGS entry x num_splits in `counts` (kernels only) on cache lengths `lens`; one log line a
    config, the fastest pair last; rows into splits.csv."""
    from hwattn.ops.flash import decode as dec
    q, k, v = qkv
    D = q.shape[-1]
    best = (float("inf"), None)
    for cfg in DECODE_CONFIGS:
        bn, w, st = cfg
        if not _decode_fits(bn, st, D):
            continue
        line = []
        for s in counts:
            if time_left() < 15:
                break
            ms = try_bench(f"sweep {tag} {cfg} splits {s}", lambda: dec.decode_fwd(
                q, k, v, lens, True, D ** -0.5, s, config={"BLOCK_N": bn, "num_warps": w, "num_stages": st}),
                errors, rep=25)
            rows.append({"cache_len": L, "lengths": tag, "num_splits": s, "config": str(cfg), "ms": round(ms, 4),
                         "kv_GBps": round(nbytes / (ms * 1e-3) / 1e9, 0) if ms == ms else "",
                         "heuristic": s == heuristic})
            line.append(f"{s}:{ms * 1e3:.0f}")
            if ms < best[0]:
                best = (ms, (cfg, s))
        log(f"decode sweep L={L} {tag} lengths cfg {cfg} (us per num_splits): " + " ".join(line))
    if best[1] is not None:
        log(f"decode sweep L={L} {tag} lengths: best {best[1]} {best[0] * 1e3:.0f} us "
            f"({nbytes / (best[0] * 1e-3) / 1e9:.0f} GB/s); heuristic splits {heuristic}")


@guarded("decode timing")
def time_decode(rows, split_rows, lengths, copy_gbps, errors):
    import torch
    import torch.nn.functional as F
    from hwattn.ops.flash import decode as dec
    from torch.nn.attention import SDPBackend, sdpa_kernel
    try:
        from flash_attn import flash_attn_with_kvcache
    except Exception:
        flash_attn_with_kvcache = None
    B, Hq, Hkv, D = (8, 32, 8, 128) if not SMOKE else (2, 4, 2, 32)
    itemsize = torch.tensor([], dtype=DTYPE).element_size()
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION}
    for L in lengths:
        if time_left() < 12:
            log("decode: time budget reached, skipping the rest")
            return
        torch.manual_seed(L)
        q = torch.randn(B, 1, Hq, D, device=DEVICE, dtype=DTYPE)
        k = torch.randn(B, L, Hkv, D, device=DEVICE, dtype=DTYPE)
        v = torch.randn(B, L, Hkv, D, device=DEVICE, dtype=DTYPE)
        full = torch.full((B,), L, dtype=torch.int32, device=DEVICE)
        kv_bytes = 2 * B * L * Hkv * D * itemsize
        res = {}
        with torch.no_grad():
            res["hwattn"] = try_bench("hwattn", lambda: dec.flash_decode(q, k, v, full), errors)
            splits = dec.choose_num_splits(B * Hkv, L, dec._sm_count(q.device))
            res["hwattn kernels only"] = try_bench(
                "hwattn kernels", lambda: dec.decode_fwd(q, k, v, full, True, D ** -0.5, splits), errors)
            qs, ks, vs = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            kc, vc = ks.contiguous(), vs.contiguous()
            sdpa = {}
            for bname, be in backends.items():
                for layout, (kk, vv) in (("views", (ks, vs)), ("BHLD copy", (kc, vc))):
                    def call(kk=kk, vv=vv, be=be):
                        with sdpa_kernel(be):
                            return F.scaled_dot_product_attention(qs, kk, vv, enable_gqa=True)
                    sdpa[f"sdpa {bname} ({layout})"] = try_bench(f"sdpa {bname} {layout} L={L}", call, errors)
            res.update(sdpa)
            if flash_attn_with_kvcache is not None:
                res["flash_attn_with_kvcache"] = try_bench("flash_attn_with_kvcache", lambda: flash_attn_with_kvcache(
                    q, k, v, cache_seqlens=full, causal=True), errors)
            ok_sdpa = {n: t for n, t in sdpa.items() if t == t}
            best_sdpa = min(ok_sdpa, key=ok_sdpa.get) if ok_sdpa else None
            for name, ms in res.items():
                gbps = kv_bytes / (ms * 1e-3) / 1e9 if ms == ms else float("nan")
                rows.append({"cache_len": L, "lengths": "full", "provider": name, "ms": round(ms, 4),
                             "kv_GBps": round(gbps, 0), "vs_copy_bw": round(gbps / copy_gbps, 3) if copy_gbps else "",
                             "speedup_vs_best_sdpa": round(ok_sdpa[best_sdpa] / ms, 3) if best_sdpa and ms == ms else "",
                             "best_sdpa": best_sdpa or "", "num_splits": splits})
            log(f"decode L={L} full: " + ", ".join(f"{n} {ms * 1e3:.0f}us" for n, ms in res.items()))

            # random valid lengths in [L/2, L]: SDPA needs a mask or per-batch slices
            gen = torch.Generator().manual_seed(L + 1)
            lens = torch.randint(L // 2, L + 1, (B,), generator=gen, dtype=torch.int32)
            lens_dev = lens.to(DEVICE)
            read_bytes = 2 * int(lens.sum()) * Hkv * D * itemsize
            rnd = {}
            rnd["hwattn"] = try_bench("hwattn random", lambda: dec.flash_decode(q, k, v, lens_dev), errors)
            mask = (torch.arange(L, device=DEVICE)[None, :] < lens_dev[:, None])[:, None, None, :]
            for bname in ("efficient", "cudnn", "flash"):
                def masked(be=backends[bname], kk=kc, vv=vc):
                    with sdpa_kernel(be):
                        return F.scaled_dot_product_attention(qs, kk, vv, attn_mask=mask, enable_gqa=True)
                rnd[f"sdpa {bname} bool mask (BHLD copy)"] = try_bench(f"sdpa mask {bname} L={L}", masked, errors)
            n_list = lens.tolist()

            def sliced():
                with sdpa_kernel([backends["flash"], backends["efficient"], backends["cudnn"]]):
                    return torch.cat([F.scaled_dot_product_attention(qs[b:b + 1], ks[b:b + 1, :, :n], vs[b:b + 1, :, :n],
                                                                     enable_gqa=True) for b, n in enumerate(n_list)])
            rnd["sdpa per-batch slices (views)"] = try_bench(f"sdpa slices L={L}", sliced, errors)
            ok_r = {n: t for n, t in rnd.items() if n.startswith("sdpa") and t == t}
            best_r = min(ok_r, key=ok_r.get) if ok_r else None
            for name, ms in rnd.items():
                gbps = read_bytes / (ms * 1e-3) / 1e9 if ms == ms else float("nan")
                rows.append({"cache_len": L, "lengths": "random [L/2, L]", "provider": name, "ms": round(ms, 4),
                             "kv_GBps": round(gbps, 0), "vs_copy_bw": round(gbps / copy_gbps, 3) if copy_gbps else "",
                             "speedup_vs_best_sdpa": round(ok_r[best_r] / ms, 3) if best_r and ms == ms else "",
                             "best_sdpa": best_r or ""})
            log(f"decode L={L} random lengths: " + ", ".join(f"{n} {ms * 1e3:.0f}us" for n, ms in rnd.items()))
            del kc, vc, mask

            if SWEEP and time_left() > 20:
                # num_splits x launch config, kernels only: which split count fills the GPU best per config,
                # full caches over SWEEP_SPLITS, random lengths around the heuristic's count for unequal lengths
                r_splits = dec.choose_num_splits(B * Hkv, L, dec._sm_count(q.device), equal_lengths=False)
                for lens_of, tag, counts, heuristic, nbytes in (
                        (full, "full", SWEEP_SPLITS, splits, kv_bytes),
                        (lens_dev, "random", sorted({2, 4, 8, max(1, r_splits // 2), r_splits, min(256, 2 * r_splits)}),
                         r_splits, read_bytes)):
                    sweep_decode(rows=split_rows, L=L, lens=lens_of, tag=tag, counts=counts, heuristic=heuristic,
                                 nbytes=nbytes, qkv=(q, k, v), errors=errors)
            elif L == max(lengths) and time_left() > 15:
                for s in (1, 4, 8, 16, 33, 64, 128, 256):
                    ms = try_bench(f"splits {s}", lambda: dec.decode_fwd(q, k, v, full, True, D ** -0.5, s), errors,
                                   rep=30)
                    split_rows.append({"cache_len": L, "num_splits": s, "ms": round(ms, 4),
                                       "kv_GBps": round(kv_bytes / (ms * 1e-3) / 1e9, 0) if ms == ms else "",
                                       "heuristic": s == splits})
                log("num_splits sweep (fixed cfg, kernels only): " + ", ".join(
                    f"{r['num_splits']}:{r['ms'] * 1e3:.0f}us" for r in split_rows if r["cache_len"] == L)
                    + f" (heuristic {splits})")
        del q, k, v
        if not SMOKE:
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------- report

def plot(out, varlen_rows, decode_rows, copy_gbps):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:
        log(f"no plot: {e}")
        return
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    ax = axes[0]
    labels = sorted({(r["N"], r["causal"], r["mode"]) for r in varlen_rows})
    provs = []
    for r in varlen_rows:
        if r["provider"] not in provs:
            provs.append(r["provider"])
    width = 0.8 / max(1, len(provs))
    for i, p in enumerate(provs):
        ys = [next((r["tflops"] for r in varlen_rows if (r["N"], r["causal"], r["mode"]) == lab and r["provider"] == p),
                   0) for lab in labels]
        ax.bar([j + i * width for j in range(len(labels))], ys, width, label=p)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))])
    ax.set_xticklabels([f"N{n}\n{'causal' if c else 'full'}\n{m}" for n, c, m in labels], fontsize=7)
    ax.set_ylabel("TFLOP/s")
    ax.set_title("varlen vs dense, same total tokens (bf16, D=128)")
    ax.legend(fontsize=7)
    ax = axes[1]
    full = [r for r in decode_rows if r["lengths"] == "full"]
    for p in sorted({r["provider"] for r in full}):
        pts = sorted((r["cache_len"], r["kv_GBps"]) for r in full if r["provider"] == p and r["kv_GBps"] == r["kv_GBps"])
        if pts:
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=p)
    if copy_gbps:
        ax.axhline(copy_gbps, color="k", ls="--", label="copy bandwidth")
        ax.axhline(0.7 * copy_gbps, color="gray", ls=":", label="70% of copy")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("cache length")
    ax.set_ylabel("K/V bytes read / time (GB/s)")
    ax.set_title("decode B=8 Hq=32 Hkv=8 D=128 Nq=1")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "varlen_decode.png"), dpi=120)


def print_tables(corr, varlen_rows, decode_rows, split_rows, copy_gbps, errors):
    n_fail = sum(1 for r in corr if not r["pass"])
    print(f"\n=== correctness (bf16 vs float64): {len(corr) - n_fail}/{len(corr)} pass ===")
    for r in corr:
        if not r["pass"]:
            print("FAIL", r)
    print("\n=== varlen vs dense (TFLOP/s; ratio to dense (B,N) in the same row group) ===")
    print(f"{'B':>3} {'N':>6} {'causal':>6} {'mode':>8}  {'provider':<26} {'ms':>9} {'TF/s':>6} {'vs dense':>8}")
    for r in varlen_rows:
        print(f"{r['B']:>3} {r['N']:>6} {str(r['causal']):>6} {r['mode']:>8}  {r['provider']:<26} {r['ms']:>9.3f} "
              f"{r['tflops']:>6.0f} {r['vs_dense_tflops']:>8.2f}")
    print(f"\n=== decode (copy bandwidth {copy_gbps or float('nan'):.0f} GB/s, read+write) ===")
    print(f"{'L':>7} {'lengths':>15}  {'provider':<34} {'us':>8} {'GB/s':>6} {'/copy':>6} {'vs best sdpa':>12}")
    for r in decode_rows:
        print(f"{r['cache_len']:>7} {r['lengths']:>15}  {r['provider']:<34} {r['ms'] * 1e3:>8.0f} {r['kv_GBps']:>6.0f} "
              f"{r['vs_copy_bw']:>6} {r['speedup_vs_best_sdpa']:>12}")
    if split_rows:
        print("\n=== num_splits sweep ===")
        for r in split_rows:
            if "config" in r:
                continue  # --decode-sweep rows: summarised in the log lines above, all in splits.csv
            print(f"L={r['cache_len']} splits={r['num_splits']:>3}: {r['ms'] * 1e3:.0f} us"
                  f"{'  <- heuristic' if r['heuristic'] else ''}")
    if errors:
        print(f"\n=== {len(errors)} peer errors (those entries are NaN) ===")
        for e in errors:
            print(" ", e)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "results/varlen_decode"))
    ap.add_argument("--budget", type=float, default=115.0, help="seconds for the whole run")
    ap.add_argument("--varlen-shapes", default="8x2048,4x8192", help="BxN pairs, same total tokens per pair")
    ap.add_argument("--cache", default="32768,65536,131072")
    ap.add_argument("--autotune", action="store_true", help="autotune the varlen and dense kernels (slower start)")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU dry run (TRITON_INTERPRET=1) of this script")
    ap.add_argument("--decode-sweep", action="store_true",
                    help="per cache length: every decode launch config x num_splits (kernels only)")
    ap.add_argument("--skip-varlen", action="store_true", help="decode only (no varlen correctness or timings)")
    ap.add_argument("--skip-decode", action="store_true", help="varlen only (no decode correctness or timings)")
    ap.add_argument("--profile-varlen", action="store_true",
                    help="per-kernel times of dense vs varlen fwd+bwd at the last --varlen-shapes entry")
    args = ap.parse_args()
    global DEVICE, DTYPE, SMOKE, DEADLINE, SWEEP
    SWEEP = args.decode_sweep
    DEADLINE = T0 + args.budget
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
        DEVICE, SMOKE = "cpu", True
    os.environ["HWATTN_AUTOTUNE"] = "1" if args.autotune else "0"
    os.makedirs(args.out, exist_ok=True)
    import torch
    import triton
    DTYPE = torch.float16 if SMOKE else torch.bfloat16  # bf16 dots are wrong in the CPU interpreter
    log(f"torch {torch.__version__}, triton {triton.__version__}, "
        f"{torch.cuda.get_device_name() if DEVICE == 'cuda' else 'CPU (smoke run)'}")
    corr, varlen_rows, decode_rows, split_rows, errors = [], [], [], [], []
    if not args.skip_varlen:
        check_varlen(corr)
    if not args.skip_decode:
        check_decode(corr)
    write_csv(os.path.join(args.out, "correctness.csv"), corr)
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.varlen_shapes.split(",")]
    if SMOKE:
        shapes = [(2, 48)]
    if not args.skip_varlen:
        time_varlen(varlen_rows, shapes, errors)
    if args.profile_varlen and not SMOKE:
        for causal in (False, True):
            profile_varlen(*shapes[-1], causal)
    write_csv(os.path.join(args.out, "varlen.csv"), varlen_rows)
    copy_gbps = None
    if not args.skip_decode:
        copy_gbps = copy_bandwidth()
        log(f"copy bandwidth: {copy_gbps or float('nan'):.0f} GB/s (read + write)")
        lengths = [int(x) for x in args.cache.split(",")] if not SMOKE else [64, 96]
        time_decode(decode_rows, split_rows, lengths, copy_gbps, errors)
    write_csv(os.path.join(args.out, "decode.csv"), decode_rows)
    write_csv(os.path.join(args.out, "splits.csv"), split_rows)
    plot(args.out, varlen_rows, decode_rows, copy_gbps)
    print_tables(corr, varlen_rows, decode_rows, split_rows, copy_gbps, errors)
    log(f"done in {elapsed():.0f}s; files in {args.out}")


if __name__ == "__main__":
    main()
