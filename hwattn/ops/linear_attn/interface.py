"""Public entry points of linear attention and the autograd wiring of its Triton kernels."""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..._checks import check_bool, check_same, check_scale, check_tensor
from ..._runtime import check_kernel_device
from . import kernels
from .naive import elu_feature_map

__all__ = ["linear_attention", "linear_attention_recurrent"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
DEFAULT_EPS = 1e-6
_LAYOUT = "(batch, seqlen, heads, head_dim)"
_BUILTIN = {"elu+1": kernels.FEATURE_ELU1, "elu": kernels.FEATURE_ELU1, "identity": kernels.FEATURE_IDENTITY}
_MAX_GRID_Y = 65535  # programs along grid axis 1 (batch x heads)


def _resolve_feature_map(feature_map):
    """-> (builtin kernel feature id, torch callable or None)."""
    if feature_map is None:
        return kernels.FEATURE_IDENTITY, None
    if isinstance(feature_map, str):
        if feature_map not in _BUILTIN:
            raise ValueError(f"feature_map must be 'elu+1', 'identity', None or a callable, got {feature_map!r}")
        return _BUILTIN[feature_map], None
    if callable(feature_map):
        if feature_map is elu_feature_map:
            return kernels.FEATURE_ELU1, None
        return kernels.FEATURE_IDENTITY, feature_map
    raise TypeError(f"feature_map must be 'elu+1', 'identity', None or a callable, got {type(feature_map).__name__}")


def _check_qkv(fn: str, q, k, v, causal: bool) -> None:
    check_tensor("q", q, 4, SUPPORTED_DTYPES, layout=_LAYOUT)
    check_tensor("k", k, 4, SUPPORTED_DTYPES, layout=_LAYOUT)
    check_tensor("v", v, 4, SUPPORTED_DTYPES, layout=_LAYOUT)
    check_same(("q", "k", "v"), (q, k, v), "dtype")
    check_same(("q", "k", "v"), (q, k, v), "device")
    B, Nq, H, D = q.shape
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(f"q, k, v must share the batch size, got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if k.shape[2] != H or v.shape[2] != H:
        raise ValueError(f"q, k, v must have the same number of heads (repeat K/V heads for GQA with "
                         f"hwattn.registry.repeat_kv), got q {H}, k {k.shape[2]}, v {v.shape[2]}")
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"k and v must have the same seqlen, got k {k.shape[1]}, v {v.shape[1]}")
    if k.shape[3] != D:
        raise ValueError(f"k head_dim must equal q's ({D}), got {k.shape[3]}")
    if min(Nq, k.shape[1], D, v.shape[3], B, H) == 0:
        raise ValueError(f"q, k, v must have no empty dimension, got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if causal and k.shape[1] != Nq:
        raise ValueError(f"causal linear attention needs as many keys as queries, got Nq={Nq}, Nk={k.shape[1]}; "
                         "for decoding after a prefix pass the prefix's state as initial_state")
    if B * H > _MAX_GRID_Y:
        raise ValueError(f"batch * heads must be <= {_MAX_GRID_Y}, got {B} * {H} = {B * H}")
    check_kernel_device(fn, q, k, v)


def _check_state(initial_state, normalize: bool, B: int, H: int, Dk: int, Dv: int, device):
    """-> (S0 (B*H, Dk, Dv) fp32 or None, z0 (B*H, Dk) fp32 or None)."""
    if initial_state is None:
        return None, None
    if normalize:
        if not (isinstance(initial_state, (tuple, list)) and len(initial_state) == 2):
            raise TypeError("initial_state must be a (S, z) tuple when normalize=True: S (B, H, Dk, Dv) and the "
                            f"normaliser z (B, H, Dk), got {type(initial_state).__name__}")
        s0, z0 = initial_state
    else:
        if isinstance(initial_state, (tuple, list)):
            raise TypeError("initial_state must be a single tensor S (B, H, Dk, Dv) when normalize=False, got a "
                            f"{type(initial_state).__name__}")
        s0, z0 = initial_state, None
    check_tensor("initial_state S", s0, 4, (torch.float32, torch.float16, torch.bfloat16))
    if tuple(s0.shape) != (B, H, Dk, Dv):
        raise ValueError(f"initial_state S must have shape (B, H, Dk, Dv) = {(B, H, Dk, Dv)} (Dk = feature "
                         f"dimension), got {tuple(s0.shape)}")
    if s0.device != device:
        raise ValueError(f"initial_state S is on {s0.device}, q is on {device}")
    s0 = s0.float().reshape(B * H, Dk, Dv).contiguous()
    if z0 is not None:
        check_tensor("initial_state z", z0, 3, (torch.float32, torch.float16, torch.bfloat16))
        if tuple(z0.shape) != (B, H, Dk):
            raise ValueError(f"initial_state z must have shape (B, H, Dk) = {(B, H, Dk)}, got {tuple(z0.shape)}")
        if z0.device != device:
            raise ValueError(f"initial_state z is on {z0.device}, q is on {device}")
        z0 = z0.float().reshape(B * H, Dk).contiguous()
    return s0, z0


def _unit_stride(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


class _LinearAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, s0, z0, causal, normalize, feature, eps, output_final_state, chunk_size,
                save_for_backward):
        o, saved = kernels.chunk_fwd(q, k, v, causal, normalize, feature, s0, z0, output_final_state, eps,
                                     chunk_size, save_for_backward)
        if save_for_backward:
            ctx.save_for_backward(q, k, v, o, saved["den"], saved["h"], saved["z"])
        ctx.cfg = (causal, normalize, feature, chunk_size)
        ctx.has_s0, ctx.has_z0 = s0 is not None, z0 is not None
        return o, saved["ht"], saved["zt"]

    @staticmethod
    @once_differentiable
    def backward(ctx, do, dht, dzt):
        q, k, v, o, den, h, z = ctx.saved_tensors
        causal, normalize, feature, chunk_size = ctx.cfg
        need_dh0 = (ctx.has_s0 and ctx.needs_input_grad[3]) or (ctx.has_z0 and ctx.needs_input_grad[4])
        dq, dk, dv, dh0, dz0 = kernels.chunk_bwd(
            _unit_stride(do), q, k, v, o, {"den": den, "h": h, "z": z}, causal, normalize, feature,
            None if dht is None else dht.float().contiguous(),
            None if (dzt is None or not normalize) else dzt.float().contiguous(),
            need_dh0, chunk_size)
        return (dq, dk, dv, dh0 if ctx.has_s0 else None, dz0 if ctx.has_z0 else None,
                None, None, None, None, None, None, None)


def _prepare(fn, q, k, v, causal, feature_map, normalize, initial_state, eps):
    check_bool("causal", causal)
    check_bool("normalize", normalize)
    eps = check_scale("eps", eps)
    if eps is None or eps < 0:
        raise ValueError(f"eps must be a finite float >= 0, got {eps}")
    _check_qkv(fn, q, k, v, causal)
    feature, fmap = _resolve_feature_map(feature_map)
    if fmap is not None:
        qf, kf = fmap(q), fmap(k)
        for name, x, src in (("feature_map(q)", qf, q), ("feature_map(k)", kf, k)):
            if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[:3]) != tuple(src.shape[:3]):
                raise ValueError(f"{name} must return a tensor (B, N, H, F) keeping the first three dims of its "
                                 f"input {tuple(src.shape[:3])}, got "
                                 f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
            if x.dtype != src.dtype:
                raise TypeError(f"{name} changed the dtype from {src.dtype} to {x.dtype}; cast it back")
        if qf.shape[3] != kf.shape[3]:
            raise ValueError(f"feature_map gave {qf.shape[3]} features for q but {kf.shape[3]} for k")
        q, k = qf, kf
    B, _, H, Dk = q.shape
    s0, z0 = _check_state(initial_state, normalize, B, H, Dk, v.shape[3], q.device)
    return _unit_stride(q), _unit_stride(k), _unit_stride(v), feature, s0, z0, eps


def _final_state(ht, zt, B, H, normalize):
    Dk, Dv = ht.shape[1], ht.shape[2]
    s = ht.view(B, H, Dk, Dv)
    return (s, zt.view(B, H, Dk)) if normalize else s


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                     feature_map="elu+1", normalize: bool = True, initial_state=None,
                     output_final_state: bool = False, eps: float = DEFAULT_EPS, chunk_size: int = 64):
    """Linear attention (Katharopoulos et al. 2020) with Triton kernels, forward and backward.

        non-causal: O_t = phi(q_t) S / (phi(q_t) . z + eps),       S = sum_s phi(k_s) v_s^T,  z = sum_s phi(k_s)
        causal:     the same with S, z summed over s <= t only (chunked form: quadratic inside a chunk of
                    `chunk_size` tokens, a carried Dk x Dv state between chunks)

    Args:
        q: (B, Nq, H, D) queries; float16, bfloat16 or float32; CUDA (or CPU with TRITON_INTERPRET=1).
        k: (B, Nk, H, D) keys; same dtype/device/heads as q (for GQA repeat K/V first: registry.repeat_kv).
        v: (B, Nk, H, Dv) values; Dv may differ from D.
        causal: token t attends to keys s <= t (needs Nq == Nk). Non-causal allows Nq != Nk.
        feature_map: "elu+1" (default, the Linear Transformer's phi, fused into the kernels), "identity" or None
            (q and k used as given: they must be non-negative when normalize=True), or a callable mapping a
            (B, N, H, D) tensor to (B, N, H, F) features in the same dtype (applied with PyTorch, differentiable;
            e.g. Performer's random features). Dk below is the feature dimension.
        normalize: divide by the normaliser phi(q) . z + eps (computed in fp32). With normalize=True any scale
            on phi(q) cancels, so none is applied; normalize=False returns the bare numerator.
        initial_state: a state to continue from (e.g. a prefix's final state): (S (B, H, Dk, Dv), z (B, H, Dk))
            when normalize=True, S alone when normalize=False; any float dtype, used in fp32; differentiable.
        output_final_state: also return the state after the last token, same form as initial_state, fp32.
            Non-causal: the total state (initial state plus every key).
        eps: added to the denominator (default 1e-6, as in the Linear Transformer); must be >= 0. With positive
            features the denominator grows with the number of keys, so eps only matters for the first tokens
            or for near-zero features.
        chunk_size: tokens per chunk of the chunked form: 16, 32, 64 (default, tuned for GPUs) or 128.

    Returns:
        O (B, Nq, H, Dv) in q's dtype, or (O, final_state) when output_final_state=True.

    Precision: fp32 accumulation; the normaliser z and the denominator in fp32; per-chunk states stored in bf16
    for bf16 inputs and in fp32 otherwise. Not supported: float64 (use hwattn.ops.linear_attn.naive), attention
    masks / padding masks, GQA inside the kernel.
    """
    if chunk_size not in (16, 32, 64, 128) or isinstance(chunk_size, bool):
        raise ValueError(f"chunk_size must be one of 16, 32, 64, 128, got {chunk_size!r}")
    check_bool("output_final_state", output_final_state)
    q, k, v, feature, s0, z0, eps = _prepare("linear_attention", q, k, v, causal, feature_map, normalize,
                                             initial_state, eps)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, s0, z0))
    o, ht, zt = _LinearAttentionFunction.apply(q, k, v, s0, z0, causal, normalize, feature, eps,
                                               output_final_state, chunk_size, needs_grad)
    if not output_final_state:
        return o
    return o, _final_state(ht, zt, q.shape[0], q.shape[2], normalize)


def linear_attention_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, initial_state=None,
                               feature_map="elu+1", normalize: bool = True, eps: float = DEFAULT_EPS):
    """Causal linear attention in its recurrent form, for decoding a few tokens at a time with a carried state.

        for each new token t:  S += phi(k_t) v_t^T,  z += phi(k_t),  O_t = phi(q_t) S / (phi(q_t) . z + eps)

    Args:
        q, k: (B, n, H, D) the new tokens' queries and keys (n >= 1, typically 1); v: (B, n, H, Dv).
            float16 / bfloat16 / float32, CUDA (or CPU with TRITON_INTERPRET=1).
        initial_state: None (empty) or the state returned by a previous call or by
            `linear_attention(..., causal=True, output_final_state=True)`: (S (B, H, Dk, Dv), z (B, H, Dk)) when
            normalize=True, S when normalize=False.
        feature_map, normalize, eps: as in `linear_attention`.

    Returns:
        (O (B, n, H, Dv) in q's dtype, new state in fp32).

    One Triton program per (batch, head, Dv block) keeps the state on chip and walks the n tokens; all
    arithmetic in fp32. This kernel has no backward: when gradients are needed (grad mode on and an input
    requires grad) the call runs through the chunked kernels instead, which give the same result.
    """
    q, k, v, feature, s0, z0, eps = _prepare("linear_attention_recurrent", q, k, v, True, feature_map, normalize,
                                             initial_state, eps)
    B, _, H, _ = q.shape
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, s0, z0))
    if needs_grad:
        o, ht, zt = _LinearAttentionFunction.apply(q, k, v, s0, z0, True, normalize, feature, eps, True,
                                                   kernels.CHUNK_SIZE, True)
    else:
        o, ht, zt = kernels.recurrent_fwd(q, k, v, normalize, feature, s0, z0, eps)
    return o, _final_state(ht, zt, B, H, normalize)
