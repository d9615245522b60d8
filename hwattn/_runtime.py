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


# A launch that did not fit, per (kernel, launch parameters, first tensor's dtype): the stage count that did. A
# retry costs a failed module load (~1 ms a call on an H200), so each shape pays it once, not every call.
_FITTED: dict = {}


def fitted_key(kernel, args, kwargs) -> tuple:
    """What decides a launch's shared memory: the constexprs and configs (ints, bools, strings passed by name)
    and the element type (the first tensor argument's dtype: bf16 and fp8 tiles differ)."""
    dtype = next((a.dtype for a in args if isinstance(a, torch.Tensor)), None)
    return (kernel, dtype) + tuple((k, v) for k, v in kwargs.items() if isinstance(v, (int, str)))


def launch_fewer_stages(kernel, grid, *args, **kwargs):
    """kernel[grid](*args, **kwargs); a launch whose compiled kernel needs more shared memory than the GPU has
    (Triton raises OutOfResources when it loads it) is retried with one pipeline stage less, down to one, and
    the stage count that fits is remembered for the next launch with the same parameters.
    The interpreter never raises it (it compiles nothing)."""
    from triton.runtime.errors import OutOfResources
    key = fitted_key(kernel, args, kwargs)
    requested = kwargs.get("num_stages", 3)
    kwargs["num_stages"] = _FITTED.get(key, requested)
    while True:
        try:
            out = kernel[grid](*args, **kwargs)
            if kwargs["num_stages"] != requested:
                _FITTED[key] = kwargs["num_stages"]
            return out
        except OutOfResources:
            if kwargs["num_stages"] <= 1:
                raise
            kwargs["num_stages"] -= 1


def custom_op(name: str):
    """torch.library.custom_op(name) for a kernel wrapper, whose eager calls skip the dispatcher.

    torch.compile must see the wrapper as one opaque op (no graph breaks, no tracing into Triton launches), and
    tensor subclasses and dispatch modes (FakeTensor, FlopCounterMode, hwattn.diagnose's counting) must see it
    as an op too. A plain eager call gains nothing from the dispatch and pays ~100 us for it (measured on this
    project's CPU machine: 172 us a forward call through the op against 60 us direct; the whole forward at
    N = 2048 causal is ~370 us of GPU time on an H200), so it calls the function itself. Returns the caller;
    its `.op` is the registered op (register_fake on it)."""
    def wrap(fn):
        op = torch.library.custom_op(name, mutates_args=())(fn)
        dispatch_modes = getattr(torch._C, "_len_torch_dispatch_stack", None)

        def call(*args):
            # a subclass among the tensor arguments (lists of them are ours: block-mask tables) takes the op
            if torch.compiler.is_compiling() or dispatch_modes is None or dispatch_modes() > 0 or any(
                    type(a) is not torch.Tensor for a in args if isinstance(a, torch.Tensor)):
                return op(*args)
            return fn(*args)

        call.op = op
        call.__name__ = call.__qualname__ = fn.__name__
        call.__doc__ = fn.__doc__
        return call
    return wrap
