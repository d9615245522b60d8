"""Rotary position embedding (RoPE, Su et al. 2021) in the (B, N, H, D) layout.

The "half split" form (GPT-NeoX / Llama): dimension i of the first half and dimension i of the second half
form one rotating pair with frequency base^(-2i/D). Rotating q and k by their absolute positions makes the
score q_m . k_n depend only on m - n, so a KV cache of already rotated keys stays valid while decoding.
"""
from __future__ import annotations

import torch

from .._checks import check_tensor

__all__ = ["rope_angles", "apply_rope"]


def rope_angles(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles, each (N, head_dim // 2) float32.

    Args:
        positions: (N,) integer positions (absolute token indices, >= 0).
        head_dim: the head dimension D; must be even.
        base: the frequency base (10000 in the paper).
    """
    check_tensor("positions", positions, 1, layout="(seqlen,)")
    if positions.dtype.is_floating_point or positions.dtype == torch.bool:
        raise TypeError(f"positions must be an integer tensor, got {positions.dtype}")
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim must be a positive even int for RoPE, got {head_dim!r}")
    if isinstance(base, bool) or not isinstance(base, (int, float)) or not base > 1:
        raise ValueError(f"base must be a number > 1, got {base!r}")
    inv_freq = float(base) ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float64) / head_dim)
    # float64 angles: positions up to millions keep their precision before the cast.
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    return angles.cos().to(torch.float32), angles.sin().to(torch.float32)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, N, H, D) by the angles of `rope_angles` (cos/sin (N, D // 2)); returns x's dtype.

    The rotation is computed in float32 (or float64 for float64 inputs) and cast back.
    """
    check_tensor("x", x, 4, layout="(batch, seqlen, heads, head_dim)")
    N, D = x.shape[1], x.shape[3]
    if D % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {D}")
    if cos.shape != (N, D // 2) or sin.shape != (N, D // 2):
        raise ValueError(f"cos/sin must be ({N}, {D // 2}) for x {tuple(x.shape)}, got {tuple(cos.shape)}, "
                         f"{tuple(sin.shape)}")
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc = x.to(compute)
    c = cos.to(compute)[None, :, None, :]
    s = sin.to(compute)[None, :, None, :]
    x1, x2 = xc[..., : D // 2], xc[..., D // 2:]
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).to(x.dtype)
