"""Where Triton kernels can run: a CUDA GPU, or the CPU through TRITON_INTERPRET=1."""
from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1 at import time)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def check_kernel_device(fn_name: str, *tensors: torch.Tensor) -> None:
    """Refuse devices the Triton kernels cannot run on, saying how to run them instead."""
    dev = tensors[0].device
    if dev.type == "cuda":
        return
    if dev.type == "cpu":
        if interpreting():
            return
        raise RuntimeError(
            f"{fn_name}: got CPU tensors, but Triton kernels need a CUDA GPU. To run the same kernels on "
            "the CPU (slowly, for testing), set the environment variable TRITON_INTERPRET=1 before "
            "importing hwattn (or triton); hwattn does not silently fall back to the reference."
        )
    raise ValueError(f"{fn_name}: tensors are on device {dev}, but hwattn needs 'cuda' (or 'cpu' with "
                     "TRITON_INTERPRET=1)")


def env_choice(name: str, choices: tuple[str, ...]) -> str:
    """The environment variable `name`: one of `choices`, the first when unset; anything else is refused."""
    value = os.environ.get(name, choices[0])
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def launch_fewer_stages(kernel, grid, *args, **kwargs):
    """kernel[grid](*args, **kwargs); a launch whose compiled kernel needs more shared memory than the GPU has
    (Triton raises OutOfResources when it loads it) is retried with one pipeline stage less, down to one.
    The interpreter never raises it (it compiles nothing)."""
    from triton.runtime.errors import OutOfResources
    while True:
        try:
            return kernel[grid](*args, **kwargs)
        except OutOfResources:
            if kwargs.get("num_stages", 3) <= 1:
                raise
            kwargs["num_stages"] = kwargs.get("num_stages", 3) - 1
