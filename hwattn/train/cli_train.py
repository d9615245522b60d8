"""`hwattn train`: train a small model on a synthetic long-range task with one attention method."""
from __future__ import annotations

import argparse
import os

from ._args import add_common_arguments, config_overrides, make_console, default_method, setup_interpreter


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default=None,
                   help="attention method from the registry (see --list-methods). Default: flash on a GPU; "
                        "naive on a CPU-only machine, where flash would run in the (slow) Triton interpreter")
    add_common_arguments(p)
    p.add_argument("--out", default=None,
                   help="directory for log.csv, config.json and the checkpoint last.safetensors "
                        "(default results/train/<task>-<method>)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default: eval)")
    p.epilog = ("Example: hwattn train --task mqar --method flash --seq-len 512 --task-opt num_kv_pairs=64. "
                "On a CPU the default ('cpu' preset, method naive) finishes in a few minutes.")


def main(args) -> int:
    setup_interpreter()
    if args.list_methods:
        from ..nn import describe_methods
        print(describe_methods())
        return 0
    from .config import preset_config
    from .trainer import train

    method = args.method or default_method()
    preset, over = config_overrides(args, method)
    out = args.out or os.path.join("results", "train", f"{args.task}-{method}")
    over.update(out_dir=out, resume=args.resume)
    if args.checkpoint_every is not None:
        over["checkpoint_every"] = args.checkpoint_every
    cfg = preset_config(preset, args.task, **over)
    console = make_console()
    console.print(f"[bold]hwattn train[/]: task {cfg.task} {cfg.task_options}, method {cfg.method}, "
                  f"preset {preset}, {cfg.steps} steps x batch {cfg.batch_size}, output {out}")
    r = train(cfg, progress=not args.no_progress, console=console)
    mem = f"{r['peak_mem_mb']:.0f} MiB" if r["peak_mem_mb"] is not None else "n/a (CPU)"
    console.print(f"[bold]done[/] ({r['stop_reason']}): held-out accuracy {r['eval_acc']:.4f} (best "
                  f"{r['best_eval_acc']:.4f}, chance {r['chance_acc']:.3g}"
                  + (f", majority class {r['majority_acc']:.3f}" if r["majority_acc"] is not None else "")
                  + f"), loss {r['eval_loss']:.4f}, {r['tokens_per_s']:,.0f} tokens/s, peak memory {mem}, "
                  f"{r['wall_s']:.1f} s; log {os.path.join(out, 'log.csv')}, checkpoint "
                  f"{os.path.join(out, 'last.safetensors')}")
    return 0
