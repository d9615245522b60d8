#!/usr/bin/env python
"""Issue 6 on one H100: quality against speed of the attention methods on synthetic long-range tasks.

    python scripts/gpu_train.py                      every section (~7.5 min on one H100, see --help)
    python scripts/gpu_train.py --mqar --zoology     only these sections
    python scripts/gpu_train.py --smoke              CPU smoke test of every section, tiny sizes (interpreter)

Sections (each wrapped: one failure does not stop the others; errors are printed and kept in summary.json):
  --mqar     MQAR (seq 512, 64 key-value pairs, vocab 8192, d_model 128, 2 layers) with "flash", trained
             until held-out accuracy >= 99% or the section's time is up (bar: >= 99%).
  --zoology  Zoology's table: held-out MQAR accuracy of exact attention vs linear attention / Performer (and
             any other causal method registered) as the number of key-value pairs grows, 3 seeds each.
             Runs share the GPU in parallel worker processes (small models leave it mostly idle), so this
             section's tokens/s are not comparable; only its accuracies are reported.
  --listops  ListOps (LRA grammar, 500 < length < 2000, padded to 2048) over every registered method, same
             data, seed and steps for each: accuracy, tokens/s, peak memory, wall time (bar: exact attention
             clearly above chance = 10% and the majority class).
  --compare  `hwattn compare` over every registered method at N = 4096 (ListOps with 1000 < length < 4097,
             a classification task so that non-causal methods such as Linformer run too); bar: < 10 min.

Budgets: every section has a time budget (--<section>-time, seconds) that its runs respect through
per-run time limits; estimated times are printed before anything runs. Autotuning of the flash kernel is off
(HWATTN_AUTOTUNE=0, fixed tuned defaults) unless --autotune: it would cost minutes of compilation.
Writes under --out (default $OUT, else ./gpu_train_out): summary.json, summary.md, per-section CSVs/PNGs and
training logs. Needs torch >= 2.11, triton >= 3.6.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import sys
import time
import traceback

T0 = time.perf_counter()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# name -> (default budget in seconds, one-line description)
SECTIONS = {
    "mqar": (60, "MQAR seq 512 / 64 pairs / d_model 128 / 2 layers, flash, to >= 99% held-out accuracy"),
    "zoology": (150, "MQAR accuracy vs number of pairs: exact vs linear / Performer, 3 seeds (parallel workers)"),
    "listops": (130, "ListOps at 2k over every registered method, equal steps"),
    "compare": (100, "`hwattn compare` over every registered method at N = 4096"),
}
STARTUP_S = 15  # imports, CUDA context, first Triton compiles


def elapsed() -> float:
    return time.perf_counter() - T0


def log(msg: str) -> None:
    print(f"[{elapsed():6.1f}s] {msg}", flush=True)


# --------------------------------------------------------------------------------------------- helpers

def _fmt(v, spec=".4f"):
    if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
        return "-"
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def _md_table(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    """cols: (header, key, format spec)."""
    head = "| " + " | ".join(h for h, _, _ in cols) + " |\n|" + "---|" * len(cols) + "\n"
    body = ""
    for r in rows:
        body += "| " + " | ".join(_fmt(r.get(k), f) if f else str(r.get(k, "-")) for _, k, f in cols) + " |\n"
    return head + body


def _probe_tokens_per_s(cfg, seconds_cap: float = 20.0) -> float:
    """Training tokens/s of cfg measured on a short run (30 steps, compile excluded by the 2nd log window)."""
    import tempfile

    from hwattn.train.trainer import train
    with tempfile.TemporaryDirectory() as d:
        probe = dataclasses.replace(cfg, steps=30, log_every=15, eval_every=30, num_eval=min(cfg.num_eval, 64),
                                    num_train=cfg.batch_size * 30, out_dir=d, target_acc=None,
                                    max_time=seconds_cap, resume=False)
        train(probe, progress=False)
        with open(os.path.join(d, "log.csv")) as f:
            rows = list(csv.DictReader(f))
    return float(rows[-1]["tokens_per_s"])


def _run_one(cfg_dict: dict) -> dict:
    """Worker entry point (a separate process): train one configuration, return its result."""
    import torch
    torch.set_num_threads(1)
    from hwattn.train.config import TrainConfig
    from hwattn.train.trainer import train
    cfg = TrainConfig.from_dict(cfg_dict)
    try:
        r = train(cfg, progress=False)
        r["status"] = "ok"
    except Exception as e:  # reported, not fatal
        r = {"status": f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
             "traceback": traceback.format_exc(limit=4)}
    r.update(method=cfg.method, seed=cfg.seed, num_kv_pairs=cfg.task_options.get("num_kv_pairs"))
    return r


# --------------------------------------------------------------------------------------------- sections

def section_mqar(args, out: str, budget: float) -> dict:
    from hwattn.train.config import TrainConfig
    from hwattn.train.trainer import train

    seq, pairs = (32, 2) if args.smoke else (512, 64)
    cfg = TrainConfig(task="mqar", task_options=dict(seq_len=seq, num_kv_pairs=pairs, vocab_size=args.vocab),
                      method="flash", dim=32 if args.smoke else 128, num_layers=2, num_heads=2,
                      short_conv=args.short_conv, batch_size=8 if args.smoke else args.mqar_batch, lr=args.mqar_lr,
                      warmup_steps=100,
                      num_train=256 if args.smoke else 100_000, num_eval=32 if args.smoke else 1000,
                      eval_every=5 if args.smoke else 100, steps=10 if args.smoke else 1, target_acc=0.99,
                      device=args.device, out_dir=os.path.join(out, "mqar"))
    if not args.smoke:
        t = time.perf_counter()
        tps = _probe_tokens_per_s(cfg)
        left = budget - (time.perf_counter() - t) - 10     # data generation + evaluations
        steps = max(100, int(0.85 * left * tps / (cfg.batch_size * seq)))
        log(f"mqar: probe {tps:,.0f} tokens/s -> {steps} steps (cosine schedule over them), time limit "
            f"{left:.0f}s, stop at 99% held-out accuracy")
        cfg = dataclasses.replace(cfg, steps=steps, max_time=left)
    r = train(cfg, progress=False)
    verdict = "PASS" if r["best_eval_acc"] >= 0.99 else "FAIL"
    log(f"mqar: held-out accuracy {r['eval_acc']:.4f} (best {r['best_eval_acc']:.4f}) after {r['steps']} steps, "
        f"{r['wall_s']:.0f}s, {r['tokens_per_s']:,.0f} tokens/s, peak {_fmt(r['peak_mem_mb'], '.0f')} MiB "
        f"-> {verdict} (bar >= 0.99)")
    md = ("## MQAR, flash\n\n" + _md_table([{**r, "config": f"seq {seq}, {pairs} pairs, vocab {args.vocab}, "
                                             f"d_model {cfg.dim}, 2 layers, short conv {cfg.short_conv}"}],
                                           [("config", "config", ""), ("held-out acc", "eval_acc", ".4f"),
                                            ("best", "best_eval_acc", ".4f"), ("steps", "steps", ""),
                                            ("tokens/s", "tokens_per_s", ",.0f"), ("peak MiB", "peak_mem_mb", ".0f"),
                                            ("wall s", "wall_s", ".1f"), ("stop", "stop_reason", "")])
          + f"\nbar >= 0.99: **{verdict}**\n")
    return {"result": r, "verdict": verdict, "markdown": md}


def section_zoology(args, out: str, budget: float) -> dict:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from hwattn import registry
    from hwattn.train.config import TrainConfig

    want = ["flash", "linear", "performer"] + [m for m in registry.names()
                                               if m not in ("flash", "naive", "linear", "performer", "linformer")]
    methods = [m for m in want if m in registry.names() and registry.get(m).supports_causal]
    pairs = [2, 4] if args.smoke else [int(p) for p in args.pairs.split(",")]
    seeds = list(range(1 if args.smoke else args.seeds))
    seq = 32 if args.smoke else args.zoology_seq
    runs = [(m, p, s) for p in pairs for m in methods for s in seeds]
    workers = 2 if args.smoke else args.workers
    waves = math.ceil(len(runs) / workers)
    per_run = max(10.0, (budget - 15) / waves)
    log(f"zoology: {len(methods)} methods x {len(pairs)} pair counts x {len(seeds)} seeds = {len(runs)} runs on "
        f"{workers} workers, {waves} waves of <= {per_run:.0f}s (seq {seq}, vocab {args.vocab})")
    cfgs = []
    for m, p, s in runs:
        cfgs.append(TrainConfig(
            task="mqar", task_options=dict(seq_len=seq, num_kv_pairs=p, vocab_size=args.vocab), method=m,
            dim=32 if args.smoke else 128, num_layers=2, num_heads=2, short_conv=args.short_conv,
            batch_size=8 if args.smoke else args.mqar_batch, lr=args.mqar_lr, warmup_steps=100,
            lr_schedule="constant", steps=6 if args.smoke else 100_000,
            num_train=128 if args.smoke else 50_000, num_eval=32 if args.smoke else 500,
            eval_every=3 if args.smoke else 100, seed=s, target_acc=0.99, max_time=per_run,
            device=args.device).to_dict())
    results = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_run_one, c) for c in cfgs]
        for f in as_completed(futures):
            try:
                r = f.result()
            except Exception as e:
                r = {"status": f"error: {type(e).__name__}: {e}"}
            results.append(r)
            if r.get("status") == "ok":
                log(f"  {r['method']:>10} pairs {r['num_kv_pairs']:>3} seed {r['seed']}: acc {r['eval_acc']:.4f} "
                    f"(best {r['best_eval_acc']:.4f}) in {r['steps']} steps, {r['wall_s']:.0f}s")
            else:
                log(f"  run failed: {r.get('status')}\n{r.get('traceback', '')}")
    # table: mean +- std of the best held-out accuracy over seeds
    table = []
    for m in methods:
        row = {"method": m}
        for p in pairs:
            accs = [r["best_eval_acc"] for r in results if r.get("status") == "ok" and r["method"] == m
                    and r["num_kv_pairs"] == p]
            if accs:
                mean = sum(accs) / len(accs)
                std = (sum((a - mean) ** 2 for a in accs) / len(accs)) ** 0.5
                row[f"pairs_{p}"] = f"{mean:.3f} +- {std:.3f} (n={len(accs)})"
                row[f"mean_{p}"], row[f"std_{p}"] = mean, std
            else:
                row[f"pairs_{p}"] = "failed"
        table.append(row)
    with open(os.path.join(out, "zoology_runs.csv"), "w", newline="") as f:
        keys = ["method", "num_kv_pairs", "seed", "status", "eval_acc", "best_eval_acc", "steps", "wall_s",
                "stop_reason"]
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(results)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for row in table:
            xs = [p for p in pairs if f"mean_{p}" in row]
            ax.errorbar(xs, [row[f"mean_{p}"] for p in xs], yerr=[row[f"std_{p}"] for p in xs], marker="o",
                        capsize=3, label=row["method"])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("key-value pairs")
        ax.set_ylabel(f"held-out accuracy (best, mean +- std over {len(seeds)} seeds)")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"MQAR seq {seq}, d_model 128, 2 layers, short conv {args.short_conv}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "zoology.png"), dpi=120)
        plt.close(fig)
    except Exception:
        traceback.print_exc()
    cols = [("method", "method", "")] + [(f"{p} pairs", f"pairs_{p}", "") for p in pairs]
    md = (f"## Zoology table: MQAR seq {seq}, vocab {args.vocab}, d_model 128, 2 layers, short conv "
          f"{args.short_conv}, <= {per_run:.0f}s per run\n\n"
          + _md_table(table, cols) + "\nbest held-out accuracy, mean +- std over seeds\n")
    print(md, flush=True)
    return {"table": table, "runs": results, "markdown": md}


def _compare_section(args, out: str, budget: float, name: str, task_options: dict, batch: int, title: str) -> dict:
    from hwattn import registry
    from hwattn.train.compare import compare, print_table, write_csv, write_png
    from hwattn.train.config import TrainConfig

    methods = registry.names()
    runnable = max(1, sum(registry.get(m).supports_noncausal for m in methods))   # causal-only ones are skipped
    cfg = TrainConfig(task="listops", task_options=task_options, method="flash", dim=32 if args.smoke else 128,
                      num_layers=2, num_heads=2, batch_size=batch, lr=1e-3, warmup_steps=50 if not args.smoke else 1,
                      steps=4 if args.smoke else 1, num_eval=16 if args.smoke else 500,
                      eval_every=4 if args.smoke else 10_000, device=args.device, seed=0)
    per_method = (budget - 10) / runnable
    if not args.smoke:
        t0 = time.perf_counter()
        try:
            tps = _probe_tokens_per_s(dataclasses.replace(cfg, method="flash"))
        except Exception:
            traceback.print_exc()
            tps = 50_000.0
        # the shared data, generated once outside the per-method time limits (the runs reuse it from the cache)
        from hwattn.tasks import make_task
        from hwattn.train.trainer import _dataset, derive_seed
        task = make_task(cfg.task, **cfg.task_options)
        guess = max(50, int(0.6 * (budget / runnable) * tps / (batch * task_options["seq_len"])))
        num_train = min(guess * batch, args.listops_train)
        t = time.perf_counter()
        _dataset(task, num_train, derive_seed(cfg.seed, 0))
        _dataset(task, cfg.num_eval, derive_seed(cfg.seed, 1))
        log(f"{name}: {num_train} training + {cfg.num_eval} held-out examples generated in "
            f"{time.perf_counter() - t:.1f}s")
        per_method = (budget - (time.perf_counter() - t0) - 10) / runnable
        # equal steps for every method, sized so that flash uses ~60% of its share (slower methods get the rest;
        # a method that hits the time limit is marked "time limit" in the table)
        steps = max(50, int(0.6 * per_method * tps / (batch * task_options["seq_len"])))
        cfg = dataclasses.replace(cfg, steps=steps, eval_every=steps, num_train=num_train)
        log(f"{name}: flash probe {tps:,.0f} tokens/s -> {steps} steps x batch {batch} for each of "
            f"{runnable} methods, <= {per_method:.0f}s each")
    cfg = dataclasses.replace(cfg, max_time=per_method)
    rows = compare(cfg, methods, os.path.join(out, name), progress=False)
    sec_out = os.path.join(out, name)
    os.makedirs(sec_out, exist_ok=True)
    print_table(rows, title)
    write_csv(rows, os.path.join(sec_out, "compare.csv"))
    write_png(rows, os.path.join(sec_out, "compare.png"), title)
    cols = [("method", "method", ""), ("held-out acc", "eval_acc", ".4f"), ("best", "best_eval_acc", ".4f"),
            ("tokens/s", "tokens_per_s", ",.0f"), ("peak MiB", "peak_mem_mb", ".0f"), ("wall s", "wall_s", ".1f"),
            ("steps", "steps", ""), ("status", "status", ""), ("stop", "stop_reason", "")]
    chance = next((r for r in rows if r.get("status") == "ok"), {})
    md = (f"## {title}\n\n" + _md_table(rows, cols)
          + f"\nchance {_fmt(chance.get('chance_acc'), '.3f')}, "
          f"majority class {_fmt(chance.get('majority_acc'), '.3f')}\n")
    return {"rows": rows, "markdown": md, "config": cfg.to_dict()}


def section_listops(args, out: str, budget: float) -> dict:
    if args.smoke:
        opts = dict(min_length=8, max_length=33, max_depth=4, seq_len=32)
    else:
        opts = dict(min_length=500, max_length=2000, max_depth=10, max_args=10, seq_len=2048)
    res = _compare_section(args, out, budget, "listops", opts, 4 if args.smoke else 32,
                           f"ListOps {opts['min_length']} < length < {opts['max_length']}, padded to {opts['seq_len']}")
    flash = next((r for r in res["rows"] if r["method"] == "flash" and r.get("status") == "ok"), None)
    if flash:
        above = flash["best_eval_acc"] > max(0.1, flash["majority_acc"] or 0) + 0.05
        res["verdict"] = "PASS" if above else "FAIL"
        log(f"listops: flash held-out {flash['eval_acc']:.4f} (best {flash['best_eval_acc']:.4f}) vs chance 0.100, "
            f"majority class {flash['majority_acc']:.3f} -> {res['verdict']} (bar: clearly above chance)")
    return res


def section_compare(args, out: str, budget: float) -> dict:
    """Exercises the real CLI entry point, timed end to end."""
    from hwattn.cli import main as cli_main

    sec_out = os.path.join(out, "compare")
    if args.smoke:
        argv = ["compare", "--task", "listops", "--seq-len", "32", "--task-opt", "max_depth=4", "--steps", "3",
                "--batch-size", "4", "--num-eval", "8", "--dim", "32", "--device", "cpu"]
    else:
        from hwattn import registry
        per_method = (budget - 10) / max(1, sum(registry.get(m).supports_noncausal for m in registry.names()))
        argv = ["compare", "--task", "listops", "--seq-len", "4096", "--task-opt", "min_length=1000",
                "--steps", str(args.compare_steps), "--batch-size", "8", "--num-train", str(args.compare_steps * 8),
                "--num-eval", "200", "--eval-every", str(args.compare_steps), "--dim", "128", "--layers", "2",
                "--heads", "2", "--lr", "1e-3", "--warmup", "20", "--max-time", f"{per_method:.0f}"]
    argv += ["--out", sec_out, "--no-progress"]
    log("compare: hwattn " + " ".join(argv))
    t = time.perf_counter()
    rc = cli_main(argv)
    wall = time.perf_counter() - t
    rows = []
    for r in csv.DictReader(open(os.path.join(sec_out, "compare.csv"))):
        for k, v in r.items():
            try:
                r[k] = float(v) if k not in ("method", "status", "stop_reason", "task", "device") and v != "" else v
            except ValueError:
                pass
        rows.append(r)
    verdict = "PASS" if wall < 600 else "FAIL"
    log(f"compare: exit {rc}, {wall:.0f}s end to end -> {verdict} (bar < 600 s)")
    cols = [("method", "method", ""), ("held-out acc", "eval_acc", ".4f"), ("tokens/s", "tokens_per_s", ",.0f"),
            ("peak MiB", "peak_mem_mb", ".0f"), ("wall s", "wall_s", ".1f"), ("steps", "steps", ".0f"),
            ("status", "status", ""), ("stop", "stop_reason", "")]
    md = (f"## hwattn compare, ListOps N = 4096 ({wall:.0f}s end to end, bar < 600 s: {verdict})\n\n"
          + _md_table(rows, cols))
    return {"rows": rows, "wall_s": wall, "exit_code": rc, "verdict": verdict, "markdown": md}


# --------------------------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, (budget, text) in SECTIONS.items():
        ap.add_argument(f"--{name}", action="store_true", help=f"run this section: {text} (~{budget}s)")
        ap.add_argument(f"--{name}-time", type=float, default=budget, help=f"time budget of --{name} (s)")
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_train_out")
    ap.add_argument("--smoke", action="store_true", help="CPU smoke test: tiny sizes, Triton interpreter")
    ap.add_argument("--autotune", action="store_true", help="let the flash kernel autotune (minutes of compiles)")
    ap.add_argument("--vocab", type=int, default=8192, help="MQAR vocabulary (Zoology: 8192)")
    ap.add_argument("--mqar-lr", type=float, default=3e-3)
    ap.add_argument("--mqar-batch", type=int, default=64)
    ap.add_argument("--short-conv", type=int, default=3,
                    help="MQAR sections: width of the causal short convolution before each attention, as in "
                         "Zoology's attention baselines (0 = pure attention; on CPU, seq 128 / 16 pairs took > 1000 "
                         "steps without it and 300 with it)")
    ap.add_argument("--pairs", default="16,32,64", help="zoology: key-value pair counts")
    ap.add_argument("--seeds", type=int, default=3, help="zoology: seeds per cell")
    ap.add_argument("--zoology-seq", type=int, default=512, help="zoology: sequence length (>= 4 * max pairs)")
    ap.add_argument("--workers", type=int, default=6, help="zoology: parallel worker processes on the GPU")
    ap.add_argument("--listops-train", type=int, default=8000,
                    help="listops: at most this many training expressions (generation is ~1 ms each, on the CPU)")
    ap.add_argument("--compare-steps", type=int, default=150, help="compare: steps per method")
    args = ap.parse_args()
    chosen = [n for n in SECTIONS if getattr(args, n)] or list(SECTIONS)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        args.device, args.vocab = "cpu", 64
        for n in SECTIONS:
            setattr(args, f"{n}_time", 60.0)
    else:
        args.device = "cuda"
    if not args.autotune:
        os.environ.setdefault("HWATTN_AUTOTUNE", "0")
    os.makedirs(args.out, exist_ok=True)

    est = STARTUP_S + sum(getattr(args, f"{n}_time") for n in chosen)
    print("plan (estimated seconds):")
    for n in chosen:
        print(f"  --{n:<8} {getattr(args, f'{n}_time'):>5.0f}s  {SECTIONS[n][1]}")
    print(f"  total    ~{est:.0f}s ({est / 60:.1f} min) including ~{STARTUP_S}s start-up", flush=True)

    import torch
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA GPU: run this on the GPU machine (CPU smoke test: --smoke)")
        return 2
    import triton

    from hwattn import registry
    env = {"torch": torch.__version__, "triton": triton.__version__,
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() and not args.smoke else "cpu",
           "methods": registry.names(), "autotune": os.environ.get("HWATTN_AUTOTUNE")}
    log(f"environment: {env}")
    summary = {"env": env, "sections": {}}
    md = [f"# gpu_train.py on {env['device']} (torch {env['torch']}, triton {env['triton']})\n"]
    fns = {"mqar": section_mqar, "zoology": section_zoology, "listops": section_listops, "compare": section_compare}
    for n in chosen:
        budget = getattr(args, f"{n}_time")
        t = time.perf_counter()
        log(f"=== {n} (budget {budget:.0f}s) ===")
        try:
            res = fns[n](args, args.out, budget)
        except Exception as e:
            traceback.print_exc()
            res = {"error": f"{type(e).__name__}: {e}", "markdown": f"## {n}\n\nfailed: {type(e).__name__}: {e}\n"}
        took = time.perf_counter() - t
        res["seconds"], res["budget_s"] = took, budget
        log(f"=== {n} done in {took:.0f}s (budget {budget:.0f}s) ===")
        summary["sections"][n] = res
        md.append(res.get("markdown", "") + f"\n({n}: {took:.0f}s of a {budget:.0f}s budget)\n")
        with open(os.path.join(args.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1, default=str)
        with open(os.path.join(args.out, "summary.md"), "w") as f:
            f.write("\n".join(md))
    print("\n" + "\n".join(md))
    log(f"total {elapsed():.0f}s; wrote {args.out}/summary.md, summary.json and per-section files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
