"""`hwattn diagnose {ceilings,attention,op,suite,sweep}`: is an op bound by memory, compute or overhead?

Kept light on purpose: the `hwattn` command imports this module to build its parser, so everything heavy
(the profiler, matplotlib, rich, Triton) is imported inside `main`.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import json
import re
import sys

import torch

__all__ = ["add_arguments", "main", "parse_shape", "parse_dtype", "resolve_callable", "parse_kwarg"]

_DTYPES = {"fp64": torch.float64, "float64": torch.float64, "double": torch.float64,
           "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
           "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def parse_shape(text: str) -> tuple:
    """'4096x4096', '4096,4096', '(2, 3, 4)' -> a tuple of positive ints; ValueError if it does not parse."""
    if not isinstance(text, str):
        raise TypeError(f"shape must be a str, got {type(text).__name__}")
    body = text.strip().strip("()[]").strip().rstrip(",")
    parts = re.split(r"\s*[xX,*]\s*", body) if re.fullmatch(r"\d+(\s*[xX,*]\s*\d+)*", body) else []
    if not parts or not all(int(p) > 0 for p in parts):
        raise ValueError(f"--shape {text!r} does not parse: it needs positive integers separated by 'x' or ',', "
                         f"e.g. 4096x4096")
    return tuple(int(p) for p in parts)


def parse_dtype(text: str) -> torch.dtype:
    if not isinstance(text, str) or text.lower() not in _DTYPES:
        raise ValueError(f"--dtype {text!r} is not supported; use one of {', '.join(sorted(set(_DTYPES)))}")
    return _DTYPES[text.lower()]


def parse_kwarg(text: str) -> tuple:
    """'dim=-1' -> ('dim', -1): the value is a Python literal, else kept as a string."""
    if not isinstance(text, str) or "=" not in text or not text.split("=", 1)[0].strip().isidentifier():
        raise ValueError(f"--kwarg {text!r} does not parse: it needs name=value, e.g. dim=-1")
    key, value = (s.strip() for s in text.split("=", 1))
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def resolve_callable(name: str):
    """'torch.softmax', 'torch.nn.functional.gelu', 'hwattn.reference.attention' -> the callable."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", name):
        raise ValueError(f"op {name!r} is not a dotted name like torch.softmax")
    parts = name.split(".")
    obj, err = None, None
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError as e:
            err = e
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            raise ValueError(f"op {name!r} not found: {'.'.join(parts[:i])} has no {'.'.join(parts[i:])}") from None
        break
    else:
        raise ValueError(f"op {name!r} not found: cannot import {parts[0]} ({err})")
    if not callable(obj):
        raise TypeError(f"op {name!r} is a {type(obj).__name__}, not a callable")
    return obj


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="diagnose_command", required=True,
                                metavar="{ceilings,attention,op,suite,sweep}")

    p = sub.add_parser("ceilings", help="measure (or load cached) matmul FLOP/s per dtype and copy bandwidth")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--refresh", action="store_true", help="measure again even if cached")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache file")
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the ceilings as JSON")
    p.add_argument("--plot", default=None, metavar="PATH", help="write the bare roofline PNG")

    p = sub.add_parser("attention", help="naive vs tiled attention: IO model, measurements, verdicts")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--n", type=int, default=None, help="sequence length (default: 16384 on CUDA, 1024 on CPU)")
    p.add_argument("--heads", type=int, default=None, help="default: 16 on CUDA, 4 on CPU")
    p.add_argument("--d", type=int, default=None, help="head dim (default: 128 on CUDA, 64 on CPU)")
    p.add_argument("--causal", action="store_true")
    p.add_argument("--dtype", default=None, help="bf16, fp16, fp32 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--impl", default="naive,hwattn,sdpa", help="comma-separated: naive, hwattn, sdpa")
    p.add_argument("--block-m", type=int, default=128, help="tiled model's query block (default 128)")
    p.add_argument("--block-n", type=int, default=64, help="tiled model's key block (default 64)")
    p.add_argument("--model-only", action="store_true", help="print the IO model, measure nothing")
    p.add_argument("--device", default=None)
    p.add_argument("--plot", default=None, metavar="PATH", help="write a roofline PNG")
    p.add_argument("--json", default=None, metavar="PATH", help="write the reports as JSON")

    p = sub.add_parser("op", help="diagnose any torch function on random inputs, e.g. torch.softmax")
    p.add_argument("name", help="dotted name of a callable, e.g. torch.softmax or torch.matmul")
    p.add_argument("--shape", action="append", required=True,
                   help="shape of one random tensor argument, e.g. 4096x4096; repeat for more arguments")
    p.add_argument("--kwarg", action="append", default=[], help="keyword argument name=value, e.g. dim=-1")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--flops", type=float, default=None, help="FLOPs per call (default: counted)")
    p.add_argument("--bytes", type=float, default=None, help="bytes per call (default: counted)")
    p.add_argument("--device", default=None)
    p.add_argument("--plot", default=None, metavar="PATH", help="write a roofline PNG")
    p.add_argument("--json", default=None, metavar="PATH", help="write the report as JSON")

    p = sub.add_parser("suite", help="the labelled suite: copy, elementwise, matmul, tiny-op loop")
    p.add_argument("--device", default=None)
    p.add_argument("--plot", default=None, metavar="PATH", help="write a roofline PNG")
    p.add_argument("--json", default=None, metavar="PATH", help="write the reports as JSON")

    p = sub.add_parser("sweep", help="Horace He's sweep: does runtime follow FLOPs, bytes, or neither?")
    p.add_argument("family", choices=["intensity", "bytes", "fma"],
                   help="intensity: matmul K grows (FLOPs up, bytes held); bytes: FLOPs held, bytes up; "
                        "fma: repeated multiply-add in one Triton kernel")
    p.add_argument("--values", default=None, help="comma-separated knob values (K, or repeats for fma)")
    p.add_argument("--size", type=int, default=None, help="M=N (intensity), cube root of FLOPs/2 (bytes), "
                                                         "elements (fma)")
    p.add_argument("--dtype", default=None, help="matmul dtype (default: fp32 on CPU, bf16 on CUDA)")
    p.add_argument("--device", default=None)


def _write_json(path, obj):
    if path:
        with open(path, "w") as f:
            json.dump(obj, f, indent=2, default=str)
        print(f"wrote {path}")


def main(args) -> int:
    try:
        return _main(args)
    except (ValueError, TypeError) as e:  # bad input: one clear line, not a traceback
        print(f"hwattn diagnose: error: {e}", file=sys.stderr)
        return 2


def _main(args) -> int:
    from . import _format as fmt
    from ._ceilings import ceilings
    from ._device import resolve_device
    device = resolve_device(args.device or _default_device())
    console = fmt.console()
    cmd = args.diagnose_command

    if cmd == "ceilings":
        c = ceilings(device, refresh=args.refresh, cache=not args.no_cache, quick=args.quick)
        console.print(fmt.ceilings_table(c))
        if c.path:
            console.print(f"cache: {c.path}")
        _write_json(args.json, c.to_json())
        if args.plot:
            from .roofline import plot_roofline
            print(f"wrote {plot_roofline(c, [], args.plot)}")
        return 0

    if cmd == "attention":
        from .attention import diagnose_attention
        dtype = parse_dtype(args.dtype) if args.dtype else None
        c = None if args.model_only else ceilings(device)
        if args.model_only:
            from .attention import attention_model
            cuda = device.type == "cuda"
            model = attention_model(args.batch, args.n if args.n is not None else (16384 if cuda else 1024),
                                    args.heads if args.heads is not None else (16 if cuda else 4),
                                    args.d if args.d is not None else (128 if cuda else 64), args.causal,
                                    dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32),
                                    block_m=args.block_m, block_n=args.block_n)
            console.print(model.table())
            return 0
        diag = diagnose_attention(args.batch, args.n, args.heads, args.d, args.causal, dtype, args.impl, device,
                                  c, block_m=args.block_m, block_n=args.block_n, show=False, plot=args.plot)
        diag.print(console)
        if args.plot:
            console.print(f"wrote {args.plot}")
        _write_json(args.json, {impl: r.to_dict() for impl, r in diag.reports.items()})
        return 1 if diag.errors else 0

    if cmd == "op":
        from ._verdict import report
        fn = resolve_callable(args.name)
        dtype = parse_dtype(args.dtype)
        shapes = [parse_shape(s) for s in args.shape]
        kwargs = dict(parse_kwarg(k) for k in args.kwarg)
        tensors = [torch.randn(s, device=device).to(dtype) for s in shapes]
        c = ceilings(device)
        rep = report(fn, *tensors, flops=args.flops, bytes=args.bytes, name=args.name, device=device,
                     ceilings=c, show=False, plot=args.plot, **kwargs)
        rep.print(console)
        if args.plot:
            console.print(f"wrote {args.plot}")
        _write_json(args.json, rep.to_dict())
        return 0

    if cmd == "suite":
        from .suite import run_suite
        c = ceilings(device)
        results = run_suite(device, c, show=True)
        if args.plot:
            from .roofline import plot_roofline
            console.print(f"wrote {plot_roofline(c, [r for _, r, _ in results], args.plot)}")
        _write_json(args.json, [{"case": case.name, "expected": case.expected, "right": ok, **rep.to_dict()}
                                for case, rep, ok in results])
        return 0 if all(ok for _, _, ok in results) else 1

    if cmd == "sweep":
        from ._sweep import sweep
        values = None
        if args.values:
            try:
                values = [float(v) for v in args.values.split(",") if v.strip()]
            except ValueError:
                raise ValueError(f"--values {args.values!r} does not parse: comma-separated numbers, e.g. 1,2,4")
        dtype = parse_dtype(args.dtype) if args.dtype else None
        s = sweep(args.family, values, device=device, dtype=dtype, size=args.size, ceilings=ceilings(device))
        t = fmt.Table(title=f"{s.family} sweep on {device}")
        for col in ("value", "FLOPs", "bytes", "FLOP/byte", "time", "runtime follows (from previous)"):
            t.add_column(col, justify="right")
        labels = [""] + [f"{seg.follows} (x{seg.end.time_s / seg.start.time_s:.2g})" for seg in s.segments]
        for p, lab in zip(s.points, labels):
            t.add_row(f"{p.value:g}", fmt.rate(p.flops, "FLOP"), fmt.nbytes(p.bytes), fmt.intensity(p.intensity),
                      fmt.seconds(p.time_s), lab)
        console.print(t)
        console.print(s.summary())
        return 0
    raise ValueError(f"unknown diagnose command {cmd!r}")
