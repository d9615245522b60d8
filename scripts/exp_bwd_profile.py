"""GPU experiment: where the backward's time goes, ours against compiled FlexAttention's, kernel by kernel
(torch.profiler), on dense causal / non-causal attention and on the document and sliding-window masks of
scripts/gpu_masks.py. Fixed launch configs for hwattn (HWATTN_AUTOTUNE=0: the fused default is Flex's own
sm_90 config, 64x128 / 128x64 tiles, 8 warps, 3 stages), so kernels are compared tile for tile.

    TRITON_CACHE_DIR=$OUT/tc TORCHINDUCTOR_CACHE_DIR=$OUT/ic python3 scripts/exp_bwd_profile.py --out $OUT

With those cache directories set, Flex's generated Triton source and its PTX / TTGIR stay behind for
offline reading (ptxas -v, against scripts/flash_compile_check.py's figures for ours).
"""
import argparse
import csv
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("HWATTN_AUTOTUNE", "0")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "results/bwd_profile"))
    ap.add_argument("--cases", default="dense,masks", help="comma-separated: dense, masks, window_arg, "
                    "window_variants (the window argument causal and non-causal, and a block mask, at N = 8192 "
                    "and 32768)")
    ap.add_argument("--providers", default="split,fused,flex", help="hwattn's schedules (split, fused) and flex")
    a = ap.parse_args()
    chosen = set(a.providers.split(","))
    os.makedirs(a.out, exist_ok=True)
    import torch
    import torch._dynamo
    import torch._functorch.config
    import triton.testing
    from torch.nn.attention.flex_attention import create_block_mask as flex_block_mask, flex_attention
    from torch.profiler import ProfilerActivity, profile

    import hwattn
    from hwattn import masks

    torch._dynamo.config.cache_size_limit = 1000
    torch._functorch.config.donated_buffer = False
    flex = torch.compile(flex_attention, dynamic=False)
    rows = []

    def kernels(fn, reps=5):
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                fn()
            torch.cuda.synchronize()
        out = []
        for e in prof.key_averages():
            t = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
            if t > 0:
                out.append((round(t / reps / 1e3, 4), e.key[:60]))
        return sorted(out, reverse=True)

    def case(name, B, N, H, D, causal, mask_mod, window=None):
        """window: ours through the window argument (no block mask), Flex with mask_mod."""
        torch.manual_seed(0)
        q, k, v = (torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        bm = None if mask_mod is None or window else masks.create_block_mask(mask_mod, None, None, N, N, device="cuda")
        call = lambda: hwattn.flash_attention(q, k, v, causal=causal and bm is None, block_mask=bm, window=window)
        out = call()
        do = torch.randn_like(out)
        qh, kh, vh = (x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
        fmod = mask_mod
        if fmod is None and causal:
            fmod = lambda b, h, qi, ki: ki <= qi
        if "flex" in chosen:
            fbm = None if fmod is None else flex_block_mask(fmod, None, None, N, N, device="cuda")
            fo = flex(qh, kh, vh, block_mask=fbm)
        providers = {}
        for mode in [m for m in ("split", "fused") if m in chosen]:
            def bwd(mode=mode):
                os.environ["HWATTN_BWD"] = mode
                try:
                    torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
                finally:
                    os.environ.pop("HWATTN_BWD")
            providers[f"hwattn_{mode}"] = bwd
        do_h = do.transpose(1, 2).contiguous()
        if "flex" in chosen:
            providers["flex"] = lambda: torch.autograd.grad(fo, (qh, kh, vh), do_h, retain_graph=True)
        for prov, fn in providers.items():
            ms = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
            ks = kernels(fn)
            row = {"case": name, "B": B, "N": N, "causal": causal, "provider": prov, "bwd_ms": round(ms, 4),
                   "kernels": "; ".join(f"{k} {t}" for t, k in ks[:6])}
            rows.append(row)
            print(f"{name:<22} {prov:<14} bwd {ms:7.3f} ms | " + " | ".join(f"{k[:34]} {t:.3f}" for t, k in ks[:5]),
                  flush=True)

    t0 = time.time()
    if "dense" in a.cases:
        for causal in (True, False):
            case("dense" + ("_causal" if causal else ""), 2, 8192, 16, 128, causal, None)
            case("dense" + ("_causal" if causal else ""), 8, 2048, 16, 128, causal, None)
    if "window_arg" in a.cases:  # the window through flash_attention(window=) against the same mask in Flex
        case("window_4096_arg", 1, 32768, 16, 128, True,
             masks.and_masks(masks.causal(), masks.sliding_window(4096)), window=(4096, 0))
    if "window_variants" in a.cases:
        # the window argument's dK/dV ran 25% slower than the block walk's on the same steps (sixth session):
        # the same window causal, as a non-causal window (4096, 0) (CAUSAL off, WINDOW on), and as a block mask
        band = masks.and_masks(masks.causal(), masks.sliding_window(4096))
        for B, N in ((1, 32768), (4, 8192)):
            case(f"win_arg_causal_{N}", B, N, 16, 128, True, band, window=(4096, 0))
            case(f"win_arg_noncausal_{N}", B, N, 16, 128, False, band, window=(4096, 0))
            case(f"win_block_mask_{N}", B, N, 16, 128, True, band)
    if "masks" in a.cases:
        n = 32768
        case("window_4096_causal", 1, n, 16, 128, True, masks.and_masks(masks.causal(), masks.sliding_window(4096)))
        g = torch.Generator().manual_seed(1)
        lengths = torch.randint(512, 8192, (64,), generator=g)
        doc_ids = torch.repeat_interleave(torch.arange(64), lengths)[:n]
        doc_ids = torch.cat([doc_ids, torch.full((n - doc_ids.numel(),), 64)]).cuda()[None]
        case("document_causal", 1, n, 16, 128, True, masks.and_masks(masks.causal(), masks.document(doc_ids)))
    with open(os.path.join(a.out, "bwd_profile.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"done in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
