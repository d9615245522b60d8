"""Horace He's sweep: does runtime follow FLOPs, bytes, or neither? Labels from synthetic points, then
measured sweeps on this CPU, and the repeated-FMA Triton kernel checked in the interpreter."""
import math

import pytest
import torch

from hwattn.diagnose import scale_sweep, sweep
from hwattn.diagnose._sweep import SweepPoint, _label
from hwattn.testing import rel_err


def _pt(v, f, b, t):
    return SweepPoint(v, f, b, t)


@pytest.mark.parametrize("p0,p1,driver,follows", [
    (_pt(1, 1e6, 1e6, 1.0), _pt(2, 8e6, 1e6, 1.05), "flops", "neither"),   # FLOPs x8, time flat
    (_pt(1, 1e6, 1e6, 1.0), _pt(2, 8e6, 1.1e6, 7.0), "flops", "compute"),  # time follows FLOPs
    (_pt(1, 1e6, 1e6, 1.0), _pt(2, 1e6, 4e6, 3.5), "bytes", "bytes"),      # bytes x4, time x3.5
    (_pt(1, 1e6, 1e6, 1.0), _pt(2, 1e6, 4e6, 1.1), "bytes", "neither"),
    (_pt(1, 1e6, 1e6, 1.0), _pt(2, 4e6, 4e6, 3.9), "both", "work"),
    (_pt(1, 1e6, 1e6, 1.0), _pt(2, 4e6, 4e6, 1.2), "both", "neither"),     # overhead: work x4, time flat
])
def test_segment_labels(p0, p1, driver, follows):
    seg = _label(p0, p1)
    assert (seg.driver, seg.follows) == (driver, follows)
    assert seg.elasticity == pytest.approx(math.log(p1.time_s / p0.time_s) /
                                           math.log(max(p1.flops / p0.flops, p1.bytes / p0.bytes)))


def test_intensity_sweep_measures_and_labels(cpu_ceilings):
    # M = N = 1024, K = 1 .. 1024: FLOPs grow with K while the output stays 4 MiB. What the measured times
    # follow depends on the machine (on some CPUs even K = 1 -> 8 is compute-bound), so only what does not
    # depend on timing is asserted here; the labelling itself is pinned by test_segment_labels above.
    s = sweep("intensity", [1, 8, 256, 1024], device="cpu", size=1024, ceilings=cpu_ceilings, budget_s=0.05)
    assert [p.flops for p in s.points] == [2 * 1024 * 1024 * k for k in (1, 8, 256, 1024)]
    assert all(p.time_s > 0 for p in s.points)
    assert [seg.driver for seg in s.segments] == ["flops"] * 3
    assert all(seg.follows in ("neither", "compute", "bytes", "work") for seg in s.segments)
    assert s.ridge is not None and isinstance(s.summary(), str) and s.summary()


def test_bytes_sweep_holds_flops():
    s = sweep("bytes", [256, 4], device="cpu", size=256, budget_s=0.03)
    f0, f1 = (p.flops for p in s.points)
    assert f1 == pytest.approx(f0, rel=0.02)      # FLOPs held (rounding M = N to ints)
    assert s.points[1].bytes > 10 * s.points[0].bytes
    assert s.segments[0].driver == "bytes"


def test_scale_sweep_flags_overhead():
    def tiny(x):
        for _ in range(50):
            x = x * 1.0001
        return x
    s = scale_sweep(tiny, torch.randn(8), factors=(1, 16), budget_s=0.03)
    assert s.points[1].flops == 16 * s.points[0].flops
    assert s.follows == "neither" and "overhead" in s.summary()


def test_repeated_fma_kernel_matches_float64():
    from hwattn.diagnose._fma import FMA_A, FMA_B, repeated_fma
    x = torch.randn(3000) * 10                      # not a multiple of the 1024-element block
    for repeat in (0, 3):
        ref = x.double()
        for _ in range(repeat):
            ref = ref * FMA_A + FMA_B
        y = repeated_fma(x, repeat)
        assert y.shape == x.shape and rel_err(y, ref) <= 1e-6
    assert not torch.equal(repeated_fma(x, 1), x)


def test_fma_sweep_runs_in_the_interpreter():
    s = sweep("fma", [1, 4], device="cpu", size=2048, budget_s=0.0)
    assert [p.flops for p in s.points] == [2 * 2048, 8 * 2048]
    assert s.points[0].bytes == s.points[1].bytes == 8 * 2048


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(family="flops"), ValueError, "family"),
    (dict(family="intensity", values=[4]), ValueError, "at least 2"),
    (dict(family="intensity", values=[4, -1]), ValueError, "positive"),
    (dict(family="intensity", size=0), ValueError, "size"),
    (dict(family="intensity", dtype=torch.int64), TypeError, "dtype"),
    (dict(family=lambda v: None), ValueError, "values are required"),
    (dict(family=3, values=[1, 2]), TypeError, "family must be callable"),
])
def test_sweep_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sweep(**kwargs)


def test_scale_sweep_bad_input():
    with pytest.raises(ValueError, match="scale_args"):
        scale_sweep(torch.neg, torch.ones(2), scale_args=(1,))
    with pytest.raises(ValueError, match="factors"):
        scale_sweep(torch.neg, torch.ones(2), factors=(2,))
    with pytest.raises(TypeError, match="fn must be callable"):
        scale_sweep("neg", torch.ones(2))
