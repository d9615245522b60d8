"""Block-sparse masks on the exact kernel, each mask against the float64 reference with the same mask
applied densely; outputs and gradients."""
import pytest
import torch

import hwattn
from hwattn import masks
from hwattn.reference import alibi_bias, attention as reference
from hwattn.testing import TOLERANCE, assert_rel_close

DEV = "cpu" if not torch.cuda.is_available() else "cuda"
BLOCK = 32 if DEV == "cpu" else 128


def _dense(mask_mod, B, H, n_q, n_k):
    # indices on DEV: a mask_mod may hold tensors there (document ids)
    b = torch.arange(B, device=DEV)[:, None, None, None]
    h = torch.arange(H, device=DEV)[None, :, None, None]
    q = torch.arange(n_q, device=DEV)[None, None, :, None]
    kv = torch.arange(n_k, device=DEV)[None, None, None, :]
    return mask_mod(b, h, q, kv).expand(B, H, n_q, n_k)


def _check(mask_mod, B=1, H=2, H_kv=None, n_q=96, n_k=96, d=32, dtype=torch.float16, mask_b=None, mask_h=None,
           nan_in_skipped=False):
    H_kv = H_kv or H
    bm = masks.create_block_mask(mask_mod, mask_b, mask_h, n_q, n_k, device=DEV, block_size=BLOCK)
    q = torch.randn(B, n_q, H, d, device=DEV).to(dtype).requires_grad_()
    k = torch.randn(B, n_k, H_kv, d, device=DEV).to(dtype)
    v = torch.randn(B, n_k, H_kv, d, device=DEV).to(dtype)
    dense = _dense(mask_mod, B, H, n_q, n_k).to(DEV)
    if nan_in_skipped:
        # keys no query of any head can see, in blocks the mask skips entirely: the kernel must never read them
        unseen = ~dense.any(dim=(0, 1, 2))
        block_unseen = unseen[: n_k // BLOCK * BLOCK].view(-1, BLOCK).all(-1).repeat_interleave(BLOCK)
        poison = torch.zeros(n_k, dtype=torch.bool, device=DEV)
        poison[: block_unseen.numel()] = block_unseen
        assert poison.any(), "test needs at least one fully skipped key block"
        k_clean, v_clean = k.clone(), v.clone()
        k[:, poison], v[:, poison] = float("nan"), float("nan")
    k.requires_grad_()
    v.requires_grad_()
    do = torch.randn(B, n_q, H, d, device=DEV).to(dtype)
    x64 = [x.detach().double().requires_grad_() for x in ((q, k_clean, v_clean) if nan_in_skipped else (q, k, v))]
    ref = reference(*x64, mask=dense)
    ref_grads = torch.autograd.grad(ref, x64, do.double())
    # a band (causal, a window) runs as a window of the dense kernels; its block walk is checked too
    band = bm.window
    for window in ([band, None] if band is not None else [None]):
        bm.window = window
        out = hwattn.flash_attention(q, k, v, block_mask=bm)
        grads = torch.autograd.grad(out, (q, k, v), do)
        assert_rel_close("out", out, ref, dtype)
        for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):
            if nan_in_skipped and name != "dq":
                g, r = g[:, ~poison], r[:, ~poison]
            assert_rel_close(name, g, r, dtype)
    bm.window = band  # the mask as built, for the caller
    return out, grads, bm


MASKS = {
    "causal": lambda: masks.causal(),
    "sliding_window_causal": lambda: masks.and_masks(masks.causal(), masks.sliding_window(left=37)),
    "sliding_window_two_sided": lambda: masks.sliding_window(left=20, right=11),
    "document_causal": lambda: masks.and_masks(
        masks.causal(), masks.document(torch.tensor([[0] * 30 + [1] * 45 + [2] * 21]).to(DEV))),
    "prefix_lm": lambda: masks.prefix_lm(41),
    "strided": lambda: masks.strided(12),
    "fixed": lambda: masks.fixed(block_len=24, summary=3),
}


@pytest.mark.parametrize("name", list(MASKS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_builtin_masks_match_dense_reference(name, dtype):
    _check(MASKS[name](), dtype=dtype, n_q=96 if dtype == torch.float16 else 70,
           n_k=96 if dtype == torch.float16 else 70)


def test_mask_varies_per_batch_and_head_with_gqa():
    """A per-(batch, head) mask; 4 query heads share 2 K/V heads."""
    def mask_mod(b, h, q, kv):
        return (kv <= q) & ((q - kv) < 16 + 20 * h + 7 * b)
    _check(mask_mod, B=2, H=4, H_kv=2, n_q=80, n_k=80, mask_b=2, mask_h=4)


def test_bottom_right_causal_with_unequal_lengths_and_empty_rows():
    """Nq > Nk with bottom-right causal: the first Nq - Nk query rows see nothing -> zeros, no NaN."""
    n_q, n_k = 90, 50
    out, (dq, dk, dv), _ = _check(masks.causal(offset=n_k - n_q), n_q=n_q, n_k=n_k)
    assert torch.all(out[:, : n_q - n_k] == 0) and torch.all(dq[:, : n_q - n_k] == 0)
    assert all(torch.isfinite(t).all() for t in (out, dq, dk, dv))


def test_skipped_blocks_are_never_read():
    """NaN in every key block the mask leaves empty: the result is still exact, so they were skipped."""
    n = 4 * BLOCK
    _check(masks.and_masks(masks.causal(), masks.sliding_window(left=10)), n_q=n, n_k=n,
           nan_in_skipped=False)
    # a mask whose last key blocks no query sees: keys [2 BLOCK, 4 BLOCK) invisible to all
    _check(lambda b, h, q, kv: (kv < 2 * BLOCK) & (kv <= q + 10), n_q=n, n_k=n, nan_in_skipped=True)


def _two_docs_per_batch(n):
    """(2, n) document ids that differ between the two batch rows and end off the block grid."""
    return torch.stack([torch.repeat_interleave(torch.arange(3), torch.tensor([23, 41, n - 64])),
                        torch.repeat_interleave(torch.arange(2), torch.tensor([50, n - 50]))]).to(DEV)


COMPUTED = {  # masks whose partial blocks the kernels compute from per-row / per-column ranges
    "causal": lambda n_q, n_k: masks.causal(offset=n_k - n_q),
    "window_causal": lambda n_q, n_k: masks.and_masks(masks.causal(), masks.sliding_window(left=37)),
    "window_two_sided": lambda n_q, n_k: masks.sliding_window(left=20, right=11),
    "document_causal": lambda n_q, n_k: masks.and_masks(masks.document(_two_docs_per_batch(n_q)[:, :n_q],
                                                                       _two_docs_per_batch(n_k)[:, :n_k]),
                                                        masks.causal(offset=n_k - n_q)),
    "prefix_lm": lambda n_q, n_k: masks.prefix_lm(41),
    "per_head_window": lambda n_q, n_k: lambda b, h, q, kv: (kv <= q) & ((q - kv) < 16 + 20 * h + 7 * b),
}


@pytest.mark.parametrize("name", list(COMPUTED))
@pytest.mark.parametrize("n_q,n_k", [(90, 90), (70, 100)])
def test_computed_partial_blocks_equal_stored_tiles(name, n_q, n_k):
    """The element mask computed from ranges is the stored tiles' exactly: same outputs and gradients, bit
    for bit, and both match the float64 reference (per-batch and per-head masks, GQA, Nq != Nk)."""
    torch.manual_seed(0)
    B, H, H_kv, d = 2, 4, 2, 32
    q, k, v = (torch.randn(B, n, h, d, device=DEV).to(torch.float16).requires_grad_()
               for n, h in ((n_q, H), (n_k, H_kv), (n_k, H_kv)))
    do = torch.randn(B, n_q, H, d, device=DEV).to(torch.float16)
    mask_mod = COMPUTED[name](n_q, n_k)
    results = []
    for compute in (True, False):
        bm = masks.create_block_mask(mask_mod, B, H, n_q, n_k, device=DEV, block_size=BLOCK,
                                     compute_partial=compute)
        assert bm.partial_kind == (2 if compute else 1)
        bm.documents = bm.window = None  # the block walk, also for masks that are packed documents or bands
        out = hwattn.flash_attention(q, k, v, block_mask=bm)
        results.append((out, *torch.autograd.grad(out, (q, k, v), do)))
    for name_, computed, stored in zip(("out", "dq", "dk", "dv"), *results):
        assert torch.equal(computed, stored), name_
    dense = _dense(mask_mod, B, H, n_q, n_k)
    x64 = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref = reference(*x64, mask=dense)
    assert_rel_close("out", results[0][0], ref, torch.float16)
    for name_, g, r in zip(("dq", "dk", "dv"), results[0][1:], torch.autograd.grad(ref, x64, do.double())):
        assert_rel_close(name_, g, r, torch.float16)


@pytest.mark.parametrize("name", ["document_causal", "per_head_window"])
def test_launch_order_and_sub_blocks(name):
    """Mask blocks twice the kernels' blocks (two programs per mask block, the last past Nq / Nk), walked
    longest first: still the float64 reference; the orders list every block once, by decreasing work."""
    n_q, n_k = 70, 100
    mask_mod = COMPUTED[name](n_q, n_k)
    bm = masks.create_block_mask(mask_mod, 2, 4, n_q, n_k, device=DEV, block_size=2 * BLOCK)
    bm.window = None  # the block walk
    for order, counts in ((bm.key_block_order, bm.q_full_num + bm.q_part_num),
                          (bm.query_block_order, bm.kv_full_num + bm.kv_part_num)):
        work = counts.sum((0, 1))[order.long()]
        assert sorted(order.tolist()) == list(range(counts.shape[-1])) and bool((work[:-1] >= work[1:]).all())
    torch.manual_seed(1)
    q = torch.randn(2, n_q, 4, 32, device=DEV).to(torch.float16).requires_grad_()
    k, v = (torch.randn(2, n_k, 2, 32, device=DEV).to(torch.float16).requires_grad_() for _ in range(2))
    out = hwattn.flash_attention(q, k, v, block_mask=bm)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    x64 = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref = reference(*x64, mask=_dense(mask_mod, 2, 4, n_q, n_k))
    assert_rel_close("out", out, ref, torch.float16)
    for name_, g, r in zip(("dq", "dk", "dv"), grads, torch.autograd.grad(ref, x64, do.double())):
        assert_rel_close(name_, g, r, torch.float16)


def test_which_masks_get_ranges():
    """Ranges only where every row and every column of the mask is one contiguous run; else stored tiles.
    The ranges themselves: per query its first / last key, per key its first / last query (-1: none)."""
    n = 64
    build = lambda m: masks.create_block_mask(m, None, None, n, n, device=DEV, block_size=16)
    kind = lambda m: build(m).partial_kind
    docs = torch.repeat_interleave(torch.arange(3), torch.tensor([10, 30, 24]))[None].to(DEV)
    assert kind(masks.causal()) == 2 and kind(masks.sliding_window(8, 3)) == 2 and kind(masks.full()) == 2
    assert kind(masks.and_masks(masks.causal(), masks.document(docs))) == 2
    assert kind(masks.strided(4)) == 1 and kind(masks.fixed(8, 2)) == 1
    assert kind(masks.and_masks(masks.causal(), masks.strided(4))) == 1
    split_doc = torch.tensor([[0] * 20 + [1] * 20 + [0] * 24]).to(DEV)  # document 0 in two runs
    assert kind(masks.document(split_doc)) == 1
    assert kind(masks.or_masks(masks.sliding_window(2), masks.sliding_window(40, 0))) == 2  # one window after all
    info = build(masks.and_masks(masks.causal(), masks.sliding_window(5))).partial_info.cpu()[0, 0]
    i = torch.arange(n)
    assert torch.equal(info[:n], (i - 5).clamp_min(0)) and torch.equal(info[n:2 * n], i)
    assert torch.equal(info[2 * n:3 * n], i) and torch.equal(info[3 * n:], (i + 5).clamp_max(n - 1))
    offset = build(masks.causal(offset=-10)).partial_info.cpu()[0, 0]  # the first 10 queries see nothing
    assert offset[:10].tolist() == [0] * 10 and offset[n:n + 10].tolist() == [-1] * 10
    assert offset[4 * n - 10:].tolist() == [-1] * 10  # nor are the last 10 keys seen
    with pytest.raises(TypeError, match="compute_partial must be a bool"):
        masks.create_block_mask(masks.causal(), None, None, n, n, device=DEV, compute_partial="yes")


def test_which_masks_are_packed_documents():
    """Packed documents (each query sees exactly its own document, causally or all of it, the same in every
    head) are recognised, with their boundaries per batch row; anything else is not."""
    n = 64
    docs = torch.repeat_interleave(torch.arange(3), torch.tensor([10, 30, 24]))[None].to(DEV)
    build = lambda m, B=None, H=None, n_k=n: masks.create_block_mask(m, B, H, n, n_k, device=DEV, block_size=16)
    found = build(masks.and_masks(masks.causal(), masks.document(docs))).documents
    assert found.causal and found.starts == [[0, 10, 40, 64]]
    found = build(masks.document(docs)).documents
    assert not found.causal and found.starts == [[0, 10, 40, 64]]
    two = torch.cat([docs, torch.repeat_interleave(torch.arange(2), torch.tensor([33, 31]))[None].to(DEV)])
    found = build(masks.and_masks(masks.causal(), masks.document(two)), B=2).documents
    assert found.starts == [[0, 10, 40, 64], [0, 33, 64]]
    cu, max_len, doc_batch = found.varlen_args(2, DEV)
    assert cu.tolist() == [0, 10, 40, 64, 97, 128] and max_len == 33 and doc_batch.tolist() == [0, 0, 0, 1, 1]
    assert build(masks.and_masks(masks.causal(), masks.document(docs))).documents.varlen_args(2, DEV)[0].tolist() \
        == [0, 10, 40, 64, 74, 104, 128]
    not_documents = [masks.and_masks(masks.causal(), masks.sliding_window(8)),
                     masks.and_masks(masks.causal(), masks.document(docs), masks.sliding_window(20)),
                     masks.prefix_lm(12), masks.sliding_window(3, 3), masks.causal(offset=-4),
                     lambda b, h, q, kv: (kv <= q) & ((kv >= 32) | (q < 32) | (h == 0))]  # heads differ
    for m in not_documents:
        assert build(m, H=2).documents is None
    assert build(masks.causal(offset=10), n_k=74).documents is None  # Nq != Nk
    assert masks.create_block_mask(masks.causal(), None, None, n, n, device=DEV, block_size=16,
                                   compute_partial=False).documents is None


def test_which_masks_are_bands():
    """One band, the same in every batch row and head, is recognised as flash_attn's window (bottom-right
    aligned, -1 unbounded), for any Nq, Nk; a single document is such a band, not `documents`; anything else,
    or a band the window kernels cannot take (it ends before the diagonal), is not."""
    build = lambda m, n_q=64, n_k=64, B=None, H=None: masks.create_block_mask(m, B, H, n_q, n_k, device=DEV,
                                                                             block_size=16)
    causal = build(masks.causal())
    assert causal.window == (-1, 0) and causal.documents is None
    assert build(masks.full()).window == (-1, -1) and build(masks.full()).documents is None
    assert build(masks.and_masks(masks.causal(), masks.sliding_window(8))).window == (8, 0)
    assert build(masks.sliding_window(3, 5)).window == (3, 5)
    assert build(masks.sliding_window(100, 0)).window == (-1, 0)  # wider than the sequence: plain causal
    assert build(masks.causal(offset=16), n_k=80).window == (-1, 0)  # bottom-right causal, Nk > Nq
    assert build(lambda b, h, q, kv: (kv <= q + 16) & (kv >= q + 9), n_k=80).window == (7, 0)
    assert build(masks.causal(offset=-24), n_k=40).window == (-1, 0)  # Nk < Nq: the first 24 rows see nothing
    docs = torch.repeat_interleave(torch.arange(3), torch.tensor([10, 30, 24]))[None].to(DEV)
    not_bands = [(masks.sliding_window(3, 5), 80),  # top-left band, Nk > Nq: ends before the diagonal
                 (masks.prefix_lm(12), 64), (masks.strided(4), 64), (masks.causal(offset=-4), 64),
                 (lambda b, h, q, kv: kv >= q + 3, 64), (masks.and_masks(masks.causal(), masks.document(docs)), 64),
                 (lambda b, h, q, kv: (kv <= q) & (kv >= q - 8 - 4 * h), 64),  # heads differ
                 (lambda b, h, q, kv: (kv <= q) & (kv >= q - 8 - 4 * b), 64)]  # batch rows differ
    for i, (m, n_k) in enumerate(not_bands):
        assert build(m, n_k=n_k, B=2, H=2).window is None, i
    assert build(masks.and_masks(masks.causal(), masks.document(docs))).documents is not None


@pytest.mark.parametrize("case", ["window_causal", "two_sided_nq_lt_nk", "causal_nq_gt_nk"])
def test_band_masks_run_as_windows(case):
    """A band block mask runs exactly as the same window argument (bit-equal outputs, LSE and gradients, GQA,
    score mods on), and matches the float64 reference."""
    torch.manual_seed(0)
    n_q, n_k, mask_mod, window = {
        "window_causal": (70, 70, masks.and_masks(masks.causal(), masks.sliding_window(left=21)), (21, 0)),
        "two_sided_nq_lt_nk": (50, 90, lambda b, h, q, kv: (kv >= q + 40 - 13) & (kv <= q + 40 + 6), (13, 6)),
        "causal_nq_gt_nk": (90, 50, masks.causal(offset=-40), (-1, 0))}[case]
    bm = masks.create_block_mask(mask_mod, None, None, n_q, n_k, device=DEV, block_size=BLOCK)
    assert bm.window == window
    H, H_kv, d = 4, 2, 32
    q = torch.randn(2, n_q, H, d, device=DEV).to(torch.float16).requires_grad_()
    k, v = (torch.randn(2, n_k, H_kv, d, device=DEV).to(torch.float16).requires_grad_() for _ in range(2))
    do = torch.randn(2, n_q, H, d, device=DEV).to(torch.float16)
    mods = dict(softcap=15.0, alibi_slopes=torch.rand(H, device=DEV) * 0.2)
    results = []
    for kw in (dict(block_mask=bm), dict(window=window)):
        out, lse = hwattn.flash_attention(q, k, v, return_lse=True, **kw, **mods)
        results.append((out, lse, *torch.autograd.grad(out, (q, k, v), do)))
    for name_, routed, direct in zip(("out", "lse", "dq", "dk", "dv"), *results):
        assert torch.equal(routed, direct), name_
    dense = _dense(mask_mod, 2, H, n_q, n_k)
    x64 = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref = reference(*x64, mask=dense, bias=alibi_bias(mods["alibi_slopes"].double(), n_q, n_k), softcap=15.0)
    assert_rel_close("out", results[0][0], ref, torch.float16)
    for name_, g, r in zip(("dq", "dk", "dv"), results[0][2:], torch.autograd.grad(ref, x64, do.double())):
        assert_rel_close(name_, g, r, torch.float16)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_packed_documents_run_on_varlen_kernels(causal, monkeypatch):
    """A packed-documents mask runs on the varlen kernels (documents per batch row (causal) or a mask built once
    for a batch of 2 (full), GQA, softcap, per-batch ALiBi, return_lse): against the float64 reference, and so
    does the block walk of the same mask."""
    torch.manual_seed(0)
    n, H, H_kv, d = 70, 2, 1, 16
    docs = torch.repeat_interleave(torch.arange(4), torch.tensor([17, 20, 1, 32]))[None].to(DEV)
    two = torch.cat([docs, torch.repeat_interleave(torch.arange(2), torch.tensor([40, 30]))[None].to(DEV)])
    slopes = torch.rand(2, H, device=DEV)
    doc_ids, mask_b = (two, 2) if causal else (docs, None)
    mask_mod = masks.document(doc_ids)
    if causal:
        mask_mod = masks.and_masks(masks.causal(), mask_mod)
    bm = masks.create_block_mask(mask_mod, mask_b, None, n, n, device=DEV, block_size=BLOCK)
    assert bm.documents is not None and bm.documents.causal == causal
    q = torch.randn(2, n, H, d, device=DEV).to(torch.float16).requires_grad_()
    k, v = (torch.randn(2, n, H_kv, d, device=DEV).to(torch.float16).requires_grad_() for _ in range(2))
    do = torch.randn(2, n, H, d, device=DEV).to(torch.float16)
    from hwattn.ops.flash import varlen
    original, calls = varlen.flash_attention_varlen, []

    def spy(*args, **kwargs):
        calls.append(args[3].tolist())  # cu_seqlens_q
        return original(*args, **kwargs)
    monkeypatch.setattr(varlen, "flash_attention_varlen", spy)
    results = []
    for documents in (bm.documents, None):
        bm.documents = documents
        out, lse = hwattn.flash_attention(q, k, v, block_mask=bm, softcap=20.0, alibi_slopes=slopes,
                                          return_lse=True)
        results.append((out, lse, *torch.autograd.grad(out, (q, k, v), do)))
    # the varlen kernels ran once, for the mask with documents, on one sequence per (batch row, document)
    assert calls == [[0, 17, 37, 38, 70, 110, 140] if causal else [0, 17, 37, 38, 70, 87, 107, 108, 140]]
    dense = _dense(mask_mod, 2, H, n, n)
    x64 = [x.detach().double().requires_grad_() for x in (q, k, v)]
    bias = -slopes.double()[:, :, None, None] * (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs().to(DEV)
    ref, ref_lse = reference(*x64, mask=dense, bias=bias, softcap=20.0, return_lse=True)
    ref_grads = torch.autograd.grad(ref, x64, do.double())
    for got in results:
        assert_rel_close("out", got[0], ref, torch.float16)
        assert_rel_close("lse", got[1], ref_lse, torch.float16, 1e-5)
        for name_, g, r in zip(("dq", "dk", "dv"), got[2:], ref_grads):
            assert_rel_close(name_, g, r, torch.float16)


def test_block_structure_and_density():
    n = 256
    bm = masks.create_block_mask(masks.and_masks(masks.causal(), masks.sliding_window(left=31)), None, None,
                                 n, n, device="cpu", block_size=32)
    # each query block: itself (partial, diagonal) and the previous block (partial, window edge)
    assert bm.kv_full_num.flatten().tolist() == [0] * 8
    assert bm.kv_part_num.flatten().tolist() == [1] + [2] * 7
    assert abs(bm.density() - 15 / 64) < 1e-9
    assert bm.tiles.shape[0] == 2  # the diagonal tile and the window-edge tile, stored once each
    i = torch.arange(n)
    assert torch.equal(bm.to_dense()[0, 0], (i[None, :] <= i[:, None]) & (i[None, :] >= i[:, None] - 31))


def test_bad_masks_are_refused_clearly():
    q = torch.randn(1, 64, 2, 16, dtype=torch.float16, device=DEV)
    bm = masks.create_block_mask(masks.causal(), None, None, 64, 64, device=DEV, block_size=BLOCK)
    with pytest.raises(TypeError, match="mask_mod must be callable"):
        masks.create_block_mask("causal", None, None, 64, 64, device=DEV)
    with pytest.raises(ValueError, match="block_m must be a power of two"):
        masks.create_block_mask(masks.causal(), None, None, 64, 64, device=DEV, block_size=(24, 32))
    with pytest.raises(ValueError, match="seq_len_q"):
        masks.create_block_mask(masks.causal(), None, None, 0, 64, device=DEV)
    with pytest.raises(TypeError, match="bool tensor"):
        masks.create_block_mask(lambda b, h, q, kv: q - kv, None, None, 64, 64, device=DEV)
    with pytest.raises(ValueError, match="built for"):
        hwattn.flash_attention(q[:, :32], q, q, block_mask=bm)
    with pytest.raises(ValueError, match="causal=True with a block_mask"):
        hwattn.flash_attention(q, q, q, causal=True, block_mask=bm)
    with pytest.raises(TypeError, match="BlockMask"):
        hwattn.flash_attention(q, q, q, block_mask=torch.ones(64, 64, dtype=torch.bool))
    with pytest.raises(ValueError, match="batch/heads"):
        bm3 = masks.create_block_mask(masks.causal(), None, 3, 64, 64, device=DEV, block_size=BLOCK)
        hwattn.flash_attention(q, q, q, block_mask=bm3)
    with pytest.raises(ValueError, match="left must be an int >= 0"):
        masks.sliding_window(left=-1)
    with pytest.raises(ValueError, match="doc_ids"):
        masks.document(torch.zeros(10))
    with pytest.raises(ValueError, match="summary"):
        masks.fixed(block_len=4, summary=5)
