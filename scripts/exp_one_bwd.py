"""GPU experiment: one backward of the sliding-window case, for a kernel profiler (ncu) to capture.

    ncu --kernel-name _bwd_dkdv_kernel --launch-skip 1 --launch-count 1 python3 scripts/exp_one_bwd.py --how arg

--how arg: flash_attention(window=(4096, 0), causal=True); --how mask: the same window as a block mask.
Fixed launch configs (HWATTN_AUTOTUNE=0), split backward (HWATTN_BWD=split), bf16, B=1, N=32768, H=16, D=128.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("HWATTN_AUTOTUNE", "0")
os.environ.setdefault("HWATTN_BWD", "split")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--how", choices=("arg", "mask"), default="arg")
    ap.add_argument("--n", type=int, default=32768)
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    import torch
    import hwattn
    from hwattn import masks
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, a.n, 16, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    kw = dict(causal=True, window=(4096, 0))
    if a.how == "mask":
        kw = dict(block_mask=masks.create_block_mask(masks.and_masks(masks.causal(), masks.sliding_window(4096)),
                                                     None, None, a.n, a.n, device="cuda"))
    out = hwattn.flash_attention(q, k, v, **kw)
    do = torch.randn_like(out)
    for _ in range(a.reps):
        torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
    torch.cuda.synchronize()
    print("done", a.how)


if __name__ == "__main__":
    main()
