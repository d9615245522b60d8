"""The attention implementations `hwattn bench` times, each behind one signature:

    make(q, k, v, causal) -> fn, where fn() runs the forward and returns the output.

A `make` with an `env` dict attribute is measured with those environment variables set.

q/k/v arrive in the (B, N, H, D) layout; a provider that wants another layout converts once, outside
the timed region, as a user of that library would store their tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _hwattn(q, k, v, causal):
    from ..ops.flash import flash_attention
    return lambda: flash_attention(q, k, v, causal=causal)


def _hwattn_with(env: dict):
    """hwattn measured with these environment variables set (the harness sets a provider's `env`)."""
    def make(q, k, v, causal):
        return _hwattn(q, k, v, causal)
    make.env = env
    return make


# the backward forced to two launches (dK/dV, then dQ) or to one, whatever HWATTN_BWD=auto would pick
_hwattn_split = _hwattn_with({"HWATTN_BWD": "split"})
_hwattn_fused = _hwattn_with({"HWATTN_BWD": "fused"})
# the backward as one dK/dV launch that adds dQ with fp32 atomics (not deterministic; backward.backward_schedule)
_hwattn_atomic = _hwattn_with({"HWATTN_BWD": "atomic"})
# the forward on the persistent, longest-first tile schedule (opt-in until timed: forward.forward_schedule)
_hwattn_persistent = _hwattn_with({"HWATTN_FWD_SCHEDULE": "persistent"})
# the forward on the hand-scheduled Gluon Hopper kernel wherever it applies, not only where "auto" takes it
# (ops/flash/hopper.py; backward unchanged)
_hwattn_gluon = _hwattn_with({"HWATTN_FWD_KERNEL": "gluon"})
# the portable Triton forward everywhere (the default), and the Gluon kernel where "auto" takes it
_hwattn_portable = _hwattn_with({"HWATTN_FWD_KERNEL": "portable"})
_hwattn_auto = _hwattn_with({"HWATTN_FWD_KERNEL": "auto"})
# the backward on the one-launch Gluon Hopper kernel wherever it applies (ops/flash/hopper_bwd.py; opt-in)
_hwattn_gluon_bwd = _hwattn_with({"HWATTN_BWD_KERNEL": "gluon"})


def _sdpa(backend_name):
    def make(q, k, v, causal):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        backend = getattr(SDPBackend, backend_name)
        qh, kh, vh = (x.transpose(1, 2).contiguous().detach().requires_grad_(x.requires_grad) for x in (q, k, v))

        def run():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(qh, kh, vh, is_causal=causal)
        run.inputs = (qh, kh, vh)
        return run
    return make


_flex_compiled = None


def _flex(q, k, v, causal):
    global _flex_compiled
    import torch._dynamo
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    # every new shape is a recompile; the default limit (8) silently falls back to eager after that
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 1000)
    # the compiled backward donates buffers, which forbids the retain_graph=True that timing bwd alone needs
    import torch._functorch.config
    torch._functorch.config.donated_buffer = False
    if _flex_compiled is None:
        # static shapes: one specialised kernel per N, as a user running one length gets
        _flex_compiled = torch.compile(flex_attention, dynamic=False)
    qh, kh, vh = (x.transpose(1, 2).contiguous().detach().requires_grad_(x.requires_grad) for x in (q, k, v))
    n_q, n_k = q.shape[1], k.shape[1]
    block_mask = None
    if causal:
        shift = n_k - n_q
        block_mask = create_block_mask(lambda b, h, qi, ki: ki <= qi + shift, B=None, H=None, Q_LEN=n_q,
                                       KV_LEN=n_k, device=q.device)

    def run():
        return _flex_compiled(qh, kh, vh, block_mask=block_mask)
    run.inputs = (qh, kh, vh)
    return run


def _fa4(q, k, v, causal):
    """FlashAttention-4 (package flash-attn-4, module flash_attn.cute; CuTe DSL, its Hopper kernels on sm_90):
    the highest exact anchor. Not a dependency of hwattn: install flash-attn-4 with its CUTLASS DSL wheels to
    time it. Same (B, N, H, D) layout as ours; its `causal` is bottom-right, equal to ours at Nq = Nk."""
    try:
        from flash_attn.cute import flash_attn_func
    except ImportError as e:
        raise RuntimeError(f"provider fa4 needs the flash-attn-4 package (flash_attn.cute): {e}") from e
    return lambda: flash_attn_func(q, k, v, causal=causal)[0]


def _naive(q, k, v, causal):
    from ..reference import attention
    return lambda: attention(q, k, v, causal=causal)


PROVIDERS = {
    "hwattn": _hwattn,
    "hwattn_split": _hwattn_split,
    "hwattn_fused": _hwattn_fused,
    "hwattn_persistent": _hwattn_persistent,
    "hwattn_atomic": _hwattn_atomic,
    "hwattn_gluon": _hwattn_gluon,
    "hwattn_portable": _hwattn_portable,
    "hwattn_auto": _hwattn_auto,
    "hwattn_gluon_bwd": _hwattn_gluon_bwd,
    "sdpa_cudnn": _sdpa("CUDNN_ATTENTION"),
    "sdpa_flash": _sdpa("FLASH_ATTENTION"),
    "sdpa_efficient": _sdpa("EFFICIENT_ATTENTION"),
    "flex": _flex,
    "fa4": _fa4,
    "naive": _naive,
}
