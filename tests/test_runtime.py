"""hwattn/_runtime.py: the launch fallback for configs that need more shared memory than the GPU has, and the
custom-op wrapper whose eager calls skip the dispatcher."""
import pytest
import torch
from triton.runtime.errors import OutOfResources

from hwattn._runtime import custom_op, launch_fewer_stages


class _FakeKernel:
    """Stands in for a jitted kernel: `kernel[grid](*args, **kw)` fails while num_stages > fits."""

    def __init__(self, fits):
        self.fits = fits
        self.calls = []

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.calls.append((grid, args, kw["num_stages"]))
            if kw["num_stages"] > self.fits:
                raise OutOfResources(kw["num_stages"] * 100_000, 232_448, "shared memory")
            return "launched"
        return launch


@pytest.mark.parametrize("stages,fits", [(3, 3), (3, 2), (4, 1)])
def test_retries_with_fewer_stages(stages, fits):
    k = _FakeKernel(fits)
    assert launch_fewer_stages(k, (7, 2), "x", 1, num_warps=4, num_stages=stages) == "launched"
    assert [c[2] for c in k.calls] == list(range(stages, fits - 1, -1))
    assert all(c[0] == (7, 2) and c[1] == ("x", 1) for c in k.calls)


def test_gives_up_at_one_stage():
    k = _FakeKernel(0)
    with pytest.raises(OutOfResources):
        launch_fewer_stages(k, (1,), num_stages=2)
    assert [c[2] for c in k.calls] == [2, 1]


class _WideKernel:
    """Fails while BLOCK_N > 64, at any stage count."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.calls.append((kw["BLOCK_N"], kw["num_stages"], grid))
            if kw["BLOCK_N"] > 64:
                raise OutOfResources(300_000, 232_448, "shared memory")
        return launch


def test_launch_fixed_drops_stages_then_halves_the_key_block():
    """configs.launch_fixed: stages down to one (launch_fewer_stages), then half BLOCK_N with 2 stages."""
    from hwattn.ops.flash.configs import launch_fixed

    k = _WideKernel()
    launch_fixed(k, lambda cfg: (cfg["BLOCK_N"],), ("x",), {"CAUSAL": True},
                 {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3})
    assert k.calls == [(128, 3, (128,)), (128, 2, (128,)), (128, 1, (128,)), (64, 2, (64,))]


def test_what_fits_is_remembered_per_launch_parameters():
    """A shape that needed fewer stages goes straight to them next time (a failed load costs ~1 ms a call);
    other launch parameters start again from what they ask for."""
    k = _FakeKernel(1)
    launch_fewer_stages(k, (1,), "x", num_warps=4, num_stages=3)
    assert [c[2] for c in k.calls] == [3, 2, 1]
    k.calls.clear()
    launch_fewer_stages(k, (5,), "y", num_warps=4, num_stages=3)
    assert [c[2] for c in k.calls] == [1]
    k.calls.clear()
    launch_fewer_stages(k, (1,), "x", num_warps=8, num_stages=2)
    assert [c[2] for c in k.calls] == [2, 1]
    k.calls.clear()
    half = torch.zeros(1, dtype=torch.float16)
    launch_fewer_stages(k, (1,), half, num_warps=4, num_stages=3)  # another element type: its own entry
    assert [c[2] for c in k.calls] == [3, 2, 1]


def test_launch_fixed_remembers_the_config_that_fit():
    from hwattn.ops.flash.configs import launch_fixed

    k = _WideKernel()
    cfg = {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3}
    launch_fixed(k, lambda c: (c["BLOCK_N"],), ("x",), {"CAUSAL": True}, cfg)
    assert k.calls[-1] == (64, 2, (64,)) and len(k.calls) == 4
    k.calls.clear()
    launch_fixed(k, lambda c: (c["BLOCK_N"],), ("x",), {"CAUSAL": True}, cfg)
    assert k.calls == [(64, 2, (64,))]
    assert cfg["BLOCK_N"] == 128  # the caller's config is not changed


def test_launch_fixed_twice_when_fewer_stages_fit():
    """A fixed config that fits with one stage less: the second launch goes straight to it (both memos)."""
    from hwattn.ops.flash.configs import launch_fixed
    k = _FakeKernel(2)
    cfg = {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3}
    launch_fixed(k, lambda c: (1,), ("x",), {"CAUSAL": True}, cfg)
    assert [c[2] for c in k.calls] == [3, 2]
    k.calls.clear()
    launch_fixed(k, lambda c: (1,), ("x",), {"CAUSAL": True}, cfg)
    assert [c[2] for c in k.calls] == [2]


# a toy op: the eager path must skip the dispatcher, everything else must see the op
_seen = []


@custom_op("hwattn_test::scaled")
def _scaled(x: torch.Tensor, factor: float, extra: list[torch.Tensor]) -> torch.Tensor:
    _seen.append(type(x))
    return x * factor + sum(extra)


@_scaled.op.register_fake
def _(x, factor, extra):
    return torch.empty_like(x)


def test_custom_op_eager_calls_skip_the_dispatcher():
    x, y = torch.randn(5), torch.randn(5)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = _scaled(x, 2.0, [y])
    torch.testing.assert_close(out, x * 2.0 + y)
    names = {e.name for e in prof.events()}
    assert not any("hwattn_test::scaled" in n for n in names), names
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        torch.testing.assert_close(_scaled.op(x, 2.0, [y]), out)  # the op itself: a profiled op call
    assert any("hwattn_test::scaled" in e.name for e in prof.events())


def test_custom_op_under_fake_tensors_modes_and_compile_is_the_op():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    _seen.clear()
    with FakeTensorMode() as mode:
        fx = mode.from_tensor(torch.randn(3))
        assert _scaled(fx, 2.0, []).shape == (3,)
    assert _seen == []  # the fake ran, not the function

    class Recorder(TorchDispatchMode):
        ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    x = torch.randn(4)
    with Recorder():
        _scaled(x, 3.0, [x])
    assert any("hwattn_test.scaled" in o for o in Recorder.ops), Recorder.ops

    targets = []

    def backend(gm, example_inputs):
        targets.extend(str(n.target) for n in gm.graph.nodes)
        return gm

    compiled = torch.compile(lambda t: _scaled(t, 2.0, [t]) + 1, backend=backend, fullgraph=True)
    torch.testing.assert_close(compiled(x), x * 3.0 + 1)
    assert any("hwattn_test.scaled" in t for t in targets), targets
