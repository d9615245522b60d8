import pytest
import torch

from hwattn import registry
from hwattn.ops.sparse_transformer import sparse_transformer_attention
from hwattn.ops.sparse_transformer.naive import pattern_mask, sparse_transformer_attention as naive
from hwattn.testing import assert_rel_close

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("pattern,opts", [("strided", dict(stride=10)), ("fixed", dict(block_len=16, summary=2))])
def test_matches_naive_pattern(pattern, opts):
    q, k, v = (torch.randn(1, 75, 2, 32, device=DEV, dtype=torch.float16, requires_grad=True) for _ in range(3))
    out = sparse_transformer_attention(q, k, v, pattern=pattern, **opts)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    x64 = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref = naive(*x64, pattern=pattern, **opts)
    assert_rel_close("out", out, ref, torch.float16)
    for g, r in zip(grads, torch.autograd.grad(ref, x64, do.double())):
        assert_rel_close("grad", g, r, torch.float16)


def test_pattern_definitions():
    m = pattern_mask("strided", 12, stride=4)
    assert m[11].nonzero().flatten().tolist() == [3, 7, 8, 9, 10, 11]
    f = pattern_mask("fixed", 12, block_len=4, summary=1)
    assert f[9].nonzero().flatten().tolist() == [3, 7, 8, 9]


def test_registry_and_errors():
    method = registry.get("sparse_transformer")
    module = method.build(head_dim=16, num_heads=2, causal=True, pattern="fixed", block_len=8)
    x = torch.randn(1, 40, 2, 16, device=DEV, dtype=torch.float16)
    assert module(x, x, x).shape == x.shape
    with pytest.raises(ValueError, match="causal by construction"):
        method.build(head_dim=16, num_heads=2, causal=False)
    with pytest.raises(ValueError, match="pattern"):
        sparse_transformer_attention(x, x, x, pattern="dilated")
    with pytest.raises(ValueError, match="self-attention"):
        sparse_transformer_attention(x[:, :20], x, x)
