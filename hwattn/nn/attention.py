"""Multi-head attention with a pluggable method from `hwattn.registry`: projections, RoPE, GQA, decoding."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .. import registry
from .._checks import check_bool, check_tensor
from .rope import apply_rope, rope_angles

__all__ = ["Attention", "DecodeState", "describe_methods"]


def describe_methods() -> str:
    """One line per registered method: name, what it supports (causal, decode, max length) and its options."""
    lines = []
    for m in sorted(registry.methods().values(), key=lambda m: m.name):
        causal = ("causal + non-causal" if m.supports_causal and m.supports_noncausal
                  else "causal only" if m.supports_causal else "non-causal only")
        decode = "KV-cache/recurrent decode" if m.supports_decode else "no decode (full recompute)"
        length = "fixed max length (needs max_seqlen)" if m.max_seqlen_fixed else "any length"
        gqa = "native GQA" if m.supports_gqa else "GQA by repeating K/V"
        opts = ", ".join(m.options) or "none"
        lines.append(f"  {m.name}: {causal}; {decode}; {length}; {gqa}; options: {opts}")
    return "\n".join(lines)


def _method_or_raise(method) -> registry.Method:
    if not isinstance(method, str):
        raise TypeError(f"method must be a str naming a registered attention method, got "
                        f"{type(method).__name__}; valid methods:\n{describe_methods()}")
    if method not in registry.methods():
        raise ValueError(f"unknown attention method {method!r}; valid methods:\n{describe_methods()}")
    return registry.get(method)


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclass
class DecodeState:
    """What one `Attention` layer keeps between `step` calls.

    pos: number of tokens already seen (= the RoPE position of the next token).
    inner: the method's own state (a KV cache for exact methods, a recurrent state for linear ones).
    q/k/v: for methods without `supports_decode`, every rotated q/k/v so far; each step recomputes the
        whole causal attention and keeps the new rows (correct, O(N) work per token more than a cache).
    """
    pos: int = 0
    inner: Any = None
    q: torch.Tensor | None = None
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None


class Attention(torch.nn.Module):
    """Multi-head self-attention whose inner softmax(QK^T)V is any method of `hwattn.registry`.

    Args:
        dim: model width; input and output are (B, N, dim).
        num_heads: query heads Hq; head_dim = dim // num_heads (dim must be divisible).
        num_kv_heads: K/V heads Hkv (GQA; 1 = MQA); must divide num_heads. Default num_heads.
            Methods without native GQA get K/V repeated to Hq heads (`registry.repeat_kv`).
        method: registered method name, e.g. "flash" (Triton kernel), "naive" (PyTorch reference) or an
            approximate method; an unknown name raises ValueError listing every method and what it supports.
        causal: causal self-attention (token t sees tokens <= t). A method that cannot do the requested
            kind (causal or not) is refused here, with a ValueError.
        rope: rotate q and k by their positions (RoPE, half-split form); needs an even head_dim.
        max_seqlen: longest sequence the layer will see; required by methods built for one length
            (`max_seqlen_fixed`, e.g. Linformer), checked in forward when given.
        rope_base: RoPE frequency base, default 10000.
        **method_options: passed to the method's builder; only options the method declares are accepted.

    forward(x): x (B, N, dim) float -> (B, N, dim); positions are 0..N-1.
    step(x, state): decoding; see `step`.
    """

    def __init__(self, dim: int, num_heads: int, num_kv_heads: int | None = None, method: str = "flash",
                 causal: bool = True, rope: bool = True, max_seqlen: int | None = None,
                 rope_base: float = 10000.0, **method_options):
        super().__init__()
        _check_int("dim", dim)
        _check_int("num_heads", num_heads)
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if num_kv_heads is None:
            num_kv_heads = num_heads
        _check_int("num_kv_heads", num_kv_heads)
        if num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads ({num_kv_heads}) must divide num_heads ({num_heads})")
        check_bool("causal", causal)
        check_bool("rope", rope)
        if max_seqlen is not None:
            _check_int("max_seqlen", max_seqlen)
        if isinstance(rope_base, bool) or not isinstance(rope_base, (int, float)) or not rope_base > 1:
            raise ValueError(f"rope_base must be a number > 1, got {rope_base!r}")
        head_dim = dim // num_heads
        if rope and head_dim % 2:
            raise ValueError(f"rope=True needs an even head_dim, got dim {dim} / num_heads {num_heads} = {head_dim}")
        spec = _method_or_raise(method)
        if causal and not spec.supports_causal:
            ok = [m.name for m in registry.methods().values() if m.supports_causal]
            raise ValueError(f"method {method!r} does not support causal attention (causal=True); "
                             f"causal methods: {', '.join(sorted(ok))}. Valid methods:\n{describe_methods()}")
        if not causal and not spec.supports_noncausal:
            ok = [m.name for m in registry.methods().values() if m.supports_noncausal]
            raise ValueError(f"method {method!r} does not support non-causal attention (causal=False); "
                             f"non-causal methods: {', '.join(sorted(ok))}")
        if spec.max_seqlen_fixed and max_seqlen is None:
            raise ValueError(f"method {method!r} is built for one sequence length: pass max_seqlen")
        unknown = sorted(set(method_options) - set(spec.options))
        if unknown:
            known = ", ".join(f"{k} ({v})" for k, v in spec.options.items()) or "none"
            raise ValueError(f"method {method!r} got unknown option(s) {', '.join(unknown)}; its options: {known}")

        self.dim, self.num_heads, self.num_kv_heads, self.head_dim = dim, num_heads, num_kv_heads, head_dim
        self.method, self.spec, self.causal, self.rope = method, spec, causal, rope
        self.max_seqlen, self.rope_base = max_seqlen, float(rope_base)
        self.wq = torch.nn.Linear(dim, num_heads * head_dim, bias=False)
        self.wk = torch.nn.Linear(dim, num_kv_heads * head_dim, bias=False)
        self.wv = torch.nn.Linear(dim, num_kv_heads * head_dim, bias=False)
        self.wo = torch.nn.Linear(num_heads * head_dim, dim, bias=False)
        # Methods without native GQA see Hq K/V heads (repeated), so they are built for that.
        inner_kv = num_kv_heads if spec.supports_gqa else num_heads
        self.inner = spec.build(head_dim=head_dim, num_heads=num_heads, num_kv_heads=inner_kv,
                                max_seqlen=max_seqlen, causal=causal, **method_options)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.num_heads}, kv_heads={self.num_kv_heads}, method={self.method!r}, "
                f"causal={self.causal}, rope={self.rope}")

    def _check_input(self, x, what="x"):
        check_tensor(what, x, 3, layout="(batch, seqlen, dim)")
        if not x.dtype.is_floating_point:
            raise TypeError(f"{what} must be a float tensor, got {x.dtype}")
        if x.shape[-1] != self.dim:
            raise ValueError(f"{what} must be (B, N, {self.dim}), got {tuple(x.shape)}")
        if x.shape[1] == 0:
            raise ValueError(f"{what} must hold at least one token, got shape {tuple(x.shape)}")

    def _qkv(self, x: torch.Tensor, start: int):
        B, N, _ = x.shape
        q = self.wq(x).view(B, N, self.num_heads, self.head_dim)
        k = self.wk(x).view(B, N, self.num_kv_heads, self.head_dim)
        v = self.wv(x).view(B, N, self.num_kv_heads, self.head_dim)
        if self.rope:
            cos, sin = rope_angles(torch.arange(start, start + N, device=x.device), self.head_dim, self.rope_base)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if not self.spec.supports_gqa:
            k, v = registry.repeat_kv(k, self.num_heads), registry.repeat_kv(v, self.num_heads)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        B, N, _ = x.shape
        if self.max_seqlen is not None and N > self.max_seqlen:
            raise ValueError(f"x has {N} tokens, more than max_seqlen={self.max_seqlen} this layer was built for")
        q, k, v = self._qkv(x, 0)
        out = self.inner(q, k, v)
        return self.wo(out.reshape(B, N, self.num_heads * self.head_dim))

    def step(self, x: torch.Tensor, state: DecodeState | None = None) -> tuple[torch.Tensor, DecodeState]:
        """Decode: attend the new tokens x (B, n_new, dim) to everything seen so far.

        `state=None` starts an empty sequence (the first call may hold a whole prompt). Returns the outputs
        (B, n_new, dim) and the new state; feeding a sequence in pieces gives the same outputs as `forward`
        on the whole sequence. Methods with `supports_decode` use their cache/recurrent state; the others
        fall back to recomputing the whole causal attention each step. Only causal layers can decode.
        """
        if not self.causal:
            raise ValueError("step() decodes autoregressively and needs a causal layer; this one has causal=False")
        self._check_input(x)
        if state is None:
            state = DecodeState()
        elif not isinstance(state, DecodeState):
            raise TypeError(f"state must be a DecodeState or None, got {type(state).__name__}")
        B, n, _ = x.shape
        total = state.pos + n
        if self.max_seqlen is not None and total > self.max_seqlen:
            raise ValueError(f"decoding past max_seqlen={self.max_seqlen} (would reach {total} tokens)")
        q, k, v = self._qkv(x, state.pos)
        if self.spec.supports_decode:
            out, inner = self.inner.step(q, k, v, state.inner)
            new = DecodeState(pos=total, inner=inner)
        else:
            if state.q is not None:
                q = torch.cat([state.q, q], dim=1)
                k = torch.cat([state.k, k], dim=1)
                v = torch.cat([state.v, v], dim=1)
            out = self.inner(q, k, v)[:, -n:]
            new = DecodeState(pos=total, q=q, k=k, v=v)
        return self.wo(out.reshape(B, n, self.num_heads * self.head_dim)), new
