"""Building blocks shared by the forward and backward kernels: which key blocks a query block visits,
the element mask of the blocks on the causal diagonal, the window edges or the sequence edge, and the
score mods (soft-capping, ALiBi, a relative-position bias) applied to a tile of scores."""
import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # scores are kept in the log2 domain: exp2 is one MUFU op, exp is two
LN2 = 0.6931471805599453


@triton.jit
def kv_block_bounds(start_m, n_q, n_k, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key range of a query block [start_m, start_m + BLOCK_M): keys in [0, full_hi) are visible to every
    row (no mask needed), keys in [full_hi, hi) need the element mask. Causal is aligned bottom-right:
    query i sees key j iff j <= i + n_k - n_q (flash_attn >= 2.1)."""
    full_n = (n_k // BLOCK_N) * BLOCK_N
    if CAUSAL:
        shift = n_k - n_q
        # the block's first row sees keys [0, start_m + shift + 1): whole blocks below that are unmasked
        full_hi = tl.minimum((tl.maximum(start_m + shift + 1, 0) // BLOCK_N) * BLOCK_N, full_n)
        hi = tl.minimum(tl.maximum(start_m + BLOCK_M + shift, 0), n_k)
    else:
        full_hi = full_n
        hi = n_k
    return full_hi, hi


@triton.jit
def q_block_bounds(start_n, n_q, n_k, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Query range that reads the key block [start_n, start_n + BLOCK_N), the transpose of kv_block_bounds:
    query blocks in [lo, full_lo) need the element mask, blocks in [full_lo, n_q) see the whole key block."""
    if CAUSAL:
        shift = n_k - n_q
        # row i sees key j iff i >= j - shift
        lo = (tl.maximum(start_n - shift, 0) // BLOCK_M) * BLOCK_M
        full_lo = tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - shift, 0), BLOCK_M) * BLOCK_M
        full_lo = tl.minimum(tl.maximum(full_lo, lo), n_q)
        lo = tl.minimum(lo, n_q)
    else:
        lo = 0
        full_lo = 0
    return lo, full_lo


# Sliding window (flash_attn's window_size): query i sees key j iff
#     i + shift - window_left <= j <= i + shift + window_right,   shift = n_k - n_q (bottom-right aligned).
# An unbounded side arrives as a bound >= n_q + n_k, which no distance reaches. The visited range then has
# a masked block run at each end around an unmasked middle: [lo, full_lo) masked, [full_lo, full_hi)
# unmasked, [full_hi, hi) masked; every block outside [lo, hi) is skipped, so cost follows the window.
# Integer `//` truncates toward zero in Triton, so every numerator is clamped at 0 before dividing.

@triton.jit
def kv_window_bounds(start_m, n_q, n_k, window_left, window_right, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key ranges of the query block [start_m, start_m + BLOCK_M) under a window (see above)."""
    first = start_m + n_k - n_q  # the diagonal key of the block's first row
    last = first + BLOCK_M - 1   # ... and of its last row
    hi = tl.minimum(tl.maximum(last + window_right + 1, 0), n_k)
    lo = tl.minimum((tl.maximum(first - window_left, 0) // BLOCK_N) * BLOCK_N, hi)
    # whole for every row: at or past the last row's left edge, up to the first row's right edge, inside n_k
    full_lo = tl.cdiv(tl.maximum(last - window_left, 0), BLOCK_N) * BLOCK_N
    full_hi = tl.minimum((tl.maximum(first + window_right + 1, 0) // BLOCK_N) * BLOCK_N, (n_k // BLOCK_N) * BLOCK_N)
    full_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), hi)
    return lo, full_lo, full_hi, hi


@triton.jit
def q_window_bounds(start_n, n_q, n_k, window_left, window_right, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Query ranges that read the key block [start_n, start_n + BLOCK_N) under a window, the transpose of
    kv_window_bounds. Rows past n_q in the last block are harmless (their LSE is +inf, so P = 0)."""
    first = start_n - (n_k - n_q)  # the query row whose diagonal is the block's first key
    last = first + BLOCK_N - 1     # ... its last key
    hi = tl.minimum(tl.maximum(last + window_left + 1, 0), n_q)
    # lo, full_lo, full_hi are clamped to hi rounded up to a block, not to hi: so they stay multiples of
    # BLOCK_M for the compiler too, and so do the loops' row offsets. Clamped to hi, whose divisibility Triton
    # cannot see, the unmasked loop loaded the LSE and delta rows 4 bytes at a time (32 copies a step, each
    # with its own 64-bit address: 714 SASS instructions a step against the causal loop's 494; ncu on an H200:
    # 1.38x the instructions of the block walk's same steps, dK/dV 25% slower). The rounding only matters
    # where hi = n_q, and rows past n_q are harmless (LSE +inf: P = 0); a run that ends up reversed is empty.
    hi_up = tl.cdiv(hi, BLOCK_M) * BLOCK_M
    lo = tl.minimum((tl.maximum(first - window_right, 0) // BLOCK_M) * BLOCK_M, hi_up)
    # whole key block visible to every row: right edge covers the last key, left edge the first
    full_lo = tl.cdiv(tl.maximum(last - window_right, 0), BLOCK_M) * BLOCK_M
    full_hi = (tl.maximum(first + window_left + 1, 0) // BLOCK_M) * BLOCK_M
    full_lo = tl.minimum(tl.maximum(full_lo, lo), hi_up)
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), hi_up)
    return lo, full_lo, full_hi, hi


@triton.jit
def kv_ranges(start_m, n_q, n_k, window_left, window_right, CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(lo, full_lo, full_hi, hi) for the query block at start_m: keys [lo, full_lo) and [full_hi, hi) need
    the element mask, [full_lo, full_hi) do not, the rest is skipped. Without a window lo = full_lo = 0."""
    if WINDOW:
        lo, full_lo, full_hi, hi = kv_window_bounds(start_m, n_q, n_k, window_left, window_right, BLOCK_M, BLOCK_N)
    else:
        lo = 0
        full_lo = 0
        full_hi, hi = kv_block_bounds(start_m, n_q, n_k, CAUSAL, BLOCK_M, BLOCK_N)
    return lo, full_lo, full_hi, hi


@triton.jit
def q_ranges(start_n, n_q, n_k, window_left, window_right, CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(lo, full_lo, full_hi, hi) for the key block at start_n: query rows [lo, full_lo) and [full_hi, hi)
    need the element mask, [full_lo, full_hi) do not. Without a window full_hi = hi = n_q."""
    if WINDOW:
        lo, full_lo, full_hi, hi = q_window_bounds(start_n, n_q, n_k, window_left, window_right, BLOCK_M, BLOCK_N)
    else:
        lo, full_lo = q_block_bounds(start_n, n_q, n_k, CAUSAL, BLOCK_M, BLOCK_N)
        full_hi = n_q
        hi = n_q
    return lo, full_lo, full_hi, hi


@triton.jit
def two_runs(lo, hi, lo2, hi2, BLOCK: tl.constexpr, TWO_RUNS: tl.constexpr):
    """(end, jump) for one loop `for start in range(lo, end, BLOCK)` over the blocks of [lo, hi) and then, with
    TWO_RUNS, of [lo2, hi2): a start at or past `jump` maps to start - jump + lo2. A window's two masked runs
    (its diagonal end and its far edge) as two loops cost two pipeline ramps; one loop measured 1.3% (dK/dV)
    and 2.4% (dQ) faster (H200, 2026-12-02). Without TWO_RUNS, end = hi: the plain loop."""
    end = hi
    jump = hi
    if TWO_RUNS:
        jump = lo + tl.cdiv(hi - lo, BLOCK) * BLOCK
        end = jump + tl.cdiv(hi2 - lo2, BLOCK) * BLOCK
    return end, jump


@triton.jit
def visible(rows, cols, n_q, n_k, CAUSAL: tl.constexpr, window_left=0, window_right=0, WINDOW: tl.constexpr = False):
    """Element mask of a score tile: key in range and, if causal, not in the future; with WINDOW, inside
    the window. `rows` and `cols` come shaped for broadcasting ([M, 1] x [1, N], or [1, M] x [N, 1] for a
    transposed tile)."""
    keep = cols < n_k
    if CAUSAL:
        keep = keep & (cols <= rows + (n_k - n_q))
    if WINDOW:
        diagonal = rows + (n_k - n_q)
        keep = keep & (cols >= diagonal - window_left) & (cols <= diagonal + window_right)
    return keep


# How a block mask's partial blocks get their element mask (`block_mask.BlockMask.partial_kind`):
PARTIAL_TILE = tl.constexpr(1)    # a stored uint8 tile per distinct pattern (any mask)
PARTIAL_RANGES = tl.constexpr(2)  # per query its one visible key range, per key its one query range


@triton.jit
def listed_block(IDX, row_off, j, n_pairs, SUBS: tl.constexpr):
    """Block of pair j (block j // SUBS, sub-block j % SUBS) of a block mask's list for one block row
    (IDX + row_off); 0 past the list. The backward walks load pair j + 1's at the end of step j: a block index
    loaded in the step that uses it makes Triton's pipeliner drain every copy at each wait (async_wait num = 0
    in the TTGIR, triton 3.6: no prefetch). A partial block's tile offset stays in its step: carried to the
    next one as well, it broke triton 3.9's pipeliner ("Op used before defined")."""
    return tl.load(IDX + row_off + j // SUBS, mask=j < n_pairs, other=0)


@triton.jit
def mask_ranges(TILES, mask_row, idx, n_q, n_k, KIND: tl.constexpr, BY_KEYS: tl.constexpr):
    """PARTIAL_RANGES: the key range each of this program's queries sees (idx: its rows) or, BY_KEYS, the
    query range that sees each of its keys (idx: its columns), from row `mask_row` (= b * mask_h + h,
    broadcast) of the mask's ranges: [first key of each of the Nq queries, last key, first query of each of
    the Nk keys, last query]. Loaded once per program: a program's rows (or keys) are fixed."""
    lo = idx
    hi = idx
    if KIND == PARTIAL_RANGES:
        base = TILES + mask_row.to(tl.int64) * (2 * (n_q + n_k))
        if BY_KEYS:
            lo = tl.load(base + 2 * n_q + idx, mask=idx < n_k, other=0)
            hi = tl.load(base + 2 * n_q + n_k + idx, mask=idx < n_k, other=-1)
        else:
            lo = tl.load(base + idx, mask=idx < n_q, other=0)
            hi = tl.load(base + n_q + idx, mask=idx < n_q, other=-1)
    return lo, hi


@triton.jit
def partial_keep(tile_ptrs, range_lo, range_hi, rows, cols, KIND: tl.constexpr, BY_KEYS: tl.constexpr):
    """Element mask of a block mask's partial block: its stored tile (PARTIAL_TILE, at tile_ptrs), or two
    compares per score against `mask_ranges` (shaped [rows, 1], or [keys, 1] BY_KEYS, the dK/dV pass), where
    a tile costs a byte per score. `rows` and `cols` come shaped for broadcasting, as for `visible`."""
    if KIND == PARTIAL_TILE:
        keep = tl.load(tile_ptrs) != 0
    elif BY_KEYS:
        keep = (rows >= range_lo) & (rows <= range_hi)
    else:
        keep = (cols >= range_lo) & (cols <= range_hi)
    return keep


@triton.jit
def _tanh(x):
    """tanh(x) and its derivative 1 - tanh(x)^2 from one exp2 of a non-positive number (never overflows).
    The derivative is 4e / (1 + e)^2, not 1 - t^2, which would cancel where |t| is near 1. (libdevice's
    tanh would do, but Triton's interpreter cannot run libdevice.)"""
    e = tl.math.exp2(-2.8853900817779268 * tl.abs(x))  # exp(-2|x|); 2.885... = 2 log2(e)
    one_plus_e = 1.0 + e
    t = (1.0 - e) / one_plus_e
    return tl.where(x < 0, -t, t), 4.0 * e / (one_plus_e * one_plus_e)


@triton.jit
def modded_scores(qk, qk_scale, rows, cols, n_q, n_k, softcap_log2, alibi_slope, rel_bias_row,
                  SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, REL_BIAS: tl.constexpr):
    """The score mods, the one place the kernels apply them (forward, dK/dV and dQ passes alike, so the
    backward recomputes exactly the scores whose LSE the forward saved). From raw products qk = q . k:

        s = softcap * tanh(qk * softmax_scale / softcap)  -  slope * |i + n_k - n_q - j|  +  rel_bias[j - i + n_q - 1]

    returned in the log2 domain (s * log2(e)), as the online softmax wants it: qk_scale = softmax_scale *
    log2(e) and softcap_log2 = softcap * log2(e) (capping the log2-domain score at softcap * log2(e) is
    capping the natural one, then scaling). `rows`/`cols` are shaped for broadcasting (either tile
    orientation); alibi_slope is this head's slope; rel_bias_row points at this head's row of the table.
    Also returns d softcap(x) / dx = 1 - tanh^2 (1.0 without softcap), which the backward multiplies into dS."""
    dcap = 1.0
    if SOFTCAP:
        t, dcap = _tanh(qk * (qk_scale / softcap_log2))  # one scalar division per tile, not per score
        s = softcap_log2 * t
    else:
        s = qk * qk_scale
    if ALIBI:
        s = s - (alibi_slope * 1.4426950408889634) * tl.abs(rows + (n_k - n_q) - cols).to(tl.float32)  # log2(e)
    if REL_BIAS:
        # clamped: rows past n_q and keys past n_k (both discarded later) must still read inside the table
        offset = tl.minimum(tl.maximum(cols - rows + (n_q - 1), 0), n_q + n_k - 2)
        s = s + tl.load(rel_bias_row + offset) * 1.4426950408889634  # log2(e)
    return s, dcap


@triton.jit
def accumulate_rel_bias_grad(drel_bias_row, ds, rows, cols, n_q, n_k, keep):
    """d rel_bias[h, j - i + n_q - 1] += dS[i, j] (dS w.r.t. the natural-domain score: the bias is added
    after the cap, so no tanh factor). fp32 atomics: the summation order, hence the last bits, vary run to
    run. `keep` restricts to real (row, key) pairs; masked pairs have dS = 0 and would only cost atomics."""
    offset = tl.minimum(tl.maximum(cols - rows + (n_q - 1), 0), n_q + n_k - 2)
    tl.atomic_add(drel_bias_row + offset, ds, mask=keep & (rows < n_q), sem="relaxed")
