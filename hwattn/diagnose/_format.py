"""Numbers for people: units, and rich tables of ceilings and reports."""
from __future__ import annotations

import math


def rate(x: float | None, unit: str) -> str:
    """1.23e12, 'FLOP/s' -> '1.23 TFLOP/s'."""
    if x is None or (isinstance(x, float) and (math.isnan(x))):
        return "-"
    if math.isinf(x):
        return "inf"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def nbytes(x: float | None) -> str:
    if x is None:
        return "-"
    for scale, prefix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}"
    return f"{x:.0f} B"


def seconds(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 1:
        return f"{x:.3g} s"
    if x >= 1e-3:
        return f"{x * 1e3:.3g} ms"
    return f"{x * 1e6:.3g} us"


def intensity(x: float) -> str:
    if math.isinf(x):
        return "inf"
    return f"{x:.3g}"


def _escape(text: str) -> str:
    from rich.markup import escape
    return escape(text)


def console():
    """A rich console at least 140 columns wide (rich falls back to 80 when output is not a terminal)."""
    from rich.console import Console
    c = Console()
    if c.width < 140:
        c = Console(width=140)
    return c


def ceilings_table(c):
    from rich.table import Table

    from ._ceilings import DTYPE_LABELS
    t = Table(title=f"Measured ceilings: {c.name} ({c.device})" + ("  (from cache)" if c.from_cache else ""))
    t.add_column("what")
    t.add_column("measured", justify="right")
    t.add_column("ridge (FLOP/byte)", justify="right")
    t.add_column("how")
    for key, value in c.matmul_flops.items():
        n = c.matmul_sizes.get(key)
        t.add_row(f"matmul {DTYPE_LABELS.get(key, key)}", rate(value, "FLOP/s"), f"{value / c.bandwidth:.3g}",
                  f"torch matmul {n}x{n}x{n}, best sample" if n else "")
    t.add_row("copy bandwidth", rate(c.bandwidth, "B/s"), "", "device-to-device copy, read + write bytes, best sample")
    t.add_row("one tiny op", seconds(c.op_latency_s), "", "1-element add/mul/exp/sum (dispatch"
              + (" + launch)" if c.device.startswith("cuda") else ")"))
    return t


def reports_table(reports, title: str = "hwattn diagnose"):
    from rich.table import Table
    t = Table(title=title)
    for col, just in (("op", "left"), ("time", "right"), ("FLOP/s", "right"), ("B/s", "right"),
                      ("FLOP/byte", "right"), ("ridge", "right"), ("% of roofline", "right"),
                      ("overhead", "right"), ("verdict", "left")):
        t.add_column(col, justify=just)
    for r in reports:
        p, o, v = r.profile, r.overhead, r.verdict
        color = {"memory-bound": "cyan", "compute-bound": "green", "overhead-bound": "yellow"}.get(v.label, "")
        t.add_row(_escape(p.name), seconds(p.time_s), rate(p.achieved_flops, "FLOP/s"), rate(p.achieved_bandwidth, "B/s"),
                  intensity(p.intensity), f"{p.ridge:.3g}", f"{100 * p.roofline_fraction:.0f}%",
                  f"{100 * o.fraction:.0f}%" if o is not None else "-", f"[{color}]{v.label}[/{color}]")
    return t


def evidence_lines(reports):
    lines = []
    for r in reports:
        v = r.verdict
        lines.append(f"[bold]{_escape(r.profile.name)}[/bold]: {v.label}: {_escape(v.evidence)}. "
                     f"Advice: {v.advice}.")
        for note in v.notes:
            lines.append(f"    note: {_escape(note)}")
    return lines
