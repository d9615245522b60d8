"""Linformer: learned sequence projections; identity projections give exact softmax attention."""
import pytest
import torch

from hwattn import registry
from hwattn.ops.linformer import linformer_attention
from hwattn.ops.linformer.naive import linformer_attention_naive
from hwattn.reference import attention
from hwattn.testing import assert_rel_close


def _leaf(*xs):
    return [x.detach().clone().requires_grad_() for x in xs]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("per_head", [False, True], ids=["shared", "per_head"])
def test_identity_projection_is_softmax_attention(device, dtype, per_head):
    B, N, H, D = 2, 40, 3, 16
    q, k, v = (torch.randn(B, N, H, D, device=device, dtype=dtype) for _ in range(3))
    eye = torch.eye(N, device=device, dtype=dtype)
    e = eye.expand(H, N, N).clone() if per_head else eye
    out = linformer_attention(q, k, v, e, e.clone())
    ref = attention(q.double(), k.double(), v.double())
    assert_rel_close("out", out, ref, dtype, 1e-12 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("sharing", ["none", "headwise", "key-value"])
def test_module_matches_naive_with_gradients(device, sharing):
    B, N, H, D, n, kdim = 2, 48, 2, 16, 64, 24
    mod = registry.get("linformer").build(head_dim=D, num_heads=H, max_seqlen=n, causal=False, k=kdim,
                                          sharing=sharing).to(device)
    shapes = {"none": (H, kdim, n), "headwise": (kdim, n), "key-value": (kdim, n)}
    assert mod.e_proj.shape == shapes[sharing]
    assert (mod.f_proj is None) == (sharing == "key-value")
    q, k, v = (torch.randn(B, N, H, D, device=device) for _ in range(3))
    ours = _leaf(q, k, v)
    out = mod(*ours)
    do = torch.randn_like(out)
    out.backward(do)
    refs = _leaf(q.double(), k.double(), v.double(), mod.e_proj.double())
    f_ref = None if mod.f_proj is None else _leaf(mod.f_proj.double())[0]
    ref = linformer_attention_naive(*refs, f_ref)
    ref.backward(do.double())
    assert_rel_close("out", out, ref, torch.float32)
    for name, a, b in zip(("dq", "dk", "dv"), ours, refs):
        assert_rel_close(name, a.grad, b.grad, torch.float32)
    assert_rel_close("dE", mod.e_proj.grad, refs[3].grad, torch.float32)
    if f_ref is not None:
        assert_rel_close("dF", mod.f_proj.grad, f_ref.grad, torch.float32)


def test_short_input_equals_zero_padding(device):
    """N < n: identical to zero-padding K and V to n and using the full E, F (the padded rows add nothing)."""
    B, N, H, D, n, kdim = 2, 30, 2, 16, 64, 20
    q, k, v = (torch.randn(B, N, H, D, device=device, dtype=torch.float64) for _ in range(3))
    e, f = (torch.randn(kdim, n, device=device, dtype=torch.float64) / n ** 0.5 for _ in range(2))
    out = linformer_attention(q, k, v, e, f)
    pad = torch.zeros(B, n - N, H, D, device=device, dtype=torch.float64)
    ref = attention(q, torch.einsum("kn,bnhd->bkhd", e, torch.cat([k, pad], 1)),
                    torch.einsum("kn,bnhd->bkhd", f, torch.cat([v, pad], 1)))
    assert_rel_close("out", out, ref, torch.float64)


def test_key_padding_mask(device):
    """Masked tokens are excluded: equal to projecting only the real tokens with their columns of E, F."""
    B, N, H, D, n, kdim = 1, 32, 2, 16, 32, 12
    q, k, v = (torch.randn(B, N, H, D, device=device, dtype=torch.float64) for _ in range(3))
    e, f = (torch.randn(kdim, n, device=device, dtype=torch.float64) for _ in range(2))
    keep = torch.rand(B, N, device=device) > 0.3
    out = linformer_attention(q, k, v, e, f, key_padding_mask=keep)
    idx = keep[0].nonzero().squeeze(1)
    ref = attention(q, torch.einsum("kn,bnhd->bkhd", e[:, idx], k[:, idx]),
                    torch.einsum("kn,bnhd->bkhd", f[:, idx], v[:, idx]))
    assert_rel_close("out", out, ref, torch.float64)
    assert (out - linformer_attention(q, k, v, e, f)).abs().max() > 1e-3  # the mask did change something


def test_bad_input(device):
    q, k, v = (torch.randn(1, 16, 2, 8, device=device) for _ in range(3))
    e = torch.randn(4, 16, device=device)
    with pytest.raises(ValueError, match="non-causal by construction"):
        linformer_attention(q, k, v, e, causal=True)
    with pytest.raises(ValueError, match="non-causal by construction"):
        registry.get("linformer").build(head_dim=8, num_heads=2, max_seqlen=16, causal=True)
    assert not registry.get("linformer").supports_causal and registry.get("linformer").max_seqlen_fixed
    with pytest.raises(ValueError, match="exceeds the Linformer projection's max length n=8"):
        linformer_attention(q, k, v, torch.randn(4, 8, device=device))
    mod = registry.get("linformer").build(head_dim=8, num_heads=2, max_seqlen=8, causal=False).to(device)
    with pytest.raises(ValueError, match="exceeds"):
        mod(q, k, v)
    with pytest.raises(ValueError, match="needs max_seqlen"):
        registry.get("linformer").build(head_dim=8, num_heads=2, causal=False)
    with pytest.raises(ValueError, match="must be <= max_seqlen"):
        registry.get("linformer").build(head_dim=8, num_heads=2, max_seqlen=16, causal=False, k=32)
    with pytest.raises(ValueError, match="k \\(projected length\\) must be a positive int"):
        registry.get("linformer").build(head_dim=8, num_heads=2, max_seqlen=16, causal=False, k=0)
    with pytest.raises(ValueError, match="sharing must be one of"):
        registry.get("linformer").build(head_dim=8, num_heads=2, max_seqlen=16, causal=False, sharing="layer")
    with pytest.raises(ValueError, match="per head must be \\(H, k, n\\) with H=2"):
        linformer_attention(q, k, v, torch.randn(3, 4, 16, device=device))
    with pytest.raises(ValueError, match="same k"):
        linformer_attention(q, k, v, e, torch.randn(5, 16, device=device))
    with pytest.raises(TypeError, match="key_padding_mask has dtype"):
        linformer_attention(q, k, v, e, key_padding_mask=torch.ones(1, 16, device=device))
    with pytest.raises(ValueError, match="key_padding_mask must be \\(B, Nk\\)"):
        linformer_attention(q, k, v, e, key_padding_mask=torch.ones(1, 15, dtype=torch.bool, device=device))
    with pytest.raises(ValueError, match="share batch and heads"):
        linformer_attention(q, k[:, :, :1], v[:, :, :1], e)
