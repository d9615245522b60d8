"""Offline compile check of the exact kernel's Triton kernels (dense, block-sparse, varlen), without a GPU.

The CPU tests run Triton's interpreter, which compiles nothing. This script runs the real launchers
(`flash_fwd`, `flash_bwd`, `varlen_fwd`, `varlen_bwd`) on "meta" tensors with the kernels swapped for
recorders, over every score mod / window / causal / block-mask combination (bf16, fp16, fp32; head_dim 64
and 128), then `triton.compile`s each specialisation for sm_90 with the installed Triton.

--against DIR compares the plain kernels (no mod, no window) with those of another checkout (e.g.
`git archive HEAD | tar -x -C DIR`): the op counts of their TTGIR and the instruction counts of their PTX
(parameter loads and debug lines aside) must be equal, i.e. the mods cost nothing when they are off.

--wgmma runs `ptxas -v` (sm_90a) on each kernel's PTX and prints its registers, spill bytes and whether ptxas
serialised its wgmmas (note C7515 and kin: every wgmma then waits for the previous one; that cost the forward
8% until the loop order was fixed, docs/hopper.md). --plain: no score mods, no window; --no-mods: windows kept.

    TRITON_INTERPRET= python scripts/flash_compile_check.py --jobs 2 [--against DIR] [--quick] [--dump DIR]
    python scripts/flash_compile_check.py --quick --plain --wgmma [--all-configs]   # registers / spills / wgmma
    python scripts/flash_compile_check.py --write-launches --launches /tmp/flash.json   # then, in a venv with
    /tmp/t36/bin/python scripts/flash_compile_check.py --launches /tmp/flash.json     # another triton only
"""
import argparse
import collections
import inspect
import itertools
import json
import os
import re
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
_DTYPE = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "int32": "i32", "uint8": "u8"}


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def enumerate_launches(root, plain_only=False, quick=False, dtype_names=None, seqlen=1024):
    """Every distinct (module, kernel, signature, constexprs, warps, stages) the launchers of the checkout at
    `root` produce. plain_only: no mods, no window (what an older checkout also has). seqlen: the lengths
    launched with; Triton specialises integer arguments by divisibility by 16, so 1024 compiles what every
    benchmark length gets (1000, the earlier default, compiled the unaligned specialisation: its loads of the
    LSE and delta vectorise differently, and its SASS did not match the GPU's)."""
    sys.path.insert(0, root)
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["HWATTN_AUTOTUNE"] = "0"
    import inspect
    import torch
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend
    from hwattn.ops.flash import backward, forward, varlen
    from hwattn.ops.flash.block_mask import BlockMask, create_block_mask
    has_mods = "mods" in inspect.signature(forward.flash_fwd).parameters
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
                    elif v is None:
                        spec["signature"][p.name] = "constexpr"
                        spec["constexprs"][p.name] = None
                    elif isinstance(v, torch.Tensor):
                        spec["signature"][p.name] = "*" + _DTYPE[str(v.dtype).replace("torch.", "")]
                        spec["aligned"].append(p.name)  # allocations are 16-byte aligned
                    else:
                        ty, key = native_specialize_impl(BaseBackend, v, False, True, True)
                        spec["signature"][p.name] = ty
                        if ty == "constexpr":
                            spec["constexprs"][p.name] = key if key is not None else v
                        elif key == "D":
                            spec["aligned"].append(p.name)
                found.setdefault(json.dumps(spec, sort_keys=True), spec)
            return call
        return type("Recorder", (), {"__getitem__": lambda self, grid: launch(grid)})()

    kernels = {"forward": (forward, ["_fwd_kernel"]), "backward": (backward, ["_bwd_dkdv_kernel", "_bwd_dq_kernel",
                                                                              "_bwd_fused_kernel"]),
               "varlen": (varlen, ["_varlen_fwd_kernel", "_varlen_dkdv_kernel", "_varlen_dq_kernel",
                                   "_varlen_bwd_fused_kernel"])}
    saved = {}
    for module, (mod, names) in kernels.items():
        for name in names:
            if not hasattr(mod, name):  # an older checkout (--against) without this kernel
                continue
            saved[(mod, name)] = getattr(mod, name)
            setattr(mod, name, recorder(module, name, saved[(mod, name)]))
    skip = type("Skip", (), {"__getitem__": lambda self, g: (lambda *a, **k: None)})()
    for mod, name in ((backward, "_bwd_preprocess"), (varlen, "_bwd_preprocess"), (varlen, "_varlen_preprocess")):
        if hasattr(mod, name):  # the preprocess kernels have no mods: not enumerated
            saved[(mod, name)] = getattr(mod, name)
            setattr(mod, name, skip)
    meta = torch.device("meta")
    try:
        from hwattn.ops.flash.score_mods import ScoreMods
    except ImportError:
        ScoreMods = None

    def mods_of(names, B, H, n_q, n_k, window):
        if not names and window is None:
            return None
        return ScoreMods(alibi_slopes=torch.empty(B, H, device=meta) if "alibi" in names else None,
                         softcap=30.0 if "softcap" in names else 0.0,
                         rel_bias=torch.empty(H, n_q + n_k - 1, device=meta) if "rel_bias" in names else None,
                         window=window, rel_bias_grad="rel_bias" in names)

    mod_sets = [()] if plain_only or not has_mods else \
        [(), ("alibi",), ("softcap",), ("rel_bias",), ("alibi", "softcap", "rel_bias")]
    windows = [None] if plain_only or not has_mods else [None, (256, 0), (100, 37)]
    dtypes = (torch.bfloat16,) if quick else (torch.bfloat16, torch.float16, torch.float32)
    if dtype_names:
        dtypes = tuple(getattr(torch, {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[n]) for n in dtype_names)
    dims = (128,) if quick else (64, 128)
    def on_meta(cpu_mask):
        return BlockMask(**{f: (getattr(cpu_mask, f).to(meta) if isinstance(getattr(cpu_mask, f), torch.Tensor)
                                else getattr(cpu_mask, f)) for f in cpu_mask.__dataclass_fields__})

    # a mask with stored tiles (its rows are not one range of keys) and, where the checkout has them, one whose
    # partial blocks the kernels compute from ranges (a causal window)
    tiled = lambda b, h, q, kv: (kv <= q) & (kv >= q - 300) & ((q - kv) % 7 != 3)
    block_masks = [on_meta(create_block_mask(tiled, None, None, seqlen, seqlen, device="cpu"))]
    ranged = create_block_mask(lambda b, h, q, kv: (kv <= q) & (kv >= q - 300), None, None, seqlen, seqlen,
                               device="cpu")
    if getattr(ranged, "partial_kind", 1) != 1:
        block_masks.append(on_meta(ranged))
    try:
        for dtype, d, causal, names, window, masked in itertools.product(dtypes, dims, (False, True), mod_sets,
                                                                          windows, range(len(block_masks) + 1)):
            if masked and (causal or window is not None):
                continue
            if causal and window is not None and window[1] != 0:
                continue
            B, H, n = 1, 2, seqlen
            q, k, v = (torch.empty(B, n, H, d, device=meta, dtype=dtype) for _ in range(3))
            mods = mods_of(names, B, H, n, n, window)
            extra = {"mods": mods} if has_mods else {}
            bm = block_masks[masked - 1] if masked else None
            o, lse = forward.flash_fwd(q, k, v, causal, 0.1, bm, **extra)
            backward.flash_bwd(torch.empty_like(o), q, k, v, o, lse, causal, 0.1, bm, **extra)
            # every schedule HWATTN_BWD can pick, not only the default (the opt-in atomic-dQ one included), and
            # the one launch in its halves program order where the checkout has one
            schedules = [(s, None) for s in getattr(backward, "BACKWARD_SCHEDULES", ()) if s != "auto"]
            if "halves" in getattr(sys.modules.get("hwattn.ops.flash.configs"), "FUSED_ORDERS", ()):
                schedules.append(("fused", "halves"))
            for schedule, order in schedules:
                os.environ["HWATTN_BWD"] = schedule
                if order:
                    os.environ["HWATTN_FUSED_ORDER"] = order
                try:
                    backward.flash_bwd(torch.empty_like(o), q, k, v, o, lse, causal, 0.1, bm, **extra)
                finally:
                    os.environ.pop("HWATTN_BWD")
                    os.environ.pop("HWATTN_FUSED_ORDER", None)
            if masked or "rel_bias" in names:
                continue
            cu = torch.empty(3, device=meta, dtype=torch.int32)
            qv, kv_, vv = (torch.empty(2 * n, H, d, device=meta, dtype=dtype) for _ in range(3))
            # lengths_16 (every length a multiple of 16, the host's finding) where the checkout has it
            for aligned in ((False, True) if "lengths_16" in inspect.signature(varlen.varlen_fwd).parameters
                            else (None,)):
                vextra = dict(extra, **({} if aligned is None else {"lengths_16": aligned}))
                o, lse = varlen.varlen_fwd(qv, kv_, vv, cu, cu, n, n, causal, 0.1, **vextra)
                varlen.varlen_bwd(torch.empty_like(o), qv, kv_, vv, o, lse, cu, cu, n, n, causal, 0.1, **vextra)
    finally:
        for (mod, name), fn in saved.items():
            setattr(mod, name, fn)
    return list(found.values())


_MODULES = {}


class _Anything:
    """Stands in for torch in a venv that has only another Triton: every attribute, call, subscript or
    subclassing gives another one. The kernels use none of it; the modules only need to import."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Anything()

    def __getattr__(self, name):
        return _Anything()

    def __getitem__(self, key):
        return _Anything()

    def __mro_entries__(self, bases):  # `class F(torch.autograd.Function)`
        return (object,)


def _kernel(spec, root):
    if root not in _MODULES:
        sys.path.insert(0, root)
        os.environ.pop("TRITON_INTERPRET", None)
        try:
            import torch  # noqa: F401
        except ImportError:
            import types
            stub = types.ModuleType("torch")
            stub.__getattr__ = lambda name: _Anything()
            sys.modules["torch"] = stub
        import importlib
        _MODULES[root] = {m: importlib.import_module(f"hwattn.ops.flash.{m}") for m in ("forward", "backward", "varlen")}
    return getattr(_MODULES[root][spec["module"]], spec["kernel"])


def ptxas_report(ptx: str):
    """ptxas -v on a kernel's PTX for sm_90a: (registers, spill bytes, wgmma serialisation notes). A C75xx
    note ("wgmma.mma_async instructions are serialized ...") means every wgmma of the kernel waits for the
    one before: on the H200 that cost the forward 8% (2026-12-01, docs/hopper.md)."""
    import subprocess
    import tempfile
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from sass_loops import ptxas_tools
    ptxas = ptxas_tools()[0]
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "k.ptx"), "w") as f:
            f.write(ptx)
        r = subprocess.run([ptxas, "-arch=sm_90a", "-v", os.path.join(d, "k.ptx"), "-o", os.path.join(d, "k.o")],
                           capture_output=True, text=True)
    if r.returncode != 0:  # a report of nothing would read as "pipelined, no spills"
        raise RuntimeError(f"{ptxas} failed: {r.stderr.strip()[:400]}")
    regs = re.search(r"Used (\d+) registers", r.stderr)
    spill = sum(int(x) for x in re.findall(r"(\d+) bytes spill stores", r.stderr))
    notes = sorted({m for m in re.findall(r"\((C75\d\d)\)[^\n]*?serialized due to ([^\n]*?) in the function", r.stderr)})
    return int(regs.group(1)) if regs else -1, spill, notes


def compile_one(job):
    """-> (spec, error or None, {"ttgir": ..., "ptx": ...} or None). Triton's C++ passes report on fd 2;
    only the lines that say what failed are kept. With a 4th job element True, asm also gets "ptxas":
    ptxas_report's (registers, spills, wgmma serialisation notes)."""
    spec, root, keep_asm = job[:3]
    wgmma = len(job) > 3 and job[3]
    import tempfile
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    fn = _kernel(spec, root)
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in spec["aligned"]}
    src = ASTSource(fn=fn, signature=spec["signature"], constexprs=spec["constexprs"], attrs=attrs)
    opts = {"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]}
    asm = None
    with tempfile.TemporaryFile(mode="w+") as err:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)
            failure = None
            if keep_asm or wgmma:
                asm = {"ttgir": compiled.asm["ttgir"], "ptx": compiled.asm["ptx"]}
            if wgmma:
                asm["ptxas"] = ptxas_report(compiled.asm["ptx"])
                asm["shared"] = compiled.metadata.shared  # bytes; a launch over the GPU's limit drops a stage
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
    return spec, failure, asm


def label(spec):
    c = {k: v for k, v in spec["constexprs"].items() if v not in (None, False) and k not in ("DOT_PRECISION",)}
    dts = sorted({t[1:] for t in spec["signature"].values() if t.startswith("*")} - {"i32", "u8"})
    return f"{spec['kernel']} {','.join(dts)} w{spec['num_warps']} s{spec['num_stages']} {c}"


def op_counts(ttgir: str):
    """Op names of a TTGIR module, counted (SSA names, locations and attributes ignored)."""
    ops = collections.Counter()
    for line in ttgir.splitlines():
        m = re.match(r'\s*(?:%[^=]+=\s*)?"?([a-z_]+\.[a-z_0-9.]+)', line)
        if m and not line.lstrip().startswith("#"):
            ops[m.group(1)] += 1
    return ops


def ptx_counts(ptx: str):
    """Instruction mnemonics of a PTX module, counted; parameter loads and directives left out (extra,
    unused kernel parameters only add those)."""
    ins = collections.Counter()
    for line in ptx.splitlines():
        s = line.strip()
        if not s or s.startswith((".", "//", "$", "{", "}", ")")) or s.endswith(":") or s.startswith("ld.param"):
            continue
        s = re.sub(r"^@!?%p\d+\s+", "", s)
        ins[s.split()[0].rstrip(";")] += 1
    return ins


def plain_key(spec):
    """What identifies a plain launch across checkouts: kernel, pointer dtypes, launch config and the
    constexprs both checkouts have (the new switches, all off, left out)."""
    new = {"WINDOW", "SOFTCAP", "ALIBI", "REL_BIAS", "REL_BIAS_GRAD", "HAS_DESCALE", "stride_vd", "PERSISTENT",
           "ATOMIC_DQ"}
    c = {k: v for k, v in spec["constexprs"].items() if k not in new and not k.startswith("DESCALE")
         and v is not None and not (k == "PARTIAL_KIND" and v == 1)}  # 1: stored tiles, what came before
    dts = sorted(t for n, t in spec["signature"].items() if n in ("Q", "O", "DQ"))
    return json.dumps([spec["kernel"], dts, spec["num_warps"], spec["num_stages"], c], sort_keys=True)


_KIND = {"_fwd_kernel": "fwd", "_bwd_dkdv_kernel": "dkdv", "_bwd_dq_kernel": "dq", "_bwd_fused_kernel": "fused",
         "_varlen_fwd_kernel": "fwd", "_varlen_dkdv_kernel": "dkdv", "_varlen_dq_kernel": "dq",
         "_varlen_bwd_fused_kernel": "fused"}


def expand_configs(spec):
    """The launch over every autotune config a GPU could pick for it, pruned as the autotuner prunes
    (the enumeration records the fixed config only)."""
    sys.path.insert(0, ROOT)
    from hwattn.ops.flash import configs
    kind = _KIND.get(spec["kernel"])
    if kind is None:
        return [spec]

    class _Q:  # the prune step asks the query tensor for its element size (fp8 configs)
        def element_size(self):
            return 1 if spec["signature"].get("Q", "").startswith("*fp8") else 2
    cands = configs._prune(configs.configs(kind), {"Q": _Q(), "HEAD_DIM": spec["constexprs"].get("HEAD_DIM")},
                           **spec["constexprs"])
    return [dict(spec, constexprs=dict(spec["constexprs"], **c.kwargs), num_warps=c.num_warps,
                 num_stages=c.num_stages) for c in cands]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--launches", default="")
    ap.add_argument("--write-launches", action="store_true")
    ap.add_argument("--against", default="", help="another checkout: compare the plain kernels' code")
    ap.add_argument("--quick", action="store_true", help="head_dim 128 only, bf16 unless --dtypes")
    ap.add_argument("--dtypes", default="", help="comma-separated subset of bf16,fp16,fp32")
    ap.add_argument("--all-configs", action="store_true",
                    help="compile every autotune config each launch could get on a GPU, not only the fixed one")
    ap.add_argument("--kernels", default="", help="comma-separated kernel names: only these")
    ap.add_argument("--plain", action="store_true", help="no score mods, no window (block masks included)")
    ap.add_argument("--no-mods", action="store_true", help="no score mods (windows and block masks included)")
    ap.add_argument("--dump", default="", help="write each kernel's TTGIR and PTX into this directory")
    ap.add_argument("--seqlen", type=int, default=1024, help="the lengths launched with (a multiple of 16, as "
                    "every benchmark length, compiles what the GPU runs)")
    ap.add_argument("--wgmma", action="store_true",
                    help="also run ptxas -v on each kernel: registers, spills, and whether its wgmmas are serialised")
    args = ap.parse_args()
    import multiprocessing
    import triton
    from concurrent.futures import ProcessPoolExecutor
    spawn = multiprocessing.get_context("spawn")  # each checkout's hwattn in its own processes
    if args.launches and os.path.exists(args.launches) and not args.write_launches:
        with open(args.launches) as f:
            specs = json.load(f)
    else:
        specs = enumerate_launches(ROOT, plain_only=args.plain, quick=args.quick,
                                   dtype_names=[d for d in args.dtypes.split(",") if d], seqlen=args.seqlen)
        if args.launches:
            with open(args.launches, "w") as f:
                json.dump(specs, f)
            if args.write_launches:
                log(f"{len(specs)} launches written to {args.launches}")
                return 0
    if args.kernels:
        specs = [sp for sp in specs if sp["kernel"] in args.kernels.split(",")]
    if args.no_mods:
        specs = [sp for sp in specs if not any(sp["constexprs"].get(k) for k in ("SOFTCAP", "ALIBI", "REL_BIAS"))]
    if args.all_configs:
        specs = list({json.dumps(x, sort_keys=True): x for sp in specs for x in expand_configs(sp)}.values())
    log(f"{len(specs)} specialisations; compiling for sm_90 with triton {triton.__version__} on {args.jobs} processes")
    plain = [s for s in specs if not any(s["constexprs"].get(k) for k in ("WINDOW", "SOFTCAP", "ALIBI", "REL_BIAS"))]
    failures, ours = [], {}
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=spawn) as pool:
        jobs = [(s, ROOT, bool(args.dump) or (bool(args.against) and s in plain), args.wgmma) for s in specs]
        serialised = 0
        for i, (spec, err, asm) in enumerate(pool.map(compile_one, jobs)):
            if err:
                failures.append(spec)
                log(f"FAIL {label(spec)}: {err}")
            if asm and "ptxas" in asm:
                regs, spill, notes = asm["ptxas"]
                serialised += bool(notes)
                log(f"{'SERIALISED' if notes else 'pipelined '} regs {regs:3d} spill {spill:4d} B "
                    f"smem {asm['shared'] // 1024:3d} KB  {label(spec)}"
                    + (f"  [{'; '.join(' '.join(n) for n in notes)}]" if notes else ""))
            if asm and args.dump:
                os.makedirs(args.dump, exist_ok=True)
                name = f"{i:03d}_{spec['kernel']}"
                for ext in ("ttgir", "ptx"):
                    with open(os.path.join(args.dump, f"{name}.{ext}"), "w") as f:
                        f.write(asm[ext])
                log(f"dumped {name}: {label(spec)}")
            if asm and bool(args.against) and spec in plain:
                ours[plain_key(spec)] = (spec, asm)
            if (i + 1) % 20 == 0:
                log(f"{i + 1}/{len(specs)} compiled, {len(failures)} failures")
    log(f"triton {triton.__version__}: {len(specs) - len(failures)}/{len(specs)} compile")
    if args.wgmma:
        log(f"wgmma serialised (ptxas C75xx) in {serialised} of {len(specs) - len(failures)}")
    differ = 0
    if args.against:
        import subprocess
        out = subprocess.run([sys.executable, "-c", f"import json, sys; sys.path.insert(0, {ROOT!r}); "
                              f"from scripts.flash_compile_check import enumerate_launches; "
                              f"print(json.dumps(enumerate_launches({os.path.abspath(args.against)!r}, True, "
                              f"{args.quick}, None, {args.seqlen})))"], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=""))
        if out.returncode != 0:
            log("enumerating the other checkout failed:", out.stderr[-2000:])
            return 1
        theirs = json.loads(out.stdout.strip().splitlines()[-1])
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=spawn) as pool:
            for spec, err, asm in pool.map(compile_one, [(s, os.path.abspath(args.against), True) for s in theirs]):
                key = plain_key(spec)
                if err or key not in ours:
                    log(f"{'FAIL' if err else 'unmatched'} (other checkout) {label(spec)} {err or ''}")
                    differ += 1
                    continue
                mine = ours[key][1]
                same_ops = op_counts(mine["ttgir"]) == op_counts(asm["ttgir"])
                same_ptx = ptx_counts(mine["ptx"]) == ptx_counts(asm["ptx"])
                if not (same_ops and same_ptx):
                    differ += 1
                    d = (ptx_counts(mine["ptx"]) - ptx_counts(asm["ptx"])) + (ptx_counts(asm["ptx"]) - ptx_counts(mine["ptx"]))
                    log(f"DIFFERS {label(spec)}: ttgir ops {'same' if same_ops else 'differ'}, ptx instructions "
                        f"{'same' if same_ptx else 'differ: ' + str(dict(d))[:300]}")
        log(f"plain kernels: {len(theirs) - differ}/{len(theirs)} identical in TTGIR op and PTX instruction counts")
    return 1 if failures or differ else 0


if __name__ == "__main__":
    sys.exit(main())
