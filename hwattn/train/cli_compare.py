"""`hwattn compare`: quality against speed for several attention methods on one task."""
from __future__ import annotations

import argparse
import os

from ._args import add_common_arguments, config_overrides, make_console, setup_interpreter


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", default=None,
                   help="comma-separated registered methods (default: every registered method; see "
                        "--list-methods). Methods that cannot run the task (e.g. non-causal ones on an LM task) "
                        "are listed as skipped")
    add_common_arguments(p)
    p.add_argument("--out", default=None,
                   help="directory for compare.csv, compare.png and one run folder per method "
                        "(default results/compare/<task>-<seq_len>)")
    p.epilog = ("Each method trains the same model from the same seed on the same data for the same number of "
                "steps; the table reports held-out accuracy, training tokens/s, peak GPU memory and wall time. "
                "Method options: --method-opt KEY=VALUE goes to every method declaring KEY, "
                "--method-opt performer.nb_features=128 to one method. On CPU-only machines flash runs in "
                "the slow Triton interpreter: pass --methods naive,... there.")


def main(args) -> int:
    setup_interpreter()
    if args.list_methods:
        from ..nn import describe_methods
        print(describe_methods())
        return 0
    from .. import registry
    from .compare import compare, print_table, write_csv, write_png
    from .config import preset_config

    methods = registry.names() if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    preset, over = config_overrides(args, "naive")
    cfg = preset_config(preset, args.task, **over)
    from ..tasks import make_task
    seq_len = make_task(cfg.task, **cfg.task_options).seq_len
    out = args.out or os.path.join("results", "compare", f"{cfg.task}-{seq_len}")
    os.makedirs(out, exist_ok=True)
    console = make_console()
    console.print(f"[bold]hwattn compare[/]: task {cfg.task} {cfg.task_options}, methods {', '.join(methods)}, "
                  f"preset {preset}, {cfg.steps} steps x batch {cfg.batch_size}, model dim {cfg.dim} x "
                  f"{cfg.num_layers} layers, output {out}")
    import torch
    if not torch.cuda.is_available() and any(m != "naive" for m in methods):
        console.print("[yellow]no CUDA GPU: every method but naive runs its Triton kernels in the interpreter, "
                      "which takes minutes per method even at the cpu preset; use --methods and --steps to "
                      "keep this short[/]")
    rows = compare(cfg, methods, out, progress=not args.no_progress, console=console)
    title = (f"{cfg.task}, seq {seq_len}, {cfg.steps} steps x {cfg.batch_size}, dim {cfg.dim} x {cfg.num_layers} "
             f"layers, seed {cfg.seed}")
    print_table(rows, title, console)
    write_csv(rows, os.path.join(out, "compare.csv"))
    wrote_png = write_png(rows, os.path.join(out, "compare.png"), title)
    console.print(f"wrote {os.path.join(out, 'compare.csv')}"
                  + (f" and {os.path.join(out, 'compare.png')}" if wrote_png else " (no PNG: no method ran)"))
    return 0 if any(r["status"] == "ok" for r in rows) else 1
