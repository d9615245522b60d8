#!/usr/bin/env python
"""Issue 6 on one H100/H200: quality against speed of the attention methods on synthetic long-range tasks.

    PYTHONUNBUFFERED=1 python scripts/gpu_train.py --zoology --listops --out $OUT     the two tables, ~530 s
    python scripts/gpu_train.py                      every section (~11.5 min: more than one 10-minute GPU call)
    python scripts/gpu_train.py --smoke              CPU smoke test of every section, tiny sizes (interpreter)

Sections (each wrapped: one failure does not stop the others; errors are printed and kept in summary.json):
  --mqar     MQAR (seq 512, 64 key-value pairs, vocab 8192, d_model 128, 2 layers) with "flash", trained
             until held-out accuracy >= 99% or the section's time is up (bar: >= 99%).
  --zoology  Zoology's table: held-out MQAR accuracy of exact attention vs linear attention / Performer (and
             any other causal method registered) as the number of key-value pairs grows, 3 seeds each.
             The runs share the GPU in --workers parallel processes (small models leave it mostly idle);
             each stops at 99% held-out accuracy or after a per-run cap computed from the budget (every run
             gets the whole cap even if none stops early). Only the accuracies are comparable.
  --listops  ListOps (LRA grammar, 500 < length < 2000, padded to 2048) over every registered method that
             runs non-causal attention: same data, seed and number of steps for each. The methods train at
             the same time in one worker process each, sharing the GPU; the equal number of steps is
             calibrated from the first 200 (every method) so that all of them finish inside the budget.
             tokens/s and peak memory come from a separate short probe per method run alone on the GPU
             after the training (the shared runs' own figures are in the CSV). Bar: exact attention clearly
             above chance = 10% and the majority class.
  --compare  `hwattn compare` over every registered method at N = 4096 (ListOps with 1000 < length < 4097,
             a classification task so that non-causal methods such as Linformer run too); bar: < 10 min.

Budgets: every section has a time budget (--<section>-time, seconds) that its runs respect through
per-run time limits and deadlines; the plan with estimated seconds is printed before anything runs.
Autotuning of the flash kernel is off (HWATTN_AUTOTUNE=0, fixed tuned defaults) unless --autotune.

Outputs, all flat in --out (default $OUT, else ./gpu_train_out): summary.md, summary.json, log.txt,
zoology_runs.csv, zoology.png, listops.csv, listops.png, compare.csv, compare.png (7 files for
--zoology --listops). Training logs, checkpoints and the shared ListOps data go to a fresh folder under
--logs (default /tmp/gpu_train_logs), not to --out. Needs torch >= 2.11, triton >= 3.6.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback

T0 = time.perf_counter()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# name -> (default budget in seconds, one-line description)
SECTIONS = {
    "mqar": (60, "MQAR seq 512 / 64 pairs / d_model 128 / 2 layers, flash, to >= 99% held-out accuracy"),
    "zoology": (220, "MQAR accuracy vs number of pairs: exact vs linear / Performer, 3 seeds (parallel workers)"),
    "listops": (295, "ListOps at 2k over every non-causal method, equal steps (parallel workers + probes)"),
    "compare": (100, "`hwattn compare` over every registered method at N = 4096"),
}
STARTUP_S = 15        # imports, the environment line
WRITE_S = 5           # a section's tables, CSVs and plots after its runs
RUN_SLACK_S = 3.0     # a run's final evaluation and hand-back after its time limit fired
MIN_RUN_S = 5.0       # a run that would get less time than this is not started
ZOO_WARM_EST_S = 20   # zoology: spawning the workers, CUDA contexts, first Triton compiles (plan estimate)
LISTOPS_START_EST_S = 25   # listops: workers' start-up and warm-up (compiles) before the timed phase
PROBE_EST_S = 6       # listops: one method's sequential probe (40 steps at 2k, warm kernels)
GEN_MS = 1.2          # ListOps: CPU milliseconds per LRA-length expression
GEN_CHUNK = 2000      # ListOps: training examples per generation chunk (fixed, so the data does not depend on
                      # the number of processes)

_LOG_PATH: list[str] = []


def elapsed() -> float:
    return time.perf_counter() - T0


def say(text: str) -> None:
    """Print and append to --out/log.txt."""
    print(text, flush=True)
    if _LOG_PATH:
        with open(_LOG_PATH[0], "a") as f:
            f.write(text + "\n")


def log(msg: str) -> None:
    say(f"[{elapsed():6.1f}s] {msg}")


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


def _read_rows(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_json(path: str, obj) -> None:
    """Atomically (readers in other processes poll for the file)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, default=str)
    os.replace(tmp, path)


def _wait_for(path: str, deadline: float, poll: float = 0.05) -> bool:
    while not os.path.exists(path):
        if time.time() > deadline:
            return False
        time.sleep(poll)
    return True


def _probe(cfg, steps: int, out_dir: str, max_time: float) -> dict:
    """A short run of cfg: training tokens/s of its last log window (compiles and CUDA warm-up fall in the first
    window) and the run's peak memory."""
    from hwattn.train.trainer import train
    probe = dataclasses.replace(cfg, steps=steps, log_every=max(1, steps // 2), eval_every=steps, out_dir=out_dir,
                                target_acc=None, max_time=max_time, resume=False,
                                checkpoint_every=None)
    r = train(probe, progress=False)
    rows = _read_rows(os.path.join(out_dir, "log.csv"))
    r["probe_tokens_per_s"] = float(rows[-1]["tokens_per_s"]) if rows else r["tokens_per_s"]
    return r


def _probe_tokens_per_s(cfg, seconds_cap: float = 20.0) -> float:
    """Training tokens/s of cfg measured on a short run (30 steps, compile excluded by the 2nd log window)."""
    from hwattn.train.trainer import train
    with tempfile.TemporaryDirectory() as d:
        probe = dataclasses.replace(cfg, steps=30, log_every=15, eval_every=30, num_eval=min(cfg.num_eval, 64),
                                    num_train=cfg.batch_size * 30, out_dir=d, target_acc=None,
                                    max_time=seconds_cap, resume=False)
        train(probe, progress=False)
        rows = _read_rows(os.path.join(d, "log.csv"))
    return float(rows[-1]["tokens_per_s"])


def _worker_init(device: str) -> None:
    """Pool initializer: one CPU thread, torch and the trainer imported, the CUDA context made."""
    import torch
    torch.set_num_threads(1)
    import hwattn.train.trainer  # noqa: F401
    if device.startswith("cuda"):
        torch.zeros(1, device=device)


def _spawn_pool(workers: int, device: str | None = None):
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    if device is None:
        return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                               initargs=(device,))


def _error(e: Exception) -> dict:
    return {"status": f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            "traceback": traceback.format_exc(limit=6)}


def _run_one(cfg_dict: dict, cap: float | None = None, deadline: float | None = None) -> dict:
    """Worker entry point (a separate process): train one configuration, return its result. With a deadline
    (time.time()), the run's time limit is min(cap, what is left before the deadline); a run that would get
    less than MIN_RUN_S is not started."""
    import torch
    torch.set_num_threads(1)
    from hwattn.train.config import TrainConfig
    from hwattn.train.trainer import train
    cfg = TrainConfig.from_dict(cfg_dict)
    info = dict(method=cfg.method, seed=cfg.seed, num_kv_pairs=cfg.task_options.get("num_kv_pairs"), cap_s=cap)
    if deadline is not None:
        limit = deadline - time.time() - RUN_SLACK_S
        limit = limit if cap is None else min(cap, limit)
        if limit < MIN_RUN_S:
            return {**info, "status": "not run: section time up", "max_time": max(0.0, limit)}
        cfg = dataclasses.replace(cfg, max_time=limit)
    info["max_time"] = cfg.max_time
    info["cut_by_deadline"] = bool(cap is not None and cfg.max_time is not None and cfg.max_time < cap - 1.0)
    try:
        r = train(cfg, progress=False)
        r["status"] = "ok"
        if r.get("train_s"):
            r["steps_per_s"] = r["steps"] / r["train_s"]
    except Exception as e:  # reported, not fatal
        r = _error(e)
    finally:
        from hwattn.train import trainer
        trainer._DATA_CACHE.clear()     # a worker's next run is another cell: keep its memory bounded
    r.update(info)
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
                      device=args.device, out_dir=os.path.join(args.logs, "mqar"))
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


# ---- zoology

def _zoology_setup(args):
    """(methods, pairs, seeds, runs in submit order, exact method, workers, waves)."""
    from hwattn import registry
    want = ["flash", "linear", "performer"] + [m for m in registry.names()
                                               if m not in ("flash", "naive", "linear", "performer", "linformer")]
    methods = [m for m in want if m in registry.names() and registry.get(m).supports_causal]
    pairs = [2, 4] if args.smoke else sorted(int(p) for p in args.pairs.split(","))
    seeds = list(range(1 if args.smoke else args.seeds))
    exact = "flash" if "flash" in methods else methods[0]

    # Submit order. First exact attention at the fewest pairs: the cell that converged slowest in the last GPU
    # run (16 s caps), first so that no overrun of the budget can cut it. Then the runs expected to use their
    # whole cap (the other methods do not reach 99%). Last exact attention at more pairs (~300 steps to 99%).
    def order(run):
        m, p, s = run
        if m == exact and p == pairs[0]:
            return (0, p, 0, s)
        if m != exact:
            return (1, p, methods.index(m), s)
        return (2, p, 0, s)

    runs = sorted(((m, p, s) for p in pairs for m in methods for s in seeds), key=order)
    workers = max(1, min(2 if args.smoke else args.workers, len(runs)))
    return methods, pairs, seeds, runs, exact, workers, math.ceil(len(runs) / workers)


def _zoology_cap(left: float, waves: int) -> float:
    """Per-run cap when `left` seconds remain for `waves` waves of runs that all use their whole cap."""
    return max(2 * MIN_RUN_S, (left - waves * (RUN_SLACK_S + 1.0)) / waves)


def plan_zoology(args, budget: float) -> list[str]:
    methods, pairs, seeds, runs, _, workers, waves = _zoology_setup(args)
    cap = _zoology_cap(budget - ZOO_WARM_EST_S - WRITE_S, waves)
    return [f"{len(runs)} runs ({len(methods)} methods x {len(pairs)} pair counts x {len(seeds)} seeds) on "
            f"{workers} workers = {waves} waves", f"~{ZOO_WARM_EST_S}s worker start-up and kernel warm-up, then "
            f"a per-run cap of ~{cap:.0f}s (computed from what is left), {waves} x {cap + RUN_SLACK_S + 1:.0f}s",
            f"{WRITE_S}s table and plot"]


def _zoology_cfg(args, m: str, p: int, s: int, warm: bool = False) -> dict:
    from hwattn.train.config import TrainConfig
    seq = 32 if args.smoke else args.zoology_seq
    batch = 8 if args.smoke else args.mqar_batch
    steps = (1 if args.smoke else 2) if warm else (6 if args.smoke else 100_000)
    return TrainConfig(
        task="mqar", task_options=dict(seq_len=seq, num_kv_pairs=p, vocab_size=args.vocab), method=m,
        dim=32 if args.smoke else 128, num_layers=2, num_heads=2, short_conv=args.short_conv,
        batch_size=batch, lr=args.mqar_lr, warmup_steps=100, lr_schedule="constant", steps=steps,
        num_train=batch * steps if warm else (128 if args.smoke else args.zoology_train),
        num_eval=batch if warm else (32 if args.smoke else 500),
        eval_every=steps if warm else (3 if args.smoke else 100), seed=s, target_acc=None if warm else 0.99,
        device=args.device).to_dict()


def section_zoology(args, out: str, budget: float) -> dict:
    from concurrent.futures import as_completed, wait

    methods, pairs, seeds, runs, exact, workers, waves = _zoology_setup(args)
    seq = 32 if args.smoke else args.zoology_seq
    deadline = time.time() + budget - WRITE_S
    results = []
    with _spawn_pool(workers, args.device) as pool:
        # Warm-up: one tiny run per worker (methods round robin) at the real shapes, so that every worker is
        # spawned, has its CUDA context and finds the Triton kernels compiled before the timed runs start
        # (otherwise the first wave would spend part of its cap compiling, 12 times over).
        t = time.perf_counter()
        warm = [pool.submit(_run_one, _zoology_cfg(args, methods[i % len(methods)], pairs[0], 0, warm=True))
                for i in range(workers)]
        wait(warm, timeout=max(30.0, budget / 3))
        bad = []
        for f in warm:
            try:
                status = f.result(timeout=0).get("status") if f.done() else "still warming up"
            except Exception as e:
                status = f"error: {type(e).__name__}: {e}"
            if status != "ok":
                bad.append(status)
        left = deadline - time.time()
        cap = _zoology_cap(left, waves)
        log(f"zoology: {workers} workers warmed up in {time.perf_counter() - t:.0f}s"
            + (f" ({len(bad)} warm-up runs failed: {bad[0]})" if bad else "")
            + f"; {len(runs)} runs ({len(methods)} methods x {len(pairs)} pair counts x {len(seeds)} seeds), "
            f"{waves} waves, per-run cap {cap:.0f}s (stop at 99% held-out accuracy), {left:.0f}s left "
            f"(seq {seq}, vocab {args.vocab}, batch {8 if args.smoke else args.mqar_batch}, lr {args.mqar_lr})")
        log("zoology: submit order " + ", ".join(f"{m}/{p}/s{s}" for m, p, s in runs[:workers + 3]) + ", ...")
        futures = [pool.submit(_run_one, _zoology_cfg(args, m, p, s), cap, deadline) for m, p, s in runs]
        for f in as_completed(futures):
            try:
                r = f.result()
            except Exception as e:
                r = {"status": f"error: {type(e).__name__}: {e}"}
            results.append(r)
            if r.get("status") == "ok":
                log(f"  {r['method']:>18} pairs {r['num_kv_pairs']:>3} seed {r['seed']}: acc {r['eval_acc']:.4f} "
                    f"(best {r['best_eval_acc']:.4f}) in {r['steps']} steps, {r['wall_s']:.0f}s "
                    f"({r.get('steps_per_s', float('nan')):.1f} steps/s)"
                    + (" [cut by the section deadline]" if r.get("cut_by_deadline") else ""))
            else:
                log(f"  {r.get('method')} pairs {r.get('num_kv_pairs')} seed {r.get('seed')}: {r.get('status')}\n"
                    f"{r.get('traceback', '')}")
    # table: mean +- std of the best held-out accuracy over seeds, and the steps to 99%
    table, steps_table = [], []
    for m in methods:
        row, srow = {"method": m}, {"method": m}
        for p in pairs:
            cell = [r for r in results if r.get("status") == "ok" and r["method"] == m and r["num_kv_pairs"] == p]
            accs = [r["best_eval_acc"] for r in cell]
            if accs:
                mean = sum(accs) / len(accs)
                std = (sum((a - mean) ** 2 for a in accs) / len(accs)) ** 0.5
                row[f"pairs_{p}"] = f"{mean:.3f} +- {std:.3f}" + (f" (n={len(accs)})" if len(accs) != len(seeds)
                                                                   else "")
                row[f"mean_{p}"], row[f"std_{p}"] = mean, std
                hit = sum(r["best_eval_acc"] >= 0.99 for r in cell)
                srow[f"pairs_{p}"] = (f"{sum(r['steps'] for r in cell) / len(cell):.0f} steps, "
                                      f"{sum(r['wall_s'] for r in cell) / len(cell):.0f}s, {hit}/{len(cell)} >= 0.99")
            else:
                row[f"pairs_{p}"] = srow[f"pairs_{p}"] = "failed"
        table.append(row)
        steps_table.append(srow)
    with open(os.path.join(out, "zoology_runs.csv"), "w", newline="") as f:
        keys = ["method", "num_kv_pairs", "seed", "status", "eval_acc", "best_eval_acc", "steps", "wall_s", "train_s",
                "steps_per_s", "tokens_per_s", "peak_mem_mb", "cap_s", "max_time", "cut_by_deadline", "stop_reason"]
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(sorted(results, key=lambda r: (str(r.get("method")), r.get("num_kv_pairs") or 0,
                                                   r.get("seed") or 0)))
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
        ax.set_title(f"MQAR seq {seq}, d_model 128, 2 layers, short conv {args.short_conv}, <= {cap:.0f}s per run",
                     fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "zoology.png"), dpi=120)
        plt.close(fig)
    except Exception:
        traceback.print_exc()
    cut = [r for r in results if r.get("cut_by_deadline") or str(r.get("status", "")).startswith("not run")]
    cols = [("method", "method", "")] + [(f"{p} pairs", f"pairs_{p}", "") for p in pairs]
    md = (f"## Zoology table: MQAR seq {seq}, vocab {args.vocab}, d_model 128, 2 layers, short conv "
          f"{args.short_conv}\n\n" + _md_table(table, cols)
          + f"\nbest held-out accuracy ({'500' if not args.smoke else '32'} held-out sequences), mean +- std over "
          f"{len(seeds)} seeds. {len(runs)} runs in {workers} worker processes sharing the GPU, each stopped at 99% "
          f"held-out accuracy or after its cap of {cap:.0f}s (data generation and evaluations included); batch "
          f"{8 if args.smoke else args.mqar_batch}, lr {args.mqar_lr} (warmup 100, then constant), "
          f"{args.zoology_train if not args.smoke else 128} training sequences, the same for every method and "
          f"cell. Submit order: {exact} at {pairs[0]} pairs first, then the other methods, then {exact} at more "
          f"pairs.\n\nSteps, wall time (mean over seeds) and seeds that reached 0.99 (steps/s are those of runs "
          f"sharing the GPU: not a speed comparison):\n\n" + _md_table(steps_table, cols)
          + (f"\n{len(cut)} runs cut by the section deadline or not run: "
             + ", ".join(f"{r.get('method')}/{r.get('num_kv_pairs')}/s{r.get('seed')}" for r in cut) + "\n"
             if cut else ""))
    say(md)
    return {"table": table, "steps_table": steps_table, "runs": results, "cap_s": cap, "workers": workers,
            "order": [list(r) for r in runs], "markdown": md}


# ---- listops

def _listops_setup(args):
    if args.smoke:
        opts = dict(min_length=8, max_length=33, max_depth=4, seq_len=32)
        return opts, 4, 16, 64, 2, 4        # options, batch, held-out, training examples, calibration steps, probe
    opts = dict(min_length=500, max_length=2000, max_depth=10, max_args=10, seq_len=2048)
    return opts, 32, 500, args.listops_train, args.listops_calib, 40


def plan_listops(args, budget: float) -> list[str]:
    from hwattn import registry
    _, _, _, n_train, k, _ = _listops_setup(args)
    n = sum(registry.get(m).supports_noncausal for m in registry.names())
    procs = max(1, min((os.cpu_count() or 2) - 1, 15))
    gen = n_train * GEN_MS / 1000 / procs + 3
    window = budget - LISTOPS_START_EST_S - n * PROBE_EST_S - WRITE_S
    return [f"~{gen:.0f}s: {n_train} training expressions generated on {procs} processes (overlaps the next line)",
            f"~{LISTOPS_START_EST_S}s: {n} worker processes start, warm up (kernel compiles) and load the data",
            f"~{window:.0f}s: the {n} methods train in parallel; equal steps S calibrated from the first {k} "
            "(or --listops-steps)", f"~{n * PROBE_EST_S}s: a sequential probe per method alone on the GPU "
            "(tokens/s, peak memory)", f"{WRITE_S}s table and plot"]


def _gen_chunk(task: str, options: dict, n: int, seed: int):
    """Generation worker: n examples of the task from seed, inputs as uint8 (ListOps has 16 tokens)."""
    import torch
    from hwattn.tasks import make_task
    x, y = make_task(task, **options).generate(n, seed=seed)
    return x.to(torch.uint8), y


def _listops_worker(cfg_dict: dict, ctrl: str, k: int, deadline: float, warm_steps: int) -> dict:
    """One method's ListOps run in its own process:
    warm-up (a throwaway run of a few steps on a few generated examples: CUDA, cuBLAS, Triton compiles), load the
    shared data the parent wrote (ctrl/data.pt), report ready and wait for ctrl/go (all methods start together),
    train the first k steps at constant peak lr and report their end time, wait for the equal number of steps S
    (ctrl/steps.json) and resume to S with a cosine schedule over S. Runs stop at `deadline` (time.time())."""
    import torch
    torch.set_num_threads(1)
    from hwattn.tasks import make_task
    from hwattn.train.config import TrainConfig
    from hwattn.train.trainer import derive_seed, preload_dataset, train
    cfg = TrainConfig.from_dict(cfg_dict)
    m = cfg.method
    res: dict = {"method": m}
    phase1_file = os.path.join(ctrl, f"phase1.{m}.json")

    def limit():
        return max(1.0, deadline - time.time() - RUN_SLACK_S)

    try:
        t = time.time()
        train(dataclasses.replace(cfg, steps=warm_steps, eval_every=warm_steps, num_train=cfg.batch_size * warm_steps,
                                  num_eval=cfg.batch_size, out_dir=None, max_time=None, checkpoint_every=None),
              progress=False)
        res["warmup_s"] = time.time() - t
        if not _wait_for(os.path.join(ctrl, "data.pt"), deadline):
            raise TimeoutError("the shared data did not arrive before the deadline")
        d = torch.load(os.path.join(ctrl, "data.pt"))
        cfg = dataclasses.replace(cfg, num_train=int(d["train_inputs"].shape[0]))
        task = make_task(cfg.task, **cfg.task_options)
        preload_dataset(task, cfg.num_train, derive_seed(cfg.seed, 0), d["train_inputs"].long(), d["train_targets"])
        preload_dataset(task, cfg.num_eval, derive_seed(cfg.seed, 1), d["eval_inputs"].long(), d["eval_targets"])
        del d
        _write_json(os.path.join(ctrl, f"ready.{m}.json"), {"t": time.time()})
        if not _wait_for(os.path.join(ctrl, "go"), deadline):
            raise TimeoutError("no start signal before the deadline")
        r1 = train(dataclasses.replace(cfg, steps=k, lr_schedule="constant", eval_every=k, checkpoint_every=k,
                                       max_time=limit()), progress=False)
        _write_json(phase1_file, {"t_end": time.time(), "steps": r1["steps"], "stop_reason": r1["stop_reason"]})
        r, wall = r1, r1["wall_s"]
        if r1["steps"] >= k and _wait_for(os.path.join(ctrl, "steps.json"), deadline):
            with open(os.path.join(ctrl, "steps.json")) as f:
                steps = int(json.load(f)["steps"])
            if steps > k:
                r = train(dataclasses.replace(cfg, steps=steps, resume=True, checkpoint_every=steps,
                                              max_time=limit()), progress=False)
                wall += r["wall_s"]
        res.update(r)
        res.update(status="ok", wall_s=wall, phase1_steps=r1["steps"], phase1_wall_s=r1["wall_s"],
                   best_eval_acc=max(r["best_eval_acc"], r1["best_eval_acc"]))
    except Exception as e:
        res.update(_error(e))
        if not os.path.exists(phase1_file):
            _write_json(phase1_file, {"error": res["status"]})
    return res


def _eval_curve(path: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r["eval_acc"])) for r in _read_rows(path) if r.get("eval_acc")]


def section_listops(args, out: str, budget: float) -> dict:
    import gc

    import torch

    from hwattn import registry
    from hwattn.tasks import make_task
    from hwattn.train.compare import CSV_FIELDS, _incompatible, method_options_for, print_table, write_png
    from hwattn.train.config import TrainConfig
    from hwattn.train.trainer import derive_seed, preload_dataset

    t_start, wall_start = time.perf_counter(), time.time()
    opts, batch, num_eval, n_train, k, probe_steps = _listops_setup(args)
    title = f"ListOps {opts['min_length']} < length < {opts['max_length']}, padded to {opts['seq_len']}"
    task = make_task("listops", **opts)
    methods = registry.names()
    rows = {m: {"method": m, "task": task.name, "seq_len": task.seq_len, "steps": 0} for m in methods}
    runnable = []
    for m in methods:
        reason = _incompatible(m, task.kind)
        if reason:
            rows[m]["status"] = reason
        else:
            runnable.append(m)
    pace = [m for m in runnable if m not in {x.strip() for x in args.listops_pace_exclude.split(",") if x.strip()}]
    pace = pace or runnable
    probe_reserve = (len(runnable) * (2 if args.smoke else PROBE_EST_S))
    deadline = wall_start + budget - probe_reserve - WRITE_S      # the parallel training ends by then
    sec_logs = os.path.join(args.logs, "listops")
    ctrl = os.path.join(sec_logs, "ctrl")
    os.makedirs(ctrl, exist_ok=True)
    base = TrainConfig(task="listops", task_options=opts, method="flash", dim=32 if args.smoke else 128,
                       num_layers=2, num_heads=2, batch_size=batch, lr=args.listops_lr,
                       warmup_steps=1 if args.smoke else min(args.listops_warmup, k - 1), steps=k,
                       num_train=n_train, num_eval=num_eval, eval_every=k, log_every=1 if args.smoke else 10,
                       seed=0, device=args.device)

    # 1. the data, generated once (chunks in parallel processes), shared by every method
    t = time.perf_counter()
    gen_procs = max(1, min((os.cpu_count() or 2) - 1, 15, math.ceil(n_train / GEN_CHUNK) + 1))
    gen_pool = _spawn_pool(gen_procs)
    train_seed = derive_seed(base.seed, 0)
    chunks = [(j, min(GEN_CHUNK, n_train - j * GEN_CHUNK)) for j in range(math.ceil(n_train / GEN_CHUNK))]
    # a few spare examples replace any duplicate of another training or held-out expression (none expected)
    chunks.append((len(chunks), max(8, n_train // 500)))
    eval_fut = gen_pool.submit(_gen_chunk, "listops", opts, num_eval, derive_seed(base.seed, 1))
    gen_futs = [gen_pool.submit(_gen_chunk, "listops", opts, n, derive_seed(train_seed, j)) for j, n in chunks]

    # 2. one worker process per method; they warm up while the data is generated
    pool = _spawn_pool(len(runnable), args.device)
    try:
        futs = {}
        for m in runnable:
            cfg = dataclasses.replace(base, method=m, method_options=method_options_for(m, base.method_options),
                                      out_dir=os.path.join(sec_logs, m))
            futs[m] = pool.submit(_listops_worker, cfg.to_dict(), ctrl, k, deadline, 1 if args.smoke else 3)
        eval_x, eval_y = eval_fut.result()
        parts = [f.result() for f in gen_futs]
        gen_pool.shutdown()
        seen = {row.tobytes() for row in eval_x.numpy()}
        keep_x, keep_y, dup = [], [], 0
        for x, y in parts:
            for i, row in enumerate(x.numpy()):
                b = row.tobytes()
                if b in seen:
                    dup += 1
                    continue
                seen.add(b)
                keep_x.append(x[i])
                keep_y.append(y[i])
        n_train = min(n_train, len(keep_x))
        train_x, train_y = torch.stack(keep_x[:n_train]), torch.stack(keep_y[:n_train])
        tmp = os.path.join(ctrl, "data.pt.tmp")
        torch.save({"train_inputs": train_x, "train_targets": train_y, "eval_inputs": eval_x, "eval_targets": eval_y},
                   tmp)
        os.replace(tmp, os.path.join(ctrl, "data.pt"))
        if n_train != base.num_train:       # not expected at LRA lengths: the spare chunk covers duplicates
            log(f"listops: only {n_train} distinct training expressions")
            base = dataclasses.replace(base, num_train=n_train)
        majority = float(eval_y.bincount(minlength=10).max()) / len(eval_y)
        log(f"listops: {n_train} training + {num_eval} held-out expressions generated in "
            f"{time.perf_counter() - t:.1f}s on {gen_procs} processes ({dup} duplicates dropped); held-out majority "
            f"class {majority:.3f}")
        preload_dataset(task, base.num_train, train_seed, train_x.long(), train_y)       # for the probes
        preload_dataset(task, num_eval, derive_seed(base.seed, 1), eval_x.long(), eval_y)
        del parts, keep_x, keep_y, train_x

        # 3. all methods start together; S from the time the first k steps took
        def state(prefix):
            return {m for m in runnable if os.path.exists(os.path.join(ctrl, f"{prefix}.{m}.json")) or futs[m].done()}

        # a worker that is not ready by then (a very slow compile) starts late; its late start counts in the pace
        ready_by = min(deadline - 5, wall_start + min(0.4 * budget, 120.0))
        while len(state("ready")) < len(runnable) and time.time() < ready_by:
            time.sleep(0.05)
        t_go = time.time()
        _write_json(os.path.join(ctrl, "go"), {"t": t_go})
        log(f"listops: {len(state('ready'))}/{len(runnable)} workers ready {t_go - wall_start:.0f}s into the section; "
            f"{len(runnable)} methods train {k} calibration steps at the same time")
        wait_until = t_go + 0.45 * max(1.0, deadline - t_go)
        while len(state("phase1")) < len(runnable) and time.time() < wait_until:
            time.sleep(0.05)
        took = {}
        for m in pace:
            p = os.path.join(ctrl, f"phase1.{m}.json")
            if os.path.exists(p):
                with open(p) as f:
                    info = json.load(f)
                if "t_end" in info:
                    took[m] = info["t_end"] - t_go
            elif not futs[m].done():        # still in its first k steps: extrapolate from its log
                done_rows = _read_rows(os.path.join(sec_logs, m, "log.csv"))
                steps_done = int(done_rows[-1]["step"]) if done_rows else 0
                took[m] = (time.time() - t_go) * k / max(1, steps_done)
        if args.listops_steps:
            steps, how = args.listops_steps, "--listops-steps"
        elif took:
            slowest = max(took, key=took.get)
            steps = int(k * (deadline - t_go) * 0.92 / took[slowest])   # the first k steps, scaled, with 8% margin
            steps = max(k, min(steps - steps % 10, args.listops_max_steps if not args.smoke else 4))
            how = (f"calibrated: {k} steps took {took[slowest]:.1f}s for the slowest ({slowest}) with every method "
                   f"training, {deadline - t_go:.0f}s to go")
        else:
            steps, how = k, "no method finished its calibration steps"
        _write_json(os.path.join(ctrl, "steps.json"), {"steps": steps})
        log(f"listops: {steps} steps for every method ({how}); calibration times "
            + ", ".join(f"{m} {v:.1f}s" for m, v in sorted(took.items(), key=lambda kv: kv[1])))

        results = {}
        for m, f in futs.items():
            try:
                results[m] = f.result(timeout=max(5.0, deadline + 60 - time.time()))
            except Exception as e:
                results[m] = {"method": m, **_error(e)}
            r = results[m]
            if r.get("status") == "ok":
                log(f"  {m:>10}: held-out {r['eval_acc']:.4f} (best {r['best_eval_acc']:.4f}) after {r['steps']} "
                    f"steps, {r['wall_s']:.0f}s on the shared GPU ({r['stop_reason']})")
            else:
                log(f"  {m:>10}: {r.get('status')}\n{r.get('traceback', '')}")
        pool.shutdown(wait=True, cancel_futures=True)

        # 4. tokens/s and peak memory: a short probe per method, alone on the GPU (kernels compiled by now)
        for m in runnable:
            row = rows[m]
            left = budget - WRITE_S - (time.perf_counter() - t_start)
            if left < 3:
                row["probe"] = "skipped: section time up"
                continue
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            try:
                cfg = dataclasses.replace(base, method=m, method_options=method_options_for(m, base.method_options),
                                          lr_schedule="constant")
                cap = min(120.0 if args.smoke else 4 * PROBE_EST_S, left)
                p = _probe(cfg, probe_steps, os.path.join(sec_logs, "probe", m), cap)
                if p["steps"] < probe_steps:
                    row["probe"] = f"probe stopped at step {p['steps']} (time)"
                row.update(probe_tokens_per_s=p["probe_tokens_per_s"], probe_peak_mem_mb=p["peak_mem_mb"],
                           probe_steps=p["steps"])
            except Exception as e:
                row["probe"] = _error(e)["status"]
                log(f"  probe {m} failed: {row['probe']}")

        # 5. the table
        curves = {m: _eval_curve(os.path.join(sec_logs, m, "log.csv")) for m in runnable}
        ok = [m for m in runnable if results.get(m, {}).get("status") == "ok"]
        marks = set.intersection(*(set(s for s, _ in curves[m]) for m in ok)) if ok else set()
        common = max(marks) if marks else None
        for m in runnable:
            r = results.get(m, {})
            row = rows[m]
            row.update({key: v for key, v in r.items() if key not in ("method",)})
            row.update(shared_tokens_per_s=r.get("tokens_per_s"), shared_peak_mem_mb=r.get("peak_mem_mb"),
                       tokens_per_s=row.get("probe_tokens_per_s"), peak_mem_mb=row.get("probe_peak_mem_mb"),
                       status=r.get("status", "error: no result"), common_step=common,
                       acc_at_common_step=dict(curves[m]).get(common) if common else None)
            if row["status"] == "ok" and r.get("steps", 0) < steps:
                row["status"] = f"ok, stopped at step {r['steps']} of {steps}"
        table = [rows[m] for m in methods]
        for r in table:
            if r.get("status", "").startswith("ok"):
                r["stop"] = r.get("stop_reason", "")
        extra = ["acc_at_common_step", "common_step", "probe_tokens_per_s", "probe_peak_mem_mb", "probe_steps",
                 "shared_tokens_per_s", "shared_peak_mem_mb", "phase1_steps", "warmup_s", "probe"]
        with open(os.path.join(out, "listops.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(CSV_FIELDS) + extra, extrasaction="ignore")
            w.writeheader()
            for r in table:
                w.writerow({key: ("" if r.get(key) is None else r.get(key)) for key in list(CSV_FIELDS) + extra})
        plot_rows = [dict(r, status="ok") for r in table if str(r.get("status", "")).startswith("ok")
                     and isinstance(r.get("tokens_per_s"), (int, float)) and isinstance(r.get("eval_acc"), float)]
        try:
            write_png(plot_rows, os.path.join(out, "listops.png"),
                      f"{title}; {steps} steps; tokens/s of a probe alone on the GPU")
        except Exception:
            traceback.print_exc()
        print_table([dict(r, status=r.get("status", "?")) for r in table], title + f", {steps} steps x batch {batch}")
        cols = [("method", "method", ""), ("held-out acc", "eval_acc", ".4f"), ("best", "best_eval_acc", ".4f"),
                (f"acc @ step {common}", "acc_at_common_step", ".4f"), ("steps", "steps", ""),
                ("tokens/s (probe, alone)", "tokens_per_s", ",.0f"), ("peak MiB (probe, alone)", "peak_mem_mb", ".0f"),
                ("train wall s (shared GPU)", "wall_s", ".0f"), ("status", "status", ""), ("stop", "stop", "")]
        chance = next((r for r in table if r.get("chance_acc")), {})
        marks_shown = sorted(set(s for m in ok for s, _ in curves[m]))
        if len(marks_shown) > 8:
            idx = [round(i * (len(marks_shown) - 1) / 7) for i in range(8)]
            marks_shown = [marks_shown[i] for i in sorted(set(idx))]
        curve_rows = [{"method": m, **{f"s{s}": dict(curves[m]).get(s) for s in marks_shown}} for m in ok]
        md = (f"## {title}\n\n" + _md_table(table, cols)
              + f"\nchance {_fmt(chance.get('chance_acc'), '.3f')}, majority class "
              f"{_fmt(chance.get('majority_acc'), '.3f')} ({num_eval} held-out expressions). Every method: the same "
              f"{n_train} training expressions, seed 0, "
              f"{steps} steps of batch {batch} (d_model {base.dim}, 2 layers, 2 heads, lr {base.lr}, warmup "
              f"{base.warmup_steps}, constant for the first {k} steps, then a cosine to lr/10 at step {steps}). "
              f"The methods trained at the same time in one process each, sharing the GPU ({how}); their wall times "
              f"are not comparable. **tokens/s and peak memory come from a separate {probe_steps}-step probe of each "
              f"method run alone on the GPU after the training** (tokens/s of its last {max(1, probe_steps // 2)} "
              f"steps). acc @ step {common}: held-out accuracy at the last evaluation every method reached. The "
              f"training expressions were generated in chunks of {GEN_CHUNK} on parallel processes (chunk j from "
              f"seed derive_seed(derive_seed(0, 0), j)); held-out ones are disjoint from them.\n"
              + "".join(f"\nprobe of {r['method']}: {r['probe']}" for r in table if r.get("probe"))
              + "\n\nHeld-out accuracy during training:\n\n"
              + _md_table(curve_rows, [("method", "method", "")]
                          + [(f"step {s}", f"s{s}", ".3f") for s in marks_shown]))
        return {"rows": table, "markdown": md, "config": base.to_dict(), "steps": steps, "how": how, "curves": curves,
                "common_step": common, "calibration_s": took, "duplicates_dropped": dup}
    finally:       # normally all done by now; after an error, do not wait for the workers' deadline
        gen_pool.shutdown(wait=False, cancel_futures=True)
        pool.shutdown(wait=False, cancel_futures=True)


def section_listops_bar(args, out: str, budget: float) -> dict:
    res = section_listops(args, out, budget)
    flash = next((r for r in res["rows"] if r["method"] == "flash" and str(r.get("status", "")).startswith("ok")),
                 None)
    if flash:
        bar = max(0.1, flash["majority_acc"] or 0) + 0.05
        above = flash["best_eval_acc"] > bar
        res["verdict"] = "PASS" if above else "FAIL"
        res["markdown"] += (f"\nbar: flash best held-out {flash['best_eval_acc']:.4f} > max(chance 0.1, majority "
                            f"{flash['majority_acc']:.3f}) + 0.05 = {bar:.3f}: **{res['verdict']}**\n")
        log(f"listops: flash held-out {flash['eval_acc']:.4f} (best {flash['best_eval_acc']:.4f}) vs chance 0.100, "
            f"majority class {flash['majority_acc']:.3f} -> {res['verdict']} (bar: best > {bar:.3f})")
    else:
        res["verdict"] = "FAIL"
    return res


def section_compare(args, out: str, budget: float) -> dict:
    """Exercises the real CLI entry point, timed end to end."""
    from hwattn.cli import main as cli_main

    sec_out = os.path.join(args.logs, "compare")
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
    for name in ("compare.csv", "compare.png"):
        if os.path.exists(os.path.join(sec_out, name)):
            shutil.copy(os.path.join(sec_out, name), os.path.join(out, name))
    rows = []
    for r in _read_rows(os.path.join(sec_out, "compare.csv")):
        for key, v in r.items():
            try:
                r[key] = float(v) if key not in ("method", "status", "stop_reason", "task", "device") and v != "" else v
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


def plan_lines(name: str, args, budget: float) -> list[str]:
    if name == "zoology":
        return plan_zoology(args, budget)
    if name == "listops":
        return plan_listops(args, budget)
    return []


# --------------------------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, (budget, text) in SECTIONS.items():
        ap.add_argument(f"--{name}", action="store_true", help=f"run this section: {text.replace('%', '%%')} (~{budget}s)")
        ap.add_argument(f"--{name}-time", type=float, default=budget, help=f"time budget of --{name} (s)")
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_train_out",
                    help="summary.md, summary.json, log.txt and the sections' CSVs / PNGs, flat")
    ap.add_argument("--logs", default=os.path.join(tempfile.gettempdir(), "gpu_train_logs"),
                    help="per-run training logs, checkpoints and the shared ListOps data go to a fresh folder "
                         "under this one (default /tmp/gpu_train_logs)")
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
    ap.add_argument("--zoology-train", type=int, default=50_000, help="zoology: training sequences per run")
    ap.add_argument("--workers", type=int, default=12, help="zoology: parallel worker processes on the GPU")
    ap.add_argument("--listops-train", type=int, default=64_000,
                    help="listops: training expressions (generated once, ~1 ms each, on parallel processes)")
    ap.add_argument("--listops-lr", type=float, default=1e-3)
    ap.add_argument("--listops-warmup", type=int, default=50)
    ap.add_argument("--listops-calib", type=int, default=200,
                    help="listops: calibration steps (equal for every method, also the evaluation interval)")
    ap.add_argument("--listops-steps", type=int, default=None,
                    help="listops: equal number of steps for every method (default: calibrated to the budget)")
    ap.add_argument("--listops-max-steps", type=int, default=20_000, help="listops: upper bound of the calibration")
    ap.add_argument("--listops-pace-exclude", default="",
                    help="listops: methods left out of the calibration (e.g. naive): they train the same steps "
                         "but may be stopped by the time limit, marked with the step they reached")
    ap.add_argument("--compare-steps", type=int, default=150, help="compare: steps per method")
    args = ap.parse_args()
    chosen = [n for n in SECTIONS if getattr(args, n)] or list(SECTIONS)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        args.device, args.vocab = "cpu", 64
        for n in SECTIONS:
            setattr(args, f"{n}_time", 900.0)
    else:
        args.device = "cuda"
    if not args.autotune:
        os.environ.setdefault("HWATTN_AUTOTUNE", "0")
    os.makedirs(args.out, exist_ok=True)
    args.logs = os.path.join(args.logs, time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}")
    os.makedirs(args.logs, exist_ok=True)
    _LOG_PATH.append(os.path.join(args.out, "log.txt"))
    open(_LOG_PATH[0], "w").close()

    est = STARTUP_S + sum(getattr(args, f"{n}_time") for n in chosen)
    say("plan (estimated seconds):")
    for n in chosen:
        say(f"  --{n:<8} {getattr(args, f'{n}_time'):>5.0f}s  {SECTIONS[n][1]}")
        for line in plan_lines(n, args, getattr(args, f"{n}_time")):
            say(f"  {'':<10} {'':>5}   - {line}")
    say(f"  total    ~{est:.0f}s ({est / 60:.1f} min) including ~{STARTUP_S}s start-up; outputs in {args.out}, "
        f"training logs in {args.logs}")

    import torch
    if not args.smoke and not torch.cuda.is_available():
        say("no CUDA GPU: run this on the GPU machine (CPU smoke test: --smoke)")
        return 2
    import triton

    from hwattn import registry
    env = {"torch": torch.__version__, "triton": triton.__version__,
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() and not args.smoke else "cpu",
           "cpus": os.cpu_count(), "methods": registry.names(), "autotune": os.environ.get("HWATTN_AUTOTUNE"),
           "argv": sys.argv[1:]}
    log(f"environment: {env}")
    summary = {"env": env, "sections": {}}
    md = [f"# gpu_train.py on {env['device']} (torch {env['torch']}, triton {env['triton']})\n"]
    fns = {"mqar": section_mqar, "zoology": section_zoology, "listops": section_listops_bar,
           "compare": section_compare}
    for n in chosen:
        budget = getattr(args, f"{n}_time")
        t = time.perf_counter()
        log(f"=== {n} (budget {budget:.0f}s) ===")
        try:
            res = fns[n](args, args.out, budget)
        except Exception as e:
            say(traceback.format_exc())
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
    say("\n" + "\n".join(md))
    log(f"total {elapsed():.0f}s; wrote {', '.join(sorted(os.listdir(args.out)))} in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
