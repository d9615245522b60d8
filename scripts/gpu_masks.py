"""GPU: block-sparse / sliding-window / document masks on the exact kernel against compiled FlexAttention
with the same mask_mod, and block-sparse cost against density. Writes masks.csv under --out.

    python3 scripts/gpu_masks.py --out $OUT
"""
import argparse
import csv
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "results/masks"))
    ap.add_argument("--n-long", type=int, default=32768)
    ap.add_argument("--n-sparse", type=int, default=16384)
    ap.add_argument("--tiles-too", action="store_true", help="also time the window and document masks through "
                    "stored tiles (compute_partial=False)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    import torch
    import torch._dynamo
    import torch._functorch.config
    import triton.testing
    from torch.nn.attention.flex_attention import create_block_mask as flex_block_mask, flex_attention

    import hwattn
    from hwattn import masks
    from hwattn.testing import rel_err

    torch._dynamo.config.cache_size_limit = 1000
    torch._functorch.config.donated_buffer = False
    flex = torch.compile(flex_attention, dynamic=False)
    bench = lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    rows = []

    def time_pair(name, n, mask_mod, H=16, D=128, B=1, flex_too=True, compute_partial=True, route=True):
        torch.manual_seed(0)
        q, k, v = (torch.randn(B, n, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        t0 = time.time()
        bm = masks.create_block_mask(mask_mod, None, None, n, n, device="cuda", block_size=128,
                                     compute_partial=compute_partial)
        build_s = time.time() - t0
        if not route:  # packed documents / a band through the block walk, not the varlen / window kernels
            bm.documents = bm.window = None
        out = hwattn.flash_attention(q, k, v, block_mask=bm)
        do = torch.randn_like(out)
        res = {"case": name, "n": n, "density": round(bm.density(), 4), "build_s": round(build_s, 2),
               "partial": "tiles" if bm.partial_kind == 1 else "ranges",
               "kernels": "varlen" if bm.documents is not None else "window" if bm.window is not None else "block walk"}
        res["hwattn_fwd_ms"] = bench(lambda: hwattn.flash_attention(q, k, v, block_mask=bm))
        res["hwattn_bwd_ms"] = bench(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True))
        for mode in ("split", "fused"):  # the default (HWATTN_BWD=auto) takes one of these (split, for block masks)
            os.environ["HWATTN_BWD"] = mode
            res[f"hwattn_{mode}_bwd_ms"] = bench(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True))
            os.environ.pop("HWATTN_BWD")
        if flex_too:
            qh, kh, vh = (x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
            fbm = flex_block_mask(mask_mod, None, None, n, n, device="cuda")
            fo = flex(qh, kh, vh, block_mask=fbm)
            res["flex_fwd_ms"] = bench(lambda: flex(qh, kh, vh, block_mask=fbm))
            do_h = do.transpose(1, 2).contiguous()  # each provider gets its own layout, contiguous
            res["flex_bwd_ms"] = bench(lambda: torch.autograd.grad(fo, (qh, kh, vh), do_h, retain_graph=True))
            res["out_vs_flex_rel"] = rel_err(out.float(), fo.transpose(1, 2).float())
        rows.append(res)
        print(res, flush=True)
        return res

    n = a.n_long
    window = masks.and_masks(masks.causal(), masks.sliding_window(4096))
    # a band: run as the window argument would be (`BlockMask.window`), then through the block walk
    time_pair("sliding_window_4096_causal", n, window)
    time_pair("sliding_window_4096_causal_block_walk", n, window, flex_too=False, route=False)
    if a.tiles_too:  # the same mask through stored tiles (the path of masks without ranges)
        time_pair("sliding_window_4096_causal_tiles", n, window, flex_too=False, compute_partial=False)
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(512, 8192, (64,), generator=g)
    doc_ids = torch.repeat_interleave(torch.arange(64), lengths)[:n]
    doc_ids = torch.cat([doc_ids, torch.full((n - doc_ids.numel(),), 64)]).cuda()[None]
    document = masks.and_masks(masks.causal(), masks.document(doc_ids))
    time_pair("document_causal", n, document)
    time_pair("document_causal_block_walk", n, document, flex_too=False, route=False)
    if a.tiles_too:
        time_pair("document_causal_tiles", n, document, flex_too=False, compute_partial=False)

    # block-sparse with ~10% of blocks kept, against the dense kernel on the same shape
    ns = a.n_sparse
    nb = ns // 128
    table = (torch.rand(nb, nb, generator=g) < 0.10).cuda()
    table |= torch.eye(nb, dtype=torch.bool, device="cuda")
    sparse = time_pair("block_sparse_10pct", ns, lambda b, h, q, kv: table[q // 128, kv // 128], flex_too=True)
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, ns, 16, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    out = hwattn.flash_attention(q, k, v)
    do = torch.randn_like(out)
    dense = {"case": "dense_same_shape", "n": ns, "density": 1.0,
             "hwattn_fwd_ms": bench(lambda: hwattn.flash_attention(q, k, v)),
             "hwattn_bwd_ms": bench(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True))}
    rows.append(dense)
    kept = sparse["density"]
    ratio = (sparse["hwattn_fwd_ms"] + sparse["hwattn_bwd_ms"]) / (kept * (dense["hwattn_fwd_ms"] + dense["hwattn_bwd_ms"]))
    print(f"block-sparse fwd+bwd time / (kept fraction {kept:.3f} x dense time) = {ratio:.2f} (bar <= 1.3)", flush=True)

    keys = sorted({k for r in rows for k in r}, key=lambda x: (x != "case", x))
    with open(os.path.join(a.out, "masks.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow(r)
    print(f"{'case':<38}{'dens':>6}{'fwd ms':>9}{'flex':>9}{'bwd ms':>9}{'flex':>9}")
    for r in rows:
        print(f"{r['case'][:38]:<38}{r['density']:>6.3f}{r['hwattn_fwd_ms']:>9.2f}{r.get('flex_fwd_ms', float('nan')):>9.2f}"
              f"{r['hwattn_bwd_ms']:>9.2f}{r.get('flex_bwd_ms', float('nan')):>9.2f}")


if __name__ == "__main__":
    main()
