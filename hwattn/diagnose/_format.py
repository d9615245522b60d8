"""Numbers for people: units, and rich tables of ceilings and reports."""
from __future__ import annotations

import math
import re


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


def _has_rich() -> bool:
    try:
        import rich  # noqa: F401
        return True
    except ImportError:  # e.g. a bare GPU image: plain text instead
        return False


def _escape(text: str) -> str:
    if not _has_rich():
        return text
    from rich.markup import escape
    return escape(text)


_MARKUP = re.compile(r"\[/?[a-z ]+\]")


class _PlainTable:
    """The subset of rich.table.Table used here, rendered as aligned plain text."""

    def __init__(self, title: str = ""):
        self.title, self.columns, self.rows, self.right = title, [], [], []

    def add_column(self, name: str, justify: str = "left"):
        self.columns.append(name)
        self.right.append(justify == "right")

    def add_row(self, *cells):
        self.rows.append([_MARKUP.sub("", str(c)) for c in cells])

    def __str__(self) -> str:
        widths = [max([len(c)] + [len(r[i]) for r in self.rows]) for i, c in enumerate(self.columns)]
        def line(cells):
            return "  ".join(c.rjust(w) if right else c.ljust(w) for c, w, right in zip(cells, widths, self.right))
        return "\n".join([self.title, line(self.columns), line(["-" * w for w in widths])] +
                         [line(r) for r in self.rows])


class _PlainConsole:
    def print(self, obj="", *args, **kwargs):
        print(_MARKUP.sub("", str(obj)))


def Table(title: str = ""):
    """A rich Table, or a plain-text stand-in when rich is not installed."""
    if _has_rich():
        from rich.table import Table as RichTable
        return RichTable(title=title)
    return _PlainTable(title)


def console():
    """A rich console at least 140 columns wide (rich falls back to 80 when output is not a terminal), or a
    plain-text one when rich is not installed."""
    if not _has_rich():
        return _PlainConsole()
    from rich.console import Console
    c = Console()
    if c.width < 140:
        c = Console(width=140)
    return c


def ceilings_table(c):
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
