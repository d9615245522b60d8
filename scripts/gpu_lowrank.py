"""GPU check of the low-rank methods (issue 5): correctness of the Triton kernels on the GPU, then timings.

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site python3 scripts/gpu_lowrank.py --out $OUT

Sections (each guarded: one failure is printed and the rest go on; a time budget skips what would not fit):
  1. correctness: linear attention (bf16/fp16/fp32, causal/non-causal, normalised or not, elu+1/identity), the
     recurrent decode, Performer and Linformer against float64 references; ours and fla against each other.
  2. a small launch-config sweep of our linear-attention kernels at N=16k (the best config is used below).
  3. timings (triton.testing.do_bench, median), B=1, H=64, D=128, bf16, causal, N in {8k,16k,32k,64k}:
     ours vs fla 0.6.0 chunk_linear_attn (normalize=True and False), SDPA flash causal (exact), Performer (m=256)
     vs plain linear attention (elu+1); fwd and bwd separately; fitted exponent of time vs N.
Writes correctness.csv, timings.csv, sweep.csv and lowrank.png under --out.
"""
import argparse
import csv
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

T0 = time.time()
DEVICE = "cuda"
DTYPE = None   # bfloat16 on the GPU (set in main)
SMOKE = False  # --smoke: a tiny dry run on the CPU through the Triton interpreter, to test this script


def S(n):
    """A sequence length, shrunk for --smoke."""
    return max(16, n // 16) if SMOKE else n


def elapsed():
    return time.time() - T0


def log(*a):
    print(f"[{elapsed():6.1f}s]", *a, flush=True)


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


# --------------------------------------------------------------------------------------------- correctness

def rel(a, b):
    from hwattn.testing import rel_err
    return rel_err(a, b)


def grads_vs(fn_ours, fn_ref, inputs, dtype):
    """Run ours on `inputs` (dtype) and the reference on float64 copies; return errors of out and grads."""
    import torch
    ours = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn_ours(*ours)
    do = torch.randn_like(out)
    out.backward(do)
    refs = [x.detach().double().requires_grad_() for x in inputs]
    ref = fn_ref(*refs)
    ref.backward(do.double())
    errs = [rel(out, ref)] + [rel(a.grad, b.grad) for a, b in zip(ours, refs)]
    return errs


@guarded("correctness")
def section_correctness(rows):
    import torch
    from hwattn.ops.linear_attn import linear_attention, linear_attention_recurrent
    from hwattn.ops.linear_attn.naive import linear_attention_naive
    from hwattn.ops.performer import draw_projection, performer_attention
    from hwattn.ops.performer.naive import performer_attention_naive
    from hwattn.ops.linformer import linformer_attention
    from hwattn.reference import attention
    from hwattn.testing import TOLERANCE

    dev = DEVICE
    bf16 = DTYPE  # bfloat16 on the GPU; float16 in --smoke runs (the interpreter's bf16 dot is wrong)
    torch.manual_seed(0)

    def record(case, dtype, errs, extra=""):
        bound = TOLERANCE[dtype]
        ok = all(e <= bound for e in errs)
        rows.append({"case": case, "dtype": str(dtype).replace("torch.", ""), "out": errs[0],
                     "dq": errs[1] if len(errs) > 1 else "", "dk": errs[2] if len(errs) > 2 else "",
                     "dv": errs[3] if len(errs) > 3 else "", "bound": bound, "pass": ok, "note": extra})
        log(f"{'PASS' if ok else 'FAIL'} {case:58s} {str(dtype):15s} " + " ".join(f"{e:.1e}" for e in errs)
            + f"  (bound {bound:.0e}) {extra}")

    # (kept small in number: every dtype / head dim / flag combination is a fresh Triton compile)
    cases = [(bf16, True, (2, S(2048), 4, 128, 128)), (bf16, False, (2, S(2048), 4, 128, 128)),
             (torch.float32, True, (2, S(1000), 4, 64, 64))]
    for dtype, causal, (B, N, H, D, Dv) in cases:
        q, k, v = (torch.randn(B, N, H, d, device=dev, dtype=dtype) for d in (D, D, Dv))
        errs = grads_vs(lambda a, b, c: linear_attention(a, b, c, causal=causal),
                        lambda a, b, c: linear_attention_naive(a, b, c, causal=causal)[0], (q, k, v), dtype)
        extra = ""
        if dtype == bf16:  # the quadratic form in bf16 itself, for the "2x PyTorch" rule
            naive_bf16 = linear_attention_naive(q, k, v, causal=causal)[0]
            ref = linear_attention_naive(q.double(), k.double(), v.double(), causal=causal)[0]
            extra = f"naive-bf16 out err {rel(naive_bf16, ref):.1e}"
        record(f"linear elu+1 {'causal' if causal else 'noncausal'} {B}x{N}x{H}x{D}", dtype, errs, extra)
    # identity features (positive inputs), normalised or not, bf16
    for normalize in (True, False):
        q, k = (torch.rand(2, S(2048), 4, 128, device=dev, dtype=bf16) for _ in range(2))
        v = torch.randn(2, S(2048), 4, 128, device=dev, dtype=bf16)
        errs = grads_vs(lambda a, b, c: linear_attention(a, b, c, causal=True, feature_map=None, normalize=normalize),
                        lambda a, b, c: linear_attention_naive(a, b, c, causal=True, feature_map=None,
                                                               normalize=normalize)[0], (q, k, v), bf16)
        record(f"linear identity causal normalize={normalize} 2x{S(2048)}x4x128", bf16, errs)
    # state chaining and recurrent decode (bf16 and fp32)
    for dtype in (bf16, torch.float32):
        q, k, v = (torch.randn(2, 300, 4, 64, device=dev, dtype=dtype) for _ in range(3))
        full = linear_attention(q, k, v, causal=True)
        o1, st = linear_attention(q[:, :200], k[:, :200], v[:, :200], causal=True, output_final_state=True)
        outs = [o1]
        for t in range(200, 300, 10):
            o, st = linear_attention_recurrent(q[:, t:t + 10], k[:, t:t + 10], v[:, t:t + 10], initial_state=st)
            outs.append(o)
        ref = linear_attention_naive(q.double(), k.double(), v.double(), causal=True)[0]
        record("prefill 200 + recurrent decode 10x10 vs float64", dtype, [rel(torch.cat(outs, 1), ref)],
               f"(parallel form: {rel(full, ref):.1e})")
    # performer
    for dtype, causal in ((bf16, True), (bf16, False), (torch.float32, True)):
        w = draw_projection(256, 64, seed=0, device=dev)
        q, k, v = (torch.randn(1, S(1024), 4, 64, device=dev, dtype=dtype) for _ in range(3))
        errs = grads_vs(lambda a, b, c: performer_attention(a, b, c, w, causal=causal),
                        lambda a, b, c: performer_attention_naive(a, b, c, w.double(), causal=causal),
                        (q, k, v), dtype)
        record(f"performer m=256 {'causal' if causal else 'noncausal'} 1x{S(1024)}x4x64", dtype, errs)
    # linformer: identity projections = softmax attention
    q, k, v = (torch.randn(2, S(512), 4, 64, device=dev, dtype=bf16) for _ in range(3))
    eye = torch.eye(S(512), device=dev)
    record("linformer k=n identity vs softmax attention", bf16,
           [rel(linformer_attention(q, k, v, eye), attention(q.double(), k.double(), v.double()))])
    del q, k, v
    torch.cuda.empty_cache()


@guarded("fla cross-check")
def section_fla_check(rows):
    import torch
    from fla.ops.linear_attn import chunk_linear_attn
    from hwattn.ops.linear_attn import linear_attention
    from hwattn.ops.linear_attn.naive import linear_attention_naive
    torch.manual_seed(1)
    for normalize in (True, False):
        # H = 64, D = 128 as in the timings, so fla autotunes once for both
        q, k = (torch.rand(1, 2048, 64, 128, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
        v = torch.randn(1, 2048, 64, 128, device=DEVICE, dtype=torch.bfloat16)
        ref = linear_attention_naive(q.double(), k.double(), v.double(), causal=True, feature_map=None,
                                     normalize=normalize)[0]
        ours = linear_attention(q, k, v, causal=True, feature_map=None, normalize=normalize)
        # fla scales q by `scale`; with normalize=True it cancels, without it we pass scale=1 to compare
        theirs = chunk_linear_attn(q, k, v, scale=1.0, normalize=normalize)[0]
        e_ours, e_fla, e_between = rel(ours, ref), rel(theirs, ref), rel(ours, theirs)
        rows.append({"case": f"ours vs fla vs float64, identity features, normalize={normalize} 1x2048x64x128",
                     "dtype": "bfloat16", "out": e_ours, "dq": "", "dk": "", "dv": "", "bound": 1e-2,
                     "pass": e_ours <= 1e-2, "note": f"fla err {e_fla:.1e}, ours-fla {e_between:.1e}"})
        log(f"normalize={normalize}: ours err {e_ours:.1e}, fla err {e_fla:.1e}, ours vs fla {e_between:.1e} "
            "(vs float64 quadratic form, bf16 inputs)")


# --------------------------------------------------------------------------------------------- timing

def bench(fn, rep=40):
    if SMOKE:  # no GPU: wall clock of two calls, only to exercise the code
        fn()
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    from triton.testing import do_bench
    return do_bench(fn, warmup=10, rep=rep, return_mode="median")


def fwd_bwd(fn, inputs, rep=40):
    """(fwd ms, bwd ms): the backward timed alone on a retained graph, grads reset between runs."""
    import torch
    fwd = bench(lambda: fn(*inputs), rep)
    out = fn(*inputs)
    do = torch.randn_like(out)
    bwd = bench(lambda: out.backward(do, retain_graph=True), rep) if out.requires_grad else float("nan")
    for x in inputs:
        x.grad = None
    del out, do
    return fwd, bwd


def make_inputs(N, dtype, B=1, H=64, D=128, positive=True):
    import torch
    if SMOKE:
        H, D = 2, 32
    gen = torch.rand if positive else torch.randn
    q, k = (gen(B, N, H, D, device=DEVICE, dtype=dtype) for _ in range(2))
    v = torch.randn(B, N, H, D, device=DEVICE, dtype=dtype)
    return [x.requires_grad_() for x in (q, k, v)]


@guarded("sweep")
def section_sweep(rows, budget_end):
    """Try a few launch configs per kernel at N=16k; keep the fastest of each (others at their defaults)."""
    import torch
    from hwattn.ops.linear_attn import kernels, linear_attention
    N = 128 if SMOKE else 16384
    q, k, v = make_inputs(N, DTYPE)
    fn = lambda a, b, c: linear_attention(a, b, c, causal=True, feature_map=None)  # noqa: E731
    candidates = {  # (BK, BV, num_warps, num_stages); first = the default
        "output_fwd": [(64, 128, 8, 2), (64, 64, 4, 2), (128, 128, 8, 2), (64, 128, 4, 3)],
        "state_fwd": [(64, 64, 4, 3), (64, 64, 8, 3), (64, 128, 8, 3), (64, 64, 4, 4)],
        "dqk_bwd": [(64, 64, 8, 2), (64, 64, 4, 2), (128, 32, 8, 2), (128, 64, 8, 2)],
        "dv_bwd": [(64, 64, 4, 2), (64, 128, 8, 2), (32, 128, 4, 2), (64, 128, 4, 2)],
        "state_bwd": [(64, 64, 4, 3), (64, 64, 8, 3), (64, 128, 8, 3), (64, 64, 4, 4)],
    }
    for name, cfgs in candidates.items():
        best = None
        default = kernels.CONFIGS[name]
        for cfg in cfgs:
            if time.time() > budget_end:
                log(f"sweep: out of time at {name}")
                return
            kernels.CONFIGS[name] = cfg
            try:
                f, b = fwd_bwd(fn, (q, k, v), rep=25)
            except Exception as e:  # e.g. out of shared memory for a big tile
                log(f"sweep {name} {cfg}: {type(e).__name__}: {str(e)[:120]}")
                continue
            t = f if name.endswith("fwd") else b
            rows.append({"kernel": name, "config": str(cfg), "fwd_ms": f, "bwd_ms": b})
            log(f"sweep {name:10s} {str(cfg):18s} fwd {f:7.3f} ms  bwd {b:7.3f} ms")
            if best is None or t < best[0]:
                best = (t, cfg)
        kernels.CONFIGS[name] = default if best is None else best[1]
        log(f"sweep {name}: using {kernels.CONFIGS[name]}")
    del q, k, v
    torch.cuda.empty_cache()


@guarded("timings")
def section_timings(rows, Ns, budget_end, skip_sdpa_above):
    import torch
    import torch.nn.functional as F
    from hwattn.ops.linear_attn import linear_attention
    from hwattn.ops.performer import draw_projection, performer_attention
    try:
        from fla.ops.linear_attn import chunk_linear_attn
    except Exception as e:
        chunk_linear_attn = None
        log(f"fla not importable: {type(e).__name__}: {e}")
    w = draw_projection(256, 32 if SMOKE else 128, seed=0, device=DEVICE)
    providers = [
        ("ours norm", lambda q, k, v: linear_attention(q, k, v, causal=True, feature_map=None)),
        ("fla norm", None if chunk_linear_attn is None else
         (lambda q, k, v: chunk_linear_attn(q, k, v, normalize=True)[0])),
        ("ours nonorm", lambda q, k, v: linear_attention(q, k, v, causal=True, feature_map=None, normalize=False)),
        ("fla nonorm", None if chunk_linear_attn is None else
         (lambda q, k, v: chunk_linear_attn(q, k, v, scale=1.0, normalize=False)[0])),
        ("ours elu+1", lambda q, k, v: linear_attention(q, k, v, causal=True)),
        ("performer m=256", lambda q, k, v: performer_attention(q, k, v, w, causal=True)),
        ("performer C=128", lambda q, k, v: performer_attention(q, k, v, w, causal=True, chunk_size=128)),
        ("sdpa flash causal", "sdpa"),
    ]
    # Phases, so that the bar (ours vs fla at every N) is measured first if time runs short.
    phases = [providers[:4], providers[4:6], providers[6:]]
    for phase in phases:
        for N in Ns:
            qkv = None
            for name, fn in phase:
                if fn is None:
                    continue
                if time.time() > budget_end:
                    log(f"timings: out of time before {name} N={N}")
                    return
                if fn == "sdpa" and N > skip_sdpa_above:
                    continue
                if qkv is None:
                    qkv = make_inputs(N, DTYPE)
                try:
                    if fn == "sdpa":
                        from torch.nn.attention import SDPBackend, sdpa_kernel
                        qh, kh, vh = (x.detach().transpose(1, 2).contiguous().requires_grad_() for x in qkv)
                        backend = SDPBackend.MATH if SMOKE else SDPBackend.FLASH_ATTENTION

                        def sdpa(a, b, c):
                            with sdpa_kernel(backend):
                                return F.scaled_dot_product_attention(a, b, c, is_causal=True)
                        f, b = fwd_bwd(sdpa, (qh, kh, vh), rep=20)
                        del qh, kh, vh
                    else:
                        f, b = fwd_bwd(fn, qkv)
                except Exception as e:
                    log(f"{name} N={N}: {type(e).__name__}: {str(e)[:300]}")
                    continue
                rows.append({"N": N, "provider": name, "fwd_ms": f, "bwd_ms": b, "total_ms": f + b})
                log(f"N={N:6d} {name:18s} fwd {f:8.3f} ms  bwd {b:8.3f} ms")
            del qkv
            torch.cuda.empty_cache() if DEVICE == "cuda" else None


def fit_exponent(Ns, ts):
    import numpy as np
    if len(Ns) < 2:
        return float("nan")
    return float(np.polyfit(np.log(Ns), np.log(ts), 1)[0])


def write_csv(path, rows):
    if not rows:
        return
    keys = list(rows[0].keys())
    for r in rows:
        for key in r:
            if key not in keys:
                keys.append(key)
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=keys)
        wr.writeheader()
        wr.writerows(rows)


@guarded("report")
def report(out, timing_rows):
    by = {}
    for r in timing_rows:
        by.setdefault(r["provider"], {})[r["N"]] = r
    Ns = sorted({r["N"] for r in timing_rows})
    print("\n=== causal, B=1, H=64, D=128, bf16; milliseconds (median, do_bench) ===")
    print(f"{'provider':18s} " + " ".join(f"{'N=' + str(n):>19s}" for n in Ns) + "   exp fwd/bwd")
    for name, d in by.items():
        cells = []
        for n in Ns:
            r = d.get(n)
            cells.append(f"{r['fwd_ms']:8.2f} /{r['bwd_ms']:8.2f}" if r else f"{'-':>19s}")
        ns = [n for n in Ns if n in d]
        ef = fit_exponent(ns, [d[n]["fwd_ms"] for n in ns])
        eb = fit_exponent(ns, [d[n]["bwd_ms"] for n in ns])
        print(f"{name:18s} " + " ".join(f"{c:>19s}" for c in cells) + f"   {ef:.3f}/{eb:.3f}")
    print("\n=== ratios (< 1: ours faster) ===")
    for ours, theirs in (("ours norm", "fla norm"), ("ours nonorm", "fla nonorm"), ("ours elu+1", "fla norm"),
                         ("performer m=256", "ours elu+1"), ("performer C=128", "ours elu+1")):
        if ours in by and theirs in by:
            cells = []
            for n in Ns:
                a, b = by[ours].get(n), by[theirs].get(n)
                if a and b:
                    cells.append(f"N={n}: fwd {a['fwd_ms'] / b['fwd_ms']:.2f} bwd {a['bwd_ms'] / b['bwd_ms']:.2f} "
                                 f"total {a['total_ms'] / b['total_ms']:.2f}")
            print(f"{ours} / {theirs}: " + "; ".join(cells))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for ax, key in zip(axes, ("fwd_ms", "bwd_ms")):
            for name, d in by.items():
                ns = [n for n in Ns if n in d]
                ax.loglog(ns, [d[n][key] for n in ns], "o-", label=name)
            ax.set_xlabel("sequence length N")
            ax.set_ylabel(key.replace("_ms", " time (ms)"))
            ax.set_title(f"causal {key[:3]}, B=1 H=64 D=128 bf16")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "lowrank.png"), dpi=120)
        print(f"plot: {os.path.join(out, 'lowrank.png')}")
    except Exception as e:
        print(f"plot failed: {e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "results/lowrank"))
    ap.add_argument("--budget", type=float, default=230.0, help="seconds for the whole run")
    ap.add_argument("--sizes", default="8192,16384,32768,65536")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--sdpa-max", type=int, default=65536, help="skip SDPA above this N")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU dry run (TRITON_INTERPRET=1) of this script")
    args = ap.parse_args()
    global DEVICE, DTYPE, SMOKE
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
        DEVICE, SMOKE = "cpu", True
    os.makedirs(args.out, exist_ok=True)
    import torch
    import triton
    DTYPE = torch.float16 if SMOKE else torch.bfloat16  # bf16 dots are wrong in the CPU interpreter
    log(f"torch {torch.__version__}, triton {triton.__version__}, "
        f"{torch.cuda.get_device_name() if DEVICE == 'cuda' else 'CPU (smoke run)'}")
    try:
        import fla
        log(f"fla {getattr(fla, '__version__', '?')} from {os.path.dirname(fla.__file__)}")
    except Exception as e:
        log(f"fla import failed: {e}")
    deadline = T0 + args.budget
    corr = []
    section_correctness(corr)
    section_fla_check(corr)
    write_csv(os.path.join(args.out, "correctness.csv"), corr)
    n_fail = sum(1 for r in corr if not r["pass"])
    log(f"correctness: {len(corr) - n_fail}/{len(corr)} pass")
    sweep = []
    if not args.no_sweep:
        section_sweep(sweep, min(deadline - 150, time.time() + 45))
        write_csv(os.path.join(args.out, "sweep.csv"), sweep)
        from hwattn.ops.linear_attn import kernels
        log(f"configs used: {kernels.CONFIGS}")
    timings = []
    Ns = [int(x) for x in args.sizes.split(",")]
    section_timings(timings, Ns, deadline - 5, args.sdpa_max)
    write_csv(os.path.join(args.out, "timings.csv"), timings)
    report(args.out, timings)
    log(f"done; correctness failures: {n_fail}; files in {args.out}")


if __name__ == "__main__":
    main()
