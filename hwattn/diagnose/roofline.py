"""The roofline PNG: log-log FLOP/s against FLOP/byte, measured ceilings drawn, each op a point."""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import _format as fmt
from ._ceilings import DTYPE_LABELS, Ceilings

__all__ = ["plot_roofline", "ModelPoint"]

_COLORS = {"memory-bound": "tab:blue", "compute-bound": "tab:green", "overhead-bound": "tab:orange"}


@dataclass
class ModelPoint:
    """A point from a model rather than a measurement (drawn hollow): e.g. the attention IO model."""
    label: str
    intensity: float      # FLOP/byte
    flops_per_s: float    # where it sits (usually the attainable roof at that intensity)


def plot_roofline(ceilings: Ceilings, items, path: str, title: str | None = None) -> str:
    """Write a roofline PNG to `path` and return the path.

    items: `Report`s and `Profile`s (filled points at their measured FLOP/s, coloured by verdict) and
    `ModelPoint`s (hollow). Ops without FLOPs sit at the left edge, at the height their achieved
    bandwidth would give at that intensity, and say so in their label.
    """
    if not isinstance(ceilings, Ceilings):
        raise TypeError(f"ceilings must be a hwattn.diagnose.Ceilings, got {type(ceilings).__name__}")
    if not isinstance(path, str) or not path:
        raise TypeError(f"path must be a non-empty str, got {path!r}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ._profile import Profile
    from ._verdict import Report

    points = []  # (label, x, y, color, hollow)
    for item in items:
        if isinstance(item, Report):
            p, label = item.profile, item.verdict.label
        elif isinstance(item, Profile):
            p, label = item, f"{item.bound}-bound (roofline)"
        elif isinstance(item, ModelPoint):
            points.append((item.label, item.intensity, item.flops_per_s, "tab:gray", True))
            continue
        else:
            raise TypeError(f"items must be Report, Profile or ModelPoint, got {type(item).__name__}")
        points.append((f"{p.name}: {label}", p.intensity, p.achieved_flops, _COLORS.get(label, "tab:purple"),
                       False, p.achieved_bandwidth))
    finite = [pt[1] for pt in points if pt[1] > 0 and math.isfinite(pt[1])]
    ridges = [v / ceilings.bandwidth for v in ceilings.matmul_flops.values()]
    xmin = min([1e-2] + [x / 3 for x in finite])
    xmax = max([1e4] + [x * 3 for x in finite] + [r * 10 for r in ridges])
    top = max(ceilings.matmul_flops.values())

    fig, ax = plt.subplots(figsize=(9, 6))
    xs = [xmin * (xmax / xmin) ** (i / 200) for i in range(201)]
    ax.plot(xs, [min(top, ceilings.bandwidth * x) for x in xs], color="black", lw=2,
            label=f"memory: {fmt.rate(ceilings.bandwidth, 'B/s')} (copy, read + write)")
    for key, peak in sorted(ceilings.matmul_flops.items(), key=lambda kv: kv[1]):
        ridge = peak / ceilings.bandwidth
        ax.plot([ridge, xmax], [peak, peak], lw=1.2, ls="--",
                label=f"{DTYPE_LABELS.get(key, key)}: {fmt.rate(peak, 'FLOP/s')} (ridge {ridge:.3g} FLOP/byte)")
    for i, pt in enumerate(points):
        label, x, y, color, hollow = pt[:5]
        if not (x > 0 and math.isfinite(x)):
            bw = pt[5] if len(pt) > 5 else ceilings.bandwidth
            x, y = xmin, bw * xmin
            label += f" (no FLOPs; {fmt.rate(bw, 'B/s')})"
        y = max(y, 1e-30)
        ax.scatter([x], [y], s=60, zorder=3, facecolors="none" if hollow else color, edgecolors=color)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4 - 12 * (i % 3)), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(xmin, xmax)
    ys = [pt[2] for pt in points if pt[2] > 0] + [ceilings.bandwidth * xmin]
    ax.set_ylim(min(ys + [top]) / 5, top * 3)
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("FLOP/s")
    ax.set_title(title or f"Roofline: {ceilings.name}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
