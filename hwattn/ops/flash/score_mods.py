"""Score modifications of the exact kernel, host side: checking what the caller asked for and turning it
into kernel arguments. The in-kernel part is one function, `common.modded_scores` (plus `common.visible`
and the `*_window_bounds` for the window), called by the forward, dK/dV and dQ steps alike.

Order (flash_attn's conventions, bottom-right aligned distances; s is the scaled score q.k * softmax_scale):

    s = softcap * tanh(s / softcap)                      softcap > 0 (Gemma-2 / flash_attn `softcap`)
    s = s - alibi_slopes[b, h] * |i + Nk - Nq - j|        flash_attn `alibi_slopes`
    s = s + rel_bias[h, j - i + Nq - 1]                   a learnable relative-position table
    keep iff i + Nk - Nq - left <= j <= i + Nk - Nq + right    flash_attn `window_size=(left, right)`

Every mod is a compile-time switch of the kernels: when off, the generated code is the plain kernel's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..._checks import check_scale
from .common import LOG2E

__all__ = ["ScoreMods", "check_score_mods", "resolve_window", "score_mod_kwargs"]


@dataclass(frozen=True)
class ScoreMods:
    """Validated score mods, as the kernels take them.

    alibi_slopes: (Hq,) or (B, Hq) float32, contiguous; None = off.
    softcap: > 0; 0.0 = off.
    rel_bias: (Hq or 1, Nq + Nk - 1) float32, contiguous; None = off.
    window: (left, right), both >= 0, an unbounded side already replaced by a bound no distance reaches;
        None = no window (causal, if asked, is the kernels' CAUSAL switch).
    rel_bias_grad: the backward also returns d rel_bias.
    """
    alibi_slopes: torch.Tensor | None = None
    softcap: float = 0.0
    rel_bias: torch.Tensor | None = None
    window: tuple[int, int] | None = None
    rel_bias_grad: bool = False


_DUMMY: dict = {}


def _dummy(device) -> torch.Tensor:
    """A one-element float32 tensor standing in for a table that is off (the kernels never read it)."""
    t = _DUMMY.get(device)
    if t is None:
        t = _DUMMY.setdefault(device, torch.zeros(1, dtype=torch.float32, device=device))
    return t


def score_mod_kwargs(mods: ScoreMods | None, device, drel_bias: torch.Tensor | None = None,
                     with_grad_args: bool = False) -> dict:
    """Keyword arguments of the dense/varlen kernels for `mods` (all off when None). with_grad_args adds the
    dQ kernel's d rel_bias output (DBIAS, REL_BIAS_GRAD), zero-filled by the caller, same strides as rel_bias."""
    mods = mods or ScoreMods()
    slopes, bias, window = mods.alibi_slopes, mods.rel_bias, mods.window
    kw = dict(SLOPES=_dummy(device) if slopes is None else slopes,
              # (Hq,) slopes are shared by the batch: stride 0
              stride_slopes_b=slopes.stride(0) if slopes is not None and slopes.dim() == 2 else 0,
              softcap_log2=mods.softcap * LOG2E if mods.softcap > 0 else 1.0,
              BIAS=_dummy(device) if bias is None else bias,
              # a (1, L) table is shared by the heads: stride 0
              stride_bias_h=bias.stride(0) if bias is not None and bias.shape[0] > 1 else 0,
              window_left=window[0] if window else 0, window_right=window[1] if window else 0,
              WINDOW=window is not None, SOFTCAP=mods.softcap > 0, ALIBI=slopes is not None,
              REL_BIAS=bias is not None)
    if with_grad_args:
        kw.update(DBIAS=_dummy(device) if drel_bias is None else drel_bias, REL_BIAS_GRAD=drel_bias is not None)
    return kw


def resolve_window(window, causal: bool, unbounded: int):
    """flash_attn's `window_size=(left, right)` -> (causal, (left, right) or None) for the kernels.

    -1 = unbounded on that side; causal=True bounds the right side at 0 (so right must be 0 or -1).
    An unbounded side becomes `unbounded` (>= Nq + Nk: no distance reaches it), larger bounds are clamped
    to it (int32 in the kernels). A window that is no window ((-1, -1)) gives None; (-1, 0) is plain
    causal attention and uses the causal kernels."""
    if window is None:
        return causal, None
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise ValueError(f"window must be a pair (left, right) of ints >= -1 (-1 = unbounded), got {window!r}")
    for side, value in zip(("left", "right"), window):
        if isinstance(value, bool) or not isinstance(value, int) or value < -1:
            raise ValueError(f"window {side} must be an int >= -1 (-1 = unbounded), got {value!r} in "
                             f"window={tuple(window)!r}")
    left, right = window
    if causal:
        if right not in (-1, 0):
            raise ValueError(f"window right must be 0 or -1 with causal=True (causal already bounds the right side "
                             f"at 0), got window={tuple(window)!r}; pass causal=False for a window that looks ahead")
        right = 0
    left = unbounded if left == -1 else min(left, unbounded)
    right = unbounded if right == -1 else min(right, unbounded)
    if left == unbounded and right == unbounded:
        return causal, None
    if left == unbounded and right == 0:
        return True, None
    return False, (left, right)


def _check_softcap(softcap) -> float:
    if softcap is None:
        return 0.0
    value = check_scale("softcap", softcap)
    if value < 0:
        raise ValueError(f"softcap must be > 0 (or 0 / None = off), got {softcap!r}")
    return value


def _check_table(name: str, x, device, shapes: list[tuple[int, ...]], layout: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"{name} has dtype {str(x.dtype).replace('torch.', '')}, needs float32 {layout}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device} but q is on {device}; they must share one device")
    if tuple(x.shape) not in shapes:
        want = " or ".join(str(s) for s in shapes)
        raise ValueError(f"{name} must have shape {want} {layout}, got {tuple(x.shape)}")
    return x.contiguous()


def check_score_mods(alibi_slopes, softcap, rel_bias, *, batch: int, n_heads: int, n_q: int | None, n_k: int | None,
                     device, batch_name: str = "B") -> ScoreMods:
    """Validate the score mod arguments of a call (the window is `resolve_window`'s). n_q/n_k None: the
    call has no single length (varlen), so rel_bias is refused."""
    softcap = _check_softcap(softcap)
    slopes = None
    if alibi_slopes is not None:
        slopes = _check_table("alibi_slopes", alibi_slopes, device, [(n_heads,), (batch, n_heads)],
                              f"(Hq,) or ({batch_name}, Hq) with Hq={n_heads}, {batch_name}={batch}")
        if torch.is_grad_enabled() and alibi_slopes.requires_grad:
            raise ValueError("alibi_slopes requires grad, but no gradient flows to the ALiBi slopes (they are fixed "
                             "by the head index); pass alibi_slopes.detach()")
    bias = None
    if rel_bias is not None:
        if n_q is None:
            raise ValueError("rel_bias is not supported here (sequences of different lengths would need tables of "
                             "different lengths); use flash_attention")
        length = n_q + n_k - 1
        bias = _check_table("rel_bias", rel_bias, device, [(n_heads, length), (1, length)],
                            f"(Hq or 1, Nq + Nk - 1) with Hq={n_heads}, Nq={n_q}, Nk={n_k}")
    return ScoreMods(alibi_slopes=slopes, softcap=softcap, rel_bias=bias,
                     rel_bias_grad=bias is not None and rel_bias.requires_grad and torch.is_grad_enabled())
