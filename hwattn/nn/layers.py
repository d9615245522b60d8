"""The non-attention pieces of a Transformer block: RMSNorm, the SwiGLU MLP, an optional short convolution."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["RMSNorm", "SwiGLU", "ShortConv"]


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


class ShortConv(torch.nn.Module):
    """Causal depthwise convolution along the sequence: y_t = sum_{i < k} weight[:, i] * x_{t - i}.

    The short convolution that Zoology's attention baselines, H3 and Mamba put before their sequence mixer:
    it hands every position its predecessors' tokens, the first half of an induction / associative-recall
    circuit, which plain attention otherwise has to learn as a previous-token head.

    Args:
        dim: channels (model width).
        kernel_size: k >= 1 taps (k = 1 is a per-channel scale).
    forward(x): (B, N, dim) -> (B, N, dim), same dtype.
    step(x, cache): x (B, n, dim) new tokens, cache (B, k - 1, dim) of the previous inputs or None (= zeros,
    the start of a sequence) -> (y, new cache); pieces give the same outputs as forward on the whole.
    """

    def __init__(self, dim: int, kernel_size: int):
        super().__init__()
        _check_pos_int("dim", dim)
        _check_pos_int("kernel_size", kernel_size)
        self.kernel_size = kernel_size
        self.weight = torch.nn.Parameter(torch.randn(dim, kernel_size) * 0.02)

    def _conv(self, xp: torch.Tensor, n: int) -> torch.Tensor:
        """xp holds k - 1 earlier inputs, then the n current ones; returns the n outputs."""
        k = self.kernel_size
        w = self.weight.to(xp.dtype)
        y = w[:, 0] * xp[:, k - 1:]
        for i in range(1, k):
            y = y + w[:, i] * xp[:, k - 1 - i:k - 1 - i + n]
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.weight.shape[0]:
            raise ValueError(f"x must be (B, N, {self.weight.shape[0]}), got {tuple(x.shape)}")
        xp = F.pad(x, (0, 0, self.kernel_size - 1, 0))
        return self._conv(xp, x.shape[1])

    def step(self, x: torch.Tensor, cache: torch.Tensor | None = None):
        if x.dim() != 3 or x.shape[-1] != self.weight.shape[0]:
            raise ValueError(f"x must be (B, n, {self.weight.shape[0]}), got {tuple(x.shape)}")
        k = self.kernel_size
        if cache is None:
            cache = x.new_zeros(x.shape[0], k - 1, x.shape[2])
        xp = torch.cat([cache.to(x.dtype), x], dim=1)
        return self._conv(xp, x.shape[1]), xp[:, xp.shape[1] - (k - 1):]
