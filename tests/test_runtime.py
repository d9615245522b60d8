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
