"""GPU check of the low-rank methods (issue 5): correctness on the GPU, then timings against fla, in <= 150 s.

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl      # fla 0.6.0 (+ fla-core)
    PYTHONPATH=/tmp/site python3 scripts/gpu_lowrank.py --out $OUT                    # H100: <= 150 s
    python3 scripts/gpu_lowrank.py --smoke --out /tmp/smoke                           # CPU dry run (interpreter)
    python3 scripts/gpu_lowrank.py --compile-check                                    # no GPU: sm_90 compile of
                                                                                      # every kernel specialisation

Phases (each item prints a progress line first, checks the time left, and is guarded: a failure is printed and
the rest goes on; a watchdog stops the run at --budget and still writes the results):
  0. precompile: worker processes compile, in parallel, every Triton kernel the run needs (ours, and fla's autotune
     configs, split between the workers) into Triton's on-disk cache; the main process then only loads binaries.
  1. correctness vs float64 (bf16 mostly; the interpreter cannot check bf16 on the CPU): linear attention (identity
     and elu+1 features, normalised or not, causal or not), Performer m=256 in bf16 and fp32 (fused kernels, and
     the unfused path once), prefill + recurrent decode, Linformer.
  2. the Performer bar: Performer (m=256; fused kernels at chunk 64 and 128, and the unfused path) vs plain linear
     attention (elu+1 features) at one N (16k), causal, B=1, H=64, D=128, bf16, fwd and bwd; SDPA flash there for
     scale. Before fla's autotune, so a short budget still measures it.
  3. fla autotune at N=16k (all of fla's configs, compiled by the workers; benchmark time per config --fla-tune-ms),
     then ours vs fla against float64 at the timed head count.
  4. the linear bar: causal, B=1, H=64, D=128, bf16, N in {8k,16k,32k,64k}, fwd and bwd (bwd = torch.autograd.grad
     on a retained graph, no gradient accumulation): ours and fla chunk_linear_attn, normalised and not.
  5. report: table, ratios, fitted exponent of time vs N (goal <= 1.05), the configs fla's autotuner chose.
  (--sweep: a launch-config sweep of our kernels at N=16k before phase 4; off by default, it costs compiles.)
Writes at most three files under --out: lowrank.csv (every row, column "section"), lowrank.png, lowrank.log.
"""
import argparse
import csv
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)

T0 = time.time()
DEADLINE = T0 + 150.0
DEVICE = "cuda"
DTYPE = None      # bfloat16 on the GPU (set in main); float16 in --smoke (the interpreter's bf16 dot is wrong)
SMOKE = False     # --smoke: a tiny dry run on the CPU through the Triton interpreter, to test this script
WORKER = None     # (index, count) in a precompile worker process
ROWS = []         # every CSV row; each has a "section"
BAR_NS = (8192, 16384, 32768, 65536)
ONE_N = 16384     # Performer vs linear, SDPA, fla's autotune, the sweep


class OutOfTime(BaseException):
    """Raised by the watchdog (SIGALRM) at the budget; not an Exception, so item guards do not swallow it."""


def elapsed():
    return time.time() - T0


def remaining():
    return DEADLINE - time.time()


def log(*a):
    print(f"[{elapsed():6.1f}s]", *a, flush=True)


def guarded(name):
    def deco(fn):
        @functools.wraps(fn)
        def run(*a, **kw):
            try:
                return fn(*a, **kw)
            except Exception:  # noqa: BLE001
                log(f"!! {name} failed:")
                traceback.print_exc(file=sys.stdout)
                sys.stdout.flush()
                return None
        return run
    return deco


def have_time(need, what):
    """True when `need` seconds are left before the deadline; otherwise says what is skipped."""
    if remaining() >= need:
        return True
    log(f"skip {what}: {remaining():.0f} s left, needs ~{need:.0f} s")
    return False


def S(n):
    """A sequence length, shrunk for --smoke."""
    return max(16, n // 64) if SMOKE else n


def bar_shape():
    """(B, H, D) of the timed shapes."""
    return (1, 2, 32) if SMOKE else (1, 64, 128)


def sync():
    if DEVICE == "cuda":
        import torch
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------- correctness

def rel(a, b):
    from hwattn.testing import rel_err
    return rel_err(a, b)


def grads_vs(fn_ours, fn_ref, inputs, dtype):
    """Run ours on `inputs` (dtype) and the reference on float64 copies; return errors of out and grads.
    In a precompile worker only ours runs (it is there to compile; the float64 references would only cost memory)."""
    import torch
    ours = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn_ours(*ours)
    do = torch.randn_like(out)
    g_ours = torch.autograd.grad(out, ours, do)
    if WORKER:
        return []
    refs = [x.detach().double().requires_grad_() for x in inputs]
    ref = fn_ref(*refs)
    g_ref = torch.autograd.grad(ref, refs, do.double())
    return [rel(out, ref)] + [rel(a, b) for a, b in zip(g_ours, g_ref)]


def record(case, dtype, errs, extra=""):
    if WORKER:
        return
    from hwattn.testing import TOLERANCE
    bound = TOLERANCE[dtype]
    ok = all(e == e and e <= bound for e in errs)  # NaN never passes
    ROWS.append({"section": "correctness", "case": case, "dtype": str(dtype).replace("torch.", ""),
                 "out": errs[0], "dq": errs[1] if len(errs) > 1 else "", "dk": errs[2] if len(errs) > 2 else "",
                 "dv": errs[3] if len(errs) > 3 else "", "bound": bound, "pass": ok, "note": extra})
    log(f"{'PASS' if ok else 'FAIL'} {case:52s} {str(dtype):15s} " + " ".join(f"{e:.1e}" for e in errs)
        + f"  (bound {bound:.0e}) {extra}")


def _rand(shape, dtype, positive=False):
    import torch
    return (torch.rand if positive else torch.randn)(*shape, device=DEVICE, dtype=dtype)


def corr_linear(dtype, causal, feature_map, normalize, shape):
    """Linear attention vs the float64 quadratic form, outputs and gradients. shape = (B, N, H, D)."""
    import torch
    from hwattn.ops.linear_attn import linear_attention
    from hwattn.ops.linear_attn.naive import elu_feature_map, linear_attention_naive
    fm = None if feature_map == "identity" else "elu+1"
    ref_fm = None if feature_map == "identity" else elu_feature_map
    positive = feature_map == "identity"  # identity features must be non-negative for a meaningful denominator
    q, k = (_rand(shape, dtype, positive) for _ in range(2))
    v = _rand(shape, dtype)
    errs = grads_vs(lambda a, b, c: linear_attention(a, b, c, causal=causal, feature_map=fm, normalize=normalize),
                    lambda a, b, c: linear_attention_naive(a, b, c, causal=causal, feature_map=ref_fm,
                                                           normalize=normalize)[0], (q, k, v), dtype)
    extra = ""
    if dtype == torch.bfloat16 and not WORKER:  # the quadratic form in bf16 itself, for the "2x PyTorch" rule
        naive = linear_attention_naive(q, k, v, causal=causal, feature_map=ref_fm, normalize=normalize)[0]
        ref = linear_attention_naive(q.double(), k.double(), v.double(), causal=causal, feature_map=ref_fm,
                                     normalize=normalize)[0]
        extra = f"naive-bf16 out err {rel(naive, ref):.1e}"
    B, N, H, D = shape
    record(f"linear {feature_map} {'causal' if causal else 'noncausal'} norm={normalize} {B}x{N}x{H}x{D}",
           dtype, errs, extra)


def performer_fn(w, causal=True, chunk_size=64, fused=True):
    """performer_attention with the fused kernels (the default) or the unfused path (features first, then the
    linear core: performer.interface.FUSED = False for the call)."""
    from hwattn.ops.performer import interface

    def fn(q, k, v):
        saved, interface.FUSED = interface.FUSED, fused
        try:
            return interface.performer_attention(q, k, v, w, causal=causal, chunk_size=chunk_size)
        finally:
            interface.FUSED = saved
    return fn


def corr_performer(dtype, causal, shape, m=256, chunk_size=64, fused=True):
    from hwattn.ops.performer import draw_projection
    from hwattn.ops.performer.naive import performer_attention_naive
    B, N, H, D = shape
    w = draw_projection(m, D, seed=0, device=DEVICE)
    q, k, v = (_rand(shape, dtype) for _ in range(3))
    errs = grads_vs(performer_fn(w, causal, chunk_size, fused),
                    lambda a, b, c: performer_attention_naive(a, b, c, w.double(), causal=causal), (q, k, v), dtype)
    record(f"performer m={m} {'causal' if causal else 'noncausal'} C={chunk_size}{'' if fused else ' unfused'} "
           f"{B}x{N}x{H}x{D}", dtype, errs)


def corr_decode(dtype):
    import torch
    from hwattn.ops.linear_attn import linear_attention, linear_attention_recurrent
    from hwattn.ops.linear_attn.naive import linear_attention_naive
    q, k, v = (_rand((2, 300, 4, 64), dtype) for _ in range(3))
    with torch.no_grad():
        full = linear_attention(q, k, v, causal=True)
        o1, st = linear_attention(q[:, :200], k[:, :200], v[:, :200], causal=True, output_final_state=True)
        outs = [o1]
        for t in range(200, 300, 10):
            o, st = linear_attention_recurrent(q[:, t:t + 10], k[:, t:t + 10], v[:, t:t + 10], initial_state=st)
            outs.append(o)
    if WORKER:
        return
    ref = linear_attention_naive(q.double(), k.double(), v.double(), causal=True)[0]
    record("prefill 200 + recurrent decode 10x10 vs float64", dtype, [rel(torch.cat(outs, 1), ref)],
           f"(parallel form: {rel(full, ref):.1e})")


def corr_linformer(dtype):
    if WORKER:  # nothing to compile: GEMMs and SDPA
        return
    import torch
    from hwattn.ops.linformer import linformer_attention
    from hwattn.reference import attention
    n = S(512)
    q, k, v = (_rand((2, n, 4, 64), dtype) for _ in range(3))
    eye = torch.eye(n, device=DEVICE)
    record("linformer k=n identity vs softmax attention", dtype,
           [rel(linformer_attention(q, k, v, eye), attention(q.double(), k.double(), v.double()))])


def correctness_items():
    """(name, callable) in run order. The first ones use the timed kernels' specialisation (H=64, D=128, lengths
    and chunk counts multiples of 16), so they share compiled binaries with the timings."""
    import torch
    bf16, f32 = DTYPE, torch.float32
    B, H, D = bar_shape()
    bar = (B, S(2048), H, D)
    small = (2, S(1000), 4, 64)
    return [
        ("performer causal (timed kernels)", lambda: corr_performer(bf16, True, bar)),
        ("linear elu+1 causal (timed kernels)", lambda: corr_linear(bf16, True, "elu+1", True, bar)),
        ("performer causal C=128 (timed kernels)", lambda: corr_performer(bf16, True, bar, chunk_size=128)),
        ("performer causal unfused (timed kernels)", lambda: corr_performer(bf16, True, bar, fused=False)),
        ("linear identity causal norm (timed kernels)", lambda: corr_linear(bf16, True, "identity", True, bar)),
        ("linear identity causal nonorm (timed kernels)", lambda: corr_linear(bf16, True, "identity", False, bar)),
        ("performer causal fp32 (triton 3.6 compile failure)", lambda: corr_performer(f32, True, (1, S(1024), 4, 64))),
        ("performer noncausal fp32", lambda: corr_performer(f32, False, (1, S(1024), 4, 64))),
        ("performer noncausal bf16", lambda: corr_performer(bf16, False, (1, S(1024), 4, 64))),
        ("linear elu+1 noncausal bf16", lambda: corr_linear(bf16, False, "elu+1", True, (2, S(2048), 4, 128))),
        ("linear elu+1 causal fp32", lambda: corr_linear(f32, True, "elu+1", True, small)),
        ("linear identity causal fp32", lambda: corr_linear(f32, True, "identity", True, small)),
        ("decode bf16", lambda: corr_decode(bf16)),
        ("decode fp32", lambda: corr_decode(f32)),
        ("linformer", lambda: corr_linformer(bf16)),
    ]


# --------------------------------------------------------------------------------------------- fla

def fla_fn():
    """fla's chunk_linear_attn or None (printed why)."""
    if SMOKE:
        return None
    try:
        from fla.ops.linear_attn import chunk_linear_attn
        return chunk_linear_attn
    except Exception as e:  # noqa: BLE001
        log(f"fla not importable: {type(e).__name__}: {e}")
        return None


def fla_autotuners():
    """{name: triton Autotuner} of every autotuned kernel fla has imported so far (unwrapping @heuristics)."""
    from triton.runtime.autotuner import Autotuner
    found, seen = {}, set()
    for modname, mod in list(sys.modules.items()):
        if not modname.startswith("fla.") or mod is None:
            continue
        for attr, obj in list(vars(mod).items()):
            depth = 0
            while obj is not None and not isinstance(obj, Autotuner) and depth < 4:
                obj = getattr(obj, "fn", None)
                depth += 1
            if isinstance(obj, Autotuner) and id(obj) not in seen:
                seen.add(id(obj))
                found[f"{modname[4:]}.{attr}"] = obj
    return found


def fla_call(fn, normalize):
    # fla scales q by `scale`; with normalize=True it cancels, without it scale=1 matches ours
    return lambda q, k, v: fn(q, k, v, scale=1.0, normalize=normalize)[0]


def run_fwd_bwd_once(fn, inputs):
    import torch
    out = fn(*inputs)
    torch.autograd.grad(out, inputs, torch.randn_like(out))
    sync()


# --------------------------------------------------------------------------------------------- precompile

def worker_main(index, count):
    """Precompile worker `index` of `count`: fla fwd+bwd (normalised and not) with slice `index` of every fla
    autotuner's configs, each config compiled and run once (no benchmark), then its share of the correctness items
    (their numbers are thrown away; they cover the timed kernels' specialisations). The point is that Triton
    writes every compiled kernel to its on-disk cache, where the main process finds it."""
    fla = fla_fn()
    if fla is not None:
        qkv = make_inputs(2048, DTYPE)  # T is not specialised in fla's kernels; B, H, K, V are (autotune keys)
        t = time.time()
        tuners = fla_autotuners()  # importing chunk_linear_attn imported its kernels: slice before anything tunes
        for at in tuners.values():
            configs = list(at.configs)
            at.configs = configs[index::count] or [configs[index % len(configs)]]
            at.__dict__["do_bench"] = lambda call, quantiles=None, **kw: (call(), [1.0, 1.0, 1.0])[1]
        for normalize in (True, False):
            try:
                run_fwd_bwd_once(fla_call(fla, normalize), qkv)
            except Exception as e:  # noqa: BLE001
                log(f"worker {index}: fla normalize={normalize} failed: {type(e).__name__}: {str(e)[:300]}")
        late = set(fla_autotuners()) - set(tuners)
        log(f"worker {index}: fla configs slice {index}::{count} compiled in {time.time() - t:.1f} s"
            + (f" (not sliced, imported late: {sorted(late)})" if late else ""))
        del qkv
    items = correctness_items()
    for name, item in items[index::count]:
        t = time.time()
        try:
            item()
            log(f"worker {index}: {name} compiled in {time.time() - t:.1f} s")
        except Exception as e:  # noqa: BLE001
            log(f"worker {index}: {name} failed: {type(e).__name__}: {str(e)[:300]}")


def start_workers(count, args):
    logs = tempfile.mkdtemp(prefix="lowrank_precompile_")  # not under --out: at most 3 files go there
    procs = []
    for i in range(count):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"{i}/{count}", "--out", logs]
        if SMOKE:
            cmd.append("--smoke")
        f = open(os.path.join(logs, f"worker{i}.log"), "w")
        procs.append((subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ)), f,
                      os.path.join(logs, f"worker{i}.log")))
    return procs


def wait_workers(procs, limit_s):
    """Wait for the precompile workers (at most limit_s); kill the rest; print what they said that matters."""
    t_end = time.time() + limit_s
    last = time.time()
    while any(p.poll() is None for p, _, _ in procs) and time.time() < t_end:
        time.sleep(0.5)
        if time.time() - last > 10:
            log(f"precompile: {sum(p.poll() is not None for p, _, _ in procs)}/{len(procs)} workers done")
            last = time.time()
    for i, (p, f, path) in enumerate(procs):
        if p.poll() is None:
            log(f"precompile: worker {i} still running at the limit, stopped")
            p.kill()
            p.wait()
        f.close()
        with open(path) as fh:
            lines = fh.read().splitlines()
        said = [ln for ln in lines if f"worker {i}:" in ln]
        errors = [ln for ln in lines if "Error" in ln or "error:" in ln or "Assertion" in ln]
        for ln in said + errors[:3]:
            print("   ", ln[:300])
        if p.returncode not in (0, None) and not said:
            print("    worker", i, "exit", p.returncode, "; last lines:", " | ".join(lines[-3:])[:400])
    if procs:
        shutil.rmtree(os.path.dirname(procs[0][2]), ignore_errors=True)
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------- timing

def bench(fn, rep=100):
    if SMOKE:  # no GPU: wall clock of one call, only to exercise the code
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    from triton.testing import do_bench
    return do_bench(fn, warmup=25, rep=rep, return_mode="median")


def fwd_bwd(fn, inputs, rep=100):
    """(fwd ms, bwd ms): the backward is torch.autograd.grad on a retained graph (no accumulation into .grad)."""
    import torch
    fwd = bench(lambda: fn(*inputs), rep)
    out = fn(*inputs)
    do = torch.randn_like(out)
    bwd = bench(lambda: torch.autograd.grad(out, inputs, do, retain_graph=True), rep)
    return fwd, bwd


def make_inputs(N, dtype, positive=True):
    B, H, D = bar_shape()
    q, k = (_rand((B, N, H, D), dtype, positive) for _ in range(2))
    v = _rand((B, N, H, D), dtype)
    return [x.requires_grad_() for x in (q, k, v)]


def time_item(provider, N, fn, inputs, est_s):
    """Time one (provider, N): progress line first, skipped when the time left is below est_s."""
    if not have_time(est_s, f"{provider} N={N}"):
        return None
    log(f"timing {provider} N={N} ...")
    try:
        f, b = fwd_bwd(fn, inputs)
    except Exception as e:  # noqa: BLE001
        log(f"!! {provider} N={N}: {type(e).__name__}: {str(e)[:300]}")
        return None
    ROWS.append({"section": "timing", "provider": provider, "N": N, "fwd_ms": f, "bwd_ms": b, "total_ms": f + b})
    log(f"N={N:6d} {provider:22s} fwd {f:8.3f} ms  bwd {b:8.3f} ms  total {f + b:8.3f} ms")
    return f, b


@guarded("fla autotune")
def fla_tune(fn, tune_ms):
    """fla autotunes on its first call per kernel (the key has no sequence length): do it at N=ONE_N, fwd+bwd,
    normalised and not, with every config; compiles come from the workers' cache. Benchmark time per config:
    tune_ms (Triton's default is 100)."""
    import triton.testing
    qkv = make_inputs(S(ONE_N), DTYPE)
    for at in fla_autotuners().values():
        at.__dict__["do_bench"] = functools.partial(triton.testing.do_bench, warmup=max(1, tune_ms // 4), rep=tune_ms)
    t = time.time()
    for normalize in (True, False):
        log(f"fla autotune normalize={normalize} ...")
        run_fwd_bwd_once(fla_call(fn, normalize), qkv)
    log(f"fla autotune (fwd+bwd, normalised and not, N={S(ONE_N)}): {time.time() - t:.1f} s")
    report_fla_configs()


def report_fla_configs():
    for name, at in sorted(fla_autotuners().items()):
        for key, best in getattr(at, "cache", {}).items():
            ROWS.append({"section": "fla_config", "case": name, "note": f"{best}", "out": len(at.configs)})
            log(f"fla {name}: {best} (of {len(at.configs)} configs; key {key})")


@guarded("fla cross-check")
def fla_check(fn):
    import torch
    from hwattn.ops.linear_attn import linear_attention
    from hwattn.ops.linear_attn.naive import linear_attention_naive
    B, H, D = bar_shape()
    for normalize in (True, False):
        q, k = (_rand((B, S(2048), H, D), DTYPE, True) for _ in range(2))
        v = _rand((B, S(2048), H, D), DTYPE)
        with torch.no_grad():
            ref = linear_attention_naive(q.double(), k.double(), v.double(), causal=True, feature_map=None,
                                         normalize=normalize)[0]
            ours = linear_attention(q, k, v, causal=True, feature_map=None, normalize=normalize)
            theirs = fla_call(fn, normalize)(q, k, v)
        e_ours, e_fla, e_between = rel(ours, ref), rel(theirs, ref), rel(ours, theirs)
        ROWS.append({"section": "correctness", "case": f"ours vs fla vs float64 identity causal norm={normalize} "
                     f"{B}x{S(2048)}x{H}x{D}", "dtype": "bfloat16", "out": e_ours, "bound": 1e-2,
                     "pass": e_ours <= 1e-2, "note": f"fla err {e_fla:.1e}, ours-fla {e_between:.1e}"})
        log(f"normalize={normalize}: ours err {e_ours:.1e}, fla err {e_fla:.1e}, ours vs fla {e_between:.1e} "
            "(vs float64 quadratic form, bf16 inputs)")


def bar_timings(fla):
    """The bar: ours vs fla, normalised and not, at every N; biggest N last so a short budget still gives a fit."""
    import torch
    from hwattn.ops.linear_attn import linear_attention
    providers = [("ours norm", lambda q, k, v: linear_attention(q, k, v, causal=True, feature_map=None)),
                 ("fla norm", None if fla is None else fla_call(fla, True)),
                 ("ours nonorm", lambda q, k, v: linear_attention(q, k, v, causal=True, feature_map=None,
                                                                  normalize=False)),
                 ("fla nonorm", None if fla is None else fla_call(fla, False))]
    for N in BAR_NS:
        n = S(N)
        est = 2.0 + 3.0 * N / 65536  # per item: two do_bench runs (fwd, bwd) plus the inputs
        if not have_time(est * 4, f"bar timings at N={N} and above"):
            return
        log(f"bar: N={N} inputs ...")
        qkv = make_inputs(n, DTYPE)
        for name, fn in providers:
            if fn is not None:
                time_item(name, n, fn, qkv, est)
        del qkv
        if DEVICE == "cuda":
            torch.cuda.empty_cache()


def performer_timings():
    """Performer (m=256) fwd+bwd vs plain linear attention (elu+1; identity features too) at N=ONE_N, and SDPA
    flash (exact causal attention) for scale."""
    import torch.nn.functional as F
    from hwattn.ops.linear_attn import linear_attention
    from hwattn.ops.performer import draw_projection
    B, H, D = bar_shape()
    n = S(ONE_N)
    w = draw_projection(256, D, seed=0, device=DEVICE)
    if not have_time(8, "performer timings"):
        return
    qkv = make_inputs(n, DTYPE, positive=False)
    for name, fn in (("ours elu+1", lambda q, k, v: linear_attention(q, k, v, causal=True)),
                     ("performer m=256", performer_fn(w)),
                     ("performer m=256 C=128", performer_fn(w, chunk_size=128)),
                     ("performer m=256 unfused", performer_fn(w, fused=False))):
        time_item(name, n, fn, qkv, 3)
    if have_time(6, "sdpa flash"):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        qh, kh, vh = (x.detach().transpose(1, 2).contiguous().requires_grad_() for x in qkv)
        backend = SDPBackend.MATH if SMOKE else SDPBackend.FLASH_ATTENTION

        def sdpa(a, b, c):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(a, b, c, is_causal=True)
        time_item("sdpa flash causal", n, sdpa, (qh, kh, vh), 5)
        del qh, kh, vh
    del qkv


# Launch-config candidates of the fused Performer kernels (performer.kernels.CONFIGS: (BK, BV, warps, stages)),
# tried by --performer-sweep: forward ones judged on the forward time, backward ones on the backward time.
# The first candidate of each is the default. "favor_key_max" is performer.kernels.KEY_MAX_CONFIG (rows, feature
# block, warps, stages); "favor_state_bwd" / "favor_dv" are the linear core's kernels at Dk = m.
# (H200, 2026-12-01: state_fwd 2 vs 3 stages and BK = 32 or BV = 64 were slower or equal; output_fwd 3 stages won.)
PERFORMER_SWEEP = {
    "favor_key_max": [(64, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (64, 128, 4, 2), (128, 64, 4, 3)],
    "favor_output_fwd": [(32, 128, 4, 3), (64, 128, 4, 3), (32, 128, 4, 4), (16, 128, 4, 4)],
    "favor_dqk": [(16, 0, 4, 3), (32, 0, 4, 2), (32, 0, 4, 3), (16, 0, 4, 4)],
    "favor_state_bwd": [(64, 64, 4, 4), (64, 128, 4, 4), (64, 128, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2),
                        (32, 128, 4, 4)],
    "favor_dv": [(64, 128, 4, 2), (64, 128, 4, 3), (128, 128, 8, 2), (64, 64, 4, 2)],
}
PERFORMER_FWD_KERNELS = ("favor_key_max", "favor_state_fwd", "favor_output_fwd")
_PERFORMER_GLOBALS = {"favor_key_max": "KEY_MAX_CONFIG"}


def _performer_config(pk, name, cfg=None):
    """Get (cfg None) or set one Performer launch config of PERFORMER_SWEEP's names."""
    if name in _PERFORMER_GLOBALS:
        if cfg is not None:
            setattr(pk, _PERFORMER_GLOBALS[name], cfg)
        return getattr(pk, _PERFORMER_GLOBALS[name])
    if cfg is not None:
        pk.CONFIGS[name] = cfg
    return pk.CONFIGS[name]


@guarded("performer sweep")
def performer_sweep():
    """--performer-sweep: per fused Performer kernel in turn, its candidate configs at N=ONE_N (the kernels before
    it at their best so far, those after at their defaults); then the fastest of each together, timed beside linear elu+1 in this run: the issue 5 bar with
    the swept configs (the defaults in performer/kernels.py are what a user gets until they are changed)."""
    from hwattn.ops.linear_attn import linear_attention
    from hwattn.ops.performer import draw_projection, kernels as pk
    B, H, D = bar_shape()
    n = S(ONE_N)
    w = draw_projection(256, D, seed=0, device=DEVICE)
    qkv = make_inputs(n, DTYPE, positive=False)
    fn = performer_fn(w)
    defaults = {name: _performer_config(pk, name) for name in PERFORMER_SWEEP}
    best = {}
    for name, cands in PERFORMER_SWEEP.items():
        for cfg in cands:
            if not have_time(6, f"performer sweep {name} {cfg}"):
                break
            _performer_config(pk, name, cfg)
            try:
                f, b = fwd_bwd(fn, qkv, rep=50)
            except Exception as e:  # noqa: BLE001  e.g. out of shared memory
                log(f"performer sweep {name} {cfg}: {type(e).__name__}: {str(e)[:160]}")
                continue
            t = f if name in PERFORMER_FWD_KERNELS else b
            ROWS.append({"section": "performer_sweep", "case": name, "note": str(cfg), "N": n, "fwd_ms": f,
                         "bwd_ms": b, "total_ms": f + b})
            log(f"performer sweep {name:17s} {str(cfg):16s} fwd {f:7.3f} ms  bwd {b:7.3f} ms")
            if name not in best or t < best[name][0]:
                best[name] = (t, cfg)
        # coordinate descent: the next kernel's candidates run with the best of this one
        _performer_config(pk, name, best[name][1] if name in best else defaults[name])
    log(f"performer sweep: best {dict((k, v[1]) for k, v in best.items())}")
    if have_time(6, "performer sweep: bar with the best configs"):
        lin = time_item("ours elu+1 (sweep run)", n, lambda q, k, v: linear_attention(q, k, v, causal=True), qkv, 3)
        per = time_item("performer m=256 (swept configs)", n, fn, qkv, 3)
        if lin and per:
            ratio = (per[0] + per[1]) / (lin[0] + lin[1])
            log(f"issue 5 bar (swept configs {dict((k, v[1]) for k, v in best.items())}): performer m=256 "
                f"fwd+bwd / linear elu+1 fwd+bwd at N={n}: {ratio:.2f} ({'met' if ratio <= 1.5 else 'not met'}: <= 1.5)")
    for name, cfg in defaults.items():
        _performer_config(pk, name, cfg)
    del qkv


def profile_performer(iters=3):
    """Per-kernel CUDA time of fused Performer (and linear elu+1) fwd+bwd at N=ONE_N (torch.profiler): which pass
    the time goes to. Rows in the CSV (section "profile"), the table printed."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from hwattn.ops.linear_attn import linear_attention
    from hwattn.ops.performer import draw_projection
    if SMOKE:
        return
    n = S(ONE_N)
    w = draw_projection(256, bar_shape()[2], seed=0, device=DEVICE)
    qkv = make_inputs(n, DTYPE, positive=False)
    for name, fn in (("performer m=256", performer_fn(w)),
                     ("ours elu+1", lambda q, k, v: linear_attention(q, k, v, causal=True))):
        run_fwd_bwd_once(fn, qkv)  # warm
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(iters):
                run_fwd_bwd_once(fn, qkv)
        rows = []
        for e in prof.key_averages():
            # self time: a CPU op's device time is its kernels', which are events of their own
            t = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
            if t > 0 and e.count >= iters:
                rows.append((t / iters / 1e3, e.count // iters, e.key))
        rows.sort(reverse=True)
        total = sum(r[0] for r in rows)
        log(f"profile {name} N={n}, fwd+bwd, per iteration: {total:.3f} ms of CUDA time")
        for ms, calls, key in rows[:14]:
            ROWS.append({"section": "profile", "provider": name, "case": key[:120], "N": n, "total_ms": ms,
                         "out": calls})
            print(f"    {ms:7.3f} ms  {100 * ms / total:5.1f}%  x{calls}  {key[:100]}")
    del qkv


# (BK, BV, num_warps, num_stages) per kernel that section_sweep tries; first = the default
SWEEP_CANDIDATES = {
    "output_fwd": [(64, 128, 8, 2), (64, 64, 4, 2), (128, 128, 8, 2), (64, 128, 4, 3)],
    "state_fwd": [(64, 64, 4, 3), (64, 64, 8, 3), (64, 128, 8, 3), (64, 64, 4, 4)],
    "dqk_bwd": [(64, 64, 8, 2), (64, 64, 4, 2), (128, 32, 8, 2), (128, 64, 8, 2)],
    "dv_bwd": [(64, 64, 4, 2), (64, 128, 8, 2), (32, 128, 4, 2), (64, 128, 4, 2)],
    "state_bwd": [(64, 64, 4, 3), (64, 64, 8, 3), (64, 128, 8, 3), (64, 64, 4, 4)],
}


@guarded("sweep")
def section_sweep(budget_end):
    """--sweep: try a few launch configs per kernel at N=ONE_N; keep the fastest of each (others at defaults).
    Every candidate is a fresh compile (~1-2 s each on the host CPU), so this is off by default."""
    import torch
    from hwattn.ops.linear_attn import kernels, linear_attention
    q, k, v = make_inputs(S(ONE_N), DTYPE)
    fn = lambda a, b, c: linear_attention(a, b, c, causal=True, feature_map=None)  # noqa: E731
    # forward kernels are judged on the normalised plus the unnormalised forward (both are compared with fla)
    plain = lambda a, b, c: linear_attention(a, b, c, causal=True, feature_map=None, normalize=False)  # noqa: E731
    for name, cfgs in SWEEP_CANDIDATES.items():
        best = None
        default = kernels.CONFIGS[name]
        for cfg in cfgs:
            if time.time() > budget_end:
                log(f"sweep: out of time at {name}")
                kernels.CONFIGS[name] = default if best is None else best[1]
                return
            kernels.CONFIGS[name] = cfg
            log(f"sweep {name} {cfg} ...")
            try:
                f, b = fwd_bwd(fn, (q, k, v), rep=25)
            except Exception as e:  # noqa: BLE001  e.g. out of shared memory for a big tile
                log(f"sweep {name} {cfg}: {type(e).__name__}: {str(e)[:120]}")
                continue
            t = b
            if name.endswith("fwd"):
                f_plain = bench(lambda: plain(q, k, v), 25)
                t = f + f_plain
            ROWS.append({"section": "sweep", "case": name, "note": str(cfg), "fwd_ms": f, "bwd_ms": b})
            log(f"sweep {name:10s} {str(cfg):18s} fwd {f:7.3f} ms  bwd {b:7.3f} ms"
                + (f"  fwd unnormalised {f_plain:7.3f} ms" if name.endswith("fwd") else ""))
            if best is None or t < best[0]:
                best = (t, cfg)
        kernels.CONFIGS[name] = default if best is None else best[1]
        log(f"sweep {name}: using {kernels.CONFIGS[name]}")
    del q, k, v
    torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------- report

def fit_exponent(Ns, ts):
    import numpy as np
    if len(Ns) < 2:
        return float("nan")
    return float(np.polyfit(np.log(Ns), np.log(ts), 1)[0])


def write_csv(path, rows):
    if not rows:
        return
    keys = []
    for r in rows:
        for key in r:
            if key not in keys:
                keys.append(key)
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=keys)
        wr.writeheader()
        wr.writerows(rows)


@guarded("report")
def report(out):
    timing_rows = [r for r in ROWS if r["section"] == "timing"]
    by = {}
    for r in timing_rows:
        by.setdefault(r["provider"], {})[r["N"]] = r
    Ns = sorted({r["N"] for r in timing_rows})
    B, H, D = bar_shape()
    print(f"\n=== causal, B={B}, H={H}, D={D}, {str(DTYPE).replace('torch.', '')}; ms (median, do_bench); "
          "fwd / bwd ===")
    print(f"{'provider':22s} " + " ".join(f"{'N=' + str(n):>19s}" for n in Ns) + "   exponent fwd/bwd/total")
    for name, d in by.items():
        cells = [f"{d[n]['fwd_ms']:8.2f} /{d[n]['bwd_ms']:8.2f}" if n in d else f"{'-':>19s}" for n in Ns]
        ns = [n for n in Ns if n in d]
        exps = [fit_exponent(ns, [d[n][key] for n in ns]) for key in ("fwd_ms", "bwd_ms", "total_ms")]
        if len(ns) >= 2:
            ROWS.append({"section": "exponent", "provider": name, "fwd_ms": exps[0], "bwd_ms": exps[1],
                         "total_ms": exps[2], "note": f"log-log fit over N={ns}"})
        print(f"{name:22s} " + " ".join(f"{c:>19s}" for c in cells) + "   "
              + ("/".join(f"{e:.3f}" for e in exps) if len(ns) >= 2 else "-"))
    print("\n=== ratios (< 1: the first is faster) ===")
    for a_name, b_name in (("ours norm", "fla norm"), ("ours nonorm", "fla nonorm"),
                           ("performer m=256", "ours elu+1"), ("performer m=256 C=128", "ours elu+1"),
                           ("performer m=256 unfused", "ours elu+1"), ("performer m=256", "performer m=256 unfused"),
                           ("performer m=256", "ours norm"), ("ours elu+1", "ours norm")):
        if a_name in by and b_name in by:
            cells = []
            for n in Ns:
                a, b = by[a_name].get(n), by[b_name].get(n)
                if a and b:
                    cells.append(f"N={n}: fwd {a['fwd_ms'] / b['fwd_ms']:.2f} bwd {a['bwd_ms'] / b['bwd_ms']:.2f} "
                                 f"total {a['total_ms'] / b['total_ms']:.2f}")
            if cells:
                print(f"{a_name} / {b_name}: " + "; ".join(cells))
    for name in ("performer m=256", "performer m=256 C=128", "performer m=256 unfused"):
        if name in by and "ours elu+1" in by:
            for n in sorted(set(by[name]) & set(by["ours elu+1"])):
                ratio = by[name][n]["total_ms"] / by["ours elu+1"][n]["total_ms"]
                print(f"issue 5 bar: {name} fwd+bwd / linear elu+1 fwd+bwd at N={n}: {ratio:.2f} "
                      f"({'met' if ratio <= 1.5 else 'not met'}: <= 1.5)")
    corr = [r for r in ROWS if r["section"] == "correctness"]
    fails = [r["case"] for r in corr if not r["pass"]]
    print(f"\ncorrectness: {len(corr) - len(fails)}/{len(corr)} pass" + (f"; FAIL: {fails}" if fails else ""))
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
            ax.set_title(f"causal {key[:3]}, B={B} H={H} D={D} {str(DTYPE).replace('torch.', '')}")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "lowrank.png"), dpi=110)
        print(f"plot: {os.path.join(out, 'lowrank.png')}")
    except Exception as e:  # noqa: BLE001
        print(f"plot failed: {e}")

# --------------------------------------------------------------------------------------------- compile check
# Offline: compile every kernel specialisation the launchers can produce for sm_90 with the installed Triton,
# without a GPU (triton.compile on a GPUTarget). Triton versions differ in their MLIR passes (triton 3.6's
# TritonGPUOptimizeThreadLocality asserted on a reduction whose loop result was unused); this catches that on
# a CPU machine. With torch installed the launches are enumerated by running the real launchers on "meta"
# tensors with the kernels swapped for recorders; without torch (e.g. a venv holding only another triton
# version) pass --launches FILE written by a run that had torch.

_CC_DTYPES = ("bf16", "fp16", "fp32")


def _cc_kernel_modules():
    """(linear_attn kernels, performer kernels), importable without torch (a stub stands in for its dtypes)."""
    import importlib.util
    if importlib.util.find_spec("torch") is not None:
        from hwattn.ops.linear_attn import kernels as lk
        from hwattn.ops.performer import kernels as pk
        return lk, pk
    else:
        import types
        stub = types.ModuleType("torch")
        for name in ("bfloat16", "float16", "float32", "float64"):
            setattr(stub, name, name)
        stub.Tensor = type("Tensor", (), {})
        sys.modules.setdefault("torch", stub)
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "hwattn", "ops")
        # performer/kernels.py imports helpers from ..linear_attn.kernels: empty packages stand in for hwattn's
        # (whose __init__ imports torch), so the relative import finds the module loaded here
        for pkg in ("hwattn", "hwattn.ops", "hwattn.ops.linear_attn", "hwattn.ops.performer"):
            if pkg not in sys.modules:
                mod = types.ModuleType(pkg)
                mod.__path__ = [os.path.join(root, "..", *pkg.split(".")[1:])]
                sys.modules[pkg] = mod
        mods = []
        for name in ("linear_attn", "performer"):
            full = f"hwattn.ops.{name}.kernels"
            spec = importlib.util.spec_from_file_location(full, os.path.join(root, name, "kernels.py"))
            mod = importlib.util.module_from_spec(spec)
            sys.modules[full] = mod
            spec.loader.exec_module(mod)
            mods.append(mod)
        return tuple(mods)


_CC_DIMS = ((64, 64), (64, 128), (128, 128), (256, 64), (256, 128))
_CC_FUSED_DIMS = ((64, 64, 64), (64, 64, 256), (128, 128, 256), (128, 64, 128))  # Performer fused: (D, Dv, m)


def enumerate_launches(chunks=(16, 32, 64, 128), lengths=(1000, 4096), dims=_CC_DIMS,
                       fused_dims=_CC_FUSED_DIMS):
    """Every distinct (kernel, signature, constexprs, warps, stages) the launchers produce over dtypes bf16/fp16/fp32,
    (Dk, Dv) in {(64, 64), (64, 128), (128, 128), (256, 64), (256, 128)} (head dims 64/128, Performer m = 64/256),
    the given chunk sizes and sequence lengths (1000: lengths and chunk counts not multiples of 16; 4096: multiples,
    which Triton specialises on), every flag combination (causal, normalize, feature map, initial state, final
    state, saved for backward, final-state gradient, initial-state gradient), the recurrent kernel, the Performer
    feature kernels (D 64/128, m 64/256, every kind and mode), Performer's fused attention kernels over `fused_dims`
    (D, Dv, m) (causal or not, softmax/relu, saved for backward or not), plus the configs section_sweep tries.
    Returns a list of JSON-able dicts."""
    import itertools
    import torch
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend
    from hwattn.ops.linear_attn import kernels as lk
    from hwattn.ops.performer import kernels as pk
    tnames = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
    found = {}

    def recorder(module, name, fn):
        def launch(grid):
            def call(*args, **kw):
                spec = {"module": module, "kernel": name, "signature": {}, "constexprs": {}, "aligned": [],
                        "num_warps": kw.pop("num_warps", 4), "num_stages": kw.pop("num_stages", 3)}
                params = dict(zip(fn.arg_names, args))
                params.update(kw)
                for p in fn.params:
                    v = params[p.name]
                    if p.is_constexpr:
                        spec["signature"][p.name] = "constexpr"
                        spec["constexprs"][p.name] = v
                    elif isinstance(v, torch.Tensor):
                        spec["signature"][p.name] = "*" + tnames[v.dtype]
                        spec["aligned"].append(p.name)  # allocations are 16-byte aligned
                    else:
                        ty, key = native_specialize_impl(BaseBackend, v, False, True, True)
                        spec["signature"][p.name] = ty
                        if ty == "constexpr":
                            spec["constexprs"][p.name] = key if key is not None else v
                        elif key == "D":
                            spec["aligned"].append(p.name)
                import json
                found.setdefault(json.dumps(spec, sort_keys=True), spec)
            return call
        return type("Recorder", (), {"__getitem__": lambda self, grid: launch(grid)})()

    kernels = {"linear_attn": (lk, [n for n in dir(lk) if n.endswith("_kernel")]),
               "performer": (pk, [n for n in dir(pk) if n.endswith("_kernel")])}
    saved = {}
    for module, (mod, names) in kernels.items():
        for name in names:
            saved[(mod, name)] = fn = getattr(mod, name)
            # a kernel the performer module imports from linear_attn (the dd pass) is recorded as linear_attn's
            home = "linear_attn" if getattr(fn, "fn", fn).__module__ == lk.__name__ else module
            setattr(mod, name, recorder(home, name, fn))
    configs = dict(lk.CONFIGS)
    meta = torch.device("meta")
    try:
        dtypes = (torch.bfloat16, torch.float16, torch.float32)
        for dtype, (K, V), BT, N in itertools.product(dtypes, dims, chunks, lengths):
            B, H = 1, 2
            q = torch.empty(B, N, H, K, device=meta, dtype=dtype)
            k = torch.empty(B, N, H, K, device=meta, dtype=dtype)
            v = torch.empty(B, N, H, V, device=meta, dtype=dtype)
            for causal, normalize, feature, use_h0, final, save in itertools.product(
                    (True, False), (True, False), (0, 1), (False, True), (False, True), (False, True)):
                h0 = torch.empty(B * H, K, V, device=meta) if use_h0 else None
                z0 = torch.empty(B * H, K, device=meta) if (use_h0 and normalize) else None
                o, st = lk.chunk_fwd(q, k, v, causal, normalize, feature, h0, z0, final, 1e-6, BT, save)
                if not save:
                    continue
                for use_dht in ((False, True) if final else (False,)):
                    dht = torch.empty(B * H, K, V, device=meta) if use_dht else None
                    dzt = torch.empty(B * H, K, device=meta) if (use_dht and normalize) else None
                    lk.chunk_bwd(torch.empty_like(o), q, k, v, o, st, causal, normalize, feature, dht, dzt, use_h0, BT)
            for normalize, feature, use_h0, n in itertools.product((True, False), (0, 1), (False, True), (1, 7)):
                h0 = torch.empty(B * H, K, V, device=meta) if use_h0 else None
                z0 = torch.empty(B * H, K, device=meta) if (use_h0 and normalize) else None
                lk.recurrent_fwd(q[:, :n], k[:, :n], v[:, :n], normalize, feature, h0, z0, 1e-6)
        # Performer feature kernels: D in {64, 128}, m in {64, 256}
        for dtype, D, M, N in itertools.product(dtypes, (64, 128), (64, 256), lengths):
            x = torch.empty(1, N, 2, D, device=meta, dtype=dtype)
            w = torch.empty(M, D, device=meta, dtype=torch.float32)
            w_hi, w_lo = pk.split_projection(w, dtype)
            fdt = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
            off = torch.empty(2, device=meta, dtype=torch.float32)
            for kind, mode in ((pk.KIND_SOFTMAX, pk.MODE_QUERY), (pk.KIND_SOFTMAX, pk.MODE_KEY),
                               (pk.KIND_SOFTMAX, pk.MODE_BLOCK_MAX), (pk.KIND_RELU, pk.MODE_QUERY)):
                f = pk.favor_fwd(x, w_hi, w_lo, kind, mode, fdt, off if mode == pk.MODE_KEY else None, 1e-3)
                if mode != pk.MODE_BLOCK_MAX:
                    pk.favor_bwd(x, w, f, torch.empty_like(f), kind)
        # Performer with the features fused into the attention kernels (performer_attention): (D, Dv, m)
        for dtype, (D, V, M), BT, N in itertools.product(dtypes, fused_dims, chunks, lengths):
            q, k = (torch.empty(1, N, 2, D, device=meta, dtype=dtype) for _ in range(2))
            v = torch.empty(1, N, 2, V, device=meta, dtype=dtype)
            *proj, w_chain = pk.fused_projection(torch.empty(M, D, device=meta), dtype)
            for causal, kind, save in itertools.product((True, False), (pk.KIND_SOFTMAX, pk.KIND_RELU),
                                                        (True, False)):
                o, st = pk.fused_fwd(q, k, v, proj, kind, causal, 1e-12, 1e-3, BT, save)
                if save:
                    pk.fused_bwd(torch.empty_like(o), q, k, v, o, w_chain, st, kind, causal, 1e-3, BT)
        # the configs section_sweep can pick (bf16, D = 128, chunk 64, causal, identity and elu+1 features)
        for dtype in dtypes:
            q, k, v = (torch.empty(1, 4096, 2, 128, device=meta, dtype=dtype) for _ in range(3))
            for name, cfgs in SWEEP_CANDIDATES.items():
                for cfg in cfgs:
                    lk.CONFIGS.update(configs)
                    lk.CONFIGS[name] = cfg
                    for normalize, feature in itertools.product((True, False), (0, 1)):
                        o, st = lk.chunk_fwd(q, k, v, True, normalize, feature, None, None, False, 1e-6, 64, True)
                        lk.chunk_bwd(torch.empty_like(o), q, k, v, o, st, True, normalize, feature, None, None,
                                     False, 64)
    finally:
        lk.CONFIGS.clear()
        lk.CONFIGS.update(configs)
        for (mod, name), fn in saved.items():
            setattr(mod, name, fn)
    return list(found.values())


_CC_MODS = None
SM90_SHARED_LIMIT = 232448  # bytes of shared memory one H100/H200 block may use


def _cc_compile_one(spec):
    """-> (spec, None) or (spec, error text). Triton's C++ passes report on fd 2 (an assertion, an MLIR
    reproducer): that goes to a temporary file and only the lines that say what failed are kept."""
    global _CC_MODS
    import tempfile
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    if _CC_MODS is None:
        lk, pk = _cc_kernel_modules()
        _CC_MODS = {"linear_attn": lk, "performer": pk}
    fn = getattr(_CC_MODS[spec["module"]], spec["kernel"])
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in spec["aligned"]}
    src = ASTSource(fn=fn, signature=spec["signature"], constexprs=spec["constexprs"], attrs=attrs)
    opts = {"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]}
    with tempfile.TemporaryFile(mode="w+") as err:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)
            failure = None
            if compiled.metadata.shared > SM90_SHARED_LIMIT:  # would raise OutOfResources at launch
                failure = f"OutOfResources: shared memory {compiled.metadata.shared} B > {SM90_SHARED_LIMIT} B"
        except Exception as e:  # noqa: BLE001
            failure = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''}"
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        if failure:
            err.seek(0)
            why = [ln.strip() for ln in err.read().splitlines()
                   if "Assertion" in ln or "error:" in ln or "Pipeline failed" in ln]
            failure = " | ".join([failure] + why[:3])[:900]
    return spec, failure


def _cc_label(spec):
    c = {k: v for k, v in spec["constexprs"].items() if k not in ("K", "V")}
    dts = sorted({t[1:] for t in spec["signature"].values() if t.startswith("*")})
    return (f"{spec['kernel']} K={spec['constexprs'].get('K', spec['constexprs'].get('D'))} "
            f"V={spec['constexprs'].get('V', spec['constexprs'].get('M'))} ptrs={','.join(dts)} "
            f"w{spec['num_warps']} s{spec['num_stages']} {c}")


def _cc_input_dtype(spec):
    """The dtype of a launch's inputs: its first argument is an input tensor in every kernel (q, k, x or o)."""
    return next(iter(spec["signature"].values()))[1:]


def compile_check(args):
    import json
    import triton
    os.environ.pop("TRITON_INTERPRET", None)
    if args.launches and os.path.exists(args.launches) and not args.write_launches:
        with open(args.launches) as f:
            specs = json.load(f)
        log(f"{len(specs)} launch specialisations read from {args.launches}")
    else:
        specs = enumerate_launches(tuple(int(c) for c in args.cc_chunks.split(",")),
                                   tuple(int(n) for n in args.cc_lengths.split(",")),
                                   tuple(tuple(int(x) for x in d.split("x")) for d in args.cc_dims.split(",")),
                                   tuple(tuple(int(x) for x in d.split("x")) for d in args.cc_fused_dims.split(",")))
        log(f"{len(specs)} distinct launch specialisations enumerated")
    if args.cc_kernels or args.cc_dtypes:
        import re
        pat = re.compile(args.cc_kernels or ".")
        want = set(args.cc_dtypes.split(",")) if args.cc_dtypes else None
        specs = [s for s in specs if pat.search(s["kernel"]) and (want is None or _cc_input_dtype(s) in want)]
        log(f"{len(specs)} kept by --cc-kernels {args.cc_kernels!r} --cc-dtypes {args.cc_dtypes!r}")
    if args.write_launches or (args.launches and not os.path.exists(args.launches)):
        if args.launches:
            with open(args.launches, "w") as f:
                json.dump(specs, f)
            log(f"written to {args.launches}")
        if args.write_launches:
            return 0
    log(f"compiling for sm_90 with triton {triton.__version__} on {args.jobs} processes")
    failures = []
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for i, (spec, err) in enumerate(pool.map(_cc_compile_one, specs, chunksize=4)):
            if err:
                failures.append((spec, err))
                log(f"FAIL {_cc_label(spec)}: {err}")
            if (i + 1) % 100 == 0:
                log(f"{i + 1}/{len(specs)} compiled, {len(failures)} failures")
    by_kernel = {}
    for spec in specs:
        by_kernel[spec["kernel"]] = by_kernel.get(spec["kernel"], 0) + 1
    log(f"triton {triton.__version__}: {len(specs) - len(failures)}/{len(specs)} compile "
        f"({', '.join(f'{k} {n}' for k, n in sorted(by_kernel.items()))})")
    return 1 if failures else 0


# --------------------------------------------------------------------------------------------- main

class _Tee:
    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self):
        for st in self.streams:
            st.flush()


def _on_alarm(signum, frame):
    raise OutOfTime()


def main():
    global DEADLINE, DEVICE, DTYPE, SMOKE, WORKER
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "results/lowrank"))
    ap.add_argument("--budget", type=float, default=150.0, help="seconds for the whole run (default 150)")
    ap.add_argument("--workers", type=int, default=0,
                    help="precompile processes (default: CPU cores - 2, at most 12; 0 workers = compile in-process)")
    ap.add_argument("--precompile-limit", type=float, default=75.0, help="seconds to wait for the workers")
    ap.add_argument("--fla-tune-ms", type=int, default=25,
                    help="benchmark time per config in fla's autotune (Triton's default: 100)")
    ap.add_argument("--sweep", action="store_true", help="sweep our launch configs at N=16k before the bar")
    ap.add_argument("--performer-sweep", action="store_true",
                    help="after the Performer timings: its fused kernels' launch configs, then the bar with the best")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU dry run (TRITON_INTERPRET=1) of this script")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    cc = ap.add_argument_group("offline compile check (no GPU)")
    cc.add_argument("--compile-check", action="store_true",
                    help="compile every kernel specialisation for sm_90 with the installed Triton and exit")
    cc.add_argument("--launches", default=None,
                    help="JSON of launch specialisations: read it (no torch needed) or, with torch, write it")
    cc.add_argument("--write-launches", action="store_true", help="only enumerate and write --launches")
    cc.add_argument("--cc-chunks", default="16,32,64,128")
    cc.add_argument("--cc-lengths", default="1000,4096")
    cc.add_argument("--cc-dims", default=",".join(f"{k}x{v}" for k, v in _CC_DIMS), help="Dk x Dv pairs")
    cc.add_argument("--cc-fused-dims", default=",".join("x".join(map(str, d)) for d in _CC_FUSED_DIMS),
                    help="Performer fused kernels: D x Dv x m triples")
    cc.add_argument("--cc-kernels", default=None,
                    help="only compile kernels whose name matches this regex (e.g. '_favor_')")
    cc.add_argument("--cc-dtypes", default=None,
                    help="only compile specialisations for these input dtypes (comma list of bf16,fp16,fp32)")
    cc.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes")
    args = ap.parse_args()

    if args.compile_check or args.write_launches:
        sys.exit(compile_check(args))
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
        DEVICE, SMOKE = "cpu", True
    import torch
    DTYPE = torch.float16 if SMOKE else torch.bfloat16  # bf16 dots are wrong in the CPU interpreter
    if args.worker:
        i, n = (int(x) for x in args.worker.split("/"))
        WORKER = (i, n)
        torch.manual_seed(i)
        worker_main(i, n)
        return

    DEADLINE = T0 + args.budget
    os.makedirs(args.out, exist_ok=True)
    logf = open(os.path.join(args.out, "lowrank.log"), "w")
    sys.stdout = _Tee(sys.__stdout__, logf)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(max(1, int(args.budget - elapsed() - 3)))  # 3 s left for the report and the files
    import triton
    log(f"torch {torch.__version__}, triton {triton.__version__}, "
        f"{torch.cuda.get_device_name() if DEVICE == 'cuda' else 'CPU (smoke run)'}; budget {args.budget:.0f} s")
    procs = []
    try:
        # 0. precompile in parallel (Triton's on-disk cache is shared between processes)
        workers = args.workers or max(1, min(12, (os.cpu_count() or 4) - 2))
        if SMOKE and not args.workers:
            workers = 2
        if workers > 1:
            log(f"precompile: {workers} worker processes (ours: correctness items; fla: autotune configs split "
                f"{workers} ways) ...")
            procs = start_workers(workers, args)
        fla = fla_fn()
        if fla is not None:
            import fla as fla_pkg
            log(f"fla {getattr(fla_pkg, '__version__', '?')} from {os.path.dirname(fla_pkg.__file__)}")
        if procs:
            wait_workers(procs, min(args.precompile_limit, max(0.4 * remaining(), remaining() - 60)))
            procs = []
            log("precompile done")
        # 1. correctness (each item's kernels were compiled by a worker; what is left is mostly float64 references)
        torch.manual_seed(0)
        # keep enough for the timings: on the H200 (2026-12-01) the Performer items took 3 s, the profile ~3 s,
        # fla's autotune 13 s and the bar 5 s (the earlier 45 + 30 skipped every correctness item there)
        reserve = 25 + (25 if fla is not None else 0)
        for name, item in correctness_items():
            if not have_time(reserve, f"correctness: {name}"):
                continue
            log(f"correctness: {name} ...")
            guarded(f"correctness: {name}")(item)()
        # 2. Performer vs linear at one N (+ SDPA): the open bar, before fla's autotune
        guarded("performer timings")(performer_timings)()
        if args.performer_sweep:
            performer_sweep()
        if have_time(8 + (40 if fla is not None else 0), "performer profile"):  # fla's autotune wants 40 s
            guarded("performer profile")(profile_performer)()
        # 3. fla autotune at one N, then ours vs fla vs float64
        if fla is not None and have_time(40, "fla autotune and fla timings"):
            fla_tune(fla, args.fla_tune_ms)
            fla_check(fla)
        elif fla is not None:
            fla = None
        if args.sweep and have_time(60, "sweep"):
            section_sweep(time.time() + min(60, remaining() - 50))
        # 4. the linear-vs-fla bar
        guarded("bar timings")(bar_timings)(fla)
    except OutOfTime:
        log(f"budget of {args.budget:.0f} s reached: stopping here")
    finally:
        signal.alarm(0)
        for p, f, _ in procs:
            if p.poll() is None:
                p.kill()
    # 5. report and files (at most three: lowrank.csv, lowrank.png, lowrank.log)
    try:
        report(args.out)
        write_csv(os.path.join(args.out, "lowrank.csv"), ROWS)
    finally:
        log(f"done in {elapsed():.0f} s; files: {sorted(os.listdir(args.out))}")
        sys.stdout.flush()
        logf.close()
        sys.stdout = sys.__stdout__


if __name__ == "__main__":
    main()
