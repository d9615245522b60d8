"""hwattn.nn.Attention: projections, RoPE, GQA and decoding over every registered method."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from hwattn import registry
from hwattn.nn import Attention, DecodeState, RMSNorm, SwiGLU, apply_rope, describe_methods, rope_angles
from hwattn.reference import attention as reference_attention
from hwattn.testing import rel_err

METHODS = registry.names()          # collected now: a method that registers later is covered automatically
EXACT = [m for m in METHODS if registry.get(m).exact]


def _causal_for(name):
    return registry.get(name).supports_causal


def _make(name, dim=32, heads=2, kv_heads=None, causal=None, n=16, **opts):
    causal = _causal_for(name) if causal is None else causal
    return Attention(dim, heads, kv_heads, method=name, causal=causal, max_seqlen=n, **opts)


def _rope_complex(x, positions, base=10000.0):
    """Independent RoPE: pair (x_i, x_{i+D/2}) as a complex number times exp(i * pos * base^(-2i/D)), float64."""
    D = x.shape[-1]
    z = torch.complex(x[..., : D // 2].double(), x[..., D // 2:].double())
    theta = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    rot = torch.polar(torch.ones_like(theta)[None, :].expand(len(positions), -1),
                      positions.double()[:, None] * theta[None, :])
    z = z * rot[None, :, None, :]
    return torch.cat([z.real, z.imag], dim=-1)


def _expected(layer: Attention, x: torch.Tensor) -> torch.Tensor:
    """The layer's output rebuilt by hand in float64 around its own inner module (for approximate methods)."""
    B, N, _ = x.shape
    x64 = x.double()
    wq, wk, wv, wo = (w.weight.double() for w in (layer.wq, layer.wk, layer.wv, layer.wo))
    q = (x64 @ wq.T).view(B, N, layer.num_heads, layer.head_dim)
    k = (x64 @ wk.T).view(B, N, layer.num_kv_heads, layer.head_dim)
    v = (x64 @ wv.T).view(B, N, layer.num_kv_heads, layer.head_dim)
    pos = torch.arange(N)
    q, k = _rope_complex(q, pos), _rope_complex(k, pos)
    if layer.spec.exact:
        o = reference_attention(q, k, v, causal=layer.causal)
    else:
        g = layer.num_heads // layer.num_kv_heads
        k, v = k.repeat_interleave(g, 2), v.repeat_interleave(g, 2)
        o = layer.inner(q.float(), k.float(), v.float()).double()
    return o.reshape(B, N, -1) @ wo.T


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kv_heads", [2, 1])
def test_forward_backward_every_method(method, kv_heads):
    torch.manual_seed(0)
    layer = _make(method, kv_heads=kv_heads)
    x = torch.randn(2, 16, 32, requires_grad=True)
    out = layer(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    bound = 1e-5 if layer.spec.exact else 1e-4
    assert rel_err(out, _expected(layer, x.detach())) <= bound
    out.square().mean().backward()
    for name, p in layer.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("method", EXACT)
def test_gradients_match_float64_reference(method):
    torch.manual_seed(1)
    layer = _make(method, kv_heads=1)
    x = torch.randn(2, 13, 32)
    xa = x.clone().requires_grad_(True)
    layer(xa).sum().backward()
    ref_layer = _make("naive", kv_heads=1, causal=layer.causal).double()
    ref_layer.load_state_dict(layer.state_dict())
    xb = x.double().requires_grad_(True)
    ref_layer(xb).sum().backward()
    assert rel_err(xa.grad, xb.grad) <= 1e-5
    for (name, p), (_, r) in zip(layer.named_parameters(), ref_layer.named_parameters()):
        assert rel_err(p.grad, r.grad) <= 1e-5, name


@pytest.mark.parametrize("method", [m for m in METHODS if _causal_for(m)])
def test_causal_layer_does_not_leak(method):
    """Output at t must not change when inputs after t change."""
    torch.manual_seed(2)
    layer = _make(method)
    x = torch.randn(2, 16, 32)
    t = 6
    y = x.clone()
    y[:, t + 1:] = torch.randn(2, 16 - t - 1, 32) * 3
    a, b = layer(x), layer(y)
    assert rel_err(b[:, : t + 1], a[:, : t + 1]) <= 1e-5
    assert rel_err(b[:, t + 1:], a[:, t + 1:]) > 1e-2          # the change is visible after t


@pytest.mark.parametrize("method", [m for m in METHODS if _causal_for(m)])
def test_step_matches_forward(method):
    torch.manual_seed(3)
    layer = _make(method, kv_heads=1)
    x = torch.randn(2, 16, 32)
    full = layer(x)
    pieces, state = [], None
    for lo, hi in ((0, 5), (5, 6), (6, 7), (7, 12), (12, 16)):   # a prompt, single tokens, a chunk
        out, state = layer.step(x[:, lo:hi], state)
        pieces.append(out)
    assert state.pos == 16
    assert rel_err(torch.cat(pieces, 1), full) <= 1e-5


def test_step_falls_back_to_recompute_without_decode():
    torch.manual_seed(4)
    layer = _make("naive", kv_heads=1)
    layer.spec = dataclasses.replace(layer.spec, supports_decode=False)
    x = torch.randn(1, 10, 32)
    full = layer(x)
    out1, state = layer.step(x[:, :4])
    assert state.inner is None and state.k.shape[1] == 4
    out2, state = layer.step(x[:, 4:], state)
    assert rel_err(torch.cat([out1, out2], 1), full) <= 1e-6


def test_rope_matches_complex_rotation_and_is_relative():
    torch.manual_seed(5)
    x = torch.randn(2, 7, 3, 8, dtype=torch.float64)
    pos = torch.arange(3, 10)
    cos, sin = rope_angles(pos, 8)
    assert rel_err(apply_rope(x, cos, sin), _rope_complex(x, pos)) <= 1e-6   # angles are float32
    q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)

    def score(m, n):
        qm = _rope_complex(q.view(1, 1, 1, 8), torch.tensor([m]))
        kn = _rope_complex(k.view(1, 1, 1, 8), torch.tensor([n]))
        return float((qm * kn).sum())
    assert math.isclose(score(5, 2), score(105, 102), rel_tol=1e-9, abs_tol=1e-9)
    assert not math.isclose(score(5, 2), score(5, 3), rel_tol=1e-3)


def test_gqa_shares_kv_heads():
    """With 4 query heads over 2 K/V heads, heads 0,1 use K/V head 0 and heads 2,3 use K/V head 1."""
    torch.manual_seed(6)
    layer = Attention(32, 4, 2, method="naive", causal=True, rope=False)
    x = torch.randn(1, 9, 32, dtype=torch.float64)
    layer = layer.double()
    q = (x @ layer.wq.weight.T).view(1, 9, 4, 8)
    k = (x @ layer.wk.weight.T).view(1, 9, 2, 8)
    v = (x @ layer.wv.weight.T).view(1, 9, 2, 8)
    heads = [reference_attention(q[:, :, h:h + 1], k[:, :, h // 2:h // 2 + 1], v[:, :, h // 2:h // 2 + 1], causal=True)
             for h in range(4)]
    expect = torch.cat(heads, 2).reshape(1, 9, 32) @ layer.wo.weight.T
    assert rel_err(layer(x), expect) <= 1e-12


def test_method_options_reach_the_method():
    torch.manual_seed(7)
    x = torch.randn(1, 8, 32, dtype=torch.float64)
    a = Attention(32, 2, method="naive", causal=False, softmax_scale=0.05).double()
    b = Attention(32, 2, method="naive", causal=False).double()
    b.load_state_dict(a.state_dict())
    assert rel_err(a(x), b(x)) > 1e-3


def test_unknown_method_lists_valid_names_and_support():
    with pytest.raises(ValueError) as e:
        Attention(32, 2, method="no_such_method")
    msg = str(e.value)
    for name in METHODS:
        assert name in msg
    assert "decode" in msg and "causal" in msg and "length" in msg
    with pytest.raises(TypeError, match="method must be a str"):
        Attention(32, 2, method=3)
    assert all(name in describe_methods() for name in METHODS)


def _fake(monkeypatch, **flags):
    inner = registry.get("naive")
    fake = dataclasses.replace(inner, name="fake_method", **flags)
    monkeypatch.setitem(registry._REGISTRY, "fake_method", fake)
    return fake


def test_causal_model_with_noncausal_method_is_refused(monkeypatch):
    _fake(monkeypatch, supports_causal=False)
    with pytest.raises(ValueError, match="does not support causal attention"):
        Attention(32, 2, method="fake_method", causal=True)
    Attention(32, 2, method="fake_method", causal=False)


def test_noncausal_with_causal_only_method_is_refused(monkeypatch):
    _fake(monkeypatch, supports_noncausal=False)
    with pytest.raises(ValueError, match="does not support non-causal"):
        Attention(32, 2, method="fake_method", causal=False)


def test_fixed_length_method_needs_max_seqlen(monkeypatch):
    _fake(monkeypatch, max_seqlen_fixed=True)
    with pytest.raises(ValueError, match="max_seqlen"):
        Attention(32, 2, method="fake_method")
    layer = Attention(32, 2, method="fake_method", max_seqlen=8)
    with pytest.raises(ValueError, match="max_seqlen=8"):
        layer(torch.randn(1, 9, 32))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(dim=0, num_heads=1), ValueError, "dim must be >= 1"),
    (dict(dim=32.0, num_heads=2), TypeError, "dim must be an int"),
    (dict(dim=30, num_heads=4), ValueError, "divisible by num_heads"),
    (dict(dim=32, num_heads=4, num_kv_heads=3), ValueError, "must divide num_heads"),
    (dict(dim=32, num_heads=4, num_kv_heads=0), ValueError, "num_kv_heads must be >= 1"),
    (dict(dim=12, num_heads=4), ValueError, "even head_dim"),
    (dict(dim=32, num_heads=2, causal=1), TypeError, "causal must be a bool"),
    (dict(dim=32, num_heads=2, rope="yes"), TypeError, "rope must be a bool"),
    (dict(dim=32, num_heads=2, max_seqlen=0), ValueError, "max_seqlen must be >= 1"),
    (dict(dim=32, num_heads=2, rope_base=1.0), ValueError, "rope_base"),
    (dict(dim=32, num_heads=2, nb_features=3), ValueError, "unknown option"),
])
def test_bad_construction(kwargs, exc, match):
    kwargs.setdefault("method", "naive")
    with pytest.raises(exc, match=match):
        Attention(**kwargs)


def test_bad_inputs():
    layer = Attention(32, 2, method="naive")
    with pytest.raises(ValueError, match="3 dimensions"):
        layer(torch.randn(2, 32))
    with pytest.raises(ValueError, match=r"\(B, N, 32\)"):
        layer(torch.randn(2, 4, 16))
    with pytest.raises(TypeError, match="float"):
        layer(torch.ones(2, 4, 32, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        layer([1.0])
    with pytest.raises(TypeError, match="DecodeState"):
        layer.step(torch.randn(1, 1, 32), state=(1, 2))
    enc = Attention(32, 2, method="naive", causal=False)
    with pytest.raises(ValueError, match="causal"):
        enc.step(torch.randn(1, 1, 32))
    assert isinstance(layer.step(torch.randn(1, 2, 32))[1], DecodeState)


def test_rmsnorm_and_swiglu():
    torch.manual_seed(8)
    norm = RMSNorm(16).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    expect = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    assert rel_err(norm(x), expect) <= 1e-12
    assert norm(x.float()).dtype == torch.float32
    mlp = SwiGLU(16).double()
    assert mlp.w1.out_features == 48                     # round_up(8/3 * 16, 8)
    h = torch.nn.functional.silu(x @ mlp.w1.weight.T) * (x @ mlp.w3.weight.T)
    assert rel_err(mlp(x), h @ mlp.w2.weight.T) <= 1e-12
    with pytest.raises(ValueError, match="dim must be > 0"):
        RMSNorm(0)
    with pytest.raises(ValueError, match="eps"):
        RMSNorm(4, eps=0)
    with pytest.raises(ValueError, match="last dimension 16"):
        norm(torch.randn(2, 8, dtype=torch.float64))
    with pytest.raises(TypeError, match="hidden_dim must be an int"):
        SwiGLU(16, 2.5)
    with pytest.raises(ValueError, match="even"):
        rope_angles(torch.arange(4), 7)
    with pytest.raises(TypeError, match="integer"):
        rope_angles(torch.arange(4.0), 8)


def test_short_conv_matches_conv1d_and_steps():
    from hwattn.nn import ShortConv
    torch.manual_seed(9)
    conv = ShortConv(6, 3).double()
    x = torch.randn(2, 11, 6, dtype=torch.float64)
    # y_t = sum_i w[:, i] x_{t-i}: conv1d over the left-padded sequence with the kernel flipped
    ref = torch.nn.functional.conv1d(torch.nn.functional.pad(x.transpose(1, 2), (2, 0)),
                                     conv.weight.flip(-1)[:, None, :], groups=6).transpose(1, 2)
    assert rel_err(conv(x), ref) <= 1e-12
    y1, cache = conv.step(x[:, :4])
    y2, cache = conv.step(x[:, 4:5], cache)
    y3, cache = conv.step(x[:, 5:], cache)
    assert rel_err(torch.cat([y1, y2, y3], 1), ref) <= 1e-12 and cache.shape == (2, 2, 6)
    with pytest.raises(ValueError, match="kernel_size must be > 0"):
        ShortConv(6, 0)
    with pytest.raises(ValueError, match=r"\(B, N, 6\)"):
        conv(torch.randn(2, 3, 5, dtype=torch.float64))
