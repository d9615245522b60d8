"""Input validation shared by every public function: errors name the argument, what it got and what it needs."""
from __future__ import annotations

from typing import Iterable

import torch


def check_tensor(name: str, x, ndim: int | None = None, dtypes: Iterable[torch.dtype] | None = None,
                 layout: str = "") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        shape_hint = f" {layout}" if layout else ""
        raise ValueError(f"{name} must have {ndim} dimensions{shape_hint}, got shape {tuple(x.shape)}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if x.dtype not in dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            raise TypeError(f"{name} has dtype {str(x.dtype).replace('torch.', '')}, supported: {names}")


def check_same(names: tuple[str, ...], tensors: tuple[torch.Tensor, ...], what: str) -> None:
    """Check that all tensors agree on `what` ('dtype' or 'device')."""
    values = [getattr(t, what) for t in tensors]
    if any(v != values[0] for v in values):
        got = ", ".join(f"{n}={v}" for n, v in zip(names, values))
        raise ValueError(f"{' / '.join(names)} must share one {what}, got {got}")


def check_scale(name: str, value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float or None, got {type(value).__name__}")
    value = float(value)
    if not value == value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")
    return value
