"""hwattn/_runtime.py: the launch fallback for configs that need more shared memory than the GPU has."""
import pytest
from triton.runtime.errors import OutOfResources

from hwattn._runtime import launch_fewer_stages


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


def test_launch_fixed_drops_stages_then_halves_the_key_block():
    """configs.launch_fixed: stages down to one (launch_fewer_stages), then half BLOCK_N with 2 stages."""
    from hwattn.ops.flash.configs import launch_fixed

    class Kernel:
        def __init__(self):
            self.calls = []

        def __getitem__(self, grid):
            def launch(*args, **kw):
                self.calls.append((kw["BLOCK_N"], kw["num_stages"], grid))
                if kw["BLOCK_N"] > 64:
                    raise OutOfResources(300_000, 232_448, "shared memory")
            return launch

    k = Kernel()
    launch_fixed(k, lambda cfg: (cfg["BLOCK_N"],), ("x",), {"CAUSAL": True},
                 {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3})
    assert k.calls == [(128, 3, (128,)), (128, 2, (128,)), (128, 1, (128,)), (64, 2, (64,))]
