"""Block-sparse masks for the exact kernel, in the spirit of FlexAttention's BlockMask.

A mask is a function `mask_mod(b, h, q_idx, kv_idx) -> bool tensor` (True = attend), evaluated once,
densely and in chunks, when the BlockMask is built. The kernel then sees, per (batch, head, query block),
the key blocks that are *full* (every element visible: no element mask, no mask loads) and those that are
*partial* (an element tile, stored once per distinct pattern), and skips every other block, in the forward
and both backward passes: cost follows the kept fraction.

Where every query sees one contiguous range of keys and every key is seen by one contiguous range of queries
(causal, sliding windows, documents of packed sequences, prefix-LM, and their intersections), the build
records those ranges instead, and the kernels compute a partial block's element mask from them
(`common.partial_keep`): two compares per score instead of a byte of stored tile.

Where the ranges say the mask is packed documents (Nq = Nk, and each query sees exactly its own document,
causally or all of it), the build also records the document boundaries (`Documents`), and `flash_attention`
runs such a mask on the varlen kernels, which tile every document from its first row: no block lists to walk
and no partial blocks at document starts.
Where they say one band for every query (causal, sliding windows and their intersections, any Nq, Nk; a
single document is plain causal or full attention), the same in every batch row and head, the build records
it as a flash_attn window (`BlockMask.window`), and `flash_attention` runs the dense kernels with that
window, which compute each block's key range instead of walking lists (faster: the window argument's
backward against the block walk's, docs/flash_status.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..._checks import check_tensor
from .common import PARTIAL_RANGES, PARTIAL_TILE

__all__ = ["BlockMask", "Documents", "create_block_mask"]


@dataclass
class Documents:
    """A block mask that is packed documents: row b of the mask holds documents [starts[b][j],
    starts[b][j + 1]) (the last entry is N), queries and keys alike, each attending only within itself,
    causally (key <= query) or fully."""
    starts: list
    causal: bool

    def __post_init__(self):
        self._varlen = {}

    def varlen_args(self, batch: int, device):
        """(cu_seqlens int32, max_seqlen, the batch row of each document int64) of the inputs' `batch` rows
        packed as one varlen batch (a mask built once for all rows is repeated); on device, cached per batch
        size and device, so a call copies nothing to the device."""
        key = (batch, str(device))
        if key not in self._varlen:
            rows = self.starts if len(self.starts) == batch else self.starts * batch
            n = rows[0][-1]
            cu, doc_batch = [0], []
            for b, starts in enumerate(rows):
                cu.extend(b * n + s for s in starts[1:])
                doc_batch.extend([b] * (len(starts) - 1))
            lengths = [e - s for starts in rows for s, e in zip(starts[:-1], starts[1:])]
            self._varlen[key] = (torch.tensor(cu, dtype=torch.int32, device=device), max(lengths),
                                 torch.tensor(doc_batch, dtype=torch.int64, device=device))
        return self._varlen[key]


@dataclass
class BlockMask:
    """Block structure of a mask over (B, H, Nq, Nk); B and H may be 1 (broadcast).

    kv_full_num/kv_part_num: (B, H, Mq) int32 number of full / partial key blocks of each query block;
    kv_full_idx/kv_part_idx: (B, H, Mq, Mk) int32 their indices (first *_num entries valid);
    kv_part_tile: (B, H, Mq, Mk) int32 index into `tiles` of each partial block's element mask;
    q_*: the transpose, per key block the query blocks (for dK/dV);
    tiles: (T, block_m, block_n) uint8 distinct element masks of partial blocks;
    partial_kind: how the kernels get a partial block's element mask: PARTIAL_TILE (from `tiles`) or
        PARTIAL_RANGES (from partial_info);
    partial_info: (B, H, 2 (Nq + Nk)) int32 or None: per (batch, head) row of the mask, the first and last
        key each query sees (Nq firsts, then Nq lasts), then the first and last query that sees each key
        (Nk, Nk); nothing visible is first 0, last -1;
    key_block_order / query_block_order: (Mk,) / (Mq,) int32 the key (query) blocks by decreasing number of
        listed blocks, summed over the mask's batch and heads: the dK/dV (dQ) launch order, longest first;
    documents: `Documents` when the mask is packed documents (then `flash_attention` runs it on the varlen
        kernels; set it to None to keep the block walk), else None.
    window: (left, right) when the mask is one band, flash_attn's `window_size` (-1 = unbounded): query i
        sees key j iff i + Nk - Nq - left <= j <= i + Nk - Nq + right, the same for every batch and head (then
        `flash_attention` runs it as that window, no block lists; set it to None to keep the block walk),
        else None. Several packed documents take `documents` instead.
    """
    seq_len_q: int
    seq_len_k: int
    block_m: int
    block_n: int
    kv_full_num: torch.Tensor
    kv_full_idx: torch.Tensor
    kv_part_num: torch.Tensor
    kv_part_idx: torch.Tensor
    kv_part_tile: torch.Tensor
    q_full_num: torch.Tensor
    q_full_idx: torch.Tensor
    q_part_num: torch.Tensor
    q_part_idx: torch.Tensor
    q_part_tile: torch.Tensor
    tiles: torch.Tensor
    mask_mod: object = None
    partial_kind: int = PARTIAL_TILE.value
    partial_info: torch.Tensor | None = None
    key_block_order: torch.Tensor | None = None
    query_block_order: torch.Tensor | None = None
    documents: Documents | None = None
    window: tuple[int, int] | None = None

    def __post_init__(self):
        if self.key_block_order is None:
            self.key_block_order = _longest_first(self.q_full_num + self.q_part_num)
        if self.query_block_order is None:
            self.query_block_order = _longest_first(self.kv_full_num + self.kv_part_num)

    @property
    def shape(self):
        return (self.kv_full_num.shape[0], self.kv_full_num.shape[1], self.seq_len_q, self.seq_len_k)

    def density(self) -> float:
        """Fraction of blocks the kernel visits (full + partial) over all blocks."""
        mq, mk = self.kv_full_idx.shape[-2:]
        return float((self.kv_full_num + self.kv_part_num).sum()) / (self.kv_full_num.numel() * mk)

    def to_dense(self) -> torch.Tensor:
        """The element mask (B, H, Nq, Nk) bool this block mask encodes (for tests and references)."""
        B, H, mq = self.kv_full_num.shape
        mk = self.kv_full_idx.shape[-1]
        dense = torch.zeros(B, H, mq * self.block_m, mk * self.block_n, dtype=torch.bool, device=self.tiles.device)
        view = dense.view(B, H, mq, self.block_m, mk, self.block_n).permute(0, 1, 2, 4, 3, 5)
        for b in range(B):
            for h in range(H):
                for m in range(mq):
                    for i in range(int(self.kv_full_num[b, h, m])):
                        view[b, h, m, int(self.kv_full_idx[b, h, m, i])] = True
                    for i in range(int(self.kv_part_num[b, h, m])):
                        n = int(self.kv_part_idx[b, h, m, i])
                        view[b, h, m, n] = self.tiles[int(self.kv_part_tile[b, h, m, n])].bool()
        return dense[..., : self.seq_len_q, : self.seq_len_k]

    _TENSORS = ("kv_full_num", "kv_full_idx", "kv_part_num", "kv_part_idx", "kv_part_tile", "q_full_num",
                "q_full_idx", "q_part_num", "q_part_idx", "q_part_tile", "tiles", "key_block_order",
                "query_block_order")

    def to_op_args(self):
        """(tensors, ints): the mask as plain arguments a torch custom op accepts."""
        info = [] if self.partial_info is None else [self.partial_info]
        return ([getattr(self, n) for n in self._TENSORS] + info,
                [self.seq_len_q, self.seq_len_k, self.block_m, self.block_n, self.partial_kind])

    @classmethod
    def from_op_args(cls, tensors, ints):
        if not tensors:
            return None
        n = len(cls._TENSORS)
        return cls(*ints[:4], **dict(zip(cls._TENSORS, tensors[:n])), partial_kind=ints[4],
                   partial_info=tensors[n] if len(tensors) > n else None)

    def check_for(self, B: int, H: int, n_q: int, n_k: int) -> None:
        mb, mh = self.kv_full_num.shape[:2]
        if (self.seq_len_q, self.seq_len_k) != (n_q, n_k):
            raise ValueError(f"block_mask was built for (Nq, Nk) = ({self.seq_len_q}, {self.seq_len_k}), "
                             f"got q/k lengths ({n_q}, {n_k})")
        if mb not in (1, B) or mh not in (1, H):
            raise ValueError(f"block_mask batch/heads ({mb}, {mh}) must be 1 or equal the inputs' ({B}, {H})")


def _longest_first(counts: torch.Tensor) -> torch.Tensor:
    """counts (B, H, M) listed blocks per block -> (M,) int32 block indices by decreasing total (stable)."""
    work = counts.sum((0, 1), dtype=torch.int64)
    return torch.argsort(-work, stable=True).to(torch.int32).contiguous()


def _sorted_lists(flags: torch.Tensor):
    """flags (..., M, K) bool -> counts (..., M) int32 and indices (..., M, K) int32 of True entries first."""
    counts = flags.sum(-1, dtype=torch.int32)
    order = torch.argsort((~flags).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return counts.contiguous(), order.contiguous()


def create_block_mask(mask_mod, B: int | None, H: int | None, seq_len_q: int, seq_len_k: int,
                      device="cuda", block_size: int | tuple[int, int] = 128, chunk_elems: int = 1 << 24,
                      compute_partial: bool = True) -> BlockMask:
    """Build a BlockMask from `mask_mod(b, h, q_idx, kv_idx) -> bool tensor` (broadcasting index tensors).

    Args:
        mask_mod: True where query q_idx of (batch b, head h) may attend key kv_idx. Must be elementwise
            in its arguments (it is called on broadcast index tensors).
        B, H: batch and heads the mask varies over; None = the mask is the same for all (stored once).
        seq_len_q, seq_len_k: Nq, Nk >= 1.
        block_size: (block_m, block_n) granularity, powers of two >= 16; the kernels' tiles divide it.
            128 on GPU; smaller blocks skip more of a fine-grained mask but loop more.
        chunk_elems: elements evaluated per mask_mod call (bounds the memory of building).
        compute_partial: when every query's visible keys are one contiguous range and so is every key's set
            of queries (causal, windows, documents, prefix-LM), the kernels compute the partial blocks'
            element masks from those ranges instead of reading stored tiles (faster). False: always tiles.
    """
    if not isinstance(compute_partial, bool):
        raise TypeError(f"compute_partial must be a bool, got {type(compute_partial).__name__}")
    if not callable(mask_mod):
        raise TypeError(f"mask_mod must be callable (b, h, q_idx, kv_idx) -> bool tensor, got {type(mask_mod).__name__}")
    for name, val in (("seq_len_q", seq_len_q), ("seq_len_k", seq_len_k)):
        if not isinstance(val, int) or val < 1:
            raise ValueError(f"{name} must be an int >= 1, got {val!r}")
    for name, val in (("B", B), ("H", H)):
        if val is not None and (not isinstance(val, int) or val < 1):
            raise ValueError(f"{name} must be None or an int >= 1, got {val!r}")
    block_m, block_n = (block_size, block_size) if isinstance(block_size, int) else tuple(block_size)
    for name, val in (("block_m", block_m), ("block_n", block_n)):
        if not isinstance(val, int) or val < 16 or val & (val - 1):
            raise ValueError(f"block_size: {name} must be a power of two >= 16, got {val!r}")
    B_, H_ = B or 1, H or 1
    mq, mk = -(-seq_len_q // block_m), -(-seq_len_k // block_n)
    device = torch.device(device)

    full = torch.zeros(B_, H_, mq, mk, dtype=torch.bool, device=device)
    part = torch.zeros_like(full)
    tile_of = torch.full((B_, H_, mq, mk), -1, dtype=torch.int64, device=device)
    tiles = []
    tile_ids = {}
    kv = torch.arange(mk * block_n, device=device)
    rows_per_chunk = max(block_m, (chunk_elems // max(1, mk * block_n)) // block_m * block_m)
    ranges = _Ranges(B_, H_, mq * block_m, mk * block_n, device) if compute_partial else None
    for b in range(B_):
        for h in range(H_):
            bt = torch.tensor(b, device=device)
            ht = torch.tensor(h, device=device)
            for r0 in range(0, mq * block_m, rows_per_chunk):
                r1 = min(r0 + rows_per_chunk, mq * block_m)
                q = torch.arange(r0, r1, device=device)
                m = mask_mod(bt, ht, q[:, None], kv[None, :])
                if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
                    raise TypeError("mask_mod must return a bool tensor")
                m = m.expand(r1 - r0, mk * block_n)
                valid = (q[:, None] < seq_len_q) & (kv[None, :] < seq_len_k)
                m = m & valid
                if ranges is not None:
                    ranges.add(b, h, r0, m)
                blocks = m.view((r1 - r0) // block_m, block_m, mk, block_n).permute(0, 2, 1, 3)
                any_ = blocks.any(-1).any(-1)
                # a block is full only if every element, valid rows included, is visible and inside Nk
                col_valid = (kv < seq_len_k).view(mk, block_n).all(-1)
                rows_valid = (q < seq_len_q).view(-1, block_m)
                vis_valid_rows = (blocks | ~rows_valid[:, None, :, None]).all(-1).all(-1)
                all_ = vis_valid_rows & col_valid[None, :] & rows_valid.any(-1)[:, None]
                mrow = slice(r0 // block_m, r1 // block_m)
                full[b, h, mrow] = all_
                partial = any_ & ~all_
                part[b, h, mrow] = partial
                if partial.any():
                    idx = partial.nonzero()
                    flat = blocks[idx[:, 0], idx[:, 1]].to(torch.uint8)
                    uniq, inverse = torch.unique(flat.view(flat.shape[0], -1), dim=0, return_inverse=True)
                    ids = []
                    for u in uniq.view(-1, block_m, block_n):
                        key = u.cpu().numpy().tobytes()
                        if key not in tile_ids:
                            tile_ids[key] = len(tiles)
                            tiles.append(u)
                        ids.append(tile_ids[key])
                    ids = torch.tensor(ids, device=device)[inverse]
                    tile_of[b, h, r0 // block_m + idx[:, 0], idx[:, 1]] = ids
    tiles_t = torch.stack(tiles) if tiles else torch.zeros(1, block_m, block_n, dtype=torch.uint8, device=device)
    kv_full_num, kv_full_idx = _sorted_lists(full)
    kv_part_num, kv_part_idx = _sorted_lists(part)
    q_full_num, q_full_idx = _sorted_lists(full.transpose(-1, -2))
    q_part_num, q_part_idx = _sorted_lists(part.transpose(-1, -2))
    tile_of32 = tile_of.clamp_min(0).to(torch.int32)
    kind, info, documents, window = PARTIAL_TILE.value, None, None, None
    if ranges is not None and ranges.contiguous():
        kind, info = PARTIAL_RANGES.value, ranges.info(seq_len_q, seq_len_k)
        documents = ranges.documents(seq_len_q, seq_len_k)
        # several documents in a row: the varlen kernels; one per row is plain (causal) attention, a band
        if documents is None or all(len(starts) == 2 for starts in documents.starts):
            window = ranges.band(seq_len_q, seq_len_k)
            documents = None if window is not None else documents
    return BlockMask(seq_len_q, seq_len_k, block_m, block_n, kv_full_num, kv_full_idx, kv_part_num, kv_part_idx,
                     tile_of32.contiguous(), q_full_num, q_full_idx, q_part_num, q_part_idx,
                     tile_of32.transpose(-1, -2).contiguous(), tiles_t.contiguous(), mask_mod, kind, info,
                     documents=documents, window=window)


class _Ranges:
    """Per (batch, head) row of a mask being built, each query's first / last visible key and count, each
    key's first / last query and count, accumulated chunk by chunk; the mask has ranges where every count
    equals last - first + 1 (or 0)."""

    def __init__(self, B, H, n_rows, n_cols, device):
        self.q_first = torch.zeros(B, H, n_rows, dtype=torch.int64, device=device)
        self.q_last = torch.full_like(self.q_first, -1)
        self.q_ok = torch.ones(B, H, dtype=torch.bool, device=device)
        self.k_first = torch.full((B, H, n_cols), n_rows, dtype=torch.int64, device=device)
        self.k_last = torch.full_like(self.k_first, -1)
        self.k_count = torch.zeros_like(self.k_first)

    @staticmethod
    def _first_last(m, dim):
        count = m.sum(dim)
        first = m.to(torch.uint8).argmax(dim)  # argmax gives the first maximum
        last = m.shape[dim] - 1 - m.flip(dim).to(torch.uint8).argmax(dim)
        return count, first, last

    def add(self, b, h, r0, m):
        count, first, last = self._first_last(m, 1)
        has = count > 0
        self.q_first[b, h, r0:r0 + m.shape[0]] = torch.where(has, first, 0)
        self.q_last[b, h, r0:r0 + m.shape[0]] = torch.where(has, last, -1)
        self.q_ok[b, h] &= bool(((count == 0) | (count == last - first + 1)).all())
        count, first, last = self._first_last(m, 0)
        has = count > 0
        self.k_first[b, h] = torch.where(has, torch.minimum(self.k_first[b, h], first + r0), self.k_first[b, h])
        self.k_last[b, h] = torch.where(has, torch.maximum(self.k_last[b, h], last + r0), self.k_last[b, h])
        self.k_count[b, h] += count

    def contiguous(self) -> bool:
        k_ok = (self.k_count == 0) | (self.k_count == self.k_last - self.k_first + 1)
        return bool(self.q_ok.all()) and bool(k_ok.all())

    def documents(self, n_q, n_k) -> Documents | None:
        """`Documents` if the mask (already known to have ranges) is packed documents, the same for every
        head: each query's first key is the first row of its document (a row either starts a document,
        first key = itself, or continues the previous row's), and its last key is itself (causal) or its
        document's last row (full)."""
        if n_q != n_k:
            return None
        first, last = self.q_first[..., :n_q], self.q_last[..., :n_q]
        if not (bool((first == first[:, :1]).all()) and bool((last == last[:, :1]).all())):
            return None  # differs between heads
        first, last = first[:, 0], last[:, 0]
        row = torch.arange(n_q, device=first.device)
        starts_doc = first == row
        if not bool(starts_doc[:, 0].all() and (starts_doc[:, 1:] | (first[:, 1:] == first[:, :-1])).all()):
            return None
        starts = [torch.nonzero(s).flatten().tolist() + [n_q] for s in starts_doc.cpu()]
        if bool((last == row).all()):
            return Documents(starts, causal=True)
        doc_last = torch.stack([torch.repeat_interleave(torch.tensor(s[1:]) - 1, torch.tensor(s[1:]) -
                                                        torch.tensor(s[:-1])) for s in starts]).to(last.device)
        return Documents(starts, causal=False) if bool((last == doc_last).all()) else None

    def band(self, n_q, n_k) -> tuple[int, int] | None:
        """(left, right), flash_attn's window convention (-1 = unbounded), if the mask (already known to have
        ranges) is one band, the same for every batch and head: query i sees keys [i + a, i + c] clipped to
        [0, Nk), for fixed offsets a <= c, and nothing where the clipped range is empty. Offsets come from the
        rows the clipping does not touch; every row is then checked against them. None otherwise, or where
        the band is not a window the kernels take (left or right < 0: a band that ends before the diagonal)."""
        first, last = self.q_first[..., :n_q], self.q_last[..., :n_q]
        if not (bool((first == first[:1, :1]).all()) and bool((last == last[:1, :1]).all())):
            return None  # differs between batches or heads
        first, last = first[0, 0], last[0, 0]
        row = torch.arange(n_q, device=first.device)
        seen = last >= first
        if not bool(seen.any()):
            return None  # nothing visible anywhere: the block walk skips it all

        def offset(rows, values):
            if not bool(rows.any()):
                return None  # clipped on every row: unbounded on that side
            values = values[rows]
            return int(values[0]) if bool((values == values[0]).all()) else False

        a = offset(seen & (first > 0), first - row)
        c = offset(seen & (last < n_k - 1), last - row)
        if a is False or c is False:
            return None
        want_first = torch.zeros_like(row) if a is None else (row + a).clamp_min(0)
        want_last = torch.full_like(row, n_k - 1) if c is None else (row + c).clamp_max(n_k - 1)
        empty = want_first > want_last
        match = torch.where(empty, ~seen, (first == want_first) & (last == want_last))
        if not bool(match.all()):
            return None
        diagonal = n_k - n_q
        left = -1 if a is None else diagonal - a
        right = -1 if c is None else c - diagonal
        if (a is not None and left < 0) or (c is not None and right < 0):
            return None
        return left, right

    def info(self, n_q, n_k) -> torch.Tensor:
        k_first = torch.where(self.k_count > 0, self.k_first, 0)
        parts = (self.q_first[..., :n_q], self.q_last[..., :n_q], k_first[..., :n_k], self.k_last[..., :n_k])
        return torch.cat(parts, -1).to(torch.int32).contiguous()


_NO_MASK = {}


def _no_mask(device) -> torch.Tensor:
    """The placeholder the kernels get for every mask tensor when there is no mask (one per device)."""
    dummy = _NO_MASK.get(device)
    if dummy is None:
        dummy = _NO_MASK.setdefault(device, torch.zeros(1, dtype=torch.int32, device=device))
    return dummy


def launch_order(block_mask: BlockMask | None, device, by_key_blocks: bool = False):
    """The backward's launch order over mask blocks (key blocks for dK/dV, else query blocks), longest first;
    a dummy without a mask."""
    if block_mask is None:
        return _no_mask(device)
    return block_mask.key_block_order if by_key_blocks else block_mask.query_block_order


def kernel_args(block_mask: BlockMask | None, device, by_key_blocks: bool = False):
    """Pointer/int arguments and constexprs the kernels take for a block mask (dummies when None).
    by_key_blocks: the transposed lists (per key block, its query blocks), for dK/dV."""
    if block_mask is None:
        return ((_no_mask(device),) * 6 + (1, 1, 1, 1)), dict(HAS_MASK=False, MASK_BLOCK_M=256, MASK_BLOCK_N=256,
                                                   PARTIAL_KIND=PARTIAL_TILE.value)
    bm = block_mask
    mb, mh, mq = bm.kv_full_num.shape
    mk = bm.kv_full_idx.shape[-1]
    # the kernels' TILES argument: the stored tiles, or the description they compute partial blocks from
    tiles = bm.tiles if bm.partial_info is None else bm.partial_info
    if by_key_blocks:
        tensors = (bm.q_full_num, bm.q_full_idx, bm.q_part_num, bm.q_part_idx, bm.q_part_tile, tiles)
        sizes = (mb, mh, mk, mq)
    else:
        tensors = (bm.kv_full_num, bm.kv_full_idx, bm.kv_part_num, bm.kv_part_idx, bm.kv_part_tile, tiles)
        sizes = (mb, mh, mq, mk)
    return tensors + sizes, dict(HAS_MASK=True, MASK_BLOCK_M=bm.block_m, MASK_BLOCK_N=bm.block_n,
                                 PARTIAL_KIND=bm.partial_kind)
