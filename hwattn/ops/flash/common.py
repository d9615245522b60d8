"""Building blocks shared by the forward and backward kernels: which key blocks a query block visits,
and the element mask of the blocks on the causal diagonal or the sequence edge."""
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


@triton.jit
def visible(rows, cols, n_q, n_k, CAUSAL: tl.constexpr):
    """Element mask of a score tile: key in range and, if causal, not in the future. `rows` and `cols`
    come shaped for broadcasting ([M, 1] x [1, N], or [1, M] x [N, 1] for a transposed tile)."""
    keep = cols < n_k
    if CAUSAL:
        keep = keep & (cols <= rows + (n_k - n_q))
    return keep
