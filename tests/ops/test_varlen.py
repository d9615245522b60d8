"""flash_attention_varlen (packed variable-length batches) against the float64 reference and against the
dense kernel called on each sequence alone."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from hwattn._runtime import interpreting
from hwattn.ops.flash.interface import flash_attention
from hwattn.ops.flash.varlen import flash_attention_varlen
from hwattn.reference import alibi_bias, attention as reference, window_mask
from hwattn.testing import assert_rel_close

# (query lengths, key lengths). Interpreter blocks are 32x16 (fwd), 16x32 (dK/dV), 32x16 (dQ): lengths
# 1, 17, 33, 40 are not block multiples, 32 is one; 0-length sequences on either side; n_q > n_k rows
# that see no key under causal.
SELF = ([1, 17, 40, 32, 33], [1, 17, 40, 32, 33])
CROSS = ([5, 0, 30, 1, 18], [20, 4, 9, 0, 18])


def _cu(lengths, device="cpu"):
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return torch.tensor(cu, dtype=torch.int32, device=device)


def _inputs(lq, lk, h_kv, group, d, dtype, device="cpu"):
    q = torch.randn(sum(lq), h_kv * group, d, device=device).to(dtype).requires_grad_()
    k = torch.randn(sum(lk), h_kv, d, device=device).to(dtype).requires_grad_()
    v = torch.randn(sum(lk), h_kv, d, device=device).to(dtype).requires_grad_()
    return q, k, v


def _reference(q, k, v, lq, lk, causal, softmax_scale=None, window=None, alibi_slopes=None, softcap=None):
    """Float64 reference sequence by sequence: out (total_q, H, D), lse (H, total_q), grads for `do`; the
    window and ALiBi are applied per sequence (bottom-right aligned in each)."""
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    cq, ck = _cu(lq).tolist(), _cu(lk).tolist()
    outs, lses = [], []
    for b in range(len(lq)):
        qs = q64[cq[b]:cq[b + 1]]
        if lq[b] == 0:
            continue
        if lk[b] == 0:  # nothing to attend to: zeros, lse -inf (kept in the graph so dq is 0)
            outs.append(qs * 0)
            lses.append(torch.full((q.shape[1], lq[b]), float("-inf"), dtype=torch.float64, device=q.device))
            continue
        mask = None if window is None else window_mask(lq[b], lk[b], window[0], 0 if causal else window[1],
                                                       device=q.device)
        bias = None
        if alibi_slopes is not None:
            slopes = alibi_slopes if alibi_slopes.dim() == 1 else alibi_slopes[b]
            bias = alibi_bias(slopes.double(), lq[b], lk[b])
        out, lse = reference(qs[None], k64[ck[b]:ck[b + 1]][None], v64[ck[b]:ck[b + 1]][None], causal=causal,
                             softmax_scale=softmax_scale, return_lse=True, mask=mask, bias=bias, softcap=softcap)
        outs.append(out[0])
        lses.append(lse[0])
    return torch.cat(outs), torch.cat(lses, dim=1), (q64, k64, v64)


def _check(lq, lk, group, d, causal, dtype, softmax_scale=None, device="cpu", h_kv=2, **mods):
    q, k, v = _inputs(lq, lk, h_kv, group, d, dtype, device)
    cq, ck = _cu(lq, device), _cu(lk, device)
    out, lse = flash_attention_varlen(q, k, v, cq, ck, max(lq), max(lk), causal=causal,
                                      softmax_scale=softmax_scale, return_lse=True, **mods)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref, ref_lse, leaves = _reference(q, k, v, lq, lk, causal, softmax_scale, **mods)
    ref_grads = torch.autograd.grad(ref, leaves, do.double(), allow_unused=True)
    lse, ref_lse = lse.cpu(), ref_lse.cpu()
    assert_rel_close("out", out, ref, dtype)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)), "lse is -inf exactly on rows that see no key"
    finite = torch.isfinite(ref_lse)
    assert_rel_close("lse", lse[finite], ref_lse[finite], dtype, 1e-5)
    for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads):
        want = torch.zeros_like(got, dtype=torch.float64) if want is None else want
        assert_rel_close(name, got, want, dtype)
    return out, lse, grads


def _cases():
    for i, (lengths, causal, dtype) in enumerate([(SELF, False, torch.float16), (SELF, True, torch.float32),
                                                   (CROSS, False, torch.float32), (CROSS, True, torch.float16),
                                                   (SELF, True, torch.float16), (CROSS, True, torch.float32)]):
        group, d = [(1, 32), (2, 16), (4, 24), (2, 32), (1, 64), (4, 16)][i]
        name = "self" if lengths is SELF else "cross"
        yield pytest.param(*lengths, group, d, causal, dtype,
                           id=f"{name}-g{group}-d{d}-{'causal' if causal else 'full'}-{str(dtype)[6:]}")


@pytest.mark.parametrize("lq,lk,group,d,causal,dtype", list(_cases()))
def test_matches_float64_reference(lq, lk, group, d, causal, dtype):
    _check(lq, lk, group, d, causal, dtype)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lengths=st.lists(st.tuples(st.integers(0, 45), st.integers(0, 45)), min_size=1, max_size=4),
       group=st.sampled_from([1, 3]), d=st.integers(1, 40), causal=st.booleans(), fp16=st.booleans())
def test_random_batches(lengths, group, d, causal, fp16):
    lq, lk = [a for a, _ in lengths], [b for _, b in lengths]
    if sum(lq) == 0:
        lq[0] = 1
    _check(lq, lk, group, d, causal, torch.float16 if fp16 else torch.float32, h_kv=1)


def test_rows_without_keys_give_zeros_and_minus_inf_lse():
    lq, lk = [6, 3, 4], [2, 0, 4]  # causal bottom-right: seq 0 rows 0..3 see nothing, seq 1 sees nothing
    out, lse, (dq, dk, dv) = _check(lq, lk, 2, 16, True, torch.float32)
    empty = torch.tensor([True] * 4 + [False] * 2 + [True] * 3 + [False] * 4)
    assert torch.all(out[empty] == 0) and torch.all(dq[empty] == 0)
    assert torch.all(lse[:, empty] == float("-inf")) and torch.isfinite(lse[:, ~empty]).all()


def _assert_matches_dense_per_sequence(q, k, v, cq, ck, out, dense_kwargs):
    """out (and its q, k, v gradients for a random dO) equals, sequence by sequence, a dense flash_attention call
    on that sequence alone with dense_kwargs(b): bit for bit under the interpreter (same fixed blocks), within
    1e-3 on the GPU."""
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    pieces = {"out": [], "dq": [], "dk": [], "dv": []}
    for b in range(cq.numel() - 1):
        sq, sk = slice(int(cq[b]), int(cq[b + 1])), slice(int(ck[b]), int(ck[b + 1]))
        qs, ks, vs = (x.detach()[s][None].requires_grad_() for x, s in ((q, sq), (k, sk), (v, sk)))
        o = flash_attention(qs, ks, vs, **dense_kwargs(b))
        g = torch.autograd.grad(o, (qs, ks, vs), do[sq][None])
        for name, t in zip(pieces, (o, *g)):
            pieces[name].append(t[0])
    for name, got in zip(pieces, (out, *grads)):
        want = torch.cat(pieces[name])
        if interpreting():
            assert torch.equal(got, want), f"{name} differs from the dense kernel"
        else:
            assert_rel_close(name, got, want, torch.float16, 1e-3)


@pytest.mark.parametrize("causal", [False, True])
def test_matches_dense_kernel_per_sequence(causal):
    """Same inner loops, same blocks: each packed sequence gives what a dense call on it alone gives
    (bit for bit under the interpreter, where both use the fixed blocks)."""
    lq, lk = ([3, 40, 17, 1], [3, 40, 17, 1]) if not causal else ([3, 40, 17, 1], [9, 33, 17, 20])
    q, k, v = _inputs(lq, lk, 1, 2, 32, torch.float16)
    cq, ck = _cu(lq), _cu(lk)
    out = flash_attention_varlen(q, k, v, cq, ck, max(lq), max(lk), causal=causal)
    _assert_matches_dense_per_sequence(q, k, v, cq, ck, out, lambda b: dict(causal=causal))


# (lengths, window, causal, dtype, mods): bounded on either side, with causal, with ALiBi and softcap
WINDOW_CASES = [(SELF, (5, 3), False, torch.float32, ""), (CROSS, (7, -1), True, torch.float16, ""),
                (SELF, (-1, 4), False, torch.float16, "alibi,softcap"), (CROSS, (10, 0), False, torch.float32,
                                                                          "alibi_b,softcap")]


def _varlen_mods(names, batch, n_heads):
    mods = {}
    if "alibi" in names:
        mods["alibi_slopes"] = torch.rand(n_heads) * 0.5 + 0.05
    if "alibi_b" in names:
        mods["alibi_slopes"] = torch.rand(batch, n_heads) * 0.5 + 0.05
    if "softcap" in names:
        mods["softcap"] = 3.0
    return mods


@pytest.mark.parametrize("lq,lk,window,causal,dtype,names", [
    pytest.param(*c[0], *c[1:], id=f"{'self' if c[0] is SELF else 'cross'}-w{c[1][0]}_{c[1][1]}-"
                                   f"{'causal' if c[2] else 'full'}-{str(c[3])[6:]}-{c[4] or 'nomods'}")
    for c in WINDOW_CASES])
def test_window_and_mods_match_float64_reference(lq, lk, window, causal, dtype, names):
    _check(lq, lk, 2, 32, causal, dtype, h_kv=1, window=window, **_varlen_mods(names.split(","), len(lq), 2))


def test_window_and_mods_match_dense_kernel_per_sequence():
    """The varlen kernels cut the window's block ranges with the dense kernels' functions: each sequence
    gives what a dense call with the same window, slopes and softcap gives on it alone (bit for bit under
    the interpreter)."""
    lq, lk = [3, 40, 17, 45], [9, 33, 17, 45]
    q, k, v = _inputs(lq, lk, 1, 2, 32, torch.float16)
    cq, ck = _cu(lq), _cu(lk)
    slopes = torch.rand(len(lq), 2)
    mods = dict(window=(6, 2), softcap=3.0)
    out = flash_attention_varlen(q, k, v, cq, ck, max(lq), max(lk), alibi_slopes=slopes, **mods)
    _assert_matches_dense_per_sequence(q, k, v, cq, ck, out, lambda b: dict(alibi_slopes=slopes[b], **mods))


def test_strided_views_and_custom_scale():
    """q/k/v as views into one fused (total, 3, H, D) projection, and a last dim with stride 2."""
    lq = [7, 20, 1]
    qkv = torch.randn(sum(lq), 3, 2, 16, dtype=torch.float32)
    q, k, v = (qkv[:, i].detach().requires_grad_() for i in range(3))
    assert not q.is_contiguous()
    cu = _cu(lq)
    out = flash_attention_varlen(q, k, v, cu, cu, 20, 20, causal=True, softmax_scale=0.4)
    k2 = torch.randn(sum(lq), 2, 32)[..., ::2].requires_grad_()
    out2 = flash_attention_varlen(q, k2, v, cu, cu, 20, 20, causal=True, softmax_scale=0.4)
    for o, kk in ((out, k), (out2, k2)):
        ref, _, _ = _reference(q, kk, v, lq, lq, True, 0.4)
        assert_rel_close("out", o, ref, torch.float32)


def test_larger_max_seqlen_is_allowed():
    lq = [9, 4]
    q, k, v = _inputs(lq, lq, 1, 1, 16, torch.float32)
    cu = _cu(lq)
    a = flash_attention_varlen(q, k, v, cu, cu, 9, 9, causal=True)
    b = flash_attention_varlen(q, k, v, cu, cu, 100, 70, causal=True)
    assert torch.equal(a, b)


def test_all_empty_batch():
    q, k, v = _inputs([0, 0], [3, 0], 1, 1, 16, torch.float16)
    out = flash_attention_varlen(q, k, v, _cu([0, 0]), _cu([3, 0]), 0, 3)
    assert out.shape == (0, 1, 16)
    dk, = torch.autograd.grad(out.sum() + 0 * k.sum(), (k,))
    assert torch.all(dk == 0)


# --- bad input ---------------------------------------------------------------------------------------

def _ok():
    q, k, v = (x.detach() for x in _inputs([3, 5], [4, 6], 1, 2, 16, torch.float16))
    return dict(q=q, k=k, v=v, cu_seqlens_q=_cu([3, 5]), cu_seqlens_k=_cu([4, 6]), max_seqlen_q=5, max_seqlen_k=6)


@pytest.mark.parametrize("change,exc,words", [
    (dict(q=torch.randn(1, 8, 2, 16).half()), ValueError, ["q", "3 dimensions", "total_tokens"]),
    (dict(q=torch.randn(8, 2, 16).double()), TypeError, ["q", "float64"]),
    (dict(k=torch.randn(10, 1, 16).float()), ValueError, ["dtype"]),
    (dict(v=torch.randn(9, 1, 16).half()), ValueError, ["same shape"]),
    (dict(k=torch.randn(10, 1, 32).half(), v=torch.randn(10, 1, 32).half()), ValueError, ["head_dim"]),
    (dict(q=torch.randn(8, 3, 16).half(), k=torch.randn(10, 2, 16).half(), v=torch.randn(10, 2, 16).half()),
     ValueError, ["multiple", "3", "2"]),
    (dict(cu_seqlens_q=torch.tensor([0, 3, 8])), TypeError, ["cu_seqlens_q", "int64", "int32"]),
    (dict(cu_seqlens_q=[0, 3, 8]), TypeError, ["cu_seqlens_q", "Tensor"]),
    (dict(cu_seqlens_k=torch.tensor([[0, 4, 10]], dtype=torch.int32)), ValueError, ["cu_seqlens_k", "1 dimensions"]),
    (dict(cu_seqlens_q=torch.tensor([1, 3, 8], dtype=torch.int32)), ValueError, ["cu_seqlens_q", "start at 0"]),
    (dict(cu_seqlens_q=torch.tensor([0, 5, 3, 8], dtype=torch.int32),
          cu_seqlens_k=torch.tensor([0, 4, 5, 10], dtype=torch.int32)), ValueError, ["non-decreasing", "5", "3"]),
    (dict(cu_seqlens_q=torch.tensor([0, 3, 7], dtype=torch.int32)), ValueError, ["cu_seqlens_q", "8", "7"]),
    (dict(cu_seqlens_k=torch.tensor([0, 4, 11], dtype=torch.int32)), ValueError, ["cu_seqlens_k", "10", "11"]),
    (dict(cu_seqlens_k=torch.tensor([0, 10], dtype=torch.int32)), ValueError, ["same number of sequences"]),
    (dict(cu_seqlens_q=torch.tensor([0], dtype=torch.int32)), ValueError, ["batch + 1"]),
    (dict(cu_seqlens_q=_cu([3, 5]).to("meta")), ValueError, ["cu_seqlens_q", "device"]),
    (dict(max_seqlen_q=4), ValueError, ["max_seqlen_q", "4", "5"]),
    (dict(max_seqlen_k=5), ValueError, ["max_seqlen_k", "5", "6"]),
    (dict(max_seqlen_q=5.0), TypeError, ["max_seqlen_q", "int"]),
    (dict(max_seqlen_k=True), TypeError, ["max_seqlen_k", "int"]),
    (dict(causal=1), TypeError, ["causal", "bool"]),
    (dict(softmax_scale=-1.0), ValueError, ["softmax_scale", "> 0"]),
    (dict(softmax_scale="x"), TypeError, ["softmax_scale"]),
    (dict(return_lse=None), TypeError, ["return_lse"]),
    (dict(window=(-2, 3)), ValueError, ["window", "left", "-2"]),
    (dict(window=(3, 2.0)), ValueError, ["window", "right", "2.0"]),
    (dict(window=[1, 2, 3]), ValueError, ["window", "pair"]),
    (dict(window=(3, 2), causal=True), ValueError, ["window", "right", "causal"]),
    (dict(alibi_slopes=torch.rand(3)), ValueError, ["alibi_slopes", "(2,)", "(2, 2)", "(3,)"]),
    (dict(alibi_slopes=torch.rand(2).half()), TypeError, ["alibi_slopes", "float16", "float32"]),
    (dict(alibi_slopes=torch.rand(2, requires_grad=True)), ValueError, ["alibi_slopes", "grad"]),
    (dict(softcap=-3.0), ValueError, ["softcap", "> 0"]),
])
def test_bad_input_is_refused_clearly(change, exc, words):
    args = {**_ok(), **change}
    with pytest.raises(exc) as info:
        flash_attention_varlen(**args)
    for w in words:
        assert w in str(info.value), f"{w!r} not in {info.value}"


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_bf16(causal):
    """Lengths off multiples of 16, the last one too: the padded dK/dV rows and the tail copy on the GPU."""
    torch.manual_seed(0)
    lq = [1, 300, 129, 1000, 65]
    lk = lq if not causal else [5, 300, 200, 1000, 1]
    _check(lq, lk, 4, 128, causal, torch.bfloat16, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("causal,window", [(False, (100, 20)), (True, (256, 0))])
def test_gpu_bf16_window_and_mods(causal, window):
    torch.manual_seed(0)
    lq = [1, 300, 129, 1000, 64]
    lk = lq if not causal else [5, 300, 200, 1000, 1]
    _check(lq, lk, 4, 128, causal, torch.bfloat16, device="cuda", window=window,
           alibi_slopes=torch.rand(len(lq), 8, device="cuda"), softcap=30.0)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_lengths_that_are_multiples_of_16(causal):
    """Every length a multiple of 16 (0 included) lets the kernels tell the compiler so (LENGTHS_16); one
    length off by one does not. Both against float64."""
    from hwattn.ops.flash.varlen import _check_cu_seqlens
    lq, lk = [32, 16, 0, 48], [16, 48, 32, 0] if not causal else [32, 16, 0, 48]
    q, k, _ = _inputs(lq, lk, 1, 2, 16, torch.float32)
    assert _check_cu_seqlens(q, k, _cu(lq), _cu(lk))[2]
    _check(lq, lk, 2, 16, causal, torch.float32)
    lq2 = [32, 17, 0, 48]
    q2, _, _ = _inputs(lq2, lk, 1, 2, 16, torch.float32)
    assert not _check_cu_seqlens(q2, k, _cu(lq2), _cu(lk))[2]


@pytest.mark.parametrize("lq,tail", [([40, 5, 3], (1, 40)), ([20, 5, 3], (0, 0)), ([16, 17], (1, 16)), ([17, 16], (2, 33)),
                                     ([17, 16, 0], (3, 33)), ([7, 0, 0], (0, 0)), ([2, 0, 30], (2, 2))])
def test_sequences_whose_padded_rows_overrun_q(lq, tail):
    """Lengths that are not multiples of 16: the dK/dV pass reads every sequence padded to a multiple of 16 rows;
    the first sequence whose padded rows would run past the end of q, and every later one, read a zero-padded
    copy of the tail of q and dO instead (`_varlen_dkdv_kernel`). Where it starts, and the gradients either
    side of it, against float64."""
    from hwattn.ops.flash.varlen import _check_cu_seqlens
    q, k, _ = _inputs(lq, lq, 1, 1, 16, torch.float32)
    assert _check_cu_seqlens(q, k, _cu(lq), _cu(lq))[3] == tail
    for causal in (False, True):
        _check(lq, lq, 2, 16, causal, torch.float32)


@pytest.mark.parametrize("schedule", ["fused", "split"])
def test_both_backward_schedules(schedule, monkeypatch):
    """HWATTN_BWD picks one launch (dK/dV then dQ per program, the causal default) or two; both, causal and not."""
    monkeypatch.setenv("HWATTN_BWD", schedule)
    for causal in (False, True):
        _check(*CROSS, 2, 16, causal, torch.float32)


def test_broadcast_query_view():
    """q broadcast over heads (stride 0): the tail copy cannot share such strides, so q is copied first."""
    lq, lk = [5, 19], [9, 19]
    base = torch.randn(sum(lq), 1, 16, requires_grad=True)
    k = torch.randn(sum(lk), 2, 16, requires_grad=True)
    v = torch.randn(sum(lk), 2, 16, requires_grad=True)
    q = base.expand(-1, 4, -1)
    assert q.stride(1) == 0
    out = flash_attention_varlen(q, k, v, _cu(lq), _cu(lk), max(lq), max(lk), causal=True)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (base, k, v), do)
    ref, _, (q64, k64, v64) = _reference(q, k, v, lq, lk, True)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), do.double())
    assert_rel_close("out", out, ref, torch.float32)
    for name, got, want in zip(("dq", "dk", "dv"), grads, (ref_grads[0].sum(1, keepdim=True), *ref_grads[1:])):
        assert_rel_close(name, got, want, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_gpu_bf16_lengths_multiple_of_16(causal):
    torch.manual_seed(0)
    lq = [16, 320, 128, 1024, 64]
    lk = lq if not causal else [32, 320, 208, 1024, 16]
    _check(lq, lk, 4, 128, causal, torch.bfloat16, device="cuda")


def test_host_check_is_redone_after_an_in_place_change():
    """The cu_seqlens check is remembered per tensor and version: an in-place edit is checked again."""
    args = _ok()
    flash_attention_varlen(**args)
    flash_attention_varlen(**args)  # the remembered check
    args["cu_seqlens_q"][1] = 9
    with pytest.raises(ValueError, match="non-decreasing"):
        flash_attention_varlen(**args)
    args["cu_seqlens_q"][1] = 3
    args["cu_seqlens_k"].view(3)[2] = 11  # through a view: the version counter is shared
    with pytest.raises(ValueError, match="cu_seqlens_k"):
        flash_attention_varlen(**args)
