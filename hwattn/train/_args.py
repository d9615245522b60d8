"""Command-line options shared by `hwattn train` and `hwattn compare` (argparse only: imports stay light)."""
from __future__ import annotations

import argparse
import ast
import os

TASKS = ("mqar", "listops", "passkey", "selective_copying", "induction_heads")


def _key_value(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw                      # a bare word, e.g. kernel=relu
    return key.strip(), value


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("task")
    g.add_argument("--task", default="mqar", choices=TASKS, help="synthetic task (default mqar)")
    g.add_argument("--seq-len", type=int, default=None,
                   help="sequence length (listops: longest expression + padding; sets max_length = N + 1 and, "
                        "unless given, min_length = N // 4)")
    g.add_argument("--task-opt", action="append", default=[], type=_key_value, metavar="KEY=VALUE",
                   help="generator option, e.g. num_kv_pairs=16, vocab_size=8192, depth=0.9 (repeatable)")
    g.add_argument("--eval-task-opt", action="append", default=[], type=_key_value, metavar="KEY=VALUE",
                   help="generator option of the held-out set only, e.g. train with --task-opt "
                        "'num_kv_pairs=[4,16,64]' and evaluate with --eval-task-opt num_kv_pairs=64")
    g.add_argument("--preset", choices=("auto", "cpu", "gpu"), default="auto",
                   help="size preset: 'cpu' finishes in a few minutes on a laptop CPU, 'gpu' is sized for one "
                        "H100; auto = gpu when CUDA is available (default)")
    m = p.add_argument_group("model")
    m.add_argument("--dim", type=int, default=None, help="model width")
    m.add_argument("--layers", type=int, default=None, help="Transformer blocks")
    m.add_argument("--heads", type=int, default=None, help="query heads")
    m.add_argument("--kv-heads", type=int, default=None, help="K/V heads (GQA), default = heads")
    m.add_argument("--short-conv", type=int, default=None,
                   help="width of a causal depthwise convolution before each attention, 0 = none (MQAR presets: "
                        "3, as in Zoology's attention baselines; other tasks: 0)")
    m.add_argument("--method-opt", action="append", default=[], type=_key_value, metavar="KEY=VALUE",
                   help="option of the attention method, e.g. nb_features=128 (repeatable; with compare, given "
                        "to every method that declares it)")
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int, default=None, help="optimizer steps (the budget)")
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (AdamW, warmup then cosine)")
    t.add_argument("--weight-decay", type=float, default=None)
    t.add_argument("--warmup", type=int, default=None, help="warmup steps")
    t.add_argument("--num-train", type=int, default=None,
                   help="training examples generated once (default steps * batch size, at most 100k)")
    t.add_argument("--num-eval", type=int, default=None, help="held-out examples")
    t.add_argument("--eval-every", type=int, default=None, help="steps between held-out evaluations")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    t.add_argument("--autocast", choices=("auto", "bf16", "none"), default="auto",
                   help="auto = bf16 autocast on CUDA, none on CPU")
    t.add_argument("--max-time", type=float, default=None, help="stop a run after this many seconds")
    t.add_argument("--target-acc", type=float, default=None, help="stop once held-out accuracy reaches this")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (evaluation lines still print)")
    p.add_argument("--list-methods", action="store_true", help="list the registered attention methods and exit")


def setup_interpreter() -> None:
    """No CUDA: Triton kernels must run in the interpreter, chosen before triton is imported."""
    import torch
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def config_overrides(args, method: str) -> tuple[str, dict]:
    """(preset name, TrainConfig overrides) from the parsed common options."""
    import torch
    preset = args.preset
    if preset == "auto":
        preset = "gpu" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    task_options = dict(args.task_opt)
    if args.seq_len is not None:
        if args.task == "listops":
            task_options.setdefault("seq_len", args.seq_len)
            task_options.setdefault("max_length", args.seq_len + 1)
            task_options.setdefault("min_length", args.seq_len // 4)
        else:
            task_options.setdefault("seq_len", args.seq_len)
    over = {"task_options": task_options, "eval_task_options": dict(args.eval_task_opt), "method": method,
            "method_options": dict(args.method_opt),
            "seed": args.seed, "device": args.device, "autocast": args.autocast}
    for attr, key in (("dim", "dim"), ("layers", "num_layers"), ("heads", "num_heads"), ("kv_heads", "num_kv_heads"),
                      ("short_conv", "short_conv"),
                      ("steps", "steps"), ("batch_size", "batch_size"), ("lr", "lr"),
                      ("weight_decay", "weight_decay"), ("warmup", "warmup_steps"), ("num_train", "num_train"),
                      ("num_eval", "num_eval"), ("eval_every", "eval_every"), ("max_time", "max_time"),
                      ("target_acc", "target_acc")):
        value = getattr(args, attr)
        if value is not None:
            over[key] = value
    return preset, over


def make_console():
    """A rich console; wide when the output is not a terminal (logs, CI) so tables are not squeezed."""
    import sys

    from rich.console import Console
    return Console() if sys.stdout.isatty() else Console(width=160)


def default_method() -> str:
    import torch
    return "flash" if torch.cuda.is_available() else "naive"
