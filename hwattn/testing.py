"""Helpers the tests (and GPU check scripts) share: relative error against a float64 reference."""
from __future__ import annotations

import torch

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
