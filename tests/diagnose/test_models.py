"""FLOP and byte models against hand counts: counting rules (matmul, softmax, views, copies) and the
attention IO model (naive five steps vs tiled kernel), each checked against an independent count."""
import math

import pytest
import torch

import hwattn.reference as reference
from hwattn.diagnose import attention_model, count
from hwattn.diagnose.counting import tensor_bytes


def _rand(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


@pytest.mark.parametrize("m,k,n", [(64, 32, 16), (7, 5, 3), (1, 9, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_matmul_counts(m, k, n, dtype):
    a, b = _rand(m, k, dtype=dtype), _rand(k, n, dtype=dtype)
    c = count(torch.matmul, a, b)
    e = a.element_size()
    assert c.matmul_flops == 2 * m * n * k
    assert c.vector_flops == 0
    assert c.bytes_min == e * (m * k + k * n + m * n)
    assert c.bytes_ops == e * (m * k + k * n + m * n)
    assert c.dtype == dtype
    assert torch.equal(c.output, a @ b)


def test_batched_matmul_counts():
    a, b = _rand(3, 8, 4), _rand(3, 4, 5)
    c = count(torch.bmm, a, b)
    assert c.flops == 2 * 3 * 8 * 5 * 4
    assert c.bytes_ops == 4 * (3 * 8 * 4 + 3 * 4 * 5 + 3 * 8 * 5)


@pytest.mark.parametrize("rows,cols", [(8, 128), (3, 5)])
def test_softmax_counts(rows, cols):
    x = _rand(rows, cols)
    c = count(torch.softmax, x, -1)
    # hand count: max, subtract, exp, sum, divide per element; read x once, write the result once
    assert c.flops == 5 * rows * cols
    assert c.matmul_flops == 0
    assert c.bytes_ops == c.bytes_min == 2 * 4 * rows * cols


def test_pointwise_and_reduction_counts():
    x, y = _rand(6, 10), _rand(6, 10)
    c = count(lambda a, b: (a * b + 1.0).sum(), x, y)
    # mul: 60 FLOPs, reads 2x240 B, writes 240 B; add: 60 FLOPs, 240 B + 240 B; sum: 60 FLOPs, 240 B + 4 B
    assert c.vector_flops == 60 + 60 + 60
    assert c.bytes_ops == (480 + 240) + (240 + 240) + (240 + 4)
    assert c.bytes_min == 480 + 4


def test_views_and_empty_move_nothing():
    x = _rand(16, 8)
    c = count(lambda t: t.t().reshape(8, 16).unsqueeze(0).expand(4, 8, 16), x)
    assert c.bytes_ops == 0 and c.flops == 0 and c.n_ops == 0
    c = count(lambda t: torch.empty_like(t), x)
    assert c.bytes_ops == 0


def test_copy_does_not_read_its_destination():
    src, dst = _rand(1000), torch.empty(1000)
    c = count(lambda d, s: d.copy_(s), dst, src)
    assert c.bytes_ops == 2 * 4000
    assert c.bytes_min == 2 * 4000  # dst is an argument, but no op reads it
    assert c.flops == 0


def test_inplace_reads_and_writes_self():
    x, y = _rand(100), _rand(100)
    c = count(lambda a, b: a.add_(b), x, y)
    assert c.bytes_ops == 3 * 400 and c.vector_flops == 100


def test_expanded_tensor_counts_its_memory_not_its_elements():
    row = _rand(1, 64)
    wide = row.expand(1000, 64)
    assert tensor_bytes(wide) == 64 * 4
    assert tensor_bytes(_rand(10, 10)[:, :3]) == (9 * 10 + 3) * 4  # strided span


def test_module_parameters_are_inputs():
    lin = torch.nn.Linear(32, 16)
    x = _rand(4, 32)
    c = count(lin, x)
    assert c.matmul_flops == 2 * 4 * 32 * 16
    assert c.bytes_min == 4 * (4 * 32 + 32 * 16 + 16 + 4 * 16)


def _naive_hand(b, nq, nk, h, hkv, d, e):
    q, kv, s = b * nq * h * d, b * nk * hkv * d, b * h * nq * nk
    steps = [q + kv, s, s, s, s + kv, q]  # read Q,K / write S / read S / write P / read P,V / write O
    return e * sum(steps), 4 * s * d


def _tiled_hand(b, nq, nk, h, hkv, d, e, causal, bm, bn):
    """Simulate the kernel: per (batch, head, query block), load Q, stream K/V blocks, store O."""
    loads = flops = 0
    for _ in range(b * h):
        for start in range(0, nq, bm):
            rows = min(bm, nq - start)
            loads += rows * d                                   # Q block
            for kstart in range(0, nk, bn):
                if causal and kstart > start + rows - 1 + (nk - nq):
                    break                                       # whole key block above the diagonal
                krows = min(bn, nk - kstart)
                loads += 2 * krows * d                          # K and V blocks
                flops += 4 * rows * krows * d
            loads += rows * d                                   # O block written
    return e * loads, flops


@pytest.mark.parametrize("b,nq,nk,h,hkv,d", [(1, 256, 256, 2, 2, 16), (2, 300, 300, 4, 2, 8),
                                              (1, 100, 260, 2, 1, 32), (1, 1, 77, 1, 1, 4)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_attention_model_against_hand_count(b, nq, nk, h, hkv, d, causal, dtype):
    e = dtype.itemsize
    m = attention_model(b, nq, h, d, causal=causal, dtype=dtype, seqlen_k=nk, kv_heads=hkv, block_m=128,
                        block_n=64)
    nb, nf = _naive_hand(b, nq, nk, h, hkv, d, e)
    assert m.naive.bytes == nb and m.naive.flops == nf
    tb, tf = _tiled_hand(b, nq, nk, h, hkv, d, e, causal, 128, 64)
    assert m.tiled.bytes == tb and m.tiled.flops == tf
    assert m.tiled_min.bytes == e * (2 * b * nq * h * d + 2 * b * nk * hkv * d)
    assert m.tiled_min.bytes <= m.tiled.bytes < m.naive.bytes or nq == 1


def test_attention_model_essay_numbers():
    # N=16384, D=128, 16 heads, bf16: S is 8 GiB; naive moves 4 S + 4 * 64 MiB (Q, K, V, O)
    m = attention_model(1, 16384, 16, 128, causal=False, dtype=torch.bfloat16)
    s = 16 * 16384 * 16384 * 2
    assert m.naive.bytes == 4 * s + 4 * 16384 * 16 * 128 * 2
    assert m.naive.flops == m.tiled.flops == 4 * 16 * 16384**2 * 128
    # naive intensity ~ D / itemsize; tiled ~ 2 * block_m / itemsize (no reuse); the floor ~ N / itemsize
    assert m.naive.intensity == pytest.approx(128 / 2, rel=0.02)
    assert m.tiled.intensity == pytest.approx(2 * 128 / 2, rel=0.02)
    assert m.tiled_min.intensity == pytest.approx(16384 / 2, rel=0.02)
    assert m.hbm_tiled(50 * 2**20) is m.tiled_min     # one head's K+V (8 MiB) fits a 50 MiB L2
    assert m.hbm_tiled(None) is m.tiled
    causal = attention_model(1, 16384, 16, 128, causal=True, dtype=torch.bfloat16)
    assert causal.useful_flops == m.useful_flops / 2
    assert causal.naive.flops == m.naive.flops          # the naive code does all of it anyway
    assert 0.5 < causal.tiled.flops / m.tiled.flops < 0.52


def test_counted_reference_attention_moves_at_least_the_five_steps():
    b, n, h, d = 1, 64, 2, 16
    q, k, v = (_rand(b, n, h, d) for _ in range(3))
    c = count(reference.attention, q, k, v)
    m = attention_model(b, n, h, d, dtype=torch.float32)
    assert c.matmul_flops == m.naive.flops
    assert c.bytes_ops >= m.naive.bytes            # eager code: S and P and more pass through memory
    assert c.bytes_min == 4 * 4 * b * n * h * d    # Q, K, V read, O written


@pytest.mark.parametrize("kwargs,exc,names", [
    (dict(batch=0, seqlen=4, heads=1, head_dim=4), ValueError, "batch"),
    (dict(batch=1, seqlen=4.0, heads=1, head_dim=4), TypeError, "seqlen"),
    (dict(batch=1, seqlen=4, heads=3, head_dim=4, kv_heads=2), ValueError, "kv_heads"),
    (dict(batch=1, seqlen=4, heads=1, head_dim=4, causal=1), TypeError, "causal"),
    (dict(batch=1, seqlen=4, heads=1, head_dim=4, dtype=torch.int32), TypeError, "dtype"),
    (dict(batch=1, seqlen=4, heads=1, head_dim=4, block_m=0), ValueError, "block_m"),
])
def test_attention_model_bad_input(kwargs, exc, names):
    with pytest.raises(exc, match=names):
        attention_model(**kwargs)


def test_count_rejects_non_callable():
    with pytest.raises(TypeError, match="fn must be callable"):
        count(42)


def test_sdpa_counts_fused_attention_flops():
    q = _rand(1, 2, 64, 16)
    c = count(torch.nn.functional.scaled_dot_product_attention, q, q, q)
    assert c.matmul_flops == 4 * 2 * 64 * 64 * 16
    assert math.isclose(c.bytes_min, 2 * q.nbytes)  # q passed three times: read once; output written


@pytest.mark.parametrize("causal", [False, True])
def test_counts_see_hwattn_custom_op(causal):
    flash = pytest.importorskip("hwattn.ops.flash")
    from hwattn._runtime import interpreting
    if not torch.cuda.is_available() and not interpreting():
        pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    b, n, h, d = 1, 48, 2, 16
    q, k, v = (torch.randn(b, n, h, d, device=device) for _ in range(3))
    c = count(flash.flash_attention, q, k, v, causal=causal)
    full = 4 * b * h * n * n * d
    assert c.matmul_flops == (full // 2 if causal else full)
    # the call: Q, K, V read once, O written; the kernel (custom op) also writes the float32 LSE (B, H, N)
    assert c.bytes_min == 3 * q.nbytes + q.nbytes
    assert c.bytes_ops == c.bytes_min + 4 * b * h * n
