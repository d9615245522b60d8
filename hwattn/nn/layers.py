"""The non-attention pieces of a modern Transformer block: RMSNorm and the SwiGLU MLP."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["RMSNorm", "SwiGLU"]


def _check_pos_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


class RMSNorm(torch.nn.Module):
    """y = x / sqrt(mean(x^2, last dim) + eps) * weight (Zhang & Sennrich 2019), computed in float32.

    Args:
        dim: size of the last dimension.
        eps: added to the mean square, default 1e-6.
    Input (..., dim) of any float dtype; output has the input's dtype.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        _check_pos_int("dim", dim)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps must be a number > 0, got {eps!r}")
        self.eps = float(eps)
        self.weight = torch.nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.weight.shape[0]:
            raise ValueError(f"x must have last dimension {self.weight.shape[0]}, got shape {tuple(x.shape)}")
        xf = x.float() if x.dtype != torch.float64 else x
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.to(y.dtype)).to(x.dtype)


class SwiGLU(torch.nn.Module):
    """The gated MLP of Shazeer (2020): w2(silu(w1 x) * w3 x), no biases.

    Args:
        dim: model width.
        hidden_dim: inner width; default round_up(8/3 * dim, 8), which keeps the parameter count of a
            4*dim GELU MLP.
    Input (..., dim) -> (..., dim).
    """

    def __init__(self, dim: int, hidden_dim: int | None = None):
        super().__init__()
        _check_pos_int("dim", dim)
        if hidden_dim is None:
            hidden_dim = -(-int(8 * dim / 3) // 8) * 8
        _check_pos_int("hidden_dim", hidden_dim)
        self.w1 = torch.nn.Linear(dim, hidden_dim, bias=False)
        self.w3 = torch.nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = torch.nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))
