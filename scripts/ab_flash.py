#!/usr/bin/env python
"""A/B timing of the exact kernel between checkouts, in one GPU run: each ROOT (a directory holding an `hwattn`
package, e.g. `git archive <rev> | tar -x -C ROOT`) is timed in its own subprocess on the same shapes, and the
table gives each one's TFLOP/s and its ratio to the first ROOT. What a kernel change moved, with nothing else
changed (same GPU, same run, same launch configs).

    python3 scripts/ab_flash.py --roots .snap_old,. --out $OUT [--autotune] [--n 4096,16384] [--d 128] [--host]

--host adds two rows: the host time per call (us) of a small causal fwd and fwd + bwd step (1 x 256 x 16 x 64,
kernels of a few us, launches queued without a sync), the fastest of five 200-call loops.

A root may carry environment settings for its run after a colon, e.g. `.:HWATTN_BWD=fused` (several: commas
inside are not allowed, use `;`: `.:HWATTN_BWD=fused;HWATTN_FWD_SCHEDULE=persistent`).

Fixed launch configs by default (HWATTN_AUTOTUNE=0: `configs._DEFAULT`), so a change is not confounded with
the autotuner's choice; --autotune times what users get. FLOPs: forward 4 B H N^2 D (half causal), backward
2.5x. bf16, B*N = 16384 tokens, H*D = 2048, random inputs, triton.testing.do_bench medians.
"""
import argparse
import csv
import json
import os
import subprocess
import sys


def child(root, shapes, autotune, host=False):
    sys.path.insert(0, os.path.abspath(root))
    os.environ["HWATTN_AUTOTUNE"] = "1" if autotune else "0"
    import torch
    import triton
    import hwattn
    from hwattn import flash_attention
    assert os.path.abspath(hwattn.__file__).startswith(os.path.abspath(root)), hwattn.__file__
    rows = []
    for n, d, causal in shapes:
        b, h = max(1, 16384 // n), 2048 // d
        torch.manual_seed(0)
        q, k, v = (torch.randn(b, n, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        do = torch.randn(b, n, h, d, device="cuda", dtype=torch.bfloat16)
        flops = 4 * b * h * n * n * d * (0.5 if causal else 1.0)
        fwd_ms = triton.testing.do_bench(lambda: flash_attention(q, k, v, causal=causal), warmup=50, rep=300)
        o = flash_attention(q, k, v, causal=causal)
        bwd_ms = triton.testing.do_bench(lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True),
                                         warmup=50, rep=300)
        rows.append({"N": n, "D": d, "causal": causal, "fwd_ms": fwd_ms, "bwd_ms": bwd_ms,
                     "fwd_tflops": flops / fwd_ms / 1e9, "bwd_tflops": 2.5 * flops / bwd_ms / 1e9})
        del q, k, v, do, o
        torch.cuda.empty_cache()
    if host:
        rows.extend(host_costs(flash_attention))
    print("ROWS " + json.dumps(rows), flush=True)


def host_costs(flash_attention):
    """Host time per call (us) at a shape whose kernels take a few microseconds: launches are queued with no
    sync, so the loop runs at the speed of the Python and launch path (fwd, and fwd + bwd)."""
    import time
    import torch
    rows = []
    q, k, v = (torch.randn(1, 256, 16, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn_like(q)
    steps = {"host fwd": lambda: flash_attention(q, k, v, causal=True),
             "host fwd+bwd": lambda: torch.autograd.grad(flash_attention(q, k, v, causal=True), (q, k, v), do)}
    for name, step in steps.items():
        for _ in range(20):
            step()
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(5):  # the fastest of five loops: a preempted loop is the machine, not the code
            t0 = time.perf_counter()
            for _ in range(200):
                step()
            best = min(best, (time.perf_counter() - t0) / 200 * 1e6)
            torch.cuda.synchronize()
        rows.append({"N": name, "D": 64, "causal": True, "fwd_ms": best / 1e3, "bwd_ms": best / 1e3,
                     "fwd_tflops": best, "bwd_tflops": best})
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--roots", default="", help="comma-separated checkouts; the first is the baseline")
    ap.add_argument("--n", default="4096,16384")
    ap.add_argument("--d", default="128")
    ap.add_argument("--causal", default="0,1")
    ap.add_argument("--autotune", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "results/ab"))
    ap.add_argument("--host", action="store_true",
                    help="also the host time per call (us, in the TFLOP/s columns; x = vs first: >1 is less time)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    shapes = [(int(n), int(d), bool(int(c))) for d in args.d.split(",") for n in args.n.split(",")
              for c in args.causal.split(",")]
    if args.child:
        return child(args.child, shapes, args.autotune, args.host)
    os.makedirs(args.out, exist_ok=True)
    results = {}
    roots = args.roots.split(",")
    for i, root in enumerate(roots):
        # a root listed twice (A,B,A,B: rounds, to see the run-to-run spread) keeps every round
        label = root if roots.count(root) == 1 else f"{root} #{roots[:i + 1].count(root)}"
        path, _, settings = root.partition(":")
        env = dict(os.environ, PYTHONPATH="")
        env.update(kv.split("=", 1) for kv in settings.split(";") if kv)
        cmd = [sys.executable, os.path.abspath(__file__), "--child", path, "--roots", path, "--n", args.n,
               "--d", args.d, "--causal", args.causal] + (["--autotune"] if args.autotune else []) + \
            (["--host"] if args.host else [])
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = [x for x in r.stdout.splitlines() if x.startswith("ROWS ")]
        if r.returncode != 0 or not line:
            print(f"{label}: failed (rc {r.returncode})\n{r.stderr[-3000:]}", flush=True)
            continue
        results[label] = json.loads(line[0][5:])
        print(f"{label}: done", flush=True)
    if not results:
        return 1
    base = next(iter(results.values()))
    fields = ["root", "N", "D", "causal", "fwd_ms", "bwd_ms", "fwd_tflops", "bwd_tflops", "fwd_vs_first", "bwd_vs_first"]
    with open(os.path.join(args.out, "ab_flash.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for root, rows in results.items():
            for r, r0 in zip(rows, base):
                w.writerow({"root": root, **r, "fwd_vs_first": r0["fwd_ms"] / r["fwd_ms"],
                            "bwd_vs_first": r0["bwd_ms"] / r["bwd_ms"]})
    print(f"{'N':>6} {'D':>4} {'causal':>6}  " + "  ".join(f"{root[-18:]:>24}" for root in results)
          + "   (TFLOP/s fwd/bwd, x = vs first)")
    for i, r0 in enumerate(base):
        cells = []
        for rows in results.values():
            r = rows[i]
            cells.append(f"{r['fwd_tflops']:4.0f}/{r['bwd_tflops']:4.0f} {r0['fwd_ms'] / r['fwd_ms']:.2f}x"
                         f"/{r0['bwd_ms'] / r['bwd_ms']:.2f}x")
        print(f"{r0['N']:>6} {r0['D']:>4} {str(r0['causal']):>6}  " + "  ".join(f"{c:>24}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
