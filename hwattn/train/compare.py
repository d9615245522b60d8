"""Quality against speed: train the same model on the same data and budget with each attention method."""
from __future__ import annotations

import csv
import dataclasses
import gc
import os
import traceback

import torch

from .. import registry
from ..tasks import make_task
from .config import TrainConfig
from .trainer import train

__all__ = ["compare", "method_options_for", "write_csv", "write_png", "print_table", "CSV_FIELDS"]

CSV_FIELDS = ("method", "status", "eval_acc", "best_eval_acc", "eval_loss", "tokens_per_s", "peak_mem_mb", "wall_s",
              "train_s", "steps", "tokens", "params", "stop_reason", "task", "seq_len", "device", "chance_acc",
              "majority_acc")


def method_options_for(method: str, options: dict) -> dict:
    """The options meant for `method`: "KEY" if the method declares KEY, and "METHOD.KEY" for this method."""
    spec = registry.get(method)
    out = {}
    for key, value in options.items():
        if "." in key:
            target, name = key.split(".", 1)
            if target == method:
                out[name] = value
        elif key in spec.options:
            out[key] = value
    return out


def _incompatible(method: str, kind: str) -> str | None:
    spec = registry.get(method)
    if kind == "lm" and not spec.supports_causal:
        return "skipped: needs causal attention (LM task), method is non-causal only"
    if kind == "cls" and not spec.supports_noncausal:
        return "skipped: needs non-causal attention (classification task), method is causal only"
    return None


def compare(base: TrainConfig, methods: list[str] | None = None, out_dir: str | None = None, *,
            progress: bool = True, console=None) -> list[dict]:
    """Run `train(base)` once per method, everything else equal (data, seed, steps, batch, model).

    Args:
        base: the shared configuration; its method is ignored and its method_options are filtered per method
            (`method_options_for`).
        methods: registered names; default every registered method. Unknown names raise ValueError.
        out_dir: each method's run goes to out_dir/<method> (log.csv, checkpoint); None writes nothing.
    Returns one dict per method: the `train` result plus "status" ("ok", "skipped: ..." or "error: ...").
    A method that fails does not stop the others; its error is printed and recorded.
    """
    if not isinstance(base, TrainConfig):
        raise TypeError(f"base must be a TrainConfig, got {type(base).__name__}")
    methods = registry.names() if methods is None else list(methods)
    if not methods:
        raise ValueError("methods must name at least one registered method")
    for m in methods:
        registry.get(m)                  # ValueError listing the valid names
    task = make_task(base.task, **base.task_options)
    rows = []
    for m in methods:
        row = {"method": m, "task": task.name, "seq_len": task.seq_len, "steps": 0}
        reason = _incompatible(m, task.kind)
        if reason:
            row["status"] = reason
            _say(console, f"[yellow]{m}: {reason}[/]")
            rows.append(row)
            continue
        cfg = dataclasses.replace(base, method=m, method_options=method_options_for(m, base.method_options),
                                  out_dir=None if out_dir is None else os.path.join(out_dir, m), resume=False)
        gc.collect()                     # the previous method's model must not count in this one's peak memory
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        try:
            row.update(train(cfg, progress=progress, console=console))
            row["status"] = "ok"
        except Exception as e:  # one broken method must not stop the comparison
            row["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            _say(console, f"[red]{m} failed[/]:\n{traceback.format_exc(limit=4)}")
        rows.append(row)
    return rows


def _say(console, text):
    if console is not None:
        console.print(text)
    else:
        print(text)


def _fmt(value, spec):
    if value is None or value == "" or (isinstance(value, float) and value != value):
        return ""
    return format(value, spec)


def write_csv(rows: list[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") if r.get(k) is not None else "" for k in CSV_FIELDS})


def write_png(rows: list[dict], path: str, title: str = "") -> bool:
    """Held-out accuracy against training throughput, one point per method that ran. False if none did."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("tokens_per_s") == r.get("tokens_per_s")]
    if not ok:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for r in ok:
        ax.scatter(r["tokens_per_s"], r["eval_acc"], s=40)
        ax.annotate(r["method"], (r["tokens_per_s"], r["eval_acc"]), textcoords="offset points", xytext=(5, 4))
    chance = ok[0].get("chance_acc")
    if chance:
        ax.axhline(chance, ls="--", c="gray", lw=1, label=f"chance {chance:.3f}")
    if ok[0].get("majority_acc"):
        ax.axhline(ok[0]["majority_acc"], ls=":", c="gray", lw=1, label=f"majority class {ok[0]['majority_acc']:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("training throughput (tokens/s)")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def print_table(rows: list[dict], title: str = "", console=None) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in ("method", "held-out acc", "best acc", "loss", "tokens/s", "peak mem (MiB)", "wall (s)", "steps",
                "status"):
        table.add_column(col, justify="left" if col in ("method", "status") else "right")
    for r in rows:
        mem = r.get("peak_mem_mb")
        table.add_row(r["method"], _fmt(r.get("eval_acc"), ".4f"), _fmt(r.get("best_eval_acc"), ".4f"),
                      _fmt(r.get("eval_loss"), ".3f"), _fmt(r.get("tokens_per_s"), ",.0f"),
                      "n/a (CPU)" if mem is None and r.get("status") == "ok" else _fmt(mem, ".0f"),
                      _fmt(r.get("wall_s"), ".1f"), str(r.get("steps", "")),
                      r["status"] if r["status"] != "ok" else f"ok ({r.get('stop_reason', '')})")
    if console is None:
        from ._args import make_console
        console = make_console()
    console.print(table)
