"""Helpers the tests (and GPU check scripts) share: relative error against a float64 reference."""
from __future__ import annotations

import contextlib

import torch

from ._runtime import interpreting

# ||out - ref|| / ||ref|| bounds by the dtype of the computation (DEVELOPERS.md).
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; inf if out has NaN/inf where ref is finite."""
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    if out64.shape != ref64.shape:
        raise ValueError(f"shape mismatch: out {tuple(out64.shape)} vs ref {tuple(ref64.shape)}")
    if not torch.isfinite(out64).all():
        return float("inf")
    denom = ref64.norm()
    num = (out64 - ref64).norm()
    if denom == 0:
        return float(num)
    return float(num / denom)


def assert_rel_close(name: str, out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype,
                     bound: float | None = None) -> float:
    """Assert ||out - ref|| / ||ref|| <= bound (default: the dtype's bound). NaN never passes."""
    bound = TOLERANCE[dtype] if bound is None else bound
    err = rel_err(out, ref)
    assert err <= bound, f"{name}: relative error {err:.3e} > {bound:.1e} ({dtype})"
    return err


@contextlib.contextmanager
def interpreter_fp8_rounding():
    """Make Triton's CPU interpreter round float -> float8e4nv as the GPU does, for the scope of a test.

    The interpreter's downcast (triton.runtime.interpreter._convert_float, triton 3.9) rounds ties away
    from zero, drops the carry when rounding overflows the mantissa (0.4995 -> 0.25 instead of 0.5) and
    rounds subnormals twice: 3% of uniform [0, 1) values come out wrong (triton-lang/triton#8322; fixes
    open as #9808, #11897). The GPU converts with cvt.rn.satfinite: round to nearest even, saturating at
    448. Inside this context e4m3 downcasts from fp32/fp16 go through torch's RTNE conversion (clamped to
    +-448 first, as satfinite); everything else is the interpreter's own. A no-op when not interpreting.
    """
    if not interpreting():
        yield
        return
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    original = interpreter._convert_float
    rtz = interpreter._ir.ROUNDING_MODE.RTZ
    np_types = {tl.float32: np.float32, tl.float16: np.float16}

    def convert(input, input_dtype, output_dtype, rounding_mode):
        if output_dtype != tl.float8e4nv or input_dtype not in np_types or rounding_mode == rtz:
            return original(input, input_dtype, output_dtype, rounding_mode)
        x = torch.from_numpy(np.ascontiguousarray(input).view(np_types[input_dtype]).astype(np.float32))
        return x.clamp(-448.0, 448.0).to(torch.float8_e4m3fn).view(torch.uint8).numpy().reshape(input.shape)

    interpreter._convert_float = convert
    try:
        yield
    finally:
        interpreter._convert_float = original


@contextlib.contextmanager
def interpreter_bf16():
    """Make Triton's CPU interpreter compute bfloat16 as the GPU does, for the scope of a test.

    The interpreter (triton 3.9) keeps bf16 tensors as their raw uint16 bits, and
    - its create_dot multiplies those bits as integers, so every bf16 tl.dot is garbage;
    - its fp32 -> bf16 downcast truncates (rounds towards zero) where the GPU rounds to nearest even: a bias of
      up to 2^-8 with the sign of the value, which adds up in sums of positive terms.
    Inside this context bf16 dot operands are widened to fp32 first (exact: bf16 is the top half of an fp32) and
    multiplied with the fp32 accumulator, as the tensor core does, and fp32 -> bf16 downcasts go through torch's
    round-to-nearest-even conversion (an explicitly requested rounding mode is left to the interpreter).
    Everything else is the interpreter's own. A no-op when not interpreting.
    """
    if not interpreting():
        yield
        return
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    original_dot, original_convert = builder.create_dot, interpreter._convert_float

    def widen(t):
        if t.dtype.scalar != tl.bfloat16:
            return t
        bits = np.ascontiguousarray(t.data).view(np.uint16).astype(np.uint32) << 16
        return interpreter.TensorHandle(bits.view(np.float32), tl.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original_dot(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    def convert(input, input_dtype, output_dtype, rounding_mode):
        if input_dtype != tl.float32 or output_dtype != tl.bfloat16 or rounding_mode is not None:
            return original_convert(input, input_dtype, output_dtype, rounding_mode)
        x = torch.from_numpy(np.ascontiguousarray(input).view(np.float32))
        return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16).reshape(input.shape)

    builder.create_dot, interpreter._convert_float = create_dot, convert
    try:
        yield
    finally:
        builder.create_dot, interpreter._convert_float = original_dot, original_convert


def outlier_channel_inputs(seed: int, B: int = 1, n: int = 64, h: int = 2, d: int = 64, n_outliers: int = 4,
                           factor: float = 20.0, device="cpu"):
    """Gaussian q, k, v (B, n, h, d) float32 where `n_outliers` head_dim channels (the same for Q and K, as
    in LLM activations) carry `factor` x more of q_d k_d and the rest 1/factor x less, so the scores stay
    O(1)-O(10): the case that per-head FP8 scales handle badly and a Hadamard rotation fixes."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, n, h, d, generator=g) for _ in range(3))
    scale = torch.full((d,), factor ** -0.5)
    scale[torch.randperm(d, generator=g)[:n_outliers]] = factor ** 0.5
    return (q * scale).to(device), (k * scale).to(device), v.to(device)
