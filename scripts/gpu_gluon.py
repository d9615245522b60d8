"""The Gluon Hopper forward (hwattn/ops/flash/hopper.py) on a GPU: correctness, then forward timing.

    python scripts/gpu_gluon.py --out $OUT/gluon --sections check,bench,fp8 [--n 512,4096,16384] [--d 64,128]

check: the kernel against the float64 reference (O and LSE) over edge shapes (seqlen 1, N not a block multiple,
Nq != Nk both ways, causal, GQA / MQA, D = 64 / 128, fp16 / bf16, non-contiguous batch strides, large
logits), beside PyTorch's math attention in the same dtype (the 2x bound), and once through flash_attention
with HWATTN_FWD_KERNEL=gluon with gradients (the portable backward on the Gluon forward's LSE).
bench: forward TFLOP/s, median of triton.testing.do_bench, same process: the Gluon kernel, the portable
kernel (autotuned) and SDPA's cuDNN and flash backends, over the standard grid (B*N = 16384, H*D = 2048).
fp8: the FP8 variant (not routed to by hwattn yet) against float64 of the dequantised inputs and beside the
portable FP8 forward, then its TFLOP/s at D = 128, N = 4096 / 16384.
Writes check.csv / bench.csv / fp8.csv under --out and prints every row.
"""
import argparse
import csv
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from hwattn import reference  # noqa: E402
from hwattn.ops.flash import hopper  # noqa: E402
from hwattn.ops.flash.common import LN2  # noqa: E402
from hwattn.testing import rel_err  # noqa: E402

BOUND = {torch.float16: 2e-3, torch.bfloat16: 1e-2}


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def inputs(B, n_q, n_k, H, Hk, D, dtype, scale=1.0, strided=False):
    def make(n, h):
        if strided:  # batch stride padded: not contiguous across batches, rows still aligned
            x = torch.randn(B, n + 3, h, D, device="cuda", dtype=dtype)[:, 1:n + 1]
        else:
            x = torch.randn(B, n, h, D, device="cuda", dtype=dtype)
        return x * scale
    return make(n_q, H), make(n_k, Hk), make(n_k, Hk)


def torch_math(q, k, v, causal):
    """PyTorch's own math attention in q's dtype, flash_attn's bottom-right causal mask, GQA by enable_gqa."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    mask = reference.causal_mask(q.shape[1], k.shape[1], device=q.device) if causal else None
    with sdpa_kernel(SDPBackend.MATH):
        o = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), attn_mask=mask,
                                           enable_gqa=k.shape[2] != q.shape[2])
    return torch.nan_to_num(o.transpose(1, 2))  # its fully masked rows are NaN; ours (and the reference's) 0


def parse_variants(text):
    """"default,persistent,s2,c3,persistent+s2" -> overrides of hopper.config: "persistent" = PERSISTENT=True,
    "sN" = STAGES=N, "cN" = N consumer warpgroups, "+" combines; "default" = hopper.config's own pick."""
    out = {}
    for name in filter(None, text.split(",")):
        cfg = {}
        for part in name.split("+"):
            if part == "persistent":
                cfg["PERSISTENT"] = True
            elif part.startswith("s") and part[1:].isdigit():
                cfg["STAGES"] = int(part[1:])
            elif part.startswith("c") and part[1:].isdigit():
                cfg["CONSUMERS"] = int(part[1:])
            elif part != "default":
                raise ValueError(f"unknown variant part {part!r} in {name!r}")
        out[name] = cfg
    return out


def check(out_dir, variants):
    cases = [  # B, Nq, Nk, H, Hk, D, causal, dtype, scale, strided
        (2, 1, 1, 4, 4, 128, False, torch.bfloat16, 1, False),
        (2, 1, 300, 4, 4, 128, True, torch.bfloat16, 1, False),
        (2, 300, 1, 4, 4, 128, True, torch.bfloat16, 1, False),   # rows that see no key: zeros, LSE -inf
        (2, 1000, 1000, 4, 4, 128, False, torch.bfloat16, 1, False),
        (2, 1000, 1000, 4, 4, 128, True, torch.bfloat16, 1, False),
        (1, 777, 1500, 8, 2, 128, True, torch.bfloat16, 1, False),
        (1, 1500, 777, 8, 2, 128, True, torch.float16, 1, False),
        (2, 513, 1025, 8, 1, 64, False, torch.float16, 1, False),
        (2, 1024, 1024, 8, 8, 64, True, torch.bfloat16, 1, True),
        (1, 4096, 4096, 16, 16, 128, True, torch.bfloat16, 1, False),
        (1, 4096, 4096, 16, 16, 128, False, torch.float16, 1, False),
        (1, 2048, 2048, 4, 4, 128, False, torch.bfloat16, 8, False),  # large logits
        (1, 2048, 2048, 4, 4, 64, True, torch.float16, 8, False),
    ]
    rows, failures = [], 0
    for (B, n_q, n_k, H, Hk, D, causal, dtype, scale, strided), (vname, vcfg) in (
            (c, v) for v in variants.items() for c in (cases if v[0] == "default" else cases[1::2])):
        torch.manual_seed(n_q * 7 + n_k)
        q, k, v = inputs(B, n_q, n_k, H, Hk, D, dtype, scale, strided)
        reason = hopper.unsupported_reason(q, k, v, causal, None, None)
        if vcfg.get("CONSUMERS") == 3 and D == 128:
            continue  # three 64-row Q tiles and three 64 KB stages do not fit 227 KB (hopper._checked_config)
        if reason is not None:
            log("UNSUPPORTED", (B, n_q, n_k, H, Hk, D, causal, dtype), reason)
            failures += 1
            continue
        o, lse2 = hopper.hopper_fwd(q, k, v, causal, 1.0 / math.sqrt(D), vcfg)
        torch.cuda.synchronize()
        ref, ref_lse = reference.attention(q.double(), k.double(), v.double(), causal=causal, return_lse=True)
        math_o = torch_math(q, k, v, causal)
        lse = torch.where(torch.isinf(lse2), torch.full_like(lse2, float("-inf")), lse2 * LN2)
        finite = torch.isfinite(ref_lse)
        lse_err = (lse.double()[finite] - ref_lse[finite]).abs().max().item() if finite.any() else 0.0
        lse_inf_ok = bool((lse[~finite] == float("-inf")).all())
        err, math_err = rel_err(o, ref), rel_err(math_o, ref)
        ok = err <= BOUND[dtype] and err <= 2 * max(math_err, 1e-4) and lse_err < 1e-3 and lse_inf_ok \
            and not torch.isnan(o).any()
        failures += not ok
        row = dict(variant=vname, B=B, n_q=n_q, n_k=n_k, H=H, Hk=Hk, D=D, causal=causal,
                   dtype=str(dtype).split(".")[-1],
                   scale=scale, strided=strided, rel_err=f"{err:.3e}", math_rel_err=f"{math_err:.3e}",
                   lse_max_abs_err=f"{lse_err:.2e}", ok=ok)
        rows.append(row)
        log("OK " if ok else "BAD", row)
    # through the public API, with gradients on the Gluon forward's LSE
    os.environ["HWATTN_FWD_KERNEL"] = "gluon"
    from hwattn.ops.flash import flash_attention
    for causal in (False, True):
        q, k, v = (x.requires_grad_() for x in inputs(2, 1000, 1000, 8, 2, 128, torch.bfloat16))
        o = flash_attention(q, k, v, causal=causal)
        do = torch.randn_like(o)
        o.backward(do)
        q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
        ref = reference.attention(q64, k64, v64, causal=causal)
        ref.backward(do.double())
        errs = [rel_err(o, ref)] + [rel_err(a.grad, b.grad) for a, b in ((q, q64), (k, k64), (v, v64))]
        ok = all(e <= BOUND[torch.bfloat16] for e in errs)
        failures += not ok
        log("OK " if ok else "BAD", f"flash_attention gluon fwd + portable bwd causal={causal}: out/dq/dk/dv rel err",
            [f"{e:.2e}" for e in errs])
        rows.append(dict(variant="default", B=2, n_q=1000, n_k=1000, H=8, Hk=2, D=128, causal=causal,
                         dtype="bfloat16", scale=1,
                         strided=False, rel_err=";".join(f"{e:.3e}" for e in errs), math_rel_err="",
                         lse_max_abs_err="", ok=ok))
    os.environ.pop("HWATTN_FWD_KERNEL")
    write_csv(rows, os.path.join(out_dir, "check.csv"))
    log(f"check: {failures} failures of {len(rows)}")
    return failures


def bench(out_dir, ds, ns, rounds, variants):
    import triton
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F
    from hwattn.ops.flash.forward import flash_fwd
    rows = []
    for D in ds:
        for n in ns:
            for causal in (False, True):
                B, H = max(1, 16384 // n), 2048 // D
                q, k, v = inputs(B, n, n, H, H, D, torch.bfloat16)
                qh, kh, vh = (x.transpose(1, 2).contiguous() for x in (q, k, v))
                scale = 1.0 / math.sqrt(D)
                flops = 4.0 * B * H * n * n * D / (2 if causal else 1)

                def sdpa(backend):
                    def run():
                        with sdpa_kernel(backend):
                            return F.scaled_dot_product_attention(qh, kh, vh, is_causal=causal)
                    return run
                fns = {f"gluon_{name}": (lambda c=cfg: hopper.hopper_fwd(q, k, v, causal, scale, c))
                       for name, cfg in variants.items()}
                fns.update({"portable": lambda: flash_fwd(q, k, v, causal, scale),
                       "sdpa_cudnn": sdpa(SDPBackend.CUDNN_ATTENTION),
                       "sdpa_flash": sdpa(SDPBackend.FLASH_ATTENTION)})
                for fn in fns.values():
                    fn()  # compile / autotune outside the timing
                best = {name: float("inf") for name in fns}
                for _ in range(rounds):
                    for name, fn in fns.items():
                        best[name] = min(best[name], triton.testing.do_bench(fn))
                row = dict(D=D, N=n, B=B, H=H, causal=causal)
                row.update({f"{name}_tflops": round(flops / ms / 1e9, 1) for name, ms in best.items()})
                for name in variants:
                    row[f"{name}_over_cudnn"] = round(best["sdpa_cudnn"] / best[f"gluon_{name}"], 3)
                rows.append(row)
                log(row)
    write_csv(rows, os.path.join(out_dir, "bench.csv"))


def fp8(out_dir):
    """The FP8 variant of the Gluon kernel (not routed to by hwattn yet): against float64 of the dequantised
    inputs (the bound of tests/ops/test_flash_fp8.py, 3.5e-2) and beside the portable FP8 forward, then
    forward TFLOP/s of both and of SDPA cuDNN in bf16, same process."""
    import triton
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F
    import hwattn
    from hwattn.ops.flash.forward import flash_fwd
    from hwattn.ops.flash_fp8 import naive
    failures, rows = 0, []
    for B, n_q, n_k, H, Hk, D, causal in [(1, 1, 300, 4, 4, 128, False), (2, 333, 200, 8, 2, 128, True),
                                          (1, 1000, 1000, 4, 1, 64, True), (2, 512, 512, 4, 4, 128, False),
                                          (2, 1024, 1024, 8, 8, 128, False), (1, 1500, 777, 8, 2, 128, True)]:
        torch.manual_seed(n_q + n_k)
        q, k, v = inputs(B, n_q, n_k, H, Hk, D, torch.bfloat16)
        qq = hwattn.quantize_qkv_fp8(q, k, v)
        descale = (qq.descale_q, qq.descale_k, qq.descale_v)
        reason = hopper.unsupported_reason(qq.q, qq.k, qq.v, causal, None, None, descale, torch.bfloat16)
        if reason is not None:
            log("UNSUPPORTED", reason)
            failures += 1
            continue
        scale = 1.0 / math.sqrt(D)
        o, _ = hopper.hopper_fwd(qq.q, qq.k, qq.v, causal, scale, descale=descale, out_dtype=torch.bfloat16)
        ref = naive.attention_fp8(*qq, causal=causal)
        portable, _ = flash_fwd(qq.q, qq.k, qq.v, causal, scale, descale=descale, out_dtype=torch.bfloat16)
        err, err_portable = rel_err(o, ref), rel_err(portable, ref)
        ok = err <= 3.5e-2 and not torch.isnan(o).any()
        failures += not ok
        log("OK " if ok else "BAD", f"fp8 {(B, n_q, n_k, H, Hk, D, causal)}: gluon {err:.3e}, portable "
                                    f"{err_portable:.3e} vs float64 of the dequantised inputs")
    for n in (4096, 16384):
        for causal in (False, True):
            B, H, D = 16384 // n, 16, 128
            q, k, v = inputs(B, n, n, H, H, D, torch.bfloat16)
            qq = hwattn.quantize_qkv_fp8(q, k, v)
            descale = (qq.descale_q, qq.descale_k, qq.descale_v)
            qh, kh, vh = (x.transpose(1, 2).contiguous() for x in (q, k, v))
            scale = 1.0 / math.sqrt(D)
            flops = 4.0 * B * H * n * n * D / (2 if causal else 1)

            def cudnn():
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    return F.scaled_dot_product_attention(qh, kh, vh, is_causal=causal)
            fns = {"gluon_fp8": lambda: hopper.hopper_fwd(qq.q, qq.k, qq.v, causal, scale, descale=descale,
                                                          out_dtype=torch.bfloat16),
                   "portable_fp8": lambda: flash_fwd(qq.q, qq.k, qq.v, causal, scale, descale=descale,
                                                     out_dtype=torch.bfloat16),
                   "gluon_bf16": lambda: hopper.hopper_fwd(q, k, v, causal, scale),
                   "sdpa_cudnn_bf16": cudnn}
            for fn in fns.values():
                fn()
            row = dict(D=D, N=n, causal=causal)
            row.update({name: round(flops / min(triton.testing.do_bench(fn) for _ in range(2)) / 1e9, 1)
                        for name, fn in fns.items()})
            rows.append(row)
            log(row)
    if rows:
        write_csv(rows, os.path.join(out_dir, "fp8.csv"))
    log(f"fp8: {failures} failures")
    return failures


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--sections", default="check,bench")
    p.add_argument("--d", default="128,64")
    p.add_argument("--n", default="512,1024,2048,4096,8192,16384")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--variants", default="default",
                   help="comma list: default, persistent, sN (N stages), cN (N consumers), combined with +")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    log(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", __import__("triton").__version__)
    failures = 0
    if "check" in a.sections:
        failures = check(a.out, parse_variants(a.variants))
    if "bench" in a.sections:
        bench(a.out, [int(x) for x in a.d.split(",")], [int(x) for x in a.n.split(",")], a.rounds,
              parse_variants(a.variants))
    if "fp8" in a.sections:
        failures += fp8(a.out)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
