"""flash_decode (split-KV decoding with an LSE merge) against the float64 reference."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from hwattn.ops.flash.decode import MAX_SPLITS, choose_num_splits, flash_decode
from hwattn.reference import attention as reference
from hwattn.testing import assert_rel_close, rel_err

MAX_LEN = 70  # interpreter key blocks are 16: 70 is not a multiple, nor are most random lengths


def _lengths(B, max_len, device="cpu", include_zero=False):
    """Random valid lengths with 1 and the full cache always present."""
    lens = torch.randint(2, max_len, (B,))
    lens[0], lens[-1] = 1, max_len
    if include_zero:
        lens[1] = 0
    return lens.to(torch.int32).to(device)


def _inputs(B, n_q, h_kv, group, d, dtype, max_len=MAX_LEN, device="cpu"):
    q = torch.randn(B, n_q, h_kv * group, d, device=device).to(dtype)
    k = torch.randn(B, max_len, h_kv, d, device=device).to(dtype)
    v = torch.randn(B, max_len, h_kv, d, device=device).to(dtype)
    return q, k, v


def _reference(q, k, v, lens, causal, softmax_scale=None):
    """Float64, batch element by batch element over its valid cache; rows without keys: 0 and -inf."""
    B, n_q, n_heads, d = q.shape
    out = torch.zeros(B, n_q, n_heads, d, dtype=torch.float64, device=q.device)
    lse = torch.full((B, n_heads, n_q), float("-inf"), dtype=torch.float64, device=q.device)
    for b, n in enumerate(lens.tolist()):
        if n == 0:
            continue
        o, l = reference(q[b:b + 1].double(), k[b:b + 1, :n].double(), v[b:b + 1, :n].double(), causal=causal,
                         softmax_scale=softmax_scale, return_lse=True)
        out[b], lse[b] = o[0], l[0]
    return out, lse


def _check(q, k, v, lens, causal=True, num_splits=None, softmax_scale=None):
    dtype = q.dtype
    out, lse = flash_decode(q, k, v, lens, softmax_scale=softmax_scale, num_splits=num_splits, return_lse=True,
                            causal=causal)
    ref, ref_lse = _reference(q, k, v, lens, causal, softmax_scale)
    assert out.shape == q.shape and out.dtype == dtype
    assert_rel_close("out", out, ref, dtype)
    lse, ref_lse = lse.cpu(), ref_lse.cpu()
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)), "lse is -inf exactly on rows that see no key"
    finite = torch.isfinite(ref_lse)
    if finite.any():
        assert_rel_close("lse", lse[finite], ref_lse[finite], dtype, 1e-5)
    return out, lse


def _cases():
    # every Nq x group x split choice, causal and dtype alternating
    i = 0
    for n_q in (1, 3, 16):
        for group in (1, 4):
            for splits in (None, 3):
                causal, dtype = (i % 4) in (0, 3), (torch.float16, torch.float32)[(i // 2) % 2]
                i += 1
                yield pytest.param(n_q, group, splits, causal, dtype,
                                   id=f"nq{n_q}-g{group}-s{splits}-{'causal' if causal else 'full'}-{str(dtype)[6:]}")


@pytest.mark.parametrize("n_q,group,num_splits,causal,dtype", list(_cases()))
def test_matches_float64_reference(n_q, group, num_splits, causal, dtype):
    q, k, v = _inputs(3, n_q, 2, group, 32, dtype)
    _check(q, k, v, _lengths(3, MAX_LEN), causal, num_splits)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lens=st.lists(st.integers(0, 60), min_size=1, max_size=3), n_q=st.integers(1, 16),
       group=st.sampled_from([1, 2, 5]), d=st.integers(1, 40), splits=st.sampled_from([None, 1, 2, 6]),
       causal=st.booleans(), fp16=st.booleans())
def test_random_shapes(lens, n_q, group, d, splits, causal, fp16):
    q, k, v = _inputs(len(lens), n_q, 1, group, d, torch.float16 if fp16 else torch.float32, max_len=60)
    _check(q, k, v, torch.tensor(lens, dtype=torch.int32), causal, splits)


@pytest.mark.parametrize("num_splits", [1, 2, 5, 16])
def test_any_split_count_gives_the_same_answer(num_splits):
    """More splits than key blocks leaves some splits empty; they must weigh nothing in the merge."""
    q, k, v = _inputs(2, 2, 1, 2, 16, torch.float32)
    lens = torch.tensor([MAX_LEN, 37], dtype=torch.int32)
    out, _ = _check(q, k, v, lens, True, num_splits)
    one = flash_decode(q, k, v, lens, num_splits=1)
    assert rel_err(out, one) <= 1e-6


def test_rows_without_keys_give_zeros():
    """cache_seqlens 0, and causal with fewer valid keys than new tokens (bottom-right: the first rows see
    nothing), through the merge (3 splits) and the direct path (1 split)."""
    q, k, v = _inputs(3, 5, 1, 2, 16, torch.float16)
    lens = torch.tensor([0, 3, 40], dtype=torch.int32)
    for splits in (1, 3):
        out, lse = _check(q, k, v, lens, True, splits)
        assert torch.all(out[0] == 0) and torch.all(out[1, :2] == 0)
        assert torch.all(lse[0] == float("-inf")) and torch.all(lse[1, :, :2] == float("-inf"))
        assert torch.isfinite(lse[1, :, 2:]).all() and torch.isfinite(lse[2]).all()


def test_row_tiles_beyond_64_stacked_rows():
    """Nq * group = 9 * 8 = 72 stacked rows: two row tiles per (batch, kv head), the second starting
    mid-group."""
    q, k, v = _inputs(2, 9, 1, 8, 16, torch.float16, max_len=40)
    _check(q, k, v, torch.tensor([40, 23], dtype=torch.int32), True, 2)


def test_strided_cache_views_scale_and_mqa():
    """k/v as views of one (B, L, 2, Hkv, D) cache, q a transposed view, MQA (Hkv = 1), custom scale."""
    B, L, D = 2, 50, 24
    kv = torch.randn(B, L, 2, 1, D, dtype=torch.float32)
    k, v = kv[:, :, 0], kv[:, :, 1]
    q = torch.randn(B, 3, 2, D, dtype=torch.float32).transpose(1, 2)  # (B, Nq=2, Hq=3, D) view
    assert not k.is_contiguous() and not q.is_contiguous()
    _check(q, k, v, torch.tensor([17, 50], dtype=torch.int32), True, 2, softmax_scale=0.25)


def test_large_logits():
    q, k, v = _inputs(2, 1, 2, 4, 64, torch.float32)
    q, k = q * 6, k * 6
    _check(q, k, v, torch.tensor([69, 33], dtype=torch.int32), True, 4)


def test_num_splits_heuristic():
    sms = 132
    # B * Hkv = 64 programs on 132 SMs: one wave of about one program per SM
    assert choose_num_splits(64, 32768, sms) == 2
    assert choose_num_splits(sms, 1 << 17, sms) == 1            # enough programs already
    assert choose_num_splits(4 * sms, 1 << 17, sms) == 1
    assert choose_num_splits(1, 1100, sms) == 2                  # never below 512 keys per split
    assert choose_num_splits(1, 600, sms) == 1
    assert choose_num_splits(1, 1 << 20, sms) == sms
    assert choose_num_splits(1, 1 << 20, 2 * MAX_SPLITS) == MAX_SPLITS
    # unequal lengths: ~16 programs per SM, several waves to even the load out
    s = choose_num_splits(64, 32768, sms, equal_lengths=False)
    assert s * 64 >= 16 * sms and (s - 1) * 64 < 16 * sms
    assert choose_num_splits(16 * sms, 1 << 17, sms, equal_lengths=False) == 1
    for programs in (1, 7, 64, 500):
        for length in (1, 255, 4096, 131072):
            assert 1 <= choose_num_splits(programs, length, sms) <= MAX_SPLITS


def test_default_num_splits_follows_the_cache_lengths(monkeypatch):
    """flash_decode's default split count: one wave for equal cache lengths, several waves otherwise (the host
    check's min and max, remembered with it)."""
    from hwattn.ops.flash import decode as dec
    seen = []
    real = dec.decode_fwd
    monkeypatch.setattr(dec, "decode_fwd", lambda *a, **kw: seen.append(a[6]) or real(*a, **kw))
    q, k, v = _inputs(2, 1, 1, 2, 16, torch.float32, max_len=4096)
    sms = dec._sm_count(q.device)
    equal = torch.tensor([4096, 4096], dtype=torch.int32)
    unequal = torch.tensor([4096, 2000], dtype=torch.int32)
    for lens in (equal, unequal, unequal):  # the third call reuses the remembered host check
        dec.flash_decode(q, k, v, lens)
    assert seen == [dec.choose_num_splits(2, 4096, sms), dec.choose_num_splits(2, 4096, sms, equal_lengths=False),
                    dec.choose_num_splits(2, 4096, sms, equal_lengths=False)]
    assert seen[0] < seen[1]


# --- bad input ---------------------------------------------------------------------------------------

def _ok():
    q, k, v = _inputs(2, 2, 1, 2, 16, torch.float16, max_len=20)
    return dict(q=q, k_cache=k, v_cache=v, cache_seqlens=torch.tensor([5, 20], dtype=torch.int32))


@pytest.mark.parametrize("change,exc,words", [
    (dict(q=torch.randn(2, 2, 16).half()), ValueError, ["q", "4 dimensions"]),
    (dict(q=torch.randn(2, 17, 2, 16).half()), ValueError, ["1..16", "17"]),
    (dict(q=torch.randn(2, 2, 2, 16).double()), TypeError, ["q", "float64"]),
    (dict(k_cache=torch.randn(2, 20, 1, 16)), ValueError, ["dtype"]),
    (dict(v_cache=torch.randn(2, 21, 1, 16).half()), ValueError, ["same shape"]),
    (dict(k_cache=torch.randn(3, 20, 1, 16).half(), v_cache=torch.randn(3, 20, 1, 16).half()), ValueError,
     ["batch", "3", "2"]),
    (dict(k_cache=torch.randn(2, 20, 1, 32).half(), v_cache=torch.randn(2, 20, 1, 32).half()), ValueError,
     ["head_dim"]),
    (dict(q=torch.randn(2, 2, 3, 16).half(), k_cache=torch.randn(2, 20, 2, 16).half(),
          v_cache=torch.randn(2, 20, 2, 16).half()), ValueError, ["multiple", "3", "2"]),
    (dict(cache_seqlens=torch.tensor([5, 20])), TypeError, ["cache_seqlens", "int64", "int32"]),
    (dict(cache_seqlens=[5, 20]), TypeError, ["cache_seqlens", "Tensor"]),
    (dict(cache_seqlens=torch.tensor([5], dtype=torch.int32)), ValueError, ["cache_seqlens", "(2,)"]),
    (dict(cache_seqlens=torch.tensor([5, 21], dtype=torch.int32)), ValueError, ["cache_seqlens", "21", "20"]),
    (dict(cache_seqlens=torch.tensor([-1, 2], dtype=torch.int32)), ValueError, ["cache_seqlens", "-1"]),
    (dict(cache_seqlens=torch.tensor([5, 20], dtype=torch.int32, device="meta")), ValueError, ["device"]),
    (dict(num_splits=0), ValueError, ["num_splits", "0"]),
    (dict(num_splits=1000), ValueError, ["num_splits", "1000"]),
    (dict(num_splits=2.0), TypeError, ["num_splits", "int"]),
    (dict(causal="yes"), TypeError, ["causal", "bool"]),
    (dict(return_lse=1), TypeError, ["return_lse"]),
    (dict(softmax_scale=0.0), ValueError, ["softmax_scale", "> 0"]),
    (dict(softmax_scale=float("inf")), ValueError, ["softmax_scale", "finite"]),
])
def test_bad_input_is_refused_clearly(change, exc, words):
    args = {**_ok(), **change}
    with pytest.raises(exc) as info:
        flash_decode(**args)
    for w in words:
        assert w in str(info.value), f"{w!r} not in {info.value}"


def test_inputs_requiring_grad_are_refused_unless_no_grad():
    args = _ok()
    args["q"] = args["q"].requires_grad_()
    with pytest.raises(RuntimeError, match="forward-only"):
        flash_decode(**args)
    with torch.no_grad():
        out = flash_decode(**args)
    assert out.shape == args["q"].shape and not out.requires_grad


@pytest.mark.gpu
@pytest.mark.parametrize("n_q,group", [(1, 4), (4, 8), (16, 1)])
def test_gpu_bf16(n_q, group):
    torch.manual_seed(0)
    q, k, v = _inputs(4, n_q, 2, group, 128, torch.bfloat16, max_len=3000, device="cuda")
    lens = _lengths(4, 3000, "cuda", include_zero=True)
    for splits in (None, 1, 7):
        _check(q, k, v, lens, True, splits)


def test_host_check_is_redone_after_an_in_place_change():
    args = _ok()
    with torch.no_grad():
        flash_decode(**args)
        flash_decode(**args)
    args["cache_seqlens"] += 1  # 6 and 21 > max_cache_len 20
    with pytest.raises(ValueError, match="21"):
        flash_decode(**args)
    with torch.inference_mode():  # inference tensors track no version: checked on every call
        lens = torch.tensor([3, 20], dtype=torch.int32)
        flash_decode(**{**args, "cache_seqlens": lens})
        lens[0] = 30
        with pytest.raises(ValueError, match="30"):
            flash_decode(**{**args, "cache_seqlens": lens})


# --- score mods and windows (flash_attn_with_kvcache's window_size, alibi_slopes, softcap) -----------------

def _reference_mods(q, k, v, lens, causal, window, slopes, softcap):
    """Float64 per batch element over its valid cache, with the same window / ALiBi / softcap as dense masks
    and biases (hwattn.reference); rows without keys: 0 and -inf."""
    from hwattn.reference import alibi_bias, window_mask
    B, n_q, n_heads, d = q.shape
    out = torch.zeros(B, n_q, n_heads, d, dtype=torch.float64)
    lse = torch.full((B, n_heads, n_q), float("-inf"), dtype=torch.float64)
    for b, n in enumerate(lens.tolist()):
        if n == 0:
            continue
        mask = window_mask(n_q, n, *window) if window is not None else None
        bias = None
        if slopes is not None:
            bias = alibi_bias((slopes if slopes.dim() == 1 else slopes[b]).double(), n_q, n)
        o, l = reference(q[b:b + 1].double(), k[b:b + 1, :n].double(), v[b:b + 1, :n].double(), causal=causal,
                         mask=mask, bias=bias, softcap=softcap, return_lse=True)
        out[b], lse[b] = o[0], l[0]
    return out, lse


@pytest.mark.parametrize("window,causal", [((20, 0), True), ((5, -1), True), ((9, 3), False), ((-1, 2), False),
                                           (None, True)])
@pytest.mark.parametrize("mods", ["", "alibi", "alibi_b,softcap"])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_window_alibi_softcap_match_float64(window, causal, mods, num_splits):
    """Windows that cut the cache into a masked / unmasked / masked run per split, ALiBi slopes (per head and
    per batch) over stacked GQA rows of different heads, softcap; lengths 1..70 (rows with no key in the
    window give zeros, lse -inf)."""
    B, n_q, h_kv, group, d = 4, 3, 2, 2, 32
    q, k, v = _inputs(B, n_q, h_kv, group, d, torch.float32)
    lens = _lengths(B, MAX_LEN)
    slopes = None
    if "alibi_b" in mods:
        slopes = torch.rand(B, h_kv * group) * 0.5 + 0.05
    elif "alibi" in mods:
        slopes = torch.rand(h_kv * group) * 0.5 + 0.05
    softcap = 2.5 if "softcap" in mods else None
    q = q * 3  # logits large enough for the cap to bite
    out, lse = flash_decode(q, k, v, lens, num_splits=num_splits, return_lse=True, causal=causal, window=window,
                            alibi_slopes=slopes, softcap=softcap)
    ref, ref_lse = _reference_mods(q, k, v, lens, causal, window, slopes, softcap)
    assert_rel_close("out", out, ref, torch.float32)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)), "lse is -inf exactly on rows that see no key"
    finite = torch.isfinite(ref_lse)
    assert_rel_close("lse", lse[finite], ref_lse[finite], torch.float32, 1e-5)


def test_window_fp16_against_dense_kernel():
    """The decode window agrees with flash_attention's on the same rows (a full cache, fp16)."""
    import hwattn
    q, k, v = _inputs(2, 4, 2, 4, 64, torch.float16)
    lens = torch.full((2,), MAX_LEN, dtype=torch.int32)
    out = flash_decode(q, k, v, lens, num_splits=2, window=(17, 0))
    dense = hwattn.flash_attention(q, k, v, causal=True, window=(17, 0))
    assert rel_err(out, dense) < 2e-3


@pytest.mark.parametrize("kw,exc,words", [
    (dict(window=(3, 2)), ValueError, ["window", "causal"]),
    (dict(window=(-2, 0)), ValueError, ["window", "left"]),
    (dict(alibi_slopes=torch.ones(3)), ValueError, ["alibi_slopes", "shape"]),
    (dict(alibi_slopes=torch.ones(4, dtype=torch.float64)), TypeError, ["alibi_slopes", "float32"]),
    (dict(softcap=-1.0), ValueError, ["softcap"]),
])
def test_bad_mods_are_refused(kw, exc, words):
    q, k, v = _inputs(2, 1, 2, 2, 16, torch.float32)
    with pytest.raises(exc) as e:
        flash_decode(q, k, v, torch.full((2,), 5, dtype=torch.int32), **kw)
    assert all(w in str(e.value) for w in words), str(e.value)
