"""Score mods (ALiBi, softcap, relative-position bias) and the sliding window of hwattn.flash_attention,
forward and backward, against the float64 five steps with the same mods applied densely."""
import pytest
import torch
import triton
import triton.language as tl

import hwattn
from hwattn.masks import and_masks, causal as causal_mod, create_block_mask, sliding_window
from hwattn.ops.flash.common import kv_window_bounds, q_window_bounds
from hwattn.reference import alibi_bias, attention as reference, relative_position_bias, window_mask
from hwattn.testing import TOLERANCE, assert_rel_close, rel_err

# Interpreter blocks are 32x16 (fwd, dQ) and 16x32 (dK/dV): 17, 33, 45 are not block multiples.
SOFTCAP = 3.0  # small enough that the cap bends typical scores (|s| ~ 1-3), so a missing tanh shows


def _inputs(B, n_q, n_k, h_kv, group, d, dtype, scale=1.0):
    q = (torch.randn(B, n_q, h_kv * group, d) * scale).to(dtype).requires_grad_()
    k = (torch.randn(B, n_k, h_kv, d) * scale).to(dtype).requires_grad_()
    v = torch.randn(B, n_k, h_kv, d).to(dtype).requires_grad_()
    return q, k, v


def _mods(names, B, n_heads, n_q, n_k):
    """Random score mods by name: alibi ((Hq,) slopes), alibi_b ((B, Hq)), softcap, rel_bias ((Hq, L),
    learnable), rel_bias_1 ((1, L), shared by the heads)."""
    mods = {}
    if "alibi" in names:
        mods["alibi_slopes"] = torch.rand(n_heads) * 0.5 + 0.05
    if "alibi_b" in names:
        mods["alibi_slopes"] = torch.rand(B, n_heads) * 0.5 + 0.05
    if "softcap" in names:
        mods["softcap"] = SOFTCAP
    if "rel_bias" in names:
        mods["rel_bias"] = torch.randn(n_heads, n_q + n_k - 1).requires_grad_()
    if "rel_bias_1" in names:
        mods["rel_bias"] = torch.randn(1, n_q + n_k - 1).requires_grad_()
    return mods


def _reference(q, k, v, causal, mods, window=None, mask=None):
    """Float64 five steps with the mods applied densely; returns out, lse and the float64 leaves."""
    n_q, n_k = q.shape[1], k.shape[1]
    leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
    bias = 0.0
    if mods.get("alibi_slopes") is not None:
        bias = bias + alibi_bias(mods["alibi_slopes"].double(), n_q, n_k)
    if mods.get("rel_bias") is not None:
        table = mods["rel_bias"].detach().double().requires_grad_()
        leaves.append(table)
        bias = bias + relative_position_bias(table, n_q, n_k)
    if window is not None:
        win = window_mask(n_q, n_k, window[0], 0 if causal else window[1], device=q.device)
        mask = win if mask is None else mask & win
    out, lse = reference(*leaves[:3], causal=causal, mask=mask, bias=None if isinstance(bias, float) else bias,
                         softcap=mods.get("softcap"), return_lse=True)
    return out, lse, leaves


def _check(q, k, v, causal, mods, window=None, block_mask=None, dense_mask=None, bound=None):
    dtype = q.dtype
    bound = TOLERANCE[dtype] if bound is None else bound
    out, lse = hwattn.flash_attention(q, k, v, causal=causal, window=window, block_mask=block_mask, return_lse=True,
                                      **mods)
    do = torch.randn_like(out)
    ours = [q, k, v] + ([mods["rel_bias"]] if mods.get("rel_bias") is not None else [])
    grads = torch.autograd.grad(out, ours, do)
    ref, ref_lse, leaves = _reference(q, k, v, causal, mods, window, dense_mask)
    ref_grads = torch.autograd.grad(ref, leaves, do.double())
    assert_rel_close("out", out, ref, dtype, bound)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)), "lse is -inf exactly on rows that see no key"
    finite = torch.isfinite(ref_lse)
    if finite.any():
        assert_rel_close("lse", lse[finite], ref_lse[finite], dtype, 1e-5)
    for name, got, want in zip(("dq", "dk", "dv", "d rel_bias"), grads, ref_grads):
        assert_rel_close(name, got, want, dtype, bound)
    if len(grads) == 4:
        assert grads[3].dtype == torch.float32 and grads[3].shape == mods["rel_bias"].shape
    return out, lse, grads


# (mods, n_q, n_k, causal, dtype): each mod alone and all together, causal on and off, Nq != Nk both ways,
# lengths off the block grid, GQA 2 everywhere
CASES = [
    ("alibi", 17, 45, False, torch.float32), ("alibi", 45, 17, True, torch.float16),
    ("alibi_b", 45, 45, True, torch.float32),
    ("softcap", 45, 17, False, torch.float16), ("softcap", 17, 45, True, torch.float32),
    ("rel_bias", 45, 33, False, torch.float32), ("rel_bias", 17, 45, True, torch.float16),
    ("rel_bias_1", 45, 45, True, torch.float32),
    ("alibi,softcap,rel_bias", 45, 33, False, torch.float16), ("alibi_b,softcap,rel_bias", 33, 64, True, torch.float32),
    ("alibi,softcap,rel_bias_1", 1, 17, True, torch.float32),
]


@pytest.mark.parametrize("names,n_q,n_k,causal,dtype", [
    pytest.param(*c, id=f"{c[0]}-nq{c[1]}-nk{c[2]}-{'causal' if c[3] else 'full'}-{str(c[4])[6:]}") for c in CASES])
def test_mods_match_float64_reference(names, n_q, n_k, causal, dtype):
    B = 2
    q, k, v = _inputs(B, n_q, n_k, 1, 2, 32, dtype)
    _check(q, k, v, causal, _mods(names.split(","), B, 2, n_q, n_k))


# (window, causal, n_q, n_k, mods, dtype): bounded on either side, both, zero-width, with causal, with mods
WINDOWS = [
    ((5, 3), False, 45, 33, "", torch.float32), ((7, -1), True, 45, 60, "", torch.float16),
    ((-1, 4), False, 60, 45, "", torch.float32), ((0, 0), False, 33, 33, "", torch.float16),
    ((20, 0), False, 17, 64, "", torch.float32), ((3, 40), False, 64, 17, "", torch.float32),
    ((6, 2), False, 45, 45, "alibi,softcap,rel_bias", torch.float32),
    ((9, -1), True, 33, 45, "alibi_b,softcap,rel_bias", torch.float16),
]


@pytest.mark.parametrize("window,causal,n_q,n_k,names,dtype", [
    pytest.param(*c, id=f"w{c[0][0]}_{c[0][1]}-{'causal' if c[1] else 'full'}-nq{c[2]}-nk{c[3]}-{c[4] or 'nomods'}-"
                       f"{str(c[5])[6:]}") for c in WINDOWS])
def test_window_matches_float64_reference(window, causal, n_q, n_k, names, dtype):
    B = 2
    q, k, v = _inputs(B, n_q, n_k, 1, 2, 32, dtype)
    _check(q, k, v, causal, _mods(names.split(","), B, 2, n_q, n_k), window=window)


def test_window_without_bounds_is_the_plain_kernel():
    """(-1, -1) is no window and (-1, 0) is causal: the same kernels, bit for bit."""
    q, k, v = (x.detach() for x in _inputs(1, 40, 50, 1, 2, 16, torch.float16))
    assert torch.equal(hwattn.flash_attention(q, k, v, window=(-1, -1)), hwattn.flash_attention(q, k, v))
    assert torch.equal(hwattn.flash_attention(q, k, v, window=(-1, 0)), hwattn.flash_attention(q, k, v, causal=True))
    assert torch.equal(hwattn.flash_attention(q, k, v, causal=True, window=(-1, -1)),
                       hwattn.flash_attention(q, k, v, causal=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_block_mask_with_mods(dtype):
    """The block-sparse path (a causal sliding-window BlockMask, full and partial blocks) with every mod."""
    B, n = 1, 70
    q, k, v = _inputs(B, n, n, 1, 2, 32, dtype)
    mask_mod = and_masks(causal_mod(), sliding_window(left=20))
    bm = create_block_mask(mask_mod, None, None, n, n, device="cpu", block_size=32)
    bm.window = None  # the block walk (this band would run as the window argument, tested with it)
    dense = bm.to_dense()[0, 0]
    _check(q, k, v, False, _mods(["alibi", "softcap", "rel_bias"], B, 2, n, n), block_mask=bm, dense_mask=dense)


@pytest.mark.parametrize("dtype,scale,cap", [(torch.float16, 12.0, 20.0), (torch.float32, 6.0, 10.0)])
def test_softcap_keeps_large_logits_finite(dtype, scale, cap):
    """Scaled scores of std scale^2 (144 in fp16, 36 in fp32), capped at 20 / 10: everything stays finite.
    fp32 meets its bound everywhere. In fp16 the output does; the gradients of a softmax this peaked are
    ill-conditioned (as in test_flash's large-logits test), so they must be within 2x of the five steps run
    in fp16 with the same cap (in practice 3-30x better)."""
    q, k, v = _inputs(1, 70, 70, 1, 2, 64, dtype, scale=scale)
    if dtype == torch.float32:
        out, _, grads = _check(q, k, v, True, {"softcap": cap})
        assert all(torch.isfinite(t).all() for t in (out, *grads))
        return
    out = hwattn.flash_attention(q, k, v, causal=True, softcap=cap)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref, _, leaves = _reference(q, k, v, True, {"softcap": cap})
    ref_grads = torch.autograd.grad(ref, leaves, do.double())
    x16 = [x.detach().requires_grad_() for x in (q, k, v)]
    naive_grads = torch.autograd.grad(reference(*x16, causal=True, softcap=cap), x16, do)
    assert_rel_close("out", out, ref, dtype)
    for name, got, want, theirs in zip(("dq", "dk", "dv"), grads, ref_grads, naive_grads):
        assert torch.isfinite(got).all(), name
        ours_err, naive_err = rel_err(got, want), rel_err(theirs, want)
        assert ours_err <= 2 * naive_err, f"{name}: {ours_err:.2e} vs fp16 five steps {naive_err:.2e}"


def test_softcap_saturated_fp32():
    """Scores of std ~900 against a cap of 50: nearly every tanh saturates. Output and LSE within the fp32
    bound. The gradients flow only through the few unsaturated scores, where d tanh(x)/dx amplifies the
    fp32 rounding of q . k (|q||k| ~ 6e4 here) into a relative error ~2|x| eps(q . k): over seeds PyTorch's
    fp32 math attention shows 5e-6..9e-6 on dq, this kernel 2e-6..3e-5. They must be finite and within 1e-4."""
    q, k, v = _inputs(1, 70, 70, 1, 2, 64, torch.float32, scale=30.0)
    out, lse = hwattn.flash_attention(q, k, v, causal=True, softcap=50.0, return_lse=True)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref, ref_lse, leaves = _reference(q, k, v, True, {"softcap": 50.0})
    assert_rel_close("out", out, ref, torch.float32)
    assert_rel_close("lse", lse, ref_lse, torch.float32)
    for name, got, want in zip(("dq", "dk", "dv"), grads, torch.autograd.grad(ref, leaves, do.double())):
        assert_rel_close(name, got, want, torch.float32, 1e-4)


def test_fully_masked_rows_with_mods_give_zeros():
    """Causal with Nq > Nk (bottom-right): the first rows see no key, with every mod on and with a window."""
    n_q, n_k = 50, 20
    for window in (None, (4, -1)):
        q, k, v = _inputs(1, n_q, n_k, 1, 2, 32, torch.float32)
        mods = _mods(["alibi", "softcap", "rel_bias"], 1, 2, n_q, n_k)
        out, lse, (dq, dk, dv, dbias) = _check(q, k, v, True, mods, window=window)
        empty = n_q - n_k
        assert torch.all(out[:, :empty] == 0) and torch.all(dq[:, :empty] == 0)
        assert torch.all(lse[:, :, :empty] == float("-inf")) and torch.isfinite(lse[:, :, empty:]).all()
        assert all(torch.isfinite(t).all() for t in (out, dq, dk, dv, dbias))
        # visible pairs have j - i <= Nk - Nq, i.e. entries < Nk; the others belong to masked pairs only
        assert torch.all(dbias[:, n_k:] == 0) and torch.any(dbias[:, :n_k] != 0)


def test_fixed_tables_need_no_grad():
    """A rel_bias that does not require grad is a constant (no atomics, no grad); slopes under no_grad."""
    n = 33
    q, k, v = _inputs(1, n, n, 1, 2, 16, torch.float32)
    table = torch.randn(2, 2 * n - 1)
    out = hwattn.flash_attention(q, k, v, causal=True, rel_bias=table)
    ref, _, _ = _reference(q, k, v, True, {"rel_bias": table})
    assert_rel_close("out", out, ref, torch.float32)
    assert len(torch.autograd.grad(out.sum(), (q, k, v))) == 3
    slopes = torch.rand(2, requires_grad=True)
    with torch.no_grad():
        out = hwattn.flash_attention(q, k, v, alibi_slopes=slopes)
    assert_rel_close("out", out, _reference(q, k, v, False, {"alibi_slopes": slopes.detach()})[0], torch.float32)


def test_rel_bias_grad_accumulates_over_heads_and_batch():
    """A (1, L) table shared by 4 heads and 2 batch elements: its gradient is the sum over all of them."""
    B, n_q, n_k = 2, 40, 24
    q, k, v = _inputs(B, n_q, n_k, 2, 2, 16, torch.float32)
    _check(q, k, v, False, _mods(["rel_bias_1"], B, 4, n_q, n_k))


# --- which blocks a window visits --------------------------------------------------------------------

@triton.jit
def _window_bounds_kernel(START, NQ, NK, LEFT, RIGHT, OUT, COUNT: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr, BY_KEYS: tl.constexpr):
    i = tl.arange(0, COUNT)
    start, n_q, n_k = tl.load(START + i), tl.load(NQ + i), tl.load(NK + i)
    left, right = tl.load(LEFT + i), tl.load(RIGHT + i)
    if BY_KEYS:
        lo, full_lo, full_hi, hi = q_window_bounds(start, n_q, n_k, left, right, BLOCK_M, BLOCK_N)
    else:
        lo, full_lo, full_hi, hi = kv_window_bounds(start, n_q, n_k, left, right, BLOCK_M, BLOCK_N)
    for c, x in enumerate((lo, full_lo, full_hi, hi)):
        tl.store(OUT + c * COUNT + i, x)


@pytest.mark.parametrize("by_keys", [False, True], ids=["kv_window_bounds", "q_window_bounds"])
def test_window_bounds_visit_exactly_the_window(by_keys):
    """For random (block start, lengths, window): [lo, hi) holds every visible pair of the program's block
    and starts in the block of the first visible one and ends at the last (blocks outside the window are
    skipped: cost follows the window), and every tile in [full_lo, full_hi) is entirely visible (skipping
    its element mask is exact). The program's own rows (keys) count past n_q (n_k) in its last block, as in
    the kernels, where they are computed and discarded."""
    block_m, block_n = (16, 32) if by_keys else (32, 16)
    count = 512
    gen = torch.Generator().manual_seed(0)

    def ints(lo, hi):
        return torch.randint(lo, hi, (count,), generator=gen, dtype=torch.int32)

    n_q, n_k = ints(1, 120), ints(1, 120)
    unbounded = n_q + n_k
    left = torch.where(torch.rand(count, generator=gen) < 0.2, unbounded, ints(0, 60))
    right = torch.where(torch.rand(count, generator=gen) < 0.2, unbounded, ints(0, 60))
    own_len, own_block, other_block = (n_k, block_n, block_m) if by_keys else (n_q, block_m, block_n)
    start = (torch.rand(count, generator=gen) * own_len / own_block).int() * own_block
    out = torch.empty(4 * count, dtype=torch.int32)
    _window_bounds_kernel[(1,)](start, n_q, n_k, left, right, out, COUNT=count, BLOCK_M=block_m, BLOCK_N=block_n,
                                BY_KEYS=by_keys)
    bounds = out.view(4, count).T.tolist()
    for c, (lo, full_lo, full_hi, hi) in enumerate(bounds):
        nq, nk, s0, lft, rgt = (int(x[c]) for x in (n_q, n_k, start, left, right))
        own = torch.arange(s0, s0 + own_block)[:, None]
        other = torch.arange(nq if by_keys else nk)[None, :]
        rows, keys = (other, own) if by_keys else (own, other)
        diagonal = rows + nk - nq
        vis = (keys >= diagonal - lft) & (keys <= diagonal + rgt)  # own x other
        seen = vis.any(0).nonzero().flatten()
        # q_window_bounds clamps lo, full_lo, full_hi to hi rounded up to a block (they stay on the block grid
        # for the compiler): an unmasked run then passes hi only where hi is the sequence's end, whose rows
        # past it the kernel discards; a run it reverses is empty (`two_runs`)
        hi_up = -(-hi // other_block) * other_block
        assert 0 <= lo <= full_lo <= full_hi <= hi_up and hi <= other.shape[1], (c, lo, full_lo, full_hi, hi)
        assert full_lo == full_hi or full_hi <= hi or hi == other.shape[1], (c, lo, full_lo, full_hi, hi)
        # loops start on the block grid (kv_window_bounds: a bound clamped to hi starts an empty loop)
        assert all(x % other_block == 0 or (x == hi and not by_keys) for x in (lo, full_lo, full_hi)), \
            (c, lo, full_lo, full_hi, hi)
        if not by_keys and full_lo < full_hi:
            assert full_hi <= nk // block_n * block_n, "an unmasked key tile runs past n_k"
        if len(seen) > 0:
            assert lo // other_block == int(seen[0]) // other_block, "a block before the window is visited"
            assert hi == int(seen[-1]) + 1, "keys after the window are visited"
        for t in range(full_lo, full_hi, other_block):
            assert vis[:, t:t + other_block].all(), f"tile at {t} skips the element mask but is not all visible"


# --- bad input ---------------------------------------------------------------------------------------

def _qkv():
    """Hq = 2, Nq = Nk = 8: rel_bias needs (2 or 1, 15)."""
    return (torch.randn(1, 8, 2, 16).half(), torch.randn(1, 8, 2, 16).half(), torch.randn(1, 8, 2, 16).half())


@pytest.mark.parametrize("change,exc,words", [
    (dict(alibi_slopes=[0.5, 0.25]), TypeError, ["alibi_slopes", "Tensor"]),
    (dict(alibi_slopes=torch.rand(2).double()), TypeError, ["alibi_slopes", "float64", "float32"]),
    (dict(alibi_slopes=torch.rand(3)), ValueError, ["alibi_slopes", "(2,)", "(1, 2)", "(3,)"]),
    (dict(alibi_slopes=torch.rand(2, 2)), ValueError, ["alibi_slopes", "(2, 2)"]),
    (dict(alibi_slopes=torch.rand(2, device="meta")), ValueError, ["alibi_slopes", "meta", "device"]),
    (dict(alibi_slopes=torch.rand(2, requires_grad=True)), ValueError, ["alibi_slopes", "grad", "detach"]),
    (dict(softcap=-1.0), ValueError, ["softcap", "> 0", "-1.0"]),
    (dict(softcap="30"), TypeError, ["softcap", "str"]),
    (dict(softcap=True), TypeError, ["softcap", "bool"]),
    (dict(softcap=float("inf")), ValueError, ["softcap", "finite"]),
    (dict(rel_bias=torch.randn(2, 16)), ValueError, ["rel_bias", "(2, 15)", "(1, 15)", "Nq + Nk - 1", "(2, 16)"]),
    (dict(rel_bias=torch.randn(3, 15)), ValueError, ["rel_bias", "(3, 15)"]),
    (dict(rel_bias=torch.randn(15)), ValueError, ["rel_bias", "(15,)"]),
    (dict(rel_bias=torch.randn(2, 15).half()), TypeError, ["rel_bias", "float16", "float32"]),
    (dict(rel_bias=torch.randn(2, 15, device="meta")), ValueError, ["rel_bias", "meta", "device"]),
    (dict(rel_bias="table"), TypeError, ["rel_bias", "Tensor"]),
    (dict(window=(-2, 0)), ValueError, ["window", "left", "-2", ">= -1"]),
    (dict(window=(3, -5)), ValueError, ["window", "right", "-5"]),
    (dict(window=(1.5, 2)), ValueError, ["window", "left", "1.5"]),
    (dict(window=(True, 2)), ValueError, ["window", "left", "True"]),
    (dict(window=(4,)), ValueError, ["window", "pair", "(4,)"]),
    (dict(window=4), ValueError, ["window", "pair", "4"]),
    (dict(window=(4, 2), causal=True), ValueError, ["window", "right", "causal", "(4, 2)"]),
    (dict(window=(4, 0), block_mask="bm"), ValueError, ["window", "block_mask", "mask_mod"]),
])
def test_bad_score_mod_arguments_are_refused_clearly(change, exc, words):
    if change.get("block_mask") == "bm":
        change = dict(change, block_mask=create_block_mask(causal_mod(), None, None, 8, 8, device="cpu", block_size=16))
    with pytest.raises(exc) as info:
        hwattn.flash_attention(*_qkv(), **change)
    for w in words:
        assert w in str(info.value), f"{w!r} not in {info.value}"


# --- GPU only ------------------------------------------------------------------------------------------
# One compile of three kernels per (mods, window, causal, head_dim): a short list, not the full product.
GPU_CASES = [
    ("alibi_b,softcap,rel_bias", None, True, 1000, 1000, 128), ("softcap", None, False, 2049, 513, 256),
    ("rel_bias_1", None, True, 2049, 513, 64), ("alibi", (256, 0), False, 2049, 2049, 128),
    ("", (100, 37), False, 513, 2049, 64), ("alibi,softcap,rel_bias", (300, -1), True, 1000, 1000, 128),
]


def _cuda_mods(names, B, n_heads, n_q, n_k):
    return {name: t.cuda().detach().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t
            for name, t in _mods(names, B, n_heads, n_q, n_k).items()}


@pytest.mark.gpu
@pytest.mark.parametrize("names,window,causal,n_q,n_k,d", GPU_CASES)
def test_gpu_bf16(names, window, causal, n_q, n_k, d):
    torch.manual_seed(0)
    B = 2
    q, k, v = (x.detach().cuda().requires_grad_() for x in _inputs(B, n_q, n_k, 2, 2, d, torch.bfloat16))
    _check(q, k, v, causal, _cuda_mods(names.split(","), B, 4, n_q, n_k), window=window)


@pytest.mark.gpu
def test_gpu_block_mask_with_mods():
    torch.manual_seed(0)
    B, n = 1, 1536
    q, k, v = (x.detach().cuda().requires_grad_() for x in _inputs(B, n, n, 2, 2, 128, torch.bfloat16))
    bm = create_block_mask(and_masks(causal_mod(), sliding_window(left=300)), None, None, n, n, device="cuda")
    bm.window = None  # the block walk
    _check(q, k, v, False, _cuda_mods(["alibi", "softcap", "rel_bias"], B, 4, n, n), block_mask=bm,
           dense_mask=bm.to_dense()[0, 0])


@pytest.mark.gpu
def test_gpu_rel_bias_grad_under_autotuning(monkeypatch):
    """With autotuning on, every timed trial of the kernel that computes dQ adds into d rel_bias:
    reset_to_zero must clear it before each trial and before the real run, or d rel_bias comes out
    multiplied. Fresh autotuners over two configs (so this test tunes even if another already did) for the
    backward kernels that take d rel_bias; fixed forward and dK/dV configs."""
    from hwattn.ops.flash import backward, configs, forward
    monkeypatch.setenv("HWATTN_AUTOTUNE", "1")
    monkeypatch.setattr(forward, "_fwd_autotuned", None)
    monkeypatch.setattr(backward, "_dkdv_autotuned", None)
    for tuner, kernel, kind in (("_dq_autotuned", "_bwd_dq_kernel", "dq"), ("_fused_autotuned", "_bwd_fused_kernel",
                                                                           "fused")):
        if hasattr(backward, kernel):
            assert "DBIAS" in getattr(backward, kernel).arg_names
            monkeypatch.setattr(backward, tuner, configs.autotuned(getattr(backward, kernel),
                                                                   lambda kind=kind: configs.configs(
                                                                       kind, orders=kind == "fused")[:2]))
    torch.manual_seed(0)
    B, n = 1, 1024
    q, k, v = (x.detach().cuda().requires_grad_() for x in _inputs(B, n, n, 2, 2, 64, torch.bfloat16))
    _check(q, k, v, True, _cuda_mods(["rel_bias"], B, 4, n, n))
