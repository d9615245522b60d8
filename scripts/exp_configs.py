#!/usr/bin/env python
"""Launch configs of the exact kernel timed side by side, in rounds: which tile is fastest at a shape, and how
far apart two configs are against the run-to-run spread (the autotuner times each config once; this times each
one R times, interleaved, so a clock or thermal drift hits every config alike).

    python3 scripts/exp_configs.py --out $OUT --n 2048,4096 --causal 1 --rounds 5 \
        --fwd "64,64,4,3;128,128,8,3;128,64,8,3" [--bwd "split;fused;fused:64,128,128,64,8,4"] [--flex]

Each --fwd entry is (BLOCK_M, BLOCK_N, warps, stages) of the forward; each --bwd entry is a backward schedule
(HWATTN_BWD) with, optionally after a colon, the tiles of its kernel (fused: BLOCK_M1, BLOCK_N1, BLOCK_M2,
BLOCK_N2, warps, stages). They replace `configs._DEFAULT` while they run (HWATTN_AUTOTUNE=0). --flex adds
compiled FlexAttention (and SDPA's cuDNN) to each round as the anchor. bf16, D = 128, B*N = 16384 tokens,
H = 16, triton.testing.do_bench medians; FLOPs forward 4 B H N^2 D (half causal), backward 2.5x.
"""
import argparse
import csv
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def parse_tiles(text):
    return tuple(int(x) for x in text.split(","))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "results/exp_configs"))
    ap.add_argument("--n", default="2048,4096")
    ap.add_argument("--causal", default="0,1")
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fwd", default="", help="';'-separated forward configs BLOCK_M,BLOCK_N,warps,stages")
    ap.add_argument("--bwd", default="", help="';'-separated backward schedules [schedule[:tiles]]")
    ap.add_argument("--flex", action="store_true", help="time compiled FlexAttention and SDPA cuDNN too")
    a = ap.parse_args()
    os.environ["HWATTN_AUTOTUNE"] = "0"
    import torch
    import triton
    from triton.testing import do_bench
    from hwattn import flash_attention
    from hwattn.ops.flash import configs
    os.makedirs(a.out, exist_ok=True)
    print(f"torch {torch.__version__}, triton {triton.__version__}, {torch.cuda.get_device_name()}", flush=True)
    bucket = 64 if a.d <= 64 else (128 if a.d <= 128 else 256)
    fwd_cfgs = [parse_tiles(c) for c in a.fwd.split(";") if c]
    bwd_cfgs = []
    for entry in (e for e in a.bwd.split(";") if e):
        schedule, _, tiles = entry.partition(":")
        bwd_cfgs.append((schedule, parse_tiles(tiles) if tiles else None))
    default_fwd = configs._DEFAULT["fwd"][bucket]
    flex = None
    if a.flex:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        torch._dynamo.config.cache_size_limit = 1000
        flex = torch.compile(flex_attention, dynamic=False)
    rows = []
    shapes = [(int(n), bool(int(c))) for n in a.n.split(",") for c in a.causal.split(",")]
    for rnd in range(a.rounds):
        for n, causal in shapes:
            b, h, d = max(1, 16384 // n), 16, a.d
            torch.manual_seed(rnd)
            q, k, v = (torch.randn(b, n, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                       for _ in range(3))
            do = torch.randn_like(q)
            flops = 4 * b * h * n * n * d * (0.5 if causal else 1.0)

            def rec(name, ms, mult):
                rows.append(dict(round=rnd, n=n, causal=int(causal), variant=name, ms=ms,
                                 tflops=mult * flops / ms / 1e9))

            for cfg in fwd_cfgs:
                configs._DEFAULT["fwd"][bucket] = cfg
                try:
                    rec("fwd " + ",".join(map(str, cfg)),
                        do_bench(lambda: flash_attention(q, k, v, causal=causal), warmup=25, rep=100), 1.0)
                except Exception as e:  # a config this GPU cannot run is a result
                    print(f"fwd {cfg}: {type(e).__name__}: {str(e)[:150]}", flush=True)
            configs._DEFAULT["fwd"][bucket] = default_fwd
            for schedule, tiles in bwd_cfgs:
                kind = {"fused": "fused", "split": "dkdv", "atomic": "dkdv_atomic"}[schedule]
                saved = configs._DEFAULT[kind][bucket]
                if tiles:
                    configs._DEFAULT[kind][bucket] = tiles
                os.environ["HWATTN_BWD"] = schedule
                try:
                    o = flash_attention(q, k, v, causal=causal)
                    ms = do_bench(lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True), warmup=25, rep=100)
                    rec(f"bwd {schedule}" + (":" + ",".join(map(str, tiles)) if tiles else ""), ms, 2.5)
                except Exception as e:
                    print(f"bwd {schedule} {tiles}: {type(e).__name__}: {str(e)[:150]}", flush=True)
                finally:
                    configs._DEFAULT[kind][bucket] = saved
                    os.environ.pop("HWATTN_BWD")
            if flex is not None:
                qh, kh, vh = (x.detach().transpose(1, 2).requires_grad_() for x in (q, k, v))
                doh = do.transpose(1, 2)
                bm = None
                if causal:
                    bm = create_block_mask(lambda b_, h_, qi, ki: qi >= ki, None, None, n, n, device="cuda")
                fo = flex(qh, kh, vh, block_mask=bm)
                rec("flex fwd", do_bench(lambda: flex(qh, kh, vh, block_mask=bm), warmup=25, rep=100), 1.0)
                rec("flex bwd", do_bench(lambda: torch.autograd.grad(fo, (qh, kh, vh), doh, retain_graph=True),
                                         warmup=25, rep=100), 2.5)
                from torch.nn.attention import SDPBackend, sdpa_kernel
                import torch.nn.functional as F
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    so = F.scaled_dot_product_attention(qh, kh, vh, is_causal=causal)
                    rec("cudnn fwd", do_bench(lambda: F.scaled_dot_product_attention(qh, kh, vh, is_causal=causal),
                                              warmup=25, rep=100), 1.0)
                    rec("cudnn bwd", do_bench(lambda: torch.autograd.grad(so, (qh, kh, vh), doh, retain_graph=True),
                                              warmup=25, rep=100), 2.5)
            print(f"round {rnd} N={n} causal={int(causal)}: " + ", ".join(
                f"{r['variant']} {r['tflops']:.0f}" for r in rows if r["round"] == rnd and r["n"] == n
                and r["causal"] == int(causal)), flush=True)
            del q, k, v, do
            torch.cuda.empty_cache()
    with open(os.path.join(a.out, "exp_configs.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"\n{'N':>6} {'causal':>6}  {'variant':<34} {'median':>7} {'min':>6} {'max':>6}   TFLOP/s over {a.rounds} rounds")
    for n, causal in shapes:
        names = dict.fromkeys(r["variant"] for r in rows if r["n"] == n and r["causal"] == int(causal))
        for name in names:
            tf = [r["tflops"] for r in rows if r["n"] == n and r["causal"] == int(causal) and r["variant"] == name]
            print(f"{n:>6} {int(causal):>6}  {name:<34} {statistics.median(tf):7.1f} {min(tf):6.1f} {max(tf):6.1f}")


if __name__ == "__main__":
    main()
