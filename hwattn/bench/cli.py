"""`hwattn bench`: time hwattn and its peers over the standard grid; table, CSV and PNG."""
from __future__ import annotations

import argparse
import datetime
import os


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="small grid: N in {1024, 4096}")
    p.add_argument("--providers", default="all",
                   help="comma list from hwattn,sdpa_cudnn,sdpa_flash,sdpa_efficient,flex,naive (default all), or "
                        "hwattn_split / hwattn_fused (our backward forced to two launches / one, for comparison), "
                        "hwattn_persistent (the forward on the persistent tile schedule), hwattn_atomic (dQ by "
                        "atomics), hwattn_gluon / hwattn_auto / hwattn_portable (HWATTN_FWD_KERNEL=gluon / auto / "
                        "portable: the Gluon Hopper forward), hwattn_gluon_bwd (HWATTN_BWD_KERNEL=gluon: the Gluon "
                        "Hopper backward), fa4 (FlashAttention-4, if flash-attn-4 is installed)")
    p.add_argument("--d", default="64,128", help="head dims (default 64,128)")
    p.add_argument("--n", default=None, help="sequence lengths, comma list (default 512..16384)")
    p.add_argument("--causal", choices=["both", "yes", "no"], default="both")
    p.add_argument("--tokens", type=int, default=16384, help="B*N per config (default 16384)")
    p.add_argument("--hidden", type=int, default=2048, help="H*D per config (default 2048)")
    p.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    p.add_argument("--modes", default="fwd,bwd")
    p.add_argument("--rounds", type=int, default=None,
                   help="timing rounds per config, every provider each round, the order reversed every other "
                        "round; each provider keeps its fastest median (default 2 on a GPU, 1 on CPU)")
    p.add_argument("--out", default="results/bench", help="directory for bench.csv and bench.png")


def _ints(text, name):
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--{name}: expected a comma list of integers, got {text!r}")
    if not vals or any(v < 1 for v in vals):
        raise SystemExit(f"--{name}: expected positive integers, got {text!r}")
    return vals


def main(args) -> int:
    import torch
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from .attention import ALL_PROVIDERS, EXTRA_PROVIDERS, Config, best_of, geomean, plot, run_one, write_csv

    console = Console(width=None if Console().is_terminal else 130)
    providers = ALL_PROVIDERS if args.providers == "all" else [p.strip() for p in args.providers.split(",")]
    bad = [p for p in providers if p not in ALL_PROVIDERS + EXTRA_PROVIDERS]
    if bad:
        raise SystemExit(f"--providers: unknown {bad}; valid: {','.join(ALL_PROVIDERS + EXTRA_PROVIDERS)}")
    modes = tuple(m for m in args.modes.split(","))
    if any(m not in ("fwd", "bwd") for m in modes):
        raise SystemExit(f"--modes: expected fwd and/or bwd, got {args.modes!r}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    ds = _ints(args.d, "d")
    ns = _ints(args.n, "n") if args.n else ((1024, 4096) if args.quick else (512, 1024, 2048, 4096, 8192, 16384))
    causals = {"both": (False, True), "yes": (True,), "no": (False,)}[args.causal]
    if device.type == "cpu":
        # The Triton kernels run in the interpreter on CPU: only tiny shapes make sense, bf16 dots are wrong.
        console.print("[yellow]No GPU: CPU timings (Triton interpreter for hwattn); tiny grid, fp16; "
                      "numbers say nothing about GPU speed.[/]")
        dtype = torch.float16 if dtype == torch.bfloat16 else dtype
        ns = [n for n in ns if n <= 256] or [128, 256]
        args.tokens, args.hidden = min(args.tokens, 512), min(args.hidden, 128)
        providers = [p for p in providers if p in ("hwattn", "naive")]
    configs = [Config(d=d, n=n, causal=c, tokens=args.tokens, hidden=args.hidden) for d in ds for n in ns for c in causals]
    for c in configs:
        if c.hidden % c.d:
            raise SystemExit(f"--hidden {c.hidden} must be a multiple of every --d, got d={c.d}")
    rounds = args.rounds if args.rounds is not None else (2 if device.type == "cuda" else 1)
    if rounds < 1:
        raise SystemExit(f"--rounds: expected a positive integer, got {rounds}")
    results = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=len(configs) * len(providers) * rounds)
        for cfg in configs:
            best = {}
            for r in range(rounds):
                # reversed every other round: no provider is always the one timed right after compiling
                for prov in (providers if r % 2 == 0 else providers[::-1]):
                    progress.update(task, description=f"{prov} D={cfg.d} N={cfg.n} "
                                                      f"{'causal' if cfg.causal else 'full'} (round {r + 1})")
                    res = run_one(prov, cfg, device, dtype, modes)
                    best[prov] = res if prov not in best else best_of(best[prov], res)
                    progress.advance(task)
            results.extend(best[p] for p in providers)

    os.makedirs(args.out, exist_ok=True)
    csv_path, png_path = os.path.join(args.out, "bench.csv"), os.path.join(args.out, "bench.png")
    write_csv(results, csv_path)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    stamp = datetime.date.today().isoformat()
    plot(results, png_path, f"{name}, {args.dtype}, B*N={args.tokens}, H*D={args.hidden}, {stamp}")

    peers = [p for p in providers if not p.startswith("hwattn") and p != "naive"]  # hwattn_split is ours too
    table = Table(title=f"attention TFLOP/s on {name} ({args.dtype}); ratio = hwattn / best peer")
    for col in ("D", "N", "causal", *(f"{p} fwd/bwd" for p in providers), "fwd ratio", "bwd ratio"):
        table.add_column(col, justify="right")
    by = {(r.provider, r.d, r.n, r.causal): r for r in results}
    anchors = [p for p in ("sdpa_cudnn", "fa4") if p in providers]  # each gets its own geomean line
    ratios = {"fwd": [], "bwd": [], **{f"{m}_{a}": [] for a in anchors for m in ("fwd", "bwd")}}
    for cfg in configs:
        key = (cfg.d, cfg.n, int(cfg.causal))
        cells = []
        for p in providers:
            r = by[(p, *key)]
            cells.append(f"{r.fwd_tflops:.0f}/{r.bwd_tflops:.0f}" if not r.error else "[dim]" + r.error[:24] + "[/]")
        ratio_cells = []
        mine = by.get(("hwattn", *key))
        for mode in ("fwd", "bwd"):
            best = max((getattr(by[(p, *key)], f"{mode}_tflops") for p in peers
                        if getattr(by[(p, *key)], f"{mode}_tflops") == getattr(by[(p, *key)], f"{mode}_tflops")),
                       default=float("nan"))
            if mine is not None and best == best and best > 0:
                ratio = getattr(mine, f"{mode}_tflops") / best
                ratios[mode].append(ratio)
                ratio_cells.append(f"{ratio:.2f}")
            else:
                ratio_cells.append("-")
            for anchor in anchors:
                peer = by[(anchor, *key)]
                if mine is not None and not mine.error and not peer.error:
                    ratio = getattr(mine, f"{mode}_tflops") / getattr(peer, f"{mode}_tflops")
                    ratios[f"{mode}_{anchor}"].append(ratio)
        table.add_row(str(cfg.d), str(cfg.n), "yes" if cfg.causal else "no", *cells, *ratio_cells)
    console.print(table)
    if ratios["fwd"]:
        console.print(f"geomean hwattn / best peer: fwd {geomean(ratios['fwd']):.3f}, bwd {geomean(ratios['bwd']):.3f}")
    for anchor in anchors:
        if ratios[f"fwd_{anchor}"]:
            console.print(f"geomean hwattn / {anchor}: fwd {geomean(ratios[f'fwd_{anchor}']):.3f}, "
                          f"bwd {geomean(ratios[f'bwd_{anchor}']):.3f} ({len(ratios[f'fwd_{anchor}'])} configs)")
    for r in results:
        if r.error and not r.error.startswith("skipped"):
            console.print(f"[red]{r.provider} D={r.d} N={r.n} causal={r.causal}: {r.error}[/]")
    console.print(f"wrote {csv_path} and {png_path}")
    return 0
