"""hwattn.flash_attention / hwattn.sdpa against the float64 reference (and torch SDPA itself)."""
import itertools
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st, HealthCheck

import hwattn
from hwattn.reference import attention as reference, causal_mask, window_mask
from hwattn.testing import TOLERANCE, assert_rel_close, rel_err

# (n_q, n_k): equal lengths over {1, 17, 64, 100, 257}, and unequal ones both ways
LENGTHS = [(1, 1), (17, 17), (64, 64), (100, 100), (257, 257), (17, 64), (100, 37), (1, 100), (257, 100), (64, 257)]
HEAD_DIMS = [16, 64, 80, 128]
GROUPS = [1, 2, 4]
DTYPES = [torch.float16, torch.float32]


def _cases():
    # every length pair x causal x dtype; head_dim and GQA ratio rotate so each value meets every length
    for i, ((n_q, n_k), causal, dtype) in enumerate(itertools.product(LENGTHS, [False, True], DTYPES)):
        yield pytest.param(n_q, n_k, HEAD_DIMS[i % 4], GROUPS[(i // 4) % 3], causal, dtype,
                           id=f"nq{n_q}-nk{n_k}-d{HEAD_DIMS[i % 4]}-g{GROUPS[(i // 4) % 3]}-"
                              f"{'causal' if causal else 'full'}-{str(dtype)[6:]}")


def _inputs(B, n_q, n_k, h_kv, group, d, dtype, scale=1.0):
    q = (torch.randn(B, n_q, h_kv * group, d) * scale).to(dtype).requires_grad_()
    k = (torch.randn(B, n_k, h_kv, d) * scale).to(dtype).requires_grad_()
    v = torch.randn(B, n_k, h_kv, d).to(dtype).requires_grad_()
    return q, k, v


def _check_against_reference(q, k, v, causal, softmax_scale=None, bound_scale=1.0):
    dtype = q.dtype
    out, lse = hwattn.flash_attention(q, k, v, causal=causal, softmax_scale=softmax_scale, return_lse=True)
    do = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref, ref_lse = reference(q64, k64, v64, causal=causal, softmax_scale=softmax_scale, return_lse=True)
    rq, rk, rv = torch.autograd.grad(ref, (q64, k64, v64), do.double())
    bound = TOLERANCE[dtype] * bound_scale
    assert_rel_close("out", out, ref, dtype, bound)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)), "lse must be -inf exactly on rows that see no key"
    finite = torch.isfinite(ref_lse)
    if finite.any():
        assert_rel_close("lse", lse[finite], ref_lse[finite], dtype, 1e-5)
    for name, got, want in (("dq", dq, rq), ("dk", dk, rk), ("dv", dv, rv)):
        if name != "dv" and want.norm() == 0:
            # every row sees at most one key: dS = P (dO V^T - delta) is exactly 0 and dQ, dK are the rounding of
            # two equal terms, dO . v_j and rowsum(dO * O); measured against the size of those terms, not as an
            # absolute norm (which, at D = 128 in fp32, crossed 1e-5 now and then)
            assert_rel_close(name, got, want, dtype, bound * _cancelling_term_norm(name, q64, k64, v64, do, causal,
                                                                                  softmax_scale))
        else:
            assert_rel_close(name, got, want, dtype, bound)
    return out, (dq, dk, dv)


def _cancelling_term_norm(name, q, k, v, do, causal, softmax_scale, mask=None):
    """||scale (P * dO V^T) K|| (dq) or ||scale (P * dO V^T)^T Q|| (dk), float64: the gradient without its delta
    term, whose size sets the rounding of a dQ / dK that cancels to zero. (B, N, H, D) inputs, GQA repeated;
    mask: an (Nq, Nk) boolean mask instead of `causal`'s bottom-right one."""
    group = q.shape[2] // k.shape[2]
    qh, kh, vh = (x.detach().double().transpose(1, 2) for x in (q, k, v))
    kh, vh = kh.repeat_interleave(group, 1), vh.repeat_interleave(group, 1)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    s = scale * qh @ kh.transpose(-1, -2)
    if causal or mask is not None:
        keep = mask if mask is not None else causal_mask(q.shape[1], k.shape[1], device=s.device)
        s = s.masked_fill(~keep, float("-inf"))
    p = torch.nan_to_num(torch.softmax(s, -1), nan=0.0)  # rows without keys: 0
    pdp = p * (do.double().transpose(1, 2) @ vh.transpose(-1, -2))
    return float(((pdp @ kh) if name == "dq" else (pdp.transpose(-1, -2) @ qh)).norm() * scale)


@pytest.mark.parametrize("n_q,n_k,d,group,causal,dtype", list(_cases()))
def test_matches_float64_reference(n_q, n_k, d, group, causal, dtype):
    q, k, v = _inputs(2 if n_q * n_k < 5000 else 1, n_q, n_k, 1 if group == 4 else 2, group, d, dtype)
    _check_against_reference(q, k, v, causal)


@pytest.mark.parametrize("causal", [False, True])
def test_not_worse_than_torch_math_fp16(causal):
    """Beyond the absolute bound: never worse than 2x PyTorch's own math attention in fp16."""
    q, k, v = _inputs(1, 100, 100, 2, 1, 64, torch.float16)
    out = hwattn.flash_attention(q, k, v, causal=causal)
    ref = reference(*(x.detach().double() for x in (q, k, v)), causal=causal)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        math_out = F.scaled_dot_product_attention(*(x.detach().transpose(1, 2) for x in (q, k, v)),
                                                  is_causal=causal).transpose(1, 2)
    assert rel_err(out, ref) <= 2 * max(rel_err(math_out, ref), 1e-4)


def test_not_worse_than_torch_math_fp32_grads():
    q, k, v = _inputs(1, 100, 100, 2, 1, 64, torch.float32)
    out = hwattn.flash_attention(q, k, v, causal=True)
    do = torch.randn_like(out)
    ours = torch.autograd.grad(out, (q, k, v), do)
    x64 = [x.detach().double().requires_grad_() for x in (q, k, v)]
    exact = torch.autograd.grad(reference(*x64, causal=True), x64, do.double())
    xm = [x.detach().transpose(1, 2).requires_grad_() for x in (q, k, v)]
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        math_out = F.scaled_dot_product_attention(*xm, is_causal=True)
    theirs = torch.autograd.grad(math_out, xm, do.transpose(1, 2))
    for name, a, b, c in zip(("dq", "dk", "dv"), ours, exact, theirs):
        assert rel_err(a, b) <= 2 * rel_err(c.transpose(1, 2), b), name


def test_fused_qkv_strided_views():
    """q, k, v as views into one fused projection output (B, N, 3, H, D): non-contiguous strides."""
    B, N, H, D = 2, 45, 4, 32
    qkv = torch.randn(B, N, 3, H, D, dtype=torch.float16)
    q, k, v = (qkv[:, :, i].requires_grad_() if False else qkv[:, :, i] for i in range(3))
    assert not q.is_contiguous()
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    # requires_grad_ on a view keeps the view's strides
    assert q.stride() == qkv[:, :, 0].stride()
    _check_against_reference(q, k, v, causal=True)


def test_transposed_and_last_dim_strided_inputs():
    B, N, H, D = 1, 33, 2, 16
    q = torch.randn(B, H, N, D, dtype=torch.float32).transpose(1, 2).requires_grad_()   # (B, N, H, D) view
    k = torch.randn(B, N, H, 2 * D, dtype=torch.float32)[..., ::2].requires_grad_()      # last dim stride 2
    v = torch.randn(B, N, H, D, dtype=torch.float32).requires_grad_()
    assert k.stride(-1) == 2 and not q.is_contiguous()
    _check_against_reference(q, k, v, causal=False)


def test_fully_masked_rows_give_zeros_and_zero_grads():
    """Causal with Nq > Nk, bottom-right: the first Nq - Nk rows see no key."""
    n_q, n_k = 50, 20
    q, k, v = _inputs(1, n_q, n_k, 2, 2, 32, torch.float16)
    out, (dq, dk, dv) = _check_against_reference(q, k, v, causal=True)
    empty = n_q - n_k
    assert torch.all(out[:, :empty] == 0)
    assert torch.all(dq[:, :empty] == 0)
    assert all(torch.isfinite(t).all() for t in (out, dq, dk, dv))
    _, lse = hwattn.flash_attention(q, k, v, causal=True, return_lse=True)
    assert torch.all(lse[:, :, :empty] == float("-inf")) and torch.isfinite(lse[:, :, empty:]).all()


@pytest.mark.parametrize("dtype,scale", [(torch.float16, 12.0), (torch.float32, 6.0)])
def test_large_logits_do_not_overflow(dtype, scale):
    """Scores of std ~scale^2 (max ~600 in fp16, ~150 in fp32): exp overflows without the running max.
    The output meets its dtype's bound. The gradients of so peaked a softmax are ill-conditioned: in fp32 the
    five steps in fp32 themselves land at 3-7e-6 of float64 (12 seeds), ours at 4-7e-6, so now and then either
    passes 1e-5; the gradient bound is therefore 1e-5 or 2x the fp32 five steps' error, whichever is larger (the
    project's second rule). In fp16 delta = rowsum(dO * O) comes from the fp16-rounded O (as in
    FlashAttention-2): gradients must stay finite and within 2x of the five steps computed in fp16 (in practice
    ~10x better)."""
    q, k, v = _inputs(1, 70, 70, 2, 1, 64, dtype, scale=scale)
    out, lse = hwattn.flash_attention(q, k, v, causal=True, return_lse=True)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    x64 = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref, ref_lse = reference(*x64, causal=True, return_lse=True)
    ref_grads = torch.autograd.grad(ref, x64, do.double())
    x_same = [x.detach().requires_grad_() for x in (q, k, v)]  # the five steps in the inputs' dtype
    naive_grads = torch.autograd.grad(reference(*x_same, causal=True), x_same, do)
    assert_rel_close("out", out, ref, dtype)
    assert_rel_close("lse", lse, ref_lse, dtype, 1e-5)
    floor = TOLERANCE[dtype] if dtype == torch.float32 else 0.0
    for name, got, want, theirs in zip(("dq", "dk", "dv"), grads, ref_grads, naive_grads):
        ours_err, naive_err = rel_err(got, want), rel_err(theirs, want)
        assert torch.isfinite(got).all(), name
        assert ours_err <= max(floor, 2 * naive_err), f"{name}: {ours_err:.2e} vs five steps in {dtype} {naive_err:.2e}"


def test_custom_softmax_scale_fp32():
    q, k, v = _inputs(1, 40, 50, 1, 2, 48, torch.float32)
    _check_against_reference(q, k, v, causal=True, softmax_scale=0.3)


def test_backward_is_deterministic():
    q, k, v = _inputs(1, 70, 70, 1, 2, 32, torch.float16)
    do = torch.randn(1, 70, 2, 32, dtype=torch.float16)
    grads = [torch.autograd.grad(hwattn.flash_attention(q, k, v, causal=True), (q, k, v), do) for _ in range(2)]
    for a, b in zip(*grads):
        assert torch.equal(a, b)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_q=st.integers(1, 90), n_k=st.integers(1, 90), d=st.integers(1, 72), group=st.sampled_from([1, 2, 3]),
       causal=st.booleans(), fp16=st.booleans())
def test_random_shapes(n_q, n_k, d, group, causal, fp16):
    dtype = torch.float16 if fp16 else torch.float32
    q, k, v = _inputs(1, n_q, n_k, 1, group, d, dtype)
    _check_against_reference(q, k, v, causal)


# --- the SDPA drop-in, against torch SDPA itself -------------------------------------------------------

@pytest.mark.parametrize("n_q,n_k", [(30, 30), (20, 50), (50, 20), (2, 33)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_sdpa_matches_torch_sdpa(n_q, n_k, is_causal):
    """torch SDPA's is_causal is top-left aligned when Nq != Nk; hwattn.sdpa keeps that exactly."""
    B, Hq, Hkv, D = 1, 4, 2, 32
    q = torch.randn(B, Hq, n_q, D, dtype=torch.float32, requires_grad=True)
    k = torch.randn(B, Hkv, n_k, D, dtype=torch.float32, requires_grad=True)
    v = torch.randn(B, Hkv, n_k, D, dtype=torch.float32, requires_grad=True)
    out = hwattn.sdpa(q, k, v, is_causal=is_causal, enable_gqa=True)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = F.scaled_dot_product_attention(q64, k64, v64, is_causal=is_causal, enable_gqa=True)
    assert_rel_close("out", out, ref, torch.float32)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    for name, got, want in zip(("dq", "dk", "dv"), grads, torch.autograd.grad(ref, (q64, k64, v64), do.double())):
        bound = TOLERANCE[torch.float32]
        if is_causal and name != "dv":
            # top-left, row 0 sees key 0 alone: its dQ (and key 0's dK share) is the rounding of two equal terms,
            # which at Nq = 2 can outweigh the one other row's gradient; measured against the terms' size
            top_left = torch.ones(n_q, n_k, dtype=torch.bool).tril()
            terms = _cancelling_term_norm(name, *(x.transpose(1, 2) for x in (q64, k64, v64, do)), causal=False,
                                          softmax_scale=None, mask=top_left)
            bound *= max(1.0, terms / float(want.norm()))
        assert_rel_close(name, got, want, torch.float32, bound)


def test_flash_causal_matches_flex_style_bottom_right_mask():
    """flash_attention's causal equals the reference with an explicit bottom-right mask (flash_attn)."""
    n_q, n_k = 20, 45
    q, k, v = _inputs(1, n_q, n_k, 1, 1, 16, torch.float32)
    mask = torch.arange(n_k)[None, :] <= torch.arange(n_q)[:, None] + (n_k - n_q)
    ref = reference(*(x.detach().double() for x in (q, k, v)), mask=mask)
    assert_rel_close("out", hwattn.flash_attention(q, k, v, causal=True), ref, torch.float32)


def test_torch_compile_fullgraph():
    q, k, v = _inputs(1, 40, 40, 2, 1, 32, torch.float16)

    def f(q, k, v):
        return (hwattn.flash_attention(q, k, v, causal=True) * 2).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    eager_grads = torch.autograd.grad(f(q, k, v), (q, k, v))
    compiled_grads = torch.autograd.grad(compiled(q, k, v), (q, k, v))
    for a, b in zip(eager_grads, compiled_grads):
        assert torch.equal(a, b)


# --- bad input ---------------------------------------------------------------------------------------

def _qkv(shape_q=(1, 8, 2, 16), shape_kv=(1, 8, 2, 16), dtype=torch.float16):
    return torch.randn(shape_q).to(dtype), torch.randn(shape_kv).to(dtype), torch.randn(shape_kv).to(dtype)


@pytest.mark.parametrize("n_q,n_k,group,causal,dtype", [
    (100, 100, 2, True, torch.float32), (33, 70, 1, True, torch.float16), (70, 33, 4, True, torch.float32),
    (70, 33, 2, False, torch.float16), (1, 17, 1, True, torch.float32), (257, 64, 2, False, torch.float32)])
def test_persistent_schedule_matches_float64(monkeypatch, n_q, n_k, group, causal, dtype):
    """HWATTN_FWD_SCHEDULE=persistent: 3 programs (under the interpreter) walk every (query block, head) tile,
    longest-first when causal; outputs, LSE and gradients as with the one-program-per-tile grid, rows past the
    diagonal (Nq > Nk, causal) included."""
    monkeypatch.setenv("HWATTN_FWD_SCHEDULE", "persistent")
    q, k, v = _inputs(2, n_q, n_k, 2, group, 32, dtype)
    out, _ = _check_against_reference(q, k, v, causal)
    monkeypatch.setenv("HWATTN_FWD_SCHEDULE", "grid")
    assert torch.equal(out, hwattn.flash_attention(q, k, v, causal=causal)), "same tiles, same sums: bit-equal"


def test_persistent_schedule_with_window_block_mask_and_mods(monkeypatch):
    monkeypatch.setenv("HWATTN_FWD_SCHEDULE", "persistent")
    from hwattn import masks
    q, k, v = (x.detach() for x in _inputs(1, 90, 90, 2, 2, 32, torch.float32))
    slopes = torch.rand(4) * 0.3
    bm = masks.create_block_mask(masks.causal(), None, None, 90, 90, device="cpu")
    bm.window = None  # the block walk (a band would run as the causal kernel)
    got = [hwattn.flash_attention(q, k, v, causal=True, window=(20, 0), alibi_slopes=slopes, softcap=3.0),
           hwattn.flash_attention(q, k, v, block_mask=bm)]
    monkeypatch.setenv("HWATTN_FWD_SCHEDULE", "grid")
    want = [hwattn.flash_attention(q, k, v, causal=True, window=(20, 0), alibi_slopes=slopes, softcap=3.0),
            hwattn.flash_attention(q, k, v, block_mask=bm)]
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_bad_forward_schedule_is_refused(monkeypatch):
    monkeypatch.setenv("HWATTN_FWD_SCHEDULE", "persistant")
    q, k, v = _inputs(1, 8, 8, 1, 1, 16, torch.float32)
    with pytest.raises(ValueError, match="HWATTN_FWD_SCHEDULE"):
        hwattn.flash_attention(q, k, v)


@pytest.mark.parametrize("n_q,n_k,group,causal,dtype", [
    (100, 100, 2, True, torch.float32), (33, 70, 1, True, torch.float16), (70, 33, 4, True, torch.float32),
    (70, 33, 2, False, torch.float16), (1, 17, 1, True, torch.float32), (257, 64, 2, False, torch.float16)])
def test_atomic_backward_matches_float64(monkeypatch, n_q, n_k, group, causal, dtype):
    """HWATTN_BWD=atomic: the dK/dV programs also add dQ with fp32 atomics (no dQ pass); against float64,
    rows past the diagonal (Nq > Nk, causal) and a query block cut by Nq included."""
    monkeypatch.setenv("HWATTN_BWD", "atomic")
    q, k, v = _inputs(2, n_q, n_k, 2, group, 32, dtype)
    _check_against_reference(q, k, v, causal)


def _grads(q, k, v, **kw):
    out = hwattn.flash_attention(q, k, v, **kw)
    return torch.autograd.grad(out, (q, k, v) + ((kw["rel_bias"],) if "rel_bias" in kw else ()),
                               torch.ones_like(out))


@pytest.mark.parametrize("case", ["window_mods", "block_mask"])
def test_atomic_backward_with_window_block_mask_and_mods(monkeypatch, case):
    """The atomic dQ rides the same dK/dV step in the dense, windowed and block-sparse walks: dK/dV bit-equal
    to the split backward's (same programs, same tiles), dQ equal up to fp32 summation order."""
    from hwattn import masks
    q, k, v = _inputs(1, 90, 75, 2, 2, 32, torch.float32)
    if case == "window_mods":
        kw = dict(causal=True, window=(20, 0), alibi_slopes=torch.rand(4) * 0.3, softcap=3.0)
    else:
        kw = dict(block_mask=masks.create_block_mask(masks.sliding_window(30, 5), None, None, 90, 75, device="cpu"))
        kw["block_mask"].window = None  # the block walk, not the window kernels a band would take
    monkeypatch.setenv("HWATTN_BWD", "split")
    want = _grads(q, k, v, **kw)
    monkeypatch.setenv("HWATTN_BWD", "atomic")
    got = _grads(q, k, v, **kw)
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
    assert rel_err(got[0], want[0]) <= 1e-6 and not torch.equal(got[0], torch.zeros_like(got[0]))


def test_atomic_backward_falls_back_where_it_must(monkeypatch):
    """A learnable rel_bias (its gradient is summed in the dQ pass) and torch's deterministic mode take the
    split backward: bit-equal results, and a warning for the latter."""
    monkeypatch.setenv("HWATTN_BWD", "split")
    q, k, v = _inputs(1, 40, 40, 1, 2, 16, torch.float32)
    bias = (torch.randn(2, 79) * 0.5).requires_grad_()
    want_bias = _grads(q, k, v, causal=True, rel_bias=bias)
    want = _grads(q, k, v, causal=False)
    monkeypatch.setenv("HWATTN_BWD", "atomic")
    for a, b in zip(_grads(q, k, v, causal=True, rel_bias=bias), want_bias):
        assert torch.equal(a, b)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.warns(UserWarning, match="deterministic"):
            got = _grads(q, k, v, causal=False)
    finally:
        torch.use_deterministic_algorithms(before)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", ["full", "causal_nq_gt_nk", "causal_nq_lt_nk", "window_mods", "block_mask",
                                  "many_rows"])
@pytest.mark.parametrize("order", ["paired", "halves"])
def test_fused_backward_matches_split(monkeypatch, case, order):
    """HWATTN_BWD=fused (the default only with causal masking or a window argument): one launch, program j
    computes key block j's dK/dV and then query block j's dQ, dense (Nq != Nk both ways, GQA, several batch and
    head rows), with a window and score mods, and under a block mask (per-head patterns, mask blocks of two
    kernel blocks).
    HWATTN_FUSED_ORDER=halves gives each program one of the two halves (twice the programs, longest first).
    Bit-equal to the split backward (the interpreter runs both with the same tiles), and against float64."""
    from hwattn import masks
    shapes = {"full": (2, 70, 70, 2, 2, False), "causal_nq_gt_nk": (2, 90, 41, 2, 1, True),
              "causal_nq_lt_nk": (1, 33, 100, 2, 2, True), "window_mods": (1, 90, 75, 2, 2, True),
              "block_mask": (2, 96, 80, 2, 2, False), "many_rows": (5, 20, 40, 3, 1, True)}
    B, n_q, n_k, h_kv, group, causal = shapes[case]
    q, k, v = _inputs(B, n_q, n_k, h_kv, group, 32, torch.float32)
    kw = dict(causal=causal)
    if case == "window_mods":
        kw.update(window=(20, 0), alibi_slopes=torch.rand(4) * 0.3, softcap=3.0)
    if case == "block_mask":
        # 64-row mask blocks: two 32-row kernel blocks each (`_in_launch_order`), per-head patterns
        kw = dict(block_mask=masks.create_block_mask(
            lambda b, h, qi, ki: (ki <= qi + 7 * h) & (ki >= qi - 40 + 9 * b), B, h_kv * group, n_q, n_k,
            device="cpu", block_size=64))
    monkeypatch.setenv("HWATTN_BWD", "split")
    want = _grads(q, k, v, **kw)
    monkeypatch.setenv("HWATTN_BWD", "fused")
    monkeypatch.setenv("HWATTN_FUSED_ORDER", order)
    got = _grads(q, k, v, **kw)
    for name, a, b in zip(("dq", "dk", "dv"), got, want):
        assert torch.equal(a, b), name
    if case in ("full", "causal_nq_gt_nk", "causal_nq_lt_nk", "many_rows"):
        _check_against_reference(q, k, v, causal)


def test_auto_backward_schedule(monkeypatch):
    """HWATTN_BWD=auto: one launch for dense causal attention, for a window argument and for plain dense
    attention with 64 < head_dim <= 128 (measured faster on an H200), two otherwise, and under a block mask; the
    varlen kernels keep two launches with a window."""
    from hwattn.ops.flash.backward import backward_schedule
    from hwattn.ops.flash.score_mods import ScoreMods
    from hwattn import masks
    monkeypatch.delenv("HWATTN_BWD", raising=False)
    window = ScoreMods(window=(64, 0))
    bm = masks.create_block_mask(masks.causal(), None, None, 64, 64, device="cpu")
    assert backward_schedule(True, None) == "fused" and backward_schedule(False, None) == "split"
    assert backward_schedule(False, None, window) == "fused"
    assert backward_schedule(False, None, window, windowed_fused=False) == "split"
    assert backward_schedule(False, bm, window) == "split" and backward_schedule(False, None, ScoreMods()) == "split"
    # plain non-causal attention with one 128-wide head tile: one launch; D = 64, score mods, masks: two
    for head_dim, schedule in ((128, "fused"), (96, "fused"), (65, "fused"), (64, "split"), (256, "split")):
        assert backward_schedule(False, None, head_dim=head_dim) == schedule, head_dim
    assert backward_schedule(False, None, ScoreMods(softcap=2.0), head_dim=128) == "split"
    assert backward_schedule(False, bm, head_dim=128) == "split"


def test_fused_program_orders_the_autotuner_tries(monkeypatch):
    """The one launch's program order is a tuning parameter: halves is tried (two configs) only for plain dense
    non-causal attention, paired everywhere; HWATTN_FUSED_ORDER=paired / halves keeps one order, anything else
    is refused; without autotuning the order is paired unless halves is asked for."""
    from hwattn.ops.flash.configs import _prune, configs, fixed_config
    fused = configs("fused", orders=True)
    assert {c.kwargs["ORDER"] for c in fused} == {0, 1} and all("ORDER" not in c.kwargs for c in configs("fused"))
    orders = lambda **kw: sorted(c.kwargs["ORDER"] for c in _prune(fused, {}, HEAD_DIM=128, **kw))
    monkeypatch.delenv("HWATTN_FUSED_ORDER", raising=False)
    assert orders() == [0] * 10 + [1] * 2
    for mod in ("CAUSAL", "HAS_MASK", "WINDOW", "SOFTCAP", "ALIBI", "REL_BIAS"):
        assert orders(**{mod: True}) == [0] * 10, mod
    assert fixed_config("fused", 128, torch.bfloat16, orders=True)["ORDER"] == 0
    monkeypatch.setenv("HWATTN_FUSED_ORDER", "halves")
    assert orders(CAUSAL=True) == [1] * 10 and fixed_config("fused", 128, torch.bfloat16, orders=True)["ORDER"] == 1
    monkeypatch.setenv("HWATTN_FUSED_ORDER", "paired")
    assert orders() == [0] * 10
    monkeypatch.setenv("HWATTN_FUSED_ORDER", "interleaved")
    with pytest.raises(ValueError, match="HWATTN_FUSED_ORDER"):
        orders()


def test_split_backward_computes_delta_in_its_dq_programs(monkeypatch):
    """The split backward launches no preprocess: its dQ programs run first and write delta for the dK/dV
    pass (a wrong or missing delta would show in dK against float64); the one-launch and atomic backwards
    keep the preprocess launch."""
    from hwattn.ops.flash import backward
    launched = []
    real = backward._bwd_preprocess

    class Spy:
        def __getitem__(self, grid):
            launched.append(grid)
            return real[grid]

    monkeypatch.setattr(backward, "_bwd_preprocess", Spy())
    for schedule, n_q, n_k, causal, preprocess in (("split", 70, 50, False, False), ("split", 33, 70, True, False),
                                                    ("fused", 70, 70, True, True), ("atomic", 40, 40, True, True)):
        monkeypatch.setenv("HWATTN_BWD", schedule)
        launched.clear()
        q, k, v = _inputs(2, n_q, n_k, 2, 2, 32, torch.float32)
        _check_against_reference(q, k, v, causal)
        assert bool(launched) == preprocess, (schedule, n_q, n_k, causal)


def test_bad_backward_schedule_is_refused(monkeypatch):
    monkeypatch.setenv("HWATTN_BWD", "atomics")
    q, k, v = _inputs(1, 8, 8, 1, 1, 16, torch.float32)
    out = hwattn.flash_attention(q, k, v)
    with pytest.raises(ValueError, match="HWATTN_BWD"):
        out.sum().backward()


@pytest.mark.parametrize("make,exc,words", [
    (lambda: (torch.randn(8, 2, 16).half(),) + _qkv()[1:], ValueError, ["q", "4 dimensions"]),
    (lambda: (_qkv()[0], torch.randn(1, 8, 2, 16).half(), torch.randn(1, 9, 2, 16).half()), ValueError, ["same shape"]),
    (lambda: _qkv((1, 8, 3, 16), (1, 8, 2, 16)), ValueError, ["multiple", "3", "2"]),
    (lambda: _qkv((1, 8, 2, 16), (1, 8, 2, 32)), ValueError, ["head_dim"]),
    (lambda: _qkv((1, 8, 2, 300), (1, 8, 2, 300)), ValueError, ["head_dim", "300"]),
    (lambda: _qkv((2, 8, 2, 16), (1, 8, 2, 16)), ValueError, ["batch"]),
    (lambda: _qkv((1, 0, 2, 16), (1, 8, 2, 16)), ValueError, ["lengths"]),
    (lambda: _qkv(dtype=torch.float64), TypeError, ["q", "float64", "float16"]),
    (lambda: _qkv(dtype=torch.int32), TypeError, ["int32"]),
    (lambda: (_qkv()[0], _qkv()[1].float(), _qkv()[2]), ValueError, ["dtype"]),
    (lambda: (_qkv()[0], _qkv()[1].to("meta"), _qkv()[2]), ValueError, ["device"]),
    (lambda: ([1, 2], _qkv()[1], _qkv()[2]), TypeError, ["q", "Tensor"]),
])
def test_bad_input_is_refused_clearly(make, exc, words):
    with pytest.raises(exc) as info:
        hwattn.flash_attention(*make())
    for w in words:
        assert w in str(info.value), f"{w!r} not in {info.value}"


def test_bad_options_are_refused_clearly():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="causal"):
        hwattn.flash_attention(q, k, v, causal=1)
    with pytest.raises(TypeError, match="softmax_scale"):
        hwattn.flash_attention(q, k, v, softmax_scale="0.1")
    with pytest.raises(ValueError, match="softmax_scale"):
        hwattn.flash_attention(q, k, v, softmax_scale=float("nan"))
    qs, ks, vs = (x.transpose(1, 2) for x in _qkv((1, 8, 4, 16), (1, 8, 2, 16)))
    with pytest.raises(ValueError, match="enable_gqa"):
        hwattn.sdpa(qs, ks, vs)
    with pytest.raises(ValueError, match="attn_mask"):
        hwattn.sdpa(qs, ks, vs, attn_mask=torch.ones(8, 8, dtype=torch.bool), enable_gqa=True)
    with pytest.raises(ValueError, match="dropout_p"):
        hwattn.sdpa(qs, ks, vs, dropout_p=0.1, enable_gqa=True)


def test_cpu_without_interpreter_says_how_to_run():
    code = ("import torch, hwattn\n"
            "q = torch.randn(1, 4, 1, 16, dtype=torch.float16)\n"
            "try:\n    hwattn.flash_attention(q, q, q)\nexcept RuntimeError as e:\n    print('ERR', e)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert "ERR" in res.stdout and "TRITON_INTERPRET=1" in res.stdout, res.stdout + res.stderr


# --- GPU only ------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_q,n_k", [(1000, 1000), (513, 2049), (2049, 513)])
def test_gpu_bf16(d, causal, n_q, n_k):
    torch.manual_seed(0)
    q, k, v = (x.cuda() for x in _inputs(2, n_q, n_k, 2, 2, d, torch.bfloat16))
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    _check_against_reference(q, k, v, causal)


@pytest.mark.gpu
@pytest.mark.parametrize("b,n_q,n_k,h_kv,group,d,causal", [
    (2, 2048, 2048, 16, 1, 128, True), (1, 1000, 1000, 2, 4, 128, True), (2, 777, 1500, 4, 1, 64, True),
    (2, 1500, 700, 1, 4, 128, True), (1, 3000, 3000, 4, 1, 128, False), (3, 333, 333, 2, 1, 256, True)])
def test_gpu_persistent_schedule_bf16(monkeypatch, b, n_q, n_k, h_kv, group, d, causal):
    """The persistent forward at the GPU's real tiles and program count against float64 (gradients: the same
    backward), and close to the grid schedule. Not bit-equal on a GPU: on an H100 (triton 3.6, autotuned,
    2026-12-06) 4 of these 6 cases differed in some bits while both schedules met the float64 bounds; the
    interpreter test (test_persistent_schedule_matches_float64) is where the two agree exactly."""
    torch.manual_seed(3)
    q, k, v = (x.cuda().detach().requires_grad_() for x in _inputs(b, n_q, n_k, h_kv, group, d, torch.bfloat16))
    monkeypatch.setenv("HWATTN_FWD_KERNEL", "portable")  # the schedules of the portable kernel, not Gluon's
    monkeypatch.setenv("HWATTN_FWD_SCHEDULE", "persistent")
    out, _ = _check_against_reference(q, k, v, causal)
    monkeypatch.setenv("HWATTN_FWD_SCHEDULE", "grid")
    grid = hwattn.flash_attention(q, k, v, causal=causal)
    assert rel_err(out, grid) <= TOLERANCE[torch.bfloat16] / 4, "the same algorithm: well inside the bf16 bound"


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_q,n_k", [(1000, 1000), (513, 2049), (2049, 513)])
def test_gpu_atomic_backward_bf16(monkeypatch, d, causal, n_q, n_k):
    monkeypatch.setenv("HWATTN_BWD", "atomic")
    torch.manual_seed(1)
    q, k, v = (x.cuda() for x in _inputs(2, n_q, n_k, 2, 2, d, torch.bfloat16))
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    _check_against_reference(q, k, v, causal)


@pytest.mark.gpu
@pytest.mark.parametrize("schedule", ["fused", "fused:halves", "split"])
@pytest.mark.parametrize("case", ["full", "causal", "causal_nq_gt_nk", "window", "block_mask"])
def test_gpu_backward_schedules_bf16(monkeypatch, schedule, case):
    """Both backward launch shapes (the one launch in each program order) at the GPU's real tiles (the CPU tests
    run interpreter tiles), bf16 against float64: dense, causal with Nq != Nk, a window, and a block mask with
    per-head patterns."""
    from hwattn import masks
    schedule, _, order = schedule.partition(":")
    monkeypatch.setenv("HWATTN_BWD", schedule)
    monkeypatch.setenv("HWATTN_FUSED_ORDER", order or "paired")
    torch.manual_seed(2)
    n_q, n_k = {"causal_nq_gt_nk": (3000, 1111), "block_mask": (1500, 1300)}.get(case, (2000, 2000))
    q, k, v = (x.cuda().detach().requires_grad_() for x in _inputs(3, n_q, n_k, 2, 2, 128, torch.bfloat16))
    kw = dict(causal=case.startswith("causal") or case == "window")
    if case == "window":
        kw["window"] = (300, 0)
    if case == "block_mask":
        mod = lambda b, h, qi, ki: (ki <= qi + 100 * h) & (ki >= qi - 600 + 150 * b)
        kw = dict(block_mask=masks.create_block_mask(mod, 3, 4, n_q, n_k, device="cuda"))
        dense = torch.stack([torch.stack([mod(b, h, torch.arange(n_q)[:, None], torch.arange(n_k)[None, :])
                                          for h in range(4)]) for b in range(3)]).cuda()
    out = hwattn.flash_attention(q, k, v, **kw)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    if case == "block_mask":
        ref = reference(q64, k64, v64, mask=dense)
    else:
        win = kw.get("window")
        ref = reference(q64, k64, v64, causal=kw["causal"],
                        mask=None if win is None else window_mask(n_q, n_k, win[0], 0, device="cuda"))
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), do.double())
    assert_rel_close("out", out, ref, torch.bfloat16)
    for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_rel_close(name, got, want, torch.bfloat16)
