"""hwattn.diagnose: is an op bound by memory, compute or overhead?

    c = ceilings("cuda")                 # measured peaks: matmul FLOP/s per dtype, copy bandwidth (cached)
    p = profile(fn, *args)               # time + FLOPs + bytes -> achieved rates, intensity, roofline bound
    o = overhead(fn, *args)              # torch.profiler: device busy vs wall, launches, gaps
    r = report(fn, *args)                # all of it + verdict + advice, printed; plot="roofline.png"
    s = sweep("intensity")               # Horace He's sweep: does runtime follow FLOPs or bytes?
    m = attention_model(1, 16384, 16, 128, causal=True)   # naive five steps vs tiled kernel, bytes/FLOPs

Works on CPU (measured CPU ceilings) and CUDA. Names are imported on first use, so importing this package
(the `hwattn` CLI does, to build its parser) costs nothing beyond torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Ceilings": "_ceilings", "ceilings": "_ceilings", "cache_dir": "_ceilings",
    "Counts": "counting", "count": "counting",
    "Profile": "_profile", "profile": "_profile",
    "Overhead": "_overhead", "overhead": "_overhead",
    "Verdict": "_verdict", "Report": "_verdict", "verdict": "_verdict", "report": "_verdict",
    "Sweep": "_sweep", "sweep": "_sweep", "scale_sweep": "_sweep",
    "AttentionModel": "attention", "attention_model": "attention", "diagnose_attention": "attention",
    "plot_roofline": "roofline", "ModelPoint": "roofline",
    "labelled_suite": "suite", "run_suite": "suite",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
