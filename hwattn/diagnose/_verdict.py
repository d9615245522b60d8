"""The verdict: memory-bound, compute-bound or overhead-bound, with the numbers behind it and the advice."""
from __future__ import annotations

from dataclasses import dataclass, field

from .._checks import check_bool
from . import _format as fmt
from ._device import device_of, resolve_device
from ._ceilings import DTYPE_LABELS
from ._overhead import OVERHEAD_BOUND, Overhead, overhead as run_overhead
from ._profile import Profile, _check_ceilings, check_callable, profile as run_profile

__all__ = ["Verdict", "Report", "verdict", "report", "ADVICE", "LOW_EFFICIENCY"]

ADVICE = {
    "memory-bound": "read and write less: fuse ops so intermediates stay on chip (tiling), use smaller dtypes",
    "compute-bound": "better kernels (tensor cores, no wasted FLOPs) or lower precision (bf16, fp8)",
    "overhead-bound": "fewer, larger ops: fuse them (torch.compile), CUDA graphs on GPU, bigger batches",
}
LOW_EFFICIENCY = 0.2  # below this share of the roofline bound, say the kernel itself is slow


@dataclass
class Verdict:
    label: str      # 'memory-bound' | 'compute-bound' | 'overhead-bound'
    evidence: str   # the numbers behind it
    advice: str     # the essay's one line
    notes: list = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.label}: {self.evidence}. Advice: {self.advice}."


def verdict(prof: Profile, ovh: Overhead | None = None) -> Verdict:
    """Decide from a `Profile` (and its `Overhead`, if measured).

    overhead-bound when overhead is >= 50% of wall time; otherwise the roofline decides: memory-bound when
    bytes / bandwidth >= FLOPs / peak (intensity at or below the ridge point), else compute-bound.
    """
    if not isinstance(prof, Profile):
        raise TypeError(f"prof must be a hwattn.diagnose.Profile, got {type(prof).__name__}")
    if ovh is not None and not isinstance(ovh, Overhead):
        raise TypeError(f"ovh must be a hwattn.diagnose.Overhead or None, got {type(ovh).__name__}")
    notes = []
    peak_name = DTYPE_LABELS.get(prof.peak_key, prof.peak_key)
    roofline = (f"intensity {fmt.intensity(prof.intensity)} FLOP/byte vs ridge {prof.ridge:.3g} "
                f"({fmt.rate(prof.peak_flops, 'FLOP/s')} {peak_name} / {fmt.rate(prof.bandwidth, 'B/s')})")
    if ovh is not None and ovh.fraction >= OVERHEAD_BOUND:
        label = "overhead-bound"
        evidence = (f"{ovh.evidence()}; the roofline bound is {fmt.seconds(prof.bound_time_s)} of "
                    f"{fmt.seconds(prof.time_s)} measured")
    elif prof.bound == "memory":
        label = "memory-bound"
        evidence = (f"{roofline}: moves {fmt.nbytes(prof.bytes)} ({prof.bytes_source}) at "
                    f"{fmt.rate(prof.achieved_bandwidth, 'B/s')} = {100 * prof.achieved_bandwidth / prof.bandwidth:.0f}% "
                    f"of the measured copy bandwidth")
    else:
        label = "compute-bound"
        evidence = (f"{roofline}: {fmt.rate(prof.flops, 'FLOP')} ({prof.flops_source}) at "
                    f"{fmt.rate(prof.achieved_flops, 'FLOP/s')} = {100 * prof.achieved_flops / prof.peak_flops:.0f}% "
                    f"of the measured peak")
    if label != "overhead-bound":
        if ovh is not None and ovh.fraction >= 0.2:
            notes.append(f"overhead is {100 * ovh.fraction:.0f}% of wall time ({ovh.evidence()})")
        if prof.roofline_fraction < LOW_EFFICIENCY:
            notes.append(f"runs at {100 * prof.roofline_fraction:.0f}% of its roofline bound: the kernel "
                         f"itself is slow (neither bandwidth nor compute is saturated)")
        elif prof.roofline_fraction > 1.15:
            notes.append(f"faster than its roofline bound ({100 * prof.roofline_fraction:.0f}%): data came from "
                         f"cache, or the given/counted bytes overstate what reaches memory")
    if prof.flops == 0 and prof.bytes == 0:
        notes.append("no FLOPs and no bytes counted: pass flops= and bytes= for work torch cannot see")
    return Verdict(label=label, evidence=evidence, advice=ADVICE[label], notes=notes)


@dataclass
class Report:
    """profile + overhead + verdict of one op."""
    profile: Profile
    overhead: Overhead | None
    verdict: Verdict

    def to_dict(self) -> dict:
        return {"profile": self.profile.to_dict(),
                "overhead": self.overhead.to_dict() if self.overhead is not None else None,
                "verdict": {"label": self.verdict.label, "evidence": self.verdict.evidence,
                            "advice": self.verdict.advice, "notes": list(self.verdict.notes)}}

    def __str__(self) -> str:
        p = self.profile
        return (f"{p.name}: {fmt.seconds(p.time_s)}, {fmt.rate(p.achieved_flops, 'FLOP/s')}, "
                f"{fmt.rate(p.achieved_bandwidth, 'B/s')}, {fmt.intensity(p.intensity)} FLOP/byte -> {self.verdict}")

    def print(self, console=None) -> None:
        console = console or fmt.console()
        console.print(fmt.reports_table([self], title=f"hwattn diagnose on {self.profile.device}"))
        for line in fmt.evidence_lines([self]):
            console.print(line)


def report(fn, *args, flops=None, bytes=None, name: str | None = None, device=None, ceilings=None,
           plot: str | None = None, show: bool = True, measure_overhead: bool = True,
           dtype=None, budget_s: float | None = None, **kwargs) -> Report:
    """Diagnose any callable: is fn(*args, **kwargs) bound by memory, compute or overhead?

    Profiles it (`profile`), measures its overhead under torch.profiler (`overhead`), decides (`verdict`),
    prints a rich table with the evidence and advice when `show`, and writes a roofline PNG when `plot`
    is a path. flops/bytes/name/device/ceilings/dtype/budget_s are as for `profile`; other keyword
    arguments go to fn. measure_overhead=False skips the profiler run (the verdict is then the roofline's).
    Example: hwattn.diagnose.report(torch.softmax, x, dim=-1)
    Returns a `Report` (profile, overhead, verdict).
    """
    check_callable("fn", fn)
    check_bool("show", show)
    check_bool("measure_overhead", measure_overhead)
    if plot is not None and not isinstance(plot, str):
        raise TypeError(f"plot must be a file path (str) or None, got {type(plot).__name__}")
    dev = device_of(args, kwargs, fn) if device is None else resolve_device(device)
    c = _check_ceilings(ceilings, dev)
    prof = run_profile(fn, *args, flops=flops, bytes=bytes, name=name, device=dev, ceilings=c, dtype=dtype,
                       budget_s=budget_s, **kwargs)
    ovh = run_overhead(fn, *args, prof=prof, device=dev, ceilings=c, **kwargs) if measure_overhead else None
    rep = Report(prof, ovh, verdict(prof, ovh))
    if show:
        rep.print()
    if plot:
        from .roofline import plot_roofline
        plot_roofline(c, [rep], plot)
    return rep
