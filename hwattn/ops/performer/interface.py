"""Public entry points of Performer (FAVOR+): random projections, fused feature kernels, attention."""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..._checks import check_bool, check_scale, check_tensor
from ..._runtime import check_kernel_device
from ..linear_attn.interface import SUPPORTED_DTYPES, _check_qkv, linear_attention
from . import kernels
from .naive import draw_projection_naive

__all__ = ["draw_projection", "favor_features", "performer_attention"]

DEFAULT_NB_FEATURES = 256
DEFAULT_KERNEL_EPS = 1e-3   # ReLU kernel only: keeps every feature > 0 (as in performer-pytorch)
DEFAULT_EPS = 1e-12         # the core's denominator eps; softmax features are positive, this only stops 0/0
_KINDS = {"softmax": kernels.KIND_SOFTMAX, "relu": kernels.KIND_RELU}
_LAYOUT = "(batch, seqlen, heads, head_dim)"
# performer_attention's fused path (features computed inside the attention kernels). False: features first with
# favor_features, then linear_attention (the path larger heads take; scripts/gpu_lowrank.py times both).
FUSED = True


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value <= 0:
        raise ValueError(f"{name} must be a positive number of features/dimensions, got {value}")
    return value


def draw_projection(nb_features: int = DEFAULT_NB_FEATURES, head_dim: int = 64, seed: int = 0,
                    orthogonal: bool = True, device=None) -> torch.Tensor:
    """Draw FAVOR+'s random projection W (nb_features, head_dim), float32.

    orthogonal=True (default): block-orthogonal Gaussian rows (blocks of head_dim exactly orthogonal rows, each
    row's norm drawn like a Gaussian vector's), the paper's lower-variance estimator; False: iid N(0, I) rows.
    The draw uses a CPU torch.Generator seeded with `seed` and is then moved to `device`, so the same seed gives
    the same projection on any machine. nb_features need not be a multiple of head_dim.
    """
    _check_positive_int("nb_features", nb_features)
    _check_positive_int("head_dim", head_dim)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    check_bool("orthogonal", orthogonal)
    w = draw_projection_naive(nb_features, head_dim, seed, orthogonal)
    return w if device is None else w.to(device)


def _feature_dtype(dtype: torch.dtype) -> torch.dtype:
    # fp16's exponent range cannot hold stabilised features (a long sequence spans e^-20 .. 1): use fp32 there.
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


class _FavorFeatures(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, kind, mode, offset, kernel_eps):
        w_hi, w_lo = kernels.split_projection(w, x.dtype)
        f = kernels.favor_fwd(x, w_hi, w_lo, kind, mode, _feature_dtype(x.dtype), offset, kernel_eps)
        ctx.save_for_backward(x, w, f)
        ctx.kind = kind
        return f

    @staticmethod
    @once_differentiable
    def backward(ctx, df):
        x, w, f = ctx.saved_tensors
        if df.stride(-1) != 1:
            df = df.contiguous()
        return kernels.favor_bwd(x, w, f, df, ctx.kind), None, None, None, None, None


class _PerformerFunction(torch.autograd.Function):
    """Performer attention with the feature map fused into the linear-attention kernels (kernels.fused_fwd)."""

    @staticmethod
    def forward(ctx, q, k, v, w, kind, causal, eps, kernel_eps, chunk_size, save_for_backward):
        *proj, w_chain = kernels.fused_projection(w, q.dtype)
        o, saved = kernels.fused_fwd(q, k, v, proj, kind, causal, eps, kernel_eps, chunk_size, save_for_backward)
        if save_for_backward:
            ctx.save_for_backward(q, k, v, o, w_chain, saved["fq"], saved["fk"], saved["den"], saved["h"],
                                  saved["z"])
        ctx.cfg = (kind, causal, kernel_eps, chunk_size)
        return o

    @staticmethod
    @once_differentiable
    def backward(ctx, do):
        q, k, v, o, w_chain, fq, fk, den, h, z = ctx.saved_tensors
        kind, causal, kernel_eps, chunk_size = ctx.cfg
        if do.stride(-1) != 1:
            do = do.contiguous()
        saved = {"fq": fq, "fk": fk, "den": den, "h": h, "z": z}
        dq, dk, dv = kernels.fused_bwd(do, q, k, v, o, w_chain, saved, kind, causal, kernel_eps, chunk_size)
        return dq, dk, dv, None, None, None, None, None, None, None


def _check_projection(projection, head_dim: int, device) -> torch.Tensor:
    check_tensor("projection", projection, 2, (torch.float32, torch.float16, torch.bfloat16, torch.float64))
    if projection.shape[1] != head_dim:
        raise ValueError(f"projection must be (nb_features, head_dim) with head_dim={head_dim}, got "
                         f"{tuple(projection.shape)}")
    if projection.shape[0] <= 0:
        raise ValueError(f"projection must have a positive number of features, got {projection.shape[0]}")
    if projection.device != device:
        raise ValueError(f"projection is on {projection.device}, the inputs are on {device}")
    return projection.detach().float().contiguous()


def _check_kernel(kernel: str) -> int:
    if kernel not in _KINDS:
        raise ValueError(f"kernel must be 'softmax' (FAVOR+ positive features) or 'relu', got {kernel!r}")
    return _KINDS[kernel]


def favor_features(x: torch.Tensor, projection: torch.Tensor, is_query: bool, kernel: str = "softmax",
                   kernel_eps: float = DEFAULT_KERNEL_EPS, key_offset: torch.Tensor | None = None):
    """FAVOR+ features of x, computed by one fused Triton kernel (forward and backward).

    Args:
        x: (B, N, H, D) queries or keys; float16 / bfloat16 / float32; CUDA (or CPU with TRITON_INTERPRET=1).
        projection: (m, D) random projection (see `draw_projection`); gets no gradient.
        is_query: queries subtract their own row max before exp; keys a per-(batch, head) offset.
        kernel: "softmax" (positive random features exp(w . x~ - |x~|^2/2 - c) / sqrt(m), x~ = x D^-1/4, an
            unbiased estimate of exp(q . k / sqrt(D)) up to the constant e^-c) or "relu" (relu(w . x~) +
            kernel_eps).
        kernel_eps: ReLU kernel only, default 1e-3.
        key_offset: keys, softmax kernel: the stabiliser c per (batch, head) as a (B, H) float tensor; default
            (None) the max exponent over the sequence and all features, so every key feature is <= 1/sqrt(m).

    Returns:
        (features (B, N, H, m), key offset (B, H) fp32 used, or None for queries and the ReLU kernel).
        Features are bfloat16 for bfloat16 x and float32 otherwise (fp16 cannot hold their range).
    """
    check_tensor("x", x, 4, SUPPORTED_DTYPES, layout=_LAYOUT)
    check_bool("is_query", is_query)
    kind = _check_kernel(kernel)
    kernel_eps = check_scale("kernel_eps", kernel_eps)
    if kernel_eps is None or kernel_eps < 0:
        raise ValueError(f"kernel_eps must be a finite float >= 0, got {kernel_eps}")
    B, N, H, D = x.shape
    if min(B, N, H, D) == 0:
        raise ValueError(f"x must have no empty dimension, got {tuple(x.shape)}")
    check_kernel_device("favor_features", x)
    w = _check_projection(projection, D, x.device)
    if x.stride(-1) != 1:
        x = x.contiguous()
    offset = None
    if kind == kernels.KIND_RELU:
        mode = kernels.MODE_QUERY
    elif is_query:
        mode = kernels.MODE_QUERY
    else:
        mode = kernels.MODE_KEY
        if key_offset is None:
            with torch.no_grad():
                w_hi, w_lo = kernels.split_projection(w, x.dtype)
                offset = kernels.favor_fwd(x.detach(), w_hi, w_lo, kind, kernels.MODE_BLOCK_MAX, torch.float32)
        else:
            check_tensor("key_offset", key_offset, 2)
            if tuple(key_offset.shape) != (B, H):
                raise ValueError(f"key_offset must be (B, H) = {(B, H)}, got {tuple(key_offset.shape)}")
            offset = key_offset.detach().float().reshape(B * H).contiguous()
    f = _FavorFeatures.apply(x, w, kind, mode, offset, float(kernel_eps))
    return f, (None if offset is None else offset.view(B, H))


def key_offset(k: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """The softmax features' key stabiliser: max over the sequence and features of w . k~ - |k~|^2/2, (B, H) fp32.
    (Decoding keeps a running max of it and rescales its state when it grows.)"""
    check_tensor("k", k, 4, SUPPORTED_DTYPES, layout=_LAYOUT)
    B, N, H, D = k.shape
    check_kernel_device("key_offset", k)
    w = _check_projection(projection, D, k.device)
    with torch.no_grad():
        w_hi, w_lo = kernels.split_projection(w, k.dtype)
        off = kernels.favor_fwd(k.detach() if k.stride(-1) == 1 else k.detach().contiguous(), w_hi, w_lo,
                                kernels.KIND_SOFTMAX, kernels.MODE_BLOCK_MAX, torch.float32)
    return off.view(B, H)


def performer_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, projection: torch.Tensor,
                        causal: bool = False, kernel: str = "softmax", kernel_eps: float = DEFAULT_KERNEL_EPS,
                        eps: float = DEFAULT_EPS, chunk_size: int = 64) -> torch.Tensor:
    """Performer attention (Choromanski et al. 2021): FAVOR+ features, then normalised linear attention.

        O = phi(Q) (phi(K)^T V) / (phi(Q) . sum phi(K))  ~  softmax(Q K^T / sqrt(D)) V     (causal: prefix sums)

    Args:
        q: (B, Nq, H, D) queries; float16 / bfloat16 / float32; CUDA (or CPU with TRITON_INTERPRET=1).
        k, v: (B, Nk, H, D) keys and values (Nk == Nq when causal), same dtype and heads as q.
        projection: (m, D) random projection from `draw_projection` (m = number of features, default 256);
            shared by all heads; gets no gradient.
        causal: prefix-sum (chunked) form of the same estimator, through the same Triton core as non-causal.
        kernel: "softmax" (FAVOR+, default) or "relu" (generalised attention with relu features).
        kernel_eps: added to ReLU features (default 1e-3).
        eps: added to the fp32 denominator (default 1e-12: positive features keep it > 0; eps only avoids 0/0).
        chunk_size: the core's chunk length (16, 32, 64 or 128); see `linear_attention`.

    Returns:
        O (B, Nq, H, Dv) in q's dtype. Gradients flow to q, k, v.

    The stabiliser of the softmax features (row max for queries, the max over the sequence for keys) cancels
    exactly in the normalised output. Causal: the keys' max is taken over the whole sequence, a constant that
    cancels too (no information flows backwards), but one huge future key can push early keys' features towards
    underflow. float16 inputs keep the features in float32 (output cast back to float16).

    Head dims up to 128 (q/k and v) run with the feature map fused into the linear-attention kernels: phi(q),
    phi(k) are computed on chip wherever a kernel needs them and never written (see performer/kernels.py);
    larger heads compute the features with `favor_features` first (same result, more memory traffic).
    """
    check_bool("causal", causal)
    _check_qkv("performer_attention", q, k, v, causal)
    w = _check_projection(projection, q.shape[3], q.device)
    kind = _check_kernel(kernel)
    if FUSED and max(q.shape[3], v.shape[3]) <= kernels.FUSED_MAX_DIM:
        if chunk_size not in (16, 32, 64, 128) or isinstance(chunk_size, bool):
            raise ValueError(f"chunk_size must be one of 16, 32, 64, 128, got {chunk_size!r}")
        kernel_eps = check_scale("kernel_eps", kernel_eps)
        if kernel_eps is None or kernel_eps < 0:
            raise ValueError(f"kernel_eps must be a finite float >= 0, got {kernel_eps}")
        eps = check_scale("eps", eps)
        if eps is None or eps < 0:
            raise ValueError(f"eps must be a finite float >= 0, got {eps}")
        q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        return _PerformerFunction.apply(q, k, v, w, kind, causal, float(eps), float(kernel_eps), chunk_size,
                                        needs_grad)
    qf, _ = favor_features(q, projection, True, kernel, kernel_eps)
    kf, _ = favor_features(k, projection, False, kernel, kernel_eps)
    out = linear_attention(qf, kf, v.to(qf.dtype), causal=causal, feature_map=None, normalize=True, eps=eps,
                           chunk_size=chunk_size)
    return out.to(q.dtype)
