"""Linear attention: chunked causal / non-causal / recurrent Triton kernels against the float64 quadratic form."""
import pytest
import torch
import torch.nn.functional as F

from hwattn import registry
from hwattn.ops.linear_attn import linear_attention, linear_attention_recurrent
from hwattn.ops.linear_attn.naive import (elu_feature_map, linear_attention_naive,
                                          linear_attention_recurrent_naive)
from hwattn.testing import TOLERANCE, assert_rel_close


def _inputs(device, dtype, B, Nq, H, D, Dv, Nk=None, positive=False):
    Nk = Nq if Nk is None else Nk
    q = torch.randn(B, Nq, H, D, device=device, dtype=dtype)
    k = torch.randn(B, Nk, H, D, device=device, dtype=dtype)
    v = torch.randn(B, Nk, H, Dv, device=device, dtype=dtype)
    if positive:  # identity feature map with normalize=True needs non-negative features
        q, k = q.abs() + 0.05, k.abs() + 0.05
    return q, k, v


def _leaf(*xs):
    return [x.detach().clone().requires_grad_() for x in xs]


def _ref_map(feature_map):
    return elu_feature_map if feature_map == "elu+1" else (None if feature_map in (None, "identity") else feature_map)


def _check_against_naive(q, k, v, causal, feature_map="elu+1", normalize=True, chunk_size=64, bound=None):
    dtype = q.dtype
    qk = _leaf(q, k, v)
    out = linear_attention(*qk, causal=causal, feature_map=feature_map, normalize=normalize, chunk_size=chunk_size)
    do = torch.randn_like(out)
    out.backward(do)
    ref_in = _leaf(*(x.double() for x in (q, k, v)))
    ref, _ = linear_attention_naive(*ref_in, causal=causal, feature_map=_ref_map(feature_map), normalize=normalize)
    ref.backward(do.double())
    assert out.dtype == dtype and out.shape == ref.shape
    assert_rel_close("out", out, ref, dtype, bound)
    for name, a, b in zip(("dq", "dk", "dv"), qk, ref_in):
        scale = do.double().norm()
        if b.grad.norm() < 1e-4 * scale:  # e.g. N = 1 normalised: o = v exactly, dq = dk = 0 (ref is rounding)
            assert a.grad.double().norm() <= TOLERANCE[dtype] * scale, f"{name} should be ~0"
        else:
            assert_rel_close(name, a.grad, b.grad, dtype, bound)


# B, N, H, D, Dv, chunk: N = 1, N not a multiple of the chunk, several chunks, odd head dims, Dv != D
SHAPES = [(2, 37, 2, 16, 24, 16), (1, 1, 1, 16, 16, 64), (1, 70, 2, 24, 40, 64), (1, 100, 1, 32, 16, 32),
          (1, 40, 1, 80, 136, 32), (1, 150, 1, 16, 16, 128)]  # 80x136: several Dk and Dv blocks per program


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
def test_matches_naive(device, causal, dtype, shape):
    B, N, H, D, Dv, chunk = shape
    q, k, v = _inputs(device, dtype, B, N, H, D, Dv)
    _check_against_naive(q, k, v, causal, chunk_size=chunk)


@pytest.mark.parametrize("feature_map", ["elu+1", "identity", F.softplus], ids=["elu1", "identity", "softplus"])
@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "nonorm"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
def test_feature_maps_and_normalize(device, causal, normalize, feature_map):
    q, k, v = _inputs(device, torch.float32, 1, 45, 2, 16, 16, positive=feature_map == "identity")
    _check_against_naive(q, k, v, causal, feature_map=feature_map, normalize=normalize, chunk_size=16)


def test_noncausal_cross_lengths(device):
    q, k, v = _inputs(device, torch.float32, 2, 21, 2, 16, 16, Nk=50)
    _check_against_naive(q, k, v, causal=False, chunk_size=16)


def test_strided_inputs(device):
    # q/k/v as transposed views of (B, H, N, D) tensors and a slice of a wider head dim
    B, N, H, D = 2, 33, 2, 16
    q = torch.randn(B, H, N, D, device=device).transpose(1, 2)
    k = torch.randn(B, N, H, 2 * D, device=device)[..., :D]
    v = torch.randn(B, H, N, D, device=device).transpose(1, 2)
    assert not q.is_contiguous() and not k.is_contiguous()
    _check_against_naive(q, k, v, causal=True, chunk_size=16)


@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "nonorm"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
def test_state_in_out_and_gradients(device, causal, normalize):
    """Final state equals the naive one; running two halves in sequence (state out -> state in) equals one call,
    outputs and gradients (this exercises dS_final -> dS_0 through the backward kernels)."""
    B, N, H, D, Dv, cut = 2, 50, 2, 16, 24, 19
    q, k, v = _inputs(device, torch.float32, B, N, H, D, Dv)
    full_in = _leaf(q, k, v)
    full, state = linear_attention(*full_in, causal=causal, normalize=normalize, output_final_state=True,
                                   chunk_size=16)
    ref, ref_state = linear_attention_naive(*(x.double() for x in (q, k, v)), causal=causal, normalize=normalize)
    for a, b in zip(state if normalize else [state], ref_state if normalize else [ref_state]):
        assert a.dtype == torch.float32
        assert_rel_close("final state", a, b, torch.float32)
    if not causal:
        return
    do = torch.randn_like(full)
    ds = torch.randn_like(state[0] if normalize else state)
    loss_of = lambda o, st: (o * do).sum() + ((st[0] if normalize else st) * ds).sum()  # noqa: E731
    loss_of(full, state).backward()

    halves_in = _leaf(q, k, v)
    qa, ka, va = (x[:, :cut] for x in halves_in)
    qb, kb, vb = (x[:, cut:] for x in halves_in)
    o1, st1 = linear_attention(qa, ka, va, causal=True, normalize=normalize, output_final_state=True,
                               chunk_size=16)
    o2, st2 = linear_attention(qb, kb, vb, causal=True, normalize=normalize, initial_state=st1,
                               output_final_state=True, chunk_size=16)
    out = torch.cat([o1, o2], dim=1)
    assert_rel_close("two halves", out, full, torch.float32)
    loss_of(out, st2).backward()
    for name, a, b in zip(("dq", "dk", "dv"), halves_in, full_in):
        assert_rel_close(name, a.grad, b.grad, torch.float32)


def test_initial_state_gradients(device):
    B, N, H, D, Dv = 1, 40, 2, 16, 16
    q, k, v = _inputs(device, torch.float32, B, N, H, D, Dv)
    s0 = torch.randn(B, H, D, Dv, device=device)
    z0 = torch.rand(B, H, D, device=device) * 5 + 1
    ours = _leaf(q, k, v, s0, z0)
    out, (s, z) = linear_attention(*ours[:3], causal=True, initial_state=(ours[3], ours[4]),
                                   output_final_state=True, chunk_size=16)
    g = [torch.randn_like(t) for t in (out, s, z)]
    sum((a * b).sum() for a, b in zip((out, s, z), g)).backward()
    refs = _leaf(*(t.double() for t in (q, k, v, s0, z0)))
    r, (rs, rz) = linear_attention_naive(*refs[:3], causal=True, initial_state=(refs[3], refs[4]))
    sum((a * b.double()).sum() for a, b in zip((r, rs, rz), g)).backward()
    assert_rel_close("out", out, r, torch.float32)
    for name, a, b in zip(("dq", "dk", "dv", "dS0", "dz0"), ours, refs):
        assert_rel_close(name, a.grad, b.grad, torch.float32)


def test_fp16_long_prefix_does_not_overflow(device):
    """A state from a long prefix (z ~ 1e6, far past fp16's 65504) stays in fp32 inside the kernels."""
    B, N, H, D = 1, 40, 2, 16
    q, k, v = _inputs(device, torch.float16, B, N, H, D, D)
    s0 = torch.randn(B, H, D, D, device=device) * 1e5
    z0 = torch.rand(B, H, D, device=device) * 1e6 + 1e5
    out = linear_attention(q, k, v, causal=True, initial_state=(s0, z0), chunk_size=16)
    ref, _ = linear_attention_naive(q.double(), k.double(), v.double(), causal=True,
                                    initial_state=(s0.double(), z0.double()))
    assert torch.isfinite(out).all()
    assert_rel_close("out", out, ref, torch.float16)


@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "nonorm"])
def test_recurrent_decode_equals_parallel(device, normalize):
    B, N, H, D, Dv = 2, 12, 2, 16, 24
    q, k, v = _inputs(device, torch.float32, B, N, H, D, Dv)
    parallel = linear_attention(q, k, v, causal=True, normalize=normalize, chunk_size=16)
    state, outs = None, []
    for t in range(N):          # one token at a time (the decode loop), state carried in between
        o, state = linear_attention_recurrent(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], initial_state=state,
                                              normalize=normalize)
        outs.append(o)
    assert_rel_close("decode vs parallel", torch.cat(outs, 1), parallel, torch.float32)
    ref, ref_state = linear_attention_recurrent_naive(q.double(), k.double(), v.double(), normalize=normalize)
    assert_rel_close("decode vs naive recurrence", torch.cat(outs, 1), ref, torch.float32)
    assert_rel_close("state", state[0] if normalize else state, ref_state[0] if normalize else ref_state,
                     torch.float32)


def test_recurrent_with_grad_uses_differentiable_path(device):
    q, k, v = _inputs(device, torch.float32, 1, 9, 2, 16, 16)
    ours = _leaf(q, k, v)
    out, _ = linear_attention_recurrent(*ours)
    do = torch.randn_like(out)
    out.backward(do)
    refs = _leaf(*(t.double() for t in (q, k, v)))
    r, _ = linear_attention_recurrent_naive(*refs)
    r.backward(do.double())
    for name, a, b in zip(("dq", "dk", "dv"), ours, refs):
        assert_rel_close(name, a.grad, b.grad, torch.float32)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
def test_registry_method(device, causal):
    m = registry.get("linear")
    assert not m.exact and m.supports_decode
    mod = m.build(head_dim=16, num_heads=2, max_seqlen=64, causal=causal)
    q, k, v = _inputs(device, torch.float32, 1, 20, 2, 16, 16)
    out = mod(q, k, v)
    ref, _ = linear_attention_naive(q.double(), k.double(), v.double(), causal=causal)
    assert_rel_close("module", out, ref, torch.float32)
    o1, st = mod.step(q[:, :15], k[:, :15], v[:, :15])
    o2, st = mod.step(q[:, 15:], k[:, 15:], v[:, 15:], st)
    if causal:
        assert_rel_close("step", torch.cat([o1, o2], 1), out, torch.float32)
    else:  # new queries see the carried state plus every new key: all 20 keys
        assert_rel_close("step", o2, out[:, 15:], torch.float32)


def test_bad_input(device):
    q, k, v = _inputs(device, torch.float32, 1, 8, 2, 16, 16)
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        linear_attention(q.tolist(), k, v)
    with pytest.raises(ValueError, match="q must have 4 dimensions"):
        linear_attention(q[0], k, v)
    with pytest.raises(TypeError, match="dtype float64"):
        linear_attention(q.double(), k.double(), v.double())
    with pytest.raises(ValueError, match="share one dtype"):
        linear_attention(q, k.half(), v)
    with pytest.raises(ValueError, match="same number of heads"):
        linear_attention(q, k[:, :, :1], v[:, :, :1])
    with pytest.raises(ValueError, match="as many keys as queries"):
        linear_attention(q, k[:, :5], v[:, :5], causal=True)
    with pytest.raises(ValueError, match="same seqlen"):
        linear_attention(q, k, v[:, :5])
    with pytest.raises(ValueError, match="head_dim must equal"):
        linear_attention(q, k[..., :8], v)
    with pytest.raises(ValueError, match="no empty dimension"):
        linear_attention(q[:, :0], k[:, :0], v[:, :0])
    with pytest.raises(TypeError, match="causal must be a bool"):
        linear_attention(q, k, v, causal=1)
    with pytest.raises(ValueError, match="feature_map must be"):
        linear_attention(q, k, v, feature_map="softmax")
    with pytest.raises(TypeError, match="feature_map must be"):
        linear_attention(q, k, v, feature_map=3)
    with pytest.raises(ValueError, match="feature_map\\(q\\) must return"):
        linear_attention(q, k, v, feature_map=lambda x: x.sum(-1))
    with pytest.raises(ValueError, match="eps must be a finite float >= 0"):
        linear_attention(q, k, v, eps=-1.0)
    with pytest.raises(ValueError, match="chunk_size must be one of"):
        linear_attention(q, k, v, chunk_size=48)
    with pytest.raises(TypeError, match="\\(S, z\\) tuple"):
        linear_attention(q, k, v, causal=True, initial_state=torch.zeros(1, 2, 16, 16, device=device))
    with pytest.raises(ValueError, match="initial_state S must have shape"):
        linear_attention(q, k, v, causal=True, initial_state=(torch.zeros(1, 2, 16, 8, device=device),
                                                              torch.zeros(1, 2, 16, device=device)))
    with pytest.raises(ValueError, match="initial_state z must have shape"):
        linear_attention(q, k, v, causal=True, initial_state=(torch.zeros(1, 2, 16, 16, device=device),
                                                              torch.zeros(1, 2, 8, device=device)))
    with pytest.raises(TypeError, match="single tensor"):
        linear_attention(q, k, v, normalize=False, initial_state=(torch.zeros(1, 2, 16, 16, device=device),))
    with pytest.raises(TypeError, match="output_final_state must be a bool"):
        linear_attention(q, k, v, output_final_state="yes")
    with pytest.raises(TypeError, match="normalize must be a bool"):
        linear_attention_recurrent(q, k, v, normalize=None)

