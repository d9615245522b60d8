"""The method registry: every attention method, exact or approximate, by name.

Layers (`hwattn.nn.Attention`), `hwattn bench` and `hwattn compare` pick methods from here, so a method
that registers once is usable everywhere. A method is a factory of `torch.nn.Module`s, because some
methods own parameters or buffers (Linformer's projections, Performer's random features).

The module contract, all tensors in the (B, N, H, D) layout:

    module = get("flash").build(head_dim=64, num_heads=8, num_kv_heads=8, max_seqlen=4096,
                                causal=True, **options)
    out = module(q, k, v)                    # q (B, N, Hq, D), k/v (B, N, Hkv, D) -> (B, N, Hq, D)

Methods with `supports_decode` also implement `module.step(q, k, v, state) -> (out, state)` for one
or a few new tokens: q/k/v (B, n_new, H, D); `state=None` starts empty. Exact methods implement it
with a KV cache; linear methods with their recurrent state.
Methods without `supports_gqa` receive K/V already repeated to Hq heads by the caller
(`hwattn.registry.repeat_kv`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

import torch

__all__ = ["Method", "register", "get", "names", "methods", "repeat_kv"]


@dataclass(frozen=True)
class Method:
    name: str
    build: Callable[..., torch.nn.Module]
    summary: str
    exact: bool
    supports_causal: bool = True
    supports_noncausal: bool = True
    supports_decode: bool = False
    supports_gqa: bool = False
    max_seqlen_fixed: bool = False  # True: the module is built for one max length (Linformer)
    options: dict = field(default_factory=dict)  # option name -> one-line description

    def supports(self) -> str:
        parts = []
        if self.supports_causal:
            parts.append("causal")
        if self.supports_noncausal:
            parts.append("non-causal")
        if self.supports_decode:
            parts.append("decode")
        if self.supports_gqa:
            parts.append("gqa")
        if self.max_seqlen_fixed:
            parts.append("fixed max length")
        return ", ".join(parts)


_REGISTRY: dict[str, Method] = {}

# Modules that register methods when imported; imported lazily so `import hwattn` stays cheap.
_PROVIDERS = (
    "hwattn.ops.flash.method",
    "hwattn.ops.linear_attn.method",
    "hwattn.ops.performer.method",
    "hwattn.ops.linformer.method",
    "hwattn.ops.sparse_transformer.method",
)
_loaded = False


def register(method: Method) -> Method:
    if method.name in _REGISTRY and _REGISTRY[method.name] is not method:
        raise ValueError(f"attention method {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _PROVIDERS:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a method folder that does not exist (yet) is simply absent
            if e.name is None or not mod.startswith(e.name):
                raise


def methods() -> dict[str, Method]:
    _load()
    return dict(_REGISTRY)


def names() -> list[str]:
    return sorted(methods())


def get(name: str) -> Method:
    if not isinstance(name, str):
        raise TypeError(f"method must be a str, got {type(name).__name__}")
    all_methods = methods()
    if name not in all_methods:
        listing = "; ".join(f"{m.name} ({m.supports()})" for m in sorted(all_methods.values(), key=lambda m: m.name))
        raise ValueError(f"unknown attention method {name!r}; valid: {listing}")
    return all_methods[name]


def repeat_kv(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, Hkv, D) -> (B, N, num_heads, D) by repeating each K/V head for its query group."""
    hkv = x.shape[2]
    if num_heads == hkv:
        return x
    if num_heads % hkv:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of the K/V heads ({hkv})")
    return x.repeat_interleave(num_heads // hkv, dim=2)
